//! Where batches are gathered into: the [`Buffers`] a caller's [`Allocate`] provides (pinned host
//! memory for a GPU copy, say), or the loader's own [`Pool`] of 64-byte-aligned buffers that
//! return to it for reuse when dropped.

use std::sync::{Arc, Mutex};

/// Buffers a batch is gathered into: one byte buffer per column.
pub trait Buffers: Send + 'static {
    /// The bytes of column `column` (in the loader's column order), at least as long as the
    /// allocation asked for. The loader writes the batch's rows to the front of it.
    fn column_mut(&mut self, column: usize) -> &mut [u8];

    /// The same bytes, to read.
    fn column(&self, column: usize) -> &[u8];
}

/// A source of [`Buffers`] for a [`Stream`](super::Stream): asked for one set per batch, on the
/// worker thread.
pub trait Allocate: Send + 'static {
    /// The buffers it makes.
    type Buffers: Buffers;

    /// Buffers for one batch: column `c` needs `lens[c]` bytes.
    ///
    /// # Errors
    ///
    /// Any error, reported by the stream as [`Error::Buffers`](crate::Error::Buffers).
    fn allocate(
        &mut self,
        lens: &[usize],
    ) -> std::result::Result<Self::Buffers, Box<dyn std::error::Error + Send + Sync>>;
}

/// The loader's own buffers ([`Loader::pool`](crate::Loader::pool)): 64-byte aligned, each
/// column's buffer back to the loader for reuse when it is dropped (with its batch, or on its own
/// once taken out with [`PooledBuffers::into_columns`]). Buffers hold no reference to the store:
/// buffers taken out of a batch ([`Batch::into_buffers`](super::Batch::into_buffers)) do not keep
/// the mapping alive.
pub struct Pool {
    state: Arc<PoolState>,
}

/// One batch's set of the loader's own buffers, one per column.
pub struct PooledBuffers {
    bufs: Vec<PooledBuffer>,
}

/// One column's buffer of the loader's own; back to the loader for reuse when dropped.
pub struct PooledBuffer {
    buf: Option<AlignedBuf>,
    column: usize,
    pool: Arc<PoolState>,
}

impl PooledBuffer {
    /// The bytes (at least the column's bytes of a full batch), 64-byte aligned.
    pub fn bytes(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], AlignedBuf::bytes)
    }

    /// The bytes, to write.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match self.buf.as_mut() {
            Some(b) => b.bytes_mut(),
            None => &mut [],
        }
    }
}

impl PooledBuffers {
    /// The buffers, one per column in the loader's order, each returning to the loader on its
    /// own when dropped: a caller that keeps one column of a batch keeps only that column's
    /// memory.
    pub fn into_columns(self) -> Vec<PooledBuffer> {
        self.bufs
    }
}

impl Buffers for PooledBuffers {
    fn column_mut(&mut self, column: usize) -> &mut [u8] {
        match self.bufs.get_mut(column) {
            Some(b) => b.bytes_mut(),
            None => &mut [],
        }
    }

    fn column(&self, column: usize) -> &[u8] {
        match self.bufs.get(column) {
            Some(b) => b.bytes(),
            None => &[],
        }
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let (Some(buf), Some(idle)) = (self.buf.take(), self.pool.idle.get(self.column)) {
            let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.pool.keep {
                idle.push(buf);
            }
        }
    }
}

impl Allocate for Pool {
    type Buffers = PooledBuffers;

    fn allocate(
        &mut self,
        lens: &[usize],
    ) -> std::result::Result<PooledBuffers, Box<dyn std::error::Error + Send + Sync>> {
        let state = &self.state;
        let mut bufs = Vec::with_capacity(lens.len());
        for (column, (&len, &full)) in lens.iter().zip(state.full.iter()).enumerate() {
            let reused = state
                .idle
                .get(column)
                .and_then(|idle| idle.lock().unwrap_or_else(|e| e.into_inner()).pop());
            let mut buf = reused.unwrap_or(AlignedBuf { blocks: Vec::new() });
            let len = len.max(full);
            buf.fit(len)
                .map_err(|_| format!("cannot allocate a buffer of {len} bytes for a batch"))?;
            bufs.push(PooledBuffer {
                buf: Some(buf),
                column,
                pool: Arc::clone(state),
            });
        }
        Ok(PooledBuffers { bufs })
    }
}

impl Pool {
    /// A handle on the buffers of `state`.
    pub(super) fn new(state: &Arc<PoolState>) -> Pool {
        Pool {
            state: Arc::clone(state),
        }
    }
}

/// The loader's idle buffers. Kept apart from the columns so that buffers a caller holds (a
/// binding's arrays) do not keep the store's mapping alive.
pub(super) struct PoolState {
    /// Each column's idle buffers.
    idle: Box<[Mutex<Vec<AlignedBuf>>]>,
    /// Idle buffer sets kept for reuse; more are freed.
    keep: usize,
    /// Bytes of each column's buffer: a full batch's, so that a set that held a short last batch
    /// serves a full one without growing.
    full: Box<[usize]>,
}

impl PoolState {
    /// No idle buffers yet, for columns whose full batches take `full` bytes each; up to `keep`
    /// idle sets are kept for reuse.
    pub(super) fn new(full: Box<[usize]>, keep: usize) -> Arc<PoolState> {
        Arc::new(PoolState {
            idle: (0..full.len()).map(|_| Mutex::new(Vec::new())).collect(),
            keep,
            full,
        })
    }
}

/// A 64-byte-aligned byte buffer: aligned for every dtype and for vector loads. Made of 64-byte
/// blocks so that no `unsafe` allocation is needed.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Block([u8; 64]);

struct AlignedBuf {
    blocks: Vec<Block>,
}

impl AlignedBuf {
    /// A buffer of at least `len` bytes, reusing `self`'s allocation when it is large enough.
    fn fit(&mut self, len: usize) -> Result<(), std::collections::TryReserveError> {
        let blocks = len.div_ceil(64);
        if self.blocks.len() < blocks {
            self.blocks.try_reserve_exact(blocks - self.blocks.len())?;
            self.blocks.resize(blocks, Block([0; 64]));
        }
        Ok(())
    }

    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.blocks)
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(&mut self.blocks)
    }
}
