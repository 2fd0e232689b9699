//! What a file that is none of ours looks like, from its first bytes: so that an error can say
//! "a Parquet file" rather than list bytes.

/// The kind of file whose first bytes are `head`, for the formats people most often hand to
/// mmtensor by mistake or before it reads them: `None` when no signature matches.
///
/// Only signatures at the start of a file are checked (Parquet, Arrow IPC, HDF5, zip, gzip,
/// zstd, pickle, and mmtensor's own dataset manifest); formats without one (safetensors, raw
/// `.bin` token files, TFRecord) are not recognized.
///
/// ```
/// use mmtensor_format::looks_like;
///
/// assert_eq!(looks_like(b"PAR1\x15\x04"), Some("a Parquet file"));
/// assert_eq!(looks_like(b"\x00\x01"), None);
/// ```
pub fn looks_like(head: &[u8]) -> Option<&'static str> {
    const SIGNATURES: &[(&[u8], &str)] = &[
        (b"PAR1", "a Parquet file"),
        (b"ARROW1", "an Arrow IPC (Feather v2) file"),
        (b"\x89HDF\r\n\x1a\n", "an HDF5 file (h5py, HDF5 .h5/.hdf5)"),
        (
            &crate::MANIFEST_MAGIC,
            "a dataset manifest (manifest.mmtm): open its folder as a dataset",
        ),
        (
            b"PK\x03\x04",
            "a zip archive (an .npz, or a torch.save checkpoint)",
        ),
        (b"PK\x05\x06", "an empty zip archive"),
        (b"\x1f\x8b", "a gzip-compressed file"),
        (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
        (
            b"\x80\x02",
            "a Python pickle (torch.save's legacy format, or pickled NumPy)",
        ),
        (
            b"\x80\x03",
            "a Python pickle (torch.save's legacy format, or pickled NumPy)",
        ),
        (
            b"\x80\x04",
            "a Python pickle (torch.save's legacy format, or pickled NumPy)",
        ),
        (
            b"\x80\x05",
            "a Python pickle (torch.save's legacy format, or pickled NumPy)",
        ),
    ];
    SIGNATURES
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|&(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_recognized_and_a_prefix_is_not_enough() {
        assert_eq!(
            looks_like(b"ARROW1\0\0"),
            Some("an Arrow IPC (Feather v2) file")
        );
        assert!(looks_like(b"\x89HDF\r\n\x1a\n\0")
            .unwrap()
            .starts_with("an HDF5"));
        assert!(looks_like(b"PK\x03\x04").unwrap().contains(".npz"));
        assert_eq!(looks_like(b"PAR"), None);
        assert_eq!(looks_like(b""), None);
        assert_eq!(looks_like(&crate::MAGIC), None);
    }
}
