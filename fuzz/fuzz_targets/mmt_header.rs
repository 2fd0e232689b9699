//! The `.mmt` preamble and header validation (`FileLayout::parse`), the one path every `.mmt` read
//! takes, on arbitrary bytes; when a layout is accepted, every range it hands out must lie in the
//! file and the loader must open the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmtensor_format::FileLayout;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok(layout) = FileLayout::parse(data, len) {
        for t in &layout.header().tensors {
            let r = layout.tensor_range(t);
            assert!(r.start <= r.end && r.end <= len, "tensor {:?} out of bounds", t.name);
            if let Some(rows) = t.num_rows() {
                let _ = t.row_byte_range(0..rows);
            }
        }
        let table = layout.checksum_table_range();
        assert!(table.end <= len);
        let _ = layout.padding_ranges();
    }
    // The same bytes checked against a longer file than given must not read past the slice.
    let _ = FileLayout::parse(data, len.saturating_mul(2));
});
