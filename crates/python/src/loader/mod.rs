//! `mmtensor.Loader`: the Rust training loader (`mmtensor::Loader`) for Python, handing out each
//! batch as a dict of writable NumPy arrays or torch tensors over the loader's own buffers, or
//! over torch buffers (pinned memory) it gathers into directly.
//!
//! This file is the class; `options.rs` reads its arguments and builds the Rust loader,
//! `shared.rs` holds what the class and its iterations share, `iter.rs` is an iteration,
//! `torch.rs` the torch buffers it may gather into, `batch.rs` a batch as Python objects.

mod batch;
mod iter;
mod mix;
mod options;
mod shared;
mod torch;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use mmtensor::order::Shuffle;
use mmtensor::{LoaderOptions, LoaderState};
use pyo3::exceptions::PyUserWarning;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString, PyTuple};

use crate::args::{self, non_negative};
use crate::errors::load_error;

pub(crate) use iter::LoaderIter;
use iter::Streams;
pub(crate) use mix::Mix;
use options::{loader_error, Ranks, Target};
use shared::Shared;
use torch::{Refill, TorchAlloc};

/// Loader(source, batch_size, *, columns=None, shuffle=False, seed=0, rank=0, world_size=1,
///        drop_last=False, split="rows", prefetch=2, output="numpy", pin_memory=False,
///        block_rows=None, window_blocks=None, dtype=None, seq_len=None, within_documents=False,
///        pad=None, group_by_length=None)
///
/// Shuffled, rank-split batches of rows of a store, gathered ahead in Rust threads.
///
/// `source` is a path (the loader maps the file itself; a dataset folder is opened as by
/// `open_dataset`), an open `Store`, a `Dataset` from `open_dataset` (one index space over its
/// shards), or a `Mix` of them (rows drawn from each by weight; its state dict adds `mix`). `columns` names the tensors to read (default: every tensor whose first dimension equals the first tensor's); a batch
/// is a dict of the same rows of each: `{"x": array[batch_size, ...], "y": array[batch_size]}`.
///
/// `shuffle`: False (rows in order), True or "full" (a permutation seeded by (seed, epoch)), or
/// "block" (blocks of `block_rows` consecutive rows permuted, then rows shuffled within windows of
/// `window_blocks` blocks: a cold epoch reads the disk nearly sequentially; defaults 256 and 64).
/// `rank` / `world_size` split each epoch as torch's DistributedSampler does (padding by repeating
/// rows from the start, or `drop_last`, which also drops a final short batch). With
/// `split="shards"` each rank instead reads only the whole shards it owns (a dataset's shards
/// balanced over ranks by rows, the same every epoch), shuffled among themselves, so a rank reads
/// and downloads only its part: open a remote dataset with `open_dataset(url, rank=r,
/// world_size=w)` to fetch just those shards. docs/LOADER.md specifies the order exactly: it is
/// the same on every run, machine, thread count and prefetch. A dataset opened for one rank
/// (`open_dataset(..., rank=r, world_size=w)`) is read as that rank with `split="shards"` unless
/// told otherwise.
///
/// Gather threads (up to `prefetch` of them, as the cores allow) gather up to `prefetch` batches
/// ahead, without the GIL, each reading its batch's rows in file order; a cold epoch that fits in
/// memory is first read in file order at the disk's sequential speed (docs/LOADER.md, "How an
/// epoch is read"). `output="numpy"` gives writable NumPy arrays (bf16 and fp8 as ml_dtypes
/// types), `output="torch"` torch tensors; both own the loader's copy of the rows. A batch's buffers
/// are reused for a later batch only once every array of it is gone: while you drop each batch
/// before the next, the loader's memory stays at about (prefetch + 1) batches. `pin_memory=True`
/// (with `output="torch"`, where torch has CUDA) gathers straight into pinned tensors, so that
/// `.to("cuda", non_blocking=True)` overlaps the copy.
///
/// `dtype` casts columns as they are gathered, in the same pass: a dict of column name to dtype (a
/// name such as "int64", a NumPy or a torch dtype), e.g. `dtype={"tokens": "int64"}` for uint16
/// token ids that `nn.Embedding` refuses; the arrays (or tensors, pinned ones too) of those columns
/// then have that dtype. Columns not named keep theirs; the order and the state do not change.
/// Only casts that cannot fail on any value are made (integer widening, integers into a float that
/// holds them all, bool to numbers, float widening and narrowing): any other raises
/// UnsupportedDtypeError, and a name that is not one of the loader's columns LoaderError, when the
/// loader is made. One dtype for every column is not accepted: name the columns.
///
/// `seq_len` reads sequence windows for language-model training instead of rows: the one ragged
/// column (a token stream; `columns=["tokens"]` names it when there are several) read as its
/// documents back to back, cut into windows of `seq_len + 1` tokens (window `w` is tokens
/// `w * seq_len` to `w * seq_len + seq_len + 1`, so inputs `x = b[:, :-1]` and targets `y = b[:,
/// 1:]`), each window a row of the order above (shuffled, split across ranks, resumed exactly as
/// rows are): batches are `{"tokens": array[batch_size, seq_len + 1]}`, and `dtype={"tokens":
/// "int64"}` widens them as they are gathered. `within_documents=True` cuts windows only within
/// each document (no window crosses a document boundary; a document of `d` tokens gives `(d - 1)
/// // seq_len`). docs/LOADER.md, "Sequence windows", specifies them.
///
/// `pad` reads ragged columns as samples instead (rows of different lengths, without seq_len): a
/// dict of column name to a pad value, or to `{"value": v, "to": n, "multiple_of": m, "truncate":
/// bool}`. Each batch holds such a column as `[batch, width] + item_shape`, every row followed by
/// the pad value up to `width` (the batch's longest row, cut at `to` with `truncate`, or `to`,
/// rounded up to a multiple of `multiple_of`, e.g. 8), and a column `NAME.lengths` (int64) right
/// after it. A row longer than `to` without `truncate` is an error naming it. `group_by_length=k`
/// sorts each window of `k` batches of the epoch by the first padded column's row lengths, cuts it
/// into batches and shuffles those: less padding, still random and resumed exactly (docs/LOADER.md,
/// "Padded rows and length-grouped batches").
///
/// `len(loader)` is the number of batches per epoch on this rank, as torch's DataLoader counts
/// (`loader.num_rows` is the rows; a Store or Dataset counts its tensors or columns). Iterating runs the rest of the current epoch;
/// after its last batch the loader stands at the next epoch. `set_epoch(e)` moves to the start of
/// epoch `e` (unless it already stands in `e`); `state_dict()` / `load_state_dict(d)` save and
/// restore the position (epoch, next batch, and the epoch's global position `samples`) to resume
/// mid-epoch with exactly the remaining batches, with split="rows" also on another world size or
/// after rows were appended (docs/LOADER.md, "Elastic resume").
#[pyclass(frozen, module = "mmtensor", name = "Loader")]
pub(crate) struct Loader {
    /// The Rust loader and what its iterations share with it.
    shared: Arc<Shared>,
    /// The position `load_state_dict` restored, until an iteration starts: a `set_epoch` that
    /// would discard it warns (the loop `for e in range(10): set_epoch(e)` after a restore would
    /// otherwise silently start over at epoch 0).
    restored: Mutex<Option<LoaderState>>,
    /// `seq_len=` and `within_documents=`: what a row of the order is (a row, or a window).
    seq_len: Option<u64>,
    within_documents: bool,
    /// `group_by_length=`: windows of batches sorted by length (another order).
    group_by_length: Option<u64>,
    /// For a loader over a `Mix`: what its state dict says of the mixture.
    mix: Option<mix::MixInfo>,
}

impl Loader {
    fn spec_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let spec = &self.shared.spec;
        let d = PyDict::new(py);
        // What a row is comes first: a state of windows of another length has another number
        // of rows too, and the key that differs first is the one a refusal names.
        d.set_item("seq_len", self.seq_len)?;
        d.set_item("within_documents", self.within_documents)?;
        d.set_item("group_by_length", self.group_by_length)?;
        d.set_item("rows", spec.num_rows)?;
        d.set_item("batch_size", spec.batch_size)?;
        match spec.shuffle {
            Shuffle::None => d.set_item("shuffle", "none")?,
            Shuffle::Full => d.set_item("shuffle", "full")?,
            Shuffle::Block {
                block_rows,
                window_blocks,
            } => {
                d.set_item("shuffle", "block")?;
                d.set_item("block_rows", block_rows)?;
                d.set_item("window_blocks", window_blocks)?;
            }
            _ => d.set_item("shuffle", "unknown")?,
        }
        d.set_item("seed", spec.seed)?;
        d.set_item("world_size", spec.world_size)?;
        d.set_item("drop_last", spec.drop_last)?;
        d.set_item("split", split_name(&spec.split))?;
        // Whole shards per rank: the order depends on every shard's rows, not only their sum.
        if let mmtensor::order::Split::Shards(shards) = &spec.split {
            d.set_item("shard_rows", PyList::new(py, shards.iter())?)?;
        }
        d.set_item("columns", PyList::new(py, &self.shared.column_names)?)?;
        Ok(d)
    }
}

/// `value`'s repr, cut short for an error message (a state's `shard_rows` may list thousands).
fn short_repr(value: &Bound<'_, PyAny>) -> PyResult<String> {
    let r = value.repr()?.to_string();
    Ok(match r.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &r[..i]),
        None => r,
    })
}

/// The `split` argument's value for an order's split.
fn split_name(split: &mmtensor::order::Split) -> &'static str {
    match split {
        mmtensor::order::Split::Shards(_) => "shards",
        _ => "rows",
    }
}

#[pymethods]
impl Loader {
    #[new]
    #[pyo3(signature = (source, batch_size, *, columns=None, shuffle=None, seed=None, rank=None,
                        world_size=None, drop_last=false, split=None, prefetch=None, output="numpy",
                        pin_memory=false, block_rows=None, window_blocks=None, dtype=None,
                        seq_len=None, within_documents=false, pad=None, group_by_length=None,
                        cache=None, cache_size=None, _torch_buffers=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        source: &Bound<'_, PyAny>,
        batch_size: &Bound<'_, PyAny>,
        columns: Option<&Bound<'_, PyAny>>,
        shuffle: Option<&Bound<'_, PyAny>>,
        seed: Option<&Bound<'_, PyAny>>,
        rank: Option<&Bound<'_, PyAny>>,
        world_size: Option<&Bound<'_, PyAny>>,
        drop_last: bool,
        split: Option<&str>,
        prefetch: Option<&Bound<'_, PyAny>>,
        output: &str,
        pin_memory: bool,
        block_rows: Option<&Bound<'_, PyAny>>,
        window_blocks: Option<&Bound<'_, PyAny>>,
        dtype: Option<&Bound<'_, PyAny>>,
        seq_len: Option<&Bound<'_, PyAny>>,
        within_documents: bool,
        pad: Option<&Bound<'_, PyAny>>,
        group_by_length: Option<&Bound<'_, PyAny>>,
        cache: Option<std::path::PathBuf>,
        cache_size: Option<&Bound<'_, PyAny>>,
        _torch_buffers: bool,
    ) -> PyResult<Loader> {
        // A URL is streamed: `Loader(url, ..., cache=..., cache_size=...)` is
        // `Loader(open_dataset(url, cache=..., cache_size=..., stream=True), ...)`.
        let streamed;
        let source = match source.extract::<String>() {
            Ok(url) if url.contains("://") => {
                let Some(dir) = cache else {
                    return Err(loader_error(format!(
                        "{url}: a dataset on object storage is streamed through a cache folder: \
                         Loader(url, batch_size, cache=\"/path\", cache_size=\"10GiB\")"
                    )));
                };
                let capacity = match cache_size {
                    Some(v) => crate::args::parse_size("cache_size", v)?,
                    None => {
                        return Err(loader_error(format!(
                            "{url}: give the cache's size (cache_size=\"10GiB\"): the loader \
                             keeps what it fetches within it"
                        )))
                    }
                };
                let ds = crate::streaming::open(
                    py,
                    url,
                    dir,
                    capacity,
                    mmtensor_remote::StreamOptions::default(),
                )?;
                streamed = Py::new(py, ds)?.into_bound(py).into_any();
                &streamed
            }
            _ if cache.is_some() || cache_size.is_some() => {
                return Err(loader_error(
                    "cache and cache_size are for a dataset on object storage (a URL source)",
                ))
            }
            _ => source,
        };
        let (output, target) = options::output_and_target(py, output, pin_memory, _torch_buffers)?;
        let mut opts = LoaderOptions::new(non_negative("batch_size", batch_size)?);
        opts.shuffle = options::shuffle(shuffle, block_rows, window_blocks)?;
        if let Some(s) = seed {
            opts.seed = non_negative("seed", s)?;
        }
        let rank = rank.map(|r| non_negative("rank", r)).transpose()?;
        let world_size = world_size
            .map(|w| non_negative("world_size", w))
            .transpose()?;
        let split = options::split(split)?;
        opts.drop_last = drop_last;
        if let Some(p) = prefetch {
            opts.prefetch = options::prefetch(p)?;
        }
        if let Some(names) = args::columns(columns)? {
            opts.columns = Some(names);
        }
        if let Some(dtype) = dtype.filter(|d| !d.is_none()) {
            opts.dtypes = options::column_dtypes(dtype)?;
        }
        opts.seq_len = seq_len
            .filter(|s| !s.is_none())
            .map(|s| non_negative("seq_len", s))
            .transpose()?;
        if within_documents && opts.seq_len.is_none() {
            return Err(loader_error(
                "within_documents=True cuts sequence windows within documents: pass seq_len too",
            ));
        }
        opts.within_documents = within_documents;
        let pads = options::pad_args(pad)?;
        opts.group_by_length = group_by_length
            .filter(|g| !g.is_none())
            .map(|g| non_negative("group_by_length", g))
            .transpose()?;
        let group_by_length = opts.group_by_length;
        let ranks = Ranks {
            split,
            rank,
            world_size,
        };
        let seq_len = opts.seq_len;
        let (core, store, path, mix) = match source.cast::<Mix>() {
            Ok(m) => {
                let (core, info, path) =
                    mix::build(py, m.get(), opts, seed.is_some(), ranks, output)?;
                (core, None, path, Some(info))
            }
            Err(_) => {
                let (core, store, path) = options::build(py, source, opts, ranks, output, &pads)?;
                (core, store, path, None)
            }
        };
        Ok(Loader {
            shared: Arc::new(Shared::new(core, store, output, target, path)),
            restored: Mutex::new(None),
            seq_len,
            within_documents,
            group_by_length,
            mix,
        })
    }

    /// The number of batches in the epoch the loader stands in on this rank (torch's meaning of
    /// `len`): of every epoch, except one resumed from another world size or from before rows
    /// were appended, which has the batches that remained of it.
    fn __len__(&self) -> usize {
        self.shared.len()
    }

    /// The columns, in the order batches hold them.
    #[getter]
    fn columns(&self) -> Vec<String> {
        self.shared.column_names.clone()
    }

    /// The epoch the loader stands in.
    #[getter]
    fn epoch(&self) -> u64 {
        self.shared.state().epoch
    }

    /// The index of the next batch the loader hands out in its epoch.
    #[getter]
    fn next_batch(&self) -> u64 {
        self.shared.state().next_batch
    }

    /// Rows per batch.
    #[getter]
    fn batch_size(&self) -> u64 {
        self.shared.spec.batch_size
    }

    /// The number of rows the columns have.
    #[getter]
    fn num_rows(&self) -> u64 {
        self.shared.spec.num_rows
    }

    /// The store's path.
    #[getter]
    fn path(&self) -> String {
        self.shared.path.display().to_string()
    }

    /// Moves to the start of `epoch`, unless the loader already stands in that epoch (a loader
    /// restored mid-epoch by `load_state_dict` then resumes instead of restarting). Stops any
    /// iteration in progress.
    ///
    /// After `load_state_dict`, loop from the restored epoch, `for epoch in range(loader.epoch,
    /// n): loader.set_epoch(epoch)`: a `set_epoch` to another epoch before any iteration discards
    /// the restored position, and warns (UserWarning) that it does.
    fn set_epoch(&self, py: Python<'_>, epoch: &Bound<'_, PyAny>) -> PyResult<()> {
        let epoch = non_negative("epoch", epoch)?;
        self.shared.check_open(py)?;
        let restored = self
            .restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_if(|s| s.epoch != epoch);
        if let Some(s) = restored {
            let text = format!(
                "{}: set_epoch({epoch}) discards the position load_state_dict restored (epoch {}, \
                 batch {}): to resume, loop from the restored epoch, as in \
                 `for epoch in range(loader.epoch, n): loader.set_epoch(epoch)`",
                self.shared.path.display(),
                s.epoch,
                s.next_batch
            );
            let text = std::ffi::CString::new(text).unwrap_or_default();
            let category = py.get_type::<PyUserWarning>();
            PyErr::warn(py, category.as_any(), &text, 1)?;
        }
        self.shared.bump();
        self.shared.with_core(py, |core| core.set_epoch(epoch))
    }

    /// The loader's position and the parameters of its order, as a dict of ints, strings and
    /// lists (picklable, JSON-able): `epoch`, `next_batch`, `samples` (the epoch's global
    /// position), then what `load_state_dict` checks. `rows` is the rows the epoch's order
    /// covers: the loader's, or fewer in an epoch resumed from before rows were appended.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = self.spec_dict(py)?;
        let state = self.shared.state();
        d.set_item("rows", state.rows)?;
        d.set_item("epoch", state.epoch)?;
        d.set_item("next_batch", state.next_batch)?;
        d.set_item("samples", state.samples)?;
        d.set_item("rank", self.shared.spec.rank)?;
        if let Some(mix) = &self.mix {
            d.set_item("mix", mix.state(py, &self.shared, state)?)?;
        }
        Ok(d)
    }

    /// Restores a position saved by `state_dict`: the next iteration hands out exactly the
    /// batches that remained. Refuses (ValueError naming the key) a state of a loader with a
    /// different order: other batch size, shuffle, seed, drop_last, split (and, with
    /// split="shards", each shard's rows), columns, seq_len or within_documents. A state saved by
    /// another rank is accepted (every rank has the same number of batches).
    ///
    /// Split by rows, a state of another world size, or of an epoch over fewer rows (rows
    /// appended since), resumes its epoch from its global position `samples`: the rest of that
    /// epoch's order, over the rows it was started with, split across this loader's ranks
    /// (`len(loader)` is then the batches of that rest, and the next epoch is a whole one over all
    /// rows). docs/LOADER.md, "Elastic resume", specifies it; with split="shards",
    /// group_by_length or a Mix, such a state is refused.
    fn load_state_dict(&self, py: Python<'_>, state: &Bound<'_, PyDict>) -> PyResult<()> {
        let mine = self.spec_dict(py)?;
        for (key, want) in mine.iter() {
            // Rows and ranks may differ where the order allows it: the Rust loader decides below
            // (a mixture's are its sources', checked with them).
            if self.mix.is_none() && (key.eq("rows")? || key.eq("world_size")?) {
                continue;
            }
            let mut got = state.get_item(&key)?;
            // States saved before `split` existed split by rows; before `seq_len` and
            // `within_documents`, they read rows, not windows.
            if got.is_none() && key.eq("split")? {
                got = Some(PyString::new(py, "rows").into_any());
            }
            if got.is_none() && (key.eq("seq_len")? || key.eq("group_by_length")?) {
                got = Some(py.None().into_bound(py));
            }
            if got.is_none() && key.eq("within_documents")? {
                got = Some(PyBool::new(py, false).to_owned().into_any());
            }
            match got {
                Some(got) if got.eq(&want)? => {}
                got => {
                    let changed = got.is_some() && (key.eq("rows")? || key.eq("shard_rows")?);
                    return Err(loader_error(format!(
                        "{}: the state is of another loader: its {} is {}, this loader's is {}{}",
                        self.shared.path.display(),
                        key.str()?,
                        match got {
                            Some(g) => short_repr(&g)?,
                            None => "missing".to_owned(),
                        },
                        short_repr(&want)?,
                        if changed {
                            " (the data changed since the state was saved: an append adds rows \
                             and shards, and the order of an epoch depends on them)"
                        } else {
                            ""
                        }
                    )));
                }
            }
        }
        let get = |key: &str| -> PyResult<u64> {
            match state.get_item(key)? {
                Some(v) => non_negative(key, &v),
                None => Err(loader_error(format!(
                    "{}: the state has no `{key}`",
                    self.shared.path.display()
                ))),
            }
        };
        let (epoch, next_batch) = (get("epoch")?, get("next_batch")?);
        let (rows, world_size) = (get("rows")?, get("world_size")?);
        let samples = match state.get_item("samples")? {
            Some(v) => non_negative("samples", &v)?,
            // Saved before positions existed: always a batch of a whole epoch.
            None => next_batch
                .saturating_mul(self.shared.spec.batch_size)
                .saturating_mul(world_size)
                .min(rows),
        };
        let new = LoaderState {
            epoch,
            next_batch,
            samples,
            rows,
            world_size,
        };
        let counts = mix::saved_counts(self.mix.as_ref(), state, &self.shared.path)?;
        self.shared.bump();
        match counts {
            Some(counts) => self
                .shared
                .with_core(py, |core| mix::restore(py, core, new, counts))??,
            None => self
                .shared
                .with_core(py, |core| core.set_state(new))?
                .map_err(|e| load_error(py, e))?,
        }
        // Where it now stands (a finished epoch's state stands at the next one's start).
        let now = self.shared.state();
        *self.restored.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        Ok(())
    }

    /// A new iteration over the rest of the current epoch; an older iterator of this loader stops.
    fn __iter__(slf: &Bound<'_, Self>) -> PyResult<LoaderIter> {
        let py = slf.py();
        let this = slf.get();
        let shared = &this.shared;
        shared.check_open(py)?;
        let generation = shared.bump();
        // Iterating takes up the restored position: `set_epoch` no longer has one to discard.
        *this.restored.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // A copy of the loader (cheap: shared columns and buffers) builds the epoch's order, which
        // is linear in the rows, without the GIL and without the loader's lock.
        let core = shared.with_core(py, |core| core.clone())?;
        let (stream, refill) = match shared.target {
            Target::Pool => {
                let stream = py
                    .detach(|| core.stream(core.pool()))
                    .map_err(|e| load_error(py, e))?;
                (Streams::Pool(stream), None)
            }
            Target::Torch { pinned } => {
                let (tx, rx) = mpsc::channel();
                let stream = py
                    .detach(|| core.stream(TorchAlloc::new(rx)))
                    .map_err(|e| load_error(py, e))?;
                // Sets are sent by `__next__`, before it waits for a batch.
                let needed = stream.epoch_len().saturating_sub(stream.next_batch());
                let refill = Refill::new(tx, pinned, needed);
                (Streams::Torch(stream), Some(refill))
            }
        };
        Ok(LoaderIter::new(
            Arc::clone(shared),
            generation,
            stream,
            refill,
        ))
    }

    /// Stops iteration and lets go of the loader's reference to the store's bytes (the mapping
    /// goes when nothing else holds it: a Store, an array, a running iteration). The loader then
    /// refuses to iterate, set_epoch or load_state_dict (StoreClosedError); `state_dict()` still
    /// gives where it stood, and batches already handed out stay valid.
    fn close(&self) {
        self.shared.close();
    }

    /// Whether `close()` was called, or the Store the loader was made from is closed.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.shared.check_open(py).is_err()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) {
        self.close();
    }

    fn __repr__(&self) -> String {
        let spec = &self.shared.spec;
        let state = self.shared.state();
        format!(
            "<mmtensor.Loader {} columns={:?} rows={} batch_size={} shuffle={:?} rank={}/{} \
             epoch={} next_batch={}/{}>",
            self.shared.path.display(),
            self.shared.column_names,
            spec.num_rows,
            spec.batch_size,
            spec.shuffle,
            spec.rank,
            spec.world_size,
            state.epoch,
            state.next_batch,
            self.shared.len()
        )
    }
}
