//! NumPy `.npy` headers: parse (never trusting a length) and encode.
//!
//! The `.npy` format is a 6-byte magic (`\x93NUMPY`), a version (1.0, 2.0 or 3.0), a little-endian header
//! length (u16 for 1.0, u32 after), and a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }` padded with spaces to a multiple of 64
//! bytes and ended by a newline. The data follows, in the byte order and memory order the header gives.
//!
//! This module reads that literal with a small parser of its own that accepts only what NumPy writes
//! (strings, `True`/`False`, integers, tuples, lists, one dict): NumPy's own reader calls
//! `ast.literal_eval`, and no maintained Rust crate parses exactly this subset with the bounds we want
//! (depth and size caps before any allocation proportional to input).

use std::collections::HashSet;

use crate::{Dtype, Error, Result};

/// The six magic bytes that open a `.npy` file.
pub const NPY_MAGIC: [u8; 6] = *b"\x93NUMPY";
/// Largest header accepted (NumPy itself refuses more than 10,000 bytes by default).
pub const MAX_NPY_HEADER_LEN: u64 = 1 << 20;
/// Deepest nesting of the header literal accepted.
const MAX_DEPTH: usize = 8;

/// Byte order of a `.npy` array's elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ByteOrder {
    /// `<`, or `=` (native) on the little-endian machines mmtensor runs on.
    Little,
    /// `>`.
    Big,
    /// `|`: single-byte types, where order does not apply.
    NotApplicable,
}

/// A parsed `.npy` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// Format version (major, minor): (1, 0), (2, 0) or (3, 0).
    pub version: (u8, u8),
    /// The `descr` string as written, e.g. `"<f4"`.
    pub descr: String,
    /// The dtype; `None` for raw void types (`<V2`, `<V1`) and for `<f1`, which is how `ml_dtypes`
    /// bfloat16 and fp8 arrays are saved (`float8_e5m2` as `<f1`, the others as void): the caller
    /// must be told which type they hold.
    pub dtype: Option<Dtype>,
    /// Size of one element in bytes, from `descr`.
    pub item_size: usize,
    /// Byte order of the elements.
    pub byte_order: ByteOrder,
    /// True when the data is in Fortran (column-major) order.
    pub fortran_order: bool,
    /// Shape; empty for a 0-d array.
    pub shape: Vec<u64>,
    /// Absolute offset of the first data byte.
    pub data_offset: u64,
}

impl NpyHeader {
    /// Number of data bytes the header promises, with checked arithmetic.
    ///
    /// # Errors
    /// [`Error::Npy`] when the element count or byte length overflows 64 bits.
    pub fn data_len(&self) -> Result<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(self.item_size as u64))
            .ok_or_else(|| Error::Npy {
                offset: 0,
                reason: format!("shape {:?} overflows 64-bit byte arithmetic", self.shape),
            })
    }

    /// Number of elements.
    ///
    /// # Errors
    /// As [`NpyHeader::data_len`].
    pub fn numel(&self) -> Result<u64> {
        Ok(self.data_len()? / self.item_size.max(1) as u64)
    }

    /// Checks that a file of `file_len` bytes holds all the data this header promises.
    ///
    /// # Errors
    /// [`Error::Truncated`] naming the byte range that is missing.
    pub fn check_file_len(&self, file_len: u64) -> Result<()> {
        let end = self
            .data_offset
            .checked_add(self.data_len()?)
            .ok_or_else(|| Error::Npy {
                offset: 0,
                reason: "data end overflows 64 bits".into(),
            })?;
        if end > file_len {
            return Err(Error::Truncated {
                what: format!("the array data ({:?} of {})", self.shape, self.descr),
                start: self.data_offset,
                end,
                file_len,
            });
        }
        Ok(())
    }
}

/// How many bytes from the start of the file [`parse_header`] needs, read from the first 12 bytes.
///
/// # Errors
/// [`Error::NpyBadMagic`], [`Error::Truncated`], [`Error::Npy`] for an unknown version or a header
/// over [`MAX_NPY_HEADER_LEN`].
pub fn required_prefix_len(prefix: &[u8]) -> Result<usize> {
    let n = prefix.len().min(6);
    if prefix[..n] != NPY_MAGIC[..n] {
        let mut found = [0u8; 6];
        found[..n].copy_from_slice(&prefix[..n]);
        return Err(Error::NpyBadMagic { found });
    }
    let need_fixed = |len: usize| -> Result<()> {
        if prefix.len() < len {
            // Not `TooShort`, whose message is about the .mmt preamble.
            Err(Error::Truncated {
                what: "the .npy magic, version and header length".into(),
                start: 0,
                end: len as u64,
                file_len: prefix.len() as u64,
            })
        } else {
            Ok(())
        }
    };
    need_fixed(8)?;
    let (len_bytes, start) = match (prefix[6], prefix[7]) {
        (1, 0) => (2usize, 10u64),
        (2, 0) | (3, 0) => (4, 12),
        (major, minor) => {
            return Err(Error::Npy {
                offset: 6,
                reason: format!(
                    "unsupported .npy version {major}.{minor} (1.0, 2.0 and 3.0 are read)"
                ),
            })
        }
    };
    need_fixed(start as usize)?;
    let header_len = if len_bytes == 2 {
        u64::from(u16::from_le_bytes([prefix[8], prefix[9]]))
    } else {
        u64::from(u32::from_le_bytes([
            prefix[8], prefix[9], prefix[10], prefix[11],
        ]))
    };
    if header_len > MAX_NPY_HEADER_LEN {
        return Err(Error::Npy {
            offset: 8,
            reason: format!("header length {header_len} is over the {MAX_NPY_HEADER_LEN}-byte cap"),
        });
    }
    Ok((start + header_len) as usize)
}

/// Parses the header at the start of a `.npy` file; `prefix` must hold at least
/// [`required_prefix_len`] bytes.
///
/// # Errors
/// [`Error::NpyBadMagic`], [`Error::Truncated`], [`Error::Npy`] (naming the byte offset) for a malformed
/// header, [`Error::NpyDtype`] for object (pickled), structured, string, datetime and other
/// non-numeric dtypes.
pub fn parse_header(prefix: &[u8]) -> Result<NpyHeader> {
    let end = required_prefix_len(prefix)?;
    let start = if prefix[6] == 1 { 10 } else { 12 };
    let raw = prefix.get(start..end).ok_or_else(|| Error::Truncated {
        what: "the .npy header".into(),
        start: start as u64,
        end: end as u64,
        file_len: prefix.len() as u64,
    })?;
    let text = std::str::from_utf8(raw).map_err(|e| Error::Npy {
        offset: (start + e.valid_up_to()) as u64,
        reason: "header is not valid UTF-8/ASCII".into(),
    })?;
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        base: start as u64,
    };
    let dict = p.value(0)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(p.err("unexpected text after the header dict"));
    }
    let Value::Dict(entries) = dict else {
        return Err(Error::Npy {
            offset: start as u64,
            reason: "header is not a dict".into(),
        });
    };
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (k, v) in entries {
        match (k, v) {
            ("descr", Value::Str(s)) => descr = Some(s.to_owned()),
            ("descr", Value::List) => return Err(Error::NpyDtype {
                descr: "[...]".into(),
                reason:
                    "structured (record) dtypes are not supported: save each field as its own array",
            }),
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(items)) => {
                let mut dims = Vec::with_capacity(items.len().min(crate::MAX_RANK + 1));
                for item in items {
                    match item {
                        Value::Int(d) => dims.push(d),
                        _ => {
                            return Err(Error::Npy {
                                offset: start as u64,
                                reason: "shape holds something other than non-negative integers"
                                    .into(),
                            })
                        }
                    }
                }
                shape = Some(dims);
            }
            (key @ ("descr" | "fortran_order" | "shape"), _) => {
                return Err(Error::Npy {
                    offset: start as u64,
                    reason: format!("header key '{key}' has the wrong type"),
                })
            }
            _ => {
                return Err(Error::Npy {
                    offset: start as u64,
                    reason: format!("unexpected header key '{k}'"),
                })
            }
        }
    }
    let missing = |key: &str| Error::Npy {
        offset: start as u64,
        reason: format!("header has no '{key}' key"),
    };
    let descr = descr.ok_or_else(|| missing("descr"))?;
    let fortran_order = fortran.ok_or_else(|| missing("fortran_order"))?;
    let shape = shape.ok_or_else(|| missing("shape"))?;
    if shape.len() > crate::MAX_RANK {
        return Err(Error::Npy {
            offset: start as u64,
            reason: format!(
                "rank {} is over the maximum of {}",
                shape.len(),
                crate::MAX_RANK
            ),
        });
    }
    let (dtype, item_size, byte_order) = parse_descr(&descr)?;
    let header = NpyHeader {
        version: (prefix[6], prefix[7]),
        descr,
        dtype,
        item_size,
        byte_order,
        fortran_order,
        shape,
        data_offset: end as u64,
    };
    header.data_len()?;
    Ok(header)
}

/// Parses a simple NumPy `descr` string into (dtype, item size, byte order); dtype is `None` for a
/// raw void type.
///
/// # Errors
/// [`Error::NpyDtype`] for anything that is not a plain numeric or void type.
pub fn parse_descr(descr: &str) -> Result<(Option<Dtype>, usize, ByteOrder)> {
    let unsupported = |reason: &'static str| Error::NpyDtype {
        descr: descr.chars().take(64).collect(),
        reason,
    };
    let mut chars = descr.chars();
    let order = match chars.next() {
        Some('<') | Some('=') => ByteOrder::Little,
        Some('>') => ByteOrder::Big,
        Some('|') => ByteOrder::NotApplicable,
        _ => {
            return Err(unsupported(
                "expected a byte-order character (<, >, | or =) first",
            ))
        }
    };
    let rest = chars.as_str();
    let split = rest.char_indices().nth(1).map_or(rest.len(), |(i, _)| i);
    let (kind, size) = rest.split_at(split);
    match kind {
        "O" => {
            return Err(unsupported(
                "object arrays hold pickled Python objects, which mmtensor never loads: save a numeric array",
            ))
        }
        "U" | "S" | "a" => {
            return Err(unsupported("string arrays are not supported: save a numeric array"))
        }
        "M" | "m" => {
            return Err(unsupported(
                "datetime arrays are not supported: save them as int64 (arr.view('i8'))",
            ))
        }
        _ => {}
    }
    let size: usize = size
        .parse()
        .map_err(|_| unsupported("only plain numeric dtypes are supported"))?;
    let dtype = match (kind, size) {
        ("b", 1) => Some(Dtype::Bool),
        ("u", 1) => Some(Dtype::U8),
        ("u", 2) => Some(Dtype::U16),
        ("u", 4) => Some(Dtype::U32),
        ("u", 8) => Some(Dtype::U64),
        ("i", 1) => Some(Dtype::I8),
        ("i", 2) => Some(Dtype::I16),
        ("i", 4) => Some(Dtype::I32),
        ("i", 8) => Some(Dtype::I64),
        ("f", 2) => Some(Dtype::F16),
        ("f", 4) => Some(Dtype::F32),
        ("f", 8) => Some(Dtype::F64),
        ("c", 8) => Some(Dtype::C64),
        ("c", 16) => Some(Dtype::C128),
        // ml_dtypes saves most of its types as raw void data, but float8_e5m2 as `<f1` (NumPy
        // has no 1-byte float): all of them need the caller to name the dtype.
        ("V", 1) | ("V", 2) | ("f", 1) => None,
        ("f", _) | ("c", _) => {
            return Err(unsupported(
                "extended-precision floats (float128, complex256) are not supported: cast to float64 first",
            ))
        }
        ("V", _) => {
            return Err(unsupported(
                "void dtypes other than V1 and V2 (ml_dtypes fp8 and bfloat16) are not supported",
            ))
        }
        _ => return Err(unsupported("only plain numeric dtypes are supported")),
    };
    Ok((dtype, size, order))
}

/// Encodes a `.npy` header for a little-endian, C-order array: version 1.0 when the header fits in
/// 65,535 bytes, 2.0 otherwise, padded with spaces so the data starts at a multiple of 64.
///
/// `BF16` is written as `<V2` and the fp8 types as `<V1`, as NumPy saves `ml_dtypes` arrays; readers
/// reinterpret them with `arr.view(ml_dtypes.bfloat16)`.
pub fn encode_header(dtype: Dtype, shape: &[u64]) -> Vec<u8> {
    let descr = match dtype {
        Dtype::F8E4M3 | Dtype::F8E5M2 => "<V1",
        other => other.numpy_descr(),
    };
    let shape_text = match shape {
        [] => "()".to_owned(),
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    let build = |prelude: usize| {
        let unpadded = prelude + dict.len() + 1;
        let total = unpadded.div_ceil(64) * 64;
        let mut text = dict.clone().into_bytes();
        text.resize(total - prelude - 1, b' ');
        text.push(b'\n');
        text
    };
    let v1 = build(10);
    let mut out = NPY_MAGIC.to_vec();
    if v1.len() <= u16::MAX as usize {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(v1.len() as u16).to_le_bytes());
        out.extend_from_slice(&v1);
    } else {
        let v2 = build(12);
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(v2.len() as u32).to_le_bytes());
        out.extend_from_slice(&v2);
    }
    out
}

enum Value<'a> {
    /// A string, borrowed from the header (escapes are refused, so it is the bytes as written).
    Str(&'a str),
    Int(u64),
    Bool(bool),
    Tuple(Vec<Value<'a>>),
    /// A list; its items are parsed but not kept (NumPy writes lists only for structured dtypes).
    List,
    Dict(Vec<(&'a str, Value<'a>)>),
    None,
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    base: u64,
}

impl<'a> Parser<'a> {
    fn err(&self, reason: &str) -> Error {
        Error::Npy {
            offset: self.base + self.i as u64,
            reason: reason.to_owned(),
        }
    }

    fn skip_ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected '{}'", c as char)))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>> {
        if depth > MAX_DEPTH {
            return Err(self.err("header literal is nested too deeply"));
        }
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                let mut entries = Vec::new();
                // The keys seen so far, hashed: a duplicate check that scanned `entries` made a
                // 1 MiB header of distinct keys take seconds (issue 10, defect 6). With the set,
                // each key costs time in proportion to its own length, so the parse is linear.
                let mut keys: HashSet<&str> = HashSet::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(Value::Dict(entries));
                    }
                    let key_at = self.i;
                    let Value::Str(key) = self.value(depth + 1)? else {
                        return Err(self.err("dict keys must be strings"));
                    };
                    if !keys.insert(key) {
                        // Report where the second copy starts.
                        self.i = key_at;
                        self.skip_ws();
                        return Err(self.err(&format!("key '{key}' appears twice")));
                    }
                    self.expect(b':')?;
                    let v = self.value(depth + 1)?;
                    entries.push((key, v));
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {}
                        _ => return Err(self.err("expected ',' or '}' in the header dict")),
                    }
                }
            }
            Some(open @ (b'(' | b'[')) => {
                self.i += 1;
                let close = if open == b'(' { b')' } else { b']' };
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.i += 1;
                        return Ok(if open == b'(' {
                            Value::Tuple(items)
                        } else {
                            Value::List
                        });
                    }
                    if items.len() > crate::MAX_RANK * 4 {
                        return Err(self.err("sequence in the header is too long"));
                    }
                    items.push(self.value(depth + 1)?);
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(c) if c == close => {}
                        _ => return Err(self.err("expected ',' or a closing bracket")),
                    }
                }
            }
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != q {
                    if self.s[self.i] == b'\\' {
                        return Err(self.err("escapes in header strings are not supported"));
                    }
                    self.i += 1;
                }
                if self.i >= self.s.len() {
                    return Err(self.err("unterminated string"));
                }
                let s: &'a [u8] = self.s;
                let Ok(text) = std::str::from_utf8(&s[start..self.i]) else {
                    // Unreachable: the header was checked to be UTF-8 and quotes are ASCII.
                    return Err(self.err("header string is not valid UTF-8"));
                };
                self.i += 1;
                Ok(Value::Str(text))
            }
            Some(b'0'..=b'9') => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                let digits = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII digits");
                let n = digits
                    .parse::<u64>()
                    .map_err(|_| self.err("integer in the header does not fit in 64 bits"))?;
                // Python 2 wrote long integers with an L suffix.
                if self.s.get(self.i) == Some(&b'L') {
                    self.i += 1;
                }
                Ok(Value::Int(n))
            }
            Some(b'-') => Err(self.err("negative numbers are not valid here")),
            Some(_) => {
                for (word, v) in [("True", Some(true)), ("False", Some(false)), ("None", None)] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(v.map_or(Value::None, Value::Bool));
                    }
                }
                Err(self.err("unexpected character in the header literal"))
            }
            None => Err(self.err("header literal ends early")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(dict: &str) -> Vec<u8> {
        let mut v = NPY_MAGIC.to_vec();
        v.extend_from_slice(&[1, 0]);
        v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        v.extend_from_slice(dict.as_bytes());
        v
    }

    #[test]
    fn parses_what_numpy_writes() {
        let h = parse_header(&npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }            \n",
        ))
        .unwrap();
        assert_eq!(h.dtype, Some(Dtype::F32));
        assert_eq!(h.shape, [2, 3]);
        assert!(!h.fortran_order);
        assert_eq!(h.data_len().unwrap(), 24);
        let h = parse_header(&npy(
            "{'descr': '>i8', 'fortran_order': True, 'shape': (5,), }\n",
        ))
        .unwrap();
        assert_eq!(
            (h.dtype, h.byte_order, h.fortran_order),
            (Some(Dtype::I64), ByteOrder::Big, true)
        );
        let h = parse_header(&npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (), }\n",
        ))
        .unwrap();
        assert!(h.shape.is_empty());
        let h = parse_header(&npy(
            "{'descr': '<V2', 'fortran_order': False, 'shape': (0, 4), }\n",
        ))
        .unwrap();
        assert_eq!((h.dtype, h.item_size, h.data_len().unwrap()), (None, 2, 0));
    }

    #[test]
    fn regression_ml_dtypes_float8_e5m2_descr_f1_is_a_dtype_to_name() {
        // ml_dtypes saves float8_e5m2 arrays as `<f1`; it was refused as an "extended-precision float".
        let h = parse_header(&npy(
            "{'descr': '<f1', 'fortran_order': False, 'shape': (3,), }\n",
        ))
        .unwrap();
        assert_eq!((h.dtype, h.item_size, h.data_len().unwrap()), (None, 1, 3));
    }

    #[test]
    fn encode_parses_back_and_is_64_aligned() {
        for (d, shape) in [
            (Dtype::F32, vec![2u64, 3]),
            (Dtype::Bool, vec![]),
            (Dtype::C128, vec![7]),
        ] {
            let bytes = encode_header(d, &shape);
            assert_eq!(bytes.len() % 64, 0);
            let h = parse_header(&bytes).unwrap();
            assert_eq!(
                (h.dtype, h.shape, h.data_offset),
                (Some(d), shape, bytes.len() as u64)
            );
        }
        let bf = parse_header(&encode_header(Dtype::BF16, &[4])).unwrap();
        assert_eq!((bf.dtype, bf.item_size), (None, 2));
    }

    #[test]
    fn refuses_what_it_must() {
        let cases = [
            (
                "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }",
                "object",
            ),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }",
                "structured",
            ),
            (
                "{'descr': '<U3', 'fortran_order': False, 'shape': (2,), }",
                "string",
            ),
            (
                "{'descr': '<M8[ns]', 'fortran_order': False, 'shape': (2,), }",
                "datetime",
            ),
            (
                "{'descr': '<f16', 'fortran_order': False, 'shape': (2,), }",
                "extended",
            ),
        ];
        for (dict, word) in cases {
            let err = parse_header(&npy(dict)).unwrap_err();
            assert!(matches!(err, Error::NpyDtype { .. }), "{err}");
            assert!(err.to_string().contains(word), "{err}");
        }
        for bad in [
            "{'descr': '<f4', 'shape': (2,), }",
            "{'descr': '<f4', 'fortran_order': 1, 'shape': (2,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
            "{'descr': '<f4'",
            "((((((((((((1))))))))))))",
            "",
        ] {
            assert!(parse_header(&npy(bad)).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_header(b"PK\x03\x04"),
            Err(Error::NpyBadMagic { .. })
        ));
        assert!(matches!(
            parse_header(b"\x93NUM"),
            Err(Error::Truncated { .. })
        ));
        let mut v = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }");
        v.truncate(20);
        assert!(parse_header(&v).is_err());
    }

    /// A version-2.0 file (4-byte header length) holding `dict` as its header.
    fn npy2(dict: &str) -> Vec<u8> {
        let mut v = NPY_MAGIC.to_vec();
        v.extend_from_slice(&[2, 0]);
        v.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        v.extend_from_slice(dict.as_bytes());
        v
    }

    /// A header of nearly 1 MiB: the three keys NumPy writes, then `'k0': 0, 'k1': 0, ...`
    /// (about 80,000 distinct keys), then `last`.
    fn many_keys(last: &str) -> String {
        let mut dict = String::from("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ");
        let mut i = 0;
        while dict.len() < MAX_NPY_HEADER_LEN as usize - 64 {
            dict.push_str(&format!("'k{i}': 0, "));
            i += 1;
        }
        dict.push_str(last);
        dict.push('}');
        assert!(dict.len() as u64 <= MAX_NPY_HEADER_LEN);
        dict
    }

    /// Issue 10, defect 6: the duplicate-key check scanned every earlier key, so a 1 MiB header of
    /// distinct keys took about 12 s. Keys are now checked against a hash set (linear); these
    /// headers must reach the error that belongs to them, the duplicate at the very end or the
    /// first key NumPy never writes.
    #[test]
    fn npy_header_with_many_keys_is_parsed_in_linear_time() {
        let err = parse_header(&npy2(&many_keys("'descr': '<f4'"))).unwrap_err();
        assert!(
            matches!(&err, Error::Npy { reason, .. } if reason == "key 'descr' appears twice"),
            "{err}"
        );
        let err = parse_header(&npy2(&many_keys(""))).unwrap_err();
        assert!(
            matches!(&err, Error::Npy { reason, .. } if reason == "unexpected header key 'k0'"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_key_error_points_at_the_second_copy() {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'descr': '<f4', 'shape': (2,)}";
        let err = parse_header(&npy(dict)).unwrap_err();
        let at = 10 + dict.rfind("'descr'").unwrap() as u64;
        assert_eq!(
            err,
            Error::Npy {
                offset: at,
                reason: "key 'descr' appears twice".into()
            }
        );
    }

    #[test]
    fn file_length_is_checked() {
        let bytes = encode_header(Dtype::F32, &[10]);
        let h = parse_header(&bytes).unwrap();
        assert!(h.check_file_len(bytes.len() as u64 + 40).is_ok());
        assert!(matches!(
            h.check_file_len(bytes.len() as u64 + 39),
            Err(Error::Truncated { .. })
        ));
    }
}
