//! Ragged columns written by `DatasetWriter::write_batch`: rows of any length next to fixed
//! columns, shards cut by items, a row longer than a shard in a shard of its own, part writers
//! and appends; every byte read back through the loader and verified.

use std::path::Path;

use mmtensor::Dataset;
use mmtensor_convert::{commit, ColumnBatch, ConvertOptions, DatasetWriter, Error, Fill};
use mmtensor_format::{ColumnSpec, Dtype, Manifest, MANIFEST_FILE};

fn columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", Dtype::I64, vec![]).unwrap(),
        ColumnSpec::ragged("tokens", Dtype::U16, vec![]).unwrap(),
        ColumnSpec::ragged("boxes", Dtype::F32, vec![4]).unwrap(),
    ]
}

/// Row `i`: id = i, tokens = (i * 7 + k) for k < i % 23, boxes = i % 3 boxes of [i, k, 0.5, -1].
fn len_tokens(i: u64) -> u64 {
    i % 23
}
fn len_boxes(i: u64) -> u64 {
    i % 3
}

fn write(w: &mut DatasetWriter, from: u64, n: u64) {
    let (mut id, mut tok, mut bx, mut lt, mut lb) = (vec![], vec![], vec![], vec![], vec![]);
    for i in from..from + n {
        id.extend_from_slice(&(i as i64).to_le_bytes());
        lt.push(len_tokens(i));
        for k in 0..len_tokens(i) {
            tok.extend_from_slice(&((i * 7 + k) as u16).to_le_bytes());
        }
        lb.push(len_boxes(i));
        for k in 0..len_boxes(i) {
            for v in [i as f32, k as f32, 0.5, -1.0] {
                bx.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    w.write_batch(
        n,
        &[
            ColumnBatch::Fixed(&id),
            ColumnBatch::Ragged {
                values: &tok,
                lengths: &lt,
            },
            ColumnBatch::Ragged {
                values: &bx,
                lengths: &lb,
            },
        ],
    )
    .unwrap();
}

fn check(dir: &Path, rows: u64) -> Dataset {
    // SAFETY: the test's own files.
    let ds = unsafe { Dataset::open(dir) }.unwrap();
    ds.verify().unwrap();
    assert_eq!(ds.num_rows(), rows);
    let tokens = ds.ragged("tokens").unwrap();
    let boxes = ds.ragged("boxes").unwrap();
    assert_eq!(boxes.item_shape(), [4]);
    let ids = ds.column("id").unwrap();
    let all: Vec<u64> = (0..rows).collect();
    let mut got = vec![0u8; rows as usize * 8];
    ids.take_into(&all, &mut got).unwrap();
    for i in 0..rows {
        assert_eq!(
            i64::from_le_bytes(got[i as usize * 8..][..8].try_into().unwrap()),
            i as i64
        );
        let t = tokens.row(i).unwrap();
        let want: Vec<u16> = (0..len_tokens(i)).map(|k| (i * 7 + k) as u16).collect();
        assert_eq!(t.as_slice::<u16>().unwrap(), want, "row {i}");
        let b = boxes.row(i).unwrap();
        assert_eq!(b.shape(), [len_boxes(i), 4]);
        let v = b.as_slice::<f32>().unwrap();
        for k in 0..len_boxes(i) as usize {
            assert_eq!(v[k * 4..k * 4 + 4], [i as f32, k as f32, 0.5, -1.0]);
        }
    }
    ds
}

#[test]
fn ragged_rows_are_cut_into_shards_by_items_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let ds_dir = dir.path().join("ds");
    // 64 bytes a shard: at most 32 tokens and 4 boxes of each column per shard.
    let mut w = DatasetWriter::create(&ds_dir, columns(), 64, &ConvertOptions::default()).unwrap();
    for (from, n) in [(0, 1), (1, 40), (41, 7), (48, 0), (48, 52)] {
        write(&mut w, from, n);
    }
    w.finish().unwrap();
    let m = Manifest::parse(&std::fs::read(ds_dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert!(m.shards().len() > 5, "{} shards", m.shards().len());
    let ds = check(&ds_dir, 100);
    // No shard holds more than 32 tokens, but a row always stays whole.
    let tokens = ds.ragged("tokens").unwrap();
    let starts = tokens.value_starts();
    assert!(starts.windows(2).all(|w| w[1] - w[0] <= 32), "{starts:?}");
}

#[test]
fn a_row_longer_than_a_shard_gets_a_shard_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let ds_dir = dir.path().join("ds");
    let cols = vec![ColumnSpec::ragged("tokens", Dtype::U8, vec![]).unwrap()];
    let mut w = DatasetWriter::create(&ds_dir, cols, 16, &ConvertOptions::default()).unwrap();
    let lengths = [3u64, 40, 2, 2, 100, 0, 5];
    let values: Vec<u8> = (0..lengths.iter().sum::<u64>()).map(|i| i as u8).collect();
    w.write_batch(
        7,
        &[ColumnBatch::Ragged {
            values: &values,
            lengths: &lengths,
        }],
    )
    .unwrap();
    w.finish().unwrap();
    // SAFETY: the test's own files.
    let ds = unsafe { Dataset::open(&ds_dir) }.unwrap();
    ds.verify().unwrap();
    let t = ds.ragged("tokens").unwrap();
    let mut at = 0u64;
    for (i, &l) in lengths.iter().enumerate() {
        let row = t.row(i as u64).unwrap();
        let want: Vec<u8> = (at..at + l).map(|v| v as u8).collect();
        assert_eq!(row.as_slice::<u8>().unwrap(), want);
        at += l;
    }
    let shard_rows: Vec<u64> = ds
        .manifest()
        .shards()
        .iter()
        .map(|s| s.num_rows())
        .collect();
    // The shard sized for the 100-item row still has room for the empty row after it.
    assert_eq!(shard_rows, [1, 1, 2, 2, 1], "3 | 40 | 2 2 | 100 0 | 5");
}

#[test]
fn bad_ragged_batches_are_refused_whole_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let ds_dir = dir.path().join("ds");
    let mut w =
        DatasetWriter::create(&ds_dir, columns(), 1 << 20, &ConvertOptions::default()).unwrap();
    let id = 5i64.to_le_bytes();
    let bx = [0u8; 16];
    let cases: Vec<(Vec<ColumnBatch<'_>>, &str)> = vec![
        (
            vec![
                ColumnBatch::Fixed(&id),
                ColumnBatch::Fixed(&[0, 0]),
                ColumnBatch::Ragged {
                    values: &bx,
                    lengths: &[1],
                },
            ],
            "the column is ragged",
        ),
        (
            vec![
                ColumnBatch::Ragged {
                    values: &id,
                    lengths: &[4],
                },
                ColumnBatch::Ragged {
                    values: &[0, 0],
                    lengths: &[1],
                },
                ColumnBatch::Ragged {
                    values: &bx,
                    lengths: &[1],
                },
            ],
            "fixed rows",
        ),
        (
            vec![
                ColumnBatch::Fixed(&id),
                ColumnBatch::Ragged {
                    values: &[0, 0],
                    lengths: &[1, 0],
                },
                ColumnBatch::Ragged {
                    values: &bx,
                    lengths: &[1],
                },
            ],
            "2 row lengths given for 1 rows",
        ),
        (
            vec![
                ColumnBatch::Fixed(&id),
                ColumnBatch::Ragged {
                    values: &[0, 0, 0],
                    lengths: &[1],
                },
                ColumnBatch::Ragged {
                    values: &bx,
                    lengths: &[1],
                },
            ],
            "3 bytes of values given for rows of 1 items",
        ),
        (
            vec![
                ColumnBatch::Fixed(&id),
                ColumnBatch::Ragged {
                    values: &[0, 0],
                    lengths: &[u64::MAX],
                },
                ColumnBatch::Ragged {
                    values: &bx,
                    lengths: &[1],
                },
            ],
            "2 bytes of values",
        ),
    ];
    for (batch, what) in cases {
        let e = w.write_batch(1, &batch).unwrap_err();
        assert!(
            matches!(e, Error::Batch { .. }) && e.to_string().contains(what),
            "{e}"
        );
    }
    write(&mut w, 0, 30);
    w.finish().unwrap();
    check(&ds_dir, 30);
}

#[test]
fn parts_commit_and_appends_keep_ragged_columns() {
    let dir = tempfile::tempdir().unwrap();
    let ds_dir = dir.path().join("ds");
    let options = ConvertOptions::default();
    let mut w = DatasetWriter::create(&ds_dir, columns(), 128, &options).unwrap();
    write(&mut w, 0, 10);
    w.finish().unwrap();
    // Two part writers, finishing in reverse order, then one commit.
    let mut b = DatasetWriter::part(&ds_dir, 1, Some(columns()), Some(128), &options).unwrap();
    let mut a = DatasetWriter::part(&ds_dir, 0, Some(columns()), Some(128), &options).unwrap();
    write(&mut a, 10, 15);
    write(&mut b, 25, 20);
    b.finish().unwrap();
    a.finish().unwrap();
    commit(&ds_dir, None).unwrap();
    check(&ds_dir, 45);
    // An append adds shards (a ragged dataset's last shard is never filled).
    let before = Manifest::parse(&std::fs::read(ds_dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    let mut w = DatasetWriter::append(&ds_dir, None, Fill::LastShard, &options).unwrap();
    write(&mut w, 45, 30);
    w.finish().unwrap();
    let after = Manifest::parse(&std::fs::read(ds_dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(after.shards()[..before.shards().len()], before.shards()[..]);
    check(&ds_dir, 75);
}
