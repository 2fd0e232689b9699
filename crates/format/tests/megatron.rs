//! Megatron-LM `.idx` files: a known answer written by Megatron's own writer logic, round trips,
//! one test per refusal (each checking that the message names what is wrong), and property tests.

use mmtensor_format::megatron::{
    self, document_indices_from, encode, MegatronHeader, MegatronIndex, MEGATRON_HEADER_LEN,
};
use mmtensor_format::{Dtype, Error};
use proptest::prelude::*;

/// `fixtures/megatron/megatron-u16.idx` and `.bin` were written by a throwaway script that copies the
/// writing logic of Megatron-LM's `megatron/core/datasets/indexed_dataset.py`
/// (`IndexedDatasetBuilder(dtype=numpy.uint16)`, one `add_document(doc, [len(doc)])` per document
/// as `tools/preprocess_data.py` calls it, then `finalize`, i.e. `_IndexWriter.write` with
/// `struct.pack` and `numpy.array(..).tobytes()`), run with NumPy 2.4.6, for the three documents
/// `[10, 11, 12]`, `[65535]` and `[0, 1, 2, 3]`.
const MEGATRON_IDX: &[u8] = include_bytes!("../../../fixtures/megatron/megatron-u16.idx");
const MEGATRON_BIN: &[u8] = include_bytes!("../../../fixtures/megatron/megatron-u16.bin");

/// The same index, written out by hand from the documented layout.
fn by_hand() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(b"MMIDIDX\x00\x00"); // magic
    v.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // version 1, u64
    v.push(8); // dtype code: uint16
    v.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]); // 3 sequences, u64
    v.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0]); // 4 document indices, u64
    v.extend_from_slice(&[3, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0]); // sizes 3, 1, 4: int32
    for pointer in [0u8, 6, 8] {
        v.extend_from_slice(&[pointer, 0, 0, 0, 0, 0, 0, 0]); // pointers 0, 6, 8 bytes: int64
    }
    for doc in [0u8, 1, 2, 3] {
        v.extend_from_slice(&[doc, 0, 0, 0, 0, 0, 0, 0]); // document indices: int64
    }
    v
}

/// An `.idx` built field by field with no validation, for the tests to break.
fn raw(code: u8, sizes: &[i32], pointers: &[i64], docs: &[i64]) -> Vec<u8> {
    let mut v = megatron::MEGATRON_MAGIC.to_vec();
    v.extend_from_slice(&1u64.to_le_bytes());
    v.push(code);
    v.extend_from_slice(&(sizes.len() as u64).to_le_bytes());
    v.extend_from_slice(&(docs.len() as u64).to_le_bytes());
    sizes
        .iter()
        .for_each(|s| v.extend_from_slice(&s.to_le_bytes()));
    pointers
        .iter()
        .for_each(|p| v.extend_from_slice(&p.to_le_bytes()));
    docs.iter()
        .for_each(|d| v.extend_from_slice(&d.to_le_bytes()));
    v
}

/// A valid u16 index of sizes 3, 1, 4 (16 bytes of `.bin`), one document per sequence.
fn good() -> Vec<u8> {
    raw(8, &[3, 1, 4], &[0, 6, 8], &[0, 1, 2, 3])
}

fn refuse(idx: &[u8], bin_len: u64) -> (Error, String) {
    let e = MegatronIndex::parse(idx, bin_len).unwrap_err();
    let msg = e.to_string();
    (e, msg)
}

#[test]
fn known_answer_matches_megatron_writer_and_hand_layout() {
    assert_eq!(MEGATRON_IDX.len(), 102);
    assert_eq!(MEGATRON_IDX, &by_hand()[..]);
    assert_eq!(
        encode(Dtype::U16, &[3, 1, 4], &[0, 1, 2, 3]).unwrap(),
        MEGATRON_IDX
    );

    let index = MegatronIndex::parse(MEGATRON_IDX, MEGATRON_BIN.len() as u64).unwrap();
    assert_eq!(index.dtype(), Dtype::U16);
    assert_eq!(index.sequence_count(), 3);
    assert_eq!(index.document_count(), 3);
    assert_eq!(index.token_count(), 8);
    assert_eq!(index.sizes().collect::<Vec<_>>(), [3, 1, 4]);
    assert_eq!(index.pointers().collect::<Vec<_>>(), [0, 6, 8]);
    assert_eq!(index.document_indices().collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert!(index.documents_are_sequences());
    assert_eq!(index.sequence_documents().unwrap(), [0, 1, 2]);
    assert_eq!(
        index.header(),
        MegatronHeader {
            dtype: Dtype::U16,
            sequence_count: 3,
            document_indices_len: 4
        }
    );

    // The offsets cut the .bin into the documents the script wrote.
    let tokens: Vec<u16> = MEGATRON_BIN
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let offsets: Vec<usize> = index.offsets().map(|o| o as usize).collect();
    let rows: Vec<&[u16]> = offsets.windows(2).map(|w| &tokens[w[0]..w[1]]).collect();
    assert_eq!(rows, [&[10, 11, 12][..], &[65535], &[0, 1, 2, 3]]);
}

#[test]
fn round_trip_with_sentences_grouped_into_documents() {
    let lengths = [4u64, 0, 2, 9, 1];
    let labels = [0u64, 0, 1, 2, 2];
    let docs = document_indices_from(&labels).unwrap();
    assert_eq!(docs, [0, 2, 3, 5]);
    let idx = encode(Dtype::I32, &lengths, &docs).unwrap();
    let index = MegatronIndex::parse(&idx, 16 * 4).unwrap();
    assert_eq!(index.sizes().collect::<Vec<_>>(), lengths);
    assert_eq!(index.offsets().collect::<Vec<_>>(), [0, 4, 4, 6, 15, 16]);
    assert_eq!(index.document_count(), 3);
    assert!(!index.documents_are_sequences());
    assert_eq!(index.sequence_documents().unwrap(), labels);
}

#[test]
fn refuses_bad_magic() {
    let mut idx = good();
    idx[0] = b'X';
    let (e, msg) = refuse(&idx, 16);
    assert!(
        matches!(e, Error::MegatronBadMagic { found } if found[0] == b'X'),
        "{e:?}"
    );
    assert!(msg.contains("not a Megatron .idx file"), "{msg}");
    // A short input that is not the magic is still called so.
    assert!(matches!(refuse(b"PK", 0).0, Error::MegatronBadMagic { .. }));
}

#[test]
fn refuses_version_2() {
    let mut idx = good();
    idx[9] = 2;
    let (e, msg) = refuse(&idx, 16);
    assert_eq!(e, Error::MegatronVersion { version: 2 });
    assert!(msg.contains("version 2"), "{msg}");
}

#[test]
fn refuses_unknown_dtype_code_9() {
    let mut idx = good();
    idx[17] = 9;
    let (e, msg) = refuse(&idx, 16);
    assert_eq!(e, Error::MegatronDtypeCode { code: 9 });
    assert!(msg.contains("dtype code 9 at byte 17"), "{msg}");
}

#[test]
fn refuses_counts_larger_than_the_file() {
    for n in [1_000_000u64, u64::MAX / 12 + 1, u64::MAX] {
        let mut idx = good();
        idx[18..26].copy_from_slice(&n.to_le_bytes());
        let (e, msg) = refuse(&idx, 16);
        assert!(
            matches!(
                e,
                Error::Truncated {
                    start: 34,
                    file_len: 102,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            msg.contains(&format!("{n} sequences and 4 document indices")),
            "{msg}"
        );
    }
    let mut idx = good();
    idx[26..34].copy_from_slice(&u64::MAX.to_le_bytes());
    let (e, _) = refuse(&idx, 16);
    assert!(matches!(e, Error::Truncated { end: u64::MAX, .. }), "{e:?}");
}

#[test]
fn refuses_a_length_off_by_one() {
    let idx = good();
    let (e, msg) = refuse(&idx[..idx.len() - 1], 16);
    assert_eq!(
        e,
        Error::Truncated {
            what: "the Megatron .idx arrays for 3 sequences and 4 document indices".into(),
            start: 34,
            end: 102,
            file_len: 101,
        }
    );
    assert!(msg.contains("truncated"), "{msg}");
    let mut long = idx.clone();
    long.push(0);
    let (e, msg) = refuse(&long, 16);
    assert_eq!(
        e,
        Error::MegatronTrailingBytes {
            end: 102,
            file_len: 103
        }
    );
    assert!(msg.contains("1 bytes after its document indices"), "{msg}");
}

#[test]
fn refuses_a_multimodal_index_as_trailing_bytes() {
    // Megatron's multimodal writer appends one int8 mode per sequence.
    let mut idx = good();
    idx.extend_from_slice(&[0, 1, 0]);
    let (e, msg) = refuse(&idx, 16);
    assert!(
        matches!(
            e,
            Error::MegatronTrailingBytes {
                end: 102,
                file_len: 105
            }
        ),
        "{e:?}"
    );
    assert!(msg.contains("multimodal index"), "{msg}");
    assert!(msg.contains("not supported"), "{msg}");
}

#[test]
fn refuses_a_truncated_file() {
    let idx = good();
    for len in [9usize, 20, 33] {
        let (e, msg) = refuse(&idx[..len], 16);
        assert!(
            matches!(&e, Error::Truncated { start: 0, end: MEGATRON_HEADER_LEN, file_len, .. } if *file_len == len as u64),
            "{e:?}"
        );
        assert!(msg.contains("the Megatron .idx header"), "{msg}");
    }
    let (e, _) = refuse(&idx[..50], 16);
    assert!(
        matches!(
            e,
            Error::Truncated {
                end: 102,
                file_len: 50,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn refuses_a_negative_size() {
    let (e, msg) = refuse(&raw(8, &[3, -1, 4], &[0, 6, 4], &[0, 1, 2, 3]), 16);
    assert!(
        matches!(
            e,
            Error::MegatronValue {
                part: "sizes",
                index: 1,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(msg.contains("sizes[1]: is -1"), "{msg}");
}

#[test]
fn refuses_a_non_contiguous_pointer() {
    let (e, msg) = refuse(&raw(8, &[3, 1, 4], &[0, 6, 10], &[0, 1, 2, 3]), 18);
    assert!(
        matches!(
            e,
            Error::MegatronValue {
                part: "pointers",
                index: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        msg.contains("pointers[2]: is 10, but sequence 1 ends at byte 8"),
        "{msg}"
    );
    assert!(msg.contains("not contiguous"), "{msg}");
    let (_, msg) = refuse(&raw(8, &[3], &[2], &[0, 1]), 8);
    assert!(msg.contains("pointers[0]: is 2"), "{msg}");
}

#[test]
fn refuses_document_indices_not_starting_at_0() {
    let (e, msg) = refuse(&raw(8, &[3, 1, 4], &[0, 6, 8], &[1, 1, 2, 3]), 16);
    assert!(
        matches!(
            e,
            Error::MegatronValue {
                part: "document_indices",
                index: 0,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(msg.contains("document_indices[0]: is 1"), "{msg}");
}

#[test]
fn refuses_decreasing_document_indices() {
    let (e, msg) = refuse(&raw(8, &[3, 1, 4], &[0, 6, 8], &[0, 2, 1, 3]), 16);
    assert!(
        matches!(
            e,
            Error::MegatronValue {
                part: "document_indices",
                index: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        msg.contains("document_indices[2]: is 1, below document_indices[1] = 2"),
        "{msg}"
    );
}

#[test]
fn refuses_document_indices_not_ending_at_the_sequence_count() {
    let (e, msg) = refuse(&raw(8, &[3, 1, 4], &[0, 6, 8], &[0, 1, 2]), 16);
    assert!(
        matches!(
            e,
            Error::MegatronValue {
                part: "document_indices",
                index: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        msg.contains("the last document index is the sequence count 3"),
        "{msg}"
    );
}

#[test]
fn refuses_a_bin_length_mismatch() {
    for bin_len in [15u64, 17, 0] {
        let (e, msg) = refuse(&good(), bin_len);
        assert_eq!(e, Error::MegatronBinLength { end: 16, bin_len });
        assert!(
            msg.contains(&format!(
                "end at byte 16 of the .bin, but the .bin is {bin_len} bytes"
            )),
            "{msg}"
        );
    }
}

#[test]
fn refuses_an_empty_document_only_when_asked_for_labels() {
    // preprocess_data.py writes this for a JSON line whose text yields no token.
    let idx = encode(Dtype::U16, &[3, 1], &[0, 1, 1, 2]).unwrap();
    let index = MegatronIndex::parse(&idx, 8).unwrap();
    assert_eq!(index.document_count(), 3);
    let e = index.sequence_documents().unwrap_err();
    assert_eq!(
        e,
        Error::MegatronEmptyDocument {
            document: 1,
            sequence: 1
        }
    );
    assert!(
        e.to_string().contains("document 1 holds no sequence"),
        "{e}"
    );
}

#[test]
fn encode_refuses_a_dtype_megatron_has_no_code_for() {
    for dtype in [
        Dtype::Bool,
        Dtype::U32,
        Dtype::U64,
        Dtype::F16,
        Dtype::BF16,
        Dtype::C64,
        Dtype::F8E4M3,
    ] {
        let e = encode(dtype, &[1], &[0, 1]).unwrap_err();
        assert_eq!(e, Error::MegatronDtype { dtype });
        assert!(
            e.to_string()
                .contains(&format!("no dtype code for {}", dtype.name())),
            "{e}"
        );
        assert!(megatron::encode_header(dtype, 1, 2).is_err());
    }
}

#[test]
fn encode_refuses_a_sequence_over_i32_max_tokens() {
    let e = encode(Dtype::U8, &[5, i32::MAX as u64 + 1], &[0, 2]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::MegatronValue {
                part: "sizes",
                index: 1,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("2147483648 tokens"), "{e}");
    assert!(encode(Dtype::U8, &[i32::MAX as u64], &[0, 1]).is_ok());
}

fn megatron_dtype() -> impl Strategy<Value = Dtype> {
    proptest::sample::select(vec![
        Dtype::U8,
        Dtype::I8,
        Dtype::I16,
        Dtype::I32,
        Dtype::I64,
        Dtype::F64,
        Dtype::F32,
        Dtype::U16,
    ])
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        bin_len in any::<u64>(),
    ) {
        let _ = MegatronIndex::parse(&bytes, bin_len);
    }

    #[test]
    fn parse_never_panics_after_the_magic(
        tail in proptest::collection::vec(any::<u8>(), 0..200),
        bin_len in 0u64..64,
    ) {
        let mut bytes = megatron::MEGATRON_MAGIC.to_vec();
        bytes.extend_from_slice(&tail);
        let _ = MegatronIndex::parse(&bytes, bin_len);
    }

    #[test]
    fn a_corrupted_byte_never_panics_and_a_parse_stays_consistent(
        at in 0usize..102,
        value in any::<u8>(),
    ) {
        let mut idx = MEGATRON_IDX.to_vec();
        idx[at] = value;
        if let Ok(index) = MegatronIndex::parse(&idx, 16) {
            let offsets: Vec<u64> = index.offsets().collect();
            prop_assert_eq!(offsets.len() as u64, index.sequence_count() + 1);
            prop_assert_eq!(offsets.last().copied(), Some(index.token_count()));
            prop_assert_eq!(index.token_count() * index.dtype().size() as u64, 16);
            let _ = index.sequence_documents();
        }
    }

    #[test]
    fn encode_then_parse_round_trips(
        dtype in megatron_dtype(),
        rows in proptest::collection::vec((0u64..2000, any::<bool>()), 0..64),
    ) {
        let lengths: Vec<u64> = rows.iter().map(|r| r.0).collect();
        // Each `true` starts a new document (the first sequence always does).
        let mut labels = Vec::new();
        let mut doc = 0u64;
        for (i, r) in rows.iter().enumerate() {
            if i > 0 && r.1 {
                doc += 1;
            }
            labels.push(doc);
        }
        let docs = document_indices_from(&labels).unwrap();
        let idx = encode(dtype, &lengths, &docs).unwrap();
        let tokens: u64 = lengths.iter().sum();
        let bin_len = tokens * dtype.size() as u64;
        let index = MegatronIndex::parse(&idx, bin_len).unwrap();
        prop_assert_eq!(index.dtype(), dtype);
        prop_assert_eq!(index.sizes().collect::<Vec<_>>(), lengths.clone());
        prop_assert_eq!(index.document_indices().collect::<Vec<_>>(), docs.clone());
        let mut expected = vec![0u64];
        expected.extend(lengths.iter().scan(0u64, |s, &l| { *s += l; Some(*s) }));
        prop_assert_eq!(index.offsets().collect::<Vec<_>>(), expected);
        prop_assert_eq!(index.sequence_documents().unwrap(), labels);
        prop_assert_eq!(index.documents_are_sequences(), docs.len() == lengths.len() + 1);
    }
}
