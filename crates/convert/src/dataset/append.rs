//! Rows added to a dataset: [`append`] and [`append_with`], which check the inputs against the
//! dataset's columns and fill its last shard first ([`Fill`]).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::convert::plan;
use crate::dataset::cut::columns_of;
use crate::dataset::write::DatasetSummary;
#[cfg(doc)]
use crate::Error;
use crate::{ConvertOptions, DatasetWriter, Input, Progress, Result};

/// Where [`append_with`] puts the new rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fill {
    /// Fill the dataset's last shard first, when it holds fewer rows than a shard of the shard
    /// size: a new shard, under a new name, holds its rows followed by new rows up to the size and
    /// takes its place in the manifest; the old file stays on disk, unlisted (see [`append`]).
    #[default]
    LastShard,
    /// Only add shards: every listed shard stays in the manifest (what `append` did before it
    /// could fill). Cheaper for frequent small appends to large shards, which fill would copy
    /// again each time; [`crate::compact`] merges the small shards later.
    Never,
}

/// Appends the rows of `inputs` to the dataset in `dir`, filling its last shard first: new
/// shards, then the new manifest by an atomic rename. [`append_with`] with [`Fill::LastShard`].
///
/// The inputs must give exactly the dataset's columns (names, dtypes after any cast, row shapes; in
/// any order): anything else is refused with [`Error::SchemaMismatch`] before a byte is written.
/// Rows are cut into shards of `shard_size` data bytes as
/// [`convert_dataset`](crate::convert_dataset) cuts them (`None`: the dataset's own shard size, the
/// one its last shard records under `source.shard_size`, else as many rows as its largest shard;
/// all new rows in one shard when the dataset has no rows yet).
///
/// When the last shard holds fewer rows than that, the first new shard holds its rows followed by
/// new rows up to the size, and replaces it in the manifest; so repeated small appends leave full
/// shards and one partial last shard, not a shard per append. New shards take names
/// `shard-NNNNN.mmt` above every name the manifest lists, so a name, once listed, never holds
/// other bytes. No listed shard is ever modified or deleted: a reader holding the previous
/// manifest keeps reading its rows (the replaced last shard among them), and an error or a kill
/// at any point leaves the previous dataset valid. The replaced shard stays on disk, unlisted,
/// until [`crate::prune`] deletes it (run it when no reader holds an older manifest); it is in
/// [`DatasetSummary::replaced`].
///
/// One writer at a time: every dataset write ([`convert_dataset`](crate::convert_dataset),
/// `append`, [`crate::compact`], [`crate::prune`]) holds an exclusive advisory lock (`flock`) on
/// the dataset folder for its whole run, and a second writer gets [`Error::DatasetBusy`] at once
/// instead of replacing the first one's manifest. (On file systems without `flock`, and off Unix,
/// there is no lock: run one writer at a time.)
///
/// # Errors
/// As [`convert_dataset`](crate::convert_dataset); [`Error::Load`] when the current manifest cannot
/// be read or is invalid; [`Error::SchemaMismatch`]; [`Error::DatasetBusy`]; when the last shard is
/// read (to fill it, or for its recorded shard size) and differs from the manifest or is corrupt,
/// [`Error::UnsupportedInput`] or [`Error::InputChecksum`] naming it (nothing is written:
/// [`Fill::Never`] with a `shard_size` does not read it).
pub fn append(
    dir: impl AsRef<Path>,
    inputs: &[Input],
    options: &ConvertOptions,
    shard_size: Option<u64>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    append_with(
        dir,
        inputs,
        options,
        shard_size,
        Fill::LastShard,
        progress,
        cancel,
    )
}

/// [`append`], with the choice of whether to fill the last shard ([`Fill`]).
///
/// # Errors
/// As [`append`].
pub fn append_with(
    dir: impl AsRef<Path>,
    inputs: &[Input],
    options: &ConvertOptions,
    shard_size: Option<u64>,
    fill: Fill,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    let dir = dir.as_ref();
    let plan = plan(inputs, options)?;
    let columns = columns_of(&plan)?;
    let mut writer = DatasetWriter::append_with(
        dir,
        shard_size,
        fill,
        Some(columns.rows),
        plan.metadata(),
        options,
    )?;
    writer.write_plan(&plan, options, progress, cancel)?;
    writer.finish_with(progress, cancel, plan.input_bytes())
}
