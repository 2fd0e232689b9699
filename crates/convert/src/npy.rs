//! `.npy` files: the header (through `mmtensor_format::npy`), one tensor from a file or from shards
//! along axis 0, and the Fortran-order stream.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use mmtensor_format::npy::{self, ByteOrder, NpyHeader};
use mmtensor_format::Dtype;

use crate::convert::{planned, stored_as, ConvertOptions, PlannedTensor};
use crate::source::{io_or_zip, pread_exact, pwrite_all, read_full, Location, Part};
use crate::transform::{fortran_is_c, swap_unit, transpose_tiles, FortranToC, ReadAt};
use crate::{Error, Result};

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
        reinterpreted: input_dtype.is_some(),
        dtype,
        descr: header.descr,
        big_endian,
        fortran: header.fortran_order && !fortran_is_c(&header.shape),
        shape: header.shape,
        len,
        verify: None,
    })
}

/// Plans one tensor from `.npy` files (one file, or shards along axis 0).
pub(crate) fn plan_shards(
    name: String,
    files: &[PathBuf],
    options: &ConvertOptions,
) -> Result<PlannedTensor> {
    let input_dtype = |void: bool| {
        options
            .input_dtype
            .get(&name)
            .or(if void { options.input_dtype.all } else { None })
    };
    let mut parts: Vec<Part> = Vec::with_capacity(files.len());
    for path in files {
        let mut file = File::open(path).map_err(Error::io("cannot open", path))?;
        let file_len = file
            .metadata()
            .map_err(Error::io("cannot stat", path))?
            .len();
        let header = read_npy_header(&mut file, path, None)?;
        let location = Location::File {
            path: path.clone(),
            offset: header.data_offset,
        };
        let void = header.dtype.is_none();
        let part = npy_part(header, location, &name, input_dtype(void))?;
        let end = part.location_offset().saturating_add(part.len);
        if end != file_len {
            return Err(Error::DataSize {
                path: path.clone(),
                member: None,
                tensor: name.clone(),
                offset: part.location_offset(),
                expected: part.len,
                found: (file_len < end).then(|| file_len.saturating_sub(part.location_offset())),
            });
        }
        if let Some(first) = parts.first() {
            let mismatch = |first: String, what: String| Error::ShardMismatch {
                tensor: name.clone(),
                first_path: first_path(first_location(&parts)),
                first,
                path: path.clone(),
                what,
            };
            if part.dtype != first.dtype {
                return Err(mismatch(
                    format!("has dtype {}", first.dtype),
                    format!("has dtype {}", part.dtype),
                ));
            }
            if part.shape.is_empty() || part.shape.get(1..) != first.shape.get(1..) {
                return Err(mismatch(
                    format!("has shape {:?}", first.shape),
                    format!("has shape {:?}", part.shape),
                ));
            }
        } else if files.len() > 1 && part.shape.is_empty() {
            return Err(Error::ShardMismatch {
                tensor: name.clone(),
                first_path: path.clone(),
                first: "is 0-d".into(),
                path: path.clone(),
                what: "is 0-d".into(),
            });
        }
        parts.push(part);
    }
    // Zero-size shards may claim any length along axis 0; their sum must still be a number.
    if parts
        .iter()
        .try_fold(0u64, |a, p| {
            a.checked_add(p.shape.first().copied().unwrap_or(1))
        })
        .is_none()
    {
        return Err(Error::InvalidInput {
            input: name,
            reason: "the shards' lengths along axis 0 add up to more than 2^64".into(),
        });
    }
    let (source, how) = if parts.len() == 1 {
        (parts[0].location.describe(), stored_as(&parts[0]))
    } else {
        (
            format!(
                "{} .. {} ({} shards)",
                parts[0].location.describe(),
                parts[parts.len() - 1].location.describe(),
                parts.len()
            ),
            stored_as(&parts[0]),
        )
    };
    planned(name, parts, source, how)
}

fn first_location(parts: &[Part]) -> &Location {
    &parts[0].location
}

fn first_path(l: &Location) -> PathBuf {
    l.path().to_path_buf()
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
    pub(crate) fn stream_fortran(
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
