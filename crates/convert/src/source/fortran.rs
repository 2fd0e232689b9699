//! A Fortran-order array streamed in C order: bounded positioned reads of the `.npy` (or of a spill
//! file a member is first inflated to), reordered by [`FortranToC`], or, for a matrix whose column
//! runs are short, transposed in tiles into a spill file read back in order.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::source::part::{Location, Part};
use crate::source::read::pread_exact;
use crate::transform::{transpose_tiles, FortranToC, ReadAt};
use crate::{Error, Result};

/// Writes all of `buf` to `file` at byte `at` with positioned writes (`pwrite`).
fn pwrite_all(file: &File, buf: &[u8], at: u64) -> io::Result<()> {
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

/// The bytes of an array at `offset` in a file, read with positioned reads (`pread`).
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl ReadAt for FileAt<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = self
            .offset
            .checked_add(offset)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        pread_exact(self.file, buf, at)
    }
}

impl Part {
    /// Streams a Fortran-order array in C order. Random access is needed: the `.npy` is read
    /// with bounded positioned reads, never mapped, so a file that shrinks meanwhile gives
    /// [`Error::DataSize`] naming it; a member is first inflated to an anonymous spill file that
    /// only this call can reach.
    pub(super) fn stream_fortran(
        &self,
        tensor: &str,
        chunk: usize,
        buf: &mut Vec<u8>,
        spill_dir: &Path,
        deliver: &mut dyn FnMut(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let (file, offset, read_path) = match &self.location {
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
            // An Arrow column is decoded in C order: readers never plan one as a Fortran part.
            Location::Arrow { table, column } => {
                return Err(table.error(
                    Some(*column),
                    "is not a Fortran-order array: it is decoded, not reordered".into(),
                ))
            }
        };
        let file_len = || -> Result<u64> {
            Ok(file
                .metadata()
                .map_err(Error::io("cannot stat", &read_path))?
                .len())
        };
        let end = offset.saturating_add(self.len);
        let len = file_len()?;
        if len < end {
            return Err(self.size_error(tensor, Some(len.saturating_sub(offset))));
        }
        let src = FileAt {
            file: &file,
            offset,
        };
        let read_error = |e: io::Error| -> Result<Error> {
            if e.kind() != io::ErrorKind::UnexpectedEof {
                return Ok(Error::io("cannot read", &read_path)(e));
            }
            // The file shrank after the check above.
            let len = file_len()?;
            Ok(self.size_error(tensor, Some(len.saturating_sub(offset))))
        };
        let mut scratch = Vec::new();
        let mut t = FortranToC::new(&self.shape, self.dtype, chunk);
        if let (true, &[d0, d1]) = (t.prefers_spill(), self.shape.as_slice()) {
            // Reading this matrix directly takes a short read per element or per column run:
            // transpose it in square tiles into a spill file of our own, then read that in order.
            let spill = tempfile::tempfile_in(spill_dir)
                .map_err(Error::io("cannot create a spill file in", spill_dir))?;
            let mut write_error = None;
            let r = transpose_tiles(
                &src,
                [d0, d1],
                self.dtype,
                chunk,
                &mut scratch,
                buf,
                &mut |bytes, at| {
                    pwrite_all(&spill, bytes, at).map_err(|e| {
                        write_error = Some(e);
                        io::Error::other("spill write failed")
                    })
                },
            );
            if let Some(e) = write_error {
                return Err(Error::io("cannot write a spill file in", spill_dir)(e));
            }
            r.map_err(|e| read_error(e).unwrap_or_else(|e| e))?;
            drop(scratch);
            let mut done = 0u64;
            while done < self.len {
                let n = chunk.min(usize::try_from(self.len - done).unwrap_or(usize::MAX));
                buf.resize(n, 0);
                pread_exact(&spill, buf, done)
                    .map_err(Error::io("cannot read a spill file in", spill_dir))?;
                deliver(buf)?;
                done += n as u64;
            }
            return Ok(());
        }
        while !t.is_done() {
            if let Err(e) = t.next_chunk(&src, &mut scratch, buf) {
                return Err(read_error(e)?);
            }
            deliver(buf)?;
        }
        Ok(())
    }
}
