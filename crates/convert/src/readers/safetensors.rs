//! `.safetensors` files: the header planned through the `safetensors` crate; tensors are plain
//! byte ranges of the file, streamed as every part is ([`crate::source`]).

use std::fs::File;
use std::path::Path;

use mmtensor_format::Dtype;

use crate::plan::{child_name, planned, PlannedTensor};
use crate::source::{open_input, pread_exact, read_dtype, Location, Part};
use crate::{DtypeRules, Error, Result};

/// The largest header the `safetensors` crate accepts; nothing larger is allocated.
const MAX_HEADER: u64 = 100_000_000;

/// Reads and validates the header with two positioned reads (the 8-byte length, then the JSON,
/// capped at [`MAX_HEADER`] and at the file's length before anything is allocated): the file is
/// never mapped, so nothing another process does to it can fault this process.
///
/// Returns the JSON's length and the metadata, whose offsets the `safetensors` crate checked
/// (contiguous, matching shapes and dtypes) and which this function checked against the file's
/// length. Errors are the crate's own messages.
fn read_header(
    file: &File,
    path: &Path,
    file_len: u64,
) -> std::result::Result<(u64, ::safetensors::tensor::Metadata), String> {
    let read_err =
        |e: std::io::Error, at: u64| format!("cannot read {} at byte {at}: {e}", path.display());
    let mut len = [0u8; 8];
    pread_exact(file, &mut len, 0).map_err(|e| read_err(e, 0))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(::safetensors::SafeTensorError::HeaderTooLarge.to_string());
    }
    if n > file_len - 8 {
        return Err(::safetensors::SafeTensorError::InvalidHeaderLength.to_string());
    }
    let mut header = vec![0u8; 8 + n as usize];
    header[..8].copy_from_slice(&len);
    pread_exact(file, &mut header[8..], 8).map_err(|e| read_err(e, 8))?;
    let meta: ::safetensors::tensor::Metadata = match serde_json::from_slice(&header[8..]) {
        Ok(meta) => meta,
        // The crate's own reader gives the same verdict with its own words (invalid UTF-8,
        // invalid JSON, which offset is wrong); run it only on this error path.
        Err(e) => {
            return Err(match ::safetensors::SafeTensors::read_metadata(&header) {
                Err(st) => st.to_string(),
                Ok(_) => e.to_string(),
            })
        }
    };
    let data_len = meta.data_len() as u64;
    // The crate checked each tensor's size, not that the header and data together fit a u64:
    // eight U8 tensors of 2^61 - 1 elements describe 2^64 - 8 data bytes.
    let Some(total) = (8 + n).checked_add(data_len) else {
        return Err(format!(
            "the header describes {data_len} data bytes after its {n} bytes of JSON, more than any file can hold"
        ));
    };
    if total != file_len {
        return Err(::safetensors::SafeTensorError::MetadataIncompleteBuffer.to_string());
    }
    Ok((n, meta))
}

/// The tensors of the `.safetensors` file at `path`, in data order, named by key (`prefix`: the
/// input's `NAME=`).
pub(crate) fn plan_safetensors(
    path: &Path,
    prefix: Option<&str>,
    input_dtype: &DtypeRules,
) -> Result<Vec<PlannedTensor>> {
    let (file, file_len) = open_input(path)?;
    let bad = |message: String| Error::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    if file_len < 8 {
        return Err(bad(format!(
            "the file is {file_len} bytes long, shorter than the 8-byte header length"
        )));
    }
    let (n, meta) = read_header(&file, path, file_len).map_err(bad)?;
    let data_start = 8 + n;
    let mut entries: Vec<(String, ::safetensors::tensor::TensorInfo)> = meta
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    entries.sort_by_key(|(_, info)| info.data_offsets.0);
    let only = entries.len() == 1;
    let mut out = Vec::with_capacity(entries.len());
    for (key, info) in entries {
        let name = child_name(prefix, &key, only);
        let st_name = format!("{:?}", info.dtype);
        let stored =
            Dtype::from_safetensors(info.dtype).ok_or_else(|| Error::UnsupportedInput {
                path: path.to_path_buf(),
                member: None,
                reason: format!(
                    "tensor `{key}` has safetensors dtype {st_name}, which .mmt does not have"
                ),
            })?;
        let (start, end) = info.data_offsets;
        // `read_header` checked every offset against the file's length, so none of these overflow;
        // they are checked anyway, as every value from file bytes is.
        let offsets = (end.checked_sub(start), data_start.checked_add(start as u64));
        let (Some(len), Some(offset)) = offsets else {
            return Err(bad(format!(
                "tensor `{key}` has data offsets [{start}, {end}] outside the file"
            )));
        };
        let len = len as u64;
        let location = Location::File {
            path: path.to_path_buf(),
            offset,
        };
        let rule = input_dtype.get(&name);
        let dtype = read_dtype(
            &location,
            &name,
            &st_name,
            Some(stored),
            stored.size(),
            rule,
        )?;
        let part = Part {
            location,
            reinterpreted: dtype != stored,
            dtype,
            descr: st_name,
            big_endian: false,
            fortran: false,
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            len,
            verify: None,
        };
        let source = format!("{}:{key}", path.display());
        out.push(planned(name, vec![part], source)?);
    }
    Ok(out)
}
