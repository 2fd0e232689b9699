//! The fixed 32-byte preamble that opens every `.mmt` file: magic, version, flags, and the
//! length and checksum of the JSON header that follows it.

use xxhash_rust::xxh3::Xxh3;

use crate::{Alignment, Error, Result};

/// The eight magic bytes that open every `.mmt` file: `\x89MMT\r\n\x1a\n`.
///
/// Like PNG's, the high first byte and the CR LF / ^Z / LF tail make text-mode transfers and
/// 7-bit channels visibly corrupt the file instead of silently changing tensor bytes.
pub const MAGIC: [u8; 8] = *b"\x89MMT\r\n\x1a\n";
/// Length of the fixed preamble.
pub const PREAMBLE_LEN: u64 = 32;
/// The major version this crate reads and writes.
pub const VERSION_MAJOR: u16 = 1;
/// The highest minor version this crate writes: 1.1 adds ragged tensors. A store without one is
/// written as 1.0 (minor 0), byte for byte what a 1.0 writer wrote.
pub const VERSION_MINOR: u16 = 1;
/// Largest header accepted, in bytes (100 MiB).
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;
/// Preamble flag bits 0..16 are *required*: a reader that does not know a set bit must refuse the
/// file. Bits 16..32 are *optional*: a reader ignores the ones it does not know. Version 1.0 defines none.
pub const REQUIRED_FLAGS_MASK: u32 = 0x0000_ffff;
/// Required flags this reader understands (none in 1.0).
pub const KNOWN_REQUIRED_FLAGS: u32 = 0;

/// The fixed 32-byte preamble.
///
/// | bytes  | field           | encoding                                           |
/// |--------|-----------------|----------------------------------------------------|
/// | 0..8   | magic           | [`MAGIC`]                                          |
/// | 8..10  | major version   | u16 LE                                             |
/// | 10..12 | minor version   | u16 LE                                             |
/// | 12..16 | flags           | u32 LE                                             |
/// | 16..24 | header length   | u64 LE                                             |
/// | 24..32 | header checksum | u64 LE, xxh3-64 of bytes 0..24 then the header     |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    /// Major version; a reader refuses any other major than its own.
    pub major: u16,
    /// Minor version; a 1.x reader reads any 1.y file.
    pub minor: u16,
    /// Flag bits (see [`REQUIRED_FLAGS_MASK`]).
    pub flags: u32,
    /// Length of the JSON header that follows the preamble.
    pub header_len: u64,
    /// xxh3-64 of preamble bytes 0..24 followed by the header.
    pub header_checksum: u64,
}

impl Preamble {
    /// Parses and checks the preamble at the start of `bytes`: magic, version, flags, header cap.
    ///
    /// # Errors
    /// [`Error::TooShort`], [`Error::BadMagic`], [`Error::UnsupportedVersion`],
    /// [`Error::UnknownRequiredFlags`] or [`Error::HeaderTooLarge`].
    pub fn parse(bytes: &[u8]) -> Result<Preamble> {
        let Some(p) = bytes.get(..PREAMBLE_LEN as usize) else {
            // Show the magic problem first when the bytes we have already disagree with it.
            let n = bytes.len().min(8);
            if bytes[..n] != MAGIC[..n] {
                let mut found = [0u8; 8];
                found[..n].copy_from_slice(&bytes[..n]);
                return Err(Error::BadMagic {
                    found,
                    expected: MAGIC,
                });
            }
            return Err(Error::TooShort {
                len: bytes.len() as u64,
                min: PREAMBLE_LEN,
            });
        };
        let magic: [u8; 8] = p[0..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(Error::BadMagic {
                found: magic,
                expected: MAGIC,
            });
        }
        let u16_at = |i: usize| u16::from_le_bytes([p[i], p[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
        let pre = Preamble {
            major: u16_at(8),
            minor: u16_at(10),
            flags: u32_at(12),
            header_len: u64_at(16),
            header_checksum: u64_at(24),
        };
        if pre.major != VERSION_MAJOR {
            return Err(Error::UnsupportedVersion {
                major: pre.major,
                minor: pre.minor,
                supported: VERSION_MAJOR,
            });
        }
        let unknown = pre.flags & REQUIRED_FLAGS_MASK & !KNOWN_REQUIRED_FLAGS;
        if unknown != 0 {
            return Err(Error::UnknownRequiredFlags { flags: unknown });
        }
        if pre.header_len > MAX_HEADER_LEN {
            return Err(Error::HeaderTooLarge {
                len: pre.header_len,
                max: MAX_HEADER_LEN,
            });
        }
        Ok(pre)
    }

    /// The 32 bytes of this preamble.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN as usize] {
        let mut out = [0u8; PREAMBLE_LEN as usize];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.major.to_le_bytes());
        out[10..12].copy_from_slice(&self.minor.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.header_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.header_checksum.to_le_bytes());
        out
    }

    /// The checksum that belongs in bytes 24..32 for this preamble and `header`.
    pub fn compute_checksum(&self, header: &[u8]) -> u64 {
        let bytes = self.encode();
        let mut h = Xxh3::new();
        h.update(&bytes[..24]);
        h.update(header);
        h.digest()
    }

    /// Absolute offset of the data section: the header's end rounded up to `alignment`.
    pub fn data_start(&self, alignment: Alignment) -> Option<u64> {
        alignment.align_up(PREAMBLE_LEN.checked_add(self.header_len)?)
    }
}
