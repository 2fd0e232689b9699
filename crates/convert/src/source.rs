//! What every reader shares: where a stored array's bytes live ([`Location`]), the array as
//! planned ([`Part`]), and the stream that turns it into chunks of C-order little-endian bytes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmtensor_format::{BlockHasher, Dtype};

use crate::transform::{swap_bytes, swap_unit};
use crate::{Error, Result};

/// Where one stored array's bytes live.
#[derive(Clone, Debug)]
pub(crate) enum Location {
    /// A byte range of a plain file (`.npy` data, a safetensors tensor).
    File { path: PathBuf, offset: u64 },
    /// A member of a zip archive (`.npz`); the data follows `header_len` bytes of npy header.
    Member {
        path: PathBuf,
        index: usize,
        member: String,
        header_len: u64,
    },
}

impl Location {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Location::File { path, .. } | Location::Member { path, .. } => path,
        }
    }

    pub(crate) fn member(&self) -> Option<&str> {
        match self {
            Location::File { .. } => None,
            Location::Member { member, .. } => Some(member),
        }
    }

    /// `path` or `path:member`, for messages and metadata.
    pub(crate) fn describe(&self) -> String {
        match self.member() {
            Some(m) => format!("{}:{m}", self.path().display()),
            None => self.path().display().to_string(),
        }
    }

    fn data_offset(&self) -> u64 {
        match self {
            Location::File { offset, .. } => *offset,
            Location::Member { header_len, .. } => *header_len,
        }
    }
}

/// One stored array: its place, its stored dtype and byte order, its shape and memory order.
#[derive(Clone, Debug)]
pub(crate) struct Part {
    pub(crate) location: Location,
    /// The dtype of the stored elements (after any input-dtype rule).
    pub(crate) dtype: Dtype,
    /// The descr (npy) or dtype name (safetensors) as stored.
    pub(crate) descr: String,
    pub(crate) big_endian: bool,
    /// An input-dtype rule named the dtype (raw void data, or a reinterpretation).
    pub(crate) reinterpreted: bool,
    pub(crate) fortran: bool,
    pub(crate) shape: Vec<u64>,
    /// Data bytes.
    pub(crate) len: u64,
    /// The stored block checksums the bytes must match as they stream (an `.mmt` input).
    pub(crate) verify: Option<Arc<BlockCheck>>,
}

/// The block checksums of one stored tensor: its bytes, cut into blocks of `block_size` from its
/// start (the last one short), hash to `sums`.
#[derive(Debug)]
pub(crate) struct BlockCheck {
    pub(crate) block_size: u64,
    pub(crate) sums: Vec<u64>,
    /// The tensor's first byte in its file, for messages.
    pub(crate) offset: u64,
}

/// Checks a tensor's bytes against its [`BlockCheck`] as they stream, each block as soon as its
/// last byte has arrived.
struct Checker<'a> {
    check: &'a BlockCheck,
    hasher: BlockHasher,
    checked: usize,
}

impl Checker<'_> {
    fn update(&mut self, part: &Part, tensor: &str, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.checked = compare(
            part,
            tensor,
            self.check,
            self.hasher.checksums(),
            self.checked,
        )?;
        Ok(())
    }

    fn finish(self, part: &Part, tensor: &str) -> Result<()> {
        let all = self.hasher.finish();
        let checked = compare(part, tensor, self.check, &all, self.checked)?;
        if checked != self.check.sums.len() {
            // The stream's length was checked against the part's, which the header gives: this
            // holds unless the table and the header disagree, which the table checksum rules out.
            return Err(part.checksum_error(tensor, self.check, checked));
        }
        Ok(())
    }
}

/// Compares the block checksums `done[from..]` with the stored ones; returns how many blocks are
/// now checked.
fn compare(
    part: &Part,
    tensor: &str,
    check: &BlockCheck,
    done: &[u64],
    from: usize,
) -> Result<usize> {
    for (b, sum) in done.iter().enumerate().skip(from) {
        if check.sums.get(b) != Some(sum) {
            return Err(part.checksum_error(tensor, check, b));
        }
    }
    Ok(done.len().max(from))
}

/// Fills `buf` from `file` at byte `at` with positioned reads (`pread`), which leave the file's
/// cursor alone and, unlike a mapping, turn a file shorter than expected into an
/// [`io::ErrorKind::UnexpectedEof`] error instead of a `SIGBUS`.
pub(crate) fn pread_exact(file: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, at)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut at) = (buf, at);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(file, buf, at) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    at += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Writes all of `buf` to `file` at byte `at` with positioned writes (`pwrite`).
pub(crate) fn pwrite_all(file: &File, buf: &[u8], at: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, at)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut at) = (buf, at);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_write(file, buf, at) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    at += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
pub(crate) fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An I/O error while reading: inside a zip member it is the archive's (bad CRC, bad deflate
/// stream, a member larger than declared); otherwise a plain read error.
pub(crate) fn io_or_zip(e: io::Error, path: &Path, member: Option<&str>) -> Error {
    match member {
        Some(m) => Error::Zip {
            path: path.to_path_buf(),
            member: Some(m.to_owned()),
            message: format!(
                "cannot inflate the member: {e} (the archive is damaged: its CRC or sizes do not match the data; re-create it with np.savez)"
            ),
        },
        None => Error::io("cannot read", path)(e),
    }
}

/// What a part's stream delivers to: chunks of C-order little-endian bytes, whole elements each.
pub(crate) type Sink<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;

impl Part {
    pub(crate) fn size_error(&self, tensor: &str, found: Option<u64>) -> Error {
        Error::DataSize {
            path: self.location.path().to_path_buf(),
            member: self.location.member().map(str::to_owned),
            tensor: tensor.to_owned(),
            offset: self.location.data_offset(),
            expected: self.len,
            found,
        }
    }

    /// Streams the part's bytes, in C order and little-endian, in chunks of at most `chunk` bytes.
    ///
    /// `buf` is reused across calls. `spill_dir` is where a Fortran-order npz member is inflated
    /// to a temporary file for random access.
    pub(crate) fn stream(
        &self,
        tensor: &str,
        chunk: usize,
        buf: &mut Vec<u8>,
        spill_dir: &Path,
        sink: &mut Sink<'_>,
    ) -> Result<()> {
        let es = self.dtype.size();
        let chunk = (chunk / es).max(1) * es;
        let unit = swap_unit(self.dtype);
        let swap = self.big_endian;
        let mut checker = self.verify.as_deref().map(|check| Checker {
            check,
            hasher: BlockHasher::new(check.block_size),
            checked: 0,
        });
        let mut deliver = |bytes: &mut [u8]| {
            if let Some(c) = checker.as_mut() {
                c.update(self, tensor, bytes)?;
            }
            if swap {
                swap_bytes(bytes, unit);
            }
            sink(bytes)
        };
        if self.fortran {
            return self.stream_fortran(tensor, chunk, buf, spill_dir, &mut deliver);
        }
        if let Location::File { path, offset } = &self.location {
            self.stream_file(tensor, path, *offset, chunk, &mut deliver)?;
            return match checker {
                Some(c) => c.finish(self, tensor),
                None => Ok(()),
            };
        }
        self.with_reader(tensor, |r| {
            let mut left = self.len;
            while left > 0 {
                let n = chunk.min(usize::try_from(left).unwrap_or(usize::MAX));
                buf.resize(n, 0);
                let got = read_full(r, &mut buf[..n]).map_err(|e| self.read_error(e))?;
                if got < n {
                    return Err(self.size_error(tensor, Some(self.len - left + got as u64)));
                }
                deliver(&mut buf[..n])?;
                left -= n as u64;
            }
            Ok(())
        })
    }

    /// Streams a byte range of a plain file with a reader thread, so that reading the next chunk
    /// overlaps casting, hashing and writing this one. Two chunk buffers circulate between the
    /// threads; memory stays at two chunks.
    fn stream_file(
        &self,
        tensor: &str,
        path: &Path,
        offset: u64,
        chunk: usize,
        deliver: &mut dyn FnMut(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        use std::sync::mpsc::sync_channel;
        let mut file = File::open(path).map_err(Error::io("cannot open", path))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(Error::io("cannot seek in", path))?;
        let len = self.len;
        std::thread::scope(|scope| {
            // The channels live inside the scope's closure: when the consumer below returns early
            // (an error in `deliver`, a cancellation), its ends are dropped before the scope joins
            // the reader thread, so a reader blocked on either channel wakes up and exits instead
            // of deadlocking the join.
            let (full_tx, full_rx) = sync_channel::<io::Result<(Vec<u8>, usize, usize)>>(1);
            let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(2);
            for _ in 0..2 {
                // Cannot fail: the channel has room for both and the receiver is alive.
                let _ = empty_tx.send(Vec::new());
            }
            scope.spawn(move || {
                let mut left = len;
                while left > 0 {
                    let Ok(mut b) = empty_rx.recv() else { return };
                    let n = chunk.min(usize::try_from(left).unwrap_or(usize::MAX));
                    b.resize(n, 0);
                    let r = read_full(&mut file, &mut b[..n]);
                    let stop = !matches!(r, Ok(k) if k == n);
                    if full_tx.send(r.map(|k| (b, k, n))).is_err() || stop {
                        return;
                    }
                    left -= n as u64;
                }
            });
            let mut done = 0u64;
            while done < len {
                let Ok(msg) = full_rx.recv() else {
                    return Err(self.size_error(tensor, Some(done)));
                };
                let (mut b, k, n) = msg.map_err(|e| self.read_error(e))?;
                if k < n {
                    return Err(self.size_error(tensor, Some(done + k as u64)));
                }
                deliver(&mut b[..k])?;
                done += k as u64;
                let _ = empty_tx.send(b);
            }
            Ok(())
        })
    }

    /// A block of an `.mmt` input whose bytes do not hash to its stored checksum.
    fn checksum_error(&self, tensor: &str, check: &BlockCheck, block: usize) -> Error {
        let start = (block as u64).saturating_mul(check.block_size);
        let end = start.saturating_add(check.block_size).min(self.len);
        Error::InputChecksum {
            path: self.location.path().to_path_buf(),
            tensor: Some(tensor.to_owned()),
            block: block as u64,
            offset: check.offset.saturating_add(start),
            end: check.offset.saturating_add(end),
        }
    }

    pub(crate) fn read_error(&self, e: io::Error) -> Error {
        io_or_zip(e, self.location.path(), self.location.member())
    }

    pub(crate) fn location_offset(&self) -> u64 {
        match &self.location {
            Location::File { offset, .. } => *offset,
            Location::Member { header_len, .. } => *header_len,
        }
    }
}
