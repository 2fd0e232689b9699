//! `mmt convert --shard-size`, `mmt append`, `mmt info DIR` and `mmt verify DIR` on real files.

use std::path::Path;
use std::process::{Command, Output};

use mmtensor_format::{npy, Dtype};

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

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `x{tag}.npy` (F32 [n, 4]) and `y{tag}.npy` (I64 [n]) in `dir`: rows of 24 bytes.
fn write_inputs(dir: &Path, n: u64, tag: &str) {
    let mut x = npy::encode_header(Dtype::F32, &[n, 4]);
    x.extend((0..n * 4).flat_map(|i| (i as f32).to_le_bytes()));
    std::fs::write(dir.join(format!("x{tag}.npy")), x).unwrap();
    let mut y = npy::encode_header(Dtype::I64, &[n]);
    y.extend((0..n).flat_map(|r| (r as i64).to_le_bytes()));
    std::fs::write(dir.join(format!("y{tag}.npy")), y).unwrap();
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn convert_with_shard_size_then_info_verify_and_append() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_inputs(p, 100, "");
    let o = mmt(
        &[
            "convert",
            "x.npy",
            "y.npy",
            "-o",
            "train/",
            "--shard-size",
            "1KiB",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // 1024 / 24 = 42 rows a shard: 42 + 42 + 16.
    assert!(
        stderr(&o).contains("3 new shards (100 rows"),
        "{}",
        stderr(&o)
    );
    let mut names: Vec<String> = listing(&p.join("train")).into_iter().map(|e| e.0).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "manifest.mmtm",
            "shard-00000.mmt",
            "shard-00001.mmt",
            "shard-00002.mmt"
        ]
    );
    // Every shard is an ordinary store.
    let o = mmt(&["verify", "train/shard-00002.mmt"], p);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = mmt(&["info", "train"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("2 columns, 100 rows in 3 shards"), "{out}");
    assert!(out.contains("shard-00001.mmt"), "{out}");
    let o = mmt(&["info", "train", "--json"], p);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["rows"], 100);
    assert_eq!(json["columns"][0]["shape"], serde_json::json!([100, 4]));
    assert_eq!(json["shards"][2]["rows"], 16);
    assert_eq!(json["shards"][2]["first_row"], 84);

    let o = mmt(&["verify", "train"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("ok (3 shards, 100 rows"),
        "{}",
        stdout(&o)
    );

    // Append: a schema mismatch is refused before anything is written.
    write_inputs(p, 10, "2");
    let before = listing(&p.join("train"));
    let o = mmt(&["append", "train", "x=x2.npy"], p);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("column `y` is missing"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("nothing was written"), "{}", stderr(&o));
    assert_eq!(listing(&p.join("train")), before);

    // The last shard (16 rows) is filled: one new shard of 26 rows replaces it.
    let o = mmt(&["append", "train", "x=x2.npy", "y=y2.npy"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("1 new shard (10 rows, after the 16 rows of shard-00002.mmt, which it replaces")
            && e.contains("3 shards, 110 rows")
            && e.contains("`mmt prune train`"),
        "{e}"
    );
    let o = mmt(&["verify", "train", "--quiet"], p);
    assert!(o.status.success(), "{}", stderr(&o));

    // A second convert to the same folder is refused.
    let o = mmt(
        &[
            "convert",
            "x.npy",
            "y.npy",
            "-o",
            "train",
            "--shard-size",
            "1KiB",
        ],
        p,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("already holds a dataset"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_shard_size_below_one_row_names_the_flag() {
    let d = tempfile::tempdir().unwrap();
    write_inputs(d.path(), 5, "");
    let o = mmt(
        &[
            "convert",
            "x.npy",
            "y.npy",
            "-o",
            "train",
            "--shard-size",
            "23",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains(
            "--shard-size 23 bytes is smaller than one row of all columns together (24 bytes)"
        ),
        "{e}"
    );
    assert!(!d.path().join("train").exists());
}

#[test]
fn verify_of_a_dataset_names_the_corrupted_or_replaced_shard() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_inputs(p, 100, "");
    let o = mmt(
        &[
            "convert",
            "x.npy",
            "y.npy",
            "-o",
            "train",
            "--shard-size",
            "1KiB",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let shard = p.join("train/shard-00001.mmt");
    let saved = std::fs::read(&shard).unwrap();
    let mut bad = saved.clone();
    bad[4096 + 10] ^= 0x40;
    std::fs::write(&shard, &bad).unwrap();
    let o = mmt(&["verify", "train"], p);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("shard-00001.mmt"), "{}", stderr(&o));

    // Another shard in its place: refused at open, naming it.
    std::fs::copy(p.join("train/shard-00000.mmt"), &shard).unwrap();
    let o = mmt(&["verify", "train"], p);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("shard-00001.mmt") && e.contains("does not match the dataset manifest"),
        "{e}"
    );

    // Restored, plus what an interrupted append leaves: an unlisted shard and a partial file.
    std::fs::write(&shard, &saved).unwrap();
    let o = mmt(&["verify", "train"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("note:"), "{}", stderr(&o));
    let listed = std::fs::read_dir(p.join("train")).unwrap().count();
    std::fs::write(p.join(format!("train/shard-{listed:05}.mmt")), b"orphan").unwrap();
    std::fs::write(p.join("train/.shard-00099.mmt.Ab12Cd.partial"), b"half").unwrap();
    let o = mmt(&["verify", "train"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "2 files in train are not part of the dataset: .shard-00099.mmt.Ab12Cd.partial, shard-{listed:05}.mmt"
        )),
        "{e}"
    );
    let o = mmt(&["verify", "train", "-q"], p);
    assert!(o.status.success() && o.stderr.is_empty(), "{}", stderr(&o));
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

/// Where `mmt append` is, judged from the folder alone: the largest hidden temporary file of a
/// shard, and how many complete shard files exist.
fn progress(dir: &Path) -> (u64, usize) {
    let mut partial = 0;
    let mut shards = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".shard-") && name.ends_with(".partial") {
            partial = partial.max(e.metadata().map(|m| m.len()).unwrap_or(0));
        } else if name.starts_with("shard-") && name.ends_with(".mmt") {
            shards += 1;
        }
    }
    (partial, shards)
}

/// When to kill a writer, judged from [`progress`].
type KillPoint = Box<dyn Fn((u64, usize)) -> bool>;

const APPEND: [&str; 7] = [
    "append",
    "train",
    "x=bigx.npy",
    "y=bigy.npy",
    "--shard-size",
    "64MiB",
    "--quiet",
];

/// Starts `mmt ARGS` (a write into `train`), kills it with SIGKILL once `ready` says so, and says
/// whether the kill came before the process finished on its own.
fn run_and_kill_when(
    dir: &Path,
    args: &[&str],
    mut ready: impl FnMut((u64, usize)) -> bool,
) -> bool {
    std::fs::create_dir_all(dir.join("train")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{args:?} failed on its own: {status:?}");
            return false;
        }
        if ready(progress(&dir.join("train"))) {
            // Child::kill sends SIGKILL: no handler, no cleanup, no flush.
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Runs the writer `args` in `p` and kills it at each of `points`, then checks what every writer
/// of a dataset promises after a kill: `mmt verify train` passes, `train/manifest.mmtm` is still
/// `previous` byte for byte, and `still_reads(point)` (a reader of the previous dataset) passes.
fn kill_at_each(
    p: &Path,
    args: &[&str],
    points: Vec<(&str, KillPoint)>,
    previous: &[u8],
    still_reads: &dyn Fn(&str),
) {
    for (what, ready) in points {
        assert!(
            run_and_kill_when(p, args, ready),
            "{what}: `mmt {}` finished first",
            args[0]
        );
        let o = mmt(&["verify", "train", "--quiet"], p);
        assert!(o.status.success(), "after a kill ({what}): {}", stderr(&o));
        assert_eq!(
            std::fs::read(p.join("train/manifest.mmtm")).unwrap(),
            previous,
            "{what}: the manifest changed"
        );
        still_reads(what);
    }
}

/// The promise for append: a SIGKILL at any point before the manifest's rename leaves the
/// previous dataset valid (its manifest unchanged, every listed shard intact, unlisted shard files
/// ignored), and a reader that opened the previous dataset keeps reading it; a rerun then
/// succeeds. The append fills the last shard (2 rows), so the kills land mid-fill: the first new
/// shard holds that shard's rows and replaces it. (The rename itself is `AtomicFile`'s, whose kill
/// points `crash.rs` covers.)
#[test]
fn sigkill_during_append_leaves_the_previous_dataset_valid() {
    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let p = d.path();
    // Columns x: F32 rows of 1024 (4 KiB), y: I64. The dataset: 10 real rows.
    let mut x = npy::encode_header(Dtype::F32, &[10, 1024]);
    x.extend((0..10 * 1024).flat_map(|i| (i as f32).to_le_bytes()));
    std::fs::write(p.join("x.npy"), x).unwrap();
    let mut y = npy::encode_header(Dtype::I64, &[10]);
    y.extend((0..10i64).flat_map(|r| r.to_le_bytes()));
    std::fs::write(p.join("y.npy"), y).unwrap();
    let o = mmt(
        &[
            "convert",
            "x=x.npy",
            "y=y.npy",
            "-o",
            "train",
            "--quiet",
            "--shard-size",
            "20KiB",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // The append: 256 MiB of x, in five shards of at most 64 MiB.
    let rows = 65_536;
    sparse_npy(&p.join("bigx.npy"), Dtype::F32, &[rows, 1024]);
    sparse_npy(&p.join("bigy.npy"), Dtype::I64, &[rows]);

    let manifest = p.join("train/manifest.mmtm");
    let previous = std::fs::read(&manifest).unwrap();
    // SAFETY: the test never modifies a shard; appends only add files and rename the manifest.
    let reader = unsafe { mmtensor::Dataset::open(p.join("train")) }.unwrap();
    let y_col = reader.column("y").unwrap();

    let shard = 16_352 * 4104; // the data of one new shard
    let points: Vec<(&str, KillPoint)> = vec![
        (
            "first temporary shard created",
            Box::new(|(partial, _)| partial > 0),
        ),
        (
            "first shard half written",
            Box::new(move |(partial, _)| partial >= shard / 2),
        ),
        (
            "one new shard complete",
            Box::new(|(_, shards)| shards >= 5),
        ),
        (
            "three new shards complete",
            Box::new(|(_, shards)| shards >= 7),
        ),
    ];
    // Every point comes before the last shard is written, so the kill lands before the manifest's
    // rename: polling every 200 µs cannot miss the tens of MiB still to write.
    kill_at_each(p, &APPEND, points, &previous, &|what| {
        // The reader of the previous dataset still reads it.
        let mut out = vec![0u8; 16];
        y_col.take_into(&[9, 0], &mut out).unwrap();
        assert_eq!(out[..8], 9i64.to_le_bytes());
        let o = mmt(&["info", "train", "--json"], p);
        let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(json["rows"], 10, "{what}");
    });
    // A rerun replaces whatever unlisted shards the kills left, and completes.
    let last = std::fs::read(p.join("train/shard-00002.mmt")).unwrap();
    let o = mmt(&APPEND, p);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mmt(&["verify", "train", "--quiet"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = mmtensor_format::Manifest::parse(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m.num_rows(), 10 + rows);
    // Two old shards (4 + 4 rows); the last (2 rows) filled: its rows and 65536 new ones in
    // shards of 16352 (64 MiB / 4104 B), under new names.
    assert_eq!(m.shards().len(), 2 + 5);
    assert_eq!(m.shards()[2].file(), "shard-00003.mmt");
    assert_eq!(m.shards()[6].num_rows(), 2 + 65_536 - 4 * 16_352);
    // The replaced shard is on disk, unchanged, and the old reader still reads its rows.
    assert_eq!(
        std::fs::read(p.join("train/shard-00002.mmt")).unwrap(),
        last
    );
    assert_eq!(reader.num_rows(), 10);
    let mut out = vec![0u8; 16];
    y_col.take_into(&[9, 8], &mut out).unwrap();
    assert_eq!(out, [9i64.to_le_bytes(), 8i64.to_le_bytes()].concat());
    // The new dataset: the carried rows 8 and 9, then the appended (zero) rows.
    // SAFETY: as above.
    let now = unsafe { mmtensor::Dataset::open(p.join("train")) }.unwrap();
    let mut out = vec![0u8; 24];
    now.column("y")
        .unwrap()
        .take_into(&[8, 9, 10], &mut out)
        .unwrap();
    let want: Vec<u8> = [8i64, 9, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(out, want);
}

/// A first `convert --shard-size` killed after some shards leaves no manifest, so no dataset (the
/// folder is refused by every reader), and a rerun completes over the unlisted shards.
#[test]
fn sigkill_during_a_sharded_convert_leaves_no_dataset() {
    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let p = d.path();
    sparse_npy(&p.join("bigx.npy"), Dtype::F32, &[65_536, 1024]);
    sparse_npy(&p.join("bigy.npy"), Dtype::I64, &[65_536]);
    let args = [
        "convert",
        "x=bigx.npy",
        "y=bigy.npy",
        "-o",
        "train",
        "--shard-size",
        "64MiB",
        "--quiet",
    ];
    assert!(run_and_kill_when(p, &args, |(_, shards)| shards >= 2));
    assert!(!p.join("train/manifest.mmtm").exists());
    let o = mmt(&["verify", "train"], p);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("manifest.mmtm"), "{}", stderr(&o));
    let o = mmt(&args, p);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mmt(&["verify", "train", "--quiet"], p);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Issue 23, compaction in place: a SIGKILL at any point before the manifest's rename leaves the
/// previous dataset valid (manifest unchanged, `verify` clean) and readable by a reader that opened
/// it; a rerun merges; `mmt prune` then deletes the replaced shards and the kills' leftovers, and
/// the reader still reads (a deleted file stays for whoever has it mapped).
#[test]
fn sigkill_during_compact_leaves_the_previous_dataset_valid() {
    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let p = d.path();
    let rows = 65_536u64;
    sparse_npy(&p.join("bigx.npy"), Dtype::F32, &[rows, 1024]);
    let mut y = npy::encode_header(Dtype::I64, &[rows]);
    y.extend((0..rows as i64).flat_map(|r| r.to_le_bytes()));
    std::fs::write(p.join("bigy.npy"), y).unwrap();
    // Shards of 16 MiB: 4088 rows of 4104 bytes, 17 shards.
    let o = mmt(
        &[
            "convert",
            "x=bigx.npy",
            "y=bigy.npy",
            "-o",
            "train",
            "--shard-size",
            "16MiB",
            "--quiet",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest = p.join("train/manifest.mmtm");
    let previous = std::fs::read(&manifest).unwrap();
    assert_eq!(progress(&p.join("train")).1, 17);
    // SAFETY: the test never modifies a shard; writers only add files and rename the manifest.
    let reader = unsafe { mmtensor::Dataset::open(p.join("train")) }.unwrap();
    let y_col = reader.column("y").unwrap();
    let check_reader = || {
        let mut out = vec![0u8; 24];
        y_col.take_into(&[65_535, 0, 4_088], &mut out).unwrap();
        let want: Vec<u8> = [65_535i64, 0, 4_088]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(out, want);
    };
    // Into shards of 128 MiB: 32704 rows, so 3 shards (32704, 32704, 128).
    let compact = ["compact", "train", "--shard-size", "128MiB", "--quiet"];
    let shard = 32_704 * 4104;
    let points: Vec<(&str, KillPoint)> = vec![
        (
            "first temporary shard created",
            Box::new(|(partial, _)| partial > 0),
        ),
        (
            "first shard half written",
            Box::new(move |(partial, _)| partial >= shard / 2),
        ),
        (
            "one new shard complete",
            Box::new(|(_, shards)| shards >= 18),
        ),
    ];
    kill_at_each(p, &compact, points, &previous, &|_| check_reader());
    let o = mmt(&compact, p);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = mmtensor_format::Manifest::parse(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(
        m.shards().iter().map(|s| s.num_rows()).collect::<Vec<_>>(),
        [32_704, 32_704, 128]
    );
    assert_eq!(m.shards()[0].file(), "shard-00017.mmt");
    let o = mmt(&["verify", "train"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    // The 17 replaced shards, and the temporary files of the killed compactions.
    let e = stderr(&o);
    assert!(
        e.contains("files in train are not part of the dataset")
            && e.contains("shard-00016.mmt")
            && e.contains("mmt prune train"),
        "{e}"
    );
    check_reader();
    // SAFETY: as above.
    let now = unsafe { mmtensor::Dataset::open(p.join("train")) }.unwrap();
    let mut out = vec![0u8; 16];
    now.column("y")
        .unwrap()
        .take_into(&[65_535, 32_704], &mut out)
        .unwrap();
    assert_eq!(
        out,
        [65_535i64.to_le_bytes(), 32_704i64.to_le_bytes()].concat()
    );

    let o = mmt(&["prune", "train"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("train: deleted "), "{}", stderr(&o));
    let mut names: Vec<String> = std::fs::read_dir(p.join("train"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "manifest.mmtm",
            "shard-00017.mmt",
            "shard-00018.mmt",
            "shard-00019.mmt"
        ]
    );
    let o = mmt(&["verify", "train"], p);
    assert!(
        o.status.success() && !stderr(&o).contains("note:"),
        "{}",
        stderr(&o)
    );
    check_reader();
}

/// `train/` in `p`: `x.npy` and `y.npy` of 3 rows (24 bytes a row) converted into shards of 240
/// bytes (10 rows), which the appends of the tests below fill.
fn small_dataset(p: &Path) {
    write_inputs(p, 3, "");
    let o = mmt(
        &[
            "convert",
            "x.npy",
            "y.npy",
            "-o",
            "train",
            "--shard-size",
            "240",
            "--quiet",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `mmt info train --json` in `p`, and the rows of each shard it lists.
fn info_shard_rows(p: &Path) -> (serde_json::Value, Vec<u64>) {
    let o = mmt(&["info", "train", "--json"], p);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = json["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rows"].as_u64().unwrap())
        .collect();
    (json, rows)
}

/// Issue 23: `mmt append` always added a shard, so 200 small appends made 200 tiny shards. Now
/// each fills the last shard up to the dataset's shard size (recorded when it was converted: 10
/// rows of 24 bytes): full shards and one partial, rows in order, `verify` clean; the shards the
/// appends replaced are noted by `verify` and deleted by `mmt prune`.
#[test]
fn regression_200_appends_through_the_cli_make_full_shards() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    small_dataset(p);
    for i in 0..200 {
        let o = mmt(&["append", "train", "x.npy", "y.npy", "--quiet"], p);
        assert!(o.status.success(), "append {i}: {}", stderr(&o));
    }
    let (json, rows) = info_shard_rows(p);
    assert_eq!(json["rows"], 603);
    assert_eq!(rows.len(), 61, "{rows:?}");
    assert!(
        rows[..60].iter().all(|&r| r == 10) && rows[60] == 3,
        "{rows:?}"
    );
    // Rows in order: y is 0, 1, 2 in every batch.
    // SAFETY: no process writes into a shard of this dataset.
    let ds = unsafe { mmtensor::Dataset::open(p.join("train")) }.unwrap();
    let mut out = vec![0u8; 603 * 8];
    let all: Vec<u64> = (0..603).collect();
    ds.column("y").unwrap().take_into(&all, &mut out).unwrap();
    let want: Vec<u8> = (0..603i64).flat_map(|r| (r % 3).to_le_bytes()).collect();
    assert_eq!(out, want);
    let o = mmt(&["verify", "train"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("mmt prune train"), "{}", stderr(&o));
    let o = mmt(&["prune", "train", "--quiet"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mmt(&["verify", "train"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("ok (61 shards, 603 rows"),
        "{}",
        stdout(&o)
    );
    assert!(!stderr(&o).contains("note:"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(p.join("train")).unwrap().count(), 62);
}

/// `--no-fill` keeps the old behaviour (a shard per append); `mmt compact` merges the small
/// shards afterwards and says what it did, and again that there is nothing left to do.
#[test]
fn no_fill_appends_then_compact_merge_the_small_shards() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    small_dataset(p);
    for _ in 0..5 {
        let o = mmt(
            &["append", "train", "x.npy", "y.npy", "--no-fill", "--quiet"],
            p,
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(info_shard_rows(p).1.len(), 6);
    let o = mmt(&["compact", "train"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("2 new shards (18 rows merged from 6 shards")
            && e.contains("the dataset has 2 shards, 18 rows")
            && e.contains("`mmt prune train`"),
        "{e}"
    );
    let o = mmt(&["compact", "train"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));
    let o = mmt(&["verify", "train", "--quiet"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mmt(&["prune", "train", "--dry-run"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 6, "{}", stdout(&o));
    assert!(
        stderr(&o).contains("would delete 6 files"),
        "{}",
        stderr(&o)
    );
}

/// Two writers to one dataset: the second is refused at once (the folder's lock), and writes
/// nothing, while the first is under way; once the first is gone, appends work again.
#[test]
fn a_second_writer_is_refused_while_the_first_runs() {
    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let p = d.path();
    let mut x = npy::encode_header(Dtype::F32, &[2, 1024]);
    x.extend(std::iter::repeat_n(0u8, 2 * 4096));
    std::fs::write(p.join("x.npy"), x).unwrap();
    let mut y = npy::encode_header(Dtype::I64, &[2]);
    y.extend(std::iter::repeat_n(0u8, 16));
    std::fs::write(p.join("y.npy"), y).unwrap();
    let o = mmt(
        &[
            "convert",
            "x=x.npy",
            "y=y.npy",
            "-o",
            "train",
            "--quiet",
            "--shard-size",
            "1MiB",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    sparse_npy(&p.join("bigx.npy"), Dtype::F32, &[65_536, 1024]);
    sparse_npy(&p.join("bigy.npy"), Dtype::I64, &[65_536]);
    let before = std::fs::read(p.join("train/manifest.mmtm")).unwrap();

    let mut refused = None;
    let killed = run_and_kill_when(p, &APPEND, |(partial, _)| {
        if partial == 0 {
            return false;
        }
        // The first append is writing its first shard: a second writer must be refused, and so
        // must a compaction or a prune (which could delete the shard not yet listed).
        refused = Some([
            mmt(&["append", "train", "x=x.npy", "y=y.npy"], p),
            mmt(&["compact", "train"], p),
            mmt(&["prune", "train"], p),
        ]);
        true
    });
    assert!(
        killed,
        "the first append finished before the second started"
    );
    for o in refused.unwrap() {
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("is writing this dataset now"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(
        std::fs::read(p.join("train/manifest.mmtm")).unwrap(),
        before
    );
    // The kill released the lock.
    let o = mmt(&["append", "train", "x=x.npy", "y=y.npy", "--quiet"], p);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Ctrl-C during `mmt append`: exit code 130, the manifest as it was, no temporary file left.
#[test]
fn ctrl_c_during_append_changes_nothing() {
    use std::io::BufRead;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_inputs(p, 10, "");
    let o = mmt(
        &[
            "convert",
            "x.npy",
            "y.npy",
            "-o",
            "train",
            "--quiet",
            "--shard-size",
            "1KiB",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let before = listing(&p.join("train"));
    // The hook holds the write after its first chunk until the cancel flag is set, so the signal
    // always lands mid-append.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args([
            "append",
            "train",
            "x.npy",
            "y.npy",
            "--quiet",
            "--shard-size",
            "100",
        ])
        .env("MMT_TEST_HOLD_FOR_CTRL_C", "1")
        .current_dir(p)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("holding the conversion"), "{line:?}");
    let status = mmtensor_testsupport::interrupt_and_wait(&mut child, "mmt append");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert_eq!(listing(&p.join("train")), before, "{rest}");
}

#[test]
fn a_folder_without_manifest_gets_a_hint() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("plain")).unwrap();
    for cmd in ["info", "verify"] {
        let o = mmt(&[cmd, "plain"], d.path());
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        assert!(
            e.contains("manifest.mmtm") && e.contains("hint: a folder is a dataset"),
            "{cmd}: {e}"
        );
    }
}

/// A dataset of more shards than the soft open-file limit opens: the limit is raised (up to the
/// hard limit) to hold a descriptor per shard.
#[test]
fn more_shards_than_the_soft_open_file_limit_open() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_inputs(p, 300, "");
    // 300 rows of 24 bytes in shards of 48 bytes: 150 shards.
    let o = mmt(
        &[
            "convert",
            "x.npy",
            "y.npy",
            "-o",
            "many",
            "--shard-size",
            "48",
        ],
        p,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let bin = env!("CARGO_BIN_EXE_mmt");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -Sn 64 && exec '{bin}' verify many"))
        .current_dir(p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("150 shards"), "{}", stdout(&o));
}

/// `mmt info DIR --ranks N` shows each rank's shards under whole shards per rank, and refuses
/// what cannot be split, naming the flag.
#[test]
fn info_ranks_shows_each_rank_s_shards() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/dataset");
    let d = tempfile::tempdir().unwrap();
    let g = golden.to_str().unwrap();
    let o = mmt(&["info", g, "--ranks", "2"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    // Shards of 3, 3, 3 and 1 rows: rank 0 owns shards 0 and 2, rank 1 shards 1 and 3.
    assert!(out.contains("2 ranks"), "{out}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("rank"))
        .skip(1)
        .take(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["0", "2", "6", "928", "B", "0", "2"]);
    assert_eq!(rows[1], ["1", "2", "4", "928", "B", "1", "3"]);
    assert!(out.contains("repeat up to 2"), "{out}");
    let o = mmt(&["info", g, "--ranks", "2", "--json"], d.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ranks"][1]["shards"], serde_json::json!([1, 3]));
    let o = mmt(&["info", g, "--ranks", "5"], d.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--ranks 5"), "{}", stderr(&o));
    let o = mmt(&["verify", &format!("file://{g}")], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mmt(&["verify", "s3://bucket/train/"], d.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("checks local files"), "{}", stderr(&o));
    let store = golden.join("shard-00000.mmt");
    let o = mmt(&["info", store.to_str().unwrap(), "--ranks", "2"], d.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--ranks"), "{}", stderr(&o));
}

/// Every hostile file of `fixtures/attacks/` through `mmt convert --shard-size`: refused with the
/// error plain `convert` gives (or, for an input that is no column, that reason), exit code 1,
/// and no file in the dataset folder (each attack fits one shard, which is never committed).
#[test]
fn sharded_convert_refuses_each_attack_and_leaves_nothing() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/attacks");
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(corpus.join("manifest.json")).unwrap())
            .unwrap();
    assert!(entries.len() >= 70);
    let mut problems = Vec::new();
    for e in entries {
        let file = e["file"].as_str().unwrap();
        // `None`: an intact store, which converts (its tensors may still not make one dataset).
        let want = e["convert"].as_str();
        let d = tempfile::tempdir().unwrap();
        let path = corpus.join(file);
        let o = mmt(
            &[
                "convert",
                path.to_str().unwrap(),
                "-o",
                "ds",
                "--shard-size",
                "1MiB",
                "--quiet",
            ],
            d.path(),
        );
        let err = stderr(&o);
        let refused = o.status.code() == Some(1);
        let expected = match want {
            Some(want) => {
                refused && (err.contains(want) || err.contains("cannot be a dataset column"))
            }
            None => o.status.code() == Some(0) || (refused && !err.contains("panicked")),
        };
        if !expected {
            problems.push(format!(
                "{file}: exit {:?}, wanted `{want:?}`: {err}",
                o.status.code()
            ));
        }
        let ds = d.path().join("ds");
        if refused && ds.exists() && !listing(&ds).is_empty() {
            let names: Vec<String> = listing(&ds).into_iter().map(|e| e.0).collect();
            problems.push(format!("{file}: left {names:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
