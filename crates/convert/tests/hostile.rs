//! Damaged and unsupported inputs: each gets a specific error naming the file (and member), never a
//! panic, and nothing is left under the output name.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use mmtensor_convert::{convert, ConvertOptions, Error, Input, NoProgress, Progress};
use mmtensor_format::Error as FormatError;
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/numpy")
}

/// Converts in a fresh folder; checks that a failure leaves the folder empty.
fn try_convert(inputs: &[Input], options: &ConvertOptions) -> Result<(), Error> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mmt");
    let r = convert(inputs, &out, options, &NoProgress, &AtomicBool::new(false)).map(|_| ());
    if r.is_err() {
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "files left after an error: {left:?}");
    }
    r
}

fn one(path: impl Into<PathBuf>) -> Result<(), Error> {
    try_convert(&[Input::path(path)], &ConvertOptions::default())
}

/// Converts `path` with `options` into `dir/out.mmt` and returns the bytes of its tensor `name`.
fn converted_tensor(dir: &Path, path: &Path, options: &ConvertOptions, name: &str) -> Vec<u8> {
    let out = dir.join("out.mmt");
    convert(
        &[Input::path(path)],
        &out,
        options,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    let file = std::fs::read(&out).unwrap();
    let layout = mmtensor_format::FileLayout::parse(&file, file.len() as u64).unwrap();
    let r = layout.tensor_range(layout.tensor(name).unwrap());
    file[r.start as usize..r.end as usize].to_vec()
}

/// Writes `bytes` to a file named `name` in a new temp folder.
fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    (dir, p)
}

#[test]
fn non_numeric_dtypes_are_refused_with_advice() {
    for (file, words) in [
        ("object", "pickled Python objects"),
        ("structured", "structured"),
        ("unicode", "string arrays"),
        ("datetime", "datetime"),
    ] {
        let path = fixtures().join(format!("hostile/{file}.npy"));
        let e = one(&path).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Npy {
                    source: FormatError::NpyDtype { .. },
                    ..
                }
            ),
            "{file}: {e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(words) && msg.contains(&format!("{file}.npy")),
            "{msg}"
        );
    }
}

#[test]
fn truncated_and_overlong_npy_files_are_refused() {
    let good = std::fs::read(fixtures().join("npy/float32.npy")).unwrap();
    let (_d, p) = temp_file("short.npy", &good[..good.len() - 3]);
    let e = one(&p).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DataSize {
                expected: 48,
                found: Some(45),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("short.npy"));
    let mut long = good.clone();
    long.extend_from_slice(&[0; 4]);
    let (_d, p) = temp_file("long.npy", &long);
    let e = one(&p).unwrap_err();
    assert!(matches!(e, Error::DataSize { found: None, .. }), "{e:?}");
    // Cut inside the header.
    for cut in [0, 5, 9, 40] {
        let (_d, p) = temp_file("cut.npy", &good[..cut]);
        let e = one(&p).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Npy {
                    source: FormatError::Truncated { file_len, .. },
                    ..
                } if file_len == cut as u64
            ),
            "{cut}: {e:?}"
        );
    }
}

/// Offset of the central-directory entry of `member` in a zip.
fn central_entry(zip: &[u8], member: &str) -> usize {
    let sig = b"PK\x01\x02";
    (0..zip.len() - 46)
        .find(|&i| {
            zip[i..i + 4] == sig[..] && {
                let n = u16::from_le_bytes([zip[i + 28], zip[i + 29]]) as usize;
                zip.get(i + 46..i + 46 + n) == Some(member.as_bytes())
            }
        })
        .unwrap()
}

#[test]
fn zip_member_with_false_declared_size_is_refused_naming_the_member() {
    for file in ["stored.npz", "compressed.npz"] {
        let good = std::fs::read(fixtures().join("npz").join(file)).unwrap();
        for delta in [-4i64, 4] {
            let mut bad = good.clone();
            let at = central_entry(&bad, "big.npy") + 24;
            let size = u32::from_le_bytes(bad[at..at + 4].try_into().unwrap()) as i64 + delta;
            bad[at..at + 4].copy_from_slice(&(size as u32).to_le_bytes());
            let (_d, p) = temp_file(file, &bad);
            let e = one(&p).unwrap_err();
            // The central directory's size disagrees with the member's own .npy header.
            let found = (delta < 0).then_some(20);
            assert!(
                matches!(&e, Error::DataSize { member: Some(m), expected: 24, found: f, .. }
                    if m == "big.npy" && *f == found),
                "{file} {delta}: {e:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains("big.npy") && msg.contains(file), "{msg}");
        }
    }
}

#[test]
fn zip_member_with_bad_crc_is_refused_naming_the_member() {
    for file in ["stored.npz", "compressed.npz"] {
        let good = std::fs::read(fixtures().join("npz").join(file)).unwrap();
        let mut bad = good.clone();
        let at = central_entry(&bad, "weights.npy") + 16;
        bad[at] ^= 0x55;
        let (_d, p) = temp_file(file, &bad);
        let e = one(&p).unwrap_err();
        assert!(
            matches!(&e, Error::Zip { member: Some(m), .. } if m == "weights.npy"),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("weights.npy") && msg.contains(file), "{msg}");
    }
}

#[test]
fn npz_member_whose_header_lies_about_the_data_is_refused() {
    use std::io::Write;
    let mut npy = mmtensor_format::npy::encode_header(mmtensor_format::Dtype::F32, &[10]);
    npy.extend_from_slice(&[0u8; 8]); // 2 of the 10 floats
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lie.npz");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("x.npy", opts).unwrap();
    w.write_all(&npy).unwrap();
    w.finish().unwrap();
    let e = one(&p).unwrap_err();
    assert!(
        matches!(e, Error::DataSize { expected: 40, found: Some(8), ref member, .. } if member.as_deref() == Some("x.npy")),
        "{e:?}"
    );
}

#[test]
fn garbage_files_get_errors_of_their_kind() {
    let (_d, p) = temp_file("junk.npz", b"this is not a zip file at all, not even close");
    assert!(matches!(one(&p).unwrap_err(), Error::Zip { .. }));
    let (_d, p) = temp_file("junk.safetensors", b"\xff\xff\xff\xff\xff\xff\xff\x7f{}");
    assert!(matches!(one(&p).unwrap_err(), Error::Safetensors { .. }));
    let good = std::fs::read(fixtures().join("safetensors/model.safetensors")).unwrap();
    let (_d, p) = temp_file("cut.safetensors", &good[..good.len() - 1]);
    assert!(matches!(one(&p).unwrap_err(), Error::Safetensors { .. }));
    let (_d, p) = temp_file("data.csv", b"1,2,3");
    assert!(matches!(
        one(&p).unwrap_err(),
        Error::UnsupportedInput { .. }
    ));
    let e = one("/nonexistent/x.npy").unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("/nonexistent/x.npy"));
}

#[test]
fn regression_safetensors_data_sizes_that_overflow_u64_are_refused() {
    // Each tensor passes the safetensors crate's own checks; together they describe 2^64 - 8 data
    // bytes, so header length + data length overflowed (a panic in debug builds).
    let n: u64 = (1 << 61) - 1;
    let tensors: Vec<String> = (0..8u64)
        .map(|i| {
            format!(
                r#""t{i}":{{"dtype":"U8","shape":[{n}],"data_offsets":[{},{}]}}"#,
                i * n,
                (i + 1) * n
            )
        })
        .collect();
    let json = format!("{{{}}}", tensors.join(","));
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    let (_d, p) = temp_file("huge.safetensors", &bytes);
    let err = one(&p).unwrap_err();
    assert!(
        matches!(&err, Error::Safetensors { path, .. } if path == &p),
        "{err}"
    );
    assert!(err.to_string().contains("huge.safetensors"), "{err}");
    assert!(
        err.to_string().contains("more than any file can hold"),
        "{err}"
    );
}

#[test]
fn regression_a_widening_cast_past_2_pow_64_bytes_is_refused() {
    // 2^62 U8 elements are 2^62 input bytes; as U64 they would be 2^65, which overflowed the
    // planner's output size (a panic in debug builds) before any data was read.
    let npy = mmtensor_format::npy::encode_header(mmtensor_format::Dtype::U8, &[1 << 62]);
    // The file must hold the data the header claims: a sparse file on tmpfs, whose files may be
    // up to 2^63 - 1 bytes long (ext4 stops at 16 TiB).
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("skipped: no /dev/shm for a sparse 4 EiB file");
        return;
    };
    let p = dir.path().join("big.npy");
    std::fs::write(&p, &npy).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    if let Err(e) = f.set_len(npy.len() as u64 + (1 << 62)) {
        eprintln!("skipped: cannot make a sparse 4 EiB file on /dev/shm: {e}");
        return;
    }
    let mut o = ConvertOptions::default();
    o.dtype.add("x=u64").unwrap();
    let e = try_convert(&[Input::parse(&format!("x={}", p.display())).unwrap()], &o).unwrap_err();
    assert!(
        matches!(&e, Error::Format { path, source: FormatError::ShapeOverflow { .. } } if path == &p),
        "{e:?}"
    );
}

#[test]
fn void_dtype_needs_an_input_dtype_of_its_size() {
    let bf = fixtures().join("npy/bf16.npy");
    let e = one(&bf).unwrap_err();
    assert!(matches!(e, Error::NeedsInputDtype { size: 2, .. }), "{e:?}");
    assert!(e.to_string().contains("--input-dtype bf16=bf16"), "{e}");
    let mut o = ConvertOptions::default();
    o.input_dtype.add("bf16=f32").unwrap();
    let e = try_convert(&[Input::path(&bf)], &o).unwrap_err();
    assert!(matches!(e, Error::InputDtypeSize { .. }), "{e:?}");
}

#[test]
fn planning_errors_say_how_to_fix() {
    let f = fixtures();
    let e = one(f.join("shards/bad")).unwrap_err();
    assert!(matches!(e, Error::ShardMismatch { .. }), "{e:?}");
    assert!(
        e.to_string().contains("b.npy") && e.to_string().contains("[2, 4]"),
        "{e}"
    );

    let e = try_convert(
        &[
            Input::path(f.join("npz/stored.npz")),
            Input::path(f.join("npz/compressed.npz")),
        ],
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::NameCollision { .. }), "{e:?}");
    assert!(e.to_string().contains("NAME=PATH"), "{e}");

    let mut o = ConvertOptions::default();
    o.dtype.add("wieghts=f16").unwrap();
    let e = try_convert(&[Input::path(f.join("npz/stored.npz"))], &o).unwrap_err();
    assert!(
        matches!(e, Error::UnknownTensor { .. }) && e.to_string().contains("weights"),
        "{e}"
    );

    let mut o = ConvertOptions::default();
    o.dtype.add("float32=i32").unwrap();
    let e = try_convert(&[Input::path(f.join("npy/float32.npy"))], &o).unwrap_err();
    assert!(matches!(e, Error::UnsupportedCast { .. }), "{e:?}");

    let mut o = ConvertOptions::default();
    o.dtype.add("i32").unwrap();
    let e = try_convert(&[Input::path(f.join("npy/float32.npy"))], &o).unwrap_err();
    // Regression (issue 23): it read "input `I32`: ...", as if a file were called I32.
    assert!(
        matches!(e, Error::DtypeRule { .. })
            && e.to_string().starts_with("dtype rule `I32`: ")
            && e.to_string().contains("write NAME=I32"),
        "{e}"
    );
    let mut o = ConvertOptions::default();
    o.metadata.insert("mmt.shard.index".into(), "0".into());
    let e = try_convert(&[Input::path(f.join("npy/float32.npy"))], &o).unwrap_err();
    assert!(
        matches!(e, Error::MetadataKey { .. })
            && e.to_string()
                .starts_with("metadata key `mmt.shard.index`: "),
        "{e}"
    );
    let e = try_convert(
        &[Input::parse("nomatch/*.npy").unwrap()],
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
}

#[test]
fn narrowing_names_the_first_value_that_does_not_fit() {
    let f = fixtures();
    let text = std::fs::read_to_string(f.join("manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hex = m["npy/int64-be-f.npy"]["int64-be-f"]["hex"]
        .as_str()
        .unwrap();
    let values: Vec<i64> = (0..hex.len() / 16)
        .map(|i| {
            let b: Vec<u8> = (0..8)
                .map(|j| u8::from_str_radix(&hex[i * 16 + 2 * j..][..2], 16).unwrap())
                .collect();
            i64::from_le_bytes(b.try_into().unwrap())
        })
        .collect();
    let first = values
        .iter()
        .position(|v| i8::try_from(*v).is_err())
        .unwrap();
    let mut o = ConvertOptions::default();
    o.dtype.add("int64-be-f=i8").unwrap();
    let e = try_convert(&[Input::path(f.join("npy/int64-be-f.npy"))], &o).unwrap_err();
    match e {
        Error::ValueOutOfRange { index, value, .. } => {
            assert_eq!(index, first as u64);
            assert_eq!(value, values[first].to_string());
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn cancellation_leaves_nothing_and_keeps_an_existing_output() {
    struct CancelOnStart<'a>(&'a AtomicBool);
    impl Progress for CancelOnStart<'_> {
        fn advance(&self, _: u64) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mmt");
    std::fs::write(&out, b"previous").unwrap();
    let flag = AtomicBool::new(false);
    let inputs = [Input::path(fixtures().join("npz/compressed.npz"))];
    let e = convert(
        &inputs,
        &out,
        &ConvertOptions::default(),
        &CancelOnStart(&flag),
        &flag,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    [
        "npy/float64-be-f.npy",
        "npy/v3.npy",
        "npz/stored.npz",
        "npz/compressed.npz",
        "safetensors/model.safetensors",
    ]
    .iter()
    .map(|f| {
        (
            f.rsplit('/').next().unwrap().to_owned(),
            std::fs::read(fixtures().join(f)).unwrap(),
        )
    })
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Any single corrupted byte or truncation gives a result or an error, never a panic, and an
    /// error leaves no file behind (checked by `try_convert`).
    #[test]
    fn corrupted_inputs_never_panic(which in 0usize..5, pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let (name, mut bytes) = corpus().swap_remove(which);
        let i = pos.index(bytes.len());
        if cut { bytes.truncate(i) } else { bytes[i] = byte }
        let (_d, p) = temp_file(&name, &bytes);
        let _ = one(&p);
    }
}

/// Regression: an error in the middle of a multi-chunk plain-file tensor (here a narrowing cast
/// that fails in the third chunk) used to deadlock, because the reader thread waited on a channel
/// whose other end outlived the early return. It must return the error.
#[test]
fn regression_early_error_in_a_multi_chunk_file_does_not_deadlock() {
    use mmtensor_format::{npy, Dtype};
    let mut bytes = npy::encode_header(Dtype::I64, &[4096]);
    for i in 0..4096i64 {
        bytes.extend_from_slice(&(if i == 1500 { 1000 } else { i % 100 }).to_le_bytes());
    }
    let (_dir, path) = temp_file("wide.npy", &bytes);
    let mut o = ConvertOptions::default();
    o.chunk_size = 4096; // 512 elements per chunk: the bad value is in the third chunk
    o.dtype.add("wide=i8").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(try_convert(&[Input::path(path)], &o));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("convert returned instead of deadlocking");
    assert!(
        matches!(r, Err(Error::ValueOutOfRange { index: 1500, .. })),
        "{r:?}"
    );

    // Cancelling in the middle of such a tensor returns too.
    struct CancelAfterFirstChunk<'a>(&'a AtomicBool);
    impl Progress for CancelAfterFirstChunk<'_> {
        fn advance(&self, _: u64) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let mut plain = npy::encode_header(Dtype::U8, &[1 << 16]);
    plain.resize(plain.len() + (1 << 16), 7);
    let (dir, path) = temp_file("plain.npy", &plain);
    let out = dir.path().join("out.mmt");
    let mut o = ConvertOptions::default();
    o.chunk_size = 4096;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let flag = AtomicBool::new(false);
        let r = convert(
            &[Input::path(path)],
            &out,
            &o,
            &CancelAfterFirstChunk(&flag),
            &flag,
        );
        let _ = tx.send(r.map(|_| ()));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("convert returned instead of deadlocking");
    assert!(matches!(r, Err(Error::Cancelled { .. })), "{r:?}");
}

/// A `.npy` header for a Fortran-order array (the encoder writes C order; the flag is swapped in
/// place, keeping the header's length).
fn fortran_header(dtype: mmtensor_format::Dtype, shape: &[u64]) -> Vec<u8> {
    let mut h = mmtensor_format::npy::encode_header(dtype, shape);
    let at = h
        .windows(7)
        .position(|w| w == b"False, ")
        .expect("the encoder writes fortran_order False");
    h[at..at + 7].copy_from_slice(b"True,  ");
    h
}

/// Truncates a file to half its length the first time a chunk is reported, after the planner and
/// the stream have both checked its length.
struct TruncateOnFirstChunk {
    path: PathBuf,
    done: AtomicBool,
}

impl Progress for TruncateOnFirstChunk {
    fn advance(&self, _bytes: u64) {
        if !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len / 2).unwrap();
        }
    }
}

#[test]
fn regression_input_truncated_during_fortran_transpose_is_an_error_not_sigbus() {
    // Before: the transpose read a memory map of the input, and the truncated pages killed the
    // process with SIGBUS. Now every read is a bounded pread, and a short one is an error naming
    // the file and the data offset.
    // Tall enough that the column runs are read directly (32 KiB each), not through a spill file.
    let shape = [65536u64, 2];
    let mut bytes = fortran_header(mmtensor_format::Dtype::F64, &shape);
    let data_offset = bytes.len() as u64;
    for i in 0..shape[0] * shape[1] {
        bytes.extend_from_slice(&(i as f64).to_le_bytes());
    }
    let (dir, path) = temp_file("f.npy", &bytes);
    let mut options = ConvertOptions::default();
    options.chunk_size = 1 << 16;
    let progress = TruncateOnFirstChunk {
        path: path.clone(),
        done: AtomicBool::new(false),
    };
    let out = dir.path().join("out.mmt");
    let e = convert(
        &[Input::path(&path)],
        &out,
        &options,
        &progress,
        &AtomicBool::new(false),
    )
    .unwrap_err();
    match &e {
        Error::DataSize {
            path: p,
            offset,
            found,
            ..
        } => {
            assert_eq!(p, &path);
            assert_eq!(*offset, data_offset);
            assert_eq!(*found, Some(bytes.len() as u64 / 2 - data_offset));
        }
        other => panic!("expected DataSize, got {other:?}"),
    }
    assert!(e.to_string().contains("f.npy"), "{e}");
    assert!(!out.exists());
}

#[test]
fn fortran_arrays_convert_through_preads_in_every_read_mode() {
    // Dense tile reads, one read per column run, a short axis 0 with rows longer than the chunk
    // (the windowed gather), matrices transposed through a spill file (short runs; rows longer
    // than the chunk), and rank 3 (one short read per column), each against the C-order values.
    for (shape, chunk) in [
        (vec![200u64, 7], 1usize << 12),
        (vec![10000, 8], 1 << 16),
        (vec![3, 4000], 1 << 12),
        (vec![5000, 40], 1 << 12),
        (vec![1000, 2000], 1 << 12),
        (vec![700, 20, 3], 1 << 12),
    ] {
        let n: u64 = shape.iter().product();
        let mut bytes = fortran_header(mmtensor_format::Dtype::U32, &shape);
        // Element at Fortran flat index f holds f; its C-order position is computed below.
        for f in 0..n {
            bytes.extend_from_slice(&(f as u32).to_le_bytes());
        }
        let (dir, path) = temp_file("f.npy", &bytes);
        let mut options = ConvertOptions::default();
        options.chunk_size = chunk;
        let got = converted_tensor(dir.path(), &path, &options, "f");
        for (c, el) in got.chunks_exact(4).enumerate() {
            let mut rem = c as u64;
            let mut idx = vec![0u64; shape.len()];
            for k in (0..shape.len()).rev() {
                idx[k] = rem % shape[k];
                rem /= shape[k];
            }
            let mut f = 0;
            let mut stride = 1;
            for k in 0..shape.len() {
                f += idx[k] * stride;
                stride *= shape[k];
            }
            assert_eq!(
                u32::from_le_bytes(el.try_into().unwrap()),
                f as u32,
                "{shape:?}: C index {c}"
            );
        }
    }
}

#[test]
fn regression_bool_byte_2_is_refused_naming_file_tensor_index_and_offset() {
    let mut bytes = mmtensor_format::npy::encode_header(mmtensor_format::Dtype::Bool, &[3, 2]);
    let data_offset = bytes.len() as u64;
    bytes.extend_from_slice(&[0, 1, 1, 0, 2, 1]);
    let (dir, path) = temp_file("mask.npy", &bytes);
    let e = one(&path).unwrap_err();
    match &e {
        Error::InvalidBool {
            path: p,
            tensor,
            index,
            offset,
            value,
            ..
        } => {
            assert_eq!((p, tensor.as_str()), (&path, "mask"));
            assert_eq!((*index, *offset, *value), (4, Some(data_offset + 4), 2));
        }
        other => panic!("expected InvalidBool, got {other:?}"),
    }
    assert!(e.to_string().contains("at byte"), "{e}");

    let mut options = ConvertOptions::default();
    options.normalize_bools = true;
    assert_eq!(
        converted_tensor(dir.path(), &path, &options, "mask"),
        [0, 1, 1, 0, 1, 1]
    );
}

#[test]
fn regression_zero_size_shards_whose_lengths_overflow_are_refused() {
    // Two empty shards of shape [2^63, 0]: their lengths along axis 0 sum past u64::MAX, which
    // panicked (debug) or wrapped (release) when the planner added them.
    let npy = mmtensor_format::npy::encode_header(mmtensor_format::Dtype::F32, &[1 << 63, 0]);
    let (dir, a) = temp_file("a.npy", &npy);
    let b = dir.path().join("b.npy");
    std::fs::write(&b, &npy).unwrap();
    let e = try_convert(
        &[Input::shards("x", vec![a, b])],
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
}
