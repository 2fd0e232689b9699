//! Token streams in and out: Megatron indexed datasets (import, export, round trip byte for
//! byte), flat token files split at an end-of-text id or into fixed rows, and their refusals.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use mmtensor::Dataset;
use mmtensor_convert::tokens::{export_megatron, import_tokens, TokenSource};
use mmtensor_convert::{ConvertOptions, NoProgress};
use mmtensor_format::{megatron, Dtype};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/megatron/megatron-u16"
);

fn import(source: &TokenSource, out: &Path, shard_size: u64) -> mmtensor_convert::Result<()> {
    import_tokens(
        source,
        out,
        shard_size,
        &ConvertOptions::default(),
        &NoProgress,
        &AtomicBool::new(false),
    )
    .map(drop)
}

fn rows(dir: &Path) -> Vec<Vec<u64>> {
    // SAFETY: the test's own files.
    let ds = unsafe { Dataset::open(dir) }.unwrap();
    ds.verify().unwrap();
    let t = ds.ragged("tokens").unwrap();
    (0..t.num_rows())
        .map(|i| {
            let r = t.row(i).unwrap();
            let b = r.bytes().unwrap();
            let s = t.dtype().size();
            b.chunks(s)
                .map(|c| {
                    let mut le = [0u8; 8];
                    le[..s].copy_from_slice(c);
                    u64::from_le_bytes(le)
                })
                .collect()
        })
        .collect()
}

#[test]
fn a_megatron_dataset_round_trips_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let idx = Path::new(FIXTURE).with_extension("idx");
    import(&TokenSource::Megatron { idx: idx.clone() }, &out, 1 << 20).unwrap();
    assert_eq!(
        rows(&out),
        [vec![10, 11, 12], vec![65535], vec![0, 1, 2, 3]]
    );
    let prefix = dir.path().join("back");
    let e = export_megatron(&out, "tokens", &prefix).unwrap();
    assert_eq!((e.sequences, e.tokens), (3, 8));
    assert_eq!(std::fs::read(&e.idx).unwrap(), std::fs::read(&idx).unwrap());
    assert_eq!(
        std::fs::read(&e.bin).unwrap(),
        std::fs::read(Path::new(FIXTURE).with_extension("bin")).unwrap()
    );
}

/// Writes an indexed dataset of u16 `docs` (token values as given) grouped by `doc_indices`.
fn write_megatron(prefix: &Path, seqs: &[Vec<u16>], doc_indices: &[u64]) {
    let lengths: Vec<u64> = seqs.iter().map(|s| s.len() as u64).collect();
    let idx = megatron::encode(Dtype::U16, &lengths, doc_indices).unwrap();
    std::fs::write(prefix.with_extension("idx"), idx).unwrap();
    let bin: Vec<u8> = seqs
        .iter()
        .flatten()
        .flat_map(|t| t.to_le_bytes())
        .collect();
    std::fs::write(prefix.with_extension("bin"), bin).unwrap();
}

#[test]
fn sequences_grouped_into_documents_keep_their_grouping_and_shards_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("in");
    let seqs: Vec<Vec<u16>> = (0..50u16)
        .map(|i| (0..i % 13).map(|k| i * 100 + k).collect())
        .collect();
    let docs: Vec<u64> = (0..=50).step_by(5).collect(); // 10 documents of 5 sequences
    write_megatron(&prefix, &seqs, &docs);
    let out = dir.path().join("ds");
    import(
        &TokenSource::Megatron {
            idx: prefix.with_extension("idx"),
        },
        &out,
        64,
    )
    .unwrap();
    // SAFETY: the test's own files.
    let ds = unsafe { Dataset::open(&out) }.unwrap();
    assert!(ds.manifest().shards().len() > 5);
    assert_eq!(ds.columns()[0].name(), "document");
    let got = rows(&out);
    let want: Vec<Vec<u64>> = seqs
        .iter()
        .map(|s| s.iter().map(|&t| t as u64).collect())
        .collect();
    assert_eq!(got, want);
    let back = dir.path().join("back");
    export_megatron(&out, "tokens", &back).unwrap();
    assert_eq!(
        std::fs::read(back.with_extension("idx")).unwrap(),
        std::fs::read(prefix.with_extension("idx")).unwrap()
    );
    assert_eq!(
        std::fs::read(back.with_extension("bin")).unwrap(),
        std::fs::read(prefix.with_extension("bin")).unwrap()
    );
}

#[test]
fn bad_megatron_inputs_are_refused_naming_the_file_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("in");
    write_megatron(&prefix, &[vec![1, 2], vec![3]], &[0, 1, 2]);
    let out = dir.path().join("ds");
    // A .bin one byte short.
    let bin = prefix.with_extension("bin");
    let mut b = std::fs::read(&bin).unwrap();
    b.pop();
    std::fs::write(&bin, &b).unwrap();
    let e = import(
        &TokenSource::Megatron {
            idx: prefix.with_extension("idx"),
        },
        &out,
        1 << 20,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("in.idx") && e.to_string().contains("5 bytes long"),
        "{e}"
    );
    assert!(!out.exists());
    // An empty document cannot be kept.
    write_megatron(&prefix, &[vec![1, 2], vec![3]], &[0, 1, 1, 2]);
    let e = import(
        &TokenSource::Megatron {
            idx: prefix.with_extension("idx"),
        },
        &out,
        1 << 20,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("document 1 holds no sequence"),
        "{e}"
    );
    assert!(!out.exists());
    // A missing .bin names it.
    std::fs::remove_file(&bin).unwrap();
    let e = import(
        &TokenSource::Megatron {
            idx: prefix.with_extension("idx"),
        },
        &out,
        1 << 20,
    )
    .unwrap_err();
    assert!(e.to_string().contains("in.bin"), "{e}");
}

const EOT: u16 = 50256;

/// A stream of `n` u16 tokens with an end-of-text every 997th and 3001st position.
fn stream(n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| {
            if i % 997 == 996 || i % 3001 == 3000 {
                EOT
            } else {
                (i % 50000) as u16
            }
        })
        .collect()
}

fn documents(tokens: &[u16]) -> Vec<Vec<u64>> {
    let mut out = vec![];
    let mut cur = vec![];
    for &t in tokens {
        cur.push(t as u64);
        if t == EOT {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn a_flat_stream_is_split_at_end_of_text_across_read_batches() {
    let dir = tempfile::tempdir().unwrap();
    // Over one 8 MiB read batch, so that documents continue from one read into the next.
    let tokens = stream((9 << 20) / 2 + 123);
    let raw = dir.path().join("train.bin");
    std::fs::write(
        &raw,
        tokens
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let out = dir.path().join("ds");
    let source = TokenSource::Flat {
        path: raw.clone(),
        dtype: Some(Dtype::U16),
        eot: Some(EOT as u64),
        row_tokens: 1 << 20,
    };
    import(&source, &out, 1 << 20).unwrap();
    assert_eq!(rows(&out), documents(&tokens));
    // The same tokens as a .npy, without a split: rows of 1000 tokens, the last one short.
    let npy = dir.path().join("t.npy");
    let mut bytes = mmtensor_format::npy::encode_header(Dtype::U16, &[tokens.len() as u64]);
    bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
    std::fs::write(&npy, bytes).unwrap();
    let out2 = dir.path().join("ds2");
    let source = TokenSource::Flat {
        path: npy,
        dtype: None,
        eot: None,
        row_tokens: 1000,
    };
    import(&source, &out2, 1 << 20).unwrap();
    let got = rows(&out2);
    assert!(got[..got.len() - 1].iter().all(|r| r.len() == 1000));
    assert_eq!(
        got.concat(),
        tokens.iter().map(|&t| t as u64).collect::<Vec<_>>()
    );
}

#[test]
fn bad_flat_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("odd.bin");
    std::fs::write(&raw, [1u8, 2, 3]).unwrap();
    let out = dir.path().join("ds");
    let flat = |path: &Path, dtype, eot| TokenSource::Flat {
        path: path.to_path_buf(),
        dtype,
        eot,
        row_tokens: 10,
    };
    let e = import(&flat(&raw, Some(Dtype::U16), None), &out, 1 << 20).unwrap_err();
    assert!(
        e.to_string().contains("not a whole number of U16 tokens"),
        "{e}"
    );
    std::fs::write(&raw, [1u8, 2, 3, 4]).unwrap();
    let e = import(&flat(&raw, Some(Dtype::U16), Some(70000)), &out, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("70000 does not fit in a U16"), "{e}");
    let e = import(&flat(&raw, Some(Dtype::F32), None), &out, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("integer ids"), "{e}");
    let npy = dir.path().join("m.npy");
    let mut bytes = mmtensor_format::npy::encode_header(Dtype::U16, &[2, 2]);
    bytes.extend([0u8; 8]);
    std::fs::write(&npy, bytes).unwrap();
    let e = import(&flat(&npy, None, None), &out, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("1-D array"), "{e}");
    assert!(!out.exists());
}

#[test]
fn export_refuses_a_column_that_is_not_ragged() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("in");
    write_megatron(&prefix, &[vec![1, 2]], &[0, 1]);
    let out = dir.path().join("ds");
    import(
        &TokenSource::Megatron {
            idx: prefix.with_extension("idx"),
        },
        &out,
        1 << 20,
    )
    .unwrap();
    let e = export_megatron(&out, "nope", &dir.path().join("x")).unwrap_err();
    assert!(e.to_string().contains("no column `nope`"), "{e}");
    assert!(!dir.path().join("x.bin").exists() && !dir.path().join("x.idx").exists());
}
