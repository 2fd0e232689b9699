//! `mmt`: repack NumPy and safetensors data into aligned `.mmt` stores, inspect, verify, export and
//! benchmark them.
//!
//! Exit codes: 0 success; 1 an error (bad input, I/O); 2 a usage error; 3 `verify` found corrupted
//! data; 130 interrupted (Ctrl-C), with nothing left under the output name.

mod bench;
mod export;
mod human;
mod info;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mmtensor_convert::{ConvertOptions, Input, Plan, PlannedTensor, Progress};

/// Exit code when `verify` finds corrupted data.
const EXIT_CORRUPT: u8 = 3;
/// Exit code after Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser)]
#[command(
    name = "mmt",
    version,
    about = "Repack arrays once into aligned .mmt stores that load as zero-copy memory maps",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 verify found corruption, 130 interrupted.\n\
                  Run `mmt help COMMAND` for examples.\n\n\
                  `info` reads headers with plain reads. `verify`, `export` and `bench` memory-map the store\n\
                  (`verify DIR`: every shard of the dataset): do not rewrite it in place (cp onto it, truncate,\n\
                  an editor) while they run. Replacing it by a rename, as `mmt convert`, `append` and `compact`\n\
                  do, is safe; a file truncated under `verify` is reported."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert .npy, .npz, .safetensors and .mmt files, dataset folders and folders of .npy shards into one .mmt store or a sharded dataset
    #[command(after_help = "Examples:\n  \
        mmt convert train.npz -o train.mmt\n  \
        mmt convert small-shards/ -o train/ --shard-size 1GiB   # a dataset cut again (merged shards)\n  \
        mmt convert train/ -o train.mmt --columns x --dtype bf16 # a dataset's column into one store, cast\n  \
        mmt convert x=features.npy y=labels.npy -o data.mmt --dtype bf16\n  \
        mmt convert 'emb=shards/part-*.npy' -o emb.mmt          # shards joined along axis 0\n  \
        mmt convert model.safetensors -o model.mmt --dtype w=f16 --alignment 64\n  \
        mmt convert bf16.npy -o out.mmt --input-dtype bf16       # ml_dtypes arrays saved as <V2\n  \
        mmt convert 'shards/*.npy' y=labels.npy -o train/ --shard-size 1GiB   # a sharded dataset\n\n\
        An INPUT is a file, a dataset folder, a folder of .npy shards, a quoted glob, or NAME=any of those.\n\
        The blocks of .mmt inputs are checked against their checksums as they are read.\n\
        The output appears only when complete; an existing file is replaced atomically.\n\
        With --shard-size, OUT is a folder: shard-00000.mmt, ... and manifest.mmtm, written last.")]
    Convert {
        /// Inputs: FILE, FOLDER, 'GLOB' or NAME=INPUT
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<String>,
        /// The .mmt file to write (with --shard-size: the dataset folder)
        #[arg(short, long, value_name = "OUT.mmt")]
        output: PathBuf,
        /// Write a sharded dataset into the folder OUT: .mmt shards of at most SIZE data bytes
        /// (whole rows of every input, which must share their first dimension) and a manifest
        #[arg(long, value_name = "SIZE", value_parser = human::parse_bytes)]
        shard_size: Option<u64>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Add the rows of inputs to a sharded dataset, filling its last shard first: new shards, then the manifest by an atomic rename
    #[command(after_help = "Examples:\n  \
        mmt convert x=x.npy y=y.npy -o train/ --shard-size 1GiB\n  \
        mmt append train/ x=new-x.npy y=new-y.npy               # cut as the dataset is (1GiB)\n  \
        mmt append train/ new-day.npz --shard-size 256MiB\n  \
        mmt append train/ batch.npz --no-fill                   # new shards only; `mmt compact` later\n\n\
        The inputs must give exactly the dataset's columns (names, dtypes after --dtype, row shapes);\n\
        anything else is refused before a byte is written. When the last shard holds fewer rows than\n\
        a shard of the shard size, a new shard holds its rows followed by new rows up to the size and\n\
        takes its place in the manifest, under a new name: appending many small batches leaves full\n\
        shards, not a shard per batch. Listed shards are never modified or deleted, so readers of the\n\
        dataset keep working, and an interrupted append leaves the dataset as it was. The replaced\n\
        shard stays on disk, unlisted, for readers that opened the dataset before; `mmt prune DIR`\n\
        deletes such files when no reader holds an older manifest.\n\
        A second writer to a dataset that is being written is refused at once (an flock on the folder).")]
    Append {
        /// The dataset folder (holding manifest.mmtm)
        dir: PathBuf,
        /// Inputs: FILE, FOLDER, 'GLOB' or NAME=INPUT
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<String>,
        /// Cut the rows into shards of at most SIZE data bytes (default: the dataset's own shard
        /// size, recorded in its last shard, else as many rows as its largest shard)
        #[arg(long, value_name = "SIZE", value_parser = human::parse_bytes)]
        shard_size: Option<u64>,
        /// Leave the last shard as it is: the new rows go into new shards only (cheaper for
        /// frequent small appends to large shards; merge them later with `mmt compact`)
        #[arg(long)]
        no_fill: bool,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Merge runs of small shards of a dataset into full ones, in place: new shards, then the manifest by an atomic rename
    #[command(after_help = "Examples:\n  \
        mmt compact train/                    # to the dataset's own shard size\n  \
        mmt compact train/ --shard-size 1GiB\n  \
        mmt prune train/                      # later, when no reader holds the old manifest\n\n\
        Each run of consecutive shards smaller than the shard size is rewritten as full shards and one\n\
        partial, when that makes fewer shards; full shards are left as they are, and rows keep their\n\
        order and indices. New shards take new names; the replaced ones stay on disk, unlisted and\n\
        unchanged, so readers of the previous manifest keep working and an interrupted compaction\n\
        leaves the dataset as it was. `mmt prune DIR` deletes them. To cut every shard again, convert\n\
        the folder into a new one: mmt convert train/ -o train2/ --shard-size SIZE")]
    Compact {
        /// The dataset folder (holding manifest.mmtm)
        dir: PathBuf,
        /// Merge into shards of at most SIZE data bytes (default: the dataset's own shard size,
        /// recorded in its last shard, else as many rows as its largest shard)
        #[arg(long, value_name = "SIZE", value_parser = human::parse_bytes)]
        shard_size: Option<u64>,
        /// Print nothing but errors
        #[arg(short, long)]
        quiet: bool,
    },
    /// Delete the files of a dataset folder that its manifest no longer lists: replaced shards and killed writers' leftovers
    #[command(after_help = "Examples:\n  \
        mmt prune train/ --dry-run\n  \
        mmt prune train/\n\n\
        Deletes unlisted shard files (shard-NNNNN.mmt: shards that `mmt append` or `mmt compact`\n\
        replaced, complete shards of an interrupted write) and writers' hidden temporary files\n\
        (.*.partial). Other files are left alone. It holds the folder's write lock, so no writer is\n\
        between writing a shard and listing it; but it cannot know about readers: a process that read\n\
        an older manifest and has not opened every shard yet would miss a deleted one. Run it when no\n\
        reader holds an older manifest (between jobs); readers that have the dataset open keep working.")]
    Prune {
        /// The dataset folder (holding manifest.mmtm)
        dir: PathBuf,
        /// Only list what would be deleted
        #[arg(long)]
        dry_run: bool,
        /// Print nothing but errors
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a store's tensors (name, dtype, shape, size, offset), alignment and metadata, or a dataset's columns and shards
    #[command(
        after_help = "Examples:\n  mmt info data.mmt\n  mmt info data.mmt --json | jq '.tensors[].name'\n  mmt info train/              # a dataset folder: its manifest\n  mmt info s3://bucket/train/  # the manifest of a dataset in object storage (AWS_* variables)\n  mmt info train/ --ranks 8    # which shards each of 8 ranks reads with whole shards per rank"
    )]
    Info {
        /// The .mmt file, a dataset folder, or a dataset's URL (s3://, gs://, az://, http(s)://)
        file: PathBuf,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// For a dataset: the shards, rows and bytes each of N ranks owns when a loader reads
        /// whole shards per rank (split="shards"), and the padding or dropping that evens them
        #[arg(long, value_name = "N")]
        ranks: Option<u64>,
    },
    /// Check every block checksum (in parallel) and the padding; exit code 3 on corruption
    #[command(
        after_help = "Examples:\n  mmt verify data.mmt\n  mmt verify data.mmt --tensor x --rows 1000..2000\n  mmt verify train/            # every shard of a dataset, against its manifest"
    )]
    Verify {
        /// The .mmt file, or a dataset folder
        file: PathBuf,
        /// Verify only this tensor
        #[arg(long)]
        tensor: Option<String>,
        /// With --tensor: verify only the blocks behind rows START..END
        #[arg(long, value_name = "START..END", requires = "tensor")]
        rows: Option<String>,
        /// Print nothing but errors
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a store's tensors back out as .npy files or one .safetensors file
    #[command(
        after_help = "Examples:\n  mmt export data.mmt --to npy out_dir/\n  mmt export data.mmt --to safetensors data.safetensors\n\n\
        BF16 and fp8 tensors become raw void .npy arrays (<V2, <V1), as ml_dtypes saves them:\n\
        read them with np.load(f).view(ml_dtypes.bfloat16)."
    )]
    Export {
        /// The .mmt file
        store: PathBuf,
        /// Output kind: npy (a folder of NAME.npy) or safetensors (one file)
        #[arg(long, value_enum)]
        to: export::Kind,
        /// The folder (npy) or file (safetensors) to write
        output: PathBuf,
        /// Print nothing but errors
        #[arg(short, long)]
        quiet: bool,
    },
    /// Measure mmap against copy (open, first-touch pass, shuffled batches, heap growth) on a store or a generated sample
    ///
    /// Sequential cases: open, and one pass over the tensor, mapped against copied against plain
    /// read(). Shuffled batches: the first --batches batches of --batch-size rows of a full-shuffle
    /// epoch order of the tensor's rows, gathered into one reused buffer by take_into on a mapping
    /// (with the default and with Random advice), by take_into on a copy (Store::read, whose read
    /// is timed), by one pread per row in file order, on one thread and on the loader's pool, and
    /// by mmtensor::Loader (prefetch 2, its own buffers, next-batch madvise hints).
    #[command(
        after_help = "Examples:\n  mmt bench                       # generates a 2 GiB sample in the temp folder\n  \
        mmt bench data.mmt --cold      # evicts the file from the page cache before each case\n  \
        mmt bench --size 512MiB --repeats 7 --json\n  \
        mmt bench --batch-size 256 --batches all   # shuffled batches over a whole epoch"
    )]
    Bench(bench::Args),
}

/// What `convert` and `append` share: how tensors are stored.
#[derive(clap::Args)]
struct WriteArgs {
    /// Output dtype: DT for every floating-point tensor, NAME=DT for one (repeatable)
    #[arg(long, value_name = "[NAME=]DT")]
    dtype: Vec<String>,
    /// Dtype of raw void (ml_dtypes) inputs: DT for all, NAME=DT for one (repeatable)
    #[arg(long, value_name = "[NAME=]DT")]
    input_dtype: Vec<String>,
    /// Alignment of every tensor in bytes: a power of two from 64 to 2^30
    #[arg(long, default_value_t = mmtensor_format::DEFAULT_ALIGNMENT, value_name = "N")]
    alignment: u64,
    /// Checksum block size in bytes: a power of two from 4096 to 2^30
    #[arg(long, default_value_t = mmtensor_format::DEFAULT_BLOCK_SIZE, value_name = "N")]
    block_size: u64,
    /// Extra metadata entry (repeatable)
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// Store every nonzero byte of a bool tensor as 1 (by default a byte other than 0 and 1 is an error)
    #[arg(long)]
    normalize_bools: bool,
    /// Keep only these tensors (output names, comma-separated or repeated); default: every one
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    columns: Vec<String>,
    /// Print nothing but errors
    #[arg(short, long)]
    quiet: bool,
}

impl WriteArgs {
    fn options(&self) -> Result<ConvertOptions> {
        let mut options = ConvertOptions::default();
        options.normalize_bools = self.normalize_bools;
        options.columns = self.columns.clone();
        for d in &self.dtype {
            options.dtype.add(d).context("--dtype")?;
        }
        for d in &self.input_dtype {
            options.input_dtype.add(d).context("--input-dtype")?;
        }
        options.alignment = self.alignment;
        options.block_size = self.block_size;
        for kv in &self.metadata {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--meta {kv:?}: expected KEY=VALUE"))?;
            options.metadata.insert(k.to_owned(), v.to_owned());
        }
        Ok(options)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", message(&err));
            if let Some(hint) = hint(&err) {
                eprintln!("hint: {hint}");
            }
            if is_cancelled(&err) {
                ExitCode::from(EXIT_INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Convert {
            inputs,
            output,
            shard_size,
            write,
        } => {
            let options = write.options()?;
            let quiet = write.quiet;
            let inputs = parse_inputs(&inputs)?;
            let cancel = ctrl_c_cancels()?;
            if let Some(size) = shard_size {
                return write_dataset(quiet, false, &cancel, |progress| {
                    mmtensor_convert::convert_dataset(
                        &inputs, &output, &options, size, progress, &cancel,
                    )
                });
            }
            let plan = mmtensor_convert::plan(&inputs, &options)?;
            if !quiet {
                note_stale_partials(&output);
            }
            let Some(summary) = with_progress(quiet, &cancel, |progress| {
                mmtensor_convert::write_plan(&plan, &output, &options, progress, &cancel)
            })?
            else {
                return Ok(ExitCode::SUCCESS);
            };
            if !quiet {
                eprintln!(
                    "wrote {}: {} tensor{}, {} read, {} written",
                    summary.path.display(),
                    summary.tensors,
                    if summary.tensors == 1 { "" } else { "s" },
                    human::bytes(summary.input_bytes),
                    human::bytes(summary.file_len)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Append {
            dir,
            inputs,
            shard_size,
            no_fill,
            write,
        } => {
            let options = write.options()?;
            let inputs = parse_inputs(&inputs)?;
            let cancel = ctrl_c_cancels()?;
            let fill = if no_fill {
                mmtensor_convert::Fill::Never
            } else {
                mmtensor_convert::Fill::LastShard
            };
            write_dataset(write.quiet, false, &cancel, |progress| {
                mmtensor_convert::append_with(
                    &dir, &inputs, &options, shard_size, fill, progress, &cancel,
                )
            })
        }
        Command::Compact {
            dir,
            shard_size,
            quiet,
        } => {
            let cancel = ctrl_c_cancels()?;
            write_dataset(quiet, true, &cancel, |progress| {
                mmtensor_convert::compact(&dir, shard_size, progress, &cancel)
            })
        }
        Command::Prune {
            dir,
            dry_run,
            quiet,
        } => prune(&dir, dry_run, quiet),
        Command::Info { file, json, ranks } => {
            info::run(&file, json, ranks)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            file,
            tensor,
            rows,
            quiet,
        } => verify(&file, tensor.as_deref(), rows.as_deref(), quiet),
        Command::Export {
            store,
            to,
            output,
            quiet,
        } => {
            export::run(&store, to, &output, quiet)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            bench::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `mmt verify DIR`: opens the dataset (which checks every shard's length, header checksum and
/// tensors against the manifest) and verifies every shard's blocks; notes files the manifest does
/// not list.
fn verify_dataset(dir: &std::path::Path, quiet: bool) -> Result<ExitCode> {
    let ds = open_dataset_mapped(dir)?;
    match ds.verify() {
        Ok(()) => {
            if !quiet {
                println!(
                    "{}: ok ({} shard{}, {} rows, every shard matches the manifest and every checksum matches)",
                    dir.display(),
                    ds.shards().len(),
                    if ds.shards().len() == 1 { "" } else { "s" },
                    ds.rows()
                );
                let stray = unlisted_files(dir, ds.manifest())?;
                if !stray.is_empty() {
                    eprintln!(
                        "note: {} file{} in {} {} not part of the dataset: {}",
                        stray.len(),
                        if stray.len() == 1 { "" } else { "s" },
                        dir.display(),
                        if stray.len() == 1 { "is" } else { "are" },
                        stray.join(", ")
                    );
                    eprintln!(
                        "hint: shards that an append or a compaction replaced, and what an interrupted \
                         write leaves; `mmt prune {}` deletes them once no reader holds an older manifest",
                        dir.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_corruption() => {
            eprintln!("error: {e}");
            eprintln!("hint: the shard is corrupted; convert its rows again from their sources");
            Ok(ExitCode::from(EXIT_CORRUPT))
        }
        Err(e) => Err(e.into()),
    }
}

/// Shard files (`*.mmt`) and a writer's hidden partial files (`.*.partial`) in the dataset folder
/// that `manifest` does not list, sorted by name.
fn unlisted_files(
    dir: &std::path::Path,
    manifest: &mmtensor_format::Manifest,
) -> Result<Vec<String>> {
    let listed: std::collections::HashSet<&str> =
        manifest.shards().iter().map(|s| s.file()).collect();
    let mut stray = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let shard = name.ends_with(".mmt") && !listed.contains(name.as_str());
        let partial = name.starts_with('.') && name.ends_with(".partial");
        if shard || partial {
            stray.push(name);
        }
    }
    stray.sort();
    Ok(stray)
}

fn parse_inputs(inputs: &[String]) -> Result<Vec<Input>> {
    Ok(inputs
        .iter()
        .map(|i| Input::parse(i))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Installs the Ctrl-C handler: it sets the returned flag, which the conversion polls between
/// chunks; the writer is then dropped, which removes its temporary file, and the output name
/// keeps whatever it held before.
fn ctrl_c_cancels() -> Result<Arc<AtomicBool>> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    Ok(cancel)
}

/// Runs a write (`convert`, `convert --shard-size`, `append`) with the progress bar (or the test
/// hook's Ctrl-C gate). `None` when the output is complete and in place but its durability is
/// unconfirmed (`NotDurable`): that is printed as a warning, and the command succeeds.
fn with_progress<T>(
    quiet: bool,
    cancel: &AtomicBool,
    write: impl FnOnce(&dyn Progress) -> mmtensor_convert::Result<T>,
) -> Result<Option<T>> {
    let bar = Bar::new(quiet);
    let gate = HoldForCtrlC::from_env(&bar, cancel);
    let progress: &dyn Progress = match &gate {
        Some(gate) => gate,
        None => &bar,
    };
    let result = write(progress);
    bar.done();
    match result {
        Ok(summary) => Ok(Some(summary)),
        Err(e @ mmtensor_convert::Error::NotDurable { .. }) => {
            eprintln!("warning: {e}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs a dataset write (`convert --shard-size`, `append`, `compact`) with the progress bar and
/// prints what it did.
fn write_dataset(
    quiet: bool,
    compaction: bool,
    cancel: &AtomicBool,
    write: impl FnOnce(&dyn Progress) -> mmtensor_convert::Result<mmtensor_convert::DatasetSummary>,
) -> Result<ExitCode> {
    let Some(summary) = with_progress(quiet, cancel, write)? else {
        return Ok(ExitCode::SUCCESS);
    };
    if quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let m = &summary.manifest;
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let dataset = format!(
        "the dataset has {} shard{}, {} rows",
        m.shards().len(),
        plural(m.shards().len()),
        m.rows()
    );
    if compaction && summary.shards_written == 0 {
        eprintln!(
            "{}: nothing to do: no run of small shards makes fewer shards when merged; {dataset}",
            summary.dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let row_bytes = m
        .columns()
        .iter()
        .fold(0u64, |a, c| a.saturating_add(c.row_bytes()));
    let rewritten = summary.rows_rewritten.saturating_mul(row_bytes);
    let rows = match (summary.rows_written, summary.replaced.as_slice()) {
        (r, []) => format!("{r} rows"),
        (0, replaced) => format!(
            "{} rows merged from {} shard{}",
            summary.rows_rewritten,
            replaced.len(),
            plural(replaced.len())
        ),
        (r, [one]) => format!(
            "{r} rows, after the {} rows of {one}, which it replaces",
            summary.rows_rewritten
        ),
        (r, replaced) => format!(
            "{r} rows, after the {} rows of the {} shards it replaces",
            summary.rows_rewritten,
            replaced.len()
        ),
    };
    eprintln!(
        "wrote {}: {} new shard{} ({rows}, {} read, {} written); {dataset}",
        summary.dir.display(),
        summary.shards_written,
        plural(summary.shards_written),
        human::bytes(summary.input_bytes.saturating_add(rewritten)),
        human::bytes(summary.bytes_written),
    );
    if !summary.replaced.is_empty() {
        // Counted again from the folder: earlier writes may have left unlisted files too.
        let stray = unlisted_files(&summary.dir, m).unwrap_or_default();
        eprintln!(
            "note: {} unlisted file{} in {} (the replaced shards stay for readers that opened the \
             dataset before); `mmt prune {}` deletes them once no reader holds an older manifest",
            stray.len(),
            plural(stray.len()),
            summary.dir.display(),
            summary.dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mmt prune DIR`: deletes (or lists) the unlisted shard files and writers' leftovers.
fn prune(dir: &std::path::Path, dry_run: bool, quiet: bool) -> Result<ExitCode> {
    let pruned = mmtensor_convert::prune(dir, dry_run)?;
    if !quiet {
        let verb = if dry_run { "would delete" } else { "deleted" };
        for (name, _) in &pruned.removed {
            if dry_run {
                println!("{}", dir.join(name).display());
            }
        }
        eprintln!(
            "{}: {verb} {} file{} ({})",
            dir.display(),
            pruned.removed.len(),
            if pruned.removed.len() == 1 { "" } else { "s" },
            human::bytes(pruned.bytes)
        );
        if !pruned.kept.is_empty() {
            eprintln!(
                "note: left {}: .mmt files the manifest does not list, under names no dataset writer makes",
                pruned.kept.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(
    file: &std::path::Path,
    tensor: Option<&str>,
    rows: Option<&str>,
    quiet: bool,
) -> Result<ExitCode> {
    // A file:// URL names a local path: verify it there.
    if let Some(path) = file.to_str().and_then(|f| f.strip_prefix("file://")) {
        return verify(std::path::Path::new(path), tensor, rows, quiet);
    }
    if let Some(url) = file.to_str().filter(|f| f.contains("://")) {
        anyhow::bail!(
            "{url}: mmt verify checks local files; a dataset in object storage is checked block by \
             block as it is fetched (mmtensor.open_dataset, mmtensor_remote::Cache::fetch), so a \
             corrupt shard never reaches a cache. To check the bucket's copy, download it (for \
             example `aws s3 sync`) and verify the folder"
        );
    }
    if file.is_dir() {
        if tensor.is_some() {
            anyhow::bail!("--tensor and --rows apply to one store; give a shard's path to check part of a dataset");
        }
        return verify_dataset(file, quiet);
    }
    // Only .mmt files carry checksums; read the header first so other files get a clear error.
    info::read_layout(file)?;
    let store = open_mapped(file)?;
    let result = match (tensor, rows) {
        (None, _) => store.verify(),
        (Some(name), None) => store.tensor(name).and_then(|t| t.verify()),
        (Some(name), Some(range)) => {
            let (start, end) = parse_rows(range)?;
            store
                .tensor(name)
                .and_then(|t| t.rows(start..end))
                .and_then(|t| t.verify())
        }
    };
    match result {
        Ok(()) => {
            if !quiet {
                let what = match (tensor, rows) {
                    (None, _) => format!("{} tensors", store.names().len()),
                    (Some(t), None) => format!("tensor `{t}`"),
                    (Some(t), Some(r)) => format!("rows {r} of tensor `{t}`"),
                };
                println!("{}: ok ({what}, every checksum matches)", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_corruption() => {
            eprintln!("error: {e}");
            eprintln!("hint: the file is corrupted; convert it again from its sources");
            Ok(ExitCode::from(EXIT_CORRUPT))
        }
        Err(e) => Err(e.into()),
    }
}

/// Mentions the hidden temporary files (`.NAME.XXXXXX.partial`) that killed conversions to the same
/// output left behind. They are never deleted here: another `mmt convert` to the same name may be
/// writing one right now, and removing it would make that conversion fail at its final rename.
/// Maps the store at `path` for the duration of one command: the one place the CLI calls the unsafe
/// [`mmtensor::Store::open`].
///
/// The promise `Store::open` asks for (no other process modifies or truncates the file while it is
/// mapped) is not one this program can keep: it is the user's, stated in `mmt --help`, as it is for
/// every tool that maps files (ripgrep, `np.load(mmap_mode="r")`). What the CLI does on its side:
/// it only reads through the loader's views, its own writer only ever renames complete files over
/// targets, and `verify` checks the file's length before and while it reads, so a truncation is
/// reported as an error rather than a `SIGBUS`.
pub(crate) fn open_mapped(path: &std::path::Path) -> Result<mmtensor::Store> {
    // SAFETY: see above; the contract is passed to the user, documented in `mmt --help`.
    let store = unsafe { mmtensor::Store::open(path) }?;
    Ok(store)
}

/// Maps every shard of the dataset in `dir`: the one place the CLI calls the unsafe
/// [`mmtensor::Dataset::open`], whose promise is `Store::open`'s for every shard, passed to the
/// user exactly as in [`open_mapped`].
pub(crate) fn open_dataset_mapped(dir: &std::path::Path) -> Result<mmtensor::Dataset> {
    // SAFETY: see `open_mapped`; the contract is passed to the user, documented in `mmt --help`.
    let ds = unsafe { mmtensor::Dataset::open(dir) }?;
    Ok(ds)
}

fn note_stale_partials(output: &std::path::Path) {
    if output.file_name().is_none() {
        return;
    }
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let ours = mmtensor_convert::AtomicFile::is_temp_of(output, &entry.file_name());
        if ours {
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "note: {} ({}) was left by an interrupted conversion to {}; delete it unless another `mmt convert` is writing {} now",
                dir.join(&file).display(),
                human::bytes(size),
                output.display(),
                output.display()
            );
        }
    }
}

fn parse_rows(text: &str) -> Result<(u64, u64)> {
    let (a, b) = text
        .split_once("..")
        .with_context(|| format!("--rows {text:?}: expected START..END"))?;
    let a = a
        .trim()
        .parse()
        .with_context(|| format!("--rows {text:?}: START is not a row number"))?;
    let b = b
        .trim()
        .parse()
        .with_context(|| format!("--rows {text:?}: END is not a row number"))?;
    Ok((a, b))
}

/// The error and its causes on one line, skipping a cause whose text the line already holds
/// (library errors often print their source themselves).
fn message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn is_cancelled(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(
            e.downcast_ref::<mmtensor_convert::Error>(),
            Some(mmtensor_convert::Error::Cancelled { .. })
        )
    })
}

/// A short suggestion for errors whose message alone may not say what to do.
fn hint(err: &anyhow::Error) -> Option<&'static str> {
    for e in err.chain() {
        if let Some(load) = e.downcast_ref::<mmtensor::Error>() {
            if matches!(load, mmtensor::Error::UnknownFormat { .. }) {
                return Some("mmt reads .mmt stores; convert other files with `mmt convert`");
            }
            if let mmtensor::Error::Io { path, source, .. } = load {
                let manifest = path.file_name() == Some(mmtensor_format::MANIFEST_FILE.as_ref());
                if manifest && source.kind() == std::io::ErrorKind::NotFound {
                    return Some("a folder is a dataset when it holds manifest.mmtm; make one with `mmt convert INPUTS -o DIR --shard-size SIZE`");
                }
            }
        }
        if let Some(fmt) = e.downcast_ref::<mmtensor_format::Error>() {
            if matches!(fmt, mmtensor_format::Error::BadMagic { .. }) {
                return Some(
                    "this is not an .mmt store; convert it with `mmt convert FILE -o OUT.mmt`",
                );
            }
        }
    }
    None
}

/// A test hook: with `MMT_TEST_HOLD_FOR_CTRL_C` set, the conversion stops after its first chunk,
/// says so on stderr and waits until Ctrl-C has set the cancel flag. The Ctrl-C test then signals
/// a conversion that is certainly under way and cannot finish first, however fast the machine.
struct HoldForCtrlC<'a> {
    inner: &'a dyn Progress,
    cancel: &'a AtomicBool,
    held: AtomicBool,
}

impl<'a> HoldForCtrlC<'a> {
    fn from_env(inner: &'a dyn Progress, cancel: &'a AtomicBool) -> Option<Self> {
        std::env::var_os("MMT_TEST_HOLD_FOR_CTRL_C").map(|_| HoldForCtrlC {
            inner,
            cancel,
            held: AtomicBool::new(false),
        })
    }
}

impl Progress for HoldForCtrlC<'_> {
    fn start(&self, plan: &Plan) {
        self.inner.start(plan);
    }

    fn carried(&self, bytes: u64) {
        self.inner.carried(bytes);
    }

    fn tensor(&self, index: usize, tensor: &PlannedTensor) {
        self.inner.tensor(index, tensor);
    }

    fn advance(&self, bytes: u64) {
        self.inner.advance(bytes);
        if !self.held.swap(true, Ordering::SeqCst) {
            eprintln!("mmt: holding the conversion until Ctrl-C (MMT_TEST_HOLD_FOR_CTRL_C)");
            while !self.cancel.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    fn finish(&self) {
        self.inner.finish();
    }
}

/// The conversion's progress bar: drawn on stderr only when it is a terminal and not `--quiet`.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(quiet: bool) -> Bar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg:<24!} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        Bar { bar }
    }

    fn done(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn start(&self, plan: &Plan) {
        self.bar.set_length(plan.input_bytes());
    }

    fn carried(&self, bytes: u64) {
        self.bar.inc_length(bytes);
    }

    fn tensor(&self, _index: usize, tensor: &PlannedTensor) {
        self.bar.set_message(tensor.name().to_owned());
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finish(&self) {
        self.bar.set_message("fsync + rename");
    }
}
