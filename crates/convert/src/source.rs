//! Readers: headers at plan time, bounded streams of C-order little-endian bytes at write time.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use mmtensor_format::npy::{self, ByteOrder, NpyHeader};
use mmtensor_format::Dtype;

use crate::transform::{fortran_is_c, swap_bytes, swap_unit, FortranToC};
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
    pub(crate) fortran: bool,
    pub(crate) shape: Vec<u64>,
    /// Data bytes.
    pub(crate) len: u64,
}

/// Reads the npy header at the start of `r`, returning it with the bytes it took.
pub(crate) fn read_npy_header(
    r: &mut impl Read,
    path: &Path,
    member: Option<&str>,
) -> Result<NpyHeader> {
    let npy_err = |source| Error::Npy {
        path: path.to_path_buf(),
        member: member.map(str::to_owned),
        source,
    };
    let mut prefix = vec![0u8; 12];
    let got = read_full(r, &mut prefix).map_err(|e| io_or_zip(e, path, member))?;
    prefix.truncate(got);
    let need = npy::required_prefix_len(&prefix).map_err(npy_err)?;
    if need > got {
        prefix.resize(need, 0);
        let more = read_full(r, &mut prefix[got..]).map_err(|e| io_or_zip(e, path, member))?;
        prefix.truncate(got + more);
    }
    npy::parse_header(&prefix).map_err(npy_err)
}

/// Builds the [`Part`] of an npy header, resolving void dtypes with `input_dtype`.
pub(crate) fn npy_part(
    header: NpyHeader,
    location: Location,
    tensor: &str,
    input_dtype: Option<Dtype>,
) -> Result<Part> {
    let member = location.member().map(str::to_owned);
    let path = location.path().to_path_buf();
    let dtype = match (header.dtype, input_dtype) {
        (_, Some(d)) if d.size() != header.item_size => {
            return Err(Error::InputDtypeSize {
                path,
                member,
                tensor: tensor.to_owned(),
                descr: header.descr,
                size: header.item_size,
                dtype: d,
            })
        }
        (_, Some(d)) => d,
        (Some(d), None) => d,
        (None, None) => {
            return Err(Error::NeedsInputDtype {
                path,
                member,
                tensor: tensor.to_owned(),
                descr: header.descr,
                size: header.item_size,
            })
        }
    };
    let len = header.data_len().map_err(|source| Error::Npy {
        path: path.clone(),
        member: member.clone(),
        source,
    })?;
    let big_endian = header.byte_order == ByteOrder::Big && swap_unit(dtype) > 1;
    Ok(Part {
        location,
        dtype,
        descr: header.descr,
        big_endian,
        fortran: header.fortran_order && !fortran_is_c(&header.shape),
        shape: header.shape,
        len,
    })
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

pub(crate) fn zip_error(path: &Path, member: Option<&str>, e: zip::result::ZipError) -> Error {
    Error::Zip {
        path: path.to_path_buf(),
        member: member.map(str::to_owned),
        message: format!("not a readable .npz (zip) archive: {e}"),
    }
}

/// What a part's stream delivers to: chunks of C-order little-endian bytes, whole elements each.
pub(crate) type Sink<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;

impl Part {
    fn size_error(&self, tensor: &str, found: Option<u64>) -> Error {
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
        let mut deliver = |bytes: &mut [u8]| {
            if swap {
                swap_bytes(bytes, unit);
            }
            sink(bytes)
        };
        if self.fortran {
            return self.stream_fortran(tensor, chunk, buf, spill_dir, &mut deliver);
        }
        if let Location::File { path, offset } = &self.location {
            return self.stream_file(tensor, path, *offset, chunk, &mut deliver);
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

    fn read_error(&self, e: io::Error) -> Error {
        io_or_zip(e, self.location.path(), self.location.member())
    }

    /// Runs `f` on a reader positioned at the first data byte; for a member, checks after `f`
    /// that the member ends exactly there (which also makes the zip reader check the CRC).
    fn with_reader(&self, tensor: &str, f: impl FnOnce(&mut dyn Read) -> Result<()>) -> Result<()> {
        match &self.location {
            Location::File { path, offset } => {
                let mut file = File::open(path).map_err(Error::io("cannot open", path))?;
                file.seek(SeekFrom::Start(*offset))
                    .map_err(Error::io("cannot seek in", path))?;
                f(&mut file)
            }
            Location::Member {
                path,
                index,
                member,
                header_len,
            } => {
                let file = File::open(path).map_err(Error::io("cannot open", path))?;
                let mut zip = zip::ZipArchive::new(file).map_err(|e| zip_error(path, None, e))?;
                let mut m = zip
                    .by_index(*index)
                    .map_err(|e| zip_error(path, Some(member), e))?;
                io::copy(&mut (&mut m).take(*header_len), &mut io::sink())
                    .map_err(|e| io_or_zip(e, path, Some(member)))?;
                f(&mut m)?;
                let mut probe = [0u8; 1];
                match read_full(&mut m, &mut probe) {
                    Ok(0) => Ok(()),
                    Ok(_) => Err(self.size_error(tensor, None)),
                    Err(e) => Err(io_or_zip(e, path, Some(member))),
                }
            }
        }
    }

    fn stream_fortran(
        &self,
        tensor: &str,
        chunk: usize,
        buf: &mut Vec<u8>,
        spill_dir: &Path,
        deliver: &mut dyn FnMut(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        // Random access is needed: map the .npy itself, or inflate a member to a spill file.
        let (file, offset, map_path) = match &self.location {
            Location::File { path, offset } => (
                File::open(path).map_err(Error::io("cannot open", path))?,
                *offset,
                path.clone(),
            ),
            Location::Member { .. } => {
                let mut spill = tempfile::tempfile_in(spill_dir)
                    .map_err(Error::io("cannot create a spill file in", spill_dir))?;
                self.with_reader(tensor, |r| {
                    let copied = io::copy(&mut r.take(self.len), &mut spill)
                        .map_err(|e| self.read_error(e))?;
                    if copied < self.len {
                        return Err(self.size_error(tensor, Some(copied)));
                    }
                    Ok(())
                })?;
                spill
                    .flush()
                    .map_err(Error::io("cannot write a spill file in", spill_dir))?;
                (spill, 0, spill_dir.to_path_buf())
            }
        };
        let file_len = file
            .metadata()
            .map_err(Error::io("cannot stat", &map_path))?
            .len();
        let end = offset.saturating_add(self.len);
        if file_len < end {
            return Err(self.size_error(tensor, Some(file_len.saturating_sub(offset))));
        }
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: the mapping is read-only and private to this call. The input (or our own
        // anonymous spill file) must not be truncated by another process while we read it; as
        // for every reader of a mapped file, that is the caller's contract, documented on
        // `convert`. The length was checked against the file just above.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }
            .map_err(Error::io("cannot map", &map_path))?;
        let src = map_slice(&map, offset, self.len);
        let mut t = FortranToC::new(&self.shape, self.dtype.size(), chunk);
        while !t.is_done() {
            t.next_chunk(src, buf);
            deliver(buf)?;
        }
        Ok(())
    }
}

fn map_slice(map: &Mmap, offset: u64, len: u64) -> &[u8] {
    // Offsets were checked against the file length before mapping.
    &map[offset as usize..(offset + len) as usize]
}
