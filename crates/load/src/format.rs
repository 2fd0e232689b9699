//! The kinds of file a store opens, and how a file's first bytes say which it is.

use std::fmt;

use mmtensor_format::npy::NPY_MAGIC;
use mmtensor_format::MAGIC;

/// The kind of file a [`Store`](crate::Store) was opened from, detected from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// An `.mmt` store: aligned, checksummed, any number of tensors.
    Mmt,
    /// A safetensors file: tensors packed without alignment promises, no checksums.
    Safetensors,
    /// A NumPy `.npy` file: one array, data at a multiple of 64 bytes, no checksums.
    Npy,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Format::Mmt => ".mmt",
            Format::Safetensors => ".safetensors",
            Format::Npy => ".npy",
        })
    }
}

/// The format whose signature `bytes` start with. A file that is a strict prefix of a signature is
/// given that format, so that its parser reports it as truncated.
pub(crate) fn detect(bytes: &[u8]) -> Option<Format> {
    let is_prefix = |magic: &[u8]| {
        let n = bytes.len().min(magic.len());
        n > 0 && bytes[..n] == magic[..n]
    };
    if is_prefix(&MAGIC) {
        Some(Format::Mmt)
    } else if is_prefix(&NPY_MAGIC) {
        Some(Format::Npy)
    } else if bytes.get(8) == Some(&b'{') {
        // safetensors: a u64 LE header length, then a JSON object.
        Some(Format::Safetensors)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_uses_the_first_bytes() {
        assert_eq!(detect(&MAGIC), Some(Format::Mmt));
        assert_eq!(detect(&MAGIC[..3]), Some(Format::Mmt));
        assert_eq!(detect(b"\x93NUMPY\x01\x00"), Some(Format::Npy));
        assert_eq!(detect(b"\x93NU"), Some(Format::Npy));
        assert_eq!(detect(b"\x10\0\0\0\0\0\0\0{}"), Some(Format::Safetensors));
        assert_eq!(detect(b""), None);
        assert_eq!(detect(b"PK\x03\x04 zip"), None);
    }
}
