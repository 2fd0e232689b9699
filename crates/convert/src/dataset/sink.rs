//! The one place a dataset write's rows become shard files ([`Shards`]): rows arrive column by
//! column or in batches, shards are opened as needed, cut at `rows_per_shard` rows, committed
//! (renamed into place) as each is full, and listed as [`Shard`] entries for a manifest or a part
//! record to take.

use std::path::{Path, PathBuf};

use mmtensor_format::{ColumnSpec, Shard};

use crate::dataset::cut::Cut;
use crate::dataset::names::Names;
use crate::dataset::shard::{Capacity, ShardFile, Template};
use crate::{Error, Result};

/// The shard being filled: its file, its name, the rows complete in every column, and each
/// ragged column's items given so far (in column order).
struct Open {
    file: ShardFile,
    name: String,
    rows: u64,
    values: Vec<u64>,
    /// Each ragged column's rows given (offsets written after the leading 0).
    ragged_rows: Vec<u64>,
    /// Each ragged column's last offset written: the items its given rows add up to.
    ragged_end: Vec<u64>,
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
    /// Per column: its first slot (tensor) in a shard, and for a ragged column its index among
    /// the ragged ones.
    slots: Vec<(usize, Option<usize>)>,
    template: Template,
    rows_per_shard: u64,
    /// Items of each ragged column's values a shard holds at most (the shard size over the item
    /// bytes), unless one row alone is longer.
    values_per_shard: Vec<u64>,
    /// The capacity of the next shard opened, when a caller asked for more (a row longer than
    /// `values_per_shard`).
    next: Option<Capacity>,
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
        cut: Cut,
        names: Names,
    ) -> Shards {
        let mut slots = Vec::with_capacity(columns.len());
        let (mut slot, mut ragged) = (0usize, 0usize);
        let mut values_per_shard = Vec::new();
        for c in &columns {
            if c.is_ragged() {
                slots.push((slot, Some(ragged)));
                slot += 2;
                ragged += 1;
                values_per_shard.push((cut.bytes / c.row_bytes().max(1)).max(1));
            } else {
                slots.push((slot, None));
                slot += 1;
            }
        }
        Shards {
            dir: dir.to_path_buf(),
            columns,
            slots,
            template,
            rows_per_shard: cut.rows.max(1),
            values_per_shard,
            next: None,
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
            let capacity = match self.next.take() {
                Some(cap) => cap,
                None => Capacity {
                    rows: match self.left {
                        Some(left) => self.rows_per_shard.min(left.max(1)),
                        None => self.rows_per_shard,
                    },
                    values: self.values_per_shard.clone(),
                },
            };
            let ragged = capacity.values.len();
            let name = self.names.take();
            let mut file = ShardFile::create(
                &self.dir.join(&name),
                &self.template,
                &self.columns,
                capacity,
                std::mem::take(&mut self.first_extra),
            )?;
            // Every ragged column's offsets start with 0.
            for &(slot, r) in &self.slots {
                if r.is_some() {
                    file.put(slot + 1, &0u64.to_le_bytes())?;
                }
            }
            self.open = Some(Open {
                file,
                name,
                rows: 0,
                values: vec![0; ragged],
                ragged_rows: vec![0; ragged],
                ragged_end: vec![0; ragged],
            });
        }
        let open = self.open.as_ref().expect("opened above");
        Ok(open.file.capacity().rows - open.rows)
    }

    /// Items of ragged column `c`'s values the current shard has room for (after [`Shards::room`]
    /// opened it; 0 when none is open).
    pub(super) fn room_values(&self, c: usize) -> u64 {
        match (&self.open, self.slots[c].1) {
            (Some(open), Some(r)) => open.file.capacity().values[r] - open.values[r],
            _ => 0,
        }
    }

    /// Rows complete in the current shard (0 when none is open).
    pub(super) fn open_rows(&self) -> u64 {
        self.open.as_ref().map_or(0, |o| o.rows)
    }

    /// Makes the next shard opened hold at least `values[r]` items of each ragged column `r`:
    /// for a row longer than a shard's usual room. The current shard must be empty or closed
    /// (an empty one is discarded and opened again with that room).
    pub(super) fn widen(&mut self, values: &[u64]) -> Result<()> {
        if self.open.as_ref().is_some_and(|o| o.rows > 0) {
            return Err(Error::NoOpenTensor);
        }
        let reopen = self.open.take().is_some();
        let mut cap = Capacity {
            rows: self.rows_per_shard,
            values: self.values_per_shard.clone(),
        };
        if let Some(left) = self.left {
            cap.rows = cap.rows.min(left.max(1));
        }
        for (v, &want) in cap.values.iter_mut().zip(values) {
            *v = (*v).max(want);
        }
        self.next = Some(cap);
        if reopen {
            // The discarded shard's name is taken again by the next one.
            self.names.give_back();
        }
        Ok(())
    }

    /// Appends bytes of fixed column `c` (whole elements, in the column's dtype) to the current
    /// shard; at most [`Shards::room`] rows' worth beyond its complete rows.
    pub(super) fn put(&mut self, c: usize, bytes: &[u8]) -> Result<()> {
        let column = &self.columns[c];
        let (slot, ragged) = self.slots[c];
        if ragged.is_some() {
            return Err(Error::Batch {
                column: column.name().to_owned(),
                reason: "the column is ragged: its rows need their lengths".into(),
            });
        }
        let open = self.open.as_mut().ok_or(Error::NoOpenTensor)?;
        let limit = open.file.capacity().rows * column.row_bytes();
        let given = open.file.given(slot) + bytes.len() as u64;
        if given > limit {
            return Err(Error::TooManyBytes {
                tensor: column.name().to_owned(),
                expected: limit,
                given,
            });
        }
        open.file.put(slot, bytes)
    }

    /// Appends items of ragged column `c`'s values (whole items, in the column's dtype); at most
    /// [`Shards::room_values`] beyond those given.
    pub(super) fn put_values(&mut self, c: usize, bytes: &[u8]) -> Result<()> {
        let column = &self.columns[c];
        let (slot, Some(r)) = self.slots[c] else {
            return Err(Error::Batch {
                column: column.name().to_owned(),
                reason: "the column is not ragged".into(),
            });
        };
        let open = self.open.as_mut().ok_or(Error::NoOpenTensor)?;
        let items = bytes.len() as u64 / column.row_bytes().max(1);
        let limit = open.file.capacity().values[r];
        if open.values[r] + items > limit {
            return Err(Error::TooManyBytes {
                tensor: column.name().to_owned(),
                expected: limit * column.row_bytes(),
                given: (open.values[r] + items) * column.row_bytes(),
            });
        }
        open.values[r] += items;
        open.file.put(slot, bytes)
    }

    /// Appends the lengths (in items) of ragged column `c`'s next rows: their offsets, counted
    /// from the shard's first item.
    pub(super) fn put_lengths(&mut self, c: usize, lengths: &[u64]) -> Result<()> {
        let (slot, Some(r)) = self.slots[c] else {
            return Err(Error::Batch {
                column: self.columns[c].name().to_owned(),
                reason: "the column is not ragged".into(),
            });
        };
        let open = self.open.as_mut().ok_or(Error::NoOpenTensor)?;
        // The offset after the rows given so far: the shard's items up to them.
        let mut at = open.ragged_end[r];
        let mut bytes = Vec::with_capacity(lengths.len() * 8);
        for &l in lengths {
            at += l;
            bytes.extend_from_slice(&at.to_le_bytes());
        }
        open.ragged_end[r] = at;
        open.ragged_rows[r] += lengths.len() as u64;
        open.file.put(slot + 1, &bytes)
    }

    /// Declares `rows` more rows complete: every column must now hold exactly the shard's rows.
    /// A full shard is committed.
    pub(super) fn end_rows(&mut self, rows: u64) -> Result<()> {
        let open = self.open.as_mut().ok_or(Error::NoOpenTensor)?;
        open.rows += rows;
        for (c, column) in self.columns.iter().enumerate() {
            let (slot, ragged) = self.slots[c];
            if let Some(r) = ragged {
                if open.ragged_rows[r] != open.rows || open.ragged_end[r] != open.values[r] {
                    return Err(Error::Batch {
                        column: column.name().to_owned(),
                        reason: format!(
                            "the shard has {} rows, but the column was given {} row lengths adding up to {} items and {} items of values",
                            open.rows, open.ragged_rows[r], open.ragged_end[r], open.values[r]
                        ),
                    });
                }
                continue;
            }
            let expected = open.rows * column.row_bytes();
            let given = open.file.given(slot);
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
        if open.rows == open.file.capacity().rows {
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
        let held = Capacity {
            rows: open.rows,
            values: open.values.clone(),
        };
        let (len, checksum) = open.file.finish(&self.columns, &held)?;
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
