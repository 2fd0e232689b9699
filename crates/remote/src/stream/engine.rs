//! The fetch schedule and the eviction rule of a streamed dataset: one pass of a loader over an
//! epoch's batches ([`Pass`], a `mmtensor::GatePass`).
//!
//! When a pass starts it is told every batch of the rest of the epoch, so it knows, for each part,
//! the batches that read it (`uses`), in order. Then:
//!
//! - **Fetch ahead, in the order of need.** Worker threads (`StreamOptions::concurrency`) take
//!   the first part, in batch order from the batch being gathered, that is neither present nor
//!   being fetched, while the parts of the batches up to it (present or in flight) stay within
//!   `StreamOptions::ahead` bytes. The batch being gathered is always fetched, whatever the
//!   budget. Each part is one ranged GET of whole checksum blocks, verified block by block before
//!   a byte of it is written.
//! - **Evict by next use.** To make room for a part wanted by batch `b`, the pass removes first
//!   the parts no remaining batch reads, then the one read again furthest in the future (Belady's
//!   rule, exact here because the order is known), never one read at or before `b`, and never
//!   one another process pins (`shard.rs`). A part is let go (unpinned, left on disk for the next
//!   epoch or another rank until room is needed) right after the last batch that reads it.
//! - **Within the capacity.** A part is downloaded and verified into memory; then, under the
//!   folder's budget lock, the folder's usage is counted (streamed shards by the disk space they
//!   take), room made and the part written: processes sharing the folder never exceed the
//!   capacity together, and no space is taken for a GET that fails. When nothing can be evicted,
//!   a prefetched part is dropped for now and the part of the batch the loader waits for waits
//!   (up to `CacheOptions::retry_timeout`, then [`Error::NoRoom`]); a batch whose parts alone
//!   exceed the capacity is [`Error::CacheTooSmall`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use mmtensor::order::EpochOrder;
use mmtensor::{GateError, GatePass};

use super::Files;
use crate::{request, Error, Result};

/// A part's state in one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Have {
    /// Not known to be on disk (it may be: checked, by its checksums, before it is fetched).
    Absent,
    /// A worker is getting it.
    Fetching,
    /// On disk, verified, and pinned by this pass.
    Present,
}

/// What a pass's gatherer and workers share.
struct Shared {
    files: Arc<Files>,
    /// Batch `first + k` reads parts `needs[k]` (global part ids, sorted, distinct).
    needs: Vec<Vec<u32>>,
    first: usize,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    have: Vec<Have>,
    /// For each part, the batches still to read it, in order.
    uses: Vec<VecDeque<u32>>,
    /// The batch the gatherer waits for or gathers.
    cursor: usize,
    /// Whether the gatherer is between `ready(cursor)` and `done(cursor)`.
    gathering: bool,
    /// Parts whose fetch for the batch the loader waits for failed, with the error: reported by
    /// that batch. (A failed prefetch is dropped and the part fetched again when wanted.)
    failed: HashMap<u32, Error>,
    /// Prefetch waits for the gatherer to move past this batch (no room could be made).
    stalled_at: Option<usize>,
    stop: bool,
    /// Parts that may be on disk though this pass does not hold them (left by an earlier pass or
    /// another process): eviction looks at these and at the present ones only. All at first;
    /// cleared when found to be a hole, set again when this pass holds the part.
    maybe: Vec<bool>,
    /// Scratch for `next_job`: the scan in which a part was last counted.
    stamp: Vec<u32>,
    scan: u32,
}

/// One loader pass over the batches of an epoch: see the [module](self) docs.
pub(crate) struct Pass {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// Whether a part could be given room.
enum Room {
    Made,
    /// Not now: parts another process pins would have to go, and may be let go later.
    Wait,
    /// Never: what this pass itself must keep (the batch's other parts, the shards' heads and
    /// tables) leaves no room for the part.
    Never,
}

impl Pass {
    /// Plans the pass over `order`'s batches from `first` on, and starts its workers.
    pub(crate) fn start(
        files: Arc<Files>,
        map: &super::RowMap,
        order: Arc<EpochOrder>,
        first: usize,
    ) -> Result<Pass> {
        let parts = files.parts();
        let len = order.len();
        let mut needs = Vec::with_capacity(len.saturating_sub(first));
        let mut uses: Vec<VecDeque<u32>> = vec![VecDeque::new(); parts];
        let mut scratch = Vec::new();
        for b in first..len {
            scratch.clear();
            for &row in order.batch(b).unwrap_or(&[]) {
                map.parts_of(&files, row, &mut scratch);
            }
            scratch.sort_unstable();
            scratch.dedup();
            for &g in &scratch {
                uses[g as usize].push_back(b as u32);
            }
            needs.push(scratch.clone());
        }
        let shared = Arc::new(Shared {
            files,
            needs,
            first,
            state: Mutex::new(State {
                have: vec![Have::Absent; parts],
                uses,
                cursor: first,
                gathering: false,
                failed: HashMap::new(),
                stalled_at: None,
                stop: false,
                maybe: vec![true; parts],
                stamp: vec![0; parts],
                scan: 0,
            }),
            changed: Condvar::new(),
        });
        let n = shared.files.options.concurrency.max(1);
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n {
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name("mmtensor-stream".into())
                .spawn(move || s.work());
            match spawned {
                Ok(h) => workers.push(h),
                Err(source) => {
                    let path = shared.files.dir();
                    drop(Pass { shared, workers });
                    return Err(Error::Io {
                        path,
                        action: "start a fetch thread for",
                        source,
                    });
                }
            }
        }
        Ok(Pass { shared, workers })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn needs(&self, batch: usize) -> &[u32] {
        batch
            .checked_sub(self.first)
            .and_then(|k| self.needs.get(k))
            .map_or(&[], |v| v.as_slice())
    }

    /// The batch that reads part `g` next; `usize::MAX` when none does.
    fn next_use(st: &State, g: u32) -> usize {
        st.uses[g as usize]
            .front()
            .map_or(usize::MAX, |&b| b as usize)
    }

    /// The next part to fetch and the batch it is wanted for, marked as being fetched; `None`
    /// when the budget is spent or nothing is missing.
    fn next_job(&self, st: &mut State) -> Option<(u32, usize)> {
        let budget = self.files.options.ahead;
        st.scan = st.scan.wrapping_add(1);
        if st.scan == 0 {
            st.stamp.fill(0);
            st.scan = 1;
        }
        let scan = st.scan;
        let end = self.first + self.needs.len();
        let mut ahead = 0u64;
        for b in st.cursor..end {
            if b > st.cursor && st.stalled_at == Some(st.cursor) {
                return None;
            }
            for &g in self.needs(b) {
                if st.stamp[g as usize] == scan {
                    continue;
                }
                st.stamp[g as usize] = scan;
                let len = self.files.part_len(g);
                match st.have[g as usize] {
                    Have::Present | Have::Fetching => ahead = ahead.saturating_add(len),
                    Have::Absent if st.failed.contains_key(&g) => {}
                    Have::Absent => {
                        if b > st.cursor && ahead.saturating_add(len) > budget {
                            return None;
                        }
                        st.have[g as usize] = Have::Fetching;
                        return Some((g, b));
                    }
                }
            }
            if ahead > budget {
                return None;
            }
        }
        None
    }

    /// A worker: takes parts to fetch until the pass stops.
    fn work(&self) {
        loop {
            let (g, batch) = {
                let mut st = self.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    if let Some(job) = self.next_job(&mut st) {
                        break job;
                    }
                    // Woken by progress; the timeout retries room that other processes free.
                    st = self
                        .changed
                        .wait_timeout(st, Duration::from_millis(50))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    st.stalled_at = None;
                }
            };
            // A panic is this part's error, not a part left "fetching" for ever.
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.get_part(g, batch)))
                    .unwrap_or_else(|_| {
                        Err(Error::Io {
                            path: self.files.dir(),
                            action:
                                "fetch a part of a streamed shard (a fetch thread panicked) into",
                            source: std::io::Error::other("panic"),
                        })
                    });
            let mut st = self.lock();
            match result {
                Ok(Some(())) => {
                    // Read by no remaining batch (the gatherer moved past while it was fetched):
                    // let it go at once.
                    if st.uses[g as usize].is_empty() || st.stop {
                        st.have[g as usize] = Have::Absent;
                        drop(st);
                        let _ = self.files.unpin(g);
                        self.changed.notify_all();
                        continue;
                    }
                    st.have[g as usize] = Have::Present;
                    st.maybe[g as usize] = true;
                }
                // A prefetch given up for want of room (the loader's own batch waits for room
                // inside `get_part`), or the pass stopping.
                Ok(None) => {
                    st.have[g as usize] = Have::Absent;
                    st.stalled_at = Some(st.cursor);
                }
                Err(e) => {
                    st.have[g as usize] = Have::Absent;
                    if batch > st.cursor {
                        // A prefetch: the server may be back when the loader reaches the
                        // batch, which fetches the part again and reports what fails then.
                        st.stalled_at = Some(st.cursor);
                    } else {
                        st.failed.insert(g, e);
                    }
                }
            }
            drop(st);
            self.changed.notify_all();
        }
    }

    /// Gets part `g` onto disk, verified and pinned: adopted when the file already holds it
    /// (another rank fetched it), else fetched. `None` when a prefetch found no room, or the
    /// pass stops.
    fn get_part(&self, g: u32, batch: usize) -> Result<Option<()>> {
        let files = &self.files;
        let (s, p) = files.locate(g);
        let shard = &files.shards[s];
        self.load_table(s)?;
        files.pin(g)?;
        let got = (|| {
            loop {
                if shard.holds(p)? {
                    return Ok(Some(()));
                }
                match shard.claim_fetch(p)? {
                    super::shard::Locked::Taken => break,
                    super::shard::Locked::Busy => shard.wait_fetch(p)?,
                }
            }
            let fetched = (|| {
                // Another process may have finished it between the check and the claim.
                if shard.holds(p)? {
                    return Ok(Some(()));
                }
                // Downloaded and verified into memory first: disk space is taken only under the
                // folder's budget lock, by the write itself, so no space is ever reserved for a
                // GET that then fails, and no file system's late accounting lets two writers
                // count the same free space.
                let bytes = self.fetch(s, p)?;
                let since = std::time::Instant::now();
                loop {
                    match self.place(g, batch, &bytes)? {
                        Room::Made => return Ok(Some(())),
                        Room::Never => {
                            return Err(Error::CacheTooSmall {
                                url: files.url.clone(),
                                batch,
                                need: self.batch_pages(batch),
                                dir: files.dir(),
                                capacity: files.capacity(),
                            })
                        }
                        Room::Wait => {}
                    }
                    // Prefetch gives up its place for now (its worker may be wanted for the
                    // batch the loader waits for); the batch the loader waits for waits for
                    // room that other processes or datasets hold, up to a bound.
                    let (cursor, stop) = {
                        let st = self.lock();
                        (st.cursor, st.stop)
                    };
                    if stop || batch > cursor {
                        return Ok(None);
                    }
                    let waited = since.elapsed();
                    if waited > files.cache.options.retry_timeout {
                        return Err(Error::NoRoom {
                            url: files.url.clone(),
                            batch,
                            dir: files.dir(),
                            capacity: files.capacity(),
                            usage: files.cache.folder.disk_usage().unwrap_or(0),
                            waited,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })();
            let _ = shard.release_fetch(p);
            fetched
        })();
        if !matches!(got, Ok(Some(()))) {
            let _ = files.unpin(g);
        }
        got
    }

    /// Loads shard `s`'s checksum table (from its file, else by one GET), once.
    fn load_table(&self, s: usize) -> Result<()> {
        let files = &self.files;
        let (cache, object) = (&files.cache, &files.objects[s]);
        files.shards[s].table(|range| cache.runtime.block_on(object.bytes(cache, range)))?;
        Ok(())
    }

    /// One ranged GET of part `p` of shard `s`, verified block by block: its bytes.
    fn fetch(&self, s: usize, p: usize) -> Result<Vec<u8>> {
        let files = &self.files;
        let shard = &files.shards[s];
        let object = &files.objects[s];
        let range = shard.parts[p].range.clone();
        let cache = &files.cache;
        let bytes = cache
            .runtime
            .block_on(request::retrying(&cache.options, || {
                let range = range.clone();
                async move {
                    let mut verifier = shard.verifier(p);
                    let bytes = object
                        .get(&cache.counters, range.clone(), true, |chunk| {
                            verifier.update(chunk)
                        })
                        .await?;
                    if !verifier.is_complete() {
                        return Err(Error::ShortRead {
                            url: shard.url.clone(),
                            start: range.start,
                            end: range.end,
                            got: bytes.len() as u64,
                        });
                    }
                    Ok(bytes)
                }
            }));
        let bytes = match bytes {
            // A server that checks If-Match before it looks for the object (Azure) answers a
            // deleted one as changed: a HEAD tells which it is.
            Err(Error::Changed { url }) => {
                return Err(match cache.head(&url) {
                    Err(e @ Error::NotFound { .. }) => e,
                    _ => Error::Changed { url },
                })
            }
            other => other?,
        };
        Ok(bytes)
    }

    /// Bytes of the pages batch `batch`'s parts touch, and the slack: the room it needs.
    fn batch_pages(&self, batch: usize) -> u64 {
        let parts: u64 = self
            .needs(batch)
            .iter()
            .map(|&p| self.files.part_pages(p))
            .sum();
        parts + slack(self.files.capacity())
    }

    /// Under the folder's budget lock, makes room for part `g` (wanted by `batch`) and writes
    /// its verified `bytes`: see the [module](self) docs for the rule.
    fn place(&self, g: u32, batch: usize, bytes: &[u8]) -> Result<Room> {
        let files = &self.files;
        let _budget = files.cache.folder.budget()?;
        let room = self.make_room(g, batch)?;
        if let Room::Made = room {
            let (s, p) = files.locate(g);
            files.shards[s].write(bytes, files.shards[s].parts[p].range.start)?;
        }
        Ok(room)
    }

    /// Makes room for part `g` (wanted by `batch`); the caller holds the folder's budget lock.
    fn make_room(&self, g: u32, batch: usize) -> Result<Room> {
        let files = &self.files;
        // The pages the part's range touches: the most writing it allocates for data.
        let need = files.part_pages(g);
        // Room is made below the capacity by a slack for the file system's own records of where
        // a sparse file's data lies (ext4's extent blocks, counted in the file's blocks), which
        // grow as parts come and go, some only when written data reaches the disk.
        let capacity = files.capacity() - slack(files.capacity());
        let mut usage = files.cache.folder.disk_usage()?;
        if usage.saturating_add(need) <= capacity {
            return Ok(Room::Made);
        }
        // Candidates, furthest next use first (parts no remaining batch reads come first).
        let candidates: Vec<(usize, u32, bool)> = {
            let st = self.lock();
            let mut c: Vec<(usize, u32, bool)> = (0..files.parts() as u32)
                .filter(|&h| {
                    h != g && (st.have[h as usize] == Have::Present || st.maybe[h as usize])
                })
                .filter_map(|h| {
                    let next = Self::next_use(&st, h);
                    let present = st.have[h as usize] == Have::Present;
                    let busy = st.have[h as usize] == Have::Fetching;
                    let gathered = st.gathering && next == st.cursor;
                    (next > batch && !busy && !gathered).then_some((next, h, present))
                })
                .collect();
            c.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            c
        };
        let mut pinned_elsewhere = false;
        let mut holes = Vec::new();
        for (next, h, present) in candidates {
            if usage.saturating_add(need) <= capacity {
                break;
            }
            let (hs, hp) = files.locate(h);
            let shard = &files.shards[hs];
            if present {
                let mut st = self.lock();
                // Re-checked under the lock: the gatherer may have reached it since.
                let still = st.have[h as usize] == Have::Present
                    && Self::next_use(&st, h) == next
                    && !(st.gathering && next == st.cursor);
                if !still {
                    continue;
                }
                st.have[h as usize] = Have::Absent;
                drop(st);
                files.unpin(h)?;
            } else if !shard.has_data(hp) {
                holes.push(h);
                continue;
            }
            let before = shard.allocated();
            if files.evict(h)? {
                usage = usage.saturating_sub(before.saturating_sub(shard.allocated()));
                holes.push(h);
            } else {
                pinned_elsewhere = true;
            }
        }
        if !holes.is_empty() {
            // Not on disk now: looked at again only once this pass has put it there.
            let mut st = self.lock();
            for h in holes {
                st.maybe[h as usize] = false;
            }
        }
        if usage.saturating_add(need) > capacity {
            // Whole entries of other objects sharing the folder, least recently used first.
            files.cache.folder.evict(capacity, need, None)?;
            usage = files.cache.folder.disk_usage()?;
        }
        if usage.saturating_add(need) > capacity {
            // Never: the batch the loader waits for does not fit even in an empty cache. Else
            // wait: room another process, another dataset or a later batch holds comes free.
            let own_batch = batch <= self.lock().cursor;
            let alone = self.batch_pages(batch) > files.capacity();
            return Ok(if own_batch && alone && !pinned_elsewhere {
                Room::Never
            } else {
                Room::Wait
            });
        }
        Ok(Room::Made)
    }
}

/// What room-making keeps free of a cache of `capacity` bytes: 1/64 of it, at least 256 KiB
/// (at most the capacity). ext4 counts its extent records in a file's blocks and grows them as
/// parts are punched and written, some only at writeback: a full shuffle through a 6 MiB cache
/// was seen 108 KiB over with a slack of 64 KiB.
fn slack(capacity: u64) -> u64 {
    (capacity / 64).max(256 << 10).min(capacity)
}

impl GatePass for Pass {
    fn ready(&mut self, batch: usize) -> std::result::Result<(), GateError> {
        let s = &self.shared;
        let mut st = s.lock();
        st.cursor = batch;
        st.gathering = true;
        st.stalled_at = None;
        s.changed.notify_all();
        loop {
            let needs = s.needs(batch);
            if let Some(g) = needs.iter().find(|g| st.failed.contains_key(g)) {
                let e = st.failed.remove(g).expect("checked above");
                st.stop = true;
                drop(st);
                s.changed.notify_all();
                return Err(Box::new(e));
            }
            if needs.iter().all(|&g| st.have[g as usize] == Have::Present) {
                return Ok(());
            }
            st = s.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn done(&mut self, batch: usize) {
        let s = &self.shared;
        let mut unpin = Vec::new();
        {
            let mut st = s.lock();
            for &g in s.needs(batch) {
                let uses = &mut st.uses[g as usize];
                if uses.front() == Some(&(batch as u32)) {
                    uses.pop_front();
                }
                if uses.is_empty() && st.have[g as usize] == Have::Present {
                    st.have[g as usize] = Have::Absent;
                    unpin.push(g);
                }
            }
            st.gathering = false;
            st.cursor = batch + 1;
            st.stalled_at = None;
        }
        s.changed.notify_all();
        for g in unpin {
            let _ = s.files.unpin(g);
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let s = &self.shared;
        s.lock().stop = true;
        s.changed.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let present: Vec<u32> = {
            let st = s.lock();
            (0..st.have.len() as u32)
                .filter(|&g| st.have[g as usize] == Have::Present)
                .collect()
        };
        for g in present {
            let _ = s.files.unpin(g);
        }
    }
}
