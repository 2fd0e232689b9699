//! Helpers shared by the mmtensor workspace's tests, examples and benches (never published).
//!
//! - [`rss_anon`] and [`mapped_file_at`] read /proc and return an error when it gives nothing, so a
//!   test that measures memory fails instead of silently skipping its assertion.
//! - [`evict`] drops a file's pages from the page cache, for cold-cache measurements.
//! - [`median`] of a set of timings.
//! - [`TestStore`] writes a small (or streamed, large) store through the real `StoreWriter`.
//! - [`FaultProxy`] (module [`faults`]) is a TCP proxy that injects network faults (delays,
//!   throttling, resets, truncated responses, a server that is down) between a client and a
//!   server, for tests of code that must survive them.
//!
//! ```no_run
//! use mmtensor_format::Dtype;
//! use mmtensor_testsupport::TestStore;
//!
//! let bytes: Vec<u8> = (0..6u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
//! TestStore::new()
//!     .alignment(64)
//!     .tensor("x", Dtype::F32, &[2, 3], bytes)
//!     .write("/tmp/x.mmt".as_ref())
//!     .unwrap();
//! ```
#![deny(missing_docs)]

pub mod faults;
pub use faults::{Fault, FaultProxy, ProxyStats};

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use mmtensor_convert::StoreWriter;
use mmtensor_format::{Dtype, Layout, LayoutBuilder};

/// Anonymous resident memory of this process in bytes (`RssAnon` in /proc/self/status).
///
/// # Errors
/// When /proc/self/status cannot be read or has no parsable `RssAnon` line (not Linux, /proc not
/// mounted, a kernel before 4.5): a test that depends on the figure must fail, not skip.
pub fn rss_anon() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read /proc/self/status: {e}")))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| io::Error::other("no `RssAnon: N kB` line in /proc/self/status"))?;
    kib.checked_mul(1024)
        .ok_or_else(|| io::Error::other("RssAnon in /proc/self/status overflows u64 bytes"))
}

/// The path of the file this process maps at `addr` (from /proc/self/maps), `None` when the
/// address lies in anonymous memory (including the kernel's named regions, `[heap]`, `[stack]`).
///
/// # Errors
/// When /proc/self/maps cannot be read, or no mapping contains `addr`.
pub fn mapped_file_at(addr: usize) -> io::Result<Option<String>> {
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read /proc/self/maps: {e}")))?;
    for line in maps.lines() {
        // `lo-hi perms offset dev inode [path]`; the path may contain spaces.
        let mut fields = line.splitn(6, ' ');
        let Some((lo, hi)) = fields.next().and_then(|r| r.split_once('-')) else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        if (lo..hi).contains(&addr) {
            let path = fields.nth(4).map(str::trim).unwrap_or("");
            return Ok(path.starts_with('/').then(|| path.to_owned()));
        }
    }
    Err(io::Error::other(format!(
        "no mapping in /proc/self/maps contains {addr:#x}"
    )))
}

/// Drops the clean pages of the file at `path` from the page cache
/// (`posix_fadvise(POSIX_FADV_DONTNEED)`), so the next read comes from the disk.
///
/// Dirty pages stay: a store written by `StoreWriter` is fsynced, so all of its pages are clean.
///
/// # Errors
/// When the file cannot be opened or the call fails; on systems without `posix_fadvise`, always.
pub fn evict(path: &Path) -> io::Result<()> {
    let file = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open for the
        // duration of the call.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            let e = io::Error::from_raw_os_error(rc);
            return Err(io::Error::new(
                e.kind(),
                format!("posix_fadvise(DONTNEED) on {}: {e}", path.display()),
            ));
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        drop(file);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "page-cache eviction needs posix_fadvise (Linux)",
        ))
    }
}

/// The share of the pages of the file at `path` that are in the page cache (`mincore` of a fresh
/// mapping of it), from 0 to 1; 1 for an empty file.
///
/// # Errors
/// When the file cannot be opened or mapped; on systems other than Linux, always.
pub fn resident_share(path: &Path) -> io::Result<f64> {
    let file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
    if len == 0 {
        return Ok(1.0);
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: sysconf reads a constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(io::Error::other)?;
        let pages = len.div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: a fresh read-only shared mapping of `len` bytes of an open file, at an address
        // the kernel picks; mincore writes one byte per page of it into `vec`, which holds
        // `pages` bytes; the mapping is unmapped before returning and never read.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            if addr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let rc = libc::mincore(addr, len, vec.as_mut_ptr());
            let err = io::Error::last_os_error();
            libc::munmap(addr, len);
            if rc != 0 {
                return Err(err);
            }
        }
        Ok(vec.iter().filter(|&&b| b & 1 == 1).count() as f64 / pages as f64)
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "page residency needs mincore (Linux)",
        ))
    }
}

/// The median of `values` (the mean of the middle two for an even count), `None` when empty.
/// NaNs sort last, by `f64::total_cmp`.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The little-endian bytes of `values` as f32, for test tensors.
pub fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// Where a tensor's bytes come from when the store is written.
enum Data {
    Bytes(Vec<u8>),
    Chunks(Box<dyn Iterator<Item = Vec<u8>>>),
}

/// A store for a test, written through the real `StoreWriter`: the plan and every tensor's bytes.
///
/// The builder methods panic on a plan the format refuses (an invalid alignment, a duplicate
/// name): a test's store is a constant of the test, and a hostile plan is built by hand instead.
pub struct TestStore {
    plan: LayoutBuilder,
    data: Vec<(String, Data)>,
}

impl Default for TestStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TestStore {
    /// An empty store with the writer's default alignment and block size.
    pub fn new() -> Self {
        TestStore {
            plan: LayoutBuilder::new(),
            data: Vec::new(),
        }
    }

    /// Sets the alignment.
    ///
    /// # Panics
    /// When the format refuses it.
    pub fn alignment(mut self, alignment: u64) -> Self {
        if let Err(e) = self.plan.alignment(alignment) {
            panic!("alignment {alignment}: {e}");
        }
        self
    }

    /// Sets the checksum block size.
    ///
    /// # Panics
    /// When the format refuses it.
    pub fn block_size(mut self, block_size: u64) -> Self {
        if let Err(e) = self.plan.block_size(block_size) {
            panic!("block size {block_size}: {e}");
        }
        self
    }

    /// Adds a metadata entry.
    ///
    /// # Panics
    /// When the format refuses the key (a reserved `mmt.` key).
    pub fn metadata(mut self, key: &str, value: &str) -> Self {
        if let Err(e) = self.plan.metadata(key, value) {
            panic!("metadata key {key:?}: {e}");
        }
        self
    }

    /// Adds a tensor holding `bytes` (little-endian, C order; the writer checks the length).
    ///
    /// # Panics
    /// When the format refuses the tensor.
    pub fn tensor(
        self,
        name: &str,
        dtype: Dtype,
        shape: &[u64],
        bytes: impl Into<Vec<u8>>,
    ) -> Self {
        self.add(name, dtype, shape, Data::Bytes(bytes.into()))
    }

    /// Adds a tensor whose bytes are streamed from `chunks` when the store is written, for tensors
    /// too large to hold in memory.
    ///
    /// # Panics
    /// When the format refuses the tensor.
    pub fn tensor_chunks(
        self,
        name: &str,
        dtype: Dtype,
        shape: &[u64],
        chunks: impl Iterator<Item = Vec<u8>> + 'static,
    ) -> Self {
        self.add(name, dtype, shape, Data::Chunks(Box::new(chunks)))
    }

    /// Adds a ragged tensor (format 1.1): rows of `lengths[i]` items of shape `item_shape`, whose
    /// items are `values` back to back; written as the values and their offsets `NAME.offsets`.
    ///
    /// # Panics
    /// When the format refuses the tensor.
    pub fn ragged(
        self,
        name: &str,
        dtype: Dtype,
        item_shape: &[u64],
        values: impl Into<Vec<u8>>,
        lengths: &[u64],
    ) -> Self {
        let mut offsets = vec![0u64];
        for l in lengths {
            offsets.push(offsets.last().unwrap() + l);
        }
        let total = *offsets.last().unwrap();
        let mut shape = vec![total];
        shape.extend_from_slice(item_shape);
        self.ragged_offsets(name, dtype, &shape, values, &offsets)
    }

    /// Adds a ragged tensor with the values of shape `values_shape` and the `offsets` given as
    /// they are, valid or not (for tests of hostile stores).
    ///
    /// # Panics
    /// When the format refuses the tensor's plan.
    pub fn ragged_offsets(
        mut self,
        name: &str,
        dtype: Dtype,
        values_shape: &[u64],
        values: impl Into<Vec<u8>>,
        offsets: &[u64],
    ) -> Self {
        let rows = offsets.len() as u64 - 1;
        if let Err(e) = self.plan.ragged(name, dtype, values_shape, rows) {
            panic!("ragged tensor {name:?} {dtype:?} {values_shape:?}: {e}");
        }
        let bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        self.data
            .push((name.to_owned(), Data::Bytes(values.into())));
        self.data
            .push((mmtensor_format::offsets_name(name), Data::Bytes(bytes)));
        self
    }

    fn add(mut self, name: &str, dtype: Dtype, shape: &[u64], data: Data) -> Self {
        if let Err(e) = self.plan.tensor(name, dtype, shape) {
            panic!("tensor {name:?} {dtype:?} {shape:?}: {e}");
        }
        self.data.push((name.to_owned(), data));
        self
    }

    /// The layout the store will have.
    ///
    /// # Panics
    /// When the format refuses the plan.
    pub fn layout(&self) -> Layout {
        self.plan
            .build()
            .unwrap_or_else(|e| panic!("the test store's plan: {e}"))
    }

    /// Writes the store to `path` (atomically, as every `StoreWriter` does).
    ///
    /// # Errors
    /// As `StoreWriter`: I/O errors, and a tensor whose bytes do not match its length.
    pub fn write(self, path: &Path) -> mmtensor_convert::Result<()> {
        let layout = self.layout();
        let mut w = StoreWriter::create(path, layout)?;
        for (name, data) in self.data {
            match data {
                Data::Bytes(bytes) => w.write_tensor(&name, &bytes)?,
                Data::Chunks(chunks) => {
                    w.begin_tensor(&name)?;
                    for chunk in chunks {
                        w.write_chunk(&chunk)?;
                    }
                    w.end_tensor()?;
                }
            }
        }
        w.finish()?;
        Ok(())
    }
}

/// A tmpfs mounted by [`small_disk`]; unmounted on drop, so a failing assertion does not leave a
/// mount behind.
pub struct Mount(PathBuf);

impl Mount {
    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a plain syscall on a path we mounted; MNT_DETACH never blocks on busy files.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Mounts an 8 MiB tmpfs at `parent/small-disk`, for full-disk tests; `None` (with the reason
/// printed) where mounting is not permitted, so the test skips instead of failing.
pub fn small_disk(parent: &Path) -> Option<Mount> {
    let mnt = parent.join("small-disk");
    std::fs::create_dir(&mnt).unwrap();
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let target = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mount(2) with valid NUL-terminated strings; it fails cleanly when not permitted.
    let r = unsafe {
        libc::mount(
            c("tmpfs").as_ptr(),
            target.as_ptr(),
            c("tmpfs").as_ptr(),
            0,
            c("size=8m").as_ptr().cast(),
        )
    };
    if r != 0 {
        eprintln!(
            "skipped: cannot mount an 8 MiB tmpfs ({}); run as root to test a full disk",
            std::io::Error::last_os_error()
        );
        return None;
    }
    Some(Mount(mnt))
}

/// Sends SIGINT to `child` and waits for it to exit. A watchdog, not a timing assertion: a signal
/// that never reaches the child's cancel flag would leave it held forever, so after 2 minutes the
/// child is killed and the test fails (naming `what`) instead of hanging the suite.
pub fn interrupt_and_wait(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut waited = 0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if waited == 120_000 {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{what} did not stop within 2 minutes of SIGINT");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn rss_anon_reads_a_nonzero_figure_that_sees_a_touched_allocation() {
        let before = rss_anon().unwrap();
        assert!(before > 0);
        let v = vec![1u8; 64 << 20];
        let after = rss_anon().unwrap();
        assert!(after - before >= 32 << 20, "{before} -> {after}");
        drop(v);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn mapped_file_at_tells_a_heap_address_from_an_unmapped_one() {
        let v = Box::new([0u8; 16]);
        assert_eq!(mapped_file_at(v.as_ptr() as usize).unwrap(), None);
        assert!(mapped_file_at(0).is_err());
    }

    #[test]
    fn a_test_store_writes_and_evicts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.mmt");
        TestStore::new()
            .alignment(64)
            .block_size(4096)
            .metadata("k", "v")
            .tensor(
                "x",
                Dtype::F32,
                &[2, 3],
                f32_bytes((0..6).map(|i| i as f32)),
            )
            .tensor_chunks("y", Dtype::U8, &[10], [vec![1; 4], vec![2; 6]].into_iter())
            .write(&path)
            .unwrap();
        let file = std::fs::read(&path).unwrap();
        let layout = mmtensor_format::FileLayout::parse(&file, file.len() as u64).unwrap();
        let y = layout.tensor_range(layout.tensor("y").unwrap());
        assert_eq!(
            &file[y.start as usize..y.end as usize],
            &[1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
        );
        #[cfg(target_os = "linux")]
        evict(&path).unwrap();
    }
}
