//! `.npy` files: the header (through `mmtensor_format::npy`), the [`Part`] it describes (shared
//! with `.npz` members), and one tensor from a file or from shards along axis 0. A Fortran-order
//! part streams through `source/fortran.rs`, as every part streams through [`crate::source`].

use std::io::Read;
use std::path::{Path, PathBuf};

use mmtensor_format::npy::{self, ByteOrder, NpyHeader};

use crate::plan::{planned, PlannedTensor};
use crate::source::{io_or_zip, open_input, read_dtype, read_full, Location, Part};
use crate::transform::{fortran_is_c, swap_unit};
use crate::{DtypeRules, Error, Result};

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

/// Builds the [`Part`] of an npy header. `input_dtype` (the input-dtype rules) names the dtype of
/// raw void data (the rule for `tensor`, else the rule for all) or reinterprets a stored dtype (the
/// rule for `tensor`).
pub(crate) fn npy_part(
    header: NpyHeader,
    location: Location,
    tensor: &str,
    input_dtype: &DtypeRules,
) -> Result<Part> {
    let void = header.dtype.is_none();
    let rule = input_dtype
        .get(tensor)
        .or(if void { input_dtype.all } else { None });
    let dtype = read_dtype(
        &location,
        tensor,
        &header.descr,
        header.dtype,
        header.item_size,
        rule,
    )?;
    let len = header.data_len().map_err(|source| Error::Npy {
        path: location.path().to_path_buf(),
        member: location.member().map(str::to_owned),
        source,
    })?;
    let big_endian = header.byte_order == ByteOrder::Big && swap_unit(dtype) > 1;
    Ok(Part {
        location,
        reinterpreted: rule.is_some(),
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
    input_dtype: &DtypeRules,
) -> Result<PlannedTensor> {
    let mut parts: Vec<Part> = Vec::with_capacity(files.len());
    for path in files {
        let (mut file, file_len) = open_input(path)?;
        let header = read_npy_header(&mut file, path, None)?;
        let location = Location::File {
            path: path.clone(),
            offset: header.data_offset,
        };
        let part = npy_part(header, location, &name, input_dtype)?;
        part.check_ends_at(&name, file_len)?;
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
    let source = if parts.len() == 1 {
        parts[0].location.describe()
    } else {
        format!(
            "{} .. {} ({} shards)",
            parts[0].location.describe(),
            parts[parts.len() - 1].location.describe(),
            parts.len()
        )
    };
    planned(name, parts, source)
}

fn first_location(parts: &[Part]) -> &Location {
    &parts[0].location
}

fn first_path(l: &Location) -> PathBuf {
    l.path().to_path_buf()
}
