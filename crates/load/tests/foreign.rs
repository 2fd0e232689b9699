//! `.safetensors` and `.npy` files open through the same API as `.mmt` stores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mmtensor::{Error, Format, Store};
use mmtensor_format::Dtype;
use safetensors::tensor::TensorView;

fn open(path: &Path) -> Store {
    // SAFETY: each test owns its temporary files and does not change them while they are open.
    unsafe { Store::open(path) }.unwrap()
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect()
}

#[test]
fn safetensors_files_open_with_zero_copy_views() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let w = f32_bytes(12);
    let ids: Vec<u8> = (0..5i64).flat_map(i64::to_le_bytes).collect();
    let mask = vec![1u8, 0, 1];
    let tensors = [
        (
            "w",
            TensorView::new(safetensors::Dtype::F32, vec![3, 4], &w).unwrap(),
        ),
        (
            "ids",
            TensorView::new(safetensors::Dtype::I64, vec![5], &ids).unwrap(),
        ),
        (
            "mask",
            TensorView::new(safetensors::Dtype::BOOL, vec![3], &mask).unwrap(),
        ),
    ];
    let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize_to_file(tensors, Some(meta), &path).unwrap();

    for store in [open(&path), Store::read(&path).unwrap()] {
        assert_eq!(store.format(), Format::Safetensors);
        assert!(store.layout().is_none());
        assert_eq!(
            store.metadata().get("format").map(String::as_str),
            Some("pt")
        );
        let mut names: Vec<&str> = store.names().collect();
        names.sort_unstable();
        assert_eq!(names, ["ids", "mask", "w"]);
        let t = store.tensor("w").unwrap();
        assert_eq!((t.dtype(), t.shape()), (Dtype::F32, &[3u64, 4][..]));
        assert_eq!(t.bytes().unwrap(), &w[..]);
        let values: &[f32] = t.as_slice().unwrap();
        assert_eq!(values[5], 2.5);
        assert_eq!(
            t.rows(1..2).unwrap().as_slice::<f32>().unwrap(),
            &values[4..8]
        );
        assert_eq!(
            store.tensor("ids").unwrap().to_vec::<i64>().unwrap(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(
            store.tensor("mask").unwrap().as_slice::<bool>().unwrap(),
            [true, false, true]
        );
        assert!(matches!(
            store.verify(),
            Err(Error::NoChecksums {
                format: Format::Safetensors,
                ..
            })
        ));
        assert!(matches!(t.verify(), Err(Error::NoChecksums { .. })));
        t.prefetch().wait().unwrap();
        t.advise(mmtensor::Advice::Sequential).unwrap();
    }
}

/// A safetensors file written by hand so that `b` (F32) starts at data byte 3: misaligned.
fn unaligned_safetensors(path: &Path) -> Vec<u8> {
    let mut json =
        r#"{"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"b":{"dtype":"F32","shape":[2,2],"data_offsets":[3,19]}}"#
            .to_owned();
    // Pad the header as safetensors writers do, so the data section itself starts 8-aligned.
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(' ');
    }
    let b = f32_bytes(4);
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json.as_bytes());
    file.extend_from_slice(&[7, 8, 9]);
    file.extend_from_slice(&b);
    std::fs::write(path, &file).unwrap();
    b
}

#[test]
fn unaligned_safetensors_tensors_say_so_and_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("packed.safetensors");
    let b_bytes = unaligned_safetensors(&path);
    for store in [open(&path), Store::read(&path).unwrap()] {
        let b = store.tensor("b").unwrap();
        let err = b.as_slice::<f32>().unwrap_err();
        assert!(
            matches!(&err, Error::Unaligned { tensor, align: 4, requested: "f32", offset, .. }
                if tensor == "b" && offset % 4 != 0),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("to_vec") && msg.contains("mmt convert"),
            "{msg}"
        );
        // The explicit copy works, and so do raw bytes and single-byte types.
        assert_eq!(b.to_vec::<f32>().unwrap(), [0.0, 0.5, 1.0, 1.5]);
        assert_eq!(b.rows(1..).unwrap().to_vec::<f32>().unwrap(), [1.0, 1.5]);
        assert_eq!(b.bytes().unwrap(), &b_bytes[..]);
        assert_eq!(
            store.tensor("a").unwrap().as_slice::<u8>().unwrap(),
            [7, 8, 9]
        );
    }
}

/// A version 1.0 `.npy` file with header dict `dict` (padded as NumPy pads) and `data`.
fn npy_raw(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_owned();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn npy_files_open_as_one_tensor_named_after_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("features.npy");
    let mut file = mmtensor_format::npy::encode_header(Dtype::F32, &[3, 4]);
    file.extend_from_slice(&f32_bytes(12));
    std::fs::write(&path, &file).unwrap();
    for store in [open(&path), Store::read(&path).unwrap()] {
        assert_eq!(store.format(), Format::Npy);
        assert_eq!(store.names().collect::<Vec<_>>(), ["features"]);
        assert!(store.metadata().is_empty());
        let t = store.tensor("features").unwrap();
        assert_eq!(t.shape(), [3, 4]);
        assert_eq!(t.byte_range().start % 64, 0);
        assert_eq!(
            t.rows(2..).unwrap().as_slice::<f32>().unwrap(),
            [4.0, 4.5, 5.0, 5.5]
        );
        assert!(matches!(
            store.verify(),
            Err(Error::NoChecksums {
                format: Format::Npy,
                ..
            })
        ));
    }
}

#[test]
fn fortran_order_and_big_endian_npy_are_refused_for_views() {
    let dir = tempfile::tempdir().unwrap();
    let data = f32_bytes(6);
    for (name, dict, reason) in [
        (
            "f.npy",
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
            "Fortran",
        ),
        (
            "be.npy",
            "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }",
            "big-endian",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, npy_raw(dict, &data)).unwrap();
        let store = open(&path);
        let t = store.tensors().next().unwrap();
        assert_eq!(t.shape(), [2, 3]);
        let errors = [
            t.bytes().map(|_| ()).unwrap_err(),
            t.as_slice::<f32>().map(|_| ()).unwrap_err(),
            t.to_vec::<f32>().map(|_| ()).unwrap_err(),
            t.rows(0..1)
                .unwrap()
                .as_slice::<f32>()
                .map(|_| ())
                .unwrap_err(),
        ];
        for err in errors {
            assert!(matches!(err, Error::NeedsConvert { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(reason) && msg.contains("mmt convert"), "{msg}");
        }
    }
    // Where the two orders coincide (at most one axis longer than 1), and for one-byte types, where
    // byte order does not apply, the bytes are a C-order little-endian tensor after all.
    for (name, dict, n) in [
        (
            "col.npy",
            "{'descr': '<f4', 'fortran_order': True, 'shape': (6, 1), }",
            6,
        ),
        (
            "u8.npy",
            "{'descr': '>u1', 'fortran_order': False, 'shape': (4,), }",
            1,
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, npy_raw(dict, &data)).unwrap();
        let store = open(&path);
        assert_eq!(
            store.tensors().next().unwrap().bytes().unwrap().len(),
            n * 4
        );
    }
}

/// A Python with NumPy: `MMT_PYTHON`, the workspace's `.venv`, or `python3`. `None` skips the test.
fn python_with_numpy() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let candidates = std::env::var_os("MMT_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([venv, PathBuf::from("python3")]);
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    None
}

#[test]
fn npy_files_saved_by_numpy_open_bit_exact() {
    let Some(python) = python_with_numpy() else {
        eprintln!("skipped: no Python with NumPy (set MMT_PYTHON to run this test)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Each array is saved with np.save, and its C-order little-endian bytes beside it.
    let script = r#"
import sys, numpy as np
d = sys.argv[1]
arrays = {
    "f32": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 4,
    "f64": np.linspace(-1, 1, 10),
    "i16": np.arange(-5, 5, dtype=np.int16),
    "u64": np.arange(7, dtype=np.uint64) * 2**40,
    "c64": (np.arange(6) + 1j * np.arange(6)).astype(np.complex64).reshape(3, 2),
    "f16": np.arange(8, dtype=np.float16),
    "b": np.arange(9) % 2 == 0,
    "scalar": np.array(3.5),
    "empty": np.zeros((0, 3), dtype=np.int32),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    "big": np.arange(4, dtype=">i4"),
}
for name, a in arrays.items():
    np.save(f"{d}/{name}.npy", a)
    open(f"{d}/{name}.bin", "wb").write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let expect = |name: &str| std::fs::read(dir.path().join(format!("{name}.bin"))).unwrap();
    let cases = [
        ("f32", Dtype::F32, vec![2, 3, 4]),
        ("f64", Dtype::F64, vec![10]),
        ("i16", Dtype::I16, vec![10]),
        ("u64", Dtype::U64, vec![7]),
        ("c64", Dtype::C64, vec![3, 2]),
        ("f16", Dtype::F16, vec![8]),
        ("b", Dtype::Bool, vec![9]),
        ("scalar", Dtype::F64, vec![]),
        ("empty", Dtype::I32, vec![0, 3]),
    ];
    for (name, dtype, shape) in cases {
        let store = open(&dir.path().join(format!("{name}.npy")));
        let t = store.tensor(name).unwrap();
        assert_eq!((t.dtype(), t.shape()), (dtype, &shape[..]), "{name}");
        assert_eq!(t.bytes().unwrap(), &expect(name)[..], "{name}");
    }
    let store = open(&dir.path().join("f32.npy"));
    let t = store.tensor("f32").unwrap();
    assert_eq!(
        t.rows(1..).unwrap().as_slice::<f32>().unwrap()[..3],
        [3.0, 3.25, 3.5]
    );
    let store = open(&dir.path().join("c64.npy"));
    let c = store
        .tensor("c64")
        .unwrap()
        .to_vec::<mmtensor::Complex<f32>>()
        .unwrap();
    assert_eq!(c[5], mmtensor::Complex::new(5.0, 5.0));
    let store = open(&dir.path().join("b.npy"));
    assert!(store.tensor("b").unwrap().as_slice::<bool>().unwrap()[8]);
    for name in ["fortran", "big"] {
        let store = open(&dir.path().join(format!("{name}.npy")));
        let err = store
            .tensor(name)
            .unwrap()
            .as_slice::<u8>()
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::NeedsConvert { .. } | Error::DtypeMismatch { .. }
            ),
            "{name}: {err:?}"
        );
        let err = store.tensor(name).unwrap().bytes().unwrap_err();
        assert!(err.to_string().contains("mmt convert"), "{err}");
    }
}
