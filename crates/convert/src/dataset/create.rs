//! A new dataset folder: [`convert_dataset`].

use std::path::Path;
use std::sync::atomic::AtomicBool;

use mmtensor_format::{Manifest, MANIFEST_FILE};

use crate::convert::plan;
use crate::dataset::cut::{columns_of, rows_per_shard, Cut};
use crate::dataset::lock::WriteLock;
use crate::dataset::names::Names;
use crate::dataset::write::{finish, write_shards, DatasetSummary};
use crate::plan::PlannedTensor;
use crate::{ConvertOptions, Error, Input, Progress, Result};

/// Converts `inputs` into a new dataset folder `dir`: shards of at most about `shard_size` data
/// bytes each (whole rows of every column; at least one row), then the manifest.
///
/// `dir` is created if missing; one that already holds a manifest is refused
/// ([`Error::DatasetExists`]: use [`append`](crate::append)). Shards are named `shard-00000.mmt`,
/// `shard-00001.mmt`, ... A dataset of zero rows has no shard. Nothing is a dataset until the
/// manifest is renamed into place, last: an error, a cancellation or a kill before that leaves no
/// manifest (and, at most, complete shard files that no manifest lists, which the next write to
/// `dir` replaces).
///
/// # Errors
/// As [`crate::plan()`] and [`crate::write_plan`]; [`Error::NotAColumn`] (a scalar tensor, or row
/// counts that differ, or more than [`MAX_COLUMNS`](crate::MAX_COLUMNS) tensors),
/// [`Error::ShardSize`] (`shard_size` is smaller than one row of all columns together),
/// [`Error::DatasetExists`], [`Error::DatasetBusy`] (another writer holds the folder's lock; see
/// [`append`](crate::append)).
pub fn convert_dataset(
    inputs: &[Input],
    dir: impl AsRef<Path>,
    options: &ConvertOptions,
    shard_size: u64,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    let dir = dir.as_ref();
    let plan = plan(inputs, options)?;
    let columns = columns_of(&plan)?;
    let cut = Cut {
        rows: rows_per_shard(&columns.columns, columns.rows, shard_size)?,
        bytes: shard_size,
    };
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.exists() {
        return Err(Error::DatasetExists {
            path: dir.to_path_buf(),
        });
    }
    std::fs::create_dir_all(dir).map_err(Error::io("cannot create the folder", dir))?;
    let _lock = WriteLock::take(dir)?;
    // Looked at again under the lock: another writer may have finished in between.
    if manifest_path.exists() {
        return Err(Error::DatasetExists {
            path: dir.to_path_buf(),
        });
    }
    let tensors: Vec<&PlannedTensor> = plan.tensors().iter().collect();
    progress.start(&plan);
    let written = write_shards(
        &plan,
        &tensors,
        &columns,
        cut,
        dir,
        &mut Names::default(),
        None,
        options,
        progress,
        cancel,
    )?;
    let manifest =
        Manifest::new(columns.columns, written.shards.clone()).map_err(|source| Error::Format {
            path: manifest_path.clone(),
            source,
        })?;
    finish(dir, manifest, &plan, written, progress, cancel)
}
