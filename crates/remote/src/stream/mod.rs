//! A dataset streamed from object storage: trained on while it downloads, within a cache smaller
//! than the data.
//!
//! [`StreamingDataset::open`] reads the manifest and, for every shard, its head and checksum
//! table (a few KiB each, verified), and maps each shard from a sparse file in the cache folder
//! that holds only those at first. Its [`StreamingDataset::loader`] is a `mmtensor::Loader` with a
//! gate (`mmtensor::Gate`): when an epoch's pass starts, the gate is told the order of every batch
//! to come, fetches the parts the next batches read, ahead and in that order, and evicts by next
//! use (`engine.rs`, the schedule and the rule; `shard.rs`, the file and its locks). The first
//! batch waits for its own parts only.
//!
//! A part is a run of whole checksum blocks of one shard ([`StreamOptions::part_size`]), fetched
//! by one ranged GET and verified block by block before any byte of it is written: a row is read
//! only from parts verified and pinned, so no unverified byte is ever handed out.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mmtensor::order::EpochOrder;
use mmtensor::{Gate, GateError, GatePass, LoaderOptions};
use mmtensor_format::Manifest;

use crate::folder::{Key, KeyLock, Kind};
use crate::plan::{self, data_parts};
use crate::request::{self, Object};
use crate::{Cache, Error, Expected, Result};

mod engine;
mod shard;

use shard::ShardFile;

/// How a [`StreamingDataset`] fetches.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamOptions {
    /// Bytes per part, the unit fetched, verified and evicted: at least this much, rounded up to
    /// whole checksum blocks. Default 1 MiB: a block-shuffled epoch reads its windows' blocks
    /// and little else.
    pub part_size: u64,
    /// Parts fetched at once (ranged GETs in flight). Default 16; 0 counts as 1.
    pub concurrency: usize,
    /// Bytes of parts held for the batches ahead of the one being gathered (present or being
    /// fetched): how far ahead the pass fetches. `None` (the default): half the cache's capacity.
    pub ahead: Option<u64>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            part_size: 1 << 20,
            concurrency: 16,
            ahead: None,
        }
    }
}

/// The resolved options the engine reads.
pub(crate) struct Resolved {
    pub(crate) concurrency: usize,
    pub(crate) ahead: u64,
}

/// A streamed dataset's shards on disk and on the server, shared by its loaders' passes.
pub(crate) struct Files {
    pub(crate) cache: Arc<Cache>,
    pub(crate) url: String,
    pub(crate) shards: Vec<ShardFile>,
    pub(crate) objects: Vec<Object>,
    /// Shard `s`'s parts are global parts `base[s]..base[s + 1]`.
    base: Vec<u32>,
    /// This process's pins of each part, over all passes: the lock byte is taken with the first
    /// and dropped with the last, and eviction only looks at parts this process does not pin.
    pins: Mutex<Vec<u32>>,
    pub(crate) options: Resolved,
    /// A shared lock on each shard's key, so that whole-file eviction leaves the files alone.
    _keys: Vec<KeyLock>,
}

impl Files {
    pub(crate) fn parts(&self) -> usize {
        *self.base.last().unwrap_or(&0) as usize
    }

    /// The shard and the part within it of global part `g`.
    pub(crate) fn locate(&self, g: u32) -> (usize, usize) {
        let s = self.base.partition_point(|&b| b <= g) - 1;
        (s, (g - self.base[s]) as usize)
    }

    pub(crate) fn part_len(&self, g: u32) -> u64 {
        let (s, p) = self.locate(g);
        let r = &self.shards[s].parts[p].range;
        r.end - r.start
    }

    /// Bytes of the pages part `g`'s range touches, whole: the most the file system allocates
    /// for it (a part need not start or end on a page).
    pub(crate) fn part_pages(&self, g: u32) -> u64 {
        const PAGE: u64 = 4096;
        let (s, p) = self.locate(g);
        let r = &self.shards[s].parts[p].range;
        r.end.div_ceil(PAGE) * PAGE - r.start / PAGE * PAGE
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.cache.capacity()
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.cache.dir().to_path_buf()
    }

    fn pin_counts(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pins part `g` for this process.
    pub(crate) fn pin(&self, g: u32) -> Result<()> {
        let mut pins = self.pin_counts();
        if pins[g as usize] == 0 {
            let (s, p) = self.locate(g);
            self.shards[s].pin(p)?;
        }
        pins[g as usize] += 1;
        Ok(())
    }

    /// Drops one pin of part `g`.
    pub(crate) fn unpin(&self, g: u32) -> Result<()> {
        let mut pins = self.pin_counts();
        let n = &mut pins[g as usize];
        *n = n.saturating_sub(1);
        if *n == 0 {
            let (s, p) = self.locate(g);
            self.shards[s].unpin(p)?;
        }
        Ok(())
    }

    /// Punches part `g` out of its file unless some pass of this process or another process
    /// pins it: whether it was.
    pub(crate) fn evict(&self, g: u32) -> Result<bool> {
        let pins = self.pin_counts();
        if pins[g as usize] > 0 {
            return Ok(false);
        }
        let (s, p) = self.locate(g);
        // The pin counts stay locked: no pass of this process pins the part while it goes.
        Ok(self.shards[s].evict(p)? == shard::Locked::Taken)
    }
}

/// Which parts a dataset row reads, for the columns of one loader.
pub(crate) struct RowMap {
    /// Dataset row of each shard's first row, then the total.
    starts: Vec<u64>,
    /// For each shard, each column's first byte in the file and bytes per row.
    columns: Vec<Vec<(u64, u64)>>,
}

impl RowMap {
    /// Appends to `out` the global parts holding `row`'s bytes of every column.
    pub(crate) fn parts_of(&self, files: &Files, row: u64, out: &mut Vec<u32>) {
        let s = self.starts.partition_point(|&x| x <= row).saturating_sub(1);
        let Some(columns) = self.columns.get(s) else {
            return;
        };
        let local = row - self.starts[s];
        let parts = &files.shards[s].parts;
        for &(start, row_bytes) in columns {
            if row_bytes == 0 {
                continue;
            }
            let a = start + local * row_bytes;
            let b = a + row_bytes;
            let mut i = parts.partition_point(|p| p.range.end <= a);
            while i < parts.len() && parts[i].range.start < b {
                out.push(files.base[s] + i as u32);
                i += 1;
            }
        }
    }
}

/// The gate of one loader: its columns' row map over the dataset's files.
struct StreamGate {
    files: Arc<Files>,
    map: RowMap,
}

impl Gate for StreamGate {
    fn start(
        &self,
        order: Arc<EpochOrder>,
        first: usize,
    ) -> std::result::Result<Box<dyn GatePass>, GateError> {
        match engine::Pass::start(Arc::clone(&self.files), &self.map, order, first) {
            Ok(pass) => Ok(Box::new(pass)),
            Err(e) => Err(Box::new(e)),
        }
    }
}

/// A sharded dataset on object storage, read by loaders while its parts download: see the
/// [module](self) docs.
pub struct StreamingDataset {
    files: Arc<Files>,
    /// The shards mapped from their sparse files. Never handed out: its rows may be holes,
    /// readable only through a loader's gate.
    dataset: mmtensor::Dataset,
}

impl std::fmt::Debug for StreamingDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingDataset")
            .field("url", &self.files.url)
            .field("shards", &self.files.shards.len())
            .field("parts", &self.files.parts())
            .finish_non_exhaustive()
    }
}

/// Shards whose heads and tables are fetched at once while a dataset opens.
const SHARDS_AT_ONCE: usize = 16;

impl StreamingDataset {
    /// Opens the dataset under `url` for streaming through `cache`: the manifest, then each
    /// shard's head and checksum table (from the cache folder when a previous run left them
    /// there, else one or two small GETs), sixteen shards at once. No row is fetched until a
    /// loader's pass asks for it.
    ///
    /// # Errors
    ///
    /// As [`crate::open_dataset`] for the manifest and each shard's head, except that a
    /// dataset larger than the cache is fine; [`Error::Open`] for a dataset with ragged columns
    /// (streamed loaders read fixed-shape rows).
    pub fn open(cache: Arc<Cache>, url: &str, options: StreamOptions) -> Result<StreamingDataset> {
        let base = url.trim_end_matches('/').to_owned();
        let manifest = crate::read_manifest(&cache, &base)?;
        if let Some(c) = manifest.columns().iter().find(|c| c.is_ragged()) {
            return Err(Error::Open {
                url: base,
                source: Box::new(mmtensor::Error::Windows {
                    path: url.into(),
                    column: c.name().to_owned(),
                    reason: "a streamed dataset is read as rows of fixed-shape columns; a ragged \
                             column needs the dataset fetched (open it without stream)"
                        .into(),
                }),
            });
        }
        let part_size = options.part_size.max(1);
        let opened = crate::dataset::in_parallel(manifest.shards().len(), SHARDS_AT_ONCE, |i| {
            let shard = &manifest.shards()[i];
            open_shard(
                &cache,
                &format!("{base}/{}", shard.file()),
                shard,
                part_size,
            )
        })?;
        let _ = mmtensor::Dataset::reserve_open_files(opened.len());
        let mut shards = Vec::with_capacity(opened.len());
        let mut objects = Vec::with_capacity(opened.len());
        let mut keys = Vec::with_capacity(opened.len());
        let mut stores = Vec::with_capacity(opened.len());
        let mut base_parts = vec![0u32];
        for o in opened {
            let open_error = |source| Error::Open {
                url: o.shard.url.clone(),
                source: Box::new(source),
            };
            // SAFETY: `Store::open` asks that the mapped bytes do not change while mapped; this
            // file's do, in a narrower way that no read can observe. It is the cache's own
            // (`KEY.mmt.stream`, named after the object's version and never shortened), written
            // only with bytes of that object at their own offsets after their checksums verified
            // (the head and table before this open; a data part under the folder's budget lock,
            // the same bytes whoever writes them), or punched out of (a part no process pins,
            // its lock range being the part's own byte range). The loader reads a part's rows
            // only between its gate's `ready` and `done`, while this process pins the part, so
            // no byte it reads changes while it reads it; its read-ahead (`madvise`, `mincore`)
            // only moves pages of the page cache, which stays coherent with writes and punches.
            // The mapping itself is never handed out: `StreamingDataset` keeps its dataset.
            let store = unsafe { mmtensor::Store::open(&o.shard.path) }.map_err(open_error)?;
            let total = base_parts.last().copied().unwrap_or(0) as u64 + o.shard.parts.len() as u64;
            let Ok(total) = u32::try_from(total) else {
                return Err(Error::InvalidUrl {
                    url: base,
                    reason: format!(
                        "the dataset has more than {} parts of {part_size} bytes: stream it with \
                         larger parts",
                        u32::MAX
                    ),
                });
            };
            base_parts.push(total);
            stores.push(Some(store));
            shards.push(o.shard);
            objects.push(o.object);
            keys.push(o.key);
        }
        let dataset =
            mmtensor::Dataset::from_stores(&base, manifest, stores).map_err(|source| {
                Error::Open {
                    url: base.clone(),
                    source: Box::new(source),
                }
            })?;
        let parts = *base_parts.last().unwrap_or(&0) as usize;
        let ahead = options.ahead.unwrap_or(cache.capacity() / 2);
        Ok(StreamingDataset {
            files: Arc::new(Files {
                url: base,
                shards,
                objects,
                base: base_parts,
                pins: Mutex::new(vec![0; parts]),
                options: Resolved {
                    concurrency: options.concurrency.max(1),
                    ahead,
                },
                _keys: keys,
                cache,
            }),
            dataset,
        })
    }

    /// The dataset's URL.
    pub fn url(&self) -> &str {
        &self.files.url
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        self.dataset.manifest()
    }

    /// Rows of the dataset.
    pub fn num_rows(&self) -> u64 {
        self.dataset.num_rows()
    }

    /// The cache it streams through.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.files.cache
    }

    /// A loader over the dataset's columns (as `mmtensor::Loader::from_dataset` with `options`)
    /// whose passes fetch each batch's parts before it is gathered: see the [module](self) docs.
    ///
    /// # Errors
    ///
    /// [`Error::Open`] holding the loader's error for options it refuses, and for sequence
    /// windows or padded ragged rows (a streamed dataset has fixed-shape columns only).
    pub fn loader(&self, options: LoaderOptions) -> Result<mmtensor::Loader> {
        let open_error = |source| Error::Open {
            url: self.files.url.clone(),
            source: Box::new(source),
        };
        let loader = mmtensor::Loader::from_dataset(&self.dataset, options).map_err(open_error)?;
        let names: Vec<String> = loader.column_names().map(str::to_owned).collect();
        let mut columns = Vec::with_capacity(self.files.shards.len());
        for shard in &self.files.shards {
            let mut cols = Vec::with_capacity(names.len());
            for name in &names {
                let Some(t) = shard.layout.tensor(name) else {
                    return Err(open_error(mmtensor::Error::NotFound {
                        path: shard.path.clone(),
                        tensor: name.clone(),
                        known: shard
                            .layout
                            .header()
                            .tensors
                            .iter()
                            .map(|t| t.name.clone())
                            .collect(),
                    }));
                };
                let range = shard.layout.tensor_range(t);
                let rows = t.shape.first().copied().unwrap_or(0);
                let row_bytes = (range.end - range.start).checked_div(rows).unwrap_or(0);
                cols.push((range.start, row_bytes));
            }
            columns.push(cols);
        }
        let map = RowMap {
            starts: self.dataset.manifest().starts().to_vec(),
            columns,
        };
        loader
            .with_gate(Arc::new(StreamGate {
                files: Arc::clone(&self.files),
                map,
            }))
            .map_err(open_error)
    }
}

/// One shard opened for streaming.
struct Opened {
    shard: ShardFile,
    object: Object,
    key: KeyLock,
}

/// Opens shard `url` (as the manifest lists it) for streaming: its HEAD, its sparse file, and its
/// verified head, read back from the file when a previous run left it, else fetched and written.
fn open_shard(
    cache: &Cache,
    url: &str,
    listed: &mmtensor_format::Shard,
    part_size: u64,
) -> Result<Opened> {
    let expected = Expected::shard(listed);
    let (store, location, meta) = cache.head(url)?;
    expected.check_length(url, &meta)?;
    if meta.size >= shard::MAX_STREAMED_OBJECT {
        return Err(Error::InvalidUrl {
            url: url.into(),
            reason: format!("an object of {} bytes is too large to stream", meta.size),
        });
    }
    let key = Key::of(url, &meta);
    let lock = KeyLock::shared(&cache.folder, key)?;
    let path = cache.folder.path(key, Kind::Stream);
    let file = ShardFile::open_file(&path, meta.size)?;
    let object = Object::new(url, store, location, &meta);
    let size = meta.size;
    let local = |r: Range<u64>| std::future::ready(request::read_at(&file, &path, r));
    // The head only: a shard's checksum table is loaded when a part of it is first wanted.
    let kept = cache
        .runtime
        .block_on(plan::head(url, size, Some(expected.header_checksum), local));
    let layout = match kept {
        Ok((_, layout)) => layout,
        Err(_) => {
            let remote = |r: Range<u64>| object.bytes(cache, r);
            let (head, layout) = cache.runtime.block_on(plan::head(
                url,
                size,
                Some(expected.header_checksum),
                remote,
            ))?;
            use std::os::unix::fs::FileExt;
            file.write_all_at(&head, 0).map_err(|source| Error::Io {
                path: path.clone(),
                action: "write",
                source,
            })?;
            layout
        }
    };
    let parts = data_parts(&layout, part_size);
    Ok(Opened {
        shard: ShardFile::new(path, url.to_owned(), file, layout, parts),
        object,
        key: lock,
    })
}
