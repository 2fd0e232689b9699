//! Crashes and faults: `mmt convert` killed with SIGKILL mid-write, single flipped bits anywhere in a
//! store, and a full disk. The output name must only ever hold nothing, the previous complete store
//! or the new complete store; corruption must be found and located.
//!
//! Kill points are chosen by watching the hidden `.NAME.XXXXXX.partial` temporary file grow, never by
//! sleeping for a time, and nothing here asserts on how long anything takes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use mmtensor_format::{npy, Dtype};
use mmtensor_testsupport::small_disk;

fn mmt(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("mmt runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A folder on the same disk as the build (not a RAM-backed /tmp), for the gigabyte files.
fn big_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Writes a `.npy` of `dtype` and `shape` whose data is a hole: zeros that cost no disk and no time
/// to write.
fn sparse_npy(path: &Path, dtype: Dtype, shape: &[u64]) {
    let header = npy::encode_header(dtype, shape);
    let len = shape.iter().product::<u64>() * dtype.size() as u64;
    std::fs::write(path, &header).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(header.len() as u64 + len).unwrap();
}

/// The hidden temporary files the writer makes for `out` in `dir`.
fn partials(dir: &Path, out: &str) -> Vec<PathBuf> {
    let prefix = format!(".{out}.");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(&prefix) && n.ends_with(".partial")
        })
        .collect()
}

/// Starts `mmt convert big.npy -o out.mmt`, kills it with SIGKILL once its temporary file holds at
/// least `at` bytes, and says whether the kill came before the process finished on its own.
fn convert_and_kill_at(dir: &Path, at: u64) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(["convert", "big.npy", "-o", "out.mmt", "--quiet"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "convert failed on its own: {status:?}");
            return false;
        }
        let grown = partials(dir, "out.mmt")
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .any(|m| m.len() >= at);
        if grown {
            // Child::kill sends SIGKILL: no handler, no cleanup, no flush.
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Regression guard for the writer's promise: SIGKILL at any point of a large conversion leaves the
/// output name holding the previous complete store (or the new complete one, when the kill lands
/// after the rename), never a partial file; only the hidden temporary file is left, and a rerun
/// succeeds.
#[test]
fn sigkill_at_many_points_never_leaves_a_partial_store() {
    let dir = big_tempdir();
    let d = dir.path();
    // 1 GiB of F32 zeros, sparse: cheap to make, a real 1 GiB to convert.
    sparse_npy(&d.join("big.npy"), Dtype::F32, &[1 << 28]);
    let mut small = npy::encode_header(Dtype::I32, &[3]);
    for v in [7i32, 8, 9] {
        small.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(d.join("small.npy"), &small).unwrap();

    // With no previous store, a kill as soon as the temporary file appears leaves no output.
    assert!(convert_and_kill_at(d, 0), "killed before finishing");
    assert!(
        !d.join("out.mmt").exists(),
        "a killed first conversion left an output"
    );
    assert_eq!(
        partials(d, "out.mmt").len(),
        1,
        "the killed run's temporary file is left, hidden"
    );
    for p in partials(d, "out.mmt") {
        std::fs::remove_file(p).unwrap();
    }

    // The previous, complete store.
    let o = mmt(&["convert", "small.npy", "-o", "out.mmt", "--quiet"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let previous = std::fs::read(d.join("out.mmt")).unwrap();

    let final_len = (1u64 << 30) + 8192; // data, plus the header page and the table, at least
    for at in [
        1,
        1 << 20,
        64 << 20,
        256 << 20,
        512 << 20,
        1000 << 20,
        final_len,
    ] {
        let killed = convert_and_kill_at(d, at);
        let now = std::fs::read(d.join("out.mmt")).ok();
        match now {
            Some(bytes) if bytes == previous => {}
            Some(bytes) => {
                // Only a kill after the rename may leave the new store, and then it is complete.
                assert!(
                    bytes.len() as u64 > 1 << 30,
                    "a partial store of {} bytes under the output name",
                    bytes.len()
                );
                let o = mmt(&["verify", "out.mmt", "--quiet"], d);
                assert!(o.status.success(), "killed at {at}: {}", stderr(&o));
                // Put the previous store back for the next kill point.
                std::fs::write(d.join("out.mmt"), &previous).unwrap();
            }
            None => panic!("killed at {at} (killed: {killed}): the previous store vanished"),
        }
        let left = partials(d, "out.mmt");
        assert!(left.len() <= 1, "{left:?}");
        for p in left {
            std::fs::remove_file(p).unwrap();
        }
        let o = mmt(&["verify", "out.mmt", "--quiet"], d);
        assert!(
            o.status.success(),
            "the previous store no longer verifies: {}",
            stderr(&o)
        );
    }

    // A rerun to completion succeeds and replaces the previous store.
    let o = mmt(&["convert", "big.npy", "-o", "out.mmt", "--quiet"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mmt(&["info", "out.mmt", "--json"], d);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tensors"][0]["name"], "big");
    let o = mmt(&["verify", "out.mmt"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(partials(d, "out.mmt").is_empty());
}

/// A killed conversion leaves its hidden temporary file; the next conversion to the same name
/// mentions it (it never deletes it: another `mmt convert` may still be writing it).
#[test]
fn a_rerun_mentions_stale_partial_files_of_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut small = npy::encode_header(Dtype::U8, &[4]);
    small.extend_from_slice(&[1, 2, 3, 4]);
    std::fs::write(d.join("x.npy"), &small).unwrap();
    std::fs::write(d.join(".out.mmt.AbC123.partial"), vec![0u8; 5000]).unwrap();
    std::fs::write(d.join(".other.mmt.XyZ789.partial"), b"not ours").unwrap();
    let o = mmt(&["convert", "x.npy", "-o", "out.mmt"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(".out.mmt.AbC123.partial"), "{err}");
    assert!(!err.contains(".other.mmt"), "{err}");
    assert!(
        d.join(".out.mmt.AbC123.partial").exists(),
        "a stale file is never deleted"
    );
    // --quiet prints nothing but errors.
    let o = mmt(&["convert", "x.npy", "-o", "out.mmt", "--quiet"], d);
    assert!(
        o.status.success() && stderr(&o).is_empty(),
        "{}",
        stderr(&o)
    );
}

/// A store with `t` (U8 [10000]: blocks of 4096, 4096 and a short 1808) and `u` (F32 [3]).
fn small_store(d: &Path) -> Vec<u8> {
    let mut t = npy::encode_header(Dtype::U8, &[10_000]);
    t.extend((0..10_000u32).map(|i| (i % 253) as u8));
    std::fs::write(d.join("t.npy"), &t).unwrap();
    let mut u = npy::encode_header(Dtype::F32, &[3]);
    for v in [1.5f32, -2.0, 3.25] {
        u.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(d.join("u.npy"), &u).unwrap();
    let o = mmt(
        &[
            "convert",
            "t.npy",
            "u.npy",
            "-o",
            "s.mmt",
            "--block-size",
            "4096",
            "--alignment",
            "64",
            "--quiet",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::read(d.join("s.mmt")).unwrap()
}

#[test]
fn a_flipped_data_bit_is_found_naming_the_tensor_and_block() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = small_store(d);
    let layout = mmtensor_format::FileLayout::parse(&good, good.len() as u64).unwrap();
    let t = layout.tensor_range(layout.tensor("t").unwrap());
    let u = layout.tensor_range(layout.tensor("u").unwrap());
    let cases = [
        (t.start, "t", 0, 0),        // first byte of the tensor
        (t.start + 4095, "t", 0, 7), // last byte of block 0
        (t.start + 4096, "t", 1, 3), // first byte of block 1
        (t.start + 6000, "t", 1, 5),
        (t.start + 8192, "t", 2, 1), // first byte of the short last block
        (t.end - 1, "t", 2, 6),      // last byte of the tensor
        (u.start, "u", 0, 2),
        (u.end - 1, "u", 0, 7), // the sign bit of the last float
    ];
    for (at, tensor, block, bit) in cases {
        let mut bad = good.clone();
        bad[at as usize] ^= 1 << bit;
        std::fs::write(d.join("bad.mmt"), &bad).unwrap();
        let o = mmt(&["verify", "bad.mmt"], d);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(3), "byte {at}: {err}");
        assert!(
            err.contains(&format!("tensor `{tensor}`, block {block} ")),
            "byte {at}: {err}"
        );
        assert!(err.contains("bad.mmt"), "{err}");
        // The tensor's other blocks still verify on their own.
        let o = mmt(
            &[
                "verify",
                "bad.mmt",
                "--tensor",
                if tensor == "t" { "u" } else { "t" },
            ],
            d,
        );
        assert!(o.status.success(), "byte {at}: {}", stderr(&o));
    }
}

#[test]
fn a_flipped_header_bit_anywhere_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = small_store(d);
    let header_end = 32 + u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
    let path = d.join("bad.mmt");
    for at in 0..header_end {
        let mut bad = good.clone();
        bad[at] ^= 1 << (at % 8);
        std::fs::write(&path, &bad).unwrap();
        let e =
            mmtensor::Store::read(&path).expect_err(&format!("byte {at} flipped, yet it opened"));
        let msg = e.to_string();
        assert!(msg.contains("bad.mmt"), "{msg}");
        // SAFETY: the test owns the file and does not modify it while mapped.
        let mapped = unsafe { mmtensor::Store::open(&path) };
        assert!(mapped.is_err(), "byte {at}");
    }
    // And through the binary, at the preamble, the header's start and its last byte.
    for at in [3, 20, 33, header_end - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x04;
        std::fs::write(&path, &bad).unwrap();
        for cmd in ["info", "verify"] {
            let o = mmt(&[cmd, "bad.mmt"], d);
            assert_eq!(o.status.code(), Some(1), "{cmd} byte {at}: {}", stderr(&o));
            assert!(stderr(&o).contains("bad.mmt"), "{}", stderr(&o));
        }
    }
}

#[test]
fn a_full_disk_gives_a_clear_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = small_disk(dir.path()) else {
        return;
    };
    let mnt = mount.path().to_path_buf();
    // 16 MiB of zeros to convert into 8 MiB.
    sparse_npy(&dir.path().join("x.npy"), Dtype::F32, &[4 << 20]);
    let out = mnt.join("out.mmt");
    let o = mmt(
        &["convert", "x.npy", "-o", out.to_str().unwrap(), "--quiet"],
        dir.path(),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("out.mmt"), "the error names the file: {err}");
    let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().collect();
    assert!(left.is_empty(), "left behind on the full disk: {left:?}");
}

/// Regression: `mmt convert` reserved (fallocate) the whole planned store before reading any data,
/// so an 80-byte `.npz` whose member claims 4 GB took 4 GB of disk (of RAM on tmpfs), and on a small
/// disk failed with "cannot reserve disk space" instead of naming the lie. Sizes from `.npz` members
/// are now never reserved; the member's real size is found while streaming.
#[test]
fn regression_npz_size_claims_are_not_reserved_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = small_disk(dir.path()) else {
        return;
    };
    let mnt = mount.path().to_path_buf();
    let input =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/attacks/npz-huge-claim.npz");
    let out = mnt.join("out.mmt");
    let o = mmt(
        &[
            "convert",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--quiet",
        ],
        dir.path(),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("holds only 16"), "{err}");
    assert!(!err.contains("reserve"), "{err}");
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
}

/// A `StoreWriter` used directly (not through `mmt convert`) on the same small disk: after a write
/// fails, every later call is refused, and nothing is left behind.
#[test]
fn regression_a_writer_goes_on_after_a_failed_write() {
    use mmtensor_convert::{Error, StoreWriter};
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = small_disk(dir.path()) else {
        return;
    };
    let target = mount.path().join("s.mmt");
    let mut plan = mmtensor_format::LayoutBuilder::new();
    plan.tensor("a", Dtype::U8, &[16 << 20]).unwrap();
    // Unreserved, so the full disk shows in a write, not in `create`'s fallocate.
    let mut w = StoreWriter::create_unreserved(&target, plan.build().unwrap()).unwrap();
    w.begin_tensor("a").unwrap();
    let chunk = vec![7u8; 256 << 10];
    let failed = (0..64).find_map(|_| w.write_chunk(&chunk).err());
    let err = failed.expect("16 MiB cannot fit on an 8 MiB disk");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // Before the fix these calls went on, and `finish` committed a valid header over short data.
    for err in [
        w.write_chunk(&[0; 2]).unwrap_err(),
        w.end_tensor().unwrap_err(),
        w.begin_tensor("a").unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::Poisoned { path } if *path == target),
            "{err}"
        );
        assert!(err.to_string().contains("s.mmt"), "{err}");
    }
    let err = w.finish().unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    let left: Vec<_> = std::fs::read_dir(mount.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A `DatasetWriter` fed batches until the disk is full: the error names the shard file, the writer
/// refuses to go on, and dropping it leaves the folder as it was (no shard, no manifest).
#[test]
fn a_dataset_writer_on_a_full_disk_names_the_shard_and_leaves_nothing() {
    use mmtensor_convert::{ConvertOptions, DatasetWriter, Error};
    use mmtensor_format::ColumnSpec;
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = small_disk(dir.path()) else {
        return;
    };
    let out = mount.path().join("ds");
    let columns = vec![ColumnSpec::new("x", Dtype::U8, vec![1 << 16]).unwrap()];
    let mut w = DatasetWriter::create(&out, columns, 2 << 20, &ConvertOptions::default()).unwrap();
    let batch = vec![3u8; 8 << 16];
    let err = (0..64)
        .find_map(|_| w.write_rows(8, &[&batch]).err())
        .expect("32 MiB cannot fit on an 8 MiB disk");
    let text = err.to_string();
    assert!(matches!(err, Error::Io { .. }), "{text}");
    assert!(
        text.contains("No space left on device") && text.contains("shard-"),
        "{text}"
    );
    let again = w.write_rows(8, &[&batch]).unwrap_err();
    assert!(matches!(again, Error::Poisoned { .. }), "{again}");
    drop(w);
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "left behind on the full disk: {left:?}");
}
