//! The one place the CLI maps files: the unsafe `Store::open` and `Dataset::open`, and whose
//! promise makes them sound.

use std::path::Path;

use anyhow::Result;

/// Maps the store at `path` for the duration of one command: the one place the CLI calls the unsafe
/// [`mmtensor::Store::open`].
///
/// The promise `Store::open` asks for (no other process modifies or truncates the file while it is
/// mapped) is not one this program can keep: it is the user's, stated in `mmt --help`, as it is for
/// every tool that maps files (ripgrep, `np.load(mmap_mode="r")`). What the CLI does on its side:
/// it only reads through the loader's views, its own writer only ever renames complete files over
/// targets, and `verify` checks the file's length before and while it reads, so a truncation is
/// reported as an error rather than a `SIGBUS`.
pub(crate) fn open_mapped(path: &Path) -> Result<mmtensor::Store> {
    // SAFETY: see above; the contract is passed to the user, documented in `mmt --help`.
    let store = unsafe { mmtensor::Store::open(path) }?;
    Ok(store)
}

/// Maps every shard of the dataset in `dir`: the one place the CLI calls the unsafe
/// [`mmtensor::Dataset::open`], whose promise is `Store::open`'s for every shard, passed to the
/// user exactly as in [`open_mapped`].
pub(crate) fn open_dataset_mapped(dir: &Path) -> Result<mmtensor::Dataset> {
    // SAFETY: see `open_mapped`; the contract is passed to the user, documented in `mmt --help`.
    let ds = unsafe { mmtensor::Dataset::open(dir) }?;
    Ok(ds)
}
