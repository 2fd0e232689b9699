//! The one place a dataset write's rows become shard files ([`Shards`]): rows arrive column by
//! column or in batches, shards are opened as needed, cut at `rows_per_shard` rows, committed
//! (renamed into place) as each is full, and listed as [`Shard`] entries for a manifest or a part
//! record to take.

use std::path::{Path, PathBuf};

use mmtensor_format::{ColumnSpec, Shard};

use crate::dataset::names::Names;
use crate::dataset::shard::{ShardFile, Template};
use crate::{Error, Result};

/// The shard being filled: its file, its name, and the rows complete in every column.
struct Open {
    file: ShardFile,
    name: String,
    rows: u64,
}

/// What [`Shards::into_written`] gives back.
pub(super) struct Written {
    pub(super) shards: Vec<Shard>,
    pub(super) bytes: u64,
    pub(super) names: Names,
}

/// Shards of one write, in row order.
pub(super) struct Shards {
    dir: PathBuf,
    columns: Vec<ColumnSpec>,
    template: Template,
    rows_per_shard: u64,
    names: Names,
    open: Option<Open>,
    /// Rows still to come, when the caller knows (shards are then laid out for exactly their rows).
    left: Option<u64>,
    /// Metadata entries of the next shard opened only.
    first_extra: Vec<(String, String)>,
    /// Shards committed so far.
    pub(super) done: Vec<Shard>,
    /// Their bytes.
    pub(super) bytes: u64,
    /// Where each committed shard goes next.
    hook: Option<Hook>,
}

/// What is done with each shard once committed (see `DatasetWriter::on_shard`).
pub(super) type Hook = Box<dyn FnMut(&Path, &Shard) -> Result<()> + Send + Sync>;

impl Shards {
    pub(super) fn new(
        dir: &Path,
        columns: Vec<ColumnSpec>,
        template: Template,
        rows_per_shard: u64,
        names: Names,
    ) -> Shards {
        Shards {
            dir: dir.to_path_buf(),
            columns,
            template,
            rows_per_shard: rows_per_shard.max(1),
            names,
            open: None,
            left: None,
            first_extra: Vec::new(),
            done: Vec::new(),
            bytes: 0,
            hook: None,
        }
    }

    /// Sets what is done with each shard once committed.
    pub(super) fn on_shard(&mut self, hook: Hook) {
        self.hook = Some(hook);
    }

    /// The columns, in file order.
    pub(super) fn columns(&self) -> &[ColumnSpec] {
        &self.columns
    }

    /// Rows a shard holds.
    pub(super) fn rows_per_shard(&self) -> u64 {
        self.rows_per_shard
    }

    /// `rows` more rows will come in all (a hint: shards are laid out for exactly their rows, and
    /// the last one is never laid out again).
    pub(super) fn expect(&mut self, rows: u64) {
        self.left = Some(rows);
    }

    /// Metadata entries for the next shard opened, and that one only.
    pub(super) fn first_shard_metadata(&mut self, entries: Vec<(String, String)>) {
        self.first_extra = entries;
    }

    /// Rows of the current shard not yet written, opening a shard if none is.
    pub(super) fn room(&mut self) -> Result<u64> {
        if self.open.is_none() {
            let capacity = match self.left {
                Some(left) => self.rows_per_shard.min(left.max(1)),
                None => self.rows_per_shard,
            };
            let name = self.names.take();
            let file = ShardFile::create(
                &self.dir.join(&name),
                &self.template,
                &self.columns,
                capacity,
                std::mem::take(&mut self.first_extra),
            )?;
            self.open = Some(Open {
                file,
                name,
                rows: 0,
            });
        }
        let open = self.open.as_ref().expect("opened above");
        Ok(open.file.capacity() - open.rows)
    }

    /// Appends bytes of column `c` (whole elements, in the column's dtype) to the current shard;
    /// at most [`Shards::room`] rows' worth beyond its complete rows.
    pub(super) fn put(&mut self, c: usize, bytes: &[u8]) -> Result<()> {
        let column = &self.columns[c];
        let open = self.open.as_mut().ok_or(Error::NoOpenTensor)?;
        let limit = open.file.capacity() * column.row_bytes();
        let given = open.file.given(c) + bytes.len() as u64;
        if given > limit {
            return Err(Error::TooManyBytes {
                tensor: column.name().to_owned(),
                expected: limit,
                given,
            });
        }
        open.file.put(c, bytes)
    }

    /// Declares `rows` more rows complete: every column must now hold exactly the shard's rows.
    /// A full shard is committed.
    pub(super) fn end_rows(&mut self, rows: u64) -> Result<()> {
        let open = self.open.as_mut().ok_or(Error::NoOpenTensor)?;
        open.rows += rows;
        for (c, column) in self.columns.iter().enumerate() {
            let expected = open.rows * column.row_bytes();
            let given = open.file.given(c);
            if given != expected {
                return Err(if given < expected {
                    Error::TooFewBytes {
                        tensor: column.name().to_owned(),
                        expected,
                        given,
                    }
                } else {
                    Error::TooManyBytes {
                        tensor: column.name().to_owned(),
                        expected,
                        given,
                    }
                });
            }
        }
        if let Some(left) = self.left.as_mut() {
            *left = left.saturating_sub(rows);
        }
        if open.rows == open.file.capacity() {
            self.close()?;
        }
        Ok(())
    }

    /// Commits the current shard, if it holds any row (laid out again when short): after the
    /// last row, [`Shards::done`] lists every shard written, in row order.
    pub(super) fn close(&mut self) -> Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        if open.rows == 0 {
            return Ok(());
        }
        let target = self.dir.join(&open.name);
        let (len, checksum) = open.file.finish(&self.columns, open.rows)?;
        let shard =
            Shard::new(open.name, len, checksum, open.rows).map_err(|source| Error::Format {
                path: target.clone(),
                source,
            })?;
        self.bytes += len;
        self.done.push(shard);
        if let (Some(hook), Some(shard)) = (self.hook.as_mut(), self.done.last()) {
            hook(&target, shard)?;
        }
        Ok(())
    }

    /// What was written once the last shard is closed: the shards, their bytes, and the names, to
    /// go on with in another write of the same folder.
    pub(super) fn into_written(self) -> Written {
        Written {
            shards: self.done,
            bytes: self.bytes,
            names: self.names,
        }
    }

    /// Deletes the shards committed so far (a write given up before any manifest or part record
    /// listed them); the open one's temporary file goes with it when dropped.
    pub(super) fn remove_written(&mut self) {
        self.open = None;
        for shard in self.done.drain(..) {
            let _ = std::fs::remove_file(self.dir.join(shard.file()));
        }
    }
}
