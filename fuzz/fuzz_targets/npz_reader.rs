//! The `.npz` reader: arbitrary bytes saved as an `.npz` and converted (zip parsing, member headers,
//! streaming with CRC and size checks, the atomic writer); nothing may be left behind on error.
#![no_main]

use std::sync::atomic::AtomicBool;

use libfuzzer_sys::fuzz_target;
use mmtensor_convert::{convert, ConvertOptions, Input, NoProgress};

fuzz_target!(|data: &[u8]| {
    // /dev/shm keeps the file traffic in memory where it exists.
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::tempdir_in(base).unwrap();
    let input = dir.path().join("in.npz");
    std::fs::write(&input, data).unwrap();
    let out = dir.path().join("out.mmt");
    let mut options = ConvertOptions::default();
    options.input_dtype.add("bf16").unwrap();
    let r = convert(&[Input::path(&input)], &out, &options, &NoProgress, &AtomicBool::new(false));
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    match r {
        Ok(_) => assert_eq!(left, 2, "the input and the output"),
        Err(_) => assert_eq!(left, 1, "only the input is left after an error"),
    }
});
