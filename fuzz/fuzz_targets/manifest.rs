//! The dataset manifest parser (`Manifest::parse`), the one path every dataset open takes, on
//! arbitrary bytes; an accepted manifest must re-encode to a manifest that parses to itself, and
//! its row index must agree with its shards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmtensor_format::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let again = Manifest::parse(&m.encode()).expect("an accepted manifest re-encodes");
        assert_eq!(again, m);
        let starts = m.starts();
        assert_eq!(starts.len(), m.shards().len() + 1);
        for (i, s) in m.shards().iter().enumerate() {
            assert_eq!(starts[i + 1] - starts[i], s.num_rows());
            if s.num_rows() > 0 {
                assert_eq!(m.locate(starts[i]), Some((i, 0)));
                assert_eq!(m.locate(starts[i + 1] - 1), Some((i, s.num_rows() - 1)));
            }
        }
        assert_eq!(m.locate(m.num_rows()), None);
    }
});
