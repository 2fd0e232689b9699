//! The parallel gather `take`: against a naive per-row copy, for every dtype and for views; its
//! errors leave the output untouched. A gather that casts equals the gather then the cast.

use std::path::{Path, PathBuf};

use mmtensor::{Cast, Dtype, Error, Store, Tensor};
use mmtensor_convert::sample::{SampleStore, SampleTensor};
use proptest::prelude::*;

/// One tensor per dtype (rows of a few shapes, one empty and one 1-d), `mask` a BOOL tensor with
/// the given bytes, and `big` (F32 [2048, 256], rows of 1 KiB: enough to take the parallel path).
fn store(dir: &Path, mask: &[u8]) -> PathBuf {
    let mut tensors: Vec<SampleTensor> = Dtype::ALL
        .iter()
        .enumerate()
        .filter(|(_, &d)| d != Dtype::Bool)
        .map(|(i, &d)| SampleTensor::pattern(&format!("t{i}"), d, &[97, 3, 5], i as u64))
        .collect();
    tensors.push(SampleTensor::pattern("flat", Dtype::I64, &[1000], 7));
    tensors.push(SampleTensor::pattern("empty_rows", Dtype::F32, &[10, 0], 8));
    tensors.push(SampleTensor::pattern("no_rows", Dtype::F32, &[0, 4], 9));
    tensors.push(SampleTensor::pattern("big", Dtype::F32, &[2048, 256], 10));
    tensors.push(SampleTensor::pattern("scalar", Dtype::F64, &[], 11));
    let mut mask_t = SampleTensor::pattern("mask", Dtype::Bool, &[mask.len() as u64], 0);
    mask_t.bytes = mask.to_vec();
    tensors.push(mask_t);
    let sample = SampleStore {
        alignment: 64,
        block_size: 4096,
        metadata: vec![],
        tensors,
    };
    let path = dir.join("s.mmt");
    sample.write(&path).unwrap();
    path
}

fn open(path: &Path) -> Store {
    // SAFETY: the tests own the file and never modify it while it is mapped.
    unsafe { Store::open(path) }.unwrap()
}

/// The gather done the obvious way: one row at a time, in the order given.
fn naive(t: &Tensor<'_>, indices: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &i in indices {
        out.extend_from_slice(t.rows(i..i + 1).unwrap().bytes().unwrap());
    }
    out
}

fn fixture() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = store(dir.path(), &[0, 1, 1, 0, 1]);
    let s = open(&path);
    (dir, s)
}

#[test]
fn every_dtype_matches_a_per_row_copy() {
    let (_dir, s) = fixture();
    let indices = [96, 0, 5, 6, 7, 5, 5, 40, 39, 38, 1, 2, 3];
    for t in s.tensors() {
        if t.shape().is_empty() || t.shape()[0] < 97 {
            continue;
        }
        assert_eq!(
            t.take_bytes(&indices).unwrap(),
            naive(&t, &indices),
            "{t:?}"
        );
    }
    let mask = s.tensor("mask").unwrap();
    assert_eq!(mask.take::<bool>(&[4, 0, 1]).unwrap(), [true, false, true]);
}

#[test]
fn typed_take_matches_the_typed_view() {
    let (_dir, s) = fixture();
    let flat = s.tensor("flat").unwrap();
    let all = flat.as_slice::<i64>().unwrap();
    let got = flat.take::<i64>(&[999, 0, 500, 500]).unwrap();
    assert_eq!(got, [all[999], all[0], all[500], all[500]]);
    assert!(matches!(
        flat.take::<f32>(&[0]),
        Err(Error::DtypeMismatch { .. })
    ));
}

#[test]
fn the_parallel_path_matches_a_per_row_copy() {
    let (_dir, s) = fixture();
    let big = s.tensor("big").unwrap();
    // A fixed pseudo-random order with runs and duplicates, large enough to be split over threads.
    let mut indices: Vec<u64> = (0..3000u64).map(|k| (k * 7919 + 13) % 2048).collect();
    indices.extend(100..400);
    indices.extend([5, 5, 5]);
    assert_eq!(big.take_bytes(&indices).unwrap(), naive(&big, &indices));
    let all: Vec<u64> = (0..2048).collect();
    assert_eq!(big.take_bytes(&all).unwrap(), big.bytes().unwrap());
}

#[test]
fn more_indices_than_the_parallel_sort_threshold_match_a_per_row_copy() {
    let (_dir, s) = fixture();
    // More than 65,536 indices, with duplicates: sorted in parallel, then copied in parallel
    // (8-byte rows, 800 KB) or on one thread (1-byte rows, 100 KB).
    let indices: Vec<u64> = (0..100_000u64).map(|k| (k * 7919 + 13) % 1000).collect();
    let flat = s.tensor("flat").unwrap();
    assert_eq!(flat.take_bytes(&indices).unwrap(), naive(&flat, &indices));
    let few: Vec<u64> = indices.iter().map(|i| i % 5).collect();
    let mask = s.tensor("mask").unwrap();
    assert_eq!(mask.take_bytes(&few).unwrap(), naive(&mask, &few));
}

#[test]
fn empty_indices_and_empty_rows() {
    let (_dir, s) = fixture();
    let big = s.tensor("big").unwrap();
    assert_eq!(big.take_bytes(&[]).unwrap(), Vec::<u8>::new());
    big.take_into(&[], &mut []).unwrap();
    let empty_rows = s.tensor("empty_rows").unwrap();
    assert_eq!(empty_rows.row_bytes().unwrap(), 0);
    assert_eq!(empty_rows.take_bytes(&[9, 0, 9]).unwrap(), Vec::<u8>::new());
    // Zero-byte rows still have positions: an index past them is an error.
    assert!(matches!(
        empty_rows.take_bytes(&[10]),
        Err(Error::RowIndex {
            index: 10,
            rows: 10,
            ..
        })
    ));
    let no_rows = s.tensor("no_rows").unwrap();
    assert_eq!(no_rows.take_bytes(&[]).unwrap(), Vec::<u8>::new());
    assert!(matches!(
        no_rows.take_bytes(&[0]),
        Err(Error::RowIndex { rows: 0, .. })
    ));
}

#[test]
fn an_index_out_of_range_is_an_error_and_writes_nothing() {
    let (_dir, s) = fixture();
    let big = s.tensor("big").unwrap();
    let row = big.row_bytes().unwrap() as usize;
    let mut out = vec![0xAAu8; 3 * row];
    let err = big.take_into(&[0, 2048, 4096], &mut out).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::RowIndex {
                tensor,
                index: 2048,
                rows: 2048,
                ..
            } if tensor == "big"
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("`big`") && text.contains("2048 rows") && text.contains("row index 2048")
    );
    assert!(out.iter().all(|&b| b == 0xAA));
}

#[test]
fn a_wrong_output_length_is_an_error_naming_both_lengths() {
    let (_dir, s) = fixture();
    let big = s.tensor("big").unwrap();
    let mut out = vec![0xAAu8; 1024 * 2 + 1];
    let err = big.take_into(&[1, 2], &mut out).unwrap_err();
    assert!(matches!(
        err,
        Error::TakeOutput {
            rows: 2,
            row_bytes: 1024,
            actual: 2049,
            ..
        }
    ));
    assert!(err.to_string().contains("2048 bytes"), "{err}");
    assert!(out.iter().all(|&b| b == 0xAA));
}

#[test]
fn a_scalar_has_no_rows_to_take() {
    let (_dir, s) = fixture();
    let scalar = s.tensor("scalar").unwrap();
    assert!(matches!(
        scalar.take_bytes(&[]),
        Err(Error::Format {
            source: mmtensor_format::Error::Scalar { .. },
            ..
        })
    ));
}

#[test]
fn indices_are_relative_to_a_row_range_view() {
    let (_dir, s) = fixture();
    let big = s.tensor("big").unwrap();
    let view = big.rows(1000..1100).unwrap();
    let got = view.take_bytes(&[0, 99, 50]).unwrap();
    assert_eq!(got, naive(&big, &[1000, 1099, 1050]));
    assert!(matches!(
        view.take_bytes(&[100]),
        Err(Error::RowIndex {
            index: 100,
            rows: 100,
            ..
        })
    ));
}

#[test]
fn a_gathered_bool_row_must_hold_0_or_1() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&store(dir.path(), &[0, 1, 7, 1, 9]));
    let mask = s.tensor("mask").unwrap();
    // Rows 0, 1 and 3 are fine; rows 2 and 4 are not, and the lower offset is reported.
    assert_eq!(mask.take_bytes(&[3, 0, 1]).unwrap(), [1, 0, 1]);
    let start = mask.byte_range().start;
    match mask.take_bytes(&[4, 1, 2]) {
        Err(Error::InvalidBool { offset, value, .. }) => {
            assert_eq!((offset, value), (start + 2, 7));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        mask.take::<bool>(&[4]),
        Err(Error::InvalidBool { value: 9, .. })
    ));
}

#[test]
fn a_store_read_into_memory_gathers_the_same() {
    let (dir, s) = fixture();
    let read = Store::read(dir.path().join("s.mmt")).unwrap();
    let indices = [5, 2047, 0, 1, 2];
    assert_eq!(
        read.tensor("big").unwrap().take_bytes(&indices).unwrap(),
        s.tensor("big").unwrap().take_bytes(&indices).unwrap()
    );
}

#[test]
fn owned_tensors_gather_on_other_threads() {
    let (_dir, s) = fixture();
    let big = s.tensor_owned("big").unwrap().rows(8..).unwrap();
    let expected = naive(&s.tensor("big").unwrap(), &[8, 2047, 9]);
    drop(s);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let big = big.clone();
            std::thread::spawn(move || {
                let mut out = vec![0u8; 3 * big.row_bytes().unwrap() as usize];
                big.take_into(&[0, 2039, 1], &mut out).unwrap();
                out
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), expected);
    }
    assert_eq!(big.take::<f32>(&[0]).unwrap().len(), 256);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any indices in range, in any order with any repeats, gather what a per-row copy gathers, on
    /// a whole tensor and on a row range of it.
    #[test]
    fn take_matches_a_per_row_copy(
        which in 0usize..4,
        raw in proptest::collection::vec(0u64..2048, 0..600),
        start in 0u64..50,
    ) {
        let (_dir, s) = fixture();
        let name = ["big", "flat", "t1", "t13"][which];
        let t = s.tensor(name).unwrap();
        let t = t.rows(start..).unwrap();
        let n = t.shape()[0];
        let indices: Vec<u64> = raw.iter().map(|&i| i % n).collect();
        prop_assert_eq!(t.take_bytes(&indices).unwrap(), naive(&t, &indices));
    }
}

/// A `.npy` file (format 1.0) holding `shape` of big-endian f32 zeros.
fn big_endian_npy(path: &Path, rows: u64) {
    let mut header = format!("{{'descr': '>f4', 'fortran_order': False, 'shape': ({rows}, 2), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + rows as usize * 8, 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_big_endian_npy_needs_convert_as_bytes_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("be.npy");
    big_endian_npy(&path, 4);
    let s = open(&path);
    let t = s.tensors().next().unwrap();
    assert!(matches!(t.bytes(), Err(Error::NeedsConvert { .. })));
    let mut out = [0xAAu8; 16];
    assert!(matches!(
        t.take_into(&[3, 0], &mut out),
        Err(Error::NeedsConvert { .. })
    ));
    assert_eq!(out, [0xAA; 16]);
}

/// `count` indices over `rows` rows, scattered, with repeats and neighbours.
fn scattered(rows: u64, count: u64) -> Vec<u64> {
    (0..count).map(|k| (k * 7919 + k / 3 + 13) % rows).collect()
}

#[test]
fn a_cast_gather_equals_the_gather_then_the_cast_for_every_pair_it_makes() {
    let (_dir, s) = fixture();
    let mut made = 0;
    for t in s.tensors() {
        let Some(&rows) = t.shape().first().filter(|&&r| r > 0) else {
            continue;
        };
        // 600 rows of `big` take the parallel path, even at two bytes an element.
        let indices = scattered(rows, if t.name() == "big" { 600 } else { 50 });
        let plain = t.take_bytes(&indices).unwrap();
        for to in Dtype::ALL {
            let out_len = plain.len() / t.dtype().size() * to.size();
            let mut got = vec![0xa5u8; out_len];
            match Cast::new(t.dtype(), to).filter(Cast::never_fails) {
                Some(cast) => {
                    let mut want = vec![0u8; out_len];
                    cast.run(&plain, &mut want).unwrap();
                    t.take_into_as(&indices, &mut got, to).unwrap();
                    assert!(got == want, "{} {} -> {to}", t.name(), t.dtype());
                    made += 1;
                }
                None => {
                    let e = t.take_into_as(&indices, &mut got, to).unwrap_err();
                    assert!(
                        matches!(&e, Error::UnsupportedCast { tensor, from, to: asked, .. }
                            if tensor == t.name() && *from == t.dtype() && *asked == to),
                        "{e}"
                    );
                    assert!(got.iter().all(|&b| b == 0xa5), "nothing is written");
                }
            }
        }
    }
    // Every dtype's identity, and the widening, integer-to-float and float casts of the table.
    assert!(made > 60, "{made} casts made");
}

#[test]
fn typed_cast_gathers_hold_the_values_of_the_uncast_rows() {
    let (_dir, s) = fixture();
    let u16s = s
        .tensors()
        .find(|t| t.dtype() == Dtype::U16)
        .expect("a U16 tensor");
    let indices = scattered(97, 40);
    let narrow: Vec<u16> = u16s.take(&indices).unwrap();
    let wide: Vec<i64> = u16s.take_as(&indices).unwrap();
    assert_eq!(
        wide,
        narrow.iter().map(|&v| i64::from(v)).collect::<Vec<_>>()
    );
    let floats: Vec<f32> = u16s.take_as(&indices).unwrap();
    assert_eq!(
        floats,
        narrow.iter().map(|&v| f32::from(v)).collect::<Vec<_>>()
    );
    // BOOL is cast as 0 and 1.
    let mask = s.tensor("mask").unwrap();
    assert_eq!(mask.take_as::<i64>(&[4, 0, 1]).unwrap(), [1, 0, 1]);
    assert_eq!(mask.take_as::<f32>(&[3, 2]).unwrap(), [0.0, 1.0]);
    assert_eq!(mask.take_as::<bool>(&[3, 2]).unwrap(), [false, true]);
}

#[test]
fn casts_that_could_lose_values_are_refused_naming_the_tensor_and_both_dtypes() {
    let (_dir, s) = fixture();
    let i64s = s.tensor("flat").unwrap(); // I64 [1000]
    let mut out = [0u8; 8];
    let e = i64s
        .take_into_as(&[1, 2], &mut out, Dtype::I32)
        .unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedCast { tensor, from: Dtype::I64, to: Dtype::I32, .. }
            if tensor == "flat"),
        "{e}"
    );
    let text = e.to_string();
    for part in [
        "s.mmt",
        "`flat`",
        "I64",
        "I32",
        "mmt convert --dtype flat=I32",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert!(i64s.take_as::<u64>(&[1]).is_err(), "a change of sign");
    let big = s.tensor("big").unwrap(); // F32
    let e = big.take_as::<i32>(&[1]).unwrap_err();
    assert!(
        e.to_string()
            .contains("there is no such cast (F32 is read as F16, BF16, F32, F64)"),
        "{e}"
    );
}

#[test]
fn a_cast_gather_checks_its_output_in_rows_of_the_target_dtype() {
    let (_dir, s) = fixture();
    let big = s.tensor("big").unwrap(); // F32 [2048, 256]: 1 KiB rows, 2 KiB as F64
    let mut same_bytes = vec![0u8; 2 * 1024];
    let e = big
        .take_into_as(&[0, 1], &mut same_bytes, Dtype::F64)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TakeOutput {
                rows: 2,
                row_bytes: 2048,
                actual: 2048,
                ..
            }
        ),
        "{e}"
    );
    let mut wide = vec![0u8; 4 * 1024];
    big.take_into_as(&[0, 1], &mut wide, Dtype::F64).unwrap();
    // A row range view gathers relative to itself, cast too.
    let view = big.rows(10..20).unwrap();
    let mut from_view = vec![0u8; 2 * 1024];
    view.take_into_as(&[0], &mut from_view, Dtype::F64).unwrap();
    let mut direct = vec![0u8; 2 * 1024];
    big.take_into_as(&[10], &mut direct, Dtype::F64).unwrap();
    assert_eq!(from_view, direct);
}

#[test]
fn a_cast_gather_still_checks_bool_rows() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&store(dir.path(), &[0, 1, 2, 0]));
    let mask = s.tensor("mask").unwrap();
    let e = mask.take_as::<i64>(&[0, 2]).unwrap_err();
    assert!(matches!(e, Error::InvalidBool { value: 2, .. }), "{e}");
}
