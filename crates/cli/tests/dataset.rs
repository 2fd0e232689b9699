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

    let o = mmt(&["append", "train", "x=x2.npy", "y=y2.npy"], p);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 new shard (10 rows") && stderr(&o).contains("4 shards, 110 rows"),
        "{}",
        stderr(&o)
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
}
