//! What the kernel says about the machine a store is read on: the read-ahead and the largest
//! request of the block device a file lives on (`/sys/dev/block/MAJ:MIN/queue`), and the memory
//! available for the page cache (`MemAvailable` in `/proc/meminfo`, or less where the process's
//! memory cgroup, a container's limit, leaves less). The loader chooses how to read an epoch from
//! them ([`crate::loader`]'s advice); nothing here changes what is read.
//!
//! Every answer is `None` where the kernel does not tell (another platform, a file on tmpfs or
//! overlayfs, which has no block queue, a sysfs that is not mounted): callers fall back to the
//! kernel's defaults.

use std::fs::File;
use std::path::Path;

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

/// Bytes of memory available to this process for new allocations and the page cache without
/// swapping or reclaiming its own working set: the machine's `MemAvailable`, or the room its
/// memory cgroup leaves when that is less (a container's limit: pages read beyond it are
/// evicted again before they are used), or `None` when neither is known.
pub(crate) fn memory_available() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo(&text, "MemAvailable:"));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| cgroup_room(Path::new("/sys/fs/cgroup"), &text));
    match (machine, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

/// The room the memory cgroup of a process leaves, from its `/proc/PID/cgroup` text and the
/// cgroup file system mounted at `root`: a limit less the working set under it (usage less the
/// inactive page cache, which the kernel reclaims first), the least over the cgroup and every
/// ancestor that can be seen (each limit applies to the usage of its whole subtree). cgroup v1 (a
/// `memory` controller line: `memory.limit_in_bytes` and `memory.usage_in_bytes` per level, and at
/// the cgroup itself `hierarchical_memory_limit`, the least of all its ancestors' limits, seen or
/// not) or v2 (the `0::` line: `memory.max` and `memory.current`). Inside a container the path
/// is the host's (`/docker/ID`) while the mount shows the container's own cgroup at its root, so
/// when the path is not found under the mount, the mount's root is the cgroup. `None` when no
/// level has a limit or nothing can be read.
fn cgroup_room(root: &Path, proc_cgroup: &str) -> Option<u64> {
    // v1: "4:memory:/path" (the controller may share its hierarchy: "4:memory,cpu:/path").
    let v1 = proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    });
    let (mount, path, files) = match v1 {
        Some(path) => (
            root.join("memory"),
            path,
            [
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            ],
        ),
        None => (
            root.to_path_buf(),
            proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?,
            ["memory.max", "memory.current", "inactive_file"],
        ),
    };
    let [limit_file, usage_file, inactive_field] = files;
    let read = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
    let mut dir = mount.join(path.trim().trim_start_matches('/'));
    if !dir.is_dir() {
        dir = mount.clone();
    }
    let mut room: Option<u64> = None;
    let mut cgroup_itself = true;
    loop {
        let stat = read(&dir, "memory.stat").unwrap_or_default();
        // The working set under this level: what its limit must hold.
        let working_set = number(read(&dir, usage_file))
            .map(|usage| usage.saturating_sub(stat_field(&stat, inactive_field).unwrap_or(0)));
        // The level's own limit; and for the cgroup itself, in v1, the ancestors' least limit
        // against its own working set (theirs may be out of sight): an upper bound, tightened
        // by every level seen above it.
        let ancestors = cgroup_itself
            .then(|| stat_field(&stat, "hierarchical_memory_limit"))
            .flatten();
        if let Some(ws) = working_set {
            for limit in [number(read(&dir, limit_file)), ancestors]
                .into_iter()
                .flatten()
            {
                let here = limit.saturating_sub(ws);
                room = Some(room.map_or(here, |r| r.min(here)));
            }
        }
        cgroup_itself = false;
        if dir == mount || !dir.pop() || !dir.starts_with(&mount) {
            return room;
        }
    }
}

/// The number after `field` on its line of a cgroup `memory.stat` text (`name value` lines).
fn stat_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (name, value) = l.split_once(' ')?;
        (name == field).then(|| value.trim().parse().ok())?
    })
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
    fn a_memory_cgroup_leaves_its_limit_less_its_working_set_the_least_of_its_levels() {
        let root = tempfile::tempdir().unwrap();
        let write = |dir: &str, files: &[(&str, &str)]| {
            let dir = root.path().join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
        };
        // v2: the pod's limit (1000) above the container's (no limit): 1000 - (700 - 100), the
        // pod's usage counting its other containers too.
        write(
            "kubepods/pod",
            &[
                ("memory.max", "1000\n"),
                ("memory.current", "700\n"),
                (
                    "memory.stat",
                    "anon 500\ninactive_file 100\nactive_file 100\n",
                ),
            ],
        );
        write(
            "kubepods/pod/ctr",
            &[("memory.max", "max\n"), ("memory.current", "600\n")],
        );
        let v2 = "0::/kubepods/pod/ctr\n";
        assert_eq!(cgroup_room(root.path(), v2), Some(400));
        // A tighter limit below wins; usage under inactive pages leaves the whole limit.
        write(
            "kubepods/pod/ctr",
            &[
                ("memory.max", "300\n"),
                ("memory.current", "50\n"),
                ("memory.stat", "inactive_file 80\n"),
            ],
        );
        assert_eq!(cgroup_room(root.path(), v2), Some(300));
        // No level with a limit (the host's root cgroup has no memory.max).
        assert_eq!(cgroup_room(root.path(), "0::/\n"), None);

        // v1, the memory controller's line among others. The pod (a level seen) holds a sibling
        // too: its limit less its whole working set (3000 - (2900 - 400)) is tighter than the
        // ancestors' least limit less this cgroup's own (4096 - (2500 - 1000)).
        let v1 = "5:cpu,cpuacct:/\n4:memory:/pod/job\n0::/\n";
        write(
            "memory/pod",
            &[
                ("memory.limit_in_bytes", "3000\n"),
                ("memory.usage_in_bytes", "2900\n"),
                ("memory.stat", "total_inactive_file 400\n"),
            ],
        );
        write(
            "memory/pod/job",
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "2500\n"),
                (
                    "memory.stat",
                    "cache 2000\nhierarchical_memory_limit 4096\ntotal_inactive_file 1000\n",
                ),
            ],
        );
        assert_eq!(cgroup_room(root.path(), v1), Some(500));
        // Over its limit in working set: no room at all.
        write("memory/pod", &[("memory.usage_in_bytes", "9000\n")]);
        assert_eq!(cgroup_room(root.path(), v1), Some(0));

        // Inside a v1 container the path is the host's, and the mount's root is the container's
        // own cgroup: its hierarchical limit (an ancestor's, out of sight) against its usage.
        let inside = tempfile::tempdir().unwrap();
        let own = inside.path().join("memory");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(own.join("memory.usage_in_bytes"), "100\n").unwrap();
        std::fs::write(
            own.join("memory.stat"),
            "hierarchical_memory_limit 1024\ntotal_inactive_file 0\n",
        )
        .unwrap();
        assert_eq!(
            cgroup_room(inside.path(), "4:memory:/docker/0123abcd\n"),
            Some(924)
        );
        // Nothing readable: unknown, not a guess.
        assert_eq!(
            cgroup_room(Path::new("/nonexistent"), "4:memory:/gone\n"),
            None
        );
        assert_eq!(cgroup_room(root.path(), ""), None);
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
