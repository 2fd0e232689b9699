//! `mmt convert` of token streams and `mmt export --to megatron`, as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

fn mmt(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

fn fail(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && !err.contains("panicked"),
        "{err}"
    );
    err
}

#[test]
fn a_megatron_dataset_converts_and_exports_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/megatron/megatron-u16");
    let idx = fixture.with_extension("idx");
    let err = ok(&mmt(
        &["convert", idx.to_str().unwrap(), "-o", "ds"],
        dir.path(),
    ));
    assert!(err.contains("3 rows"), "{err}");
    let info = mmt(&["info", "ds"], dir.path());
    let out = String::from_utf8_lossy(&info.stdout);
    assert!(
        out.contains("[3, *]") && out.contains("ragged items"),
        "{out}"
    );
    ok(&mmt(&["verify", "ds"], dir.path()));
    let err = ok(&mmt(
        &["export", "ds", "--to", "megatron", "back"],
        dir.path(),
    ));
    assert!(err.contains("3 sequences, 8 tokens"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("back.idx")).unwrap(),
        std::fs::read(&idx).unwrap()
    );
    assert_eq!(
        std::fs::read(dir.path().join("back.bin")).unwrap(),
        std::fs::read(fixture.with_extension("bin")).unwrap()
    );
    let err = fail(&mmt(
        &["export", "ds", "--to", "megatron", "x", "--column", "nope"],
        dir.path(),
    ));
    assert!(err.contains("no column `nope`"), "{err}");
}

#[test]
fn a_raw_token_file_is_split_at_end_of_text() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: [u16; 10] = [1, 2, 50256, 3, 4, 5, 50256, 7, 8, 9];
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(dir.path().join("train.bin"), bytes).unwrap();
    let err = ok(&mmt(
        &[
            "convert",
            "train.bin",
            "--raw-dtype",
            "u16",
            "--eot",
            "50256",
            "-o",
            "ds",
        ],
        dir.path(),
    ));
    assert!(err.contains("3 rows"), "{err}");
    let info = mmt(&["info", "ds", "--json"], dir.path());
    let out = String::from_utf8_lossy(&info.stdout);
    assert!(out.contains("\"ragged\": true"), "{out}");
    // Refusals: a raw file without its dtype, an id too large, both --eot and --row-tokens, a
    // dtype that does not divide the file.
    let e = fail(&mmt(
        &["convert", "train.bin", "--eot", "5", "-o", "x"],
        dir.path(),
    ));
    assert!(e.contains("--raw-dtype"), "{e}");
    let e = fail(&mmt(
        &[
            "convert",
            "train.bin",
            "--raw-dtype",
            "u16",
            "--eot",
            "70000",
            "-o",
            "x",
        ],
        dir.path(),
    ));
    assert!(e.contains("70000 does not fit"), "{e}");
    let e = fail(&mmt(
        &[
            "convert",
            "train.bin",
            "--raw-dtype",
            "u16",
            "--eot",
            "1",
            "--row-tokens",
            "4",
            "-o",
            "x",
        ],
        dir.path(),
    ));
    assert!(e.contains("--row-tokens"), "{e}");
    let e = fail(&mmt(
        &["convert", "train.bin", "--raw-dtype", "u64", "-o", "x"],
        dir.path(),
    ));
    assert!(e.contains("not a whole number of U64 tokens"), "{e}");
    assert!(!dir.path().join("x").exists());
}

#[test]
fn token_files_append_and_a_ragged_dataset_is_never_flattened_by_convert() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, tokens: &[u16]| {
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        std::fs::write(dir.path().join(name), bytes).unwrap();
    };
    write("a.bin", &[1, 2, 9, 3, 9]);
    write("b.bin", &[4, 9, 5, 6, 7, 9]);
    ok(&mmt(
        &[
            "convert",
            "a.bin",
            "--raw-dtype",
            "u16",
            "--eot",
            "9",
            "-o",
            "ds",
        ],
        dir.path(),
    ));
    let err = ok(&mmt(
        &["append", "ds", "b.bin", "--raw-dtype", "u16", "--eot", "9"],
        dir.path(),
    ));
    assert!(err.contains("the dataset has 2 shards, 4 rows"), "{err}");
    // Another token dtype is refused before anything is written.
    write("c.bin", &[1, 0, 2, 0]);
    let e = fail(&mmt(
        &["append", "ds", "c.bin", "--raw-dtype", "u32", "--eot", "2"],
        dir.path(),
    ));
    assert!(e.contains("column `tokens` is U16"), "{e}");
    // Converting the dataset (re-sharding, merging, copying) would lose its rows: refused.
    for args in [
        &["convert", "ds", "-o", "re", "--shard-size", "1MiB"][..],
        &["convert", "ds", "-o", "one.mmt"],
        &["convert", "ds/shard-00000.mmt", "-o", "copy.mmt"],
        &["append", "ds", "ds/shard-00000.mmt"],
    ] {
        let e = fail(&mmt(args, dir.path()));
        assert!(
            e.contains("`tokens` is ragged") && e.contains("rows would be lost"),
            "{args:?}: {e}"
        );
    }
    // A token stream is a folder, not an .mmt file; export makes the prefix's folder.
    let e = fail(&mmt(
        &["convert", "a.bin", "--raw-dtype", "u16", "-o", "t.mmt"],
        dir.path(),
    ));
    assert!(e.contains("name a folder"), "{e}");
    ok(&mmt(
        &["export", "ds", "--to", "megatron", "out/deep/text"],
        dir.path(),
    ));
    assert!(dir.path().join("out/deep/text.idx").is_file());
    let e = fail(&mmt(
        &["export", "ds", "--to", "megatron", "x", "--column", "text"],
        dir.path(),
    ));
    assert!(e.contains("no column `text` (its columns: tokens)"), "{e}");
}

#[test]
fn a_closed_pipe_ends_mmt_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/dataset");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(["info", fixture.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader went away, as `| head -0` does
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}
