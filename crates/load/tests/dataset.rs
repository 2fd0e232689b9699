//! `Dataset`: one index space over the shards written by `mmtensor_convert::convert_dataset`;
//! every shard is checked against the manifest at open, and every error names the shard.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use mmtensor::{Dataset, Error};
use mmtensor_convert::{append, convert_dataset, ConvertOptions, Input, NoProgress};
use mmtensor_format::{npy, Dtype, MANIFEST_FILE};

/// `x`: U16 [n, 3] with element `i` = i; `y`: I64 [n] with row `r` = 1000 + r. Written as
/// `x.npy` and `y.npy` in `dir`.
fn inputs(dir: &Path, n: u64, tag: &str) -> Vec<Input> {
    let mut x = npy::encode_header(Dtype::U16, &[n, 3]);
    x.extend((0..n * 3).flat_map(|i| (i as u16).to_le_bytes()));
    let mut y = npy::encode_header(Dtype::I64, &[n]);
    y.extend((0..n).flat_map(|r| (1000 + r as i64).to_le_bytes()));
    let (xp, yp) = (
        dir.join(format!("x{tag}.npy")),
        dir.join(format!("y{tag}.npy")),
    );
    std::fs::write(&xp, x).unwrap();
    std::fs::write(&yp, y).unwrap();
    vec![
        Input::parse(&format!("x={}", xp.display())).unwrap(),
        Input::parse(&format!("y={}", yp.display())).unwrap(),
    ]
}

/// A dataset of `n` rows in shards of `per_shard` rows (rows are 14 bytes).
fn dataset(dir: &Path, n: u64, per_shard: u64) -> PathBuf {
    let out = dir.join("ds");
    convert_dataset(
        &inputs(dir, n, ""),
        &out,
        &ConvertOptions::default(),
        per_shard * 14,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    out
}

fn open(dir: &Path) -> mmtensor::Result<Dataset> {
    // SAFETY: the tests' files are not modified while open, except by renames.
    unsafe { Dataset::open(dir) }
}

fn y_rows(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn take_and_rows_span_shard_boundaries() {
    let d = tempfile::tempdir().unwrap();
    let ds = open(&dataset(d.path(), 100, 7)).unwrap();
    assert_eq!((ds.num_rows(), ds.shards().len()), (100, 15));
    let y = ds.column("y").unwrap();
    let x = ds.column("x").unwrap();
    assert_eq!(x.shape(), [100, 3]);
    assert_eq!((x.dtype(), x.row_bytes()), (Dtype::U16, 6));

    // Any order, repeats, every shard; the result does not depend on how rows are grouped.
    let mut state = 12345u64;
    let idx: Vec<u64> = (0..500)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % 100
        })
        .collect();
    let mut out = vec![0u8; idx.len() * 8];
    y.take_into(&idx, &mut out).unwrap();
    assert_eq!(
        y_rows(&out),
        idx.iter().map(|&i| 1000 + i as i64).collect::<Vec<_>>()
    );
    let mut out = vec![0u8; idx.len() * 6];
    x.take_into(&idx, &mut out).unwrap();
    for (k, &i) in idx.iter().enumerate() {
        let row: Vec<u16> = out[k * 6..k * 6 + 6]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(row, [3 * i as u16, 3 * i as u16 + 1, 3 * i as u16 + 2]);
    }
    // All in one shard (the direct path), and no index at all.
    let mut out = vec![0u8; 2 * 8];
    y.take_into(&[15, 14], &mut out).unwrap();
    assert_eq!(y_rows(&out), [1015, 1014]);
    y.take_into(&[], &mut []).unwrap();

    // Row ranges: one piece per shard touched.
    let pieces = y.rows(5..30).unwrap();
    assert_eq!(
        pieces.iter().map(|p| p.shape()[0]).collect::<Vec<_>>(),
        [2, 7, 7, 7, 2]
    );
    let all: Vec<u8> = pieces
        .iter()
        .flat_map(|p| p.bytes().unwrap().to_vec())
        .collect();
    assert_eq!(y_rows(&all), (1005..1030).collect::<Vec<_>>());
    assert_eq!(y.rows(14..21).unwrap().len(), 1);
    assert!(y.rows(3..3).unwrap().is_empty());
    assert_eq!(y.rows(..).unwrap().len(), 15);
    assert_eq!(y.locate(99), Some((14, 1)));
    assert_eq!(y.locate(100), None);
}

#[test]
fn gather_errors_name_the_dataset_and_column_and_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let dir = dataset(d.path(), 10, 3);
    let y = open(&dir).unwrap().column("y").unwrap();
    let mut out = vec![7u8; 16];
    let e = y.take_into(&[1, 10], &mut out).unwrap_err();
    assert!(
        matches!(&e, Error::RowIndex { path, tensor, index: 10, rows: 10 } if path == &dir && tensor == "y"),
        "{e}"
    );
    assert!(
        out.iter().all(|&b| b == 7),
        "an invalid gather wrote to out"
    );
    assert!(matches!(
        y.take_into(&[1], &mut out),
        Err(Error::TakeOutput {
            rows: 1,
            row_bytes: 8,
            actual: 16,
            ..
        })
    ));
    let e = y.rows(4..11).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Format {
                source: mmtensor_format::Error::RowRange {
                    start: 4,
                    end: 11,
                    rows: 10,
                    ..
                },
                ..
            }
        ),
        "{e}"
    );
    let (start, end) = (5, 4); // a reversed range
    assert!(y.rows(start..end).is_err());
    let ds = open(&dir).unwrap();
    assert!(matches!(ds.column("z"), Err(Error::NotFound { .. })));
}

#[test]
fn a_one_shard_dataset_is_its_store() {
    let d = tempfile::tempdir().unwrap();
    let ds = open(&dataset(d.path(), 10, 100)).unwrap();
    assert_eq!(ds.shards().len(), 1);
    let y = ds.column("y").unwrap();
    let pieces = y.rows(..).unwrap();
    assert_eq!(pieces.len(), 1);
    // The piece is the shard's own tensor, not a copy.
    assert_eq!(
        pieces[0].bytes().unwrap().as_ptr(),
        ds.shards()[0]
            .as_ref()
            .unwrap()
            .tensor("y")
            .unwrap()
            .bytes()
            .unwrap()
            .as_ptr()
    );
}

#[test]
fn shards_that_differ_from_the_manifest_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let dir = dataset(d.path(), 10, 3);
    let shard1 = dir.join("shard-00001.mmt");
    let saved = std::fs::read(&shard1).unwrap();

    // Another valid shard renamed over it: same length, another header checksum.
    std::fs::copy(dir.join("shard-00000.mmt"), dir.join("other")).unwrap();
    std::fs::rename(dir.join("other"), &shard1).unwrap();
    let e = open(&dir).err().unwrap();
    assert!(
        matches!(&e, Error::ShardMismatch { path, reason } if path == &shard1 && reason.contains("header checksum")),
        "{e}"
    );

    // Missing.
    std::fs::remove_file(&shard1).unwrap();
    let e = open(&dir).err().unwrap();
    assert!(
        matches!(&e, Error::Io { path, .. } if path == &shard1),
        "{e}"
    );

    // Truncated: the store's own open refuses it, naming the shard.
    std::fs::write(&shard1, &saved[..saved.len() - 8]).unwrap();
    let e = open(&dir).err().unwrap();
    assert!(
        matches!(&e, Error::Format { path, .. } if path == &shard1),
        "{e}"
    );

    // A flipped data bit: open succeeds (it reads headers only), verify names the shard.
    let mut flipped = saved.clone();
    flipped[4096] ^= 1;
    std::fs::write(&shard1, &flipped).unwrap();
    let ds = open(&dir).unwrap();
    let e = ds.verify().unwrap_err();
    assert!(e.is_corruption(), "{e}");
    assert!(e.to_string().contains("shard-00001.mmt"), "{e}");

    std::fs::write(&shard1, &saved).unwrap();
    open(&dir).unwrap().verify().unwrap();

    // A corrupted manifest: the format crate's exact error, naming the manifest.
    let manifest = dir.join(MANIFEST_FILE);
    let mut m = std::fs::read(&manifest).unwrap();
    let last = m.len() - 2;
    m[last] ^= 1;
    std::fs::write(&manifest, &m).unwrap();
    let e = open(&dir).err().unwrap();
    assert!(
        matches!(&e, Error::Format { path, source: mmtensor_format::Error::ManifestChecksum { .. } } if path == &manifest),
        "{e}"
    );
    // Not a dataset at all.
    let e = open(d.path()).err().unwrap();
    assert!(matches!(&e, Error::Io { .. }), "{e}");
}

#[test]
fn a_reader_keeps_its_manifest_across_an_append() {
    let d = tempfile::tempdir().unwrap();
    let dir = dataset(d.path(), 10, 4);
    let before = open(&dir).unwrap();
    let y_before = before.column("y").unwrap();
    append(
        &dir,
        &inputs(d.path(), 5, "new"),
        &ConvertOptions::default(),
        Some(4 * 14),
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    // The old handle still reads its 10 rows; a new open sees 15.
    let mut out = vec![0u8; 8];
    y_before.take_into(&[9], &mut out).unwrap();
    assert_eq!(y_rows(&out), [1009]);
    assert_eq!(y_before.num_rows(), 10);
    let after = open(&dir).unwrap();
    assert_eq!(after.num_rows(), 15);
    let mut out = vec![0u8; 3 * 8];
    after
        .column("y")
        .unwrap()
        .take_into(&[14, 10, 9], &mut out)
        .unwrap();
    assert_eq!(y_rows(&out), [1004, 1000, 1009]);
}

mod hand_built {
    use super::*;
    use mmtensor_format::{ColumnSpec, Manifest, Preamble, Shard};
    use mmtensor_testsupport::TestStore;
    use proptest::prelude::*;

    /// A dataset of one U32 column `y` (row `r` holds `r`) in shards of `rows[i]` rows, empty
    /// shards included (which our writer never makes, but the format allows).
    fn build(dir: &Path, rows: &[u64]) {
        let mut shards = Vec::new();
        let mut start = 0u32;
        for (i, &n) in rows.iter().enumerate() {
            let name = format!("part-{i}.mmt");
            let bytes: Vec<u8> = (start..start + n as u32)
                .flat_map(|v| v.to_le_bytes())
                .collect();
            TestStore::new()
                .alignment(64)
                .tensor("y", Dtype::U32, &[n], bytes)
                .write(&dir.join(&name))
                .unwrap();
            let file = std::fs::read(dir.join(&name)).unwrap();
            let pre = Preamble::parse(&file).unwrap();
            shards.push(Shard::new(name, file.len() as u64, pre.header_checksum, n).unwrap());
            start += n as u32;
        }
        let columns = vec![ColumnSpec::new("y", Dtype::U32, vec![]).unwrap()];
        mmtensor_convert::write_manifest(dir, &Manifest::new(columns, shards).unwrap()).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Gathers and row ranges over any shard sizes (empty shards anywhere) give what a
        /// row-by-row lookup gives.
        #[test]
        fn take_and_rows_match_row_by_row_lookup(
            rows in proptest::collection::vec(0u64..5, 1..7),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
            range in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
        ) {
            let d = tempfile::tempdir().unwrap();
            build(d.path(), &rows);
            let ds = open(d.path()).unwrap();
            let y = ds.column("y").unwrap();
            let total: u64 = rows.iter().sum();
            prop_assert_eq!(y.num_rows(), total);
            if total == 0 {
                prop_assert!(y.take_into(&[0], &mut [0u8; 4]).is_err());
                prop_assert!(y.rows(..).unwrap().is_empty());
                return Ok(());
            }
            let idx: Vec<u64> = picks.iter().map(|p| p.index(total as usize) as u64).collect();
            let mut out = vec![0u8; idx.len() * 4];
            y.take_into(&idx, &mut out).unwrap();
            let got: Vec<u64> = out
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as u64)
                .collect();
            prop_assert_eq!(got, idx);
            let (a, b) = (range.0.index(total as usize + 1) as u64, range.1.index(total as usize + 1) as u64);
            let (a, b) = (a.min(b), a.max(b));
            let pieces = y.rows(a..b).unwrap();
            prop_assert!(pieces.iter().all(|p| p.shape()[0] > 0));
            let got: Vec<u64> = pieces
                .iter()
                .flat_map(|p| p.to_vec::<u32>().unwrap())
                .map(u64::from)
                .collect();
            prop_assert_eq!(got, (a..b).collect::<Vec<_>>());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A dataset opened with any subset of its shards (empty ones anywhere): every row of an
        /// open shard gathers to its own value, any row of an unopened one is ShardNotOpen, and
        /// row ranges agree.
        #[test]
        fn partial_take_and_rows_match_row_by_row_lookup(
            rows in proptest::collection::vec(0u64..5, 1..8),
            open_mask in proptest::collection::vec(any::<bool>(), 8),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
            range in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
        ) {
            let d = tempfile::tempdir().unwrap();
            build(d.path(), &rows);
            let manifest = Dataset::read_manifest(d.path()).unwrap();
            let paths: Vec<Option<PathBuf>> = (0..rows.len())
                .map(|i| open_mask[i].then(|| d.path().join(format!("part-{i}.mmt"))))
                .collect();
            // SAFETY: the test's files are not modified while mapped.
            let ds = unsafe { Dataset::open_shards(d.path(), manifest, &paths) }.unwrap();
            let y = ds.column("y").unwrap();
            let total: u64 = rows.iter().sum();
            let mut shard_of = Vec::new();
            for (i, &n) in rows.iter().enumerate() {
                shard_of.extend(std::iter::repeat_n(i, n as usize));
            }
            let is_open = |r: u64| open_mask[shard_of[r as usize]];
            if total == 0 {
                return Ok(());
            }
            let all: Vec<u64> = picks.iter().map(|p| p.index(total as usize) as u64).collect();
            let ok: Vec<u64> = all.iter().copied().filter(|&r| is_open(r)).collect();
            let mut out = vec![0u8; ok.len() * 4];
            y.take_into(&ok, &mut out).unwrap();
            let got: Vec<u64> = out
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as u64)
                .collect();
            prop_assert_eq!(got, ok);
            if let Some(&bad) = all.iter().find(|&&r| !is_open(r)) {
                let mut out = vec![0u8; all.len() * 4];
                let e = y.take_into(&all, &mut out).unwrap_err();
                let shard_want = shard_of[bad as usize];
                prop_assert!(
                    matches!(e, Error::ShardNotOpen { row, shard, .. } if row == bad && shard == shard_want),
                    "{}", e
                );
            }
            let (a, b) = (range.0.index(total as usize + 1) as u64, range.1.index(total as usize + 1) as u64);
            let (a, b) = (a.min(b), a.max(b));
            match y.rows(a..b) {
                Ok(pieces) => {
                    prop_assert!((a..b).all(is_open));
                    let got: Vec<u64> = pieces
                        .iter()
                        .flat_map(|p| p.to_vec::<u32>().unwrap())
                        .map(u64::from)
                        .collect();
                    prop_assert_eq!(got, (a..b).collect::<Vec<_>>());
                }
                Err(Error::ShardNotOpen { row, .. }) => {
                    prop_assert!(!(a..b).all(is_open));
                    prop_assert_eq!(Some(row), (a..b).find(|&r| !is_open(r)));
                }
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
    }
}

/// `x`'s U16 elements widened to I64, as a gather that casts them must give.
fn widened(bytes: &[u8]) -> Vec<u8> {
    bytes
        .chunks_exact(2)
        .flat_map(|c| i64::from(u16::from_le_bytes([c[0], c[1]])).to_le_bytes())
        .collect()
}

#[test]
fn a_cast_gather_across_shards_equals_the_gather_then_the_cast() {
    let d = tempfile::tempdir().unwrap();
    let dir = dataset(d.path(), 100, 7);
    let x = open(&dir).unwrap().column("x").unwrap(); // U16 [100, 3] in shards of 7 rows
    let idx: Vec<u64> = (0..300u64).map(|k| (k * 37 + k / 5) % 100).collect();
    let mut plain = vec![0u8; idx.len() * 6];
    x.take_into(&idx, &mut plain).unwrap();
    let mut wide = vec![0u8; idx.len() * 24];
    x.take_into_as(&idx, &mut wide, Dtype::I64).unwrap();
    assert_eq!(wide, widened(&plain));
    let mut floats = vec![0u8; idx.len() * 12];
    x.take_into_as(&idx, &mut floats, Dtype::F32).unwrap();
    let want: Vec<u8> = plain
        .chunks_exact(2)
        .flat_map(|c| f32::from(u16::from_le_bytes([c[0], c[1]])).to_le_bytes())
        .collect();
    assert_eq!(floats, want);

    // The output is counted in rows of the target dtype, and a refused cast names the folder and
    // the column; neither writes anything.
    let mut out = vec![7u8; 6];
    let e = x.take_into_as(&[1], &mut out, Dtype::I64).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TakeOutput {
                rows: 1,
                row_bytes: 24,
                actual: 6,
                ..
            }
        ),
        "{e}"
    );
    let e = x.take_into_as(&[1], &mut out, Dtype::I8).unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedCast { path, tensor, from: Dtype::U16, to: Dtype::I8 }
            if path == &dir && tensor == "x"),
        "{e}"
    );
    assert!(out.iter().all(|&b| b == 7));

    // A dataset opened for one rank casts the rows of the shards it has, at their own offsets.
    // SAFETY: the tests' files are not modified while open.
    let mine = unsafe { Dataset::open_rank(&dir, 1, 2) }.unwrap();
    let part = mine.column("x").unwrap();
    let own: Vec<u64> = (0..100)
        .filter(|&r| {
            part.locate(r)
                .is_some_and(|(s, _)| part.parts()[s].is_some())
        })
        .rev()
        .collect();
    assert!(!own.is_empty() && own.len() < 100);
    let mut plain = vec![0u8; own.len() * 6];
    x.take_into(&own, &mut plain).unwrap();
    let mut wide = vec![0u8; own.len() * 24];
    part.take_into_as(&own, &mut wide, Dtype::I64).unwrap();
    assert_eq!(wide, widened(&plain));
}
