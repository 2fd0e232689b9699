//! What the kernel says about the machine a store is read on: the read-ahead and the largest
//! request of the block device a file lives on (`/sys/dev/block/MAJ:MIN/queue`), and the memory
//! available for the page cache (`MemAvailable` in `/proc/meminfo`). The loader chooses how to read
//! an epoch from them ([`crate::loader`]'s advice); nothing here changes what is read.
//!
//! Every answer is `None` where the kernel does not tell (another platform, a file on tmpfs or
//! overlayfs, which has no block queue, a sysfs that is not mounted): callers fall back to the
//! kernel's defaults.

use std::fs::File;

/// The queue parameters of the block device holding a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Device {
    /// Bytes the kernel reads around a page fault in a mapping (and ahead of a sequential
    /// reader): `read_ahead_kb`.
    pub(crate) read_ahead: u64,
    /// Bytes of the largest request the kernel sends the device (`max_sectors_kb`). One
    /// `MADV_WILLNEED` (`POSIX_FADV_WILLNEED`) call reads at most the larger of the two.
    pub(crate) max_request: u64,
}

impl Device {
    /// The device holding `file`, or `None` when the kernel does not say.
    pub(crate) fn of(file: &File) -> Option<Device> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt;
            let dev = file.metadata().ok()?.dev();
            // A partition's directory has no queue of its own; its disk's is one level up.
            let base = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
            let kib = |name: &str| {
                [
                    format!("{base}/queue/{name}"),
                    format!("{base}/../queue/{name}"),
                ]
                .iter()
                .find_map(|p| std::fs::read_to_string(p).ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(|k| k.saturating_mul(1024))
            };
            Some(Device {
                read_ahead: kib("read_ahead_kb")?,
                max_request: kib("max_sectors_kb")?,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = file;
            None
        }
    }
}

/// Bytes of memory the kernel estimates are available for new allocations and the page cache
/// without swapping (`MemAvailable`), or `None` when it does not say.
pub(crate) fn memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text, "MemAvailable:")
}

/// The value of `field` (in kB in the file) in bytes.
fn parse_meminfo(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(
            parse_meminfo(text, "MemAvailable:"),
            Some(22_000_000 * 1024)
        );
        assert_eq!(parse_meminfo(text, "MemFree:"), Some(100 * 1024));
        assert_eq!(parse_meminfo(text, "SwapTotal:"), None);
        assert_eq!(
            parse_meminfo("MemAvailable: lots kB", "MemAvailable:"),
            None
        );
    }

    #[test]
    fn the_device_of_a_file_on_disk_has_a_read_ahead_when_sysfs_tells() {
        // Where the kernel tells (a file on a block device, sysfs mounted), both sizes are read;
        // elsewhere (tmpfs, another platform) the answer is None rather than a guess.
        let file = File::open(env!("CARGO_MANIFEST_DIR")).unwrap();
        if let Some(d) = Device::of(&file) {
            assert!(d.read_ahead % 1024 == 0 && d.max_request >= 4096, "{d:?}");
        }
    }
}
