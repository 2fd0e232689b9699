//! `mmt`: repack NumPy and safetensors data into aligned `.mmt` stores, inspect, verify, export and
//! benchmark them.
//!
//! Exit codes: 0 success; 1 an error (bad input, I/O); 2 a usage error; 3 `verify` found corrupted
//! data; 130 interrupted (Ctrl-C), with nothing left under the output name.

mod append;
mod bench;
mod commit;
mod compact;
mod convert;
mod errors;
mod export;
mod human;
mod info;
mod open;
mod prune;
mod push;
mod tokens;
mod verify;
mod write;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mmtensor_convert::{ConvertOptions, Fill, Input};

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
    /// Convert .npy, .npz, .safetensors, .mmt, Parquet and Arrow IPC (.arrow, .feather) files, dataset folders and folders of .npy shards into one .mmt store or a sharded dataset
    #[command(after_help = "Examples:\n  \
        mmt convert train.npz -o train.mmt\n  \
        mmt convert small-shards/ -o train/ --shard-size 1GiB   # a dataset cut again (merged shards)\n  \
        mmt convert train/ -o train.mmt --columns x --dtype bf16 # a dataset's column into one store, cast\n  \
        mmt convert x=features.npy y=labels.npy -o data.mmt --dtype bf16\n  \
        mmt convert 'emb=shards/part-*.npy' -o emb.mmt          # shards joined along axis 0\n  \
        mmt convert model.safetensors -o model.mmt --dtype w=f16 --alignment 64\n  \
        mmt convert bf16.npy -o out.mmt --input-dtype bf16       # ml_dtypes arrays saved as <V2\n  \
        mmt convert data.parquet -o data.mmt --columns x,y       # one tensor per column, rows first\n  \
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
        tokens: tokens::TokenArgs,
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
        tokens: tokens::TokenArgs,
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
    /// Upload a dataset folder to object storage: its new shards, checked, then the manifest, last, by a conditional put
    #[command(after_help = "Examples:\n  \
        mmt push train/ s3://my-bucket/train/\n  \
        mmt convert 'x=shards/*.npy' y=y.npy -o s3://my-bucket/train/ --shard-size 256MiB   # no local copy\n  \
        mmt append s3://my-bucket/train/ new.npz                                           # new shards only\n\n\
        Shards the remote dataset already holds (same name, length and header checksum) are not sent\n\
        again; each uploaded shard is checked (length, header checksum). The manifest goes last, created\n\
        only if there is none, or replaced only if nobody changed it since the push read it: readers never\n\
        see a manifest whose shards are missing, and a push (or append) racing another fails with nothing\n\
        of its own listed. A remote dataset with more rows than the local one is not pushed over.\n\
        Credentials and endpoint: the standard AWS_*, GOOGLE_*, AZURE_* variables.")]
    Push {
        /// The dataset folder (holding manifest.mmtm)
        dir: PathBuf,
        /// Where the dataset goes: s3://bucket/prefix/, gs://..., az://...
        url: String,
        /// Print nothing but errors
        #[arg(short, long)]
        quiet: bool,
    },
    /// Make the rows of every finished part of a write by many writers visible at once, in the order of the parts' ids
    #[command(after_help = "Examples:\n  \
        mmt commit train/ --parts 64   # after 64 tasks wrote parts 0..63 (mmtensor.DatasetWriter(..., part=i))\n  \
        mmt commit train/              # whatever parts have finished\n\n\
        Each part writer wrote its own shards (part-ID-NONCE-NNNNN.mmt) and a record in train/_parts/.\n\
        The commit lists their shards after the dataset's own (if any), by increasing part id, and\n\
        replaces the manifest by one atomic rename. It changes nothing, and names the parts, when a part\n\
        is still being written, when a part's writer died before it finished (write it again), when a\n\
        part of 0..N is missing, or when a part's columns are not the dataset's. The spec is in\n\
        docs/FORMAT.md, \"Many writers, one commit\".")]
    Commit {
        /// The dataset folder the parts were written into
        dir: PathBuf,
        /// The write was made of parts 0..N: refuse if one of them is missing
        #[arg(long, value_name = "N")]
        parts: Option<u64>,
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
        /// The .mmt file (with --to megatron: a .mmt file or a dataset folder)
        store: PathBuf,
        /// Output kind: npy (a folder of NAME.npy), safetensors (one file), or megatron (a ragged
        /// column as a Megatron-LM indexed dataset OUTPUT.bin + OUTPUT.idx)
        #[arg(long, value_enum)]
        to: export::Kind,
        /// The folder (npy), file (safetensors) or prefix (megatron) to write
        output: PathBuf,
        /// With --to megatron: the ragged column to write
        #[arg(long, default_value = "tokens", value_name = "NAME")]
        column: String,
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
    /// by mmtensor::Loader (prefetch 2, its own buffers and gather threads, and its own way of
    /// reading a cold epoch: a sweep of the file, or advice, docs/LOADER.md "How an epoch is read").
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
    // `mmt info big.mmt | head` closes stdout early: end quietly, as Unix tools do, rather than
    // report a broken pipe. Rust starts programs with SIGPIPE ignored, so writes would fail.
    // SAFETY: a plain syscall restoring the default disposition, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => errors::report(&err),
    }
}

/// Turns the arguments into the libraries' types and hands them to the command.
fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Convert {
            inputs,
            output,
            shard_size,
            tokens,
            write,
        } => {
            let options = write.options()?;
            if let Some(source) = tokens::source(&inputs, &tokens)? {
                if push::url_of(&output).is_some() {
                    anyhow::bail!("a token stream is converted to a local folder; `mmt push` it to a bucket after");
                }
                return tokens::run(&source, &output, shard_size, &options, write.quiet);
            }
            let inputs = parse_inputs(&inputs)?;
            match push::url_of(&output) {
                Some(url) => push::convert(&inputs, url, shard_size, &options, write.quiet),
                None => convert::run(&inputs, &output, shard_size, &options, write.quiet),
            }
        }
        Command::Append {
            dir,
            inputs,
            shard_size,
            no_fill,
            tokens,
            write,
        } => {
            let options = write.options()?;
            if let Some(source) = tokens::source(&inputs, &tokens)? {
                if push::url_of(&dir).is_some() {
                    anyhow::bail!("token files are appended to a local dataset folder; `mmt push` it to a bucket after");
                }
                return tokens::append(&source, &dir, shard_size, &options, write.quiet);
            }
            let inputs = parse_inputs(&inputs)?;
            let fill = if no_fill {
                Fill::Never
            } else {
                Fill::LastShard
            };
            match push::url_of(&dir) {
                Some(url) => push::append(url, &inputs, &options, shard_size, write.quiet),
                None => append::run(&dir, &inputs, &options, shard_size, fill, write.quiet),
            }
        }
        Command::Compact {
            dir,
            shard_size,
            quiet,
        } => compact::run(&dir, shard_size, quiet),
        Command::Prune {
            dir,
            dry_run,
            quiet,
        } => prune::run(&dir, dry_run, quiet),
        Command::Commit { dir, parts, quiet } => commit::run(&dir, parts, quiet),
        Command::Push { dir, url, quiet } => push::run(&dir, &url, quiet),
        Command::Info { file, json, ranks } => {
            info::run(&file, json, ranks)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            file,
            tensor,
            rows,
            quiet,
        } => verify::run(&file, tensor.as_deref(), rows.as_deref(), quiet),
        Command::Export {
            store,
            to,
            output,
            column,
            quiet,
        } => {
            export::run(&store, to, &output, &column, quiet)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            bench::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_inputs(inputs: &[String]) -> Result<Vec<Input>> {
    Ok(inputs
        .iter()
        .map(|i| Input::parse(i))
        .collect::<Result<Vec<_>, _>>()?)
}
