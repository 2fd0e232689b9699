//! One writer at a time: the dataset folder's write lock ([`WriteLock`]).

use std::path::Path;

use crate::{Error, Result};

/// An exclusive advisory lock on a dataset folder (`flock` on the folder itself, so no lock file
/// is left behind), held for a whole write and released when dropped, or by the kernel when the
/// process dies.
pub(super) struct WriteLock {
    _dir: Option<std::fs::File>,
}

impl WriteLock {
    #[cfg(unix)]
    pub(super) fn take(dir: &Path) -> Result<WriteLock> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(dir).map_err(Error::io("cannot open", dir))?;
        // SAFETY: flock only reads its integer arguments; the descriptor is open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => {
                    return Err(Error::DatasetBusy {
                        path: dir.to_path_buf(),
                    })
                }
                // A file system without locks: go on unlocked, as documented.
                Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => {}
                _ => return Err(Error::io("cannot lock", dir)(err)),
            }
        }
        Ok(WriteLock { _dir: Some(file) })
    }

    #[cfg(not(unix))]
    pub(super) fn take(_dir: &Path) -> Result<WriteLock> {
        Ok(WriteLock { _dir: None })
    }
}
