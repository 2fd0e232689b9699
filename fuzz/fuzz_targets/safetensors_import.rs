//! The safetensors import on arbitrary bytes: the loader's `Store::read` (header validation and
//! every view) and `mmt convert`'s reader; nothing may be left behind on error.
#![no_main]

use std::sync::atomic::AtomicBool;

use libfuzzer_sys::fuzz_target;
use mmtensor_convert::{convert, ConvertOptions, Input, NoProgress};

fuzz_target!(|data: &[u8]| {
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::tempdir_in(base).unwrap();
    let input = dir.path().join("in.safetensors");
    std::fs::write(&input, data).unwrap();
    if let Ok(store) = mmtensor::Store::read(&input) {
        for t in store.tensors() {
            let _ = t.bytes().map(|b| b.len());
        }
    }
    let out = dir.path().join("out.mmt");
    let r = convert(
        &[Input::path(&input)],
        &out,
        &ConvertOptions::default(),
        &NoProgress,
        &AtomicBool::new(false),
    );
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    match r {
        Ok(_) => assert_eq!(left, 2, "the input and the output"),
        Err(_) => assert_eq!(left, 1, "only the input is left after an error"),
    }
});
