//! A part's bytes as one `Read`: for a zip member (`.npz`), inflated past its npy header and
//! checked to end exactly where the header says (which makes the zip reader check its CRC).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::source::part::{Location, Part};
use crate::source::read::{io_or_zip, read_full};
use crate::{Error, Result};

/// An archive, or a member of it, that the `zip` crate cannot read.
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
    pub(super) fn with_reader(
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
            // An Arrow column's values are decoded, not read as bytes: `Part::stream` sends it to
            // `stream_arrow` before any reader is asked for.
            Location::Arrow { table, column } => Err(table.error(
                Some(*column),
                "has no byte reader: it is decoded by arrow-rs".into(),
            )),
        }
    }
}
