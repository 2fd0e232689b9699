//! Regression: a `.npy` file shorter than its own header said so in the words of the `.mmt` format
//! ("shorter than the 60010-byte .mmt preamble"), sending the reader to the wrong file format.

use mmtensor_format::{npy, Error};

#[test]
fn regression_npy_header_past_the_end_is_not_called_an_mmt_preamble() {
    // A version-1.0 header that claims 60,000 bytes in a 100-byte file.
    let mut v = npy::NPY_MAGIC.to_vec();
    v.extend_from_slice(&[1, 0]);
    v.extend_from_slice(&60000u16.to_le_bytes());
    v.resize(100, b' ');
    let e = npy::parse_header(&v).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Truncated {
                start: 10,
                end: 60010,
                file_len: 100,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(".npy header") && !msg.contains(".mmt"),
        "{msg}"
    );

    // Shorter than the fixed fields.
    for short in [
        &b"\x93NUMPY"[..],
        b"\x93NUMPY\x01\x00\x10",
        b"\x93NUMPY\x02\x00\x10\x00",
    ] {
        let e = npy::parse_header(short).unwrap_err();
        assert!(matches!(e, Error::Truncated { .. }), "{e:?}");
        assert!(!e.to_string().contains(".mmt"), "{e}");
    }
}
