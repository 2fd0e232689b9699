//! The epoch order (`mmtensor::order`): every row once per epoch, DistributedSampler's rank split,
//! resume, the block shuffle's locality, and known answers that pin `docs/LOADER.md` bit for bit.
//!
//! The known answers come from `order_reference.py` beside this file, a second implementation of
//! `docs/LOADER.md` in plain Python (the SplitMix64 ones are also the published reference outputs).

use mmtensor::order::{
    file_order, permutation, shard_ranks, OrderError, OrderSpec, Rng, Segment, Shuffle, Split,
    SplitMix64, DEFAULT_BLOCK_ROWS, DEFAULT_WINDOW_BLOCKS,
};
use proptest::prelude::*;

const SHUFFLES: [Shuffle; 6] = [
    Shuffle::None,
    Shuffle::Full,
    Shuffle::Block {
        block_rows: 1,
        window_blocks: 1,
    },
    Shuffle::Block {
        block_rows: 3,
        window_blocks: 2,
    },
    Shuffle::Block {
        block_rows: 16,
        window_blocks: 4,
    },
    Shuffle::DEFAULT_BLOCK,
];

fn all_rows(spec: &OrderSpec, epoch: u64) -> Vec<u64> {
    let order = spec.epoch(epoch).unwrap();
    let rows: Vec<u64> = order.iter().flatten().copied().collect();
    assert_eq!(rows, order.row_indices());
    rows
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

// Known answers.

#[test]
fn splitmix64_matches_the_reference_outputs_for_seed_0() {
    let mut sm = SplitMix64::new(0);
    assert_eq!(
        [sm.next_u64(), sm.next_u64(), sm.next_u64()],
        [
            0xE220_A839_7B1D_CDAF,
            0x6E78_9E6A_A1B9_65F4,
            0x06C4_5D18_8009_454F
        ]
    );
}

#[test]
fn rng_for_seed_0_epoch_0_gives_the_documented_outputs() {
    let mut rng = Rng::for_epoch(0, 0);
    let first: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
    assert_eq!(
        first,
        [
            0xFB54_05F7_BD79_C540,
            0x780C_98E2_6CEA_5883,
            0x2A14_6E09_80FE_BC66,
            0x4851_477D_B879_1FCA
        ]
    );
    let mut rng = Rng::for_epoch(0, 1);
    assert_eq!(
        [rng.next_u64(), rng.next_u64()],
        [0xEF75_D62A_19BA_94ED, 0x8E94_9053_6375_F270]
    );
}

#[test]
fn below_rejects_exactly_as_documented() {
    // For n = 2^63 + 1 about half the draws are rejected: 6 results consume 10 outputs here.
    let mut rng = Rng::for_epoch(0, 0);
    let got: Vec<u64> = (0..6).map(|_| rng.below((1 << 63) + 1)).collect();
    assert_eq!(
        got,
        [
            0x7DAA_02FB_DEBC_E2A0,
            0x3C06_4C71_3675_2C41,
            0x15C6_7D41_DCBA_CBAC,
            0x5DCA_2C97_79C7_D5CF,
            0x2067_FA42_5967_C9C3,
            0x7649_6571_CB3C_D943,
        ]
    );
    assert_eq!(rng.next_u64(), 0x785E_362B_542D_E2D0);
}

#[test]
fn rank_split_of_a_full_shuffle_gives_the_documented_batches() {
    let want: [[&[u64]; 2]; 4] = [
        [&[5, 7], &[2]],
        [&[3, 8], &[4]],
        [&[0, 9], &[5]],
        [&[6, 1], &[3]],
    ];
    for (rank, want) in want.iter().enumerate() {
        let spec = OrderSpec {
            shuffle: Shuffle::Full,
            seed: 9,
            rank: rank as u64,
            world_size: 4,
            ..OrderSpec::new(10, 2)
        };
        let order = spec.epoch(3).unwrap();
        assert_eq!(order.iter().collect::<Vec<_>>(), want);
    }
}

#[test]
fn full_shuffle_of_10_rows_gives_the_documented_permutations() {
    let p = |seed, epoch| permutation(10, Shuffle::Full, seed, epoch).unwrap();
    assert_eq!(p(0, 0), [5, 3, 8, 2, 0, 6, 7, 1, 4, 9]);
    assert_eq!(p(0, 1), [4, 8, 1, 3, 7, 0, 2, 6, 5, 9]);
    assert_eq!(p(1, 0), [3, 5, 2, 8, 0, 6, 4, 1, 7, 9]);
}

#[test]
fn block_shuffle_of_10_rows_gives_the_documented_permutation() {
    let block = Shuffle::Block {
        block_rows: 3,
        window_blocks: 2,
    };
    assert_eq!(
        permutation(10, block, 0, 0).unwrap(),
        [2, 0, 8, 1, 6, 7, 4, 9, 5, 3]
    );
}

#[test]
fn defaults_are_the_documented_ones() {
    assert_eq!((DEFAULT_BLOCK_ROWS, DEFAULT_WINDOW_BLOCKS), (256, 64));
    assert_eq!(
        Shuffle::DEFAULT_BLOCK,
        Shuffle::Block {
            block_rows: 256,
            window_blocks: 64
        }
    );
    assert_eq!(
        Shuffle::block(100),
        Shuffle::Block {
            block_rows: 100,
            window_blocks: 64
        }
    );
    let spec = OrderSpec::new(5, 2);
    assert_eq!(
        (
            spec.shuffle,
            spec.seed,
            spec.rank,
            spec.world_size,
            spec.drop_last
        ),
        (Shuffle::None, 0, 0, 1, false)
    );
}

// One rank.

#[test]
fn no_shuffle_is_rows_in_order_every_epoch() {
    for epoch in 0..3 {
        let order = OrderSpec::new(10, 4).epoch(epoch).unwrap();
        let batches: Vec<&[u64]> = order.iter().collect();
        assert_eq!(batches, [&[0, 1, 2, 3][..], &[4, 5, 6, 7], &[8, 9]]);
    }
}

#[test]
fn every_row_once_per_epoch_on_one_rank_for_every_shuffle_and_size() {
    for shuffle in SHUFFLES {
        for rows in [0, 1, 2, 5, 7, 63, 64, 65, 1000, 4099] {
            for batch_size in [1, 3, 64, 5000] {
                let spec = OrderSpec {
                    shuffle,
                    seed: 11,
                    ..OrderSpec::new(rows, batch_size)
                };
                let order = spec.epoch(2).unwrap();
                assert_eq!(
                    sorted(all_rows(&spec, 2)),
                    (0..rows).collect::<Vec<_>>(),
                    "{spec:?}"
                );
                assert_eq!(order.len() as u64, rows.div_ceil(batch_size), "{spec:?}");
                assert_eq!(order.len() as u64, spec.batches_per_epoch().unwrap());
                for (i, b) in order.iter().enumerate() {
                    let full = i + 1 < order.len();
                    assert!(!b.is_empty() && b.len() as u64 <= batch_size);
                    assert!(
                        !full || b.len() as u64 == batch_size,
                        "only the last batch is short"
                    );
                }
            }
        }
    }
}

#[test]
fn zero_rows_give_no_batches() {
    for shuffle in SHUFFLES {
        for (world_size, drop_last) in [(1, false), (1, true), (3, false), (3, true)] {
            let spec = OrderSpec {
                shuffle,
                world_size,
                rank: world_size - 1,
                drop_last,
                ..OrderSpec::new(0, 4)
            };
            let order = spec.epoch(0).unwrap();
            assert!(order.is_empty() && order.row_indices().is_empty() && order.batch(0).is_none());
            assert_eq!(order.iter().count(), 0);
        }
    }
}

#[test]
fn drop_last_drops_the_short_final_batch_on_one_rank() {
    for shuffle in SHUFFLES {
        let spec = OrderSpec {
            shuffle,
            drop_last: true,
            ..OrderSpec::new(10, 4)
        };
        let order = spec.epoch(0).unwrap();
        assert_eq!(order.len(), 2);
        assert!(order.iter().all(|b| b.len() == 4));
        assert_eq!(
            order.row_indices(),
            &permutation(10, shuffle, 0, 0).unwrap()[..8]
        );
        // Fewer rows than a batch: no batch at all.
        let spec = OrderSpec {
            shuffle,
            drop_last: true,
            ..OrderSpec::new(3, 4)
        };
        assert!(spec.epoch(0).unwrap().is_empty());
    }
}

#[test]
fn same_seed_and_epoch_give_the_same_order_and_others_differ() {
    for shuffle in &SHUFFLES[1..] {
        let p = |seed, epoch| permutation(5000, *shuffle, seed, epoch).unwrap();
        assert_eq!(p(3, 4), p(3, 4));
        assert_ne!(p(3, 4), p(3, 5), "{shuffle:?}");
        assert_ne!(p(3, 4), p(4, 4), "{shuffle:?}");
        assert_ne!(p(3, 4), (0..5000).collect::<Vec<_>>(), "{shuffle:?}");
    }
    assert_eq!(
        permutation(100, Shuffle::None, 1, 2).unwrap(),
        permutation(100, Shuffle::None, 3, 4).unwrap()
    );
}

// Block shuffle locality.

/// Maximal runs of consecutive row numbers in `rows` sorted.
fn runs(rows: &[u64]) -> usize {
    let s = sorted(rows.to_vec());
    s.windows(2).filter(|w| w[1] != w[0] + 1).count() + usize::from(!s.is_empty())
}

#[test]
fn block_shuffle_reads_each_window_as_at_most_window_blocks_runs() {
    let (rows, block_rows, window_blocks) = (10_000u64, 50u64, 8u64);
    let shuffle = Shuffle::Block {
        block_rows,
        window_blocks,
    };
    let perm = permutation(rows, shuffle, 5, 1).unwrap();
    let window_rows = (block_rows * window_blocks) as usize;
    let mut total_runs = 0;
    for window in perm.chunks(window_rows) {
        let r = runs(window);
        assert!(r as u64 <= window_blocks);
        total_runs += r;
    }
    // Each block is read once, in one piece: mean run length at least a block.
    assert!(rows as usize / total_runs >= block_rows as usize);
    // Yet rows within a window are mixed: a window is not its blocks in order.
    assert!(perm
        .chunks(window_rows)
        .all(|w| w.windows(2).any(|p| p[1] != p[0] + 1)));

    // A batch spans at most (ceil(batch / window) + 1) windows' blocks, whatever its offset.
    let spec = OrderSpec {
        shuffle,
        ..OrderSpec::new(rows, 128)
    };
    let order = spec.epoch(1).unwrap();
    for batch in order.iter() {
        let mut blocks: Vec<u64> = batch.iter().map(|r| r / block_rows).collect();
        blocks.sort_unstable();
        blocks.dedup();
        assert!(blocks.len() as u64 <= (128u64.div_ceil(window_rows as u64) + 1) * window_blocks);
    }
}

#[test]
fn block_shuffle_with_a_short_last_block_is_still_a_permutation() {
    for rows in [1, 49, 51, 99, 101, 1001] {
        let perm = permutation(
            rows,
            Shuffle::Block {
                block_rows: 50,
                window_blocks: 3,
            },
            0,
            0,
        )
        .unwrap();
        assert_eq!(sorted(perm), (0..rows).collect::<Vec<_>>());
    }
}

// Ranks.

fn rank_orders(
    rows: u64,
    world_size: u64,
    shuffle: Shuffle,
    drop_last: bool,
    batch_size: u64,
) -> Vec<Vec<u64>> {
    (0..world_size)
        .map(|rank| {
            let spec = OrderSpec {
                shuffle,
                rank,
                world_size,
                drop_last,
                seed: 9,
                ..OrderSpec::new(rows, batch_size)
            };
            all_rows(&spec, 3)
        })
        .collect()
}

/// DistributedSampler's algorithm, restated from its documentation: pad the epoch's indices by
/// repeating them from the start up to a multiple of the world size (or truncate with
/// `drop_last`), then rank `r` takes `indices[r::world_size]`.
fn distributed_sampler(
    indices: &[u64],
    world_size: usize,
    rank: usize,
    drop_last: bool,
) -> Vec<u64> {
    let n = indices.len();
    let total = if drop_last {
        n / world_size * world_size
    } else {
        n.div_ceil(world_size) * world_size
    };
    let padded: Vec<u64> = indices.iter().copied().cycle().take(total).collect();
    padded.into_iter().skip(rank).step_by(world_size).collect()
}

#[test]
fn ranks_match_distributed_sampler_on_the_same_permutation() {
    for shuffle in SHUFFLES {
        for rows in [0, 1, 2, 3, 7, 10, 64, 1001] {
            for world_size in [1, 2, 3, 4, 8] {
                for drop_last in [false, true] {
                    let perm = permutation(rows, shuffle, 9, 3).unwrap();
                    let got = rank_orders(rows, world_size, shuffle, drop_last, 1);
                    for (rank, rows_of_rank) in got.iter().enumerate() {
                        let want = distributed_sampler(&perm, world_size as usize, rank, drop_last);
                        assert_eq!(
                            rows_of_rank, &want,
                            "{shuffle:?} rows {rows} ws {world_size} rank {rank}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn ranks_are_disjoint_and_cover_the_epoch_when_no_padding_is_needed() {
    for shuffle in SHUFFLES {
        let got = rank_orders(1200, 4, shuffle, false, 7);
        assert!(got.iter().all(|r| r.len() == 300));
        assert_eq!(sorted(got.concat()), (0..1200).collect::<Vec<_>>());
    }
}

#[test]
fn padding_repeats_the_epoch_from_its_start() {
    // 10 rows on 4 ranks: 12 positions, the last two are the permutation's first two rows.
    let perm = permutation(10, Shuffle::Full, 9, 3).unwrap();
    let got = rank_orders(10, 4, Shuffle::Full, false, 2);
    assert!(got.iter().all(|r| r.len() == 3));
    assert_eq!(got[2][2], perm[0]);
    assert_eq!(got[3][2], perm[1]);
    let mut union = sorted(got.concat());
    union.dedup();
    assert_eq!(union, (0..10).collect::<Vec<_>>(), "the union is the epoch");
    // Fewer rows than ranks: rows repeat cyclically, every rank still gets one.
    let got = rank_orders(2, 5, Shuffle::None, false, 1);
    assert_eq!(got, [[0], [1], [0], [1], [0]]);
}

#[test]
fn drop_last_truncates_to_a_multiple_of_the_world_size_and_drops_short_batches() {
    // 10 rows on 4 ranks: 8 positions, 2 rows each; batches of 3 then hold nothing.
    let got = rank_orders(10, 4, Shuffle::Full, true, 2);
    assert!(got.iter().all(|r| r.len() == 2));
    let all = sorted(got.concat());
    let mut dedup = all.clone();
    dedup.dedup();
    assert_eq!(all, dedup, "no row twice with drop_last");
    assert_eq!(all.len(), 8);
    for rank in 0..4 {
        let spec = OrderSpec {
            shuffle: Shuffle::Full,
            rank,
            world_size: 4,
            drop_last: true,
            ..OrderSpec::new(10, 3)
        };
        assert!(spec.epoch(0).unwrap().is_empty());
    }
}

#[test]
fn every_rank_has_the_same_number_of_batches() {
    for rows in [0, 1, 5, 10, 99, 100, 101] {
        for world_size in [1, 2, 3, 7] {
            for drop_last in [false, true] {
                let lens: Vec<usize> = (0..world_size)
                    .map(|rank| {
                        let spec = OrderSpec {
                            rank,
                            world_size,
                            drop_last,
                            shuffle: Shuffle::Full,
                            ..OrderSpec::new(rows, 4)
                        };
                        spec.epoch(1).unwrap().len()
                    })
                    .collect();
                assert!(
                    lens.iter().all(|&l| l == lens[0]),
                    "rows {rows} ws {world_size}: {lens:?}"
                );
            }
        }
    }
}

// Resume.

#[test]
fn resume_from_k_is_the_tail_of_the_full_iteration() {
    for shuffle in SHUFFLES {
        let spec = OrderSpec {
            shuffle,
            seed: 1,
            rank: 1,
            world_size: 3,
            ..OrderSpec::new(1000, 64)
        };
        let order = spec.epoch(4).unwrap();
        let all: Vec<&[u64]> = order.iter().collect();
        for k in 0..=order.len() {
            // A fresh order, as a restarted process would build from the state (epoch 4, k).
            let again = spec.epoch(4).unwrap();
            let tail = again.batches_from(k).unwrap();
            assert_eq!(tail.next_batch(), k);
            assert_eq!(tail.len(), order.len() - k);
            assert_eq!(tail.collect::<Vec<_>>(), all[k..]);
        }
        assert_eq!(
            order.batches_from(order.len() + 1).unwrap_err(),
            OrderError::ResumePastEnd {
                batch: order.len() + 1,
                len: order.len()
            }
        );
    }
}

#[test]
fn the_iterator_reports_its_resume_point() {
    let order = OrderSpec::new(10, 3).epoch(0).unwrap();
    let mut it = order.iter();
    it.next();
    it.next();
    assert_eq!(it.next_batch(), 2);
    assert_eq!(
        it.collect::<Vec<_>>(),
        order.batches_from(2).unwrap().collect::<Vec<_>>()
    );
}

// Within a batch.

#[test]
fn file_order_sorts_rows_with_their_output_positions() {
    let mut out = vec![(99, 99)];
    file_order(&[7, 2, 9, 2, 3], &mut out);
    assert_eq!(out, [(2, 1), (2, 3), (3, 4), (7, 0), (9, 2)]);
    file_order(&[], &mut out);
    assert!(out.is_empty());
}

// Bad input.

#[test]
fn invalid_specs_give_the_documented_errors() {
    let base = OrderSpec::new(10, 2);
    let cases = [
        (
            OrderSpec {
                batch_size: 0,
                ..base.clone()
            },
            OrderError::ZeroBatchSize,
        ),
        (
            OrderSpec {
                world_size: 0,
                rank: 0,
                ..base.clone()
            },
            OrderError::ZeroWorldSize,
        ),
        (
            OrderSpec {
                world_size: 2,
                rank: 2,
                ..base.clone()
            },
            OrderError::RankOutOfRange {
                rank: 2,
                world_size: 2,
            },
        ),
        (
            OrderSpec {
                rank: u64::MAX,
                world_size: u64::MAX,
                ..base.clone()
            },
            OrderError::RankOutOfRange {
                rank: u64::MAX,
                world_size: u64::MAX,
            },
        ),
        (
            OrderSpec {
                shuffle: Shuffle::Block {
                    block_rows: 0,
                    window_blocks: 4,
                },
                ..base.clone()
            },
            OrderError::EmptyBlock {
                block_rows: 0,
                window_blocks: 4,
            },
        ),
        (
            OrderSpec {
                shuffle: Shuffle::Block {
                    block_rows: 4,
                    window_blocks: 0,
                },
                ..base.clone()
            },
            OrderError::EmptyBlock {
                block_rows: 4,
                window_blocks: 0,
            },
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(spec.validate().unwrap_err(), want);
        assert_eq!(spec.epoch(0).unwrap_err(), want);
        assert_eq!(spec.batches_per_epoch().unwrap_err(), want);
        assert!(!want.to_string().is_empty());
    }
}

#[test]
fn huge_sizes_are_an_error_or_an_answer_never_an_overflow() {
    let spec = OrderSpec {
        world_size: u64::MAX,
        rank: u64::MAX - 1,
        ..OrderSpec::new(u64::MAX, u64::MAX)
    };
    assert_eq!(spec.batches_per_epoch().unwrap(), 1);
    let spec = OrderSpec {
        shuffle: Shuffle::Full,
        ..OrderSpec::new(u64::MAX, 1)
    };
    assert_eq!(spec.batches_per_epoch().unwrap(), u64::MAX);
    assert!(matches!(
        spec.epoch(0).unwrap_err(),
        OrderError::TooManyRows { rows: u64::MAX, .. }
    ));
    let block = Shuffle::Block {
        block_rows: u64::MAX,
        window_blocks: u64::MAX,
    };
    assert!(matches!(
        permutation(u64::MAX, block, 0, 0).unwrap_err(),
        OrderError::TooManyRows { .. }
    ));
    // A one-block, one-window shuffle of a few rows with enormous sizes is still fine.
    assert_eq!(
        sorted(permutation(5, block, 0, 0).unwrap()),
        [0, 1, 2, 3, 4]
    );
    // The largest world size with few rows: rank u64::MAX - 1 reads row (u64::MAX - 1) mod 3.
    let spec = OrderSpec {
        world_size: u64::MAX,
        rank: u64::MAX - 1,
        ..OrderSpec::new(3, 1)
    };
    assert_eq!(spec.epoch(0).unwrap().row_indices(), [(u64::MAX - 1) % 3]);
}

// Whole shards per rank.

fn shard_spec(shards: &[u64], batch_size: u64, rank: u64, world_size: u64) -> OrderSpec {
    OrderSpec {
        rank,
        world_size,
        split: Split::Shards(shards.into()),
        ..OrderSpec::new(shards.iter().sum(), batch_size)
    }
}

#[test]
fn shard_split_gives_the_documented_batches() {
    // From order_reference.py.
    let shards = [5, 3, 0, 4, 3];
    assert_eq!(shard_ranks(&shards, 2).unwrap(), [0, 1, 1, 1, 0]);
    let batches = |rank, drop_last, shuffle, batch_size, seed, epoch| {
        let spec = OrderSpec {
            shuffle,
            seed,
            drop_last,
            ..shard_spec(&shards, batch_size, rank, 2)
        };
        let order = spec.epoch(epoch).unwrap();
        order.iter().map(<[u64]>::to_vec).collect::<Vec<_>>()
    };
    assert_eq!(
        batches(0, false, Shuffle::Full, 3, 9, 3),
        [vec![4, 2, 0], vec![12, 14, 13], vec![1, 3]]
    );
    // Rank 1 owns 7 rows, rank 0 owns 8: rank 1 repeats its first row (7) to match.
    assert_eq!(
        batches(1, false, Shuffle::Full, 3, 9, 3),
        [vec![7, 10, 8], vec![9, 11, 6], vec![5, 7]]
    );
    assert_eq!(
        batches(0, true, Shuffle::Full, 3, 9, 3),
        [vec![4, 2, 0], vec![12, 14, 13]]
    );
    assert_eq!(
        batches(1, true, Shuffle::Full, 3, 9, 3),
        [vec![7, 10, 8], vec![9, 11, 6]]
    );
    let block = Shuffle::Block {
        block_rows: 2,
        window_blocks: 2,
    };
    assert_eq!(
        batches(1, false, block, 4, 1, 0),
        [vec![7, 8, 9, 10], vec![5, 11, 6, 7]]
    );
}

#[test]
fn shard_ranks_balance_in_manifest_order() {
    // Equal shards go round robin; a big shard is balanced by several small ones.
    assert_eq!(shard_ranks(&[4; 7], 3).unwrap(), [0, 1, 2, 0, 1, 2, 0]);
    assert_eq!(
        shard_ranks(&[100, 10, 10, 10, 100], 2).unwrap(),
        [0, 1, 1, 1, 1]
    );
    // Empty shards go to the rank owning the fewest rows, and count for nothing.
    assert_eq!(shard_ranks(&[0, 5, 0, 5], 2).unwrap(), [0, 0, 1, 1]);
    // No rows at all: any world size, every shard to rank 0, and every rank reads nothing.
    assert_eq!(shard_ranks(&[0, 0], 8).unwrap(), [0, 0]);
    assert_eq!(shard_ranks(&[], 8).unwrap(), Vec::<u64>::new());
    let spec = shard_spec(&[0, 0], 4, 7, 8);
    assert_eq!(spec.epoch(0).unwrap().len(), 0);
}

#[test]
fn shard_split_on_one_rank_is_the_row_split() {
    let shards = [7, 0, 30, 1, 12];
    for shuffle in SHUFFLES {
        for drop_last in [false, true] {
            let rows = OrderSpec {
                shuffle,
                seed: 5,
                drop_last,
                ..OrderSpec::new(50, 8)
            };
            let by_shard = OrderSpec {
                split: Split::Shards(shards.as_slice().into()),
                ..rows.clone()
            };
            assert_eq!(
                by_shard.epoch(2).unwrap().row_indices(),
                rows.epoch(2).unwrap().row_indices()
            );
        }
    }
}

#[test]
fn appending_shards_leaves_every_shard_with_its_rank() {
    let day1 = [1000, 1000, 1000, 1000, 1000, 1000, 1000, 377];
    let mut day2 = day1.to_vec();
    day2.extend([1000, 1000, 1000, 52]);
    for world_size in 1..=8 {
        let before = shard_ranks(&day1, world_size).unwrap();
        let after = shard_ranks(&day2, world_size).unwrap();
        assert_eq!(before, after[..day1.len()], "world size {world_size}");
    }
}

#[test]
fn shard_split_refuses_what_it_cannot_do() {
    assert_eq!(
        shard_spec(&[5, 0, 5], 2, 0, 3).validate(),
        Err(OrderError::TooFewShards {
            shards: 2,
            world_size: 3
        })
    );
    assert_eq!(shard_ranks(&[5], 0), Err(OrderError::ZeroWorldSize));
    let wrong = OrderSpec {
        split: Split::Shards([4, 4].as_slice().into()),
        ..OrderSpec::new(9, 2)
    };
    assert_eq!(
        wrong.epoch(0).unwrap_err(),
        OrderError::ShardRows {
            shard_rows: 8,
            rows: 9
        }
    );
    // Counts whose sum overflows are a mismatch, never a wrapped sum.
    let huge = OrderSpec {
        split: Split::Shards([u64::MAX, 2].as_slice().into()),
        ..OrderSpec::new(1, 1)
    };
    assert!(matches!(huge.validate(), Err(OrderError::ShardRows { .. })));
    // The usual checks come first.
    assert_eq!(
        shard_spec(&[5, 5], 2, 2, 2).validate(),
        Err(OrderError::RankOutOfRange {
            rank: 2,
            world_size: 2
        })
    );
}

proptest! {
    #[test]
    fn ranks_cover_the_epoch_and_split_it_evenly(
        rows in 0u64..300,
        batch_size in 1u64..40,
        world_size in 1u64..6,
        drop_last: bool,
        seed: u64,
        epoch in 0u64..1000,
        kind in 0usize..SHUFFLES.len(),
    ) {
        let shuffle = SHUFFLES[kind];
        let orders: Vec<_> = (0..world_size)
            .map(|rank| OrderSpec { num_rows: rows, batch_size, shuffle, seed, rank, world_size, drop_last, split: Split::Rows }.epoch(epoch).unwrap())
            .collect();
        let lens: Vec<usize> = orders.iter().map(|o| o.len()).collect();
        prop_assert!(lens.iter().all(|&l| l == lens[0]));
        let all: Vec<u64> = orders.iter().flat_map(|o| o.row_indices().iter().copied()).collect();
        let perm = permutation(rows, shuffle, seed, epoch).unwrap();
        prop_assert_eq!(sorted(perm.clone()), (0..rows).collect::<Vec<_>>());
        let mut distinct = sorted(all.clone());
        distinct.dedup();
        if drop_last {
            prop_assert_eq!(distinct.len(), all.len(), "no repeats with drop_last");
        } else {
            prop_assert_eq!(distinct, (0..rows).collect::<Vec<_>>(), "the union is the epoch");
            let padded = rows.div_ceil(world_size) * world_size;
            prop_assert_eq!(all.len() as u64, padded);
        }
        for (rank, o) in orders.iter().enumerate() {
            let want = distributed_sampler(&perm, world_size as usize, rank, drop_last);
            let kept = if drop_last { want.len() / batch_size as usize * batch_size as usize } else { want.len() };
            prop_assert_eq!(o.row_indices(), &want[..kept]);
        }
    }
    #[test]
    fn block_shuffle_is_a_permutation_whose_windows_are_few_runs(
        rows in 0u64..2000,
        block_rows in 1u64..70,
        window_blocks in 1u64..9,
        seed: u64,
    ) {
        let perm = permutation(rows, Shuffle::Block { block_rows, window_blocks }, seed, 0).unwrap();
        prop_assert_eq!(sorted(perm.clone()), (0..rows).collect::<Vec<_>>());
        // Walk the windows: a window is the first stretch that holds exactly `window_blocks`
        // whole blocks (the last window fewer), and its rows, sorted, are at most that many runs.
        let size = |b: u64| (rows.min((b + 1) * block_rows) - b * block_rows) as usize;
        let (mut at, mut blocks, mut sum) = (0, Vec::new(), 0);
        for pos in 0..perm.len() {
            let b = perm[pos] / block_rows;
            if !blocks.contains(&b) {
                prop_assert!((blocks.len() as u64) < window_blocks, "a window with too many blocks");
                blocks.push(b);
                sum += size(b);
            }
            let full = blocks.len() as u64 == window_blocks && pos + 1 == at + sum;
            if full || pos + 1 == perm.len() {
                prop_assert_eq!(pos + 1, at + sum, "a window is whole blocks");
                prop_assert!(runs(&perm[at..=pos]) <= blocks.len());
                (at, sum) = (pos + 1, 0);
                blocks.clear();
            }
        }
    }
}

proptest! {
    #[test]
    fn each_rank_reads_only_its_own_shards_and_all_ranks_keep_step(
        shards in proptest::collection::vec(0u64..40, 1..12),
        batch_size in 1u64..20,
        world_size in 1u64..5,
        drop_last: bool,
        seed: u64,
        epoch in 0u64..100,
        kind in 0usize..SHUFFLES.len(),
    ) {
        let non_empty = shards.iter().filter(|&&r| r > 0).count() as u64;
        prop_assume!(non_empty == 0 || non_empty >= world_size);
        let ranks = shard_ranks(&shards, world_size).unwrap();
        let mut owner = Vec::new(); // the rank owning each dataset row
        for (&rows, &rank) in shards.iter().zip(&ranks) {
            owner.extend(std::iter::repeat_n(rank, rows as usize));
        }
        let mut owned = vec![0u64; world_size as usize];
        for &r in &owner {
            owned[r as usize] += 1;
        }
        let max_shard = shards.iter().copied().max().unwrap_or(0);
        if !owner.is_empty() {
            let (lo, hi) = (owned.iter().min().unwrap(), owned.iter().max().unwrap());
            prop_assert!(hi - lo <= max_shard, "ranks differ by at most one shard's rows");
        }
        let orders: Vec<_> = (0..world_size)
            .map(|rank| OrderSpec {
                shuffle: SHUFFLES[kind],
                seed,
                drop_last,
                ..shard_spec(&shards, batch_size, rank, world_size)
            }.epoch(epoch).unwrap())
            .collect();
        prop_assert!(orders.iter().all(|o| o.len() == orders[0].len()), "every rank has the same batches");
        for (rank, o) in orders.iter().enumerate() {
            prop_assert!(o.row_indices().iter().all(|&r| owner[r as usize] == rank as u64), "only its own shards");
            let mut distinct = sorted(o.row_indices().to_vec());
            distinct.dedup();
            if drop_last {
                prop_assert_eq!(distinct.len(), o.row_indices().len(), "no repeats with drop_last");
            } else {
                let mine: Vec<u64> = (0..owner.len() as u64).filter(|&r| owner[r as usize] == rank as u64).collect();
                prop_assert_eq!(distinct, mine, "every row it owns, once or (padding) twice");
            }
        }
    }
}

#[test]
fn length_grouping_known_answer() {
    use mmtensor::order::{OrderSpec, Shuffle};
    // 10 rows in file order, batches of 2, windows of 2 batches (4 rows); the last window holds
    // one batch (rows 8, 9); no short batch. Lengths: row r has length (r * 7) % 5.
    let spec = OrderSpec {
        shuffle: Shuffle::None,
        seed: 0,
        ..OrderSpec::new(10, 2)
    };
    let mut order = spec.epoch(0).unwrap();
    order.group_by_length(2, 0, |r| (r * 7) % 5);
    // Window [0, 1, 2, 3] (lengths 0, 2, 4, 1) sorts to [2, 1, 3, 0]: batches [2, 1], [3, 0];
    // window [4, 5, 6, 7] (lengths 3, 0, 2, 4) to [7, 4, 6, 5]: batches [7, 4], [6, 5]; then
    // [8, 9] (lengths 1, 3) to [9, 8]. The batches of each window are then permuted by the
    // salted generator: the answer below was also computed by order_reference.py's `Rng` (an
    // independent implementation of the generator) following docs/LOADER.md's recipe.
    let got: Vec<Vec<u64>> = order.iter().map(<[u64]>::to_vec).collect();
    let mut sorted_batches: Vec<Vec<u64>> = got.clone();
    sorted_batches.sort();
    assert_eq!(
        sorted_batches,
        [vec![2, 1], vec![3, 0], vec![6, 5], vec![7, 4], vec![9, 8]]
    );
    assert_eq!(got[4], [9, 8]);
    assert_eq!(got, GROUPED_KNOWN);
}

const GROUPED_KNOWN: [[u64; 2]; 5] = [[3, 0], [2, 1], [6, 5], [7, 4], [9, 8]];

// Elastic resume: the rest of an epoch from a global position, on other ranks or fewer rows.

fn rows_spec(rows: u64, batch_size: u64, rank: u64, world_size: u64, drop_last: bool) -> OrderSpec {
    OrderSpec {
        shuffle: Shuffle::Full,
        rank,
        world_size,
        drop_last,
        ..OrderSpec::new(rows, batch_size)
    }
}

/// Every rank's batches of `segment` of epoch `epoch`, on `world_size` ranks.
fn resumed(
    rows: u64,
    batch_size: u64,
    world_size: u64,
    drop_last: bool,
    segment: Segment,
) -> Vec<Vec<Vec<u64>>> {
    (0..world_size)
        .map(|rank| {
            let spec = rows_spec(rows, batch_size, rank, world_size, drop_last);
            let order = spec.epoch_from(0, segment).unwrap();
            assert_eq!(order.segment(), segment);
            assert_eq!(order.len() as u64, spec.segment_batches(segment).unwrap());
            order.iter().map(<[u64]>::to_vec).collect()
        })
        .collect()
}

#[test]
fn a_state_of_4_ranks_resumes_on_3_with_the_documented_batches() {
    // order_reference.py: P = [5, 3, 8, 2, 0, 6, 7, 1, 4, 9]; 4 ranks read [5, 0], [3, 6],
    // [8, 7], [2, 1] in their first batch of 2: position 8. Three ranks read the rest, [4, 9],
    // and rank 2 one padded position, P[0] = 5, as an uninterrupted epoch pads.
    let spec = rows_spec(10, 2, 0, 4, false);
    let at = spec.position(Segment::whole(10), 1);
    assert_eq!(at, 8);
    let first: Vec<Vec<u64>> = (0..4)
        .map(|r| {
            let o = rows_spec(10, 2, r, 4, false).epoch(0).unwrap();
            o.batch(0).unwrap().to_vec()
        })
        .collect();
    assert_eq!(first, [[5, 0], [3, 6], [8, 7], [2, 1]]);
    let rest = Segment {
        start: at,
        rows: 10,
    };
    assert_eq!(rest.remaining(), 2);
    assert_eq!(
        resumed(10, 2, 3, false, rest),
        [vec![vec![4]], vec![vec![9]], vec![vec![5]]]
    );
    // With drop_last, 2 entries on 3 ranks are 0 per rank: nothing is left of the epoch.
    assert_eq!(
        resumed(10, 2, 3, true, rest),
        [vec![], vec![], vec![]] as [Vec<Vec<u64>>; 3]
    );
    // Position 4 (2 ranks after a batch of 2) on 4 ranks: 6 entries left, 2 padded.
    let rest = Segment { start: 4, rows: 10 };
    assert_eq!(
        resumed(10, 2, 4, false, rest),
        [
            vec![vec![0, 4]],
            vec![vec![6, 9]],
            vec![vec![7, 5]],
            vec![vec![1, 3]]
        ]
    );
}

#[test]
fn a_segment_at_a_batch_boundary_of_the_same_ranks_is_the_rest_of_the_epoch() {
    for (rows, b, ws, drop_last) in [(10, 2, 4, false), (103, 4, 3, false), (103, 4, 3, true)] {
        for shuffle in SHUFFLES {
            for rank in 0..ws {
                let spec = OrderSpec {
                    shuffle,
                    seed: 5,
                    ..rows_spec(rows, b, rank, ws, drop_last)
                };
                let whole = spec.epoch(2).unwrap();
                for k in 0..whole.len() {
                    let at = spec.position(Segment::whole(rows), k as u64);
                    let rest = spec.epoch_from(2, Segment { start: at, rows }).unwrap();
                    let want: Vec<&[u64]> = whole.batches_from(k).unwrap().collect();
                    assert_eq!(rest.iter().collect::<Vec<_>>(), want, "{rows} {b} {ws} {k}");
                    assert_eq!(whole.position(k), at);
                }
            }
        }
    }
}

#[test]
fn four_ranks_then_three_read_1000_rows_exactly_once() {
    let (rows, b) = (1000, 8);
    let whole = Segment::whole(rows);
    // 4 ranks read 20 batches each, then 3 ranks read the rest.
    let at = rows_spec(rows, b, 0, 4, false).position(whole, 20);
    assert_eq!(at, 640);
    let mut seen: Vec<u64> = (0..4)
        .flat_map(|r| {
            let o = rows_spec(rows, b, r, 4, false).epoch(0).unwrap();
            o.iter().take(20).flatten().copied().collect::<Vec<_>>()
        })
        .collect();
    let rest = resumed(rows, b, 3, false, Segment { start: at, rows });
    assert!(
        rest.iter().all(|r| r.len() == rest[0].len()),
        "ranks keep step"
    );
    seen.extend(rest.into_iter().flatten().flatten());
    // 360 left on 3 ranks: no padding, every row exactly once.
    assert_eq!(sorted(seen), (0..rows).collect::<Vec<_>>());
}

#[test]
fn an_epoch_of_old_rows_resumes_over_them_and_the_next_covers_all() {
    // Saved after 3 batches of 4 on 2 ranks over 50 rows; 30 rows appended since.
    let old = rows_spec(50, 4, 0, 2, false);
    let at = old.position(Segment::whole(50), 3);
    let now: Vec<OrderSpec> = (0..2).map(|r| rows_spec(80, 4, r, 2, false)).collect();
    let mut seen: Vec<u64> = (0..2)
        .flat_map(|r| {
            let o = rows_spec(50, 4, r, 2, false).epoch(0).unwrap();
            o.iter().take(3).flatten().copied().collect::<Vec<_>>()
        })
        .collect();
    for spec in &now {
        let rest = spec
            .epoch_from(
                0,
                Segment {
                    start: at,
                    rows: 50,
                },
            )
            .unwrap();
        seen.extend(rest.row_indices());
    }
    assert_eq!(sorted(seen), (0..50).collect::<Vec<_>>());
    let next: Vec<u64> = now.iter().flat_map(|s| all_rows(s, 1)).collect();
    assert_eq!(sorted(next), (0..80).collect::<Vec<_>>());
}

#[test]
fn segments_that_cannot_be_read_give_the_documented_errors() {
    let spec = rows_spec(10, 2, 0, 2, false);
    assert_eq!(
        spec.epoch_from(0, Segment { start: 0, rows: 11 })
            .unwrap_err(),
        OrderError::StateRows {
            state_rows: 11,
            rows: 10
        }
    );
    assert_eq!(
        spec.epoch_from(0, Segment { start: 9, rows: 8 })
            .unwrap_err(),
        OrderError::PositionPastEnd {
            samples: 9,
            rows: 8
        }
    );
    // The end itself is an empty rest.
    assert!(spec
        .epoch_from(
            0,
            Segment {
                start: 10,
                rows: 10
            }
        )
        .unwrap()
        .is_empty());
    let shards = OrderSpec {
        split: Split::Shards(vec![5, 5].into()),
        ..spec
    };
    let e = shards
        .epoch_from(0, Segment { start: 4, rows: 10 })
        .unwrap_err();
    assert!(
        matches!(
            e,
            OrderError::NotElastic {
                samples: 4,
                rows: 10,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("split=\"rows\""), "{e}");
    assert!(shards.epoch_from(0, Segment::whole(10)).is_ok());
}

proptest! {
    #[test]
    fn consumed_and_resumed_read_every_row_once_with_the_documented_padding(
        rows in 0u64..300,
        batch_size in 1u64..20,
        world_size in 1u64..7,
        new_world_size in 1u64..7,
        done_batches in 0u64..40,
        drop_last: bool,
        seed: u64,
        kind in 0usize..SHUFFLES.len(),
    ) {
        let shuffle = SHUFFLES[kind];
        let spec = |rank, world_size| OrderSpec {
            num_rows: rows, batch_size, shuffle, seed, rank, world_size, drop_last,
            split: Split::Rows,
        };
        let old: Vec<_> = (0..world_size).map(|r| spec(r, world_size).epoch(4).unwrap()).collect();
        // A checkpoint at a batch boundary within the epoch (every rank at the same batch).
        let k = done_batches.min(old[0].len().saturating_sub(1) as u64) as usize;
        let at = old[0].position(k);
        prop_assert!(at <= rows);
        let consumed: Vec<u64> = old
            .iter()
            .flat_map(|o| o.iter().take(k).flatten().copied().collect::<Vec<_>>())
            .collect();
        let perm = permutation(rows, shuffle, seed, 4).unwrap();
        // The consumed entries are the prefix of the epoch's order.
        prop_assert_eq!(sorted(consumed.clone()), sorted(perm[..at as usize].to_vec()));
        let segment = Segment { start: at, rows };
        let new: Vec<_> = (0..new_world_size)
            .map(|r| spec(r, new_world_size).epoch_from(4, segment).unwrap())
            .collect();
        let lens: Vec<usize> = new.iter().map(|o| o.len()).collect();
        prop_assert!(lens.iter().all(|&l| l == lens[0]), "the new ranks keep step");
        let resumed: Vec<u64> = new.iter().flat_map(|o| o.row_indices().iter().copied()).collect();
        let left = rows - at;
        let mut all = consumed.clone();
        all.extend(&resumed);
        if drop_last {
            // Nothing repeats; what is dropped is the entries past `n * R'` and each rank's
            // short last batch.
            let n = left / new_world_size;
            let kept = n / batch_size * batch_size;
            prop_assert_eq!(resumed.len() as u64, kept * new_world_size);
            let mut distinct = sorted(all.clone());
            distinct.dedup();
            prop_assert_eq!(distinct.len(), all.len());
        } else {
            // Every remaining entry once, then `pad < R'` entries of the epoch's order from its
            // start, continuing cyclically.
            let n = left.div_ceil(new_world_size);
            let pad = n * new_world_size - left;
            prop_assert!(pad < new_world_size);
            prop_assert_eq!(resumed.len() as u64, n * new_world_size);
            let mut want = perm[at as usize..].to_vec();
            want.extend((0..pad).map(|i| perm[(i % rows.max(1)) as usize]));
            prop_assert_eq!(sorted(resumed.clone()), sorted(want));
            if pad == 0 {
                prop_assert_eq!(sorted(all), (0..rows).collect::<Vec<_>>());
            }
        }
    }
}
