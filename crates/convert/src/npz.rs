//! `.npz` archives: members planned from their central directory and npy headers, streamed by
//! inflating them (never whole into memory).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::convert::{child_name, planned, stored_as, ConvertOptions, PlannedTensor};
use crate::npy::{npy_part, read_npy_header};
use crate::source::{io_or_zip, read_full, Location, Part};
use crate::{Error, Result};

pub(crate) fn plan_npz(
    path: &Path,
    prefix: Option<&str>,
    options: &ConvertOptions,
) -> Result<Vec<PlannedTensor>> {
    let file = File::open(path).map_err(Error::io("cannot open", path))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| zip_error(path, None, e))?;
    let count = zip.len();
    let mut out = Vec::new();
    for index in 0..count {
        let mut m = zip.by_index(index).map_err(|e| zip_error(path, None, e))?;
        if m.is_dir() {
            continue;
        }
        let member = m.name().map_err(|e| zip_error(path, None, e))?.into_owned();
        let key = member.strip_suffix(".npy").unwrap_or(&member).to_owned();
        let name = child_name(prefix, &key, count == 1);
        let header = read_npy_header(&mut m, path, Some(&member))?;
        let declared = m.size();
        let location = Location::Member {
            path: path.to_path_buf(),
            index,
            member: member.clone(),
            header_len: header.data_offset,
        };
        let input_dtype = options
            .input_dtype
            .get(&name)
            .or(if header.dtype.is_none() {
                options.input_dtype.all
            } else {
                None
            });
        let part = npy_part(header, location, &name, input_dtype)?;
        let expected = part.location_offset().saturating_add(part.len);
        if declared != expected {
            // The inflated stream is checked against the header too; this catches the lie early.
            return Err(Error::DataSize {
                path: path.to_path_buf(),
                member: Some(member),
                tensor: name,
                offset: part.location_offset(),
                expected: part.len,
                found: (declared < expected)
                    .then(|| declared.saturating_sub(part.location_offset())),
            });
        }
        let source = part.location.describe();
        let how = stored_as(&part);
        out.push(planned(name, vec![part], source, how)?);
    }
    Ok(out)
}

pub(crate) fn zip_error(path: &Path, member: Option<&str>, e: zip::result::ZipError) -> Error {
    Error::Zip {
        path: path.to_path_buf(),
        member: member.map(str::to_owned),
        message: format!("not a readable .npz (zip) archive: {e}"),
    }
}

impl Part {
    /// Runs `f` on a reader positioned at the first data byte; for a member, checks after `f`
    /// that the member ends exactly there (which also makes the zip reader check the CRC).
    pub(crate) fn with_reader(
        &self,
        tensor: &str,
        f: impl FnOnce(&mut dyn Read) -> Result<()>,
    ) -> Result<()> {
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
}
