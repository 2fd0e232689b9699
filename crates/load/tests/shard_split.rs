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

/// Shard counts whose sum overflows a u64 used to saturate to `u64::MAX` in validation: with
/// `rows = u64::MAX` they passed as if they added up, and building the epoch then overflowed (a
/// panic in a debug build, a wrapped row index in release). They are `ShardRows`, and the epoch
/// is that error.
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
    assert!(
        matches!(spec.epoch(0), Err(OrderError::ShardRows { .. })),
        "{:?}",
        spec.epoch(0).map(|o| o.len())
    );
}
