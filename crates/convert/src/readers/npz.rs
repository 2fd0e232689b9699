//! `.npz` archives: members planned from their central directory and npy headers; a member
//! streams by inflating it (never whole into memory: `source/member.rs`).

use std::fs::File;
use std::path::Path;

use crate::plan::{child_name, planned, PlannedTensor};
use crate::readers::npy::{npy_part, read_npy_header};
use crate::source::{zip_error, Location};
use crate::{DtypeRules, Error, Result};

/// The tensors of the `.npz` archive at `path`, one per member, named by key (`prefix`: the
/// input's `NAME=`).
pub(crate) fn plan_npz(
    path: &Path,
    prefix: Option<&str>,
    input_dtype: &DtypeRules,
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
            member,
            header_len: header.data_offset,
        };
        let part = npy_part(header, location, &name, input_dtype)?;
        // The inflated stream is checked against the header too; this catches the lie early.
        part.check_ends_at(&name, declared)?;
        let source = part.location.describe();
        out.push(planned(name, vec![part], source)?);
    }
    Ok(out)
}
