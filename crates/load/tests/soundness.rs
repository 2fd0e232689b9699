//! Regression tests for the loader's side of "sound by construction": no store byte is writable,
//! a truncated file is reported instead of killing the process, BOOL bytes are checked, and owned
//! views outlive their store handle.

use std::path::{Path, PathBuf};

use mmtensor::{Dtype, Error, OwnedTensor, Store};
use mmtensor_convert::sample::{SampleStore, SampleTensor};

/// `x` (F32 [4096, 64]: 1 MiB in 4096-byte checksum blocks) and `mask` (BOOL, the given bytes).
fn store(dir: &Path, mask: &[u8]) -> PathBuf {
    let mut mask_t = SampleTensor::pattern("mask", Dtype::Bool, &[mask.len() as u64], 0);
    mask_t.bytes = mask.to_vec();
    let sample = SampleStore {
        alignment: 4096,
        block_size: 4096,
        metadata: vec![],
        tensors: vec![
            SampleTensor::pattern("x", Dtype::F32, &[4096, 64], 1),
            mask_t,
        ],
    };
    let path = dir.join("s.mmt");
    sample.write(&path).unwrap();
    path
}

/// The permissions (`r--p`, ...) of the mapping in /proc/self/maps that holds `addr`.
fn permissions_at(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps is readable");
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (range, perms) = (parts.next().unwrap(), parts.next().unwrap());
        let (lo, hi) = range.split_once('-').unwrap();
        let lo = usize::from_str_radix(lo, 16).unwrap();
        let hi = usize::from_str_radix(hi, 16).unwrap();
        if (lo..hi).contains(&addr) {
            return perms.to_owned();
        }
    }
    panic!("no mapping holds {addr:#x}");
}

#[test]
fn a_copied_store_is_read_only_memory_not_a_writable_heap_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let path = store(dir.path(), &[0, 1].repeat(8));
    let copy = Store::read(&path).unwrap();
    assert!(!copy.is_mapped());
    for t in copy.tensors() {
        let bytes = t.bytes().unwrap();
        let perms = permissions_at(bytes.as_ptr() as usize);
        assert!(
            perms.starts_with("r-"),
            "tensor {} lies in {perms}",
            t.name()
        );
    }
    // SAFETY: the fixture is written above and nothing modifies it.
    let mapped = unsafe { Store::open(&path) }.unwrap();
    let x = mapped.tensor("x").unwrap().bytes().unwrap();
    assert!(permissions_at(x.as_ptr() as usize).starts_with("r-"));
    assert_eq!(copy.tensor("x").unwrap().bytes().unwrap(), x);
}

#[test]
fn verify_and_prefetch_of_a_truncated_store_say_the_file_shrank() {
    let dir = tempfile::tempdir().unwrap();
    let path = store(dir.path(), &[0; 16]);
    let len = std::fs::metadata(&path).unwrap().len();
    // SAFETY: deliberately broken below to check that the loader reports it; nothing but the
    // checks under test touches the vanished pages.
    let s = unsafe { Store::open(&path) }.unwrap();
    let x = s.tensor_owned("x").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(8192)
        .unwrap();
    let shrank = |e: &Error| matches!(e, Error::Shrank { len: 8192, mapped, .. } if *mapped == len);
    let err = s.verify().unwrap_err();
    assert!(shrank(&err), "{err:?}");
    assert!(err.to_string().contains("shrank"), "{err}");
    let err = x.verify().unwrap_err();
    assert!(shrank(&err), "{err:?}");
    let err = x.prefetch().wait().unwrap_err();
    assert!(shrank(&err), "{err:?}");
    let err = s.prefetch().wait().unwrap_err();
    assert!(shrank(&err), "{err:?}");
}

#[test]
fn verify_reports_bool_bytes_other_than_0_and_1() {
    let dir = tempfile::tempdir().unwrap();
    let mut mask = [0u8, 1].repeat(8);
    mask[5] = 2;
    let path = store(dir.path(), &mask);
    let s = Store::read(&path).unwrap();
    let start = s.tensor("mask").unwrap().byte_range().start;
    let err = s.verify().unwrap_err();
    assert!(
        matches!(&err, Error::InvalidBool { tensor, offset, value: 2, .. }
            if tensor == "mask" && *offset == start + 5),
        "{err:?}"
    );
    let err = s.tensor("mask").unwrap().verify().unwrap_err();
    assert!(matches!(&err, Error::InvalidBool { .. }), "{err:?}");
    // The other tensor is fine on its own.
    s.tensor("x").unwrap().verify().unwrap();
}

#[test]
fn opening_a_directory_says_it_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: nothing is mapped; the open fails.
    let err = unsafe { Store::open(dir.path()) }.unwrap_err();
    assert!(matches!(&err, Error::IsADirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("is a directory"), "{err}");
    let err = Store::read(dir.path()).unwrap_err();
    assert!(matches!(&err, Error::IsADirectory { .. }), "{err:?}");
}

#[test]
fn an_owned_tensor_outlives_its_store_handle_and_crosses_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = store(dir.path(), &[1; 16]);
    let (whole, rows): (OwnedTensor, OwnedTensor) = {
        // SAFETY: nothing modifies the fixture.
        let s = unsafe { Store::open(&path) }.unwrap();
        let x = s.tensor("x").unwrap();
        (
            x.owned(),
            s.tensor_owned("x").unwrap().rows(100..200).unwrap(),
        )
    };
    let expected = whole.to_vec::<f32>().unwrap();
    let handle = std::thread::spawn(move || {
        assert_eq!(rows.shape(), [100, 64]);
        assert_eq!(rows.first_row(), 100);
        assert_eq!(rows.name(), "x");
        let inner = rows.rows(10..20).unwrap();
        assert_eq!(inner.first_row(), 110);
        (
            rows.as_slice::<f32>().unwrap().to_vec(),
            inner.as_slice::<f32>().unwrap().to_vec(),
        )
    });
    let (got, inner) = handle.join().unwrap();
    assert_eq!(got, expected[100 * 64..200 * 64]);
    assert_eq!(inner, expected[110 * 64..120 * 64]);
    assert!(whole.rows(4000..5000).is_err());
    assert_eq!(
        whole.view().rows(1..2).unwrap().byte_range(),
        whole.rows(1..2).unwrap().byte_range()
    );
}

#[test]
fn opening_a_fifo_or_a_device_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.mmt");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Before the fix, File::open on a FIFO with no writer blocked forever.
    let err = Store::read(&fifo).unwrap_err();
    assert!(matches!(&err, Error::NotAFile { .. }), "{err:?}");
    // SAFETY: nothing is mapped; the open fails.
    let err = unsafe { Store::open("/dev/null") }.unwrap_err();
    assert!(matches!(&err, Error::NotAFile { .. }), "{err:?}");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}
