//! The training loader: its batches are the order's batches gathered with `take`, whatever the
//! prefetch depth; its state resumes exactly; it never writes to a batch the caller holds, and
//! reuses at most `prefetch + 1` sets of buffers; bad options are errors naming what is wrong.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use mmtensor::loader::{Allocate, Buffers};
use mmtensor::order::{OrderError, Shuffle};
use mmtensor::{Dtype, Error, Loader, LoaderOptions, RankSplit, Store};
use mmtensor_convert::sample::{SampleStore, SampleTensor};

/// `x` F32 [rows, 3], `y` I64 [rows], `mask` BOOL [rows] (0/1), `other` F32 [7, 2], `s` a scalar.
fn store(dir: &Path, rows: u64) -> PathBuf {
    write(
        &dir.join("s.mmt"),
        vec![
            SampleTensor::pattern("x", Dtype::F32, &[rows, 3], 1),
            SampleTensor::pattern("y", Dtype::I64, &[rows], 2),
            mask(rows),
            SampleTensor::pattern("other", Dtype::F32, &[7, 2], 3),
            SampleTensor::pattern("s", Dtype::F64, &[], 4),
        ],
    )
}

/// `mask` BOOL [rows]: 1 on every third row.
fn mask(rows: u64) -> SampleTensor {
    let mut mask = SampleTensor::pattern("mask", Dtype::Bool, &[rows], 0);
    mask.bytes = (0..rows).map(|i| (i % 3 == 0) as u8).collect();
    mask
}

/// Writes a store of `tensors` at `path`.
fn write(path: &Path, tensors: Vec<SampleTensor>) -> PathBuf {
    let sample = SampleStore {
        alignment: 64,
        block_size: 4096,
        metadata: vec![],
        tensors,
    };
    sample.write(path).unwrap();
    path.to_path_buf()
}

fn open(path: &Path) -> Store {
    // SAFETY: the tests own the file and never modify it while it is mapped.
    unsafe { Store::open(path) }.unwrap()
}

/// The batches of one epoch as (rows, bytes of each column).
type Epoch = Vec<(Vec<u64>, Vec<Vec<u8>>)>;

fn collect(loader: &mut Loader) -> Epoch {
    loader
        .iter()
        .unwrap()
        .map(|b| {
            let b = b.unwrap();
            let cols = b.columns().map(|c| c.bytes().to_vec()).collect();
            (b.row_indices().to_vec(), cols)
        })
        .collect()
}

/// What the batches must be: the order's batches, each column gathered by `take_bytes`.
fn expected(store: &Store, loader: &Loader, epoch: u64) -> Epoch {
    let order = loader.spec().epoch(epoch).unwrap();
    order
        .iter()
        .map(|rows| {
            let cols = loader
                .column_names()
                .map(|n| store.tensor(n).unwrap().take_bytes(rows).unwrap())
                .collect();
            (rows.to_vec(), cols)
        })
        .collect()
}

#[test]
fn default_columns_are_the_tensors_sharing_the_first_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 50));
    let loader = Loader::new(&store, LoaderOptions::new(8)).unwrap();
    assert_eq!(
        loader.column_names().collect::<Vec<_>>(),
        ["x", "y", "mask"]
    );
    assert_eq!(loader.len(), 7);
}

#[test]
fn batches_are_the_orders_rows_gathered_whatever_the_prefetch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 103));
    let shuffles = [
        Shuffle::None,
        Shuffle::Full,
        Shuffle::Block {
            block_rows: 4,
            window_blocks: 3,
        },
    ];
    for shuffle in shuffles {
        for (world_size, drop_last) in [(1, false), (1, true), (3, false), (3, true)] {
            for rank in 0..world_size {
                let mut reference: Option<Epoch> = None;
                for prefetch in [0, 1, 2, 5] {
                    let options = LoaderOptions {
                        shuffle,
                        seed: 11,
                        rank,
                        world_size,
                        drop_last,
                        prefetch,
                        ..LoaderOptions::new(10)
                    };
                    let mut loader = Loader::new(&store, options).unwrap();
                    loader.set_epoch(2);
                    let got = collect(&mut loader);
                    assert_eq!(got, expected(&store, &loader, 2), "{shuffle:?} p{prefetch}");
                    assert_eq!(got.len(), loader.len());
                    assert_eq!(loader.state(), loader.state_at(3, 0));
                    match &reference {
                        None => reference = Some(got),
                        Some(r) => assert_eq!(&got, r, "prefetch changed the batches"),
                    }
                }
            }
        }
    }
}

#[test]
fn typed_columns_view_the_gathered_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 40));
    let options = LoaderOptions {
        columns: Some(vec!["y".into(), "x".into(), "mask".into()]),
        shuffle: Shuffle::Full,
        ..LoaderOptions::new(16)
    };
    let mut loader = Loader::new(&store, options).unwrap();
    let ys = store.tensor("y").unwrap();
    let all_y = ys.as_slice::<i64>().unwrap();
    let mut seen = Vec::new();
    for batch in loader.iter().unwrap() {
        let batch = batch.unwrap();
        let y: &[i64] = batch.column("y").unwrap().as_slice().unwrap();
        let want: Vec<i64> = batch
            .row_indices()
            .iter()
            .map(|&r| all_y[r as usize])
            .collect();
        assert_eq!(y, want);
        let x = batch.column("x").unwrap();
        assert_eq!(x.shape(), [batch.len() as u64, 3]);
        assert_eq!(x.as_slice::<f32>().unwrap().len(), batch.len() * 3);
        assert_eq!(
            x.bytes().as_ptr() as usize % 64,
            0,
            "buffers are 64-byte aligned"
        );
        let mask: &[bool] = batch.column("mask").unwrap().as_slice().unwrap();
        assert!(mask
            .iter()
            .zip(batch.row_indices())
            .all(|(&m, &r)| m == (r % 3 == 0)));
        assert!(matches!(
            batch.column("x").unwrap().as_slice::<f64>(),
            Err(Error::DtypeMismatch { .. })
        ));
        assert!(matches!(batch.column("nope"), Err(Error::NotFound { .. })));
        seen.extend_from_slice(batch.row_indices());
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..40).collect::<Vec<u64>>());
}

#[test]
fn a_saved_state_resumes_with_exactly_the_remaining_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = store(dir.path(), 77);
    let options = LoaderOptions {
        shuffle: Shuffle::Full,
        seed: 5,
        prefetch: 3,
        ..LoaderOptions::new(9)
    };
    let store = open(&path);
    let mut whole = Loader::new(&store, options.clone()).unwrap();
    whole.set_epoch(4);
    let all = collect(&mut whole);

    let mut first = Loader::new(&store, options.clone()).unwrap();
    first.set_epoch(4);
    let head: Epoch = first
        .iter()
        .unwrap()
        .take(3)
        .map(|b| {
            let b = b.unwrap();
            (
                b.row_indices().to_vec(),
                b.columns().map(|c| c.bytes().to_vec()).collect(),
            )
        })
        .collect();
    let saved = first.state();
    assert_eq!(saved, first.state_at(4, 3));
    drop(first);

    // A new process: a new store handle and loader.
    let store = open(&path);
    let mut resumed = Loader::new(&store, options).unwrap();
    resumed.set_state(saved).unwrap();
    // The usual loop calls set_epoch with the saved epoch: that must not restart it.
    resumed.set_epoch(4);
    let tail = collect(&mut resumed);
    assert_eq!([head, tail].concat(), all);

    // Past the end is refused; the end itself is an empty remainder that moves on.
    assert!(matches!(
        resumed.set_state(resumed.state_at(0, 10)),
        Err(Error::Order {
            source: OrderError::ResumePastEnd { batch: 10, len: 9 },
            ..
        })
    ));
    resumed.set_state(resumed.state_at(4, 9)).unwrap();
    let next = resumed.iter().unwrap().next().unwrap().unwrap();
    assert_eq!((next.epoch(), next.index()), (5, 0));
}

#[test]
fn epochs_advance_by_themselves_and_set_epoch_starts_another() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 30));
    let options = LoaderOptions {
        shuffle: Shuffle::Full,
        ..LoaderOptions::new(10)
    };
    let mut loader = Loader::new(&store, options).unwrap();
    let e0 = collect(&mut loader);
    let e1 = collect(&mut loader);
    assert_eq!(e0, expected(&store, &loader, 0));
    assert_eq!(e1, expected(&store, &loader, 1));
    assert_ne!(e0, e1);
    // Partway through epoch 2, set_epoch(0) starts epoch 0 from its first batch.
    drop(loader.iter().unwrap().next());
    assert_eq!(loader.state(), loader.state_at(2, 1));
    loader.set_epoch(0);
    assert_eq!(collect(&mut loader), e0);
}

#[test]
fn held_batches_are_never_overwritten_and_released_ones_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 500));
    for prefetch in [0, 1, 2, 4] {
        let options = LoaderOptions {
            shuffle: Shuffle::Full,
            prefetch,
            ..LoaderOptions::new(7)
        };
        let mut loader = Loader::new(&store, options).unwrap();
        let want = expected(&store, &loader, 0);
        // Holding every batch: each must still hold its own rows at the end.
        let held: Vec<_> = loader.iter().unwrap().map(Result::unwrap).collect();
        for (b, (rows, cols)) in held.iter().zip(&want) {
            assert_eq!(b.row_indices(), rows);
            let got: Vec<Vec<u8>> = b.columns().map(|c| c.bytes().to_vec()).collect();
            assert_eq!(&got, cols);
        }
        drop(held);
        // Letting go of each batch before the next: at most prefetch + 1 sets of buffers.
        let mut addresses = HashSet::new();
        for b in loader.iter().unwrap() {
            let b = b.unwrap();
            addresses.insert(b.column("x").unwrap().bytes().as_ptr() as usize);
        }
        assert!(
            addresses.len() <= prefetch + 1,
            "prefetch {prefetch}: {} buffer sets",
            addresses.len()
        );
    }
}

#[test]
fn stopping_mid_epoch_stops_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 1000));
    let options = LoaderOptions {
        prefetch: 3,
        ..LoaderOptions::new(1)
    };
    let mut loader = Loader::new(&store, options).unwrap();
    for _ in 0..50 {
        let mut it = loader.iter().unwrap();
        it.next().unwrap().unwrap();
        // Dropping the iterator joins its worker, which is blocked on a full channel.
    }
    assert_eq!(loader.state(), loader.state_at(0, 50));
}

#[test]
fn bad_options_are_errors_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 20));
    let err = |options: LoaderOptions| Loader::new(&store, options).unwrap_err();
    let cols = |names: &[&str]| LoaderOptions {
        columns: Some(names.iter().map(|s| s.to_string()).collect()),
        ..LoaderOptions::new(4)
    };
    assert!(matches!(
        err(LoaderOptions::new(0)),
        Error::Order {
            source: OrderError::ZeroBatchSize,
            ..
        }
    ));
    let e = err(LoaderOptions {
        rank: 2,
        world_size: 2,
        ..LoaderOptions::new(4)
    });
    assert!(matches!(
        e,
        Error::Order {
            source: OrderError::RankOutOfRange {
                rank: 2,
                world_size: 2
            },
            ..
        }
    ));
    assert!(e.to_string().contains("s.mmt"), "{e}");
    assert!(matches!(
        err(LoaderOptions {
            shuffle: Shuffle::Block {
                block_rows: 0,
                window_blocks: 1
            },
            ..LoaderOptions::new(4)
        }),
        Error::Order {
            source: OrderError::EmptyBlock { .. },
            ..
        }
    ));
    assert!(
        matches!(err(cols(&["x", "nope"])), Error::NotFound { tensor, .. } if tensor == "nope")
    );
    assert!(
        matches!(err(cols(&["x", "x"])), Error::DuplicateColumn { column, .. } if column == "x")
    );
    let e = err(cols(&["x", "other"]));
    assert!(
        matches!(&e, Error::ColumnRows { column, rows: 7, first, first_rows: 20, .. }
            if column == "other" && first == "x"),
        "{e}"
    );
    assert!(matches!(err(cols(&[])), Error::NoColumns { .. }));
    assert!(matches!(
        err(cols(&["s"])),
        Error::Format {
            source: mmtensor_format::Error::Scalar { .. },
            ..
        }
    ));
}

#[test]
fn a_store_without_rows_has_no_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 0));
    let mut loader = Loader::new(&store, LoaderOptions::new(4)).unwrap();
    assert_eq!(loader.len(), 0);
    assert!(loader.iter().unwrap().next().is_none());
}

/// A caller's buffers: plain vectors, `short` bytes too few, or an error after `fail_after` sets.
struct Vecs {
    short: usize,
    fail_after: usize,
}

struct VecBuffers(Vec<Vec<u8>>);

impl Buffers for VecBuffers {
    fn column_mut(&mut self, c: usize) -> &mut [u8] {
        &mut self.0[c]
    }
    fn column(&self, c: usize) -> &[u8] {
        &self.0[c]
    }
}

impl Allocate for Vecs {
    type Buffers = VecBuffers;
    fn allocate(
        &mut self,
        lens: &[usize],
    ) -> Result<VecBuffers, Box<dyn std::error::Error + Send + Sync>> {
        if self.fail_after == 0 {
            return Err("out of pinned memory".into());
        }
        self.fail_after -= 1;
        Ok(VecBuffers(
            lens.iter()
                .map(|&n| vec![0; n.saturating_sub(self.short)])
                .collect(),
        ))
    }
}

#[test]
fn a_callers_allocator_gets_the_same_batches_and_its_errors_end_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 60));
    let options = LoaderOptions {
        shuffle: Shuffle::Full,
        ..LoaderOptions::new(8)
    };
    let loader = Loader::new(&store, options).unwrap();
    let want = expected(&store, &loader, 0);
    let got: Epoch = loader
        .stream(Vecs {
            short: 0,
            fail_after: usize::MAX,
        })
        .unwrap()
        .map(|b| {
            let b = b.unwrap();
            let rows = b.row_indices().to_vec();
            (rows, b.into_buffers().0)
        })
        .collect();
    assert_eq!(got, want);
    // The stream does not move the loader.
    assert_eq!(loader.state(), loader.state_at(0, 0));

    let mut failing = loader
        .stream(Vecs {
            short: 0,
            fail_after: 2,
        })
        .unwrap();
    let first = failing.next().unwrap();
    assert!(first.is_ok(), "{:?}", first.err());
    assert!(failing.next().unwrap().is_ok());
    let e = failing.next().unwrap().unwrap_err();
    assert!(matches!(e, Error::Buffers { .. }), "{e}");
    assert!(e.to_string().contains("out of pinned memory"), "{e}");
    assert!(failing.next().is_none(), "the stream ends after an error");

    let mut short = loader
        .stream(Vecs {
            short: 1,
            fail_after: usize::MAX,
        })
        .unwrap();
    assert!(matches!(
        short.next().unwrap(),
        Err(Error::TakeOutput { .. })
    ));
}

/// The same rows written as one store and as a dataset of many shards (some rows per shard).
fn store_and_dataset(dir: &Path, rows: u64, per_shard: u64) -> (PathBuf, PathBuf) {
    use mmtensor_convert::{convert_dataset, ConvertOptions, Input, NoProgress};
    use mmtensor_format::npy;
    let mut x = npy::encode_header(Dtype::F32, &[rows, 3]);
    x.extend((0..rows * 3).flat_map(|i| (i as f32 * 0.5).to_le_bytes()));
    let mut y = npy::encode_header(Dtype::I64, &[rows]);
    y.extend((0..rows).flat_map(|r| (r as i64 * 7).to_le_bytes()));
    std::fs::write(dir.join("x.npy"), x).unwrap();
    std::fs::write(dir.join("y.npy"), y).unwrap();
    let inputs = [
        Input::parse(&format!("x={}", dir.join("x.npy").display())).unwrap(),
        Input::parse(&format!("y={}", dir.join("y.npy").display())).unwrap(),
    ];
    let one = dir.join("one.mmt");
    mmtensor_convert::convert(
        &inputs,
        &one,
        &ConvertOptions::default(),
        &NoProgress,
        &std::sync::atomic::AtomicBool::new(false),
    )
    .unwrap();
    let ds = dir.join("ds");
    convert_dataset(
        &inputs,
        &ds,
        &ConvertOptions::default(),
        per_shard * (12 + 8),
        &NoProgress,
        &std::sync::atomic::AtomicBool::new(false),
    )
    .unwrap();
    (one, ds)
}

#[test]
fn a_loader_over_a_sharded_dataset_gives_the_batches_of_the_same_rows_in_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let (one, ds) = store_and_dataset(dir.path(), 157, 10);
    let store = open(&one);
    // SAFETY: the tests own the files and never modify them while they are mapped.
    let dataset = unsafe { mmtensor::Dataset::open(&ds) }.unwrap();
    assert!(dataset.shards().len() > 10);
    for shuffle in [
        Shuffle::None,
        Shuffle::Full,
        Shuffle::Block {
            block_rows: 8,
            window_blocks: 4,
        },
    ] {
        for prefetch in [0, 2] {
            let options = LoaderOptions {
                shuffle,
                seed: 3,
                prefetch,
                ..LoaderOptions::new(2)
            };
            let mut a = Loader::new(&store, options.clone()).unwrap();
            let mut b = Loader::from_dataset(&dataset, options).unwrap();
            assert_eq!(a.len(), b.len());
            assert_eq!(
                b.columns()
                    .map(|c| (c.name(), c.dtype()))
                    .collect::<Vec<_>>(),
                [("x", Dtype::F32), ("y", Dtype::I64)]
            );
            assert_eq!(collect(&mut a), collect(&mut b), "{shuffle:?}");
        }
    }
    let e = Loader::from_dataset(
        &dataset,
        LoaderOptions {
            columns: Some(vec!["z".into()]),
            ..LoaderOptions::new(4)
        },
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { tensor, .. } if tensor == "z"),
        "{e}"
    );
    assert!(e.to_string().contains("ds"), "{e}");
}

#[test]
fn whole_shards_per_rank_read_only_the_rank_s_shards_and_a_rank_s_dataset_is_enough() {
    let dir = tempfile::tempdir().unwrap();
    let (one, ds) = store_and_dataset(dir.path(), 157, 10);
    let store = open(&one);
    // SAFETY: the tests own the files and never modify them while they are mapped.
    let full = unsafe { mmtensor::Dataset::open(&ds) }.unwrap();
    let shard_rows: Vec<u64> = full
        .manifest()
        .shards()
        .iter()
        .map(|s| s.num_rows())
        .collect();
    let ranks = mmtensor::order::shard_ranks(&shard_rows, 3).unwrap();
    let starts = full.manifest().starts();
    for rank in 0..3u64 {
        let options = LoaderOptions {
            shuffle: Shuffle::Full,
            seed: 11,
            rank,
            world_size: 3,
            split: RankSplit::Shards,
            prefetch: 2,
            ..LoaderOptions::new(8)
        };
        // SAFETY: as above.
        let mine = unsafe { mmtensor::Dataset::open_rank(&ds, rank, 3) }.unwrap();
        assert!(!mine.is_complete());
        assert_eq!(mine.rank(), Some((rank, 3)));
        assert_eq!(full.rank(), None);
        for (i, s) in mine.shards().iter().enumerate() {
            assert_eq!(s.is_some(), ranks[i] == rank, "shard {i}");
        }
        let mut a = Loader::from_dataset(&full, options.clone()).unwrap();
        let mut b = Loader::from_dataset(&mine, options.clone()).unwrap();
        let got = collect(&mut b);
        assert_eq!(collect(&mut a), got);
        // The batches are the order's rows, gathered from this rank's shards only.
        assert_eq!(got, expected(&store, &b, 0));
        for (rows, _) in &got {
            for &r in rows {
                let shard = starts.partition_point(|&s| s <= r) - 1;
                assert_eq!(ranks[shard], rank, "row {r}");
            }
        }
        // Another rank's options, or the row split, need shards this dataset lacks.
        for other in [
            LoaderOptions {
                rank: (rank + 1) % 3,
                ..options.clone()
            },
            LoaderOptions {
                split: RankSplit::Rows,
                ..options.clone()
            },
        ] {
            let e = Loader::from_dataset(&mine, other).unwrap_err();
            assert!(matches!(e, Error::ShardNotOpen { .. }), "{e}");
            assert!(e.to_string().contains("shard-"), "{e}");
            // The error says which rank the dataset was opened for, and how to read it.
            assert!(
                e.to_string()
                    .contains(&format!("opened for rank {rank} of 3"))
                    && e.to_string()
                        .contains(&format!("rank={rank}, world_size=3")),
                "{e}"
            );
        }
        // take and rows: a row of another rank's shard is refused by name, nothing written.
        let y = mine.column("y").unwrap();
        let theirs = (0..157u64)
            .find(|&r| ranks[starts.partition_point(|&s| s <= r) - 1] != rank)
            .unwrap();
        let ours = (0..157u64)
            .find(|&r| ranks[starts.partition_point(|&s| s <= r) - 1] == rank)
            .unwrap();
        let mut out = vec![0xAAu8; 16];
        let e = y.take_into(&[ours, theirs], &mut out).unwrap_err();
        assert!(
            matches!(e, Error::ShardNotOpen { row, .. } if row == theirs),
            "{e}"
        );
        assert_eq!(out, [0xAA; 16]);
        y.take_into(&[ours, ours], &mut out).unwrap();
        assert_eq!(out[..8], ((ours * 7) as i64).to_le_bytes());
        assert!(matches!(
            y.rows(theirs..theirs + 1),
            Err(Error::ShardNotOpen { .. })
        ));
        mine.verify().unwrap();
    }
    // A store is one shard: whole shards per rank on one rank is the row split; on two, refused.
    let options = LoaderOptions {
        shuffle: Shuffle::Full,
        split: RankSplit::Shards,
        ..LoaderOptions::new(8)
    };
    let mut a = Loader::new(&store, options.clone()).unwrap();
    let mut b = Loader::new(
        &store,
        LoaderOptions {
            split: RankSplit::Rows,
            ..options.clone()
        },
    )
    .unwrap();
    assert_eq!(collect(&mut a), collect(&mut b));
    let e = Loader::new(
        &store,
        LoaderOptions {
            world_size: 2,
            ..options
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Order {
                source: OrderError::TooFewShards {
                    shards: 1,
                    world_size: 2
                },
                ..
            }
        ),
        "{e}"
    );
    // SAFETY: as above.
    let e = unsafe { mmtensor::Dataset::open_rank(&ds, 3, 3) }.unwrap_err();
    assert!(matches!(e, Error::Order { .. }), "{e}");
}

#[test]
fn review_regressions_prefetch_cap_finished_epoch_state_and_a_leading_scalar() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 30));
    // A prefetch past the cap is an error, not an abort allocating the channel.
    let e = Loader::new(
        &store,
        LoaderOptions {
            prefetch: usize::MAX,
            ..LoaderOptions::new(4)
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Prefetch { .. }), "{e}");
    // A state at the end of an epoch is the start of the next, so set_epoch(e) cannot replay it.
    let mut loader = Loader::new(&store, LoaderOptions::new(10)).unwrap();
    loader.set_state(loader.state_at(1, 3)).unwrap();
    assert_eq!(loader.state(), loader.state_at(2, 0));
    loader.set_epoch(1);
    assert_eq!(loader.state(), loader.state_at(1, 0));

    // A 0-dimensional first tensor (a step counter) is left out of the default columns.
    let sample = SampleStore {
        alignment: 64,
        block_size: 4096,
        metadata: vec![],
        tensors: vec![
            SampleTensor::pattern("step", Dtype::I64, &[], 1),
            SampleTensor::pattern("x", Dtype::F32, &[12, 2], 2),
            SampleTensor::pattern("y", Dtype::I64, &[12], 3),
        ],
    };
    let path = dir.path().join("scalar-first.mmt");
    sample.write(&path).unwrap();
    let store = open(&path);
    let loader = Loader::new(&store, LoaderOptions::new(5)).unwrap();
    assert_eq!(loader.column_names().collect::<Vec<_>>(), ["x", "y"]);
}

/// `tokens` U16 [rows, 4], `x` F32 [rows, 3], `mask` BOOL [rows] (0/1), `y` I64 [rows].
fn token_store(dir: &Path, rows: u64) -> PathBuf {
    write(
        &dir.join("tokens.mmt"),
        vec![
            SampleTensor::pattern("tokens", Dtype::U16, &[rows, 4], 1),
            SampleTensor::pattern("x", Dtype::F32, &[rows, 3], 2),
            mask(rows),
            SampleTensor::pattern("y", Dtype::I64, &[rows], 3),
        ],
    )
}

/// `dtypes` as loader options.
fn dtypes(pairs: &[(&str, Dtype)]) -> std::collections::BTreeMap<String, Dtype> {
    pairs.iter().map(|&(n, d)| (n.to_owned(), d)).collect()
}

#[test]
fn cast_columns_hold_the_batches_of_the_uncast_loader_cast() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&token_store(dir.path(), 83));
    let casts = [
        ("tokens", Dtype::I64),
        ("x", Dtype::BF16),
        ("mask", Dtype::F32),
    ];
    for shuffle in [Shuffle::None, Shuffle::Full] {
        for prefetch in [0, 2] {
            let options = LoaderOptions {
                shuffle,
                seed: 5,
                prefetch,
                ..LoaderOptions::new(10)
            };
            let mut plain = Loader::new(&store, options.clone()).unwrap();
            let mut cast = Loader::new(
                &store,
                LoaderOptions {
                    dtypes: dtypes(&casts),
                    ..options
                },
            )
            .unwrap();
            assert_eq!(
                cast.columns()
                    .map(|c| (c.name(), c.source_dtype(), c.dtype()))
                    .collect::<Vec<_>>(),
                [
                    ("tokens", Dtype::U16, Dtype::I64),
                    ("x", Dtype::F32, Dtype::BF16),
                    ("mask", Dtype::Bool, Dtype::F32),
                    ("y", Dtype::I64, Dtype::I64),
                ]
            );
            assert_eq!(cast.len(), plain.len());
            let (want, got) = (collect(&mut plain), collect(&mut cast));
            assert_eq!(want.len(), got.len());
            for ((rows, cols), (cast_rows, cast_cols)) in want.iter().zip(&got) {
                assert_eq!(rows, cast_rows, "a cast changed the rows of a batch");
                for (c, (bytes, cast_bytes)) in cols.iter().zip(cast_cols).enumerate() {
                    let to = cast.columns().nth(c).unwrap().dtype();
                    let from = plain.columns().nth(c).unwrap().dtype();
                    let kernel = mmtensor::Cast::new(from, to).unwrap();
                    let mut expect = vec![0u8; bytes.len() / from.size() * to.size()];
                    kernel.run(bytes, &mut expect).unwrap();
                    assert_eq!(cast_bytes, &expect, "column {c} {shuffle:?} p{prefetch}");
                }
            }
            assert_eq!(cast.state(), plain.state());
        }
    }
    // Typed views of a cast column see the target type.
    let mut loader = Loader::new(
        &store,
        LoaderOptions {
            columns: Some(vec!["tokens".into()]),
            dtypes: dtypes(&[("tokens", Dtype::I64)]),
            ..LoaderOptions::new(7)
        },
    )
    .unwrap();
    let tokens = store.tensor("tokens").unwrap();
    let batch = loader.iter().unwrap().next().unwrap().unwrap();
    let column = batch.column("tokens").unwrap();
    assert_eq!(
        (column.dtype(), column.shape()),
        (Dtype::I64, &[7u64, 4][..])
    );
    let want: Vec<i64> = tokens.take_as(batch.row_indices()).unwrap();
    assert_eq!(column.as_slice::<i64>().unwrap(), want);
    assert!(column.as_slice::<u16>().is_err());
}

#[test]
fn a_callers_allocator_is_asked_for_the_bytes_of_the_cast_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&token_store(dir.path(), 30));
    let loader = Loader::new(
        &store,
        LoaderOptions {
            columns: Some(vec!["tokens".into(), "y".into()]),
            dtypes: dtypes(&[("tokens", Dtype::I32)]),
            ..LoaderOptions::new(8)
        },
    )
    .unwrap();
    let batches: Vec<_> = loader
        .stream(Vecs {
            short: 0,
            fail_after: usize::MAX,
        })
        .unwrap()
        .map(|b| b.unwrap().into_buffers().0)
        .collect();
    // 8 rows of 4 I32 tokens and of one I64, then the short last batch of 6 rows.
    assert_eq!(
        batches[0].iter().map(Vec::len).collect::<Vec<_>>(),
        [128, 64]
    );
    assert_eq!(
        batches[3].iter().map(Vec::len).collect::<Vec<_>>(),
        [96, 48]
    );
    let mut short = loader
        .stream(Vecs {
            short: 1,
            fail_after: usize::MAX,
        })
        .unwrap();
    assert!(matches!(
        short.next().unwrap(),
        Err(Error::TakeOutput { row_bytes: 16, .. })
    ));
}

#[test]
fn a_cast_loader_over_a_dataset_gives_the_batches_of_the_cast_store() {
    let dir = tempfile::tempdir().unwrap();
    let (one, ds) = store_and_dataset(dir.path(), 157, 10);
    let store = open(&one);
    // SAFETY: the tests own the files and never modify them while they are mapped.
    let dataset = unsafe { mmtensor::Dataset::open(&ds) }.unwrap();
    let options = LoaderOptions {
        shuffle: Shuffle::Full,
        seed: 9,
        dtypes: dtypes(&[("x", Dtype::F64)]),
        ..LoaderOptions::new(16)
    };
    let mut a = Loader::new(&store, options.clone()).unwrap();
    let mut b = Loader::from_dataset(&dataset, options).unwrap();
    let (a, b) = (collect(&mut a), collect(&mut b));
    assert_eq!(a, b);
    assert_eq!(a[0].1[0].len(), 16 * 3 * 8, "x holds F64 rows");
}

#[test]
fn output_dtypes_the_loader_cannot_make_are_errors_naming_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&token_store(dir.path(), 20));
    let err = |pairs: &[(&str, Dtype)], columns: Option<&[&str]>| {
        Loader::new(
            &store,
            LoaderOptions {
                columns: columns.map(|c| c.iter().map(|s| s.to_string()).collect()),
                dtypes: dtypes(pairs),
                ..LoaderOptions::new(4)
            },
        )
        .unwrap_err()
    };
    // Integer narrowing could fail on a value mid-epoch: refused when the loader is made.
    let e = err(&[("y", Dtype::I32)], None);
    assert!(
        matches!(&e, Error::UnsupportedCast { tensor, from: Dtype::I64, to: Dtype::I32, .. }
            if tensor == "y"),
        "{e}"
    );
    assert!(e.to_string().contains("tokens.mmt"), "{e}");
    let e = err(&[("x", Dtype::I32)], None);
    assert!(
        e.to_string().contains("there is no such cast"),
        "float to integer: {e}"
    );
    // A dtype for a column the loader does not read (here: one not chosen) names the columns.
    let e = err(&[("y", Dtype::F64)], Some(&["tokens", "x"]));
    assert!(
        matches!(&e, Error::CastColumn { column, columns, .. }
            if column == "y" && columns == &["tokens", "x"]),
        "{e}"
    );
    assert!(e.to_string().contains("`tokens`, `x`"), "{e}");
    assert!(matches!(
        err(&[("nope", Dtype::F64)], None),
        Error::CastColumn { .. }
    ));
}

/// The rows of each batch of the rest of the loader's epoch.
fn rows_of(loader: &mut Loader) -> Vec<Vec<u64>> {
    loader
        .iter()
        .unwrap()
        .map(|b| b.unwrap().row_indices().to_vec())
        .collect()
}

#[test]
fn a_state_of_4_ranks_resumes_on_3_reading_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 1000));
    let options = |rank, world_size| LoaderOptions {
        shuffle: Shuffle::Full,
        seed: 7,
        rank,
        world_size,
        prefetch: 1,
        ..LoaderOptions::new(8)
    };
    // Four ranks hand out 20 batches of epoch 2 each and save.
    let mut seen = Vec::new();
    let mut saved = Vec::new();
    for rank in 0..4 {
        let mut l = Loader::new(&store, options(rank, 4)).unwrap();
        l.set_epoch(2);
        for b in l.iter().unwrap().take(20) {
            seen.extend_from_slice(b.unwrap().row_indices());
        }
        saved.push(l.state());
    }
    let state = saved[0];
    assert!(
        saved.iter().all(|s| *s == state),
        "every rank saves the same state"
    );
    assert_eq!(
        (
            state.epoch,
            state.next_batch,
            state.samples,
            state.rows,
            state.world_size
        ),
        (2, 20, 640, 1000, 4)
    );
    // Three ranks resume: 360 rows left, 120 a rank, 15 batches.
    for rank in 0..3 {
        let mut l = Loader::new(&store, options(rank, 3)).unwrap();
        l.set_state(saved[rank as usize]).unwrap();
        assert_eq!(l.len(), 15);
        assert_eq!((l.state().next_batch, l.state().samples), (0, 640));
        l.set_epoch(2);
        // Midway, a state of the same ranks resumes the same rest exactly (round trip).
        let mut it = l.iter().unwrap();
        for b in it.by_ref().take(5) {
            seen.extend_from_slice(b.unwrap().row_indices());
        }
        drop(it);
        let mid = l.state();
        assert_eq!(
            (mid.next_batch, mid.samples, mid.world_size),
            (5, 640 + 5 * 8 * 3, 3)
        );
        let mut again = Loader::new(&store, options(rank, 3)).unwrap();
        again.set_state(mid).unwrap();
        assert_eq!((again.state(), again.len()), (mid, 15));
        let rest = rows_of(&mut l);
        assert_eq!(rows_of(&mut again), rest);
        seen.extend(rest.into_iter().flatten());
        // Then the next epoch is a whole one on 3 ranks.
        assert_eq!(l.state(), l.state_at(3, 0));
        assert_eq!(l.len(), 42);
        assert_eq!(collect(&mut l), expected(&store, &l, 3));
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..1000).collect::<Vec<u64>>(),
        "every row exactly once"
    );
}

#[test]
fn the_same_ranks_resume_as_before_and_other_ranks_at_position_0_start_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 103));
    let options = |world_size| LoaderOptions {
        shuffle: Shuffle::Full,
        world_size,
        drop_last: true,
        ..LoaderOptions::new(4)
    };
    let mut l = Loader::new(&store, options(2)).unwrap();
    let whole = rows_of(&mut l);
    for k in 0..whole.len() as u64 {
        let mut r = Loader::new(&store, options(2)).unwrap();
        r.set_state(l.state_at(0, k)).unwrap();
        assert_eq!(r.state(), l.state_at(0, k));
        assert_eq!(rows_of(&mut r), whole[k as usize..]);
    }
    // The start of an epoch saved on 2 ranks is the start of that epoch on 5.
    let mut five = Loader::new(&store, options(5)).unwrap();
    five.set_state(l.state_at(4, 0)).unwrap();
    assert_eq!(five.state(), five.state_at(4, 0));
}

#[test]
fn an_epoch_saved_before_an_append_resumes_over_its_rows_and_the_next_covers_all() {
    let dir = tempfile::tempdir().unwrap();
    let old = open(&store(dir.path(), 50));
    let options = |rank| LoaderOptions {
        shuffle: Shuffle::Block {
            block_rows: 4,
            window_blocks: 2,
        },
        seed: 3,
        rank,
        world_size: 2,
        ..LoaderOptions::new(4)
    };
    let mut seen = Vec::new();
    let mut saved = None;
    for rank in 0..2 {
        let mut l = Loader::new(&old, options(rank)).unwrap();
        for b in l.iter().unwrap().take(3) {
            seen.extend_from_slice(b.unwrap().row_indices());
        }
        saved = Some(l.state());
    }
    let saved = saved.unwrap();
    assert_eq!((saved.samples, saved.rows), (24, 50));
    // "Appended": a store of 80 rows whose first 50 are the old rows.
    let grown_dir = tempfile::tempdir().unwrap();
    let grown = open(&store(grown_dir.path(), 80));
    for rank in 0..2 {
        let mut l = Loader::new(&grown, options(rank)).unwrap();
        l.set_state(saved).unwrap();
        // The same world size: batch 3 of the epoch over the old 50 rows.
        assert_eq!((l.state(), l.len()), (saved, 7));
        seen.extend(rows_of(&mut l).into_iter().flatten());
        assert_eq!(l.state(), l.state_at(1, 0));
        let next: Vec<u64> = rows_of(&mut l).into_iter().flatten().collect();
        assert_eq!(next.len(), 40);
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (0..50).collect::<Vec<u64>>());
    // A state of more rows than the data has names both numbers.
    let mut l = Loader::new(&old, options(0)).unwrap();
    let big = Loader::new(&grown, options(0)).unwrap().state_at(0, 1);
    let e = l.set_state(big).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Order {
                source: OrderError::StateRows {
                    state_rows: 80,
                    rows: 50
                },
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("80 rows") && e.to_string().contains("only 50"),
        "{e}"
    );
}

#[test]
fn whole_shards_per_rank_refuse_a_position_of_other_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 40));
    let rows = Loader::new(
        &store,
        LoaderOptions {
            world_size: 2,
            ..LoaderOptions::new(4)
        },
    )
    .unwrap();
    let mut shards = Loader::new(
        &store,
        LoaderOptions {
            split: RankSplit::Shards,
            ..LoaderOptions::new(4)
        },
    )
    .unwrap();
    let e = shards.set_state(rows.state_at(0, 2)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Order {
                source: OrderError::NotElastic { samples: 16, .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("split=\"rows\""), "{e}");
    // An epoch's start is one on any ranks.
    shards.set_state(rows.state_at(1, 0)).unwrap();
    assert_eq!(shards.state(), shards.state_at(1, 0));
}

/// A cold epoch over columns that fit in memory is read in row order, and a batch is gathered once
/// that read has passed every row of it (the sweep of `docs/LOADER.md`, "How an epoch is read"):
/// a shuffled batch finds the file read up to its last row, rather than its own rows faulted in
/// one by one. Before the sweep, a full shuffle read its first batch's pages alone (`MADV_RANDOM`,
/// set once its first gather had started), a few read-around windows of this file.
#[test]
fn a_cold_epoch_that_fits_is_read_in_order_up_to_each_batchs_last_row_first() {
    use mmtensor_testsupport::{evict, resident_share};
    // On the disk the build uses: a tmpfs (often /tmp) keeps every page whatever is evicted.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = write(
        &dir.path().join("big.mmt"),
        vec![SampleTensor::pattern("x", Dtype::F32, &[32768, 1024], 1)],
    );
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    evict(&path).unwrap();
    let before = resident_share(&path).unwrap();
    if before > 0.5 {
        eprintln!(
            "skipped: this file system keeps {before:.2} of the file in memory after eviction"
        );
        return;
    }
    for shuffle in [Shuffle::Full, Shuffle::block(4)] {
        // A fresh store each time: the sweep maps every page it reads into the process, and
        // eviction passes over pages a live mapping holds.
        evict(&path).unwrap();
        let store = open(&path);
        let mut loader = Loader::new(
            &store,
            LoaderOptions {
                shuffle,
                ..LoaderOptions::new(2)
            },
        )
        .unwrap();
        let first = loader.iter().unwrap().next().unwrap().unwrap();
        let share = resident_share(&path).unwrap();
        // x is all of the file but its header (a few KiB of 128 MiB).
        let last = first.row_indices().iter().max().unwrap();
        let swept = (last + 1) as f64 / 32768.0;
        assert!(
            share >= swept - 0.01,
            "{shuffle:?}: {share:.3} of the file in memory, rows up to {last} gathered"
        );
        let want = store.tensor("x").unwrap().take_bytes(first.row_indices());
        assert_eq!(first.column("x").unwrap().bytes(), &want.unwrap()[..]);
    }
}

/// `Stream::is_ready` says whether `next` would return at once: a gathered batch is waiting, or the
/// stream has ended; with prefetch 0 a batch is gathered when asked for, so never.
#[test]
fn a_stream_says_when_its_next_batch_is_gathered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 40));
    for prefetch in [0, 1, 3] {
        let loader = Loader::new(
            &store,
            LoaderOptions {
                prefetch,
                ..LoaderOptions::new(8)
            },
        )
        .unwrap();
        let want = expected(&store, &loader, 0);
        let mut stream = loader.stream(loader.pool()).unwrap();
        for (rows, _) in &want {
            if prefetch > 0 {
                // The gather threads get there; nothing else moves the stream meanwhile. (The
                // deadline only turns a hang into a failure.)
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while !stream.is_ready() {
                    assert!(std::time::Instant::now() < deadline, "never ready");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            } else {
                assert!(!stream.is_ready());
            }
            let batch = stream.next().unwrap().unwrap();
            assert_eq!(batch.row_indices(), &rows[..]);
        }
        assert!(stream.is_ready(), "an ended stream returns at once");
        assert!(stream.next().is_none());
    }
}

/// An allocator that allocates a set of buffers for each message it gets.
struct Gated(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

impl Allocate for Gated {
    type Buffers = VecBuffers;
    fn allocate(
        &mut self,
        lens: &[usize],
    ) -> Result<VecBuffers, Box<dyn std::error::Error + Send + Sync>> {
        self.0.lock().unwrap().recv()?;
        Ok(VecBuffers(lens.iter().map(|&n| vec![0; n]).collect()))
    }
}

/// `Stream::wait_ready` waits at most its timeout for the next batch (a binding waits in slices,
/// answering Ctrl-C between them): false while the batch is still being gathered, true once `next`
/// would return at once, and true at the end.
#[test]
fn a_stream_waits_for_its_next_batch_no_longer_than_asked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 16));
    let loader = Loader::new(
        &store,
        LoaderOptions {
            prefetch: 1,
            ..LoaderOptions::new(8)
        },
    )
    .unwrap();
    let want = expected(&store, &loader, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stream = loader.stream(Gated(std::sync::Mutex::new(rx))).unwrap();
    let short = std::time::Duration::from_millis(20);
    let long = std::time::Duration::from_secs(60); // only turns a hang into a failure
    for (rows, _) in &want {
        assert!(
            !stream.wait_ready(short),
            "no buffers yet: the batch cannot be gathered"
        );
        tx.send(()).unwrap();
        assert!(stream.wait_ready(long));
        let batch = stream.next().unwrap().unwrap();
        assert_eq!(batch.row_indices(), &rows[..]);
    }
    assert!(stream.wait_ready(short), "the end returns at once");
    assert!(
        stream.wait_ready(std::time::Duration::MAX),
        "any timeout, no overflow"
    );
    assert!(stream.next().is_none());
}

/// An allocator that panics on its first call (a caller's, on a gather thread), then allocates.
struct PanicsOnce(bool);

impl Allocate for PanicsOnce {
    type Buffers = VecBuffers;
    fn allocate(
        &mut self,
        lens: &[usize],
    ) -> Result<VecBuffers, Box<dyn std::error::Error + Send + Sync>> {
        if !std::mem::replace(&mut self.0, true) {
            panic!("the caller's allocator panics");
        }
        Ok(VecBuffers(lens.iter().map(|&n| vec![0; n]).collect()))
    }
}

/// A gather thread that panics hands over an error for the batch it claimed: the caller, waiting
/// for that batch, gets `LoaderStopped` rather than waiting for ever while the other threads fill
/// the permits and sleep (with one gather thread this held before; with several, it hung).
#[test]
fn a_gather_thread_that_panics_ends_the_stream_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = store(dir.path(), 200);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let store = open(&path);
        let loader = Loader::new(
            &store,
            LoaderOptions {
                prefetch: 4,
                ..LoaderOptions::new(8)
            },
        )
        .unwrap();
        let mut stream = loader.stream(PanicsOnce(false)).unwrap();
        let first = stream.next().map(|b| b.map(|_| ()));
        let _ = tx.send((
            first.map(|r| r.map_err(|e| e.to_string())),
            stream.next().is_none(),
        ));
    });
    // The deadline only turns a hang into a failure.
    let (first, ended) = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the stream hung after a gather thread panicked");
    let e = first.unwrap().unwrap_err();
    assert!(e.contains("stopped"), "{e}");
    assert!(ended, "the stream ends after the error");
}

/// The gather threads run 10 nice levels below the thread that started the stream (Linux), so the
/// training loop's thread gets a core first when both want one.
#[cfg(target_os = "linux")]
#[test]
fn gather_threads_run_at_a_lower_priority_than_the_caller() {
    fn nice(stat: &str) -> i64 {
        // After the command name in parentheses: state is field 3, nice field 19.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split_whitespace().nth(16).unwrap().parse().unwrap()
    }
    let own = nice(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store(dir.path(), 64));
    let loader = Loader::new(
        &store,
        LoaderOptions {
            prefetch: 2,
            ..LoaderOptions::new(8)
        },
    )
    .unwrap();
    let mut stream = loader.stream(loader.pool()).unwrap();
    let _first = stream.next().unwrap().unwrap();
    let mut seen = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() == "mmtensor-loader" {
            if let Ok(stat) = std::fs::read_to_string(task.join("stat")) {
                assert_eq!(nice(&stat), (own + 10).min(19), "{}", task.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 1, "no gather thread found while the stream is live");
}
