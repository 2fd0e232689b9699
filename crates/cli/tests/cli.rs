//! The real `mmt` binary on real files in temporary folders.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mmt(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("mmt runs")
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Every NumPy fixture converts, verifies, and reads back bit-exact through the loader.
#[test]
fn convert_every_numpy_fixture_then_verify_and_read_back() {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("numpy/manifest.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (file, tensors) in manifest.as_object().unwrap() {
        let input = fixtures().join("numpy").join(file);
        let out = dir.path().join("out.mmt");
        let mut args = vec![
            "convert",
            input.to_str().unwrap(),
            "-o",
            "out.mmt",
            "--quiet",
        ];
        if file.contains("bf16") {
            args.extend(["--input-dtype", "bf16"]);
        }
        if file.contains("f8e4m3") {
            args.extend(["--input-dtype", "f8_e4m3"]);
        }
        if file.contains("f8e5m2") {
            args.extend(["--input-dtype", "f8_e5m2"]);
        }
        let o = mmt(&args, dir.path());
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        assert!(
            stderr(&o).is_empty(),
            "--quiet prints nothing: {}",
            stderr(&o)
        );
        let o = mmt(&["verify", "out.mmt"], dir.path());
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        // SAFETY: the test owns the file and does not modify it while mapped.
        let store = unsafe { mmtensor::Store::open(&out) }.unwrap();
        for (name, want) in tensors.as_object().unwrap() {
            let t = store.tensor(name).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(
                t.dtype().name(),
                want["dtype"].as_str().unwrap(),
                "{file}: {name}"
            );
            let shape: Vec<u64> = want["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(t.shape(), &shape[..], "{file}: {name}");
            assert_eq!(
                t.bytes().unwrap(),
                &hex(want["hex"].as_str().unwrap())[..],
                "{file}: {name}"
            );
        }
    }
    assert_eq!(
        entries(dir.path()),
        ["out.mmt"],
        "no temporary files are left behind"
    );
}

#[test]
fn info_shows_table_and_json() {
    let f = fixtures().join("golden/page-a4096.mmt");
    let dir = tempfile::tempdir().unwrap();
    let o = mmt(&["info", f.to_str().unwrap()], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "5 tensors",
        "alignment 4096",
        "labels",
        "I64",
        "[256, 8]",
        "8.0 KiB",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let o = mmt(&["info", f.to_str().unwrap(), "--json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["alignment"], 4096);
    assert_eq!(v["tensors"][0]["name"], "x");
    assert_eq!(v["tensors"][0]["shape"], serde_json::json!([256, 8]));
    assert_eq!(v["tensors"][0]["offset"].as_u64().unwrap() % 4096, 0);
}

#[test]
fn verify_names_the_tensor_and_block_of_a_flipped_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.mmt");
    std::fs::copy(fixtures().join("golden/dtypes-a64.mmt"), &path).unwrap();
    let info = mmt(&["info", "s.mmt", "--json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let t = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "multiblock")
        .unwrap();
    // Flip one bit in the second 4096-byte block of `multiblock`.
    let at = t["offset"].as_u64().unwrap() as usize + 4096 + 17;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let o = mmt(&["verify", "s.mmt"], dir.path());
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("multiblock"), "{err}");
    assert!(err.contains("block 1"), "{err}");
    // Other tensors and unaffected row ranges still verify.
    let o = mmt(&["verify", "s.mmt", "--tensor", "float32"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mmt(
        &[
            "verify",
            "s.mmt",
            "--tensor",
            "multiblock",
            "--rows",
            "0..300",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mmt(
        &[
            "verify",
            "s.mmt",
            "--tensor",
            "multiblock",
            "--rows",
            "300..600",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}

#[test]
fn a_corrupted_header_is_refused_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.mmt");
    let mut bytes = std::fs::read(fixtures().join("golden/page-a4096.mmt")).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    for cmd in ["info", "verify"] {
        let o = mmt(&[cmd, "h.mmt"], dir.path());
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        let err = stderr(&o);
        assert!(
            err.starts_with("error: ") && err.contains("h.mmt") && err.contains("checksum"),
            "{cmd}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = mmt(
        &["info", "Cargo.toml"],
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not an .mmt file"), "{}", stderr(&o));
}

#[test]
fn bad_inputs_fail_cleanly_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = fixtures().join("numpy/hostile");
    for (file, word) in [
        ("object.npy", "object"),
        ("structured.npy", "structured"),
        ("unicode.npy", "string"),
        ("datetime.npy", "datetime"),
    ] {
        let input = hostile.join(file);
        let o = mmt(
            &["convert", input.to_str().unwrap(), "-o", "out.mmt"],
            dir.path(),
        );
        assert_eq!(o.status.code(), Some(1), "{file}");
        let err = stderr(&o);
        assert!(err.contains(file) && err.contains(word), "{file}: {err}");
    }
    let o = mmt(&["convert", "missing.npy", "-o", "out.mmt"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing.npy"), "{}", stderr(&o));
    let npy = fixtures().join("numpy/npy/float32.npy");
    let npy = npy.to_str().unwrap();
    let o = mmt(&["convert", npy, npy, "-o", "out.mmt"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("float32"), "{}", stderr(&o));
    let o = mmt(
        &["convert", npy, "-o", "out.mmt", "--alignment", "100"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("alignment"), "{}", stderr(&o));
    let o = mmt(
        &["convert", npy, "-o", "out.mmt", "--dtype", "float33"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("float33"), "{}", stderr(&o));
    let o = mmt(&["convert", "-o", "out.mmt"], dir.path());
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

#[test]
fn export_to_npy_and_safetensors_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("golden/dtypes-a64.mmt");
    let o = mmt(
        &["export", src.to_str().unwrap(), "--to", "npy", "npy"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(entries(&dir.path().join("npy")).contains(&"float32.npy".to_owned()));
    // The exported .npy files convert back to the same tensors (bf16/fp8 need their dtype named).
    let f32_npy = dir.path().join("npy/float32.npy");
    let o = mmt(
        &[
            "convert",
            f32_npy.to_str().unwrap(),
            "-o",
            "back.mmt",
            "--quiet",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // SAFETY: the test owns both files and does not modify them while mapped.
    let (a, b) = unsafe {
        (
            mmtensor::Store::open(&src).unwrap(),
            mmtensor::Store::open(dir.path().join("back.mmt")).unwrap(),
        )
    };
    assert_eq!(
        a.tensor("float32").unwrap().bytes().unwrap(),
        b.tensor("float32").unwrap().bytes().unwrap()
    );

    // C128 has no safetensors dtype: a clear error, and no file.
    let o = mmt(
        &[
            "export",
            src.to_str().unwrap(),
            "--to",
            "safetensors",
            "x.safetensors",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("complex128") && stderr(&o).contains("--to npy"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("x.safetensors").exists());
    let page = fixtures().join("golden/page-a4096.mmt");
    let o = mmt(
        &[
            "export",
            page.to_str().unwrap(),
            "--to",
            "safetensors",
            "p.safetensors",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mmt(
        &["convert", "p.safetensors", "-o", "p.mmt", "--quiet"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // SAFETY: as above.
    let (a, b) = unsafe {
        (
            mmtensor::Store::open(&page).unwrap(),
            mmtensor::Store::open(dir.path().join("p.mmt")).unwrap(),
        )
    };
    for t in a.tensors() {
        let u = b.tensor(t.name()).unwrap();
        assert_eq!((t.dtype(), t.shape()), (u.dtype(), u.shape()));
        assert_eq!(t.bytes().unwrap(), u.bytes().unwrap(), "{}", t.name());
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_leaves_nothing_under_the_output_name() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    // 64 MiB of zeros (sparse on disk): many chunks, so the first one leaves the conversion mid-way.
    let header = mmtensor_format::npy::encode_header(mmtensor_format::Dtype::F32, &[1 << 14, 1024]);
    let npy = dir.path().join("big.npy");
    let mut f = std::fs::File::create(&npy).unwrap();
    f.write_all(&header).unwrap();
    f.set_len(header.len() as u64 + (64 << 20)).unwrap();
    drop(f);
    std::fs::write(dir.path().join("out.mmt"), b"previous").unwrap();
    // The hook holds the conversion after its first chunk until the cancel flag is set, so the
    // signal always lands mid-conversion: no race with a fast machine finishing first.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(["convert", "big.npy", "-o", "out.mmt", "--quiet"])
        .env("MMT_TEST_HOLD_FOR_CTRL_C", "1")
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.contains("holding the conversion"),
        "the conversion never reached its first chunk: {line:?}"
    );
    let partials: Vec<String> = entries(dir.path())
        .into_iter()
        .filter(|e| e.ends_with(".partial"))
        .collect();
    assert_eq!(partials.len(), 1, "the writer's temporary file is there");
    let status = mmtensor_testsupport::interrupt_and_wait(&mut child, "mmt convert");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert_eq!(
        std::fs::read(dir.path().join("out.mmt")).unwrap(),
        b"previous"
    );
    assert_eq!(entries(dir.path()), ["big.npy", "out.mmt"]);
}

/// A `.npy` bool array `[0, 1, 2, 1]`: the byte 2 is not a bool NumPy or torch can handle.
fn npy_bool_with_byte_2() -> Vec<u8> {
    let mut v = mmtensor_format::npy::encode_header(mmtensor_format::Dtype::Bool, &[4]);
    v.extend_from_slice(&[0, 1, 2, 1]);
    v
}

#[test]
fn regression_bool_byte_2_is_refused_unless_normalized() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mask.npy"), npy_bool_with_byte_2()).unwrap();
    let o = mmt(&["convert", "mask.npy", "-o", "out.mmt"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("mask.npy")
            && e.contains("tensor `mask`")
            && e.contains("element 2")
            && e.contains("byte 2")
            && e.contains("--normalize-bools"),
        "{e}"
    );
    assert_eq!(entries(dir.path()), ["mask.npy"]);

    let o = mmt(
        &[
            "convert",
            "mask.npy",
            "-o",
            "out.mmt",
            "--normalize-bools",
            "-q",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let file = std::fs::read(dir.path().join("out.mmt")).unwrap();
    let layout = mmtensor_format::FileLayout::parse(&file, file.len() as u64).unwrap();
    let r = layout.tensor_range(layout.tensor("mask").unwrap());
    assert_eq!(&file[r.start as usize..r.end as usize], &[0, 1, 1, 1]);
}

#[test]
fn regression_convert_to_a_250_byte_output_name() {
    // The temporary name once added 16 bytes to the output's name: ENAMETOOLONG past 239 bytes.
    let dir = tempfile::tempdir().unwrap();
    let mut npy = mmtensor_format::npy::encode_header(mmtensor_format::Dtype::U8, &[2]);
    npy.extend_from_slice(&[7, 8]);
    std::fs::write(dir.path().join("x.npy"), npy).unwrap();
    let name = format!("{}.mmt", "o".repeat(246));
    let o = mmt(&["convert", "x.npy", "-o", &name, "-q"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(entries(dir.path()), [name, "x.npy".to_owned()]);
}

#[test]
fn regression_verify_of_a_bool_byte_2_exits_with_the_corruption_code() {
    // Before: `verify` passed such a store (its checksums match), and once the loader reported it,
    // the CLI's own list of corruption errors missed it and exited 1 instead of 3.
    use mmtensor_convert::sample::{SampleStore, SampleTensor};
    let dir = tempfile::tempdir().unwrap();
    let mut mask = SampleTensor::pattern("mask", mmtensor_format::Dtype::Bool, &[4], 0);
    mask.bytes = vec![0, 1, 2, 1];
    let store = SampleStore {
        alignment: 64,
        block_size: 4096,
        metadata: vec![],
        tensors: vec![mask],
    };
    store.write(&dir.path().join("m.mmt")).unwrap();
    let o = mmt(&["verify", "m.mmt"], dir.path());
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("not 0 or 1"), "{}", stderr(&o));
}

const SHUFFLED_CASES: [&str; 6] = [
    "mmap: open + take_into",
    "mmap: open + Random + take_into",
    "copy: read + take_into",
    "pread: per row, 1 thread",
    "pread: per row, pool threads",
    "mmap: Loader, prefetch 2",
];

/// `mmt bench --json` on a generated sample reports every shuffled-batch case, warm and cold, with
/// positive finite rates, the copy's heap and the mapping's lack of one; the sequential cases keep
/// their place and labels, and the sample is deleted.
#[test]
fn bench_reports_shuffled_batches_for_every_case() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let args = [
        "bench",
        "--size",
        "4MiB",
        "--dir",
        dir_arg,
        "--cold",
        "--repeats",
        "2",
        "--batch-size",
        "16",
        "--batches",
        "3",
        "--json",
    ];
    let o = mmt(&args, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The sample: one F32 tensor of 1024 rows of 1024 elements.
    let tensor_bytes = v["bytes"].as_u64().unwrap();
    assert_eq!(tensor_bytes, 4 << 20);
    let sequential: Vec<&str> = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["case"].as_str().unwrap())
        .collect();
    assert_eq!(sequential.len(), 12, "six sequential cases, warm and cold");
    assert!(sequential.iter().all(|c| !SHUFFLED_CASES.contains(c)));
    // Every repeat's copy grows the heap by the tensor, though the one before freed as much
    // (regression: glibc reused the freed memory, resident already, and a small store's copy
    // showed 0 B).
    for c in v["cases"].as_array().unwrap() {
        let heap = c["rss_anon_growth_bytes"].as_i64().unwrap();
        if c["case"].as_str().unwrap().starts_with("copy") {
            assert!(heap >= tensor_bytes as i64, "the copy holds the file: {c}");
        }
        // Opening a mapping reads nothing: no rate, as the table's "-".
        assert_eq!(
            c["gb_per_s"].is_null(),
            c["case"] == "mmap: open + view",
            "{c}"
        );
    }

    let sh = &v["shuffled"];
    assert_eq!(sh["shuffle"], "full");
    assert_eq!(sh["rows"], 1024);
    assert_eq!(sh["row_bytes"], 4096);
    assert_eq!(sh["batch_size"], 16);
    assert_eq!(sh["batches"], 3);
    assert_eq!(sh["batches_per_epoch"], 64);
    assert_eq!(sh["rows_read"], 48);
    assert_eq!(sh["bytes_read"], 48 * 4096);
    assert!(sh["threads"].as_u64().unwrap() >= 1);
    let cases = sh["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for mode in ["warm", "cold"] {
        for label in SHUFFLED_CASES {
            let c = cases
                .iter()
                .find(|c| c["mode"] == mode && c["case"] == label)
                .unwrap_or_else(|| panic!("no {mode} `{label}` in {sh}"));
            for key in ["median_s", "batches_per_s", "rows_per_s", "gb_per_s"] {
                let x = c[key].as_f64().unwrap();
                assert!(x.is_finite() && x > 0.0, "{mode} `{label}` {key} = {x}");
            }
            // Three batches at `batches_per_s` take the median time: the rates agree.
            let (secs, bps) = (
                c["median_s"].as_f64().unwrap(),
                c["batches_per_s"].as_f64().unwrap(),
            );
            assert!((secs * bps - 3.0).abs() < 1e-6, "{c}");
            let heap = c["rss_anon_growth_bytes"].as_i64().unwrap();
            if label.starts_with("copy") {
                assert!(heap >= tensor_bytes as i64, "the copy holds the file: {c}");
            } else {
                assert!(heap < (tensor_bytes / 2) as i64, "no copy of the file: {c}");
            }
        }
    }
    let ratios: Vec<&str> = v["ratios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["what"].as_str().unwrap())
        .collect();
    for what in [
        "warm: shuffled batches, copy / mmap",
        "cold: shuffled batches, pread on 1 thread / mmap",
        "cold: shuffled batches, pread on pool threads / mmap",
    ] {
        assert!(ratios.contains(&what), "no ratio {what:?} in {ratios:?}");
    }
    assert!(entries(dir.path()).is_empty(), "the sample is deleted");
}

/// A whole epoch (`--batches all`) of a fixture's 256 rows in batches of 100 reads every row once,
/// the last batch short; every case gathers the same bytes (the bench checks it, or fails).
#[test]
fn bench_gathers_a_whole_epoch_with_a_short_last_batch() {
    let f = fixtures().join("golden/page-a4096.mmt");
    let dir = tempfile::tempdir().unwrap();
    let o = mmt(
        &[
            "bench",
            f.to_str().unwrap(),
            "--tensor",
            "x",
            "--repeats",
            "1",
            "--batch-size",
            "100",
            "--batches",
            "all",
            "--seed",
            "7",
            "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sh = &v["shuffled"];
    assert_eq!(sh["seed"], 7);
    assert_eq!(sh["batches"], 3);
    assert_eq!(sh["batches_per_epoch"], 3);
    assert_eq!(sh["rows_read"], 256);
    assert_eq!(sh["bytes_read"], 256 * 32);
    assert_eq!(sh["cases"].as_array().unwrap().len(), SHUFFLED_CASES.len());

    // The table names the pattern and its cases.
    let o = mmt(
        &[
            "bench",
            f.to_str().unwrap(),
            "--tensor",
            "x",
            "--repeats",
            "1",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("shuffled batches: 1 of 1 per epoch"),
        "{text}"
    );
    for label in SHUFFLED_CASES {
        assert!(text.contains(label), "missing {label:?} in:\n{text}");
    }
}

/// A tensor without rows to shuffle (a scalar, an empty tensor) is measured without the pattern,
/// with a note saying why; `shuffled` is null in the JSON.
#[test]
fn bench_of_a_scalar_or_empty_tensor_skips_the_shuffled_batches() {
    let f = fixtures().join("golden/dtypes-a64.mmt");
    let dir = tempfile::tempdir().unwrap();
    for (tensor, why) in [("scalar", "is a scalar"), ("empty", "holds no bytes")] {
        let o = mmt(
            &[
                "bench",
                f.to_str().unwrap(),
                "--tensor",
                tensor,
                "--repeats",
                "1",
                "--json",
            ],
            dir.path(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains(why), "{tensor}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(v["shuffled"].is_null(), "{tensor}: {v}");
        assert_eq!(v["cases"].as_array().unwrap().len(), 6);
    }
}

/// Bad pattern flags are refused before any sample is written, naming the flag.
#[test]
fn bench_refuses_a_zero_batch_size_or_batch_count() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    for (flag, value, why) in [
        ("--batch-size", "0", "must be at least 1"),
        ("--batch-size", "1.5", "is not a whole number"),
        ("--batches", "0", "must be at least 1"),
        ("--batches", "some", "neither a whole number nor `all`"),
    ] {
        let o = mmt(
            &["bench", "--size", "1MiB", "--dir", dir_arg, flag, value],
            dir.path(),
        );
        assert!(!o.status.success(), "{flag} {value} was accepted");
        let err = stderr(&o);
        assert!(
            err.contains(flag) && err.contains(why),
            "{flag} {value}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            entries(dir.path()).is_empty(),
            "{flag} {value} wrote a sample"
        );
    }
}
