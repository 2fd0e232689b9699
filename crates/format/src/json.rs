//! The header's JSON: the compact encoding a writer stores, and the parse that builds each
//! tensor's entry as the array is read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    Alignment, BlockSize, ChecksumTable, Dtype, Error, Header, Result, TensorInfo, PREAMBLE_LEN,
};

// Serialization borrows from the `Header`: encoding copies no name, shape or metadata entry.
#[derive(Serialize)]
struct HeaderOut<'a> {
    alignment: u64,
    block_size: u64,
    checksums: TableOut,
    metadata: &'a BTreeMap<String, String>,
    tensors: TensorsOut<'a>,
}

#[derive(Serialize)]
struct TableOut {
    offset: u64,
    length: u64,
    xxh3: String,
}

struct TensorsOut<'a>(&'a [TensorInfo]);

impl Serialize for TensorsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|t| TensorOut {
            name: &t.name,
            dtype: t.dtype.name(),
            shape: &t.shape,
            offset: t.offset,
            length: t.length,
            offsets: t.offsets.as_deref(),
        }))
    }
}

#[derive(Serialize)]
struct TensorOut<'a> {
    name: &'a str,
    dtype: &'a str,
    shape: &'a [u64],
    offset: u64,
    length: u64,
    // Absent unless ragged: a 1.0 store encodes to the same bytes as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    offsets: Option<&'a str>,
}

// Deserialization builds the final `TensorInfo`s as the JSON array is read: no intermediate vector
// of raw entries, and a dtype name becomes a `Dtype` without being copied.
#[derive(Deserialize)]
struct HeaderIn {
    alignment: u64,
    block_size: u64,
    checksums: TableIn,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    tensors: TensorsIn,
}

#[derive(Deserialize)]
struct TableIn {
    offset: u64,
    length: u64,
    xxh3: String,
}

struct TensorsIn {
    list: Vec<TensorInfo>,
    /// The first tensor whose dtype is unknown, and that dtype (reported after the JSON parses, so
    /// that a syntax error anywhere comes first, as it always did).
    unknown: Option<(String, String)>,
}

impl<'de> Deserialize<'de> for TensorsIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Seq;
        impl<'de> serde::de::Visitor<'de> for Seq {
            type Value = TensorsIn;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of tensor entries")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<TensorsIn, A::Error> {
                // The size hint comes from the input: capped, so a lie cannot allocate.
                let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 12));
                let mut unknown = None;
                while let Some(t) = seq.next_element::<TensorIn>()? {
                    let dtype = match t.dtype {
                        DtypeIn::Known(d) => d,
                        DtypeIn::Unknown(name) => {
                            if unknown.is_none() {
                                unknown = Some((t.name.clone(), name));
                            }
                            Dtype::U8
                        }
                    };
                    list.push(TensorInfo {
                        name: t.name,
                        dtype,
                        shape: t.shape,
                        offset: t.offset,
                        length: t.length,
                        first_block: 0,
                        offsets: t.offsets,
                    });
                }
                list.shrink_to_fit();
                Ok(TensorsIn { list, unknown })
            }
        }
        d.deserialize_seq(Seq)
    }
}

#[derive(Deserialize)]
struct TensorIn {
    name: String,
    dtype: DtypeIn,
    shape: Vec<u64>,
    offset: u64,
    length: u64,
    #[serde(default)]
    offsets: Option<String>,
}

enum DtypeIn {
    Known(Dtype),
    /// An unknown name, cut to 64 characters.
    Unknown(String),
}

impl<'de> Deserialize<'de> for DtypeIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = DtypeIn;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a dtype name")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<DtypeIn, E> {
                Ok(Dtype::from_name(v).map_or_else(
                    || DtypeIn::Unknown(v.chars().take(64).collect()),
                    DtypeIn::Known,
                ))
            }
        }
        d.deserialize_str(Name)
    }
}

impl Header {
    /// The compact JSON encoding of this header, exactly as the writer stores it.
    ///
    /// Field order is fixed and metadata is sorted by key, so equal headers encode to equal bytes.
    /// The checksum table's hash is always 16 hex digits, so the length does not depend on it.
    pub fn to_json(&self) -> Vec<u8> {
        let out = HeaderOut {
            alignment: self.alignment.get(),
            block_size: self.block_size.get(),
            checksums: TableOut {
                offset: self.checksums.offset,
                length: self.checksums.length,
                xxh3: format!("{:016x}", self.checksums.checksum),
            },
            metadata: &self.metadata,
            tensors: TensorsOut(&self.tensors),
        };
        // Cannot fail: every map key is a string and no value has a custom serializer that errs.
        serde_json::to_vec(&out).expect("a header always serializes")
    }

    /// Parses header JSON (without validating the layout;
    /// [`FileLayout::parse`](crate::FileLayout::parse) does both).
    ///
    /// Unknown fields are ignored, so that minor versions can add them.
    ///
    /// # Errors
    /// [`Error::HeaderJson`] for malformed JSON or a missing field, [`Error::UnknownDtype`],
    /// [`Error::InvalidField`] for an alignment or block size out of range or a malformed table
    /// hash.
    pub fn from_json(json: &[u8]) -> Result<Header> {
        let raw: HeaderIn = serde_json::from_slice(json).map_err(|e| Error::HeaderJson {
            // Compact JSON is one line, so the column is the byte position within the header.
            offset: PREAMBLE_LEN + (e.column() as u64).saturating_sub(1),
            message: e.to_string(),
        })?;
        let alignment = Alignment::new(raw.alignment)?;
        let block_size = BlockSize::new(raw.block_size)?;
        let checksum = parse_hex16(&raw.checksums.xxh3).ok_or_else(|| Error::InvalidField {
            field: "checksums.xxh3",
            value: format!("{:?}", raw.checksums.xxh3),
            reason: "must be 16 lowercase hex digits",
        })?;
        if let Some((tensor, name)) = raw.tensors.unknown {
            return Err(Error::UnknownDtype {
                tensor: Some(tensor),
                name,
            });
        }
        let mut tensors = raw.tensors.list;
        let mut first_block = 0u64;
        for t in &mut tensors {
            t.first_block = first_block;
            // Saturating here; validation rejects lengths that could matter.
            first_block = first_block.saturating_add(t.block_count(block_size));
        }
        Ok(Header {
            alignment,
            block_size,
            checksums: ChecksumTable {
                offset: raw.checksums.offset,
                length: raw.checksums.length,
                checksum,
            },
            metadata: raw.metadata,
            tensors,
        })
    }
}

fn parse_hex16(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}
