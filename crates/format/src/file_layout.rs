//! A store's layout as a reader holds it: the preamble and header, parsed and validated against
//! the file's length, with every range a reader needs computed by checked arithmetic.

use std::ops::Range;

use crate::header::NameIndex;
use crate::{Error, Header, Preamble, Result, TensorInfo, MAX_HEADER_LEN, PREAMBLE_LEN};

/// A validated store layout: preamble, header and where the data section starts.
///
/// This is what a reader holds after [`FileLayout::parse`]; every offset in it is in bounds of the
/// file it was parsed against. Its fields are private, so it cannot be changed after validation.
#[derive(Clone, Debug)]
pub struct FileLayout {
    preamble: Preamble,
    header: Header,
    data_start: u64,
    file_len: u64,
    index: NameIndex,
}

impl FileLayout {
    /// Parses and validates the start of a `.mmt` file.
    ///
    /// `prefix` holds at least the preamble and the header (the whole file is fine); `file_len` is
    /// the length of the whole file. Allocates at most in proportion to the header, which is capped.
    /// Parsing, validation and the name index are one pass over the tensors; the index holds
    /// positions (4 bytes and a 4-byte fingerprint per slot), not a second copy of the names.
    ///
    /// # Errors
    /// Any [`Error`]: the first problem found, in file order.
    pub fn parse(prefix: &[u8], file_len: u64) -> Result<FileLayout> {
        let preamble = Preamble::parse(prefix)?;
        let header_end = PREAMBLE_LEN + preamble.header_len;
        if header_end > file_len {
            return Err(Error::Truncated {
                what: "the header".into(),
                start: PREAMBLE_LEN,
                end: header_end,
                file_len,
            });
        }
        let json = prefix
            .get(PREAMBLE_LEN as usize..header_end as usize)
            .ok_or_else(|| Error::Truncated {
                what: "the header (in the bytes given)".into(),
                start: PREAMBLE_LEN,
                end: header_end,
                file_len: prefix.len() as u64,
            })?;
        let computed = preamble.compute_checksum(json);
        if computed != preamble.header_checksum {
            return Err(Error::HeaderChecksum {
                stored: preamble.header_checksum,
                computed,
                end: header_end,
            });
        }
        let header = Header::from_json(json)?;
        // The header length is capped at 100 MiB, so this cannot overflow; an error all the same.
        let data_start = preamble
            .data_start(header.alignment)
            .ok_or(Error::HeaderTooLarge {
                len: preamble.header_len,
                max: MAX_HEADER_LEN,
            })?;
        let index = header.validate_indexed(data_start, file_len)?;
        Ok(FileLayout {
            preamble,
            header,
            data_start,
            file_len,
            index,
        })
    }

    /// The preamble.
    pub fn preamble(&self) -> &Preamble {
        &self.preamble
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Absolute offset of the data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Length of the file this layout was checked against.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.get(self.position(name)?)
    }

    /// Position of the tensor named `name` in [`Header::tensors`].
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(&self.header.tensors, name)
    }

    /// Absolute byte range of a tensor's data in the file.
    ///
    /// For a tensor of this layout the range is in bounds of the file (validation checked it). A
    /// `TensorInfo` from elsewhere gets a range saturated at `u64::MAX`, never a panic.
    pub fn tensor_range(&self, t: &TensorInfo) -> Range<u64> {
        let start = self.data_start.saturating_add(t.offset);
        start..start.saturating_add(t.length)
    }

    /// Absolute byte range of the checksum table in the file.
    pub fn checksum_table_range(&self) -> Range<u64> {
        let start = self.data_start + self.header.checksums.offset;
        start..start + self.header.checksums.length
    }

    /// Absolute byte ranges that must hold zeros: between the header and the data, between tensors,
    /// and between the last tensor and the checksum table.
    pub fn padding_ranges(&self) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut cursor = PREAMBLE_LEN + self.preamble.header_len;
        let regions = self
            .header
            .tensors
            .iter()
            .map(|t| self.tensor_range(t))
            .chain(std::iter::once(self.checksum_table_range()));
        for r in regions {
            if r.start > cursor {
                out.push(cursor..r.start);
            }
            cursor = cursor.max(r.end);
        }
        out
    }
}
