//! Deterministic sample stores: the golden fixtures, and data for demos and benchmarks.
//!
//! Every value is a pure function of the tensor's position and the element index, so a test can
//! rebuild the exact bytes a fixture was written from without reading the fixture.

use std::path::Path;

use half::{bf16, f16};
use mmtensor_format::{offsets_name, ColumnSpec, Dtype, LayoutBuilder};

use crate::{ColumnBatch, ConvertOptions, DatasetWriter, Error, Result, StoreWriter};

/// One tensor of a sample store: its name, dtype, shape and little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleTensor {
    /// Name.
    pub name: String,
    /// Dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    /// The bytes, little-endian, C order.
    pub bytes: Vec<u8>,
    /// For the values of a ragged tensor (format 1.1): the name of its row offsets, the next
    /// tensor of the store. `None` for every other tensor. See [`SampleTensor::ragged`].
    pub offsets: Option<String>,
}

/// A whole sample store: tensors, alignment, block size and metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleStore {
    /// Alignment.
    pub alignment: u64,
    /// Checksum block size.
    pub block_size: u64,
    /// Metadata entries.
    pub metadata: Vec<(String, String)>,
    /// Tensors in file order.
    pub tensors: Vec<SampleTensor>,
}

/// The bytes of `numel` elements of `dtype`, element `i` derived from `i` and `seed`.
///
/// Floats are small multiples of 1/4 (exact in every float type), integers wrap, booleans
/// follow `(i + seed) % 3 == 0`, and fp8 values are raw bytes.
pub fn pattern_bytes(dtype: Dtype, numel: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(numel * dtype.size());
    for i in 0..numel as u64 {
        let k = i.wrapping_add(seed.wrapping_mul(7));
        // A value in -16.0..16.0 in steps of 1/4, exactly representable down to bf16 and fp8 e5m2.
        let x = ((k % 128) as f64 - 64.0) * 0.25;
        match dtype {
            Dtype::Bool => out.push(u8::from(k % 3 == 0)),
            Dtype::U8 | Dtype::F8E4M3 | Dtype::F8E5M2 => out.push(k as u8),
            Dtype::I8 => out.push((k as i8).wrapping_sub(64) as u8),
            Dtype::U16 => out.extend((k.wrapping_mul(257) as u16).to_le_bytes()),
            Dtype::I16 => out.extend((k.wrapping_mul(257) as i16).to_le_bytes()),
            Dtype::U32 => out.extend((k.wrapping_mul(65_537) as u32).to_le_bytes()),
            Dtype::I32 => out.extend((k.wrapping_mul(65_537) as i32).wrapping_neg().to_le_bytes()),
            Dtype::U64 => out.extend(k.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes()),
            Dtype::I64 => {
                out.extend((k.wrapping_mul(0x9e37_79b9) as i64 - (1 << 40)).to_le_bytes())
            }
            Dtype::F16 => out.extend(f16::from_f64(x).to_le_bytes()),
            Dtype::BF16 => out.extend(bf16::from_f64(x).to_le_bytes()),
            Dtype::F32 => out.extend((x as f32).to_le_bytes()),
            Dtype::F64 => out.extend(x.to_le_bytes()),
            Dtype::C64 => {
                out.extend((x as f32).to_le_bytes());
                out.extend((-x as f32).to_le_bytes());
            }
            Dtype::C128 => {
                out.extend(x.to_le_bytes());
                out.extend((x * 2.0).to_le_bytes());
            }
            _ => out.extend(std::iter::repeat_n(0u8, dtype.size())),
        }
    }
    out
}

impl SampleTensor {
    /// A tensor of `dtype` and `shape` filled by [`pattern_bytes`] with `seed`.
    pub fn pattern(name: &str, dtype: Dtype, shape: &[u64], seed: u64) -> SampleTensor {
        let numel = shape.iter().product::<u64>() as usize;
        SampleTensor {
            name: name.to_owned(),
            dtype,
            shape: shape.to_vec(),
            bytes: pattern_bytes(dtype, numel, seed),
            offsets: None,
        }
    }

    /// A ragged tensor (format 1.1) called `name`: `lengths.len()` rows, row `i` holding
    /// `lengths[i]` items of shape `item_shape`. Returns its two tensors, in file order: the
    /// values (`[sum of lengths] + item_shape`, filled by [`pattern_bytes`] with `seed` over all
    /// the rows' items back to back) and the row offsets `NAME.offsets` (`U64`, the running sums
    /// of `lengths` from 0).
    pub fn ragged(
        name: &str,
        dtype: Dtype,
        item_shape: &[u64],
        lengths: &[u64],
        seed: u64,
    ) -> [SampleTensor; 2] {
        let mut shape = vec![lengths.iter().sum::<u64>()];
        shape.extend_from_slice(item_shape);
        let mut values = SampleTensor::pattern(name, dtype, &shape, seed);
        let offsets = offsets_name(name);
        values.offsets = Some(offsets.clone());
        let mut at = 0u64;
        let mut bytes = at.to_le_bytes().to_vec();
        for l in lengths {
            at += l;
            bytes.extend_from_slice(&at.to_le_bytes());
        }
        let offsets = SampleTensor {
            name: offsets,
            dtype: Dtype::U64,
            shape: vec![lengths.len() as u64 + 1],
            bytes,
            offsets: None,
        };
        [values, offsets]
    }
}

impl SampleStore {
    /// Writes this store to `path` with [`StoreWriter`].
    ///
    /// # Errors
    /// As [`StoreWriter`]; a plan the format refuses is [`Error::Format`].
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut plan = LayoutBuilder::new();
        let fmt = |source| Error::Format {
            path: path.to_path_buf(),
            source,
        };
        plan.alignment(self.alignment).map_err(fmt)?;
        plan.block_size(self.block_size).map_err(fmt)?;
        for (k, v) in &self.metadata {
            plan.metadata(k, v).map_err(fmt)?;
        }
        let mut tensors = self.tensors.iter().peekable();
        while let Some(t) = tensors.next() {
            let Some(offsets) = &t.offsets else {
                plan.tensor(&t.name, t.dtype, &t.shape).map_err(fmt)?;
                continue;
            };
            // A ragged tensor: its values, then its offsets, the next sample tensor, planned
            // together by the builder (which names the offsets `NAME.offsets`).
            let rows = tensors
                .next_if(|o| {
                    o.name == *offsets && *offsets == offsets_name(&t.name) && o.shape.len() == 1
                })
                .and_then(|o| o.shape[0].checked_sub(1))
                .ok_or_else(|| {
                    fmt(mmtensor_format::Error::Ragged {
                        tensor: t.name.clone(),
                        reason: format!(
                            "its offsets `{offsets}` must be the next sample tensor, named `{}`, of shape [rows + 1]",
                            offsets_name(&t.name)
                        ),
                    })
                })?;
            plan.ragged(&t.name, t.dtype, &t.shape, rows).map_err(fmt)?;
        }
        let mut w = StoreWriter::create(path, plan.build().map_err(fmt)?)?;
        for t in &self.tensors {
            w.write_tensor(&t.name, &t.bytes)?;
        }
        w.finish()?;
        Ok(())
    }
}

/// The golden fixtures, by file name. `fixtures/README.md` describes each one.
pub fn golden_stores() -> Vec<(&'static str, SampleStore)> {
    let mut every_dtype: Vec<SampleTensor> = Dtype::ALL
        .iter()
        .enumerate()
        .map(|(i, &d)| SampleTensor::pattern(d.numpy_name(), d, &[3, 5], i as u64))
        .collect();
    every_dtype.push(SampleTensor::pattern("empty", Dtype::F32, &[0, 4], 0));
    every_dtype.push(SampleTensor::pattern("scalar", Dtype::F64, &[], 3));
    // 3000 f32 = 12000 bytes: three 4096-byte checksum blocks, the last one short.
    every_dtype.push(SampleTensor::pattern(
        "multiblock",
        Dtype::F32,
        &[1000, 3],
        5,
    ));
    vec![
        (
            "dtypes-a64.mmt",
            SampleStore {
                alignment: 64,
                block_size: 4096,
                metadata: vec![
                    ("created_by".into(), "mmtensor fixtures".into()),
                    (
                        "note".into(),
                        "every dtype, a zero-size tensor, a scalar".into(),
                    ),
                ],
                tensors: every_dtype,
            },
        ),
        (
            "page-a4096.mmt",
            SampleStore {
                alignment: 4096,
                block_size: 4096,
                metadata: vec![],
                tensors: vec![
                    SampleTensor::pattern("x", Dtype::F32, &[256, 8], 1),
                    SampleTensor::pattern("labels", Dtype::I64, &[256], 2),
                    SampleTensor::pattern("mask", Dtype::Bool, &[256], 3),
                    SampleTensor::pattern("w", Dtype::BF16, &[8, 8], 4),
                    SampleTensor::pattern("none", Dtype::U8, &[0], 5),
                ],
            },
        ),
        (
            "empty.mmt",
            SampleStore {
                alignment: 64,
                block_size: 1 << 20,
                metadata: vec![],
                tensors: vec![],
            },
        ),
        (
            "ragged-a64.mmt",
            SampleStore {
                alignment: 64,
                block_size: 4096,
                metadata: vec![("note".into(), "ragged tensors (format 1.1)".into())],
                tensors: [
                    vec![SampleTensor::pattern("label", Dtype::I64, &[4], 1)],
                    SampleTensor::ragged("tokens", Dtype::U16, &[], &[3, 0, 5, 1], 2).to_vec(),
                    SampleTensor::ragged("frames", Dtype::F32, &[2], &[2, 4, 1, 0], 3).to_vec(),
                    SampleTensor::ragged("nothing", Dtype::U8, &[], &[], 4).to_vec(),
                ]
                .concat(),
            },
        ),
    ]
}

/// Rows of the golden ragged dataset, `fixtures/golden/ragged-dataset/`.
pub const GOLDEN_RAGGED_ROWS: u64 = 12;

/// Its shard size in data bytes: a shard holds at most 4 rows (`id` and two offsets, 24 bytes a
/// row), 48 tokens and 12 boxes.
pub const GOLDEN_RAGGED_SHARD_SIZE: u64 = 96;

/// Writes the golden ragged dataset (`fixtures/golden/ragged-dataset/`) into the new folder
/// `dir` with [`DatasetWriter::write_batch`]: alignment 64, block size 4096, no provenance, in
/// shards of [`GOLDEN_RAGGED_SHARD_SIZE`] bytes, [`GOLDEN_RAGGED_ROWS`] rows given in two
/// batches (rows 0..5, then the rest). Row `r`: `id` (I64) is `r`; `tokens` (ragged U16) holds
/// `3 × (7r mod 13)` tokens, token `k` being `1000 r + k`; `boxes` (ragged F32, items of shape
/// `[2]`) holds `r mod 7` boxes, box `k` being `[r, k + 0.5]`.
///
/// # Errors
/// As [`DatasetWriter`].
pub fn write_golden_ragged_dataset(dir: &Path) -> Result<()> {
    let columns = vec![
        ColumnSpec::new("id", Dtype::I64, vec![]),
        ColumnSpec::ragged("tokens", Dtype::U16, vec![]),
        ColumnSpec::ragged("boxes", Dtype::F32, vec![2]),
    ]
    .into_iter()
    .collect::<std::result::Result<Vec<_>, _>>()
    .map_err(|source| Error::Format {
        path: dir.to_path_buf(),
        source,
    })?;
    let options = ConvertOptions {
        alignment: 64,
        block_size: 4096,
        record_sources: false,
        ..ConvertOptions::default()
    };
    let mut w = DatasetWriter::create(dir, columns, GOLDEN_RAGGED_SHARD_SIZE, &options)?;
    for rows in [0..5, 5..GOLDEN_RAGGED_ROWS] {
        let (mut id, mut tokens, mut boxes) = (vec![], vec![], vec![]);
        let (mut token_lengths, mut box_lengths) = (vec![], vec![]);
        for r in rows.clone() {
            id.extend_from_slice(&(r as i64).to_le_bytes());
            token_lengths.push(3 * (r * 7 % 13));
            for k in 0..3 * (r * 7 % 13) {
                tokens.extend_from_slice(&((1000 * r + k) as u16).to_le_bytes());
            }
            box_lengths.push(r % 7);
            for k in 0..r % 7 {
                boxes.extend_from_slice(&(r as f32).to_le_bytes());
                boxes.extend_from_slice(&(k as f32 + 0.5).to_le_bytes());
            }
        }
        w.write_batch(
            rows.end - rows.start,
            &[
                ColumnBatch::Fixed(&id),
                ColumnBatch::Ragged {
                    values: &tokens,
                    lengths: &token_lengths,
                },
                ColumnBatch::Ragged {
                    values: &boxes,
                    lengths: &box_lengths,
                },
            ],
        )?;
    }
    w.finish()?;
    Ok(())
}
