//! Block checksums: xxh3-64 (seed 0) over fixed-size blocks of each tensor's bytes.

use std::ops::Range;

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// The checksum of one block (or of any byte string): xxh3-64 with seed 0.
#[inline]
pub fn block_checksum(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// Number of blocks that cover `length` bytes.
#[inline]
pub fn block_count(length: u64, block_size: u64) -> u64 {
    length.div_ceil(block_size.max(1))
}

/// The blocks (indices within one tensor) that cover the bytes `bytes` of that tensor.
///
/// An empty byte range covers no block.
pub fn blocks_covering(bytes: Range<u64>, block_size: u64) -> Range<u64> {
    let block_size = block_size.max(1);
    if bytes.start >= bytes.end {
        return 0..0;
    }
    bytes.start / block_size..bytes.end.div_ceil(block_size)
}

/// Computes block checksums of a byte stream fed in chunks of any size.
///
/// Whole blocks that arrive in one chunk are hashed in one call; blocks split across chunks are
/// hashed incrementally, so the result does not depend on how the stream was cut.
#[derive(Clone)]
pub struct BlockHasher {
    block_size: u64,
    partial: Xxh3,
    filled: u64,
    checksums: Vec<u64>,
}

impl std::fmt::Debug for BlockHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockHasher")
            .field("block_size", &self.block_size)
            .field("filled", &self.filled)
            .field("blocks", &self.checksums.len())
            .finish()
    }
}

impl BlockHasher {
    /// A hasher for blocks of `block_size` bytes (at least 1).
    pub fn new(block_size: u64) -> Self {
        BlockHasher {
            block_size: block_size.max(1),
            partial: Xxh3::new(),
            filled: 0,
            checksums: Vec::new(),
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.filled == 0 && bytes.len() as u64 >= self.block_size {
                let (block, rest) = bytes.split_at(self.block_size as usize);
                self.checksums.push(xxh3_64(block));
                bytes = rest;
                continue;
            }
            let want = (self.block_size - self.filled).min(bytes.len() as u64) as usize;
            let (head, rest) = bytes.split_at(want);
            self.partial.update(head);
            self.filled += want as u64;
            bytes = rest;
            if self.filled == self.block_size {
                self.checksums.push(self.partial.digest());
                self.partial.reset();
                self.filled = 0;
            }
        }
    }

    /// The checksums of the blocks completed so far (the last, partial block is not among them
    /// until [`BlockHasher::finish`]).
    pub fn checksums(&self) -> &[u64] {
        &self.checksums
    }

    /// Bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.checksums.len() as u64 * self.block_size + self.filled
    }

    /// Closes the last, possibly short, block and returns one checksum per block.
    pub fn finish(mut self) -> Vec<u64> {
        if self.filled > 0 {
            self.checksums.push(self.partial.digest());
        }
        self.checksums
    }
}

/// Checksums of `bytes` cut into blocks of `block_size`, in one pass.
pub fn block_checksums(bytes: &[u8], block_size: u64) -> Vec<u64> {
    bytes
        .chunks(block_size.max(1).min(usize::MAX as u64) as usize)
        .map(xxh3_64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_does_not_change_checksums() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = block_checksums(&data, 4096);
        assert_eq!(whole.len(), 3);
        for cut in [1usize, 7, 4095, 4096, 4097, 9999] {
            let mut h = BlockHasher::new(4096);
            for chunk in data.chunks(cut) {
                h.update(chunk);
            }
            assert_eq!(h.bytes_seen(), data.len() as u64);
            assert_eq!(h.finish(), whole, "cut {cut}");
        }
        assert!(BlockHasher::new(4096).finish().is_empty());
    }

    #[test]
    fn covering_blocks() {
        assert_eq!(blocks_covering(0..0, 10), 0..0);
        assert_eq!(blocks_covering(0..1, 10), 0..1);
        assert_eq!(blocks_covering(9..11, 10), 0..2);
        assert_eq!(blocks_covering(10..20, 10), 1..2);
        assert_eq!(block_count(0, 10), 0);
        assert_eq!(block_count(21, 10), 3);
    }
}
