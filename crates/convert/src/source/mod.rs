//! A stored array as a reader planned it ([`Part`], at a [`Location`]) and everything it does: its
//! stream of C-order little-endian chunks ([`Part::stream`], here), which verifies (`check.rs`),
//! swaps bytes, and reads one of four ways: a plain file's byte range through a reader thread
//! (`file.rs`), a zip member through the inflater (`member.rs`), a Fortran-order array through the
//! bounded transpose (`fortran.rs`), a Parquet or Arrow IPC column decoded by arrow-rs group by
//! group (`arrow.rs`; the table it belongs to and the rule of which Arrow columns make tensors are
//! `table.rs`'s). Every read is bounded and none maps a file (`read.rs`).

mod arrow;
mod check;
mod file;
mod fortran;
mod member;
mod part;
mod read;
mod table;

use std::path::Path;

pub(crate) use member::zip_error;
pub(crate) use part::{read_dtype, BlockCheck, Location, Part};
pub(crate) use read::{io_or_zip, open_input, pread_exact, read_full};
pub(crate) use table::{column_type, guarded, ColumnType, Decoder, IpcBlock, Table};

use crate::transform::{swap_bytes, swap_unit};
use crate::Result;
use check::Checker;

/// What a part's stream delivers to: chunks of C-order little-endian bytes, whole elements each.
pub(crate) type Sink<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;

impl Part {
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
        if let Location::Arrow { table, column } = &self.location {
            // Decoded values, in C order and the host's byte order: no checksums, no reorder.
            return self.stream_arrow(table, *column, chunk, buf, sink);
        }
        let unit = swap_unit(self.dtype);
        let swap = self.big_endian;
        let mut checker = self.verify.as_deref().map(Checker::new);
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
}
