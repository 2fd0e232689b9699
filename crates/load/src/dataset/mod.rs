//! Sharded datasets: a folder of `.mmt` shards and their manifest, opened and checked against it,
//! as columns whose rows are the rows of every shard, one index space (`column.rs`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmtensor_format::{Manifest, MANIFEST_FILE, MANIFEST_PREAMBLE_LEN, MAX_MANIFEST_BODY_LEN};

use crate::ragged::{RaggedColumn, RaggedPart};
use crate::store::Store;
use crate::{Error, Result};

mod column;

pub use column::Column;

/// A sharded dataset, opened: the manifest, every shard mapped, and a [`Column`] per column.
///
/// A dataset is a folder holding `manifest.mmtm` and the `.mmt` shards it lists (see
/// `docs/FORMAT.md`, "Dataset manifest"; `mmt convert --shard-size` and `mmt append` write them).
/// Its rows are the shards' rows in manifest order: row `r` of a column is row
/// `r - start` of the shard whose rows `start..start + rows` hold it. `Dataset` is a cheap
/// [`Arc`] handle, `Send + Sync`; its columns are `'static` and hold the shards' stores.
///
/// A reader keeps the manifest it opened: an `mmt append` meanwhile writes new shards and
/// replaces the manifest by a rename, and never modifies a shard a manifest lists, so an open
/// dataset keeps reading the rows it had. Open the folder again to see appended rows.
///
/// ```
/// # use std::sync::atomic::AtomicBool;
/// # let dir = tempfile::tempdir()?;
/// # let mut npy = mmtensor_format::npy::encode_header(mmtensor_format::Dtype::I64, &[5]);
/// # for v in 0..5i64 { npy.extend_from_slice(&v.to_le_bytes()); }
/// # std::fs::write(dir.path().join("y.npy"), npy)?;
/// # let input = mmtensor_convert::Input::parse(&dir.path().join("y.npy").display().to_string())?;
/// # mmtensor_convert::convert_dataset(&[input], dir.path().join("ds"), &Default::default(), 16,
/// #     &mmtensor_convert::NoProgress, &AtomicBool::new(false))?;
/// use mmtensor::Dataset;
///
/// // SAFETY: nothing modifies or truncates the shards while the dataset is open.
/// let ds = unsafe { Dataset::open(dir.path().join("ds"))? }; // 5 rows in shards of 2
/// assert_eq!((ds.num_rows(), ds.shards().len()), (5, 3));
/// let y = ds.column("y")?;
/// let mut out = vec![0u8; 3 * 8];
/// y.take_into(&[4, 0, 3], &mut out)?; // rows from three shards
/// assert_eq!(bytemuck::cast_slice::<u8, i64>(&out), [4, 0, 3]);
/// let pieces = y.rows(1..4)?; // one zero-copy piece per shard touched
/// assert_eq!(pieces.iter().map(|p| p.shape()[0]).collect::<Vec<_>>(), [1, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Safety
///
/// Every shard is mapped as by [`Store::open`], whose contract is the caller's, for every shard
/// file: none may be modified or truncated while the dataset, a column or a view of it lives.
/// Replacing the manifest or adding shards (what `mmt append` does) is fine.
#[derive(Clone)]
pub struct Dataset {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("path", &self.inner.dir)
            .field("rows", &self.num_rows())
            .field("shards", &self.inner.shards.len())
            .field(
                "columns",
                &self
                    .inner
                    .columns
                    .iter()
                    .map(Column::name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

struct Inner {
    dir: PathBuf,
    manifest: Arc<Manifest>,
    /// Per manifest shard: its store, or `None` for a shard not opened (another rank's).
    shards: Vec<Option<Store>>,
    /// The fixed-shape columns, in manifest order.
    columns: Vec<Column>,
    /// The ragged columns, in manifest order.
    ragged: Vec<RaggedColumn>,
    /// `(rank, world_size)` when opened for one rank: the open shards are exactly that rank's.
    rank: Option<(u64, u64)>,
}

impl Dataset {
    /// Reads the manifest of the dataset in `dir`, maps every shard and checks each one against
    /// the manifest: its length, its header checksum, and that it holds exactly the columns, in
    /// order, with their dtypes and the shape `[rows] + row shape`.
    ///
    /// Costs one small read for the manifest and one [`Store::open`] (header only) per shard; a
    /// one-shard dataset costs what opening its store costs, plus the manifest. Every shard is
    /// opened now, and each open store keeps its file descriptor (to notice a truncation): the
    /// process's soft open-file limit (`ulimit -n`, often 1024) is raised first, up to its hard
    /// limit, to make room for them ([`Dataset::reserve_open_files`]). Past the hard limit, the
    /// open fails with [`Error::Io`] naming the first shard over it: use larger shards.
    ///
    /// # Safety
    ///
    /// As [`Store::open`], for every shard (see the type-level [Safety](Dataset#safety)).
    ///
    /// # Errors
    ///
    /// As [`Dataset::read_manifest`]; as [`Store::open`] for a shard (the error names its path);
    /// [`Error::ShardMismatch`] naming the shard that differs from the manifest.
    pub unsafe fn open(dir: impl AsRef<Path>) -> Result<Dataset> {
        let dir = dir.as_ref();
        let manifest = Dataset::read_manifest(dir)?;
        let paths = shard_paths(dir, &manifest, |_| true);
        // SAFETY: the caller's promise covers every shard of the dataset.
        unsafe { Dataset::open_shards(dir, manifest, &paths) }
    }

    /// Like [`Dataset::open`], but maps only the shards that rank `rank` of `world_size` owns
    /// when the loader reads whole shards per rank ([`crate::order::shard_ranks`], `docs/LOADER.md`
    /// "Whole shards per rank"): every row keeps its index, and a row of another rank's shard is
    /// [`Error::ShardNotOpen`]. Opens fewer files (each open shard holds a file descriptor); for a
    /// dataset on object storage, fetching only these shards is what saves (`mmtensor-remote`).
    ///
    /// # Safety
    ///
    /// As [`Store::open`], for every shard this rank owns.
    ///
    /// # Errors
    ///
    /// As [`Dataset::open`]; [`Error::Order`] naming the folder when the rank is not below the
    /// world size, or there are fewer non-empty shards than ranks.
    pub unsafe fn open_rank(dir: impl AsRef<Path>, rank: u64, world_size: u64) -> Result<Dataset> {
        let dir = dir.as_ref();
        let manifest = Dataset::read_manifest(dir)?;
        let owned = Dataset::rank_shards(dir, &manifest, rank, world_size)?;
        let paths = shard_paths(dir, &manifest, |i| owned[i]);
        // SAFETY: the caller's promise covers every shard this rank owns, the only ones opened.
        let shards = unsafe { open_stores(&paths)? };
        Dataset::from_rank_stores(dir, manifest, shards, rank, world_size)
    }

    /// Which shards of `manifest` rank `rank` of `world_size` owns under whole shards per rank
    /// ([`crate::order::shard_ranks`]), one flag per shard; `origin` names the dataset in errors.
    ///
    /// # Errors
    ///
    /// [`Error::Order`] when the rank is not below the world size (or the world size is 0), or
    /// there are fewer non-empty shards than ranks.
    pub fn rank_shards(
        origin: impl AsRef<Path>,
        manifest: &Manifest,
        rank: u64,
        world_size: u64,
    ) -> Result<Vec<bool>> {
        let order = |source| Error::Order {
            path: origin.as_ref().to_path_buf(),
            source,
        };
        if world_size > 0 && rank >= world_size {
            return Err(order(crate::order::OrderError::RankOutOfRange {
                rank,
                world_size,
            }));
        }
        let rows: Vec<u64> = manifest.shards().iter().map(|s| s.num_rows()).collect();
        let ranks = crate::order::shard_ranks(&rows, world_size).map_err(order)?;
        Ok(ranks.into_iter().map(|r| r == rank).collect())
    }

    /// The dataset `manifest` describes, its shards (in manifest order) mapped from `paths`
    /// rather than looked up beside the manifest: for shards fetched into a cache, whose files
    /// have names of the cache's. `None` leaves a shard unopened: its rows keep their indices,
    /// and reading one is [`Error::ShardNotOpen`] (a rank that reads whole shards opens only its
    /// own). `origin` names the dataset in errors and is what [`Dataset::path`] returns (a folder,
    /// or the URL the manifest came from).
    ///
    /// # Safety
    ///
    /// As [`Store::open`], for every file of `paths`.
    ///
    /// # Errors
    ///
    /// [`Error::ShardMismatch`] when `paths` does not hold one entry per shard, or a shard differs
    /// from the manifest; as [`Store::open`] for a shard.
    pub unsafe fn open_shards(
        origin: impl AsRef<Path>,
        manifest: Manifest,
        paths: &[Option<PathBuf>],
    ) -> Result<Dataset> {
        // SAFETY: the caller's promise covers every shard file given.
        let shards = unsafe { open_stores(paths)? };
        Dataset::from_stores(origin, manifest, shards)
    }

    /// The dataset `manifest` describes, from stores already open (one per shard, in manifest
    /// order; `None` for a shard left unopened, as in [`Dataset::open_shards`]): each is checked
    /// against the manifest. Safe: opening the stores was where the mapping contract was taken on.
    ///
    /// # Errors
    ///
    /// [`Error::ShardMismatch`] when `shards` does not hold one entry per shard, or a store
    /// differs from the manifest (naming its path).
    pub fn from_stores(
        origin: impl AsRef<Path>,
        manifest: Manifest,
        shards: Vec<Option<Store>>,
    ) -> Result<Dataset> {
        Dataset::build(origin.as_ref(), manifest, shards, None)
    }

    /// Like [`Dataset::from_stores`], for the shards rank `rank` of `world_size` owns under whole
    /// shards per rank: `shards` must hold exactly those ([`Dataset::rank_shards`]). The dataset
    /// remembers the rank ([`Dataset::rank`]), and its errors say how to read it.
    ///
    /// # Errors
    ///
    /// As [`Dataset::from_stores`]; [`Error::Order`] for a rank the manifest cannot be split
    /// into; [`Error::ShardMismatch`] when the open shards are not exactly the rank's.
    pub fn from_rank_stores(
        origin: impl AsRef<Path>,
        manifest: Manifest,
        shards: Vec<Option<Store>>,
        rank: u64,
        world_size: u64,
    ) -> Result<Dataset> {
        let dir = origin.as_ref();
        let owned = Dataset::rank_shards(dir, &manifest, rank, world_size)?;
        if let Some(i) =
            (0..owned.len().min(shards.len())).find(|&i| owned[i] != shards[i].is_some())
        {
            return Err(Error::ShardMismatch {
                path: dir.to_path_buf(),
                reason: format!(
                    "shard {i} is {} but rank {rank} of {world_size} {} it",
                    if shards[i].is_some() {
                        "open"
                    } else {
                        "not open"
                    },
                    if owned[i] { "owns" } else { "does not own" }
                ),
            });
        }
        Dataset::build(dir, manifest, shards, Some((rank, world_size)))
    }

    fn build(
        dir: &Path,
        manifest: Manifest,
        shards: Vec<Option<Store>>,
        rank: Option<(u64, u64)>,
    ) -> Result<Dataset> {
        if shards.len() != manifest.shards().len() {
            return Err(Error::ShardMismatch {
                path: dir.to_path_buf(),
                reason: format!(
                    "the manifest lists {} shards, but {} were given",
                    manifest.shards().len(),
                    shards.len()
                ),
            });
        }
        for (i, store) in shards.iter().enumerate() {
            if let Some(store) = store {
                check_shard(store, &manifest, i)?;
            }
        }
        let manifest = Arc::new(manifest);
        let dir_arc: Arc<Path> = dir.into();
        let ragged = manifest
            .columns()
            .iter()
            .filter(|spec| spec.is_ragged())
            .map(|spec| {
                let parts = shards
                    .iter()
                    .map(|st| {
                        st.as_ref()
                            .map(|st| RaggedPart::of(st, spec.name()))
                            .transpose()
                    })
                    .collect::<Result<Vec<_>>>()?;
                RaggedColumn::new(
                    dir,
                    spec.name(),
                    spec.dtype(),
                    spec.row_shape(),
                    parts,
                    Some(manifest.starts()),
                )
            })
            .collect::<Result<Vec<RaggedColumn>>>()?;
        let columns = manifest
            .columns()
            .iter()
            .filter(|spec| !spec.is_ragged())
            .map(|spec| {
                Column::new(
                    Arc::clone(&dir_arc),
                    spec.clone(),
                    &shards,
                    Arc::clone(&manifest),
                    rank,
                )
            })
            .collect::<Result<Vec<Column>>>()?;
        Ok(Dataset {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                manifest,
                shards,
                columns,
                ragged,
                rank,
            }),
        })
    }

    /// Makes room for `count` more open files in this process: when the file descriptors open now
    /// plus `count` (and a margin of 16) exceed the soft `RLIMIT_NOFILE`, raises the soft limit
    /// to that sum, or to the hard limit if that is lower. Returns the soft limit in force after.
    ///
    /// Opening a dataset calls this for its shards (each open store holds a descriptor), so a
    /// dataset of thousands of shards opens under the common soft limit of 1024 as long as the
    /// hard limit allows (Go's runtime raises the soft limit to the hard one at start for the same
    /// reason). The limit is only ever raised, never past the hard limit, and only as far as
    /// needed, so a process that relies on `select()` (descriptors below 1024) keeps working
    /// unless it opens such a dataset.
    ///
    /// # Errors
    ///
    /// The OS error of `getrlimit` or `setrlimit`.
    // `rlim_t` is `u64` on 64-bit targets and `u32` on some 32-bit ones: the `u64::from`s are
    // conversions there and no-ops here.
    #[allow(clippy::useless_conversion)]
    pub fn reserve_open_files(count: usize) -> std::io::Result<u64> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `getrlimit` writes the one `rlimit` it is given, which lives across the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Descriptors open now (Linux; elsewhere assume a few dozen).
        let in_use = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count() as u64);
        let want = in_use.saturating_add(count as u64).saturating_add(16);
        let (soft, hard) = (u64::from(lim.rlim_cur), u64::from(lim.rlim_max));
        if want <= soft || soft >= hard {
            return Ok(soft);
        }
        // At most the hard limit, which is an `rlim_t`.
        lim.rlim_cur = libc::rlim_t::try_from(want.min(hard)).unwrap_or(lim.rlim_max);
        // SAFETY: `setrlimit` reads the one `rlimit` it is given, which lives across the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(u64::from(lim.rlim_cur))
    }

    /// Reads and validates the manifest of the dataset in `dir` with plain reads; maps nothing.
    /// A manifest longer than the format's cap is refused from its length, before it is read.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] (no manifest: the folder is not a dataset), [`Error::IsADirectory`] or
    /// [`Error::NotAFile`] for a manifest path that is not a file, [`Error::Format`] holding the
    /// format crate's exact error for an invalid manifest.
    pub fn read_manifest(dir: impl AsRef<Path>) -> Result<Manifest> {
        let path = dir.as_ref().join(MANIFEST_FILE);
        let io = |action| {
            let path = path.clone();
            move |source| Error::Io {
                path,
                action,
                source,
            }
        };
        let meta = std::fs::metadata(&path).map_err(io("open"))?;
        if meta.is_dir() {
            return Err(Error::IsADirectory {
                path,
                dataset: false,
            });
        }
        if !meta.is_file() {
            return Err(Error::NotAFile { path });
        }
        let mut file = std::fs::File::open(&path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        let cap = MANIFEST_PREAMBLE_LEN + MAX_MANIFEST_BODY_LEN;
        if len > cap {
            return Err(Error::Format {
                path,
                source: mmtensor_format::Error::ManifestLength { len, expected: cap },
            });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        // At most one byte past the length seen: a manifest that grew since is refused by its
        // length, never read without bound.
        Read::take(&mut file, len + 1)
            .read_to_end(&mut bytes)
            .map_err(io("read"))?;
        Manifest::parse(&bytes).map_err(|source| Error::Format { path, source })
    }

    /// Where the dataset is: its folder, or for a dataset opened from object storage
    /// (`mmtensor-remote`) the URL it was opened from. Python's `Dataset.path` is this.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// The manifest this dataset was opened with.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// Total rows of every column.
    pub fn num_rows(&self) -> u64 {
        self.inner.manifest.num_rows()
    }

    /// The shards' stores, in manifest order; `None` for a shard the dataset was opened without
    /// ([`Dataset::open_rank`]).
    pub fn shards(&self) -> &[Option<Store>] {
        &self.inner.shards
    }

    /// Whether every shard is open (always, unless opened for one rank).
    pub fn is_complete(&self) -> bool {
        self.inner.shards.iter().all(Option::is_some)
    }

    /// `(rank, world_size)` when the dataset was opened for one rank ([`Dataset::open_rank`],
    /// [`Dataset::from_rank_stores`]): read it with [`crate::RankSplit::Shards`] as that rank.
    pub fn rank(&self) -> Option<(u64, u64)> {
        self.inner.rank
    }

    /// The fixed-shape columns, in manifest order ([`Dataset::ragged_columns`] has the others).
    pub fn columns(&self) -> &[Column] {
        &self.inner.columns
    }

    /// The ragged columns (rows of different lengths), in manifest order.
    pub fn ragged_columns(&self) -> &[RaggedColumn] {
        &self.inner.ragged
    }

    /// The ragged column named `name`: rows of different lengths, as zero-copy rows, gathered
    /// batches and the concatenated stream.
    ///
    /// # Errors
    ///
    /// [`Error::NotRagged`] for a fixed-shape column; [`Error::NotFound`].
    pub fn ragged(&self, name: &str) -> Result<RaggedColumn> {
        if let Some(c) = self.inner.ragged.iter().find(|c| c.name() == name) {
            return Ok(c.clone());
        }
        self.column(name)?;
        Err(Error::NotRagged {
            path: self.inner.dir.clone(),
            column: name.to_owned(),
        })
    }

    /// The fixed-shape column named `name`.
    ///
    /// # Errors
    ///
    /// [`Error::RaggedColumn`] for a ragged column (see [`Dataset::ragged`]); [`Error::NotFound`]
    /// naming the dataset folder and the name.
    pub fn column(&self, name: &str) -> Result<Column> {
        if self.inner.ragged.iter().any(|c| c.name() == name) {
            return Err(Error::RaggedColumn {
                path: self.inner.dir.clone(),
                column: name.to_owned(),
            });
        }
        self.inner
            .columns
            .iter()
            .find(|c| c.name() == name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                path: self.inner.dir.clone(),
                tensor: name.to_owned(),
                known: self
                    .inner
                    .manifest
                    .columns()
                    .iter()
                    .map(|c| c.name().to_owned())
                    .collect(),
            })
    }

    /// Checks every block checksum and padding byte of every open shard, in manifest order, each
    /// in parallel (see [`Store::verify`]).
    ///
    /// # Errors
    ///
    /// The first shard's error, which names the shard's path: [`Error::is_corruption`] tells
    /// corruption from I/O errors.
    pub fn verify(&self) -> Result<()> {
        self.inner
            .shards
            .iter()
            .flatten()
            .try_for_each(Store::verify)
    }
}

/// The path of each shard of `manifest` beside it in `dir` that `want` selects (by index).
fn shard_paths(
    dir: &Path,
    manifest: &Manifest,
    want: impl Fn(usize) -> bool,
) -> Vec<Option<PathBuf>> {
    manifest
        .shards()
        .iter()
        .enumerate()
        .map(|(i, s)| want(i).then(|| dir.join(s.file())))
        .collect()
}

/// Opens the store at each path given (`None` stays `None`), having first raised the open-file
/// limit for them ([`Dataset::reserve_open_files`]; a failure there leaves the limit as it was,
/// and an open over it reports its shard).
///
/// # Safety
///
/// As [`Store::open`], for every path given.
unsafe fn open_stores(paths: &[Option<PathBuf>]) -> Result<Vec<Option<Store>>> {
    let _ = Dataset::reserve_open_files(paths.iter().flatten().count());
    paths
        .iter()
        .map(|path| match path {
            // SAFETY: the caller's promise covers every path given.
            Some(path) => unsafe { Store::open(path) }.map(Some),
            None => Ok(None),
        })
        .collect()
}

/// Checks that `store`, shard `i` of `manifest`, is the file the manifest describes.
fn check_shard(store: &Store, manifest: &Manifest, i: usize) -> Result<()> {
    let mismatch = |reason: String| Error::ShardMismatch {
        path: store.path().to_path_buf(),
        reason,
    };
    let Some(layout) = store.layout() else {
        return Err(mismatch(format!(
            "it is a {} file, not an .mmt store",
            store.format()
        )));
    };
    match manifest.shards()[i].mismatch(manifest.columns(), layout) {
        Some(reason) => Err(mismatch(reason)),
        None => Ok(()),
    }
}
