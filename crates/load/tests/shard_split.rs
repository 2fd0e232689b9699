//! Whole shards per rank, checked against `order_reference.py` on many small random cases, and
//! edge cases of the shard split.

use std::io::Write;
use std::process::{Command, Stdio};

use mmtensor::order::{OrderError, OrderSpec, Shuffle, Split, SplitMix64};

/// One case as a line for the Python side: `shards;batch;shuffle;seed;epoch;rank;world;drop`.
fn case_line(spec: &OrderSpec, epoch: u64) -> String {
    let Split::Shards(shards) = &spec.split else {
        unreachable!("every case splits by shards")
    };
    let sh: Vec<String> = shards.iter().map(u64::to_string).collect();
    let s = match spec.shuffle {
        Shuffle::None => "none".to_string(),
        Shuffle::Full => "full".to_string(),
        Shuffle::Block {
            block_rows,
            window_blocks,
        } => format!("{block_rows}/{window_blocks}"),
        _ => unreachable!(),
    };
    format!(
        "{};{};{s};{};{epoch};{};{};{}",
        sh.join(","),
        spec.batch_size,
        spec.seed,
        spec.rank,
        spec.world_size,
        u8::from(spec.drop_last)
    )
}

/// Every case through the Python reference and through `OrderSpec::epoch`: the same batches, or
/// both refuse.
#[test]
fn shard_split_matches_the_python_reference_on_random_cases() {
    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/order_reference.py");
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("no python3: skipped");
        return;
    }
    let mut rng = SplitMix64::new(12345);
    let mut below = |n: u64| rng.next_u64() % n;
    let mut cases = Vec::new();
    for _ in 0..3000 {
        let n_shards = below(7);
        let shards: Vec<u64> = (0..n_shards)
            .map(|_| if below(3) == 0 { 0 } else { below(12) })
            .collect();
        let ws = 1 + below(4);
        let rank = below(ws);
        let bs = 1 + below(5);
        let shuffle = match below(3) {
            0 => Shuffle::None,
            1 => Shuffle::Full,
            _ => Shuffle::Block {
                block_rows: 1 + below(4),
                window_blocks: 1 + below(3),
            },
        };
        let seed = if below(4) == 0 {
            u64::MAX - below(3)
        } else {
            below(1000)
        };
        let epoch = below(5);
        let drop_last = below(2) == 1;
        let spec = OrderSpec {
            shuffle,
            seed,
            rank,
            world_size: ws,
            drop_last,
            split: Split::Shards(shards.as_slice().into()),
            ..OrderSpec::new(shards.iter().sum(), bs)
        };
        cases.push((spec, epoch));
    }
    let input: String = cases
        .iter()
        .map(|(spec, epoch)| case_line(spec, *epoch) + "\n")
        .collect();
    let script = format!(
        r#"
import sys, json, importlib.util
spec = importlib.util.spec_from_file_location("ref", {reference:?})
ref = importlib.util.module_from_spec(spec); spec.loader.exec_module(ref)
for line in sys.stdin:
    sh, bs, shuf, seed, epoch, rank, ws, drop = line.strip().split(";")
    shards = [int(x) for x in sh.split(",")] if sh else []
    s = shuf if shuf in ("none", "full") else tuple(int(x) for x in shuf.split("/"))
    try:
        print(json.dumps(ref.shard_batches(shards, int(bs), s, int(seed), int(epoch), int(rank), int(ws), drop == "1")))
    except ValueError:
        print("ERR")
"#
    );
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), cases.len());
    let mut mismatches = Vec::new();
    for ((spec, epoch), want) in cases.iter().zip(lines) {
        let got = match spec.epoch(*epoch) {
            Ok(order) => format!(
                "{:?}",
                order.iter().map(<[u64]>::to_vec).collect::<Vec<_>>()
            ),
            Err(OrderError::TooFewShards { .. }) => "ERR".to_string(),
            Err(e) => format!("rust error {e}"),
        };
        if got != want {
            mismatches.push(format!(
                "{}: python {want}, rust {got}",
                case_line(spec, *epoch)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
}

/// Shard counts whose sum overflows a u64 saturate to `u64::MAX` in validation: with `rows =
/// u64::MAX` they pass as if they added up, and building the epoch then overflows (a panic in a
/// debug build, a wrapped row index in release).
#[test]
fn shard_counts_overflowing_to_rows_max_are_refused() {
    let spec = OrderSpec {
        rank: 1,
        world_size: 2,
        drop_last: true,
        split: Split::Shards([u64::MAX, 1].as_slice().into()),
        ..OrderSpec::new(u64::MAX, 1)
    };
    assert!(
        matches!(spec.validate(), Err(OrderError::ShardRows { .. })),
        "{:?}",
        spec.validate()
    );
}

/// The same spec's epoch: an error, never a panic (debug) or a row past the end (release).
#[test]
fn shard_counts_overflowing_to_rows_max_give_no_epoch() {
    let spec = OrderSpec {
        rank: 1,
        world_size: 2,
        drop_last: true,
        split: Split::Shards([u64::MAX, 1].as_slice().into()),
        ..OrderSpec::new(u64::MAX, 1)
    };
    match spec.epoch(0) {
        Err(_) => {}
        Ok(order) => assert!(
            order.rows().iter().all(|&r| r < u64::MAX),
            "{:?}",
            order.rows()
        ),
    }
}

mod partial {
    use std::path::{Path, PathBuf};

    use mmtensor::{Dataset, Error};
    use mmtensor_format::{Column, Dtype, Manifest, Preamble, Shard, MANIFEST_FILE};
    use mmtensor_testsupport::TestStore;
    use proptest::prelude::*;

    /// One U32 column `y` (row `r` holds `r`) in shards of `rows[i]` rows, empty ones included.
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
        let columns = vec![Column::new("y", Dtype::U32, vec![]).unwrap()];
        mmtensor_convert::write_manifest(dir, &Manifest::new(columns, shards).unwrap()).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

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
            let bytes = std::fs::read(d.path().join(MANIFEST_FILE)).unwrap();
            let _ = bytes;
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
