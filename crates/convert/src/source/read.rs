//! Bounded reads that never map a file: positioned reads, a read that fills a buffer, and the
//! error a failed read becomes (inside a zip member, the archive's).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::Error;

/// Opens the input file at `path` for reading, with its length: errors name the path and what
/// failed (open, stat), as every reader reports them.
pub(crate) fn open_input(path: &Path) -> Result<(File, u64), Error> {
    let file = File::open(path).map_err(Error::io("cannot open", path))?;
    let len = file
        .metadata()
        .map_err(Error::io("cannot stat", path))?
        .len();
    Ok((file, len))
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
