//! Sharded datasets: what `convert_dataset` and `append` write reads back row for row as the
//! plain `convert` of the same inputs, whatever the shard boundaries, transforms and chunking.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use mmtensor::Dataset;
use mmtensor_convert::{
    append, append_with, compact, convert, convert_dataset, prune, ConvertOptions, Error, Fill,
    Input, NoProgress,
};
use mmtensor_format::{npy, Dtype, FileLayout, Manifest, MANIFEST_FILE};

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/numpy")
        .join(rel)
        .display()
        .to_string()
}

fn write_npy(path: &Path, dtype: Dtype, shape: &[u64], data: &[u8]) {
    let mut bytes = npy::encode_header(dtype, shape);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// A tensor's name, shape and bytes.
type Tensor = (String, Vec<u64>, Vec<u8>);

fn inputs(specs: &[String]) -> Vec<Input> {
    specs.iter().map(|s| Input::parse(s).unwrap()).collect()
}

/// Every column's bytes, shards concatenated in manifest order, after checking each shard's
/// length, header checksum, row count and tensor order against the manifest.
fn dataset_columns(dir: &Path) -> (Manifest, Vec<Tensor>) {
    let m = Dataset::read_manifest(dir).unwrap();
    let mut cols: Vec<Tensor> = m
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), c.shape(m.num_rows()), Vec::new()))
        .collect();
    for s in m.shards() {
        let bytes = std::fs::read(dir.join(s.file())).unwrap();
        assert_eq!(bytes.len() as u64, s.length(), "{}", s.file());
        let layout = FileLayout::parse(&bytes, bytes.len() as u64).unwrap();
        assert_eq!(layout.preamble().header_checksum, s.header_checksum());
        let tensors = &layout.header().tensors;
        assert_eq!(tensors.len(), m.columns().len());
        for ((t, c), out) in tensors.iter().zip(m.columns()).zip(&mut cols) {
            assert_eq!(t.name, c.name());
            assert_eq!(t.dtype, c.dtype());
            assert_eq!(t.shape, c.shape(s.num_rows()));
            out.2.extend_from_slice(
                &bytes[layout.tensor_range(t).start as usize..][..t.length as usize],
            );
        }
    }
    (m, cols)
}

/// The same inputs through the plain `convert`: each tensor's name, shape and bytes.
fn plain(specs: &[String], options: &ConvertOptions) -> Vec<Tensor> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plain.mmt");
    convert(
        &inputs(specs),
        &out,
        options,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let layout = FileLayout::parse(&bytes, bytes.len() as u64).unwrap();
    layout
        .header()
        .tensors
        .iter()
        .map(|t| {
            let r = layout.tensor_range(t);
            (
                t.name.clone(),
                t.shape.clone(),
                bytes[r.start as usize..r.end as usize].to_vec(),
            )
        })
        .collect()
}

#[test]
fn shards_of_transformed_inputs_read_back_as_the_plain_conversion() {
    // Big-endian Fortran F64 cast to F32, a big-endian C-order I32, a Fortran BOOL, a deflated
    // npz member in Fortran order: every stream kind, cut into one-row shards so every chunk is
    // split across shards.
    let tmp = tempfile::tempdir().unwrap();
    let specs = vec![
        format!("a={}", fixture("npy/float64-be-f.npy")),
        format!("b={}", fixture("npy/int32-be.npy")),
        format!("c={}", fixture("npy/bool-f.npy")),
        format!(
            "f={}",
            member_alone(&fixture("npz/compressed.npz"), tmp.path())
        ),
    ];
    let mut options = ConvertOptions::default();
    options.dtype.add("a=f32").unwrap();
    let expected = plain(&specs, &options);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let row: u64 = expected
        .iter()
        .map(|(_, shape, bytes)| bytes.len() as u64 / shape[0])
        .sum();
    let s = convert_dataset(
        &inputs(&specs),
        &out,
        &options,
        row,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(s.shards_written, 3);
    let (m, cols) = dataset_columns(&out);
    assert_eq!(m.num_rows(), 3);
    assert_eq!(
        m.shards().iter().map(|s| s.file()).collect::<Vec<_>>(),
        ["shard-00000.mmt", "shard-00001.mmt", "shard-00002.mmt"]
    );
    assert_eq!(cols, expected);
}

/// The `fortran` member of the npz fixture (F64 [3, 5], Fortran order), alone in a new deflated
/// npz in `dir`: the fixture's other members have other row counts.
fn member_alone(npz: &str, dir: &Path) -> String {
    let path: PathBuf = dir.join("fortran.npz");
    let mut src = zip::ZipArchive::new(std::fs::File::open(npz).unwrap()).unwrap();
    let mut member = src.by_name("fortran.npy").unwrap();
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut member, &mut data).unwrap();
    let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let o = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    w.start_file("fortran.npy", o).unwrap();
    std::io::Write::write_all(&mut w, &data).unwrap();
    w.finish().unwrap();
    path.display().to_string()
}

#[test]
fn shard_boundaries_that_split_chunks_keep_every_row() {
    let d = tempfile::tempdir().unwrap();
    let n = 10_000u64;
    let x: Vec<u8> = (0..n * 3).map(|i| (i * 7 % 251) as u8).collect();
    let y: Vec<u8> = (0..n)
        .flat_map(|i| (i as i64 * 3 - 5).to_le_bytes())
        .collect();
    write_npy(&d.path().join("x.npy"), Dtype::U8, &[n, 3], &x);
    write_npy(&d.path().join("y.npy"), Dtype::I64, &[n], &y);
    let specs = vec![
        d.path().join("x.npy").display().to_string(),
        d.path().join("y.npy").display().to_string(),
    ];
    let mut options = ConvertOptions::default();
    options.chunk_size = 4096;
    let out = d.path().join("ds");
    // 11 bytes a row: 636 rows a shard, boundaries nowhere near the 4 KiB chunks.
    convert_dataset(
        &inputs(&specs),
        &out,
        &options,
        7000,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    let (m, cols) = dataset_columns(&out);
    assert_eq!(m.shards().len(), 16);
    assert!(m.shards()[..15].iter().all(|s| s.num_rows() == 636));
    assert_eq!(m.shards()[15].num_rows(), n - 15 * 636);
    assert_eq!(cols, plain(&specs, &options));
}

#[test]
fn refusals_name_the_problem_and_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    write_npy(&d.path().join("x.npy"), Dtype::F32, &[4, 2], &[0; 32]);
    write_npy(&d.path().join("y.npy"), Dtype::U8, &[5], &[0; 5]);
    write_npy(&d.path().join("s.npy"), Dtype::U8, &[], &[0]);
    let p = |n: &str| d.path().join(n).display().to_string();
    let out = d.path().join("ds");
    let run = |specs: &[String], size: u64| {
        convert_dataset(
            &inputs(specs),
            &out,
            &ConvertOptions::default(),
            size,
            &NoProgress,
            &AtomicBool::new(false),
        )
        .unwrap_err()
    };
    let e = run(&[p("x.npy")], 7);
    assert!(
        matches!(
            e,
            Error::ShardSize {
                size: 7,
                row_bytes: 8
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("--shard-size"), "{e}");
    let e = run(&[p("x.npy"), p("y.npy")], 1 << 20);
    assert!(
        matches!(&e, Error::NotAColumn { tensor, .. } if tensor == "y"),
        "{e}"
    );
    let e = run(&[p("s.npy")], 1 << 20);
    assert!(
        matches!(&e, Error::NotAColumn { tensor, .. } if tensor == "s"),
        "{e}"
    );
    assert!(!out.exists(), "a refused conversion created the folder");

    convert_dataset(
        &inputs(&[p("x.npy")]),
        &out,
        &ConvertOptions::default(),
        8,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    let before = std::fs::read(out.join(MANIFEST_FILE)).unwrap();
    assert!(matches!(run(&[p("x.npy")], 8), Error::DatasetExists { .. }));
    assert_eq!(std::fs::read(out.join(MANIFEST_FILE)).unwrap(), before);
}

#[test]
fn zero_rows_make_a_dataset_without_shards() {
    let d = tempfile::tempdir().unwrap();
    write_npy(&d.path().join("x.npy"), Dtype::F32, &[0, 2], &[]);
    let out = d.path().join("ds");
    let s = convert_dataset(
        &inputs(&[d.path().join("x.npy").display().to_string()]),
        &out,
        &ConvertOptions::default(),
        1 << 20,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(s.shards_written, 0);
    let m = Dataset::read_manifest(&out).unwrap();
    assert_eq!((m.num_rows(), m.shards().len()), (0, 0));
    assert_eq!(m.columns()[0].row_shape(), [2]);
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn append_adds_shards_and_never_touches_listed_ones() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).display().to_string();
    let x1: Vec<u8> = (0..5 * 8).map(|i| i as u8).collect();
    let x2: Vec<u8> = (0..3 * 8).map(|i| 100 + i as u8).collect();
    write_npy(&d.path().join("x1.npy"), Dtype::F32, &[5, 2], &x1);
    write_npy(&d.path().join("y1.npy"), Dtype::U8, &[5], &[1, 2, 3, 4, 5]);
    write_npy(&d.path().join("x2.npy"), Dtype::F32, &[3, 2], &x2);
    write_npy(&d.path().join("y2.npy"), Dtype::U8, &[3], &[6, 7, 8]);
    write_npy(&d.path().join("y2wide.npy"), Dtype::U16, &[3], &[0; 6]);
    let out = d.path().join("ds");
    let opts = ConvertOptions::default();
    let go = AtomicBool::new(false);
    convert_dataset(
        &inputs(&[format!("x={}", p("x1.npy")), format!("y={}", p("y1.npy"))]),
        &out,
        &opts,
        2 * 9,
        &NoProgress,
        &go,
    )
    .unwrap();
    let before = listing(&out);
    assert_eq!(Dataset::read_manifest(&out).unwrap().shards().len(), 3);

    // Schema mismatches: refused before anything is written.
    for (specs, what) in [
        (vec![format!("x={}", p("x2.npy"))], "column `y` is missing"),
        (
            vec![
                format!("x={}", p("x2.npy")),
                format!("y={}", p("y2wide.npy")),
            ],
            "column `y` is U8",
        ),
        (
            vec![
                format!("x={}", p("x2.npy")),
                format!("y={}", p("y2.npy")),
                format!("z={}", p("y2.npy")),
            ],
            "`z`, which is not a column",
        ),
    ] {
        let e = append(&out, &inputs(&specs), &opts, None, &NoProgress, &go).unwrap_err();
        assert!(
            matches!(&e, Error::SchemaMismatch { reason, .. } if reason.contains(what)),
            "{e}"
        );
        assert_eq!(listing(&out), before, "a refused append changed the folder");
    }

    // Columns in another order are matched by name. The last shard (1 row) is filled: a new
    // shard holds its row and the first new one and takes its place; the rest follow.
    let s = append(
        &out,
        &inputs(&[format!("y={}", p("y2.npy")), format!("x={}", p("x2.npy"))]),
        &opts,
        Some(2 * 9),
        &NoProgress,
        &go,
    )
    .unwrap();
    assert_eq!(
        (s.shards_written, s.rows_written, s.rows_rewritten),
        (2, 3, 1)
    );
    assert_eq!(s.replaced, ["shard-00002.mmt"]);
    // No file was changed or deleted: the replaced shard stays, unlisted, for old readers.
    for (name, bytes) in &before {
        if name != MANIFEST_FILE {
            assert_eq!(
                &std::fs::read(out.join(name)).unwrap(),
                bytes,
                "{name} changed"
            );
        }
    }
    let (m, cols) = dataset_columns(&out);
    assert_eq!(m.num_rows(), 8);
    assert_eq!(
        m.shards().iter().map(|s| s.file()).collect::<Vec<_>>(),
        [
            "shard-00000.mmt",
            "shard-00001.mmt",
            "shard-00003.mmt",
            "shard-00004.mmt"
        ]
    );
    assert_eq!(
        m.shards().iter().map(|s| s.num_rows()).collect::<Vec<_>>(),
        [2, 2, 2, 2]
    );
    assert_eq!(cols[0].2, [x1.clone(), x2.clone()].concat());
    assert_eq!(cols[1].2, [1, 2, 3, 4, 5, 6, 7, 8]);
    // The old manifest still describes valid files: what an old reader holds keeps working.
    let old = Manifest::parse(&before.iter().find(|(n, _)| n == MANIFEST_FILE).unwrap().1).unwrap();
    assert_eq!(&m.shards()[..2], &old.shards()[..2]);
    // The filled shard says what it replaced, and the shard size it was cut at.
    let filled = std::fs::read(out.join("shard-00003.mmt")).unwrap();
    let layout = FileLayout::parse(&filled, filled.len() as u64).unwrap();
    let meta = &layout.header().metadata;
    assert_eq!(
        meta["source.replaced"],
        r#"[{"file":"shard-00002.mmt","rows":1}]"#
    );
    assert_eq!(meta["source.shard_size"], "18");

    // Without a shard size, the dataset's own (recorded in its last shard: 2 rows) cuts the new
    // rows; the last shard is full, so 3 rows make two shards, of 2 and 1.
    let s = append(
        &out,
        &inputs(&[format!("x={}", p("x2.npy")), format!("y={}", p("y2.npy"))]),
        &opts,
        None,
        &NoProgress,
        &go,
    )
    .unwrap();
    assert_eq!((s.shards_written, s.rows_written), (2, 3));
    assert!(s.replaced.is_empty());
    let m = Dataset::read_manifest(&out).unwrap();
    assert_eq!(m.num_rows(), 11);
    assert_eq!(
        m.shards().iter().map(|s| s.num_rows()).collect::<Vec<_>>(),
        [2, 2, 2, 2, 2, 1]
    );

    // Fill::Never adds shards only, as append did before it could fill.
    let s = append_with(
        &out,
        &inputs(&[format!("x={}", p("x2.npy")), format!("y={}", p("y2.npy"))]),
        &opts,
        None,
        Fill::Never,
        &NoProgress,
        &go,
    )
    .unwrap();
    assert_eq!(
        (s.shards_written, s.rows_written, s.rows_rewritten),
        (2, 3, 0)
    );
    let (m, cols) = dataset_columns(&out);
    assert_eq!(
        m.shards().iter().map(|s| s.num_rows()).collect::<Vec<_>>(),
        [2, 2, 2, 2, 2, 1, 2, 1]
    );
    assert_eq!(cols[1].2, [1, 2, 3, 4, 5, 6, 7, 8, 6, 7, 8, 6, 7, 8]);

    // A dataset with no rows yet takes all new rows in one shard.
    let empty = d.path().join("empty");
    write_npy(&d.path().join("x0.npy"), Dtype::F32, &[0, 2], &[]);
    write_npy(&d.path().join("y0.npy"), Dtype::U8, &[0], &[]);
    convert_dataset(
        &inputs(&[format!("x={}", p("x0.npy")), format!("y={}", p("y0.npy"))]),
        &empty,
        &opts,
        2 * 9,
        &NoProgress,
        &go,
    )
    .unwrap();
    let s = append(
        &empty,
        &inputs(&[format!("x={}", p("x1.npy")), format!("y={}", p("y1.npy"))]),
        &opts,
        None,
        &NoProgress,
        &go,
    )
    .unwrap();
    assert_eq!((s.shards_written, s.rows_written), (1, 5));
}

#[test]
fn a_cancelled_append_leaves_the_manifest_as_it_was() {
    let d = tempfile::tempdir().unwrap();
    write_npy(&d.path().join("x.npy"), Dtype::U8, &[4, 2], &[1; 8]);
    let spec = [d.path().join("x.npy").display().to_string()];
    let out = d.path().join("ds");
    let opts = ConvertOptions::default();
    convert_dataset(
        &inputs(&spec),
        &out,
        &opts,
        4,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    let before = std::fs::read(out.join(MANIFEST_FILE)).unwrap();
    let e = append(
        &out,
        &inputs(&spec),
        &opts,
        Some(4),
        &NoProgress,
        &AtomicBool::new(true),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Cancelled { .. }), "{e}");
    assert_eq!(std::fs::read(out.join(MANIFEST_FILE)).unwrap(), before);
    assert_eq!(Dataset::read_manifest(&out).unwrap().num_rows(), 4);
}

/// `fixtures/golden/dataset/`: the manifest and shards `convert_dataset` writes for fixed inputs
/// (alignment 64, no provenance), pinned byte for byte. After a deliberate change of the manifest
/// format (with a version bump in docs/FORMAT.md), rewrite them with
/// `MMT_BLESS=1 cargo test -p mmtensor-convert --test dataset golden`.
#[test]
fn golden_dataset_is_reproduced_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    // x: U16 [10, 3], element i = i * 257; y: I64 [10], row r = r * 0x9E3779B9 - 2^40.
    let x: Vec<u8> = (0..30u16)
        .flat_map(|i| i.wrapping_mul(257).to_le_bytes())
        .collect();
    let y: Vec<u8> = (0..10i64)
        .flat_map(|r| (r.wrapping_mul(0x9E37_79B9) - (1 << 40)).to_le_bytes())
        .collect();
    write_npy(&d.path().join("x.npy"), Dtype::U16, &[10, 3], &x);
    write_npy(&d.path().join("y.npy"), Dtype::I64, &[10], &y);
    let mut options = ConvertOptions::default();
    options.alignment = 64;
    options.block_size = 4096;
    options.record_sources = false;
    let out = d.path().join("dataset");
    // Rows of 14 bytes, shards of 3 rows: 3 + 3 + 3 + 1.
    convert_dataset(
        &inputs(&[
            d.path().join("x.npy").display().to_string(),
            d.path().join("y.npy").display().to_string(),
        ]),
        &out,
        &options,
        3 * 14,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/dataset");
    let fresh = listing(&out);
    assert_eq!(fresh.len(), 5);
    if std::env::var_os("MMT_BLESS").is_some() {
        std::fs::create_dir_all(&golden).unwrap();
        for (name, bytes) in &fresh {
            std::fs::write(golden.join(name), bytes).unwrap();
        }
        return;
    }
    assert_eq!(
        listing(&golden),
        fresh,
        "the dataset writer's bytes differ from fixtures/golden/dataset; if the format changed on purpose, bump its version and rebless"
    );
    let (m, cols) = dataset_columns(&golden);
    assert_eq!(m.num_rows(), 10);
    assert_eq!(
        (cols[0].2.as_slice(), cols[1].2.as_slice()),
        (&x[..], &y[..])
    );
}

/// Regression: a zip member's CRC is checked when the member is read to its end, after its last
/// chunk was handed over; the sharded writer must wait for that verdict, not write the manifest
/// once it has all the bytes it needs.
#[test]
fn regression_a_bad_crc_after_the_last_chunk_fails_the_sharded_write() {
    let d = tempfile::tempdir().unwrap();
    let npz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/attacks/npz-bad-crc.npz");
    let out = d.path().join("ds");
    let e = convert_dataset(
        &inputs(&[npz.display().to_string()]),
        &out,
        &ConvertOptions::default(),
        1 << 20,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Zip { .. }), "{e}");
    // Not even the (only, last) shard was committed.
    assert_eq!(listing(&out), []);
}

fn golden_dataset() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/dataset")
}

/// Issue 23: `convert` refused `.mmt` stores and dataset folders, so nothing could merge small
/// shards, cut a dataset again, cast it or take some of its columns. A dataset folder is its
/// columns, each its shards' tensors in order; a store is its tensors.
#[test]
fn a_dataset_folder_or_a_store_is_an_input_merged_recut_cast_and_selected() {
    let golden = golden_dataset();
    let (m, cols) = dataset_columns(&golden);
    assert_eq!(m.shards().len(), 4);
    let spec = [golden.display().to_string()];
    // Merged into one store: the same columns, row for row.
    assert_eq!(plain(&spec, &ConvertOptions::default()), cols);

    // Cut again: x is U16 [3] and y I64, 14 bytes a row; shards of 70 bytes hold 5 rows.
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("recut");
    let s = convert_dataset(
        &inputs(&spec),
        &dir,
        &ConvertOptions::default(),
        70,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!((s.shards_written, s.rows_written), (2, 10));
    let (m2, cols2) = dataset_columns(&dir);
    assert_eq!(
        m2.shards().iter().map(|s| s.num_rows()).collect::<Vec<_>>(),
        [5, 5]
    );
    assert_eq!(cols2, cols);

    // A store is an input too; and its output back again is the same.
    let one = out.path().join("one.mmt");
    convert(
        &inputs(&spec),
        &one,
        &ConvertOptions::default(),
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(
        plain(&[one.display().to_string()], &ConvertOptions::default()),
        cols
    );

    // Cast and select: x as I32, and only x.
    let mut o = ConvertOptions::default();
    o.dtype.add("x=i32").unwrap();
    o.columns = vec!["x".into()];
    let got = plain(&spec, &o);
    assert_eq!(got.len(), 1);
    let (name, shape, bytes) = &got[0];
    assert_eq!(
        (name.as_str(), shape.as_slice()),
        ("x", [10u64, 3].as_slice())
    );
    let widened: Vec<u8> = cols[0]
        .2
        .chunks(2)
        .flat_map(|b| i32::from(u16::from_le_bytes([b[0], b[1]])).to_le_bytes())
        .collect();
    assert_eq!(bytes, &widened);

    // A selection that names no tensor says which there are.
    let mut o = ConvertOptions::default();
    o.columns = vec!["z".into()];
    let e = convert(
        &inputs(&spec),
        out.path().join("z.mmt"),
        &o,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::UnknownColumn { .. }) && e.to_string().contains("x, y"),
        "{e}"
    );
    assert!(!out.path().join("z.mmt").exists());
}

/// An `.mmt` input carries checksums: a corrupt block is found as it streams and nothing is
/// written, never laundered into an output with fresh checksums. The same for a shard of a
/// dataset that the manifest does not describe.
#[test]
fn a_corrupt_mmt_input_is_refused_naming_the_block_and_writes_nothing() {
    let src = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(golden_dataset()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), src.path().join(e.file_name())).unwrap();
    }
    let shard = src.path().join("shard-00002.mmt");
    let mut bytes = std::fs::read(&shard).unwrap();
    let layout = FileLayout::parse(&bytes, bytes.len() as u64).unwrap();
    let y = layout.tensor_range(layout.tensor("y").unwrap());
    bytes[y.start as usize + 9] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();
    let out = tempfile::tempdir().unwrap();
    for input in [src.path().to_path_buf(), shard.clone()] {
        let target = out.path().join("o.mmt");
        let e = convert(
            &[Input::path(&input)],
            &target,
            &ConvertOptions::default(),
            &NoProgress,
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::InputChecksum { path, tensor: Some(t), block: 0, .. } if *path == shard && t == "y"),
            "{e}"
        );
        assert!(e.to_string().contains("mmt verify"), "{e}");
        assert!(!target.exists());
        let dir = out.path().join("ds");
        let e = convert_dataset(
            &[Input::path(&input)],
            &dir,
            &ConvertOptions::default(),
            1 << 20,
            &NoProgress,
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(matches!(&e, Error::InputChecksum { .. }), "{e}");
        assert!(!dir.join(MANIFEST_FILE).exists());
    }
    // A shard replaced by another (same length, valid by itself): the manifest says so.
    std::fs::copy(golden_dataset().join("shard-00001.mmt"), &shard).unwrap();
    let e = convert(
        &[Input::path(src.path())],
        out.path().join("o.mmt"),
        &ConvertOptions::default(),
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("does not match the dataset's manifest"),
        "{e}"
    );
}

/// `x` (F32 [n, 2], element i of the batch `b` = b * 1000 + i) and `y` (U8 [n], the batch number)
/// in `dir`, named after the batch: rows of 9 bytes.
fn batch(dir: &Path, b: u32, n: u64) -> Vec<String> {
    let x: Vec<u8> = (0..n as u32 * 2)
        .flat_map(|i| ((b * 1000 + i) as f32).to_le_bytes())
        .collect();
    let xp = dir.join(format!("x{b}.npy"));
    let yp = dir.join(format!("y{b}.npy"));
    write_npy(&xp, Dtype::F32, &[n, 2], &x);
    write_npy(&yp, Dtype::U8, &[n], &vec![b as u8; n as usize]);
    vec![format!("x={}", xp.display()), format!("y={}", yp.display())]
}

/// Issue 23: `append` always added a new shard, so appending 200 small batches made 200 tiny
/// shards. It now fills the last shard up to the dataset's shard size first (recorded by
/// `convert_dataset` in every shard; here 10 rows of 9 bytes), under a new name: the dataset ends
/// with full shards and one partial, rows in order, and no shard a manifest listed was changed.
#[test]
fn regression_200_small_appends_make_full_shards_not_200_tiny_ones() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("ds");
    let go = AtomicBool::new(false);
    let opts = ConvertOptions::default();
    let first = batch(d.path(), 0, 5);
    convert_dataset(&inputs(&first), &out, &opts, 90, &NoProgress, &go).unwrap();
    // SAFETY: nothing in this test writes into a shard; writers only add files and rename.
    let reader = unsafe { Dataset::open(&out) }.unwrap();
    let mut x_all = Vec::new();
    let mut y_all = Vec::new();
    let mut seen: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut replaced = Vec::new();
    for b in 0..=200u32 {
        let n = if b == 0 { 5 } else { 3 };
        let specs = batch(d.path(), b, n);
        if b > 0 {
            let s = append(&out, &inputs(&specs), &opts, None, &NoProgress, &go).unwrap();
            replaced.extend(s.replaced);
        }
        x_all.extend((0..n as u32 * 2).flat_map(|i| ((b * 1000 + i) as f32).to_le_bytes()));
        y_all.extend(std::iter::repeat_n(b as u8, n as usize));
        // A shard name, once listed, always holds the same bytes.
        for s in Dataset::read_manifest(&out).unwrap().shards() {
            let bytes = std::fs::read(out.join(s.file())).unwrap();
            let old = seen.entry(s.file().to_owned()).or_insert(bytes.clone());
            assert_eq!(*old, bytes, "batch {b}: {} was rewritten", s.file());
        }
    }
    let (m, cols) = dataset_columns(&out);
    assert_eq!(m.num_rows(), 605);
    let rows: Vec<u64> = m.shards().iter().map(|s| s.num_rows()).collect();
    assert_eq!(rows.len(), 61, "{rows:?}");
    assert!(rows[..60].iter().all(|&r| r == 10), "{rows:?}");
    assert_eq!(rows[60], 5);
    assert_eq!(cols[0].2, x_all);
    assert_eq!(cols[1].2, y_all);
    // The reader opened first still reads its 5 rows from the shard the first append replaced,
    // and goes on doing so after `prune` deletes that file.
    let mut x = vec![0u8; 8];
    let col = reader.column("x").unwrap();
    col.take_into(&[4], &mut x).unwrap();
    assert_eq!(x, [&x_all[32..40]].concat());
    assert_eq!(reader.num_rows(), 5);
    // Each append that found a partial last shard replaced it; prune deletes exactly those.
    let pruned = prune(&out, false).unwrap();
    replaced.sort();
    let removed: Vec<String> = pruned.removed.into_iter().map(|(n, _)| n).collect();
    assert_eq!(removed, replaced);
    col.take_into(&[4], &mut x).unwrap();
    assert_eq!(x, [&x_all[32..40]].concat());
    assert_eq!(dataset_columns(&out).1, cols);
}

/// A dataset grown by appends that do not fill (`Fill::Never`, or an older `append`): one shard
/// per append. `compact` merges them into full shards in place, keeps rows and their order, and
/// leaves every replaced file on disk for readers of the old manifest, which keep reading it;
/// `prune` then deletes exactly the unlisted shard files and writers' leftovers.
#[test]
fn compact_merges_small_shards_in_place_and_prune_deletes_what_no_manifest_lists() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("ds");
    let go = AtomicBool::new(false);
    let mut opts = ConvertOptions::default();
    opts.alignment = 64;
    opts.metadata.insert("license".into(), "cc0".into());
    // 10 rows of 9 bytes a shard.
    convert_dataset(
        &inputs(&batch(d.path(), 0, 5)),
        &out,
        &opts,
        90,
        &NoProgress,
        &go,
    )
    .unwrap();
    for b in 1..=20u32 {
        let specs = batch(d.path(), b, 3);
        append_with(
            &out,
            &inputs(&specs),
            &opts,
            None,
            Fill::Never,
            &NoProgress,
            &go,
        )
        .unwrap();
    }
    let (before_m, before_cols) = dataset_columns(&out);
    assert_eq!(before_m.shards().len(), 21);
    let before = listing(&out);
    // SAFETY: nothing in this test writes into a shard; writers only add files and rename.
    let reader = unsafe { Dataset::open(&out) }.unwrap();

    let s = compact(&out, None, &NoProgress, &go).unwrap();
    assert_eq!(
        (s.shards_written, s.rows_written, s.rows_rewritten),
        (7, 0, 65)
    );
    assert_eq!(s.replaced.len(), 21);
    let (m, cols) = dataset_columns(&out);
    assert_eq!(cols, before_cols);
    assert_eq!(
        m.shards().iter().map(|s| s.num_rows()).collect::<Vec<_>>(),
        [10, 10, 10, 10, 10, 10, 5]
    );
    // New names, above every listed one; no file of the old dataset changed.
    assert_eq!(m.shards()[0].file(), "shard-00021.mmt");
    // The new shards keep the run's alignment and shared metadata, and say what they replaced.
    let first = std::fs::read(out.join("shard-00021.mmt")).unwrap();
    let layout = FileLayout::parse(&first, first.len() as u64).unwrap();
    let header = layout.header();
    assert_eq!(header.alignment.get(), 64);
    assert_eq!(header.metadata["license"], "cc0");
    assert_eq!(header.metadata["source.shard_size"], "90");
    let replaced: serde_json::Value =
        serde_json::from_str(&header.metadata["source.replaced"]).unwrap();
    assert_eq!(replaced.as_array().unwrap().len(), 21);
    assert_eq!(
        replaced[0],
        serde_json::json!({"file": "shard-00000.mmt", "rows": 5})
    );
    for (name, bytes) in &before {
        if name != MANIFEST_FILE {
            assert_eq!(&std::fs::read(out.join(name)).unwrap(), bytes, "{name}");
        }
    }
    // The reader opened before still reads its rows, from the replaced shards.
    let mut y = vec![0u8; 3];
    reader
        .column("y")
        .unwrap()
        .take_into(&[64, 0, 5], &mut y)
        .unwrap();
    assert_eq!(y, [20, 0, 1]);

    // Nothing more to merge: the manifest is not rewritten.
    let manifest = std::fs::read(out.join(MANIFEST_FILE)).unwrap();
    let s = compact(&out, None, &NoProgress, &go).unwrap();
    assert_eq!((s.shards_written, s.replaced.len()), (0, 0));
    assert_eq!(std::fs::read(out.join(MANIFEST_FILE)).unwrap(), manifest);

    // What prune deletes: unlisted shard files and writers' temporary files, nothing else.
    std::fs::write(out.join(".shard-00099.mmt.Ab12Cd.partial"), b"half").unwrap();
    std::fs::write(out.join(".manifest.mmtm.Xy34Zw.partial"), b"half").unwrap();
    std::fs::write(out.join("notes.mmt"), b"mine").unwrap();
    std::fs::write(out.join("README"), b"mine").unwrap();
    let dry = prune(&out, true).unwrap();
    assert_eq!(dry.removed.len(), 23);
    assert_eq!(dry.kept, ["notes.mmt"]);
    assert!(out.join("shard-00000.mmt").exists());
    let pruned = prune(&out, false).unwrap();
    assert_eq!(pruned, dry);
    let names: Vec<String> = listing(&out).into_iter().map(|e| e.0).collect();
    let mut want: Vec<String> = m.shards().iter().map(|s| s.file().to_owned()).collect();
    want.extend(["README".into(), MANIFEST_FILE.into(), "notes.mmt".into()]);
    want.sort();
    assert_eq!(names, want);
    assert_eq!(dataset_columns(&out).1, before_cols);
    // The reader still reads: a deleted file stays for whoever has it mapped.
    reader
        .column("y")
        .unwrap()
        .take_into(&[64, 0, 5], &mut y)
        .unwrap();
    assert_eq!(y, [20, 0, 1]);
    assert!(prune(&out, false).unwrap().removed.is_empty());

    // A larger shard size merges full shards too; names keep growing, never reused.
    let s = compact(&out, Some(200), &NoProgress, &go).unwrap();
    let (m, cols) = dataset_columns(&out);
    assert_eq!(cols, before_cols);
    assert_eq!(
        m.shards().iter().map(|s| s.num_rows()).collect::<Vec<_>>(),
        [22, 22, 21]
    );
    assert_eq!(s.shards_written, 3);
    assert_eq!(m.shards()[0].file(), "shard-00028.mmt");
    // Then appends fill up to the size the compaction recorded (22 rows).
    append(
        &out,
        &inputs(&batch(d.path(), 21, 3)),
        &opts,
        None,
        &NoProgress,
        &go,
    )
    .unwrap();
    let (m, _) = dataset_columns(&out);
    assert_eq!(
        m.shards().iter().map(|s| s.num_rows()).collect::<Vec<_>>(),
        [22, 22, 22, 2]
    );
}

/// A fill reads the old last shard through its checksums: a corrupt block is refused, naming the
/// shard, and nothing is listed; `Fill::Never` with a shard size does not read it at all.
#[test]
fn a_corrupt_last_shard_is_not_carried_into_a_fill() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("ds");
    let go = AtomicBool::new(false);
    let opts = ConvertOptions::default();
    convert_dataset(
        &inputs(&batch(d.path(), 0, 5)),
        &out,
        &opts,
        90,
        &NoProgress,
        &go,
    )
    .unwrap();
    let shard = out.join("shard-00000.mmt");
    let mut bytes = std::fs::read(&shard).unwrap();
    let layout = FileLayout::parse(&bytes, bytes.len() as u64).unwrap();
    let at = layout.tensor_range(&layout.header().tensors[0]).start as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();
    let manifest = std::fs::read(out.join(MANIFEST_FILE)).unwrap();
    let specs = batch(d.path(), 1, 3);
    let e = append(&out, &inputs(&specs), &opts, None, &NoProgress, &go).unwrap_err();
    assert!(
        matches!(&e, Error::InputChecksum { path, .. } if path == &shard),
        "{e}"
    );
    assert_eq!(std::fs::read(out.join(MANIFEST_FILE)).unwrap(), manifest);
    let s = append_with(
        &out,
        &inputs(&specs),
        &opts,
        Some(90),
        Fill::Never,
        &NoProgress,
        &go,
    )
    .unwrap();
    assert_eq!(s.manifest.shards().len(), 2);
}
