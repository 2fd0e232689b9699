//! The sidecar of a partial download (`KEY.parts.json`): which parts of the object are verified
//! and on disk, so that the next fetch of the same object GETs only the rest.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use object_store::ObjectMeta;
use serde::{Deserialize, Serialize};

/// The sidecar of a partial download: which parts are verified and on disk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Progress {
    url: String,
    size: u64,
    etag: Option<String>,
    version: Option<String>,
    /// Bytes per part (at least 1). A resumed download keeps the part size it started with, so
    /// the parts listed as done stay the same byte ranges.
    pub(crate) part_size: u64,
    /// Whether the head (`0..data_start`) is verified and on disk.
    pub(crate) head: bool,
    /// Whether the tail (the checksum table) is verified and on disk.
    pub(crate) tail: bool,
    /// Finished data parts as half-open runs `[start, end)` of part indices, kept sorted and
    /// merged: parts finish roughly in order, so the sidecar stays a few bytes however many parts.
    done: Vec<[usize; 2]>,
}

impl Progress {
    /// The progress of a download of the object `meta` describes that has done nothing yet.
    pub(crate) fn new(url: &str, meta: &ObjectMeta, part_size: u64) -> Progress {
        Progress {
            url: url.into(),
            size: meta.size,
            etag: meta.e_tag.clone(),
            version: meta.version.clone(),
            part_size,
            head: false,
            tail: false,
            done: Vec::new(),
        }
    }

    /// The sidecar at `path`, if there is one that parses.
    pub(crate) fn read(path: &Path) -> Option<Progress> {
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }

    /// Which of `n` parts are done (indices past `n` in a hand-edited sidecar are ignored).
    pub(crate) fn done_set(&self, n: usize) -> Vec<bool> {
        let mut set = vec![false; n];
        for &[a, b] in &self.done {
            for d in set.iter_mut().take(b).skip(a) {
                *d = true;
            }
        }
        set
    }

    /// Records part `i` as done, keeping the runs sorted and merged.
    pub(crate) fn mark_done(&mut self, i: usize) {
        let at = self.done.partition_point(|r| r[1] < i);
        match self.done.get_mut(at) {
            Some(r) if r[0] <= i && i < r[1] => return,
            Some(r) if r[1] == i => r[1] = i + 1,
            Some(r) if r[0] == i + 1 => r[0] = i,
            _ => self.done.insert(at, [i, i + 1]),
        }
        // Merge with the next run if they now touch.
        if at + 1 < self.done.len() && self.done[at][1] >= self.done[at + 1][0] {
            self.done[at][1] = self.done[at][1].max(self.done[at + 1][1]);
            self.done.remove(at + 1);
        }
    }

    /// Whether both describe the same version of the same object.
    pub(crate) fn same_object(&self, other: &Progress) -> bool {
        self.url == other.url
            && self.size == other.size
            && self.etag == other.etag
            && self.version == other.version
    }

    /// Replaces the sidecar atomically: a temp file, fsynced, renamed over it.
    pub(crate) fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_data()?;
        fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_parts_are_recorded_as_merged_runs() {
        let mut p = Progress {
            url: String::new(),
            size: 0,
            etag: None,
            version: None,
            part_size: 1,
            head: true,
            tail: true,
            done: Vec::new(),
        };
        for i in [3, 0, 1, 7, 2, 2, 5, 6, 9] {
            p.mark_done(i);
        }
        assert_eq!(p.done, [[0, 4], [5, 8], [9, 10]]);
        p.mark_done(4);
        p.mark_done(8);
        assert_eq!(p.done, [[0, 10]]);
        assert_eq!(
            p.done_set(12),
            [[true; 10].as_slice(), &[false; 2]].concat()
        );
    }
}
