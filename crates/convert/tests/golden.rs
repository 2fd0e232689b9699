//! Golden files pin the on-disk format: any change to the bytes the writer produces fails here.
//!
//! To change the format on purpose, bump the version in docs/FORMAT.md and run
//! `MMT_BLESS=1 cargo test -p mmtensor-convert --test golden` to rewrite `fixtures/golden/`
//! (the golden stores and `ragged-dataset/`; `dataset/` is pinned by `tests/dataset.rs`).

use std::path::{Path, PathBuf};

use mmtensor::Dataset;
use mmtensor_convert::sample::{
    golden_stores, write_golden_ragged_dataset, GOLDEN_RAGGED_ROWS, GOLDEN_RAGGED_SHARD_SIZE,
};
use mmtensor_format::{
    block_checksum, block_checksums, check_offsets, decode_checksum_table, FileLayout, Manifest,
    MANIFEST_FILE,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden")
}

#[test]
fn writer_reproduces_golden_files_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let bless = std::env::var_os("MMT_BLESS").is_some();
    for (name, store) in golden_stores() {
        let fresh = dir.path().join(name);
        store.write(&fresh).unwrap();
        let fresh = std::fs::read(&fresh).unwrap();
        let golden_path = fixtures().join(name);
        if bless {
            std::fs::write(&golden_path, &fresh).unwrap();
            continue;
        }
        let golden = std::fs::read(&golden_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with MMT_BLESS=1 to create it)",
                golden_path.display()
            )
        });
        assert!(
            fresh == golden,
            "{name}: the writer's bytes differ from the golden file; if the format changed on purpose, bump its version and rebless"
        );
    }
}

#[test]
fn golden_files_hold_exactly_the_sample_bytes() {
    for (name, store) in golden_stores() {
        let file = std::fs::read(fixtures().join(name)).unwrap();
        let layout = FileLayout::parse(&file, file.len() as u64).unwrap();
        assert_eq!(layout.header().alignment, store.alignment);
        assert_eq!(layout.header().tensors.len(), store.tensors.len());
        let table = &file[layout.checksum_table_range().start as usize..]
            [..layout.header().checksums.length as usize];
        assert_eq!(block_checksum(table), layout.header().checksums.checksum);
        let table: Vec<u64> = decode_checksum_table(table).collect();
        for (t, s) in layout.header().tensors.iter().zip(&store.tensors) {
            assert_eq!(
                (t.name.as_str(), t.dtype, &t.shape, &t.offsets),
                (s.name.as_str(), s.dtype, &s.shape, &s.offsets)
            );
            let r = layout.tensor_range(t);
            assert_eq!(r.start % store.alignment, 0, "{name}: {}", t.name);
            assert_eq!(
                &file[r.start as usize..r.end as usize],
                &s.bytes[..],
                "{name}: {}",
                t.name
            );
            let blocks = t.blocks_for(0..t.length, layout.header().block_size);
            assert_eq!(
                &table[blocks.start as usize..blocks.end as usize],
                &block_checksums(&s.bytes, layout.header().block_size.get())[..]
            );
        }
        for r in layout.padding_ranges() {
            assert!(file[r.start as usize..r.end as usize]
                .iter()
                .all(|&b| b == 0));
        }
        assert_eq!(layout.checksum_table_range().end, file.len() as u64);
        // The lowest minor version that describes the file: 1.1 only with a ragged tensor.
        let ragged = store.tensors.iter().any(|t| t.offsets.is_some());
        assert_eq!(layout.preamble().minor, u16::from(ragged), "{name}");
        for (i, t) in layout.header().tensors.iter().enumerate() {
            if t.offsets.is_some() {
                let o = layout.tensor_range(&layout.header().tensors[i + 1]);
                check_offsets(&t.name, &file[o.start as usize..o.end as usize], t.shape[0])
                    .unwrap();
            }
        }
    }
}

/// Every file of `dir` and its bytes, by name.
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

/// Row `r` of the golden ragged dataset, as `fixtures/README.md` documents it: its tokens and
/// its boxes.
fn ragged_row(r: u64) -> (Vec<u16>, Vec<[f32; 2]>) {
    let tokens = (0..3 * (r * 7 % 13))
        .map(|k| (1000 * r + k) as u16)
        .collect();
    let boxes = (0..r % 7).map(|k| [r as f32, k as f32 + 0.5]).collect();
    (tokens, boxes)
}

/// `fixtures/golden/ragged-dataset/`: a dataset of a fixed column and two ragged ones written by
/// `DatasetWriter::write_batch` (no provenance), pinned byte for byte, every row read back.
#[test]
fn golden_ragged_dataset_is_reproduced_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("ragged-dataset");
    write_golden_ragged_dataset(&out).unwrap();
    let fresh = listing(&out);
    let golden = fixtures().join("ragged-dataset");
    if std::env::var_os("MMT_BLESS").is_some() {
        if golden.exists() {
            for (name, _) in listing(&golden) {
                std::fs::remove_file(golden.join(name)).unwrap();
            }
        }
        std::fs::create_dir_all(&golden).unwrap();
        for (name, bytes) in &fresh {
            std::fs::write(golden.join(name), bytes).unwrap();
        }
        return;
    }
    let names = |l: &[(String, Vec<u8>)]| l.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&listing(&golden)), names(&fresh));
    assert!(
        listing(&golden) == fresh,
        "the dataset writer's bytes differ from fixtures/golden/ragged-dataset; if the format changed on purpose, bump its version and rebless"
    );
    let m = Manifest::parse(&std::fs::read(golden.join(MANIFEST_FILE)).unwrap()).unwrap();
    let rows: Vec<u64> = m.shards().iter().map(|s| s.num_rows()).collect();
    assert_eq!(
        rows,
        [4, 2, 2, 2, 1, 1],
        "shards cut by rows (4), boxes (12) and tokens (48)"
    );
    assert_eq!(m.num_rows(), GOLDEN_RAGGED_ROWS);
    // Each shard within the shard size: 24 bytes a row, 48 tokens, 12 boxes.
    let mut start = 0;
    for n in rows {
        let tokens: u64 = (start..start + n)
            .map(|r| ragged_row(r).0.len() as u64)
            .sum();
        let boxes: u64 = (start..start + n)
            .map(|r| ragged_row(r).1.len() as u64)
            .sum();
        assert!(n * 24 <= GOLDEN_RAGGED_SHARD_SIZE && tokens * 2 <= GOLDEN_RAGGED_SHARD_SIZE);
        assert!(boxes * 8 <= GOLDEN_RAGGED_SHARD_SIZE);
        start += n;
    }
    // SAFETY: committed fixtures that nothing modifies while the tests run.
    let ds = unsafe { Dataset::open(&golden) }.unwrap();
    ds.verify().unwrap();
    let (tokens, boxes) = (ds.ragged("tokens").unwrap(), ds.ragged("boxes").unwrap());
    let all: Vec<u64> = (0..GOLDEN_RAGGED_ROWS).collect();
    let mut ids = vec![0u8; all.len() * 8];
    ds.column("id").unwrap().take_into(&all, &mut ids).unwrap();
    for r in all {
        let (want_tokens, want_boxes) = ragged_row(r);
        assert_eq!(ids[r as usize * 8..][..8], (r as i64).to_le_bytes());
        assert_eq!(
            tokens.row(r).unwrap().as_slice::<u16>().unwrap(),
            want_tokens
        );
        let b = boxes.row(r).unwrap();
        assert_eq!(b.shape(), [want_boxes.len() as u64, 2]);
        assert_eq!(b.as_slice::<f32>().unwrap(), want_boxes.concat());
    }
}
