//! The weighted mixture order (`mmtensor::mix`): the integer weights, the schedule of sources and
//! its bound at every prefix, per-source orders, ranks, epochs, exact resume, and known answers
//! that pin `docs/LOADER.md` ("Weighted mixtures") bit for bit.
//!
//! The known answers come from `mix_reference.py` beside this file, a second implementation of
//! the document in plain Python (`python3 crates/load/tests/mix_reference.py` prints them).

use mmtensor::mix::{
    source_seed, MixError, MixSource, MixSpec, MixState, Schedule, MAX_INTEGER_WEIGHT, MAX_SOURCES,
};
use mmtensor::order::{permutation, OrderError, Shuffle};
use proptest::prelude::*;

fn sources(weights: &[f64]) -> Vec<MixSource> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| MixSource::new(format!("s{i}"), 10, w))
        .collect()
}

fn integer_weights(weights: &[f64]) -> Vec<u64> {
    MixSpec::new(sources(weights), 1).integer_weights().unwrap()
}

fn first(weights: &[u64], count: usize) -> Vec<u32> {
    Schedule::new(weights).unwrap().take(count).collect()
}

/// The three sources of the reference's batches: 5 rows fully shuffled, 3 unshuffled, 4 in
/// blocks of 2 (one block per window).
fn three() -> MixSpec {
    MixSpec {
        seed: 9,
        world_size: 2,
        ..MixSpec::new(
            vec![
                MixSource::new("a", 5, 0.5),
                MixSource {
                    shuffle: Shuffle::None,
                    ..MixSource::new("b", 3, 0.3)
                },
                MixSource {
                    shuffle: Shuffle::Block {
                        block_rows: 2,
                        window_blocks: 1,
                    },
                    ..MixSource::new("c", 4, 0.2)
                },
            ],
            2,
        )
    }
}

fn epoch_batches(order: &mut mmtensor::mix::MixOrder) -> Vec<Vec<(u32, u64)>> {
    order.by_ref().map(|b| b.unwrap()).collect()
}

/// The mixture's samples `0..count` as `(source, row)`, from the schedule and each source's
/// permutations, written independently of `MixOrder`.
fn reference(spec: &MixSpec, count: u64) -> Vec<(u32, u64)> {
    let mut n = vec![0u64; spec.sources.len()];
    Schedule::new(&spec.integer_weights().unwrap())
        .unwrap()
        .take(count as usize)
        .map(|s| {
            let src = &spec.sources[s as usize];
            let j = n[s as usize];
            n[s as usize] += 1;
            let perm = permutation(
                src.rows,
                src.shuffle,
                source_seed(spec.seed, s),
                j / src.rows,
            )
            .unwrap();
            (s, perm[(j % src.rows) as usize])
        })
        .collect()
}

/// `m * |n_s W - k q_s| <= (m - 1) W` for every source: within `1 - 1/m` of its share.
fn check_bound(weights: &[u64], counts: &[u64], k: u64) -> Result<(), String> {
    let w: u128 = weights.iter().map(|&q| u128::from(q)).sum();
    let active = weights.iter().filter(|&&q| q > 0).count() as u128;
    let m = if active >= 2 { 2 * active - 2 } else { 1 };
    for (s, (&q, &n)) in weights.iter().zip(counts).enumerate() {
        let (a, b) = (u128::from(n) * w, u128::from(k) * u128::from(q));
        let diff = a.abs_diff(b);
        if diff >= w || m * diff > (m - 1) * w {
            return Err(format!(
                "after {k} samples source {s} has {n}, share {k} * {q} / {w}"
            ));
        }
    }
    Ok(())
}

// Known answers.

#[test]
fn weights_become_integers_as_documented() {
    // 0.7 and 0.3 are not in ratio 7:3 as binary fractions; 7 and 3 are.
    assert_eq!(integer_weights(&[0.7, 0.3]), [3006477107, 1288490189]);
    assert_eq!(integer_weights(&[7.0, 3.0]), [7 << 29, 3 << 29]);
    assert_eq!(integer_weights(&[1.0, 0.0, 2.0]), [1 << 30, 0, 1 << 31]);
    assert_eq!(
        integer_weights(&[0.5, 0.3, 0.2]),
        [1 << 31, 1288490189, 858993459]
    );
    // A positive weight that rounds to 0 becomes 1; the largest lands in [2^31, 2^32].
    assert_eq!(integer_weights(&[1.0, 1e-12]), [1 << 31, 1]);
    assert_eq!(
        integer_weights(&[1e300, 1e-300, 0.0]),
        [3_206_669_376, 1, 0]
    );
    assert_eq!(integer_weights(&[f64::MAX]), [MAX_INTEGER_WEIGHT]);
    assert_eq!(integer_weights(&[5e-324, 1e-323]), [1 << 30, 1 << 31]); // subnormals
    assert_eq!(
        integer_weights(&[4294967295.0, 1.0]),
        [4294967295, 1],
        "integers below 2^32 are kept as they are"
    );
    // Halves round up: 3 * 2^-33 of the largest is 1.5 units.
    assert_eq!(integer_weights(&[1.0, 3.0 / 8589934592.0]), [1 << 31, 1]);
    assert_eq!(integer_weights(&[1.0, 3.0 / 4294967296.0]), [1 << 31, 2]);
}

#[test]
fn the_schedule_of_documented_weights() {
    let w = integer_weights(&[0.7, 0.3]);
    assert_eq!(first(&w, 10), [0, 1, 0, 0, 1, 0, 0, 0, 1, 0]);
    // Exactly 7:3 ties at sample 4, which goes to the lower index; 0.3 is a little more than
    // 3/7 of 0.7 as a binary fraction, so above source 1 wins it.
    assert_eq!(
        first(&integer_weights(&[7.0, 3.0]), 10),
        [0, 1, 0, 0, 0, 1, 0, 0, 1, 0]
    );
    assert_eq!(first(&[7, 3], 10), [0, 1, 0, 0, 0, 1, 0, 0, 1, 0]);
    // A weight of 0 never gets a sample.
    assert_eq!(
        first(&integer_weights(&[1.0, 0.0, 2.0]), 9),
        [2, 0, 2, 2, 0, 2, 2, 0, 2]
    );
    assert_eq!(
        first(&integer_weights(&[0.5, 0.3, 0.2]), 20),
        [0, 1, 0, 2, 0, 1, 0, 2, 1, 0, 0, 1, 0, 2, 0, 1, 0, 2, 1, 0]
    );
    assert_eq!(
        first(&integer_weights(&[1.0, 1.0, 1.0, 1.0, 1.0, 1e-12]), 12),
        [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    );
    assert_eq!(
        first(&[1, 1, 1, 11, 11], 25),
        [3, 4, 3, 4, 3, 4, 0, 3, 4, 3, 4, 3, 4, 3, 4, 1, 3, 4, 3, 4, 2, 3, 4, 3, 4]
    );
}

#[test]
fn the_argmax_rule_falls_behind_where_this_one_does_not() {
    // Megatron's rule (the largest (k + 1) q_s - n_s W) leaves source 4 at 6 of its 7.04 after
    // 16 samples; this schedule keeps every source within 1 - 1/8 of its share.
    let q = [1u64, 1, 1, 11, 11];
    let w: u64 = q.iter().sum();
    let mut n = [0u64; 5];
    for k in 0..16u64 {
        let s = (0..5)
            .max_by_key(|&s| {
                (
                    i128::from((k + 1) * q[s]) - i128::from(n[s] * w),
                    std::cmp::Reverse(s),
                )
            })
            .unwrap();
        n[s] += 1;
    }
    assert_eq!(n, [1, 1, 1, 7, 6]);
    assert!(check_bound(&q, &n, 16).is_err());
    let mut schedule = Schedule::new(&q).unwrap();
    schedule.by_ref().take(16).for_each(drop);
    assert_eq!(schedule.counts(), [1, 1, 0, 7, 7]);
    check_bound(&q, schedule.counts(), 16).unwrap();
}

#[test]
fn every_small_five_source_mixture_stays_within_its_bound() {
    // Five sources is where the argmax rule first falls a whole sample behind; try every weight
    // vector of 1 to 6 over two periods (after which the schedule repeats).
    let mut weights = [1u64; 5];
    loop {
        let mut schedule = Schedule::new(&weights).unwrap();
        let period = schedule.period();
        for k in 1..=2 * period {
            schedule.next();
            check_bound(&weights, schedule.counts(), k).unwrap();
        }
        let Some(i) = weights.iter().position(|&w| w < 6) else {
            break;
        };
        weights[i] += 1;
        weights[..i].fill(1);
    }
}

#[test]
fn source_seeds_are_splitmix64_outputs() {
    assert_eq!(
        [source_seed(0, 0), source_seed(0, 1), source_seed(0, 2)],
        [
            0xE220_A839_7B1D_CDAF,
            0x6E78_9E6A_A1B9_65F4,
            0x06C4_5D18_8009_454F
        ]
    );
}

#[test]
fn batches_of_three_sources_on_two_ranks() {
    let spec = three();
    assert_eq!(spec.batches_per_epoch().unwrap(), 3); // 12 rows, global batches of 4
    assert_eq!(spec.epoch_samples().unwrap(), 12);
    let want = [
        [
            vec![
                vec![(0, 3), (1, 0)],
                vec![(0, 2), (1, 1)],
                vec![(1, 2), (0, 1)],
            ],
            vec![
                vec![(0, 4), (2, 0)],
                vec![(0, 0), (2, 1)],
                vec![(0, 0), (1, 0)],
            ],
        ],
        [
            vec![
                vec![(0, 4), (2, 2)],
                vec![(0, 1), (2, 3)],
                vec![(0, 3), (1, 0)],
            ],
            vec![
                vec![(0, 2), (1, 1)],
                vec![(1, 2), (0, 3)],
                vec![(0, 1), (2, 0)],
            ],
        ],
    ];
    for rank in 0..2 {
        let mut order = MixSpec { rank, ..three() }.start().unwrap();
        for (epoch, want) in want.iter().enumerate() {
            assert_eq!(order.epoch(), epoch as u64);
            assert_eq!(epoch_batches(&mut order), want[rank as usize]);
        }
    }
    assert_eq!(
        reference(&spec, 14),
        [
            (0, 3),
            (1, 0),
            (0, 4),
            (2, 0),
            (0, 2),
            (1, 1),
            (0, 0),
            (2, 1),
            (1, 2),
            (0, 1),
            (0, 0),
            (1, 0),
            (0, 4),
            (2, 2)
        ]
    );
}

// Properties of whole runs.

#[test]
fn ranks_together_take_every_mixture_sample_once_in_order() {
    for world_size in 1..=4u64 {
        for batch_size in 1..=3u64 {
            let spec = MixSpec {
                seed: 3,
                batch_size,
                world_size,
                samples_per_epoch: Some(23),
                ..three()
            };
            let batches = spec.batches_per_epoch().unwrap();
            let global = batch_size * world_size;
            assert_eq!(batches, 23 / global);
            let epochs = 3;
            let want = reference(&spec, epochs * batches * global);
            let mut all = vec![None; want.len()];
            for rank in 0..world_size {
                let mut order = MixSpec {
                    rank,
                    ..spec.clone()
                }
                .start()
                .unwrap();
                for epoch in 0..epochs {
                    for (g, batch) in epoch_batches(&mut order).into_iter().enumerate() {
                        assert_eq!(batch.len() as u64, batch_size, "full batches only");
                        let start = (epoch * batches + g as u64) * global + rank * batch_size;
                        for (i, sample) in batch.into_iter().enumerate() {
                            let slot = &mut all[(start + i as u64) as usize];
                            assert!(slot.is_none(), "a mixture sample taken twice");
                            *slot = Some(sample);
                        }
                    }
                }
            }
            let all: Vec<(u32, u64)> = all.into_iter().map(|s| s.unwrap()).collect();
            assert_eq!(
                all, want,
                "world size {world_size}, batch size {batch_size}"
            );
        }
    }
}

#[test]
fn resuming_from_every_batch_gives_the_uninterrupted_run() {
    for rank in 0..2 {
        let spec = MixSpec {
            rank,
            samples_per_epoch: Some(20),
            ..three()
        };
        let len = spec.batches_per_epoch().unwrap();
        let mut order = spec.start().unwrap();
        let mut states = Vec::new();
        let mut run = Vec::new();
        for _ in 0..4 {
            loop {
                states.push(order.state());
                match order.next() {
                    Some(batch) => run.push(batch.unwrap()),
                    None => break,
                }
            }
        }
        // One state per batch, and the state after each epoch's last batch twice (before the
        // `None` and after it).
        for (i, state) in states.iter().enumerate() {
            let done = i - i / (len as usize + 1);
            assert_eq!(
                *state,
                spec.state_at(state.epoch, state.next_batch).unwrap(),
                "state_at replays to the same counts"
            );
            let mut again = spec.resume(state).unwrap();
            let mut rest = Vec::new();
            while rest.len() < run.len() - done {
                match again.next() {
                    Some(b) => rest.push(b.unwrap()),
                    None => continue,
                }
            }
            assert_eq!(rest, run[done..], "resumed at {state:?}");
        }
        // A finished epoch (e, len) is the start of the next.
        let end = spec.state_at(1, len).unwrap();
        assert_eq!((end.epoch, end.next_batch), (2, 0));
        assert_eq!(end.counts.iter().sum::<u64>(), 2 * 20);
        let mut from_end = spec
            .resume(&MixState {
                epoch: 1,
                next_batch: len,
                ..end.clone()
            })
            .unwrap();
        assert_eq!(from_end.state(), end);
        assert_eq!(
            from_end.next().unwrap().unwrap(),
            run[2 * len as usize],
            "epoch 2's first batch"
        );
    }
}

#[test]
fn a_state_from_one_rank_resumes_another() {
    let mut order = three().start().unwrap();
    order.next().unwrap().unwrap();
    let state = order.state();
    let other = MixSpec { rank: 1, ..three() };
    let mut fresh = other.start().unwrap();
    fresh.next().unwrap().unwrap();
    let mut resumed = other.resume(&state).unwrap();
    assert_eq!(resumed.state(), fresh.state());
    assert_eq!(resumed.next(), fresh.next());
}

#[test]
fn the_tail_opens_the_next_epoch_instead_of_being_skipped() {
    // 10 samples per epoch in global batches of 4: epochs of 8, and epoch 1 starts at sample 8.
    let spec = MixSpec {
        samples_per_epoch: Some(10),
        ..three()
    };
    assert_eq!(spec.batches_per_epoch().unwrap(), 2);
    assert_eq!(spec.epoch_samples().unwrap(), 8);
    assert_eq!(spec.state_at(1, 0).unwrap().counts.iter().sum::<u64>(), 8);
    assert_eq!(spec.state_at(5, 1).unwrap().counts.iter().sum::<u64>(), 44);
}

#[test]
fn an_epoch_ends_with_one_none_then_the_next_begins() {
    let mut order = MixSpec {
        samples_per_epoch: Some(8),
        ..three()
    }
    .start()
    .unwrap();
    assert!(order.next().is_some());
    assert!(order.next().is_some());
    assert_eq!(order.state().epoch, 1);
    assert!(order.next().is_none());
    assert!(order.next().is_some(), "epoch 1");
    assert_eq!((order.epoch(), order.next_batch()), (1, 1));
}

#[test]
fn weight_zero_sources_are_never_read_and_may_be_empty() {
    let spec = MixSpec::new(
        vec![
            MixSource::new("off", 0, 0.0),
            MixSource::new("on", 7, 2.5),
            MixSource::new("off too", 100, 0.0),
        ],
        3,
    );
    assert_eq!(
        spec.batches_per_epoch().unwrap(),
        2,
        "7 rows with weight > 0"
    );
    let mut order = spec.start().unwrap();
    for _ in 0..5 {
        for batch in order.by_ref() {
            assert!(batch.unwrap().iter().all(|&(s, r)| s == 1 && r < 7));
        }
    }
    assert_eq!(order.state().counts, [0, 30, 0]);
}

#[test]
fn every_source_reads_whole_epochs_of_its_rows() {
    // Source `s`'s samples `j` of one source epoch are a permutation of its rows.
    let spec = MixSpec {
        samples_per_epoch: Some(60),
        world_size: 1,
        ..three()
    };
    let all = reference(&spec, 60);
    for (s, src) in spec.sources.iter().enumerate() {
        let rows: Vec<u64> = all
            .iter()
            .filter(|x| x.0 == s as u32)
            .map(|x| x.1)
            .collect();
        for chunk in rows.chunks_exact(src.rows as usize) {
            let mut c = chunk.to_vec();
            c.sort_unstable();
            assert_eq!(c, (0..src.rows).collect::<Vec<_>>());
        }
    }
}

#[test]
fn large_positions_are_cheap_with_a_small_period() {
    let schedule = Schedule::at(&[7 << 29, 3 << 29], 1 << 62).unwrap();
    assert_eq!(schedule.period(), 10);
    assert_eq!(schedule.weights(), [7, 3]);
    check_bound(&[7, 3], schedule.counts(), 1 << 62).unwrap();
    let k = (1u64 << 62) + 17;
    let at = Schedule::at(&[7, 3], k).unwrap();
    assert_eq!(at.counts().iter().sum::<u64>(), k);
    let from_start: Vec<u32> = Schedule::at(&[7, 3], k % 10).unwrap().take(30).collect();
    assert_eq!(at.take(30).collect::<Vec<_>>(), from_start);
}

// Errors.

#[test]
fn bad_specs_are_errors_that_name_the_source() {
    let spec = |w: &[f64]| MixSpec::new(sources(w), 2);
    assert_eq!(MixSpec::new(vec![], 1).validate(), Err(MixError::NoSources));
    for bad in [-0.5, f64::NAN, f64::INFINITY] {
        let err = spec(&[1.0, bad]).validate().unwrap_err();
        assert!(
            matches!(&err, MixError::Weight { index: 1, name, .. } if name == "s1"),
            "{err:?}"
        );
        assert!(err.to_string().contains("source 1 (\"s1\")"), "{err}");
    }
    assert_eq!(spec(&[0.0, -0.0]).validate(), Err(MixError::AllZero));
    let mut empty = spec(&[1.0, 2.0]);
    empty.sources[1].rows = 0;
    let err = empty.validate().unwrap_err();
    assert!(
        matches!(&err, MixError::EmptySource { index: 1, name, .. } if name == "s1"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("source 1 (\"s1\") has weight 2 but no rows"),
        "{err}"
    );
    let mut block = spec(&[1.0, 2.0]);
    block.sources[0].shuffle = Shuffle::Block {
        block_rows: 0,
        window_blocks: 4,
    };
    assert!(matches!(
        block.validate(),
        Err(MixError::Source {
            index: 0,
            error: OrderError::EmptyBlock { .. },
            ..
        })
    ));
    assert_eq!(
        MixSpec {
            batch_size: 0,
            ..spec(&[1.0])
        }
        .validate(),
        Err(MixError::Order(OrderError::ZeroBatchSize))
    );
    assert_eq!(
        MixSpec {
            rank: 2,
            world_size: 2,
            ..spec(&[1.0])
        }
        .validate(),
        Err(MixError::Order(OrderError::RankOutOfRange {
            rank: 2,
            world_size: 2
        }))
    );
    assert_eq!(
        MixSpec {
            world_size: 6,
            ..spec(&[1.0])
        }
        .validate(),
        Err(MixError::EpochTooShort {
            samples: 10,
            batch_size: 2,
            world_size: 6
        })
    );
    assert!(matches!(
        MixSpec {
            world_size: u64::MAX,
            rank: 0,
            ..spec(&[1.0])
        }
        .validate(),
        Err(MixError::EpochTooShort { .. })
    ));
    assert_eq!(
        Schedule::new(&[1, MAX_INTEGER_WEIGHT + 1]).unwrap_err(),
        MixError::IntegerWeight {
            index: 1,
            weight: MAX_INTEGER_WEIGHT + 1
        }
    );
    assert_eq!(Schedule::new(&[0, 0]).unwrap_err(), MixError::AllZero);
    assert!(matches!(
        Schedule::new(&vec![1; MAX_SOURCES + 1]),
        Err(MixError::TooManySources { .. })
    ));
}

#[test]
fn bad_states_are_refused() {
    let spec = three();
    assert_eq!(
        spec.state_at(0, 4).unwrap_err(),
        MixError::ResumePastEnd { batch: 4, len: 3 }
    );
    let good = spec.state_at(1, 1).unwrap();
    assert_eq!(good.counts.iter().sum::<u64>(), 16);
    // Counts for the wrong number of sources, or for another batch.
    let short = MixState {
        counts: good.counts[..2].to_vec(),
        ..good.clone()
    };
    assert!(matches!(spec.resume(&short), Err(MixError::State { .. })));
    let other_batch = MixState {
        next_batch: 2,
        ..good.clone()
    };
    let err = spec.resume(&other_batch).unwrap_err();
    assert!(err.to_string().contains("add up to 16 samples"), "{err}");
    // The right total, one sample moved from source 0 to source 2: off its share.
    let mut moved = good.clone();
    moved.counts[0] -= 2;
    moved.counts[2] += 2;
    let err = spec.resume(&moved).unwrap_err();
    assert!(err.to_string().contains("(\"a\")"), "{err}");
    assert!(matches!(
        spec.state_at(u64::MAX, 0),
        Err(MixError::TooManySamples { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_source_stays_within_one_sample_of_its_share_at_every_prefix(
        raw in proptest::collection::vec((0u64..=MAX_INTEGER_WEIGHT, 0u8..4), 1..40),
        steps in 1usize..3000,
    ) {
        // Weights of every size, a quarter of them 0 and some tiny.
        let weights: Vec<u64> = raw.iter().map(|&(w, kind)| match kind {
            0 => 0,
            1 => w % 16,
            _ => w,
        }).collect();
        prop_assume!(weights.iter().any(|&w| w > 0));
        let mut schedule = Schedule::new(&weights).unwrap();
        for k in 1..=steps as u64 {
            let s = schedule.next().unwrap();
            prop_assert!(weights[s as usize] > 0, "weight 0 never gets a sample");
            prop_assert_eq!(schedule.position(), k);
            if let Err(e) = check_bound(&weights, schedule.counts(), k) {
                return Err(TestCaseError::fail(e));
            }
        }
        // Resuming from the counts, or jumping to the position, continues identically.
        let from = Schedule::from_counts(&weights, schedule.counts()).unwrap();
        let jumped = Schedule::at(&weights, steps as u64).unwrap();
        prop_assert_eq!(&from, &schedule);
        prop_assert_eq!(&jumped, &schedule);
    }

    #[test]
    fn float_weights_track_their_integers_and_shares(
        raw in proptest::collection::vec(prop_oneof![Just(0.0), 0.0f64..1.0, 0.0f64..1e6, Just(1e-30)], 1..8),
        steps in 1u64..2000,
    ) {
        prop_assume!(raw.iter().any(|&w| w > 0.0));
        let q = integer_weights(&raw);
        let top = raw.iter().copied().fold(0.0, f64::max);
        let max_q = *q.iter().max().unwrap() as f64;
        prop_assert!((2147483648.0..=4294967296.0).contains(&max_q));
        for (&w, &q) in raw.iter().zip(&q) {
            prop_assert_eq!(w == 0.0, q == 0);
            // Each integer is its weight's share of the largest to within 2^-31 of it.
            prop_assert!(((q as f64) / max_q - w / top).abs() <= 1.0 / 2147483648.0 + 1e-12);
        }
        let s = Schedule::at(&q, steps).unwrap();
        if let Err(e) = check_bound(&q, s.counts(), steps) {
            return Err(TestCaseError::fail(e));
        }
    }

    #[test]
    fn the_schedule_repeats_with_its_period(
        weights in proptest::collection::vec(0u64..12, 1..6),
        k in 0u64..400,
    ) {
        prop_assume!(weights.iter().any(|&w| w > 0));
        let mut replay = Schedule::new(&weights).unwrap();
        replay.by_ref().take(k as usize).for_each(drop);
        prop_assert_eq!(&Schedule::at(&weights, k).unwrap(), &replay);
        let p = replay.period();
        let a: Vec<u32> = Schedule::at(&weights, k).unwrap().take(50).collect();
        let b: Vec<u32> = Schedule::at(&weights, k % p).unwrap().take(50).collect();
        prop_assert_eq!(a, b);
    }
}
