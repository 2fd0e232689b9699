//! What a case is measured with: anonymous memory, page-cache eviction, a pass that touches
//! every byte, and medians.

use std::fs::File;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Anonymous resident memory of this process, in bytes.
///
/// An error, not 0, when /proc gives nothing: a heap column of zeros would read as "no copy".
/// (mmtensor-testsupport has the same reader, but this is the shipped binary, which cannot depend
/// on an unpublished crate.)
pub(super) fn rss_anon() -> Result<i64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("cannot read /proc/self/status to measure anonymous memory")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .context("no `RssAnon: N kB` line in /proc/self/status")?;
    Ok(kb * 1024)
}

/// Hands the heap memory freed so far back to the kernel (glibc's `malloc_trim`), so that a case
/// that allocates shows its growth: otherwise glibc serves a repeat's buffer from the memory the
/// repeat before freed, still resident, and a copy of a store under glibc's mmap threshold (up to
/// 32 MiB) grows `RssAnon` by nothing. A no-op on other C libraries.
pub(super) fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes an integer and only returns free memory of glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops the file's pages from the page cache (they must be clean: stores are fsynced).
pub(super) fn evict(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open for the
        // duration of the call.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            bail!(
                "posix_fadvise(DONTNEED) on {} failed with error {rc}",
                path.display()
            );
        }
    }
    drop(file);
    Ok(())
}

/// Sums the bytes as little-endian u64 words: touches every byte, vectorizes well.
pub(super) fn full_pass(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let mut acc = 0u64;
    for c in &mut chunks {
        acc = acc.wrapping_add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
    }
    for &b in chunks.remainder() {
        acc = acc.wrapping_add(u64::from(b));
    }
    acc
}

/// The median of `v` (0 when empty).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
