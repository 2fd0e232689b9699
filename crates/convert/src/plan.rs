//! What a conversion plans, shared by the readers that make it and the writers that run it: every
//! output tensor ([`PlannedTensor`]: its parts, dtypes, shape and sizes) and the whole [`Plan`].
//!
//! A reader turns the arrays it found into a planned tensor with [`planned`] (named by
//! [`child_name`]); [`crate::plan()`] applies the dtype rules and checks the casts;
//! [`crate::write_plan`] and the dataset writers stream it. The fields are private outside the
//! crate, so what a writer receives is what was checked.

use std::collections::BTreeMap;

use mmtensor_format::Dtype;

use crate::source::{Location, Part};
use crate::{Error, Result};

/// One output tensor as planned: where it comes from and what it becomes.
///
/// Made only by [`crate::plan()`], which checked every input header, cast and size; its fields are
/// private, so what [`crate::write_plan`] receives is exactly what `plan` checked.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub(crate) name: String,
    pub(crate) source_dtype: Dtype,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<u64>,
    pub(crate) source: String,
    pub(crate) stored_as: String,
    pub(crate) input_bytes: u64,
    pub(crate) output_bytes: u64,
    pub(crate) parts: Vec<Part>,
}

impl PlannedTensor {
    /// Output name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dtype of the input data (after any input-dtype rule).
    pub fn source_dtype(&self) -> Dtype {
        self.source_dtype
    }

    /// Dtype in the store.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Shape (C order).
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Where it comes from: `path`, `path:member`, or `first .. last (N shards)`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// How it is stored there: descr or dtype name, byte order, memory order.
    pub fn stored_as(&self) -> &str {
        &self.stored_as
    }

    /// Input data bytes.
    pub fn input_bytes(&self) -> u64 {
        self.input_bytes
    }

    /// Output data bytes.
    pub fn output_bytes(&self) -> u64 {
        self.output_bytes
    }

    /// True when the data is copied unchanged (no byte swap, transpose or cast).
    pub fn is_copy(&self) -> bool {
        self.source_dtype == self.dtype && self.parts.iter().all(|p| !p.big_endian && !p.fortran)
    }

    /// True when its sizes are a file's claims until its bytes are decoded (a `.npz` member's,
    /// or a Parquet or Arrow IPC column's, whose row counts come from metadata): no disk may be
    /// reserved for them.
    pub(crate) fn has_claimed_size(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p.location, Location::Member { .. } | Location::Arrow { .. }))
    }
}

/// Every tensor of a conversion, planned from headers alone, before any data is read.
///
/// Made only by [`crate::plan()`]; its fields are private, so a plan cannot be changed between
/// `plan` and [`crate::write_plan`] (which therefore need not check it again):
///
/// ```compile_fail
/// # fn f(mut p: mmtensor_convert::Plan) {
/// p.tensors[0].dtype = mmtensor_format::Dtype::Bool; // private: does not compile
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Plan {
    tensors: Vec<PlannedTensor>,
    metadata: BTreeMap<String, String>,
}

impl Plan {
    /// A plan of checked tensors: those [`crate::plan()`] checked, or the tensors of shards a
    /// compaction rewrites, which were checked against their manifest when they were read.
    pub(crate) fn of_tensors(
        tensors: Vec<PlannedTensor>,
        metadata: BTreeMap<String, String>,
    ) -> Plan {
        Plan { tensors, metadata }
    }

    /// Tensors in output order.
    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.tensors
    }

    /// Metadata the store will hold.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Input bytes all tensors read (saturating at `u64::MAX`: the sizes come from file headers,
    /// which [`crate::convert()`] checks against the files only as it reads them).
    pub fn input_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |a, t| a.saturating_add(t.input_bytes))
    }

    /// Output data bytes (without headers and padding), saturating at `u64::MAX` as
    /// [`Plan::input_bytes`].
    pub fn output_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |a, t| a.saturating_add(t.output_bytes))
    }
}

/// The tensor `name` made of `parts` (one, or shards along axis 0), stored as its first part is,
/// from `source` (for messages and provenance), before any dtype rule: its dtype is the parts'.
///
/// # Errors
/// [`Error::Format`] (`ShapeOverflow`) when the parts' lengths along axis 0 or their byte lengths,
/// which come from file headers, add up past `u64::MAX`.
pub(crate) fn planned(name: String, parts: Vec<Part>, source: String) -> Result<PlannedTensor> {
    let dtype = parts[0].dtype;
    let mut shape = parts[0].shape.clone();
    let overflow = |shape: &[u64]| Error::Format {
        path: parts[0].location.path().to_path_buf(),
        source: mmtensor_format::Error::ShapeOverflow {
            tensor: name.clone(),
            shape: shape.to_vec(),
            dtype,
        },
    };
    if parts.len() > 1 {
        shape[0] = parts
            .iter()
            .try_fold(0u64, |a, p| a.checked_add(p.shape[0]))
            .ok_or_else(|| overflow(&shape))?;
    }
    let input_bytes = parts
        .iter()
        .try_fold(0u64, |a, p| a.checked_add(p.len))
        .ok_or_else(|| overflow(&shape))?;
    Ok(PlannedTensor {
        name,
        source_dtype: dtype,
        dtype,
        shape,
        source,
        stored_as: parts[0].stored_as(),
        input_bytes,
        output_bytes: input_bytes,
        parts,
    })
}

/// The name of tensor `key` of a many-tensor input (`only`: the input holds just this one) given
/// the input's `NAME=` prefix: `NAME.key`, or `NAME` for the only tensor; `key` without a prefix.
pub(crate) fn child_name(prefix: Option<&str>, key: &str, only: bool) -> String {
    match prefix {
        Some(p) if only => p.to_owned(),
        Some(p) => format!("{p}.{key}"),
        None => key.to_owned(),
    }
}
