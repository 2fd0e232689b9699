//! How an object is cut into ranged GETs, and how each range is checked as its bytes arrive.
//!
//! A download is three kinds of part: the head (preamble, header and the padding up to the data
//! section), checked by [`FileLayout::parse`]; the tail (the checksum table and any trailing bytes),
//! checked against the table hash in the header; and data parts, each a run of whole checksum
//! blocks (with the zero padding between tensors), checked block by block against the table. So
//! every byte is verified before its part is recorded as done, and no block straddles two parts.

use std::ops::Range;

use mmtensor_format::{block_checksum, decode_checksum_table, FileLayout, Preamble, PREAMBLE_LEN};
use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, Result};
use crate::Listed;

/// One verified unit of a data part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// A checksum block: tensor position, block index within the tensor, index in the table.
    Block {
        tensor: usize,
        block: u64,
        entry: usize,
        range: Range<u64>,
    },
    /// Bytes that must be zero.
    Zeros(Range<u64>),
    /// Bytes after the checksum table, which the format lets a reader ignore (room for a future
    /// version to append): copied so the entry equals the object, not checked.
    Trailing(Range<u64>),
}

impl Segment {
    fn range(&self) -> &Range<u64> {
        match self {
            Segment::Block { range, .. } | Segment::Zeros(range) | Segment::Trailing(range) => {
                range
            }
        }
    }
}

/// A data part: one ranged GET of whole segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub range: Range<u64>,
    pub segments: Vec<Segment>,
}

/// Cuts the data section (`data_start .. table start`) into parts of at least `part_size` bytes
/// (the last may be shorter), each ending on a block boundary; any bytes after the checksum table
/// are one more part.
pub(crate) fn data_parts(layout: &FileLayout, part_size: u64) -> Vec<Part> {
    let header = layout.header();
    let bs = header.block_size.get();
    let mut segments = Vec::new();
    let mut cursor = layout.data_start();
    let mut entry = 0usize;
    for (i, t) in header.tensors.iter().enumerate() {
        let r = layout.tensor_range(t);
        if r.start > cursor {
            segments.push(Segment::Zeros(cursor..r.start));
        }
        let mut start = r.start;
        let mut block = 0;
        while start < r.end {
            let end = (start + bs).min(r.end);
            segments.push(Segment::Block {
                tensor: i,
                block,
                entry,
                range: start..end,
            });
            block += 1;
            entry += 1;
            start = end;
        }
        cursor = cursor.max(r.end);
    }
    let table_start = layout.checksum_table_range().start;
    if table_start > cursor {
        segments.push(Segment::Zeros(cursor..table_start));
    }

    let mut parts = Vec::new();
    let mut current: Vec<Segment> = Vec::new();
    for s in segments {
        let end = s.range().end;
        current.push(s);
        if end - current[0].range().start >= part_size {
            let range = current[0].range().start..end;
            parts.push(Part {
                range,
                segments: std::mem::take(&mut current),
            });
        }
    }
    if let (Some(first), Some(last)) = (current.first(), current.last()) {
        let range = first.range().start..last.range().end;
        parts.push(Part {
            range,
            segments: current,
        });
    }
    let trailing = layout.checksum_table_range().end..layout.file_len();
    if !trailing.is_empty() {
        parts.push(Part {
            range: trailing.clone(),
            segments: vec![Segment::Trailing(trailing)],
        });
    }
    parts
}

/// The verified head and checksum table of a `.mmt` object: everything but its data.
pub(crate) struct Skeleton {
    /// Bytes `0..data_start`: preamble, header and the zero padding after it.
    pub head: Vec<u8>,
    pub layout: FileLayout,
    /// The checksum table as stored, at `layout.checksum_table_range()`.
    pub table_bytes: Vec<u8>,
    /// The table's checksums, one per block.
    pub table: Vec<u64>,
}

/// Reads and verifies the head and the checksum table of the `.mmt` object at `url` (`size`
/// bytes): [`head`] with `read_head`, then the table with `read_tail`, checked by [`table`].
///
/// # Errors
///
/// As [`head`] and [`table`], and what the reads return.
pub(crate) async fn skeleton<H, T>(
    url: &str,
    size: u64,
    header_checksum: Option<u64>,
    read_head: impl Fn(Range<u64>) -> H,
    read_tail: impl FnOnce(Range<u64>) -> T,
) -> Result<Skeleton>
where
    H: std::future::Future<Output = Result<Vec<u8>>>,
    T: std::future::Future<Output = Result<Vec<u8>>>,
{
    let (head, layout) = head(url, size, header_checksum, read_head).await?;
    let table_bytes = read_tail(layout.checksum_table_range()).await?;
    let table = table(url, &layout, &table_bytes)?;
    Ok(Skeleton {
        head,
        layout,
        table_bytes,
        table,
    })
}

/// Reads and verifies the head of the `.mmt` object at `url` (`size` bytes) with `read_head`:
/// bytes `0..data_start` and the layout they describe. The preamble is checked against
/// `header_checksum` (a manifest's) before any other byte is read; the header by its own
/// checksum; the padding after it must be zero.
///
/// One page holds the preamble and header of most stores (and is their data start at the
/// default alignment); a longer header takes a second read, never bytes past the data start.
///
/// # Errors
///
/// [`Error::NotAsListed`], [`Error::Format`], [`Error::Padding`], and what the reads return.
pub(crate) async fn head<H>(
    url: &str,
    size: u64,
    header_checksum: Option<u64>,
    read_head: impl Fn(Range<u64>) -> H,
) -> Result<(Vec<u8>, FileLayout)>
where
    H: std::future::Future<Output = Result<Vec<u8>>>,
{
    let format = |source| Error::Format {
        url: url.into(),
        source,
    };
    let first = read_head(0..size.min(4096)).await?;
    let preamble = Preamble::parse(&first).map_err(format)?;
    if let Some(listed) = header_checksum {
        if preamble.header_checksum != listed {
            return Err(Error::NotAsListed {
                url: url.into(),
                what: Listed::HeaderChecksum {
                    found: preamble.header_checksum,
                    listed,
                },
            });
        }
    }
    let header_end = PREAMBLE_LEN.saturating_add(preamble.header_len).min(size);
    let mut head = first;
    if (head.len() as u64) < header_end {
        let rest = read_head(head.len() as u64..header_end).await?;
        head.extend_from_slice(&rest);
    }
    let layout = FileLayout::parse(&head, size).map_err(format)?;
    let data_start = layout.data_start();
    if (head.len() as u64) < data_start {
        let rest = read_head(head.len() as u64..data_start).await?;
        head.extend_from_slice(&rest);
    }
    head.truncate(data_start as usize); // Bytes past it belong to the first data part.
    check_head_padding(url, &layout, &head)?;
    Ok((head, layout))
}

/// The checksums of the table `bytes` (read at `layout.checksum_table_range()`), checked against
/// the header's hash of the table (8 bytes a block, so bounded by the capped header).
///
/// # Errors
///
/// [`Error::TableChecksum`] when the hash differs.
pub(crate) fn table(url: &str, layout: &FileLayout, bytes: &[u8]) -> Result<Vec<u64>> {
    let computed = block_checksum(bytes);
    let stored = layout.header().checksums.checksum;
    if computed != stored {
        return Err(Error::TableChecksum {
            url: url.into(),
            offset: layout.checksum_table_range().start,
            stored,
            computed,
        });
    }
    Ok(decode_checksum_table(bytes).collect())
}

/// Checks that the padding between the header and the data section is zero.
pub(crate) fn check_head_padding(url: &str, layout: &FileLayout, head: &[u8]) -> Result<()> {
    let from = PREAMBLE_LEN + layout.preamble().header_len;
    check_zeros(
        url,
        from,
        &head[from as usize..layout.data_start() as usize],
    )
}

fn check_zeros(url: &str, offset: u64, bytes: &[u8]) -> Result<()> {
    match bytes.iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(Error::Padding {
            url: url.into(),
            offset: offset + i as u64,
            value: bytes[i],
        }),
    }
}

/// Checks a data part's bytes as they arrive, in order, in chunks of any size.
pub(crate) struct PartVerifier<'a> {
    url: &'a str,
    layout: &'a FileLayout,
    table: &'a [u64],
    segments: &'a [Segment],
    /// Index of the segment being filled.
    next: usize,
    /// Absolute offset of the next byte.
    pos: u64,
    hasher: Xxh3,
}

impl<'a> PartVerifier<'a> {
    pub(crate) fn new(
        url: &'a str,
        layout: &'a FileLayout,
        table: &'a [u64],
        part: &'a Part,
    ) -> Self {
        PartVerifier {
            url,
            layout,
            table,
            segments: &part.segments,
            next: 0,
            pos: part.range.start,
            hasher: Xxh3::new(),
        }
    }

    /// Feeds the next bytes of the part.
    ///
    /// # Errors
    /// [`Error::BlockChecksum`] or [`Error::Padding`] as soon as a segment is complete and wrong;
    /// [`Error::ShortRead`] if more bytes arrive than the part holds.
    pub(crate) fn update(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let Some(seg) = self.segments.get(self.next) else {
                let last = self.segments.last().map_or(self.pos, |s| s.range().end);
                let first = self.segments.first().map_or(self.pos, |s| s.range().start);
                return Err(Error::ShortRead {
                    url: self.url.into(),
                    start: first,
                    end: last,
                    got: self.pos - first + bytes.len() as u64,
                });
            };
            let r = seg.range();
            let take = ((r.end - self.pos) as usize).min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            match seg {
                Segment::Zeros(_) => check_zeros(self.url, self.pos, head)?,
                Segment::Block { .. } => self.hasher.update(head),
                Segment::Trailing(_) => {}
            }
            self.pos += take as u64;
            bytes = rest;
            if self.pos == r.end {
                if let Segment::Block {
                    tensor,
                    block,
                    entry,
                    range,
                } = seg
                {
                    let computed = self.hasher.digest();
                    self.hasher.reset();
                    let stored = self.table[*entry];
                    if computed != stored {
                        return Err(Error::BlockChecksum {
                            url: self.url.into(),
                            tensor: self.layout.header().tensors[*tensor].name.clone(),
                            block: *block,
                            offset: range.start,
                            end: range.end,
                            stored,
                            computed,
                        });
                    }
                }
                self.next += 1;
            }
        }
        Ok(())
    }

    /// Whether every segment of the part has been received and checked.
    pub(crate) fn is_complete(&self) -> bool {
        self.next == self.segments.len()
    }

    /// Absolute offset of the next byte expected.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmtensor_format::{
        block_checksum, block_checksums, encode_checksum_table, Dtype, LayoutBuilder,
    };

    /// A two-tensor store with 4 KiB blocks: x holds 3 blocks and a bit, y one short block.
    fn store() -> (Vec<u8>, FileLayout) {
        let mut b = LayoutBuilder::new();
        b.alignment(4096).unwrap();
        b.block_size(4096).unwrap();
        b.tensor("x", Dtype::U8, &[3 * 4096 + 100]).unwrap();
        b.tensor("y", Dtype::U8, &[10]).unwrap();
        let layout = b.build().unwrap();
        let x: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i * 7) as u8).collect();
        let y = vec![9u8; 10];
        let mut table = block_checksums(&x, 4096);
        table.extend(block_checksums(&y, 4096));
        let table = encode_checksum_table(&table);
        let mut file = layout.encode_head(block_checksum(&table));
        file.resize(layout.data_start() as usize, 0);
        for (t, bytes) in layout.header().tensors.iter().zip([&x, &y]) {
            file.resize((layout.data_start() + t.offset) as usize, 0);
            file.extend_from_slice(bytes);
        }
        file.resize(layout.checksum_table_start() as usize, 0);
        file.extend_from_slice(&table);
        let parsed = FileLayout::parse(&file, file.len() as u64).unwrap();
        (file, parsed)
    }

    fn table(file: &[u8], layout: &FileLayout) -> Vec<u64> {
        let r = layout.checksum_table_range();
        mmtensor_format::decode_checksum_table(&file[r.start as usize..r.end as usize]).collect()
    }

    #[test]
    fn parts_tile_the_data_section_on_block_boundaries() {
        let (file, layout) = store();
        let end = layout.checksum_table_range().start;
        for part_size in [1, 4096, 5000, 8192, 1 << 20] {
            let parts = data_parts(&layout, part_size);
            let mut cursor = layout.data_start();
            for p in &parts {
                assert_eq!(p.range.start, cursor, "part size {part_size}");
                cursor = p.range.end;
            }
            assert_eq!(cursor, end);
            // Every part verifies, fed in awkward chunk sizes.
            let t = table(&file, &layout);
            for p in &parts {
                let mut v = PartVerifier::new("u", &layout, &t, p);
                for c in file[p.range.start as usize..p.range.end as usize].chunks(1000) {
                    v.update(c).unwrap();
                }
                assert!(v.is_complete());
            }
        }
        // x's 4 blocks, the padding before y, y's block, the padding before the table.
        assert_eq!(data_parts(&layout, 1).len(), 7);
    }

    #[test]
    fn bytes_after_the_table_are_one_more_part_copied_unchecked() {
        let (mut file, _) = store();
        let table_end = file.len() as u64;
        file.extend_from_slice(&[0xAB; 100]);
        let layout = FileLayout::parse(&file, file.len() as u64).unwrap();
        let parts = data_parts(&layout, 1 << 20);
        let last = parts.last().unwrap();
        assert_eq!(last.range, table_end..table_end + 100);
        let t = table(&file, &layout);
        let mut v = PartVerifier::new("u", &layout, &t, last);
        v.update(&file[table_end as usize..]).unwrap();
        assert!(v.is_complete());
    }

    #[test]
    fn a_flipped_byte_names_tensor_block_and_offset() {
        let (mut file, layout) = store();
        let x = layout.tensor("x").unwrap();
        let at = layout.tensor_range(x).start + 2 * 4096 + 5;
        file[at as usize] ^= 1;
        let t = table(&file, &layout);
        let parts = data_parts(&layout, 1 << 20);
        let p = &parts[0];
        let mut v = PartVerifier::new("s3://b/k", &layout, &t, p);
        let err = v
            .update(&file[p.range.start as usize..p.range.end as usize])
            .unwrap_err();
        match err {
            Error::BlockChecksum {
                tensor,
                block,
                offset,
                ..
            } => {
                assert_eq!((tensor.as_str(), block), ("x", 2));
                assert_eq!(offset, layout.tensor_range(x).start + 2 * 4096);
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn nonzero_padding_is_named_by_offset() {
        let (mut file, layout) = store();
        let x = layout.tensor("x").unwrap();
        let at = layout.tensor_range(x).end + 3;
        file[at as usize] = 7;
        let t = table(&file, &layout);
        let parts = data_parts(&layout, 1 << 20);
        let p = &parts[0];
        let mut v = PartVerifier::new("u", &layout, &t, p);
        let err = v
            .update(&file[p.range.start as usize..p.range.end as usize])
            .unwrap_err();
        assert!(
            matches!(err, Error::Padding { offset, value: 7, .. } if offset == at),
            "{err}"
        );
    }
}
