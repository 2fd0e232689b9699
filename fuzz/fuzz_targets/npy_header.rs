//! The `.npy` header parser (`npy::parse_header`) on arbitrary bytes, and the size arithmetic a
//! reader does with what it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmtensor_format::npy;

fuzz_target!(|data: &[u8]| {
    let _ = npy::required_prefix_len(data);
    if let Ok(h) = npy::parse_header(data) {
        let _ = h.data_len();
        let _ = h.numel();
        let _ = h.check_file_len(data.len() as u64);
        assert!(h.data_offset <= data.len() as u64);
    }
});
