//! What the writing commands (`convert`, `append`, `compact`) share: Ctrl-C, the progress bar
//! (and the test hook that holds a write for Ctrl-C), and the summary a dataset write prints.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mmtensor_convert::{Plan, PlannedTensor, Progress};

use crate::human;
use crate::prune::unlisted_files;

/// Installs the Ctrl-C handler: it sets the returned flag, which the conversion polls between
/// chunks; the writer is then dropped, which removes its temporary file, and the output name
/// keeps whatever it held before.
pub(crate) fn ctrl_c_cancels() -> Result<Arc<AtomicBool>> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    Ok(cancel)
}

/// Runs a write (`convert`, `convert --shard-size`, `append`) with the progress bar (or the test
/// hook's Ctrl-C gate). `None` when the output is complete and in place but its durability is
/// unconfirmed (`NotDurable`): that is printed as a warning, and the command succeeds.
pub(crate) fn with_progress<T, E: Into<anyhow::Error>>(
    quiet: bool,
    cancel: &AtomicBool,
    write: impl FnOnce(&dyn Progress) -> std::result::Result<T, E>,
) -> Result<Option<T>> {
    let bar = Bar::new(quiet);
    let gate = HoldForCtrlC::from_env(&bar, cancel);
    let progress: &dyn Progress = match &gate {
        Some(gate) => gate,
        None => &bar,
    };
    let result = write(progress).map_err(Into::into);
    bar.done();
    match result {
        Ok(summary) => Ok(Some(summary)),
        Err(e) => match e.downcast_ref::<mmtensor_convert::Error>() {
            Some(durable @ mmtensor_convert::Error::NotDurable { .. }) => {
                eprintln!("warning: {durable}");
                Ok(None)
            }
            _ => Err(e),
        },
    }
}

/// Runs a dataset write (`convert --shard-size`, `append`, `compact`) with the progress bar and
/// prints what it did.
pub(crate) fn write_dataset<E: Into<anyhow::Error>>(
    quiet: bool,
    compaction: bool,
    cancel: &AtomicBool,
    write: impl FnOnce(&dyn Progress) -> std::result::Result<mmtensor_convert::DatasetSummary, E>,
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
        m.num_rows()
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
