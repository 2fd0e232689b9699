//! `.safetensors` files: the header planned through the `safetensors` crate; tensors are plain
//! byte ranges of the file, streamed by [`crate::source`].

use std::fs::File;
use std::path::Path;

use mmtensor_format::Dtype;

use crate::convert::{child_name, planned, stored_as, ConvertOptions, PlannedTensor};
use crate::source::{Location, Part};
use crate::{Error, Result};

pub(crate) fn plan_safetensors(
    path: &Path,
    prefix: Option<&str>,
    options: &ConvertOptions,
) -> Result<Vec<PlannedTensor>> {
    let file = File::open(path).map_err(Error::io("cannot open", path))?;
    let bad = |message: String| Error::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let file_len = file
        .metadata()
        .map_err(Error::io("cannot stat", path))?
        .len();
    if file_len < 8 {
        return Err(bad(format!(
            "the file is {file_len} bytes long, shorter than the 8-byte header length"
        )));
    }
    // SAFETY: read-only mapping; only the header bytes are touched (the safetensors crate reads
    // the 8-byte length and the JSON, then compares sizes), and the mapping is dropped before
    // any data is read. The input must not be truncated while it is converted (the contract
    // documented on `convert`).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io("cannot map", path))?;
    let (n, meta) =
        ::safetensors::SafeTensors::read_metadata(&map).map_err(|e| bad(format!("{e}")))?;
    drop(map);
    let data_start = 8 + n as u64;
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
        let len = (end - start) as u64;
        let dtype = match options.input_dtype.get(&name) {
            Some(d) if d.size() != stored.size() => {
                return Err(Error::InputDtypeSize {
                    path: path.to_path_buf(),
                    member: None,
                    tensor: name,
                    descr: st_name,
                    size: stored.size(),
                    dtype: d,
                })
            }
            Some(d) => d,
            None => stored,
        };
        let part = Part {
            location: Location::File {
                path: path.to_path_buf(),
                offset: data_start + start as u64,
            },
            dtype,
            descr: st_name,
            big_endian: false,
            fortran: false,
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            len,
        };
        let source = format!("{}:{key}", path.display());
        let how = stored_as(&part);
        out.push(planned(name, vec![part], source, how));
    }
    Ok(out)
}
