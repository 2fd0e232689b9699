//! A new dataset folder: [`convert_dataset`].

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::convert::plan;
use crate::dataset::cut::columns_of;
use crate::dataset::write::DatasetSummary;
#[cfg(doc)]
use crate::Error;
use crate::{ConvertOptions, DatasetWriter, Input, Progress, Result};
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
    let mut writer = DatasetWriter::create_with(
        dir,
        columns.columns,
        shard_size,
        Some(columns.rows),
        plan.metadata(),
        options,
    )?;
    writer.write_plan(&plan, options, progress, cancel)?;
    writer.finish_with(progress, cancel, plan.input_bytes())
}
