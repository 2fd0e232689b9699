//! One writer at a time: the dataset folder's write lock ([`WriteLock`]), and the lock a part
//! writer holds on its marker ([`try_lock`]).

use std::fs::File;
use std::path::Path;

use crate::{Error, Result};

/// An exclusive advisory lock on a dataset folder (`flock` on the folder itself, so no lock file
/// is left behind), held for a whole write and released when dropped, or by the kernel when the
/// process dies.
pub(super) struct WriteLock {
    _dir: File,
}

impl WriteLock {
    pub(super) fn take(dir: &Path) -> Result<WriteLock> {
        let file = File::open(dir).map_err(Error::io("cannot open", dir))?;
        if !try_lock(&file, dir)? {
            return Err(Error::DatasetBusy {
                path: dir.to_path_buf(),
            });
        }
        Ok(WriteLock { _dir: file })
    }
}

/// Takes an exclusive `flock` on `file` (at `path`, for messages) without waiting: `false` when
/// another open file holds it. The lock lasts as long as `file` is open. On file systems without
/// locks, and off Unix, there is no lock: `true`, as documented for every dataset write.
pub(super) fn try_lock(file: &File, path: &Path) -> Result<bool> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock only reads its integer arguments; the descriptor is open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => Ok(false),
                // A file system without locks: go on unlocked, as documented.
                Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Ok(true),
                _ => Err(Error::io("cannot lock", path)(err)),
            };
        }
        Ok(true)
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        Ok(true)
    }
}
