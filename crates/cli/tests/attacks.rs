//! The hostile corpus (`fixtures/attacks/`, made by `crates/convert/tests/attack_corpus.rs`) through
//! every reader: the loader (`Store::open`, `Store::read`, `verify`) and the real `mmt` binary
//! (`info`, `verify`, `convert`).
//!
//! Each file must give the error its `manifest.json` entry names, with the documented exit code; a
//! panic, a signal (SIGBUS, SIGSEGV, abort) or exit code 101 fails the test, and a failed
//! conversion must leave nothing behind (no output, no `.partial` temporary file). The binary runs
//! with its address space capped, so a reader that allocates what a file claims (gigabytes) instead
//! of what it holds fails too.

use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Address-space cap for every `mmt` run: far above what these small files need, far below the
/// gigabytes some of them claim.
const ADDRESS_SPACE_CAP: u64 = 4 << 30;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/attacks")
}

struct Entry {
    file: String,
    open: Option<String>,
    verify: Option<String>,
    /// `None`: the file converts (an intact `.mmt` store).
    convert: Option<String>,
    cli: Option<String>,
}

fn manifest() -> Vec<Entry> {
    let text = std::fs::read_to_string(corpus_dir().join("manifest.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let s = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| Entry {
            file: s(&e["file"]).unwrap(),
            open: s(&e["open"]),
            verify: s(&e["verify"]),
            convert: s(&e["convert"]),
            cli: s(&e["cli"]),
        })
        .collect()
}

fn mmt(args: &[&str], cwd: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mmt"));
    cmd.args(args).current_dir(cwd);
    // SAFETY: setrlimit is async-signal-safe and touches no state shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: ADDRESS_SPACE_CAP,
                rlim_max: ADDRESS_SPACE_CAP,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("mmt runs")
}

/// Checks that `mmt` ended by itself with `code` and printed `want` (and the file name) on stderr;
/// describes what is wrong otherwise.
fn check_exit(o: &Output, code: i32, want: &str, file: &str, what: &str) -> Result<(), String> {
    let err = String::from_utf8_lossy(&o.stderr);
    if let Some(sig) = o.status.signal() {
        return Err(format!("{what} {file}: killed by signal {sig}\n{err}"));
    }
    if o.status.code() == Some(101) || err.contains("panicked") {
        return Err(format!("{what} {file}: panicked\n{err}"));
    }
    if o.status.code() != Some(code) {
        return Err(format!(
            "{what} {file}: exit {:?}, expected {code}: {err}",
            o.status.code()
        ));
    }
    if code != 0 && !err.contains(want) {
        return Err(format!("{what} {file}: stderr lacks {want:?}: {err}"));
    }
    if code != 0 && !err.contains(file) {
        return Err(format!(
            "{what} {file}: the error does not name the file: {err}"
        ));
    }
    Ok(())
}

/// Fails with every problem found, not only the first.
fn report(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

fn left_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn corpus_is_large_enough_and_every_file_has_an_entry() {
    let entries = manifest();
    assert!(entries.len() >= 30, "{} attacks", entries.len());
    for e in &entries {
        assert!(
            corpus_dir().join(&e.file).is_file(),
            "{} is missing",
            e.file
        );
    }
}

#[test]
fn loader_gives_each_attack_its_error() {
    let mut problems = Vec::new();
    for e in manifest() {
        let path = corpus_dir().join(&e.file);
        // SAFETY: the corpus is committed and nothing modifies it while the test runs.
        let mapped = unsafe { mmtensor::Store::open(&path) };
        let copied = mmtensor::Store::read(&path);
        for (how, r) in [("open", mapped), ("read", copied)] {
            match (&e.open, r) {
                (Some(want), Err(err)) => {
                    let msg = err.to_string();
                    if !msg.contains(want) || !msg.contains(&e.file) {
                        problems.push(format!(
                            "{how} {}: {msg:?} lacks {want:?} or the file",
                            e.file
                        ));
                    }
                }
                (Some(want), Ok(_)) => {
                    problems.push(format!("{how} {}: opened, expected {want:?}", e.file))
                }
                (None, Err(err)) => problems.push(format!("{how} {}: {err}", e.file)),
                (None, Ok(store)) => {
                    // Every view of an intact header is in bounds, whatever the data holds.
                    for t in store.tensors() {
                        let _ = t.bytes().map(|b| b.len());
                    }
                    match (&e.verify, store.verify()) {
                        (Some(want), Err(err)) => {
                            let msg = err.to_string();
                            if !msg.contains(want) {
                                problems.push(format!("verify {}: {msg:?} lacks {want:?}", e.file));
                            }
                        }
                        (Some(want), Ok(())) => {
                            problems.push(format!("verify {}: passed, expected {want:?}", e.file))
                        }
                        (None, Err(err)) => problems.push(format!("verify {}: {err}", e.file)),
                        (None, Ok(())) => {}
                    }
                }
            }
        }
    }
    report(problems);
}

#[test]
fn mmt_info_and_verify_give_each_attack_its_error_and_exit_code() {
    let mut problems = Vec::new();
    for e in manifest() {
        let path = corpus_dir().join(&e.file);
        let p = path.to_str().unwrap();
        let info = mmt(&["info", p], &corpus_dir());
        let verify = mmt(&["verify", p], &corpus_dir());
        let checks = match (&e.cli, &e.verify) {
            (Some(want), _) => [
                (info, 1, want.as_str(), "info"),
                (verify, 1, want, "verify"),
            ],
            (None, Some(want)) => [(info, 0, "", "info"), (verify, 3, want, "verify")],
            (None, None) => [(info, 0, "", "info"), (verify, 0, "", "verify")],
        };
        for (o, code, want, what) in &checks {
            if let Err(p) = check_exit(o, *code, want, &e.file, what) {
                problems.push(p);
            }
        }
    }
    report(problems);
}

#[test]
fn mmt_convert_refuses_each_attack_and_leaves_nothing_or_converts_an_intact_store() {
    let mut problems = Vec::new();
    for e in manifest() {
        let dir = tempfile::tempdir().unwrap();
        let path = corpus_dir().join(&e.file);
        let o = mmt(
            &[
                "convert",
                path.to_str().unwrap(),
                "-o",
                "out.mmt",
                "--quiet",
            ],
            dir.path(),
        );
        let Some(want) = &e.convert else {
            // An intact store converts, to a store that verifies.
            if let Err(p) = check_exit(&o, 0, "", &e.file, "convert") {
                problems.push(p);
            } else if let Err(err) =
                mmtensor::Store::read(dir.path().join("out.mmt")).and_then(|s| s.verify())
            {
                problems.push(format!(
                    "convert {}: the output does not verify: {err}",
                    e.file
                ));
            }
            continue;
        };
        if let Err(p) = check_exit(&o, 1, want, &e.file, "convert") {
            problems.push(p);
        }
        let left = left_in(dir.path());
        if !left.is_empty() {
            problems.push(format!("convert {}: left {left:?}", e.file));
        }
    }
    report(problems);
}
