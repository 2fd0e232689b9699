//! `mmt export`: a store's tensors back out as `.npy` files or one `.safetensors` file.
//!
//! Both write through a temporary file and a rename, like the converter, so a failure leaves no
//! partial output under the target name.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mmtensor::{Store, Tensor};
use mmtensor_format::npy;

use crate::human;

/// What to export to.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kind {
    /// A folder holding NAME.npy per tensor.
    Npy,
    /// One .safetensors file.
    Safetensors,
}

/// Exports `store` to `output`.
pub fn run(store_path: &Path, kind: Kind, output: &Path, quiet: bool) -> Result<()> {
    crate::info::read_layout(store_path)?;
    // SAFETY: export only reads the mapping while this command runs; the contract that nobody
    // truncates the store meanwhile is the user's, as documented for `Store::open`.
    let store = unsafe { Store::open(store_path) }?;
    let written = match kind {
        Kind::Npy => to_npy(&store, output)?,
        Kind::Safetensors => to_safetensors(&store, output)?,
    };
    if !quiet {
        eprintln!(
            "exported {} tensor{} ({}) to {}",
            store.names().len(),
            if store.names().len() == 1 { "" } else { "s" },
            human::bytes(written),
            output.display()
        );
    }
    Ok(())
}

/// The file name for a tensor: its name with path separators and other unsafe characters
/// percent-encoded, so `enc/layer.0` becomes `enc%2Flayer.0.npy` and never escapes the folder.
pub fn npy_file_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        let unsafe_char =
            matches!(c, '/' | '\\' | '%' | ':' | '\0') || c.is_control() || (i == 0 && c == '.');
        if unsafe_char {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out.push_str(".npy");
    out
}

fn to_npy(store: &Store, dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut total = 0;
    for t in store.tensors() {
        let target = dir.join(npy_file_name(t.name()));
        let bytes = t.bytes()?;
        let mut tmp = temp_in(dir)?;
        {
            let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
            w.write_all(&npy::encode_header(t.dtype(), t.shape()))
                .and_then(|()| w.write_all(bytes))
                .and_then(|()| w.flush())
                .with_context(|| format!("cannot write {}", target.display()))?;
        }
        persist(tmp, &target)?;
        total += bytes.len() as u64;
    }
    Ok(total)
}

struct StView<'a> {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: &'a [u8],
}

impl safetensors::View for StView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn st_dtype(t: &Tensor<'_>) -> Result<safetensors::Dtype> {
    match t.dtype().to_safetensors() {
        Some(d) => Ok(d),
        None => bail!(
            "tensor `{}` has dtype {}, which safetensors cannot hold: export it with --to npy",
            t.name(),
            t.dtype()
        ),
    }
}

fn to_safetensors(store: &Store, target: &Path) -> Result<u64> {
    let mut views = Vec::new();
    let mut total = 0;
    for t in store.tensors() {
        let shape = t
            .shape()
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| {
                format!("tensor `{}`: shape does not fit in memory sizes", t.name())
            })?;
        let bytes = t.bytes()?;
        total += bytes.len() as u64;
        views.push((
            t.name().to_owned(),
            StView {
                dtype: st_dtype(&t)?,
                shape,
                bytes,
            },
        ));
    }
    let metadata =
        (!store.metadata().is_empty()).then(|| store.metadata().clone().into_iter().collect());
    let dir = parent_dir(target);
    let tmp = temp_in(&dir)?;
    let mode = tmp
        .as_file()
        .metadata()
        .with_context(|| format!("cannot stat {}", tmp.path().display()))?
        .permissions();
    let tmp = tmp.into_temp_path();
    // safetensors writes its own sibling temporary file and renames it over `tmp`, so the file at
    // `tmp` is a new inode: give it our mode and fsync it by path before the final rename.
    safetensors::serialize_to_file(views, metadata, &tmp)
        .with_context(|| format!("cannot write {}", target.display()))?;
    std::fs::set_permissions(&tmp, mode)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .with_context(|| format!("cannot fsync {}", tmp.display()))?;
    tmp.persist(target)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot rename the export to {}", target.display()))?;
    sync_dir(&dir)?;
    Ok(total)
}

/// A hidden temporary file in `dir` that will become an export by [`persist`].
fn temp_in(dir: &Path) -> Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".mmt-export.").suffix(".partial");
    // Exports get the mode any new file gets (0666 less the umask), not a temporary file's 0600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    builder
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn persist(tmp: tempfile::NamedTempFile, target: &Path) -> Result<()> {
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot fsync {}", tmp.path().display()))?;
    tmp.persist(target)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot rename the export to {}", target.display()))?;
    sync_dir(&parent_dir(target))
}

/// Fsyncs a folder so a rename into it survives a power cut.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync the folder {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::npy_file_name;

    #[test]
    fn file_names_never_escape_the_folder() {
        assert_eq!(npy_file_name("x"), "x.npy");
        assert_eq!(npy_file_name("enc/layer.0"), "enc%2Flayer.0.npy");
        assert_eq!(npy_file_name("../etc"), "%2E.%2Fetc.npy");
        assert_eq!(npy_file_name("a%b"), "a%25b.npy");
    }
}
