//! The stream of a plain file's byte range (`.npy` data, a safetensors or `.mmt` tensor): a reader
//! thread reads ahead while the caller casts, hashes and writes.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::Path;

use crate::source::part::Part;
use crate::source::read::read_full;
use crate::{Error, Result};

impl Part {
    /// Streams a byte range of a plain file with a reader thread, so that reading the next chunk
    /// overlaps casting, hashing and writing this one. Two chunk buffers circulate between the
    /// threads; memory stays at two chunks.
    pub(super) fn stream_file(
        &self,
        tensor: &str,
        path: &Path,
        offset: u64,
        chunk: usize,
        deliver: &mut dyn FnMut(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        use std::sync::mpsc::sync_channel;
        let mut file = File::open(path).map_err(Error::io("cannot open", path))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(Error::io("cannot seek in", path))?;
        let len = self.len;
        std::thread::scope(|scope| {
            // The channels live inside the scope's closure: when the consumer below returns early
            // (an error in `deliver`, a cancellation), its ends are dropped before the scope joins
            // the reader thread, so a reader blocked on either channel wakes up and exits instead
            // of deadlocking the join.
            let (full_tx, full_rx) = sync_channel::<io::Result<(Vec<u8>, usize, usize)>>(1);
            let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(2);
            for _ in 0..2 {
                // Cannot fail: the channel has room for both and the receiver is alive.
                let _ = empty_tx.send(Vec::new());
            }
            scope.spawn(move || {
                let mut left = len;
                while left > 0 {
                    let Ok(mut b) = empty_rx.recv() else { return };
                    let n = chunk.min(usize::try_from(left).unwrap_or(usize::MAX));
                    b.resize(n, 0);
                    let r = read_full(&mut file, &mut b[..n]);
                    let stop = !matches!(r, Ok(k) if k == n);
                    if full_tx.send(r.map(|k| (b, k, n))).is_err() || stop {
                        return;
                    }
                    left -= n as u64;
                }
            });
            let mut done = 0u64;
            while done < len {
                let Ok(msg) = full_rx.recv() else {
                    return Err(self.size_error(tensor, Some(done)));
                };
                let (mut b, k, n) = msg.map_err(|e| self.read_error(e))?;
                if k < n {
                    return Err(self.size_error(tensor, Some(done + k as u64)));
                }
                deliver(&mut b[..k])?;
                done += k as u64;
                let _ = empty_tx.send(b);
            }
            Ok(())
        })
    }
}
