//! The streaming, atomic `.mmt` writer.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use mmtensor_format::{BlockHasher, Layout, TensorInfo};
use xxhash_rust::xxh3::Xxh3;

use crate::{AtomicFile, Error, Result};

/// How many written bytes the writer lets accumulate before it starts their writeback.
const WRITEBACK_STEP: u64 = 32 << 20;
/// Size of the writer's buffer; larger chunks go straight to the file.
const BUFFER: usize = 1 << 20;
/// Zeros for padding (padding is shorter than the largest alignment only in pathological
/// layouts, which are written in several pieces).
pub(crate) static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
/// Checksums encoded per piece of the table `finish` writes (64 KiB of table bytes).
const TABLE_PIECE: usize = 8 * 1024;

/// Writes one `.mmt` store from a [`Layout`], tensor by tensor, chunk by chunk.
///
/// The bytes go to an [`AtomicFile`]: a hidden temporary file beside the target
/// (`.NAME.XXXXXX.partial`). [`StoreWriter::finish`] writes the checksum table and the header, then
/// commits it (fsync, rename over the target, fsync of the folder). Until then the target is untouched: an error, a panic or a
/// dropped writer removes the temporary file, and even a `kill -9` leaves at most that hidden
/// temporary file behind, never a partial file under the target name. An existing target is replaced
/// by the rename, never truncated, so a process that has it mapped keeps reading the old, complete
/// file.
///
/// Any error poisons the writer: every later call returns [`Error::Poisoned`] and
/// [`StoreWriter::finish`] refuses, so a caller that carries on after a failed write can never
/// commit a store whose data is short or shifted under a valid header.
///
/// Memory: the writer's 1 MiB buffer plus the checksum table it keeps until
/// [`StoreWriter::finish`] writes it, 8 bytes per checksum block of the store: 8 KiB per GiB of
/// tensor data at the default 1 MiB block size, 2 MiB per GiB at the smallest, 4 KiB. `finish`
/// encodes the table in 64 KiB pieces, so it never holds a second copy.
///
/// ```
/// use mmtensor_format::{Dtype, LayoutBuilder};
/// use mmtensor_convert::StoreWriter;
///
/// let dir = tempfile::tempdir()?;
/// let mut plan = LayoutBuilder::new();
/// plan.tensor("x", Dtype::U8, &[10])?;
/// let mut w = StoreWriter::create(dir.path().join("out.mmt"), plan.build()?)?;
/// w.begin_tensor("x")?;
/// w.write_chunk(&[1, 2, 3, 4])?;
/// w.write_chunk(&[5, 6, 7, 8, 9, 10])?;
/// w.end_tensor()?;
/// w.finish()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct StoreWriter {
    layout: Layout,
    tmp: AtomicFile,
    out: BufWriter<File>,
    /// Absolute position of the next byte written.
    pos: u64,
    /// Bytes before this position have been handed to the kernel's writeback.
    written_back: u64,
    /// Index of the next tensor to begin (or of the open one).
    next: usize,
    open: Option<OpenTensor>,
    checksums: Vec<u64>,
    /// Set by any failed call; every later call refuses.
    poisoned: bool,
}

#[derive(Debug)]
struct OpenTensor {
    given: u64,
    hasher: BlockHasher,
}

impl StoreWriter {
    /// Creates the temporary file beside `target` for a store laid out as `layout`.
    ///
    /// # Errors
    /// [`Error::Io`] when the temporary file cannot be created (the folder is missing or read-only).
    pub fn create(target: impl AsRef<Path>, layout: Layout) -> Result<StoreWriter> {
        Self::create_inner(target.as_ref(), layout, true)
    }

    /// As [`StoreWriter::create`], without reserving the file's length on disk first.
    ///
    /// For layouts whose sizes come from claims nothing has checked yet (an `.npz` member's
    /// declared size is only proven by inflating it): reserving them would let an 80-byte archive
    /// claiming terabytes take that much disk (or RAM, on tmpfs) before its lie is found.
    ///
    /// # Errors
    /// As [`StoreWriter::create`].
    pub fn create_unreserved(target: impl AsRef<Path>, layout: Layout) -> Result<StoreWriter> {
        Self::create_inner(target.as_ref(), layout, false)
    }

    fn create_inner(target: &Path, layout: Layout, reserve_space: bool) -> Result<StoreWriter> {
        let tmp = AtomicFile::create(target)?;
        let file = tmp
            .file()
            .try_clone()
            .map_err(Error::io("cannot open", tmp.temp_path()))?;
        if reserve_space {
            reserve(&file, layout.file_len())
                .map_err(Error::io("cannot reserve disk space to write", target))?;
        }
        let mut w = StoreWriter {
            out: BufWriter::with_capacity(BUFFER, file),
            tmp,
            pos: 0,
            written_back: 0,
            next: 0,
            open: None,
            checksums: Vec::with_capacity(layout.header().total_blocks().min(1 << 20) as usize),
            poisoned: false,
            layout,
        };
        // The header is written last; its bytes are reserved here as zeros so the data section
        // lands at its planned offset with plain sequential writes.
        let start = w.layout.data_start();
        w.pad_to(start)?;
        Ok(w)
    }

    /// The layout being written.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The path the store will have once finished.
    pub fn target(&self) -> &Path {
        self.tmp.target()
    }

    /// Runs one call, refusing it if an earlier one failed and poisoning the writer if it fails.
    fn guarded<T>(&mut self, call: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.poisoned {
            return Err(Error::Poisoned {
                path: self.tmp.target().to_path_buf(),
            });
        }
        let result = call(self);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// The tensor that the next [`StoreWriter::begin_tensor`] must name, if any is left.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        if self.open.is_some() {
            return None;
        }
        self.layout.header().tensors.get(self.next)
    }

    /// Opens the next planned tensor for writing. Tensors are written in plan order.
    ///
    /// # Errors
    /// [`Error::OutOfOrder`] when `name` is not the next planned tensor, or a tensor is still open;
    /// [`Error::Io`]; [`Error::Poisoned`] after any earlier error.
    pub fn begin_tensor(&mut self, name: &str) -> Result<()> {
        self.guarded(|w| w.begin_tensor_inner(name))
    }

    fn begin_tensor_inner(&mut self, name: &str) -> Result<()> {
        let expected = self.layout.header().tensors.get(self.next);
        if self.open.is_some() || expected.map(|t| t.name.as_str()) != Some(name) {
            return Err(Error::OutOfOrder {
                expected: expected.map(|t| t.name.clone()),
                got: name.to_owned(),
            });
        }
        let Some(start) = self.layout.tensor_start(self.next) else {
            return Err(Error::OutOfOrder {
                expected: None,
                got: name.to_owned(),
            });
        };
        self.pad_to(start)?;
        self.open = Some(OpenTensor {
            given: 0,
            hasher: BlockHasher::new(self.layout.header().block_size.get()),
        });
        Ok(())
    }

    /// Appends bytes to the open tensor.
    ///
    /// # Errors
    /// [`Error::NoOpenTensor`], [`Error::TooManyBytes`] (nothing of the chunk is written) or
    /// [`Error::Io`]; [`Error::Poisoned`] after any earlier error.
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<()> {
        self.guarded(|w| w.write_chunk_inner(bytes))
    }

    fn write_chunk_inner(&mut self, bytes: &[u8]) -> Result<()> {
        let open = self.open.as_ref().ok_or(Error::NoOpenTensor)?;
        // An open tensor is always the one at `next`.
        let info = &self.layout.header().tensors[self.next];
        let given = open.given.saturating_add(bytes.len() as u64);
        if given > info.length {
            return Err(Error::TooManyBytes {
                tensor: info.name.clone(),
                expected: info.length,
                given,
            });
        }
        // The writer's state follows only bytes the file accepted.
        self.out
            .write_all(bytes)
            .map_err(Error::io("cannot write to", self.tmp.temp_path()))?;
        let open = self.open.as_mut().ok_or(Error::NoOpenTensor)?;
        open.hasher.update(bytes);
        open.given = given;
        self.pos += bytes.len() as u64;
        if self.pos - self.written_back >= WRITEBACK_STEP {
            self.start_writeback()?;
        }
        Ok(())
    }

    /// Starts the kernel's writeback of everything written so far, without waiting for it.
    ///
    /// A store smaller than the kernel's dirty threshold (10% of RAM by default) would otherwise sit
    /// in the page cache until `finish`'s fsync, which then writes it all while nothing else happens.
    /// Starting writeback every [`WRITEBACK_STEP`] overlaps the disk with reading, checksumming and
    /// casting, so the final fsync has little left to do. Linux only; elsewhere a no-op.
    fn start_writeback(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(Error::io("cannot write to", self.tmp.temp_path()))?;
        start_writeback(
            self.out.get_ref(),
            self.written_back,
            self.pos - self.written_back,
        );
        self.written_back = self.pos;
        Ok(())
    }

    /// Closes the open tensor.
    ///
    /// # Errors
    /// [`Error::NoOpenTensor`] or [`Error::TooFewBytes`]; [`Error::Poisoned`] after any earlier
    /// error.
    pub fn end_tensor(&mut self) -> Result<()> {
        self.guarded(Self::end_tensor_inner)
    }

    fn end_tensor_inner(&mut self) -> Result<()> {
        let info = self.layout.header().tensors.get(self.next);
        let (Some(info), Some(open)) = (info, self.open.as_ref()) else {
            return Err(Error::NoOpenTensor);
        };
        if open.given != info.length {
            return Err(Error::TooFewBytes {
                tensor: info.name.clone(),
                expected: info.length,
                given: open.given,
            });
        }
        let open = self.open.take().expect("checked above");
        self.checksums.extend(open.hasher.finish());
        self.next += 1;
        Ok(())
    }

    /// Writes a whole tensor from `reader`, which must yield exactly the tensor's bytes.
    ///
    /// # Errors
    /// As [`StoreWriter::begin_tensor`], [`StoreWriter::write_chunk`] and
    /// [`StoreWriter::end_tensor`]; a reader error is [`Error::Io`] naming the target.
    pub fn write_tensor_from(&mut self, name: &str, reader: impl Read) -> Result<()> {
        self.guarded(|w| w.write_tensor_from_inner(name, reader))
    }

    fn write_tensor_from_inner(&mut self, name: &str, mut reader: impl Read) -> Result<()> {
        self.begin_tensor_inner(name)?;
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::io(
                        "cannot read the bytes of a tensor for",
                        self.tmp.target(),
                    )(e))
                }
            };
            self.write_chunk_inner(&buf[..n])?;
        }
        self.end_tensor_inner()
    }

    /// Writes a whole tensor from memory.
    ///
    /// # Errors
    /// As [`StoreWriter::write_tensor_from`].
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.begin_tensor(name)?;
        self.write_chunk(bytes)?;
        self.end_tensor()
    }

    /// Writes the checksum table and the header, makes the file durable and moves it to the target.
    ///
    /// # Errors
    /// [`Error::NotEnded`] when the open tensor was given all its bytes but
    /// [`StoreWriter::end_tensor`] was not called; [`Error::TooFewBytes`] when a tensor is still
    /// open without all its bytes or was never written, [`Error::Poisoned`]
    /// after any earlier error, or [`Error::Io`]: the temporary file is removed and the target is
    /// untouched. [`Error::NotDurable`] when only
    /// the folder's fsync after the rename failed: the target holds the new store (see
    /// [`AtomicFile::commit`]).
    pub fn finish(self) -> Result<PathBuf> {
        self.finish_uncommitted()?.0.commit()
    }

    /// [`StoreWriter::finish`] up to, not including, the commit: the complete temporary file, and
    /// the header checksum its preamble holds (bytes 24..32), which a dataset manifest records.
    pub(crate) fn finish_uncommitted(mut self) -> Result<(AtomicFile, u64)> {
        if self.poisoned {
            return Err(Error::Poisoned {
                path: self.tmp.target().to_path_buf(),
            });
        }
        let tensors = &self.layout.header().tensors;
        if let (Some(info), Some(open)) = (tensors.get(self.next), &self.open) {
            if open.given == info.length {
                return Err(Error::NotEnded {
                    tensor: info.name.clone(),
                    length: info.length,
                });
            }
        }
        if let Some(info) = tensors.get(self.next) {
            return Err(Error::TooFewBytes {
                tensor: info.name.clone(),
                expected: info.length,
                given: self.open.as_ref().map_or(0, |o| o.given),
            });
        }
        let table_start = self.layout.checksum_table_start();
        self.pad_to(table_start)?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io("cannot write to", self.tmp.temp_path())(e.into_error()))?;
        let header_checksum =
            write_tail(&file, self.tmp.temp_path(), &self.layout, &self.checksums)?;
        drop(file);
        Ok((self.tmp, header_checksum))
    }

    fn pad_to(&mut self, offset: u64) -> Result<()> {
        debug_assert!(offset >= self.pos);
        while self.pos < offset {
            let n = (offset - self.pos).min(ZEROS.len() as u64) as usize;
            self.out
                .write_all(&ZEROS[..n])
                .map_err(Error::io("cannot write to", self.tmp.temp_path()))?;
            self.pos += n as u64;
        }
        Ok(())
    }
}

/// Writes all of `buf` into `file` at byte `at` (`pwrite`), leaving the file's cursor alone.
pub(crate) fn pwrite_all(file: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, at)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut at) = (buf, at);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_write(file, buf, at) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    at += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Starts the kernel's writeback of `file`'s dirty pages from byte `start` on (all of them for 0),
/// without waiting: see [`StoreWriter`]'s `start_writeback`. Linux only; elsewhere a no-op, and
/// advisory everywhere (the final fsync reports any real I/O error).
pub(crate) fn start_writeback(file: &File, start: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if let (Ok(start), Ok(len)) = (libc::off64_t::try_from(start), libc::off64_t::try_from(len))
        {
            // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open.
            unsafe {
                libc::sync_file_range(file.as_raw_fd(), start, len, libc::SYNC_FILE_RANGE_WRITE)
            };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, start, len);
}

/// Writes what a store's file holds besides its data, once every tensor is written: the checksum
/// table at its planned offset and the head (preamble and header) at the start, by positioned
/// writes. Returns the header checksum the preamble holds (bytes 24..32), which a dataset manifest
/// records.
///
/// The table (little-endian u64s, as `encode_checksum_table` lays it out) and its xxh3 are
/// produced piece by piece: `checksums` stays the only full copy in memory. The zeros between the
/// head and the data start are the caller's (written, or never-written bytes of a new file).
pub(crate) fn write_tail(
    file: &File,
    path: &Path,
    layout: &Layout,
    checksums: &[u64],
) -> Result<u64> {
    let io = |op| Error::io(op, path);
    let mut at = layout.checksum_table_start();
    let mut table_hash = Xxh3::new();
    let mut piece = Vec::with_capacity(TABLE_PIECE.min(checksums.len()) * 8);
    for chunk in checksums.chunks(TABLE_PIECE) {
        piece.clear();
        piece.extend(chunk.iter().flat_map(|c| c.to_le_bytes()));
        table_hash.update(&piece);
        pwrite_all(file, &piece, at).map_err(io("cannot write to"))?;
        at += piece.len() as u64;
    }
    let prefix = layout.encode_head(table_hash.digest());
    pwrite_all(file, &prefix, 0).map_err(io("cannot write to"))?;
    Ok(u64::from_le_bytes(
        prefix[24..32]
            .try_into()
            .expect("the head holds the 32-byte preamble"),
    ))
}

/// Allocates the whole file's blocks up front where the filesystem can (Linux `fallocate`).
///
/// A store's final length is known before its first byte is written, so this turns "disk full"
/// into an error before anything is written instead of after gigabytes, and lets the filesystem lay
/// the file out in large extents instead of allocating block by block during writeback (like `cp`,
/// which also fallocates). Filesystems without `fallocate` (`EOPNOTSUPP`) just skip it; nothing is
/// ever emulated by writing zeros.
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(len) = libc::off_t::try_from(len) else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        // SAFETY: fallocate only reads its integer arguments; the descriptor is open for the call.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINTR) => Ok(()),
                _ => Err(err),
            };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, len);
    Ok(())
}
