//! Where a store's bytes live: a read-only memory mapping, or an aligned heap copy.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use bytemuck::{Pod, Zeroable};
use memmap2::{Mmap, MmapOptions};

use crate::{Error, Result};

/// The bytes of a whole file. They never move and never change while the value lives, which is what
/// lets views (and the raw pointers a binding takes from them) outlive any one borrow of `Backing`
/// as long as its owner (the store's `Arc`) lives.
pub(crate) enum Backing {
    /// A read-only shared mapping of the file.
    Map(Mmap),
    /// A copy on the heap, 64-byte aligned, `len` bytes long.
    Heap { chunks: Vec<Chunk>, len: usize },
}

/// The unit of the heap copy: its alignment (64) is at least that of every element type, so a
/// tensor aligned in the file is aligned in the copy too.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Chunk([u8; 64]);

impl Backing {
    /// Maps `file` (of `len` bytes) read-only.
    ///
    /// # Safety
    /// As [`crate::Store::open`]: the file must not be modified or truncated while the mapping lives.
    pub(crate) unsafe fn map(path: &Path, file: &File, len: u64) -> Result<Backing> {
        let len = usize::try_from(len).map_err(|_| Error::TooLarge {
            path: path.to_owned(),
            len,
        })?;
        // SAFETY: the caller promises the file is not modified or truncated while mapped. The
        // length is the one the caller validates against, so views never reach past it.
        let map = unsafe { MmapOptions::new().len(len).map(file) }.map_err(|source| Error::Io {
            path: path.to_owned(),
            action: "map",
            source,
        })?;
        Ok(Backing::Map(map))
    }

    /// Reads `len` bytes of `file` into an aligned heap buffer.
    pub(crate) fn read(path: &Path, mut file: &File, len: u64) -> Result<Backing> {
        let n = usize::try_from(len).map_err(|_| Error::TooLarge {
            path: path.to_owned(),
            len,
        })?;
        let io = |source| Error::Io {
            path: path.to_owned(),
            action: "read",
            source,
        };
        // Zeroed by the allocator (fresh pages from the kernel are already zero), so the only pass
        // over the memory is the read itself.
        let mut chunks: Vec<Chunk> =
            bytemuck::allocation::try_zeroed_vec(n.div_ceil(64)).map_err(|()| Error::TooLarge {
                path: path.to_owned(),
                len,
            })?;
        let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut chunks);
        // A file that shrank since it was measured is an error rather than a shorter store.
        file.read_exact(&mut buf[..n]).map_err(io)?;
        Ok(Backing::Heap { chunks, len: n })
    }

    /// The whole file.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Heap { chunks, len } => &bytemuck::cast_slice(chunks)[..*len],
        }
    }

    /// The mapping, when the bytes are mapped.
    pub(crate) fn mmap(&self) -> Option<&Mmap> {
        match self {
            Backing::Map(m) => Some(m),
            Backing::Heap { .. } => None,
        }
    }
}
