//! The options of a conversion ([`ConvertOptions`]): dtype rules, the layout a store gets, the
//! chunk sizes tensors stream in.

use std::collections::BTreeMap;

use mmtensor_format::{LayoutBuilder, DEFAULT_ALIGNMENT, DEFAULT_BLOCK_SIZE};

use crate::DtypeRules;

/// Default size of the chunks tensors are streamed in when they are transformed (cast, swapped,
/// transposed): large enough for the parallel kernels, a bounded buffer.
pub const DEFAULT_CHUNK_SIZE: usize = 8 << 20;

/// Largest chunk for tensors copied unchanged. Measured on Linux 6.18 / ext4 with a 2 GiB `.npy`
/// (`MMT_CHUNK=N target/release/examples/convert OUT x=IN.npy`, alternated, twice): 1 MiB chunks
/// took 1.8 s, 512 KiB 2.2 s, 2 MiB 3.0 s and 8 MiB 5.1 s (a noisy VM: read as "about 2x"), almost
/// all of the difference in kernel time of `read` and `write`; a buffer that fits in the cache
/// keeps both copies cheap, as `cp`'s 128 KiB buffer does. Casts keep [`DEFAULT_CHUNK_SIZE`] (8 MiB
/// was faster there: 1.0 s against 1.4 s).
pub(crate) const COPY_CHUNK_SIZE: usize = 1 << 20;

/// Options of a conversion. Build with `ConvertOptions::default()` and set fields.
///
/// ```
/// use mmtensor_convert::ConvertOptions;
///
/// let mut o = ConvertOptions::default();
/// o.dtype.add("bf16")?;          // every float tensor to bfloat16
/// o.input_dtype.add("emb=bf16")?; // `emb` was saved through ml_dtypes as raw `<V2`
/// o.alignment = 64;
/// o.metadata.insert("dataset".into(), "demo".into());
/// # Ok::<(), mmtensor_convert::Error>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConvertOptions {
    /// Output dtypes (see [`DtypeRules`]).
    pub dtype: DtypeRules,
    /// Dtypes of raw void (`ml_dtypes`) inputs, or reinterpretations (see [`DtypeRules`]).
    pub input_dtype: DtypeRules,
    /// Alignment of every tensor: a power of two from 64 to 2^30 (default 4096).
    pub alignment: u64,
    /// Checksum block size (default 1 MiB).
    pub block_size: u64,
    /// Extra metadata entries; keys starting `mmt.` are reserved and refused.
    pub metadata: BTreeMap<String, String>,
    /// Record provenance (default true): `source.converter` and `source.inputs`, one JSON entry
    /// per input that names only the tensors it transformed (see the crate docs); in a dataset's
    /// shards also `source.shard_size`, the shard size they were cut at, which a later
    /// [`crate::append`] or [`crate::compact`] takes as the dataset's own.
    pub record_sources: bool,
    /// Store every nonzero byte of a BOOL tensor as 1 (default false: a byte other than 0 and 1 is
    /// refused with [`Error::InvalidBool`](crate::Error::InvalidBool), since NumPy and torch would
    /// hand it on as a bool that their kernels assume is 0 or 1). CLI: `--normalize-bools`.
    pub normalize_bools: bool,
    /// Bytes per streamed chunk of a transformed tensor (default 8 MiB); tensors copied unchanged
    /// use at most 1 MiB, which is faster for plain copies. Memory use is a small multiple of it.
    pub chunk_size: usize,
    /// The tensors (by output name) to keep, in the inputs' order; empty keeps every one. A name no
    /// input gives is [`Error::UnknownTensor`](crate::Error::UnknownTensor). CLI: `--columns x,y`.
    pub columns: Vec<String>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            dtype: DtypeRules::default(),
            input_dtype: DtypeRules::default(),
            alignment: DEFAULT_ALIGNMENT,
            block_size: DEFAULT_BLOCK_SIZE,
            metadata: BTreeMap::new(),
            record_sources: true,
            normalize_bools: false,
            chunk_size: DEFAULT_CHUNK_SIZE,
            columns: Vec::new(),
        }
    }
}

impl ConvertOptions {
    /// The layout of a store written with these options: their alignment and block size, and the
    /// entries of `metadata`; the writer adds the tensors.
    ///
    /// # Errors
    /// The format's: an alignment or a block size it refuses, a reserved metadata key.
    pub(crate) fn layout<'a>(
        &self,
        metadata: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> mmtensor_format::Result<LayoutBuilder> {
        let mut builder = LayoutBuilder::new();
        builder.alignment(self.alignment)?;
        builder.block_size(self.block_size)?;
        for (k, v) in metadata {
            builder.metadata(k, v)?;
        }
        Ok(builder)
    }
}
