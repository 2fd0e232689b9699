//! `Loader::from_mix`: a weighted mixture of stores and datasets read through the loader. Every
//! row encodes its source and its row there (`y = source * 10^6 + row`), so each batch can be
//! checked against `MixOrder`'s `(source, row)` pairs: the batches are exactly the mixture order's,
//! every prefix keeps each source within one sample of its share, ranks cover each sample once,
//! and a resume at any batch (from the loader state or from the mixture state) is the
//! uninterrupted run.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use mmtensor::mix::{MixError, MixSource, MixSpec, MixState};
use mmtensor::order::Shuffle;
use mmtensor::{Dataset, Dtype, Error, Loader, LoaderOptions, MixInput, Mixture, RankSplit, Store};
use mmtensor_convert::sample::{SampleStore, SampleTensor};
use mmtensor_convert::{convert_dataset, ConvertOptions, Input, NoProgress};
use mmtensor_format::npy;

const SCALE: u64 = 1_000_000;

/// `x`: F32 [rows, 2] = (v, -v); `y`: I64 [rows] = v; with `v = source * 10^6 + row`.
fn values(source: u64, rows: u64) -> (Vec<u8>, Vec<u8>) {
    let v = |r: u64| source * SCALE + r;
    let x = (0..rows)
        .flat_map(|r| [v(r) as f32, -(v(r) as f32)])
        .flat_map(f32::to_le_bytes)
        .collect();
    let y = (0..rows)
        .flat_map(|r| (v(r) as i64).to_le_bytes())
        .collect();
    (x, y)
}

fn store(dir: &Path, source: u64, rows: u64) -> Store {
    let (x, y) = values(source, rows);
    let path = dir.join(format!("s{source}.mmt"));
    SampleStore {
        alignment: 64,
        block_size: 4096,
        metadata: vec![],
        tensors: vec![
            SampleTensor {
                name: "x".into(),
                dtype: Dtype::F32,
                shape: vec![rows, 2],
                bytes: x,
                offsets: None,
            },
            SampleTensor {
                name: "y".into(),
                dtype: Dtype::I64,
                shape: vec![rows],
                bytes: y,
                offsets: None,
            },
        ],
    }
    .write(&path)
    .unwrap();
    // SAFETY: the tests own the file and never modify it while it is mapped.
    unsafe { Store::open(&path) }.unwrap()
}

/// A dataset of the same columns in shards of `per_shard` rows.
fn dataset(dir: &Path, source: u64, rows: u64, per_shard: u64) -> Dataset {
    let (xb, yb) = values(source, rows);
    let mut x = npy::encode_header(Dtype::F32, &[rows, 2]);
    x.extend(xb);
    let mut y = npy::encode_header(Dtype::I64, &[rows]);
    y.extend(yb);
    let (xp, yp) = (
        dir.join(format!("x{source}.npy")),
        dir.join(format!("y{source}.npy")),
    );
    std::fs::write(&xp, x).unwrap();
    std::fs::write(&yp, y).unwrap();
    let out: PathBuf = dir.join(format!("ds{source}"));
    convert_dataset(
        &[
            Input::parse(&format!("x={}", xp.display())).unwrap(),
            Input::parse(&format!("y={}", yp.display())).unwrap(),
        ],
        &out,
        &ConvertOptions::default(),
        per_shard * 16,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    // SAFETY: the tests' files are not modified while open.
    let ds = unsafe { Dataset::open(&out) }.unwrap();
    assert!(ds.manifest().shards().len() > 1, "several shards");
    ds
}

struct Sources {
    _dir: tempfile::TempDir,
    a: Store,
    b: Dataset,
    c: Store,
}

/// `a`: a store of 37 rows; `b`: a dataset of 23 rows in shards of 5; `c`: a store of 11 rows.
fn sources() -> Sources {
    let dir = tempfile::tempdir().unwrap();
    let a = store(dir.path(), 0, 37);
    let b = dataset(dir.path(), 1, 23, 5);
    let c = store(dir.path(), 2, 11);
    Sources { _dir: dir, a, b, c }
}

const ROWS: [u64; 3] = [37, 23, 11];

fn mixture<'a>(s: &'a Sources, weights: [f64; 3]) -> Mixture<'a> {
    Mixture::new(vec![
        MixInput::new("a", &s.a, weights[0]),
        MixInput::new("b", &s.b, weights[1]),
        MixInput::new("c", &s.c, weights[2]),
    ])
}

fn options(batch_size: u64, rank: u64, world_size: u64, shuffle: Shuffle) -> LoaderOptions {
    LoaderOptions {
        shuffle,
        seed: 11,
        rank,
        world_size,
        ..LoaderOptions::new(batch_size)
    }
}

/// The mixture order the loader must follow, made from the same numbers by hand.
fn spec(weights: [f64; 3], o: &LoaderOptions, samples: Option<u64>) -> MixSpec {
    MixSpec {
        seed: o.seed,
        rank: o.rank,
        world_size: o.world_size,
        samples_per_epoch: samples,
        ..MixSpec::new(
            ["a", "b", "c"]
                .iter()
                .zip(ROWS)
                .zip(weights)
                .map(|((n, rows), w)| MixSource {
                    shuffle: o.shuffle,
                    ..MixSource::new(*n, rows, w)
                })
                .collect(),
            o.batch_size,
        )
    }
}

/// A batch as `(source, row)` pairs read from its `y` column, checked against `x` and the row
/// indices.
fn pairs(batch: &mmtensor::Batch) -> Vec<(u32, u64)> {
    let y: &[i64] = batch.column("y").unwrap().as_slice().unwrap();
    let x: &[f32] = batch.column("x").unwrap().as_slice().unwrap();
    let starts = [0, ROWS[0], ROWS[0] + ROWS[1]];
    y.iter()
        .zip(x.chunks_exact(2))
        .zip(batch.row_indices())
        .map(|((&v, x), &index)| {
            assert_eq!(x, [v as f32, -(v as f32)]);
            let (s, r) = ((v as u64 / SCALE) as u32, v as u64 % SCALE);
            assert_eq!(index, starts[s as usize] + r, "row index of ({s}, {r})");
            (s, r)
        })
        .collect()
}

/// The rest of the loader's current epoch, as pairs.
fn epoch(loader: &mut Loader) -> Vec<Vec<(u32, u64)>> {
    loader.iter().unwrap().map(|b| pairs(&b.unwrap())).collect()
}

#[test]
fn batches_are_the_mixture_orders() {
    let s = sources();
    for (weights, shuffle, prefetch) in [
        ([0.5, 0.3, 0.2], Shuffle::Full, 2),
        ([7.0, 3.0, 0.0], Shuffle::None, 0),
        ([0.2, 0.2, 0.6], Shuffle::block(4), 1),
    ] {
        let o = LoaderOptions {
            prefetch,
            ..options(4, 0, 1, shuffle)
        };
        let want = spec(weights, &o, None);
        let mut loader = Loader::from_mix(&mixture(&s, weights), o).unwrap();
        assert_eq!(loader.mix(), Some(&want));
        assert_eq!(loader.path(), Path::new("mix[a, b, c]"));
        assert_eq!(loader.column_names().collect::<Vec<_>>(), ["x", "y"]);
        let mut order = want.start().unwrap();
        assert_eq!(loader.len() as u64, order.batches_per_epoch());
        assert_eq!(loader.batch_rows(), 4);
        for e in 0..3 {
            let got = epoch(&mut loader);
            let expected: Vec<_> = order.by_ref().map(Result::unwrap).collect();
            assert_eq!(got, expected, "{weights:?} {shuffle:?} epoch {e}");
            let next = loader.state_at(e + 1, 0);
            assert_eq!(loader.state(), next);
            assert_eq!(loader.mix_state().unwrap(), Some(order.state()));
        }
    }
}

#[test]
fn every_prefix_keeps_each_source_within_one_sample_of_its_share() {
    let s = sources();
    for weights in [[0.5, 0.3, 0.2], [0.7, 0.3, 1e-3], [1.0, 1.0, 1.0]] {
        let o = options(3, 0, 1, Shuffle::Full);
        let q = spec(weights, &o, None).integer_weights().unwrap();
        let total: u64 = q.iter().sum();
        let mut loader = Loader::from_mix(
            &Mixture {
                samples_per_epoch: Some(200),
                ..mixture(&s, weights)
            },
            o,
        )
        .unwrap();
        let mut counts = [0u64; 3];
        let mut k = 0u64;
        for e in 0..2 {
            for batch in epoch(&mut loader) {
                for (src, row) in batch {
                    assert!(row < ROWS[src as usize]);
                    counts[src as usize] += 1;
                    k += 1;
                    for (n, &q) in counts.iter().zip(&q) {
                        let diff = (*n as i128 * total as i128 - k as i128 * q as i128).abs();
                        assert!(diff < total as i128, "{weights:?} epoch {e} sample {k}");
                    }
                }
            }
            assert_eq!(loader.mix_state().unwrap().unwrap().counts, counts);
        }
        assert_eq!(k, 2 * 66 * 3);
    }
}

#[test]
fn ranks_cover_each_sample_once() {
    let s = sources();
    let weights = [0.5, 0.3, 0.2];
    let (b, w) = (3, 4);
    // One rank with global batches: batch g holds every rank's batch g, in rank order.
    let mut whole =
        Loader::from_mix(&mixture(&s, weights), options(b * w, 0, 1, Shuffle::Full)).unwrap();
    let mut ranks: Vec<Loader> = (0..w)
        .map(|r| Loader::from_mix(&mixture(&s, weights), options(b, r, w, Shuffle::Full)).unwrap())
        .collect();
    for e in 0..3 {
        let all = epoch(&mut whole);
        let per: Vec<_> = ranks.iter_mut().map(epoch).collect();
        assert_eq!(all.len(), 71 / 12);
        for (g, global) in all.iter().enumerate() {
            let joined: Vec<(u32, u64)> = per.iter().flat_map(|p| p[g].clone()).collect();
            assert_eq!(&joined, global, "epoch {e} batch {g}");
        }
        let states: Vec<MixState> = ranks
            .iter()
            .map(|l| l.mix_state().unwrap().unwrap())
            .collect();
        assert!(states
            .iter()
            .all(|st| *st == whole.mix_state().unwrap().unwrap()));
    }
}

#[test]
fn a_resume_at_any_batch_is_the_uninterrupted_run() {
    let s = sources();
    let weights = [0.7, 0.3, 0.1];
    for (rank, world_size) in [(0, 1), (1, 2)] {
        let o = options(5, rank, world_size, Shuffle::Full);
        let mut full = Loader::from_mix(&mixture(&s, weights), o.clone()).unwrap();
        let len = full.len() as u64;
        // The uninterrupted run, with the state before every batch.
        let mut run = Vec::new();
        for _ in 0..3 {
            let mut it = full.iter().unwrap();
            loop {
                let before = (it.stream().epoch(), it.stream().next_batch());
                let Some(batch) = it.next() else { break };
                run.push((before, pairs(&batch.unwrap())));
            }
        }
        let run: Vec<_> = run
            .into_iter()
            .map(|((e, b), batch)| (full.state_at(e, b as u64), batch))
            .collect();
        let spec = spec(weights, &o, None);
        for (i, (at, _)) in run.iter().enumerate() {
            let rest: Vec<_> = run[i..].iter().map(|(_, b)| b.clone()).collect();
            let want_state = spec.state_at(at.epoch, at.next_batch).unwrap();
            // From the loader state: the counts are computed.
            let mut a = Loader::from_mix(&mixture(&s, weights), o.clone()).unwrap();
            a.set_state(*at).unwrap();
            assert_eq!(a.mix_state().unwrap().as_ref(), Some(&want_state));
            // From the mixture state: the counts are taken as given.
            let mut b = Loader::from_mix(&mixture(&s, weights), o.clone()).unwrap();
            b.set_mix_state(&want_state).unwrap();
            assert_eq!(b.state(), *at);
            for l in [&mut a, &mut b] {
                let mut got = Vec::new();
                while got.len() < rest.len() {
                    got.extend(epoch(l));
                }
                assert_eq!(got, rest, "resume at {at:?}, rank {rank}/{world_size}");
            }
        }
        assert_eq!(run.len() as u64, 3 * len);
    }
}

#[test]
fn a_mixture_state_of_another_mixture_is_refused() {
    let s = sources();
    let weights = [0.5, 0.3, 0.2];
    let mut loader =
        Loader::from_mix(&mixture(&s, weights), options(4, 0, 1, Shuffle::Full)).unwrap();
    let bad = MixState {
        epoch: 0,
        next_batch: 2,
        counts: vec![8, 0, 0],
    };
    let err = loader.set_mix_state(&bad).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Mix {
                source: MixError::State { .. },
                ..
            }
        ),
        "{err}"
    );
    let past = MixState {
        epoch: 0,
        next_batch: 99,
        counts: vec![0, 0, 0],
    };
    assert!(matches!(
        loader.set_mix_state(&past).unwrap_err(),
        Error::Mix {
            source: MixError::ResumePastEnd { .. },
            ..
        }
    ));
    assert_eq!(loader.state(), loader.state_at(0, 0));
    // A loader over rows has no mixture state.
    let mut rows = Loader::new(&s.a, LoaderOptions::new(4)).unwrap();
    assert_eq!(rows.mix_state().unwrap(), None);
    assert!(rows.mix().is_none());
    let err = rows.set_mix_state(&MixState::default()).unwrap_err();
    assert!(matches!(err, Error::Mixture { .. }), "{err}");
}

#[test]
fn columns_are_cast_and_chosen_as_for_one_source() {
    let s = sources();
    let weights = [0.5, 0.3, 0.2];
    let o = LoaderOptions {
        columns: Some(vec!["y".into()]),
        dtypes: [("y".to_owned(), Dtype::F64)].into_iter().collect(),
        ..options(4, 0, 1, Shuffle::Full)
    };
    // I64 to F64 may lose precision, so it is refused, as for one source.
    let err = Loader::from_mix(&mixture(&s, weights), o.clone()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedCast { .. }), "{err}");
    let o = LoaderOptions {
        columns: Some(vec!["x".into()]),
        dtypes: [("x".to_owned(), Dtype::F64)].into_iter().collect(),
        ..o
    };
    let mut loader = Loader::from_mix(&mixture(&s, weights), o.clone()).unwrap();
    let mut order = spec(weights, &o, None).start().unwrap();
    for batch in loader.iter().unwrap() {
        let batch = batch.unwrap();
        let x: &[f64] = batch.column("x").unwrap().as_slice().unwrap();
        let want: Vec<f64> = order
            .next()
            .unwrap()
            .unwrap()
            .iter()
            .flat_map(|&(s, r)| {
                let v = (u64::from(s) * SCALE + r) as f64;
                [v, -v]
            })
            .collect();
        assert_eq!(x, want);
    }
}

#[test]
fn a_column_missing_or_different_in_one_source_is_an_error_naming_it() {
    let s = sources();
    let dir = tempfile::tempdir().unwrap();
    // `x` only, and `y` of I32.
    let path = dir.path().join("odd.mmt");
    SampleStore {
        alignment: 64,
        block_size: 4096,
        metadata: vec![],
        tensors: vec![
            SampleTensor::pattern("x", Dtype::F32, &[5, 2], 1),
            SampleTensor::pattern("z", Dtype::I32, &[5], 2),
            SampleTensor::pattern("y", Dtype::I32, &[5], 3),
        ],
    }
    .write(&path)
    .unwrap();
    // SAFETY: the test owns the file.
    let odd = unsafe { Store::open(&path) }.unwrap();
    let mix = Mixture::new(vec![
        MixInput::new("web", &s.a, 1.0),
        MixInput::new("code", &odd, 1.0),
    ]);
    let o = |cols: &[&str]| LoaderOptions {
        columns: Some(cols.iter().map(|c| c.to_string()).collect()),
        ..LoaderOptions::new(2)
    };
    let err = Loader::from_mix(&mix, o(&["x", "y"])).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, Error::Mixture { column: Some(c), .. } if c == "y"),
        "{text}"
    );
    assert!(text.contains("\"code\"") && text.contains("`y`"), "{text}");
    assert!(text.contains("I32") && text.contains("I64"), "{text}");
    let err = Loader::from_mix(&mix, o(&["z"])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("mix[web, code]: source \"web\"") && text.contains("no column `z`"),
        "{text}"
    );
    // The first source's columns by default: `x` and `y`, which `code` has in another dtype.
    let err = Loader::from_mix(&mix, LoaderOptions::new(2)).unwrap_err();
    assert!(err.to_string().contains("column `y`"), "{err}");
    // Only `x`: fine.
    let loader = Loader::from_mix(&mix, o(&["x"])).unwrap();
    assert_eq!(loader.spec().num_rows, 37 + 5);
}

#[test]
fn options_a_mixture_does_not_take_and_bad_weights_are_refused() {
    let s = sources();
    let o = options(4, 0, 1, Shuffle::Full);
    let refused = |mix: &Mixture<'_>, o: LoaderOptions| Loader::from_mix(mix, o).unwrap_err();
    let err = refused(
        &mixture(&s, [1.0, 1.0, 1.0]),
        LoaderOptions {
            split: RankSplit::Shards,
            ..o.clone()
        },
    );
    assert!(matches!(err, Error::Mixture { .. }) && err.to_string().contains("shards"));
    let err = refused(
        &mixture(&s, [1.0, 1.0, 1.0]),
        LoaderOptions {
            seq_len: Some(8),
            ..o.clone()
        },
    );
    // Sequence windows need a ragged column in every source; these hold fixed rows.
    assert!(
        matches!(err, Error::Windows { .. })
            && err.to_string().contains("seq_len needs a ragged column"),
        "{err}"
    );
    for (weights, what) in [
        ([1.0, -1.0, 1.0], "source 1 (\"b\") has weight -1"),
        ([1.0, 1.0, f64::NAN], "source 2 (\"c\") has weight NaN"),
        ([0.0, 0.0, 0.0], "every source of the mixture has weight 0"),
    ] {
        let err = refused(&mixture(&s, weights), o.clone());
        assert!(matches!(err, Error::Mix { .. }), "{err}");
        assert!(err.to_string().contains(what), "{err}");
    }
    let err = refused(&Mixture::new(vec![]), o.clone());
    assert!(matches!(
        err,
        Error::Mix {
            source: MixError::NoSources,
            ..
        }
    ));
    // 71 samples hold no global batch of 80.
    let err = refused(
        &mixture(&s, [1.0, 1.0, 1.0]),
        options(40, 0, 2, Shuffle::Full),
    );
    assert!(matches!(
        err,
        Error::Mix {
            source: MixError::EpochTooShort { .. },
            ..
        }
    ));
    // But more samples per epoch than rows are fine: the sources wrap around.
    let mut big = Loader::from_mix(
        &Mixture {
            samples_per_epoch: Some(400),
            ..mixture(&s, [1.0, 1.0, 1.0])
        },
        options(80, 0, 1, Shuffle::Full),
    )
    .unwrap();
    assert_eq!(big.len(), 5);
    assert_eq!(big.batch_rows(), 80);
    assert_eq!(epoch(&mut big).concat().len(), 400);
}

#[test]
fn a_mixture_resumes_only_on_the_world_size_it_was_saved_on() {
    let s = sources();
    let weights = [0.5, 0.3, 0.2];
    let two = Loader::from_mix(&mixture(&s, weights), options(2, 0, 2, Shuffle::Full)).unwrap();
    let mut one = Loader::from_mix(&mixture(&s, weights), options(2, 0, 1, Shuffle::Full)).unwrap();
    for state in [two.state_at(0, 1), two.state_at(1, 0)] {
        let e = one.set_state(state).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Order {
                    source: mmtensor::order::OrderError::NotElastic { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("world size it was saved on"), "{e}");
    }
    one.set_state(one.state_at(0, 1)).unwrap();
}
