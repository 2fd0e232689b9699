//! `save`: tensors from memory round-trip through `mmtensor::Store`, every refusal happens before a
//! file exists, and an existing store is replaced atomically or not at all.

use std::collections::BTreeMap;
use std::path::Path;

use mmtensor_convert::{save, Error, SaveTensor};
use mmtensor_format::Dtype;

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn open(path: &Path) -> mmtensor::Store {
    // SAFETY: the tests write their stores only by `save`, which renames; nothing truncates them.
    unsafe { mmtensor::Store::open(path).unwrap() }
}

fn no_metadata() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn every_dtype_round_trips_with_its_shape_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.mmt");
    // Three elements of every dtype, with bytes that differ per element (bool: 0 and 1 only).
    let data: Vec<(String, Dtype, Vec<u8>)> = Dtype::ALL
        .into_iter()
        .map(|d| {
            let bytes = (0..3 * d.size())
                .map(|i| {
                    if d == Dtype::Bool {
                        (i % 2) as u8
                    } else {
                        (i * 7 + 1) as u8
                    }
                })
                .collect();
            (format!("t_{}", d.name()), d, bytes)
        })
        .collect();
    let tensors: Vec<SaveTensor<'_>> = data
        .iter()
        .map(|(n, d, b)| SaveTensor::new(n, *d, &[3], b))
        .collect();
    let metadata = BTreeMap::from([
        ("step".to_owned(), "7".to_owned()),
        ("note".to_owned(), "ünïcode".to_owned()),
    ]);
    assert_eq!(save(&path, &tensors, &metadata).unwrap(), path);

    let store = open(&path);
    assert_eq!(
        store.names().collect::<Vec<_>>(),
        data.iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>(),
        "the tensors keep the order given"
    );
    for (name, dtype, bytes) in &data {
        let t = store.tensor(name).unwrap();
        assert_eq!(t.dtype(), *dtype);
        assert_eq!(t.shape(), &[3]);
        assert_eq!(t.bytes().unwrap(), &bytes[..], "{name}");
    }
    assert_eq!(store.metadata(), &metadata);
    store.verify().unwrap();
    assert_eq!(entries(dir.path()), ["all.mmt"]);
}

#[test]
fn scalars_empty_tensors_and_an_empty_store_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.mmt");
    let scalar = 2.5f64.to_le_bytes();
    let tensors = [
        SaveTensor::new("scalar", Dtype::F64, &[], &scalar),
        SaveTensor::new("empty", Dtype::I32, &[0, 5], &[]),
    ];
    save(&path, &tensors, &no_metadata()).unwrap();
    let store = open(&path);
    let s = store.tensor("scalar").unwrap();
    assert_eq!(s.shape(), &[] as &[u64]);
    assert_eq!(s.as_slice::<f64>().unwrap(), &[2.5]);
    let e = store.tensor("empty").unwrap();
    assert_eq!(e.shape(), &[0, 5]);
    assert!(e.bytes().unwrap().is_empty());

    let none = dir.path().join("none.mmt");
    save(&none, &[], &no_metadata()).unwrap();
    assert_eq!(open(&none).names().count(), 0);
}

#[test]
fn a_wrong_byte_count_names_the_tensor_expected_and_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.mmt");
    let bytes = f32_bytes(&[1.0, 2.0, 3.0]);
    let short = [SaveTensor::new("w", Dtype::F32, &[2, 2], &bytes)];
    let err = save(&path, &short, &no_metadata()).unwrap_err();
    assert!(
        matches!(&err, Error::TooFewBytes { tensor, expected: 16, given: 12 } if tensor == "w"),
        "{err:?}"
    );
    assert!(err.to_string().contains("tensor `w`"), "{err}");

    let long = [SaveTensor::new("w", Dtype::F32, &[2], &bytes)];
    let err = save(&path, &long, &no_metadata()).unwrap_err();
    assert!(
        matches!(&err, Error::TooManyBytes { tensor, expected: 8, given: 12 } if tensor == "w"),
        "{err:?}"
    );
    assert!(entries(dir.path()).is_empty(), "nothing is written");
}

#[test]
fn duplicate_and_invalid_names_and_reserved_keys_are_the_formats_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.mmt");
    let one = [7u8];
    let twice = [
        SaveTensor::new("x", Dtype::U8, &[1], &one),
        SaveTensor::new("x", Dtype::U8, &[1], &one),
    ];
    let err = save(&path, &twice, &no_metadata()).unwrap_err();
    assert!(
        matches!(&err, Error::Format { source: mmtensor_format::Error::DuplicateName { name, .. }, .. } if name == "x"),
        "{err:?}"
    );

    let unnamed = [SaveTensor::new("", Dtype::U8, &[1], &one)];
    let err = save(&path, &unnamed, &no_metadata()).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Format {
                source: mmtensor_format::Error::InvalidName { .. },
                ..
            }
        ),
        "{err:?}"
    );

    let reserved = BTreeMap::from([("mmt.shard.index".to_owned(), "0".to_owned())]);
    let fine = [SaveTensor::new("x", Dtype::U8, &[1], &one)];
    let err = save(&path, &fine, &reserved).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Format {
                source: mmtensor_format::Error::ReservedKey { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("mmt.shard.index"), "{err}");
    assert!(entries(dir.path()).is_empty(), "nothing is written");
}

#[test]
fn a_bool_byte_other_than_0_and_1_is_refused_with_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mask.mmt");
    let mask = [1u8, 0, 1, 2, 1];
    let tensors = [SaveTensor::new("mask", Dtype::Bool, &[5], &mask)];
    let err = save(&path, &tensors, &no_metadata()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidBool { tensor, index: 3, value: 2, offset: None, .. } if tensor == "mask"),
        "{err:?}"
    );
    // The same bytes are any other one-byte dtype's to hold.
    let tensors = [SaveTensor::new("mask", Dtype::U8, &[5], &mask)];
    save(&path, &tensors, &no_metadata()).unwrap();
}

#[test]
fn a_missing_folder_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("x.mmt");
    let err = save(&path, &[], &no_metadata()).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
}

#[test]
fn an_existing_store_is_replaced_by_rename_while_a_mapping_keeps_the_old_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.mmt");
    let old = f32_bytes(&[1.0, 2.0]);
    save(
        &path,
        &[SaveTensor::new("w", Dtype::F32, &[2], &old)],
        &no_metadata(),
    )
    .unwrap();
    let before = open(&path);

    let new = f32_bytes(&[3.0, 4.0, 5.0]);
    save(
        &path,
        &[SaveTensor::new("w", Dtype::F32, &[3], &new)],
        &no_metadata(),
    )
    .unwrap();
    // The old mapping still reads the old, complete file: it was renamed over, not rewritten.
    assert_eq!(
        before.tensor("w").unwrap().as_slice::<f32>().unwrap(),
        &[1.0, 2.0]
    );
    before.verify().unwrap();
    assert_eq!(
        open(&path).tensor("w").unwrap().as_slice::<f32>().unwrap(),
        &[3.0, 4.0, 5.0]
    );
    assert_eq!(entries(dir.path()), ["model.mmt"]);
}

#[test]
fn a_failed_save_leaves_the_existing_store_untouched_and_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.mmt");
    let old = f32_bytes(&[1.0, 2.0]);
    save(
        &path,
        &[SaveTensor::new("w", Dtype::F32, &[2], &old)],
        &no_metadata(),
    )
    .unwrap();
    let bytes_before = std::fs::read(&path).unwrap();

    // The first tensor is fine; the second is refused.
    let fine = f32_bytes(&[9.0; 4]);
    let bad_mask = [0u8, 3];
    let failing = [
        SaveTensor::new("w", Dtype::F32, &[4], &fine),
        SaveTensor::new("mask", Dtype::Bool, &[2], &bad_mask),
    ];
    assert!(matches!(
        save(&path, &failing, &no_metadata()),
        Err(Error::InvalidBool { .. })
    ));
    let short = [
        SaveTensor::new("w", Dtype::F32, &[4], &fine),
        SaveTensor::new("v", Dtype::F32, &[4], &fine[..8]),
    ];
    assert!(matches!(
        save(&path, &short, &no_metadata()),
        Err(Error::TooFewBytes { .. })
    ));

    assert_eq!(std::fs::read(&path).unwrap(), bytes_before);
    assert_eq!(entries(dir.path()), ["model.mmt"]);
}

#[test]
fn a_large_tensor_is_written_in_pieces_with_matching_checksums() {
    // Larger than the writer's pieces and checksum blocks, not a multiple of either.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.mmt");
    let n = (3 << 20) + 12_345;
    let bytes: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    save(
        &path,
        &[SaveTensor::new("b", Dtype::U8, &[n as u64], &bytes)],
        &no_metadata(),
    )
    .unwrap();
    let store = open(&path);
    store.verify().unwrap();
    assert_eq!(store.tensor("b").unwrap().bytes().unwrap(), &bytes[..]);
}

#[test]
fn debug_shows_the_byte_count_not_the_bytes() {
    let bytes = [0u8; 4096];
    let t = SaveTensor::new("x", Dtype::U8, &[4096], &bytes);
    let text = format!("{t:?}");
    assert!(text.contains("<4096 bytes>"), "{text}");
    assert!(text.len() < 200, "{text}");
}

#[test]
fn a_ragged_tensor_is_written_as_values_and_offsets_and_read_back_as_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.mmt");
    let tokens: Vec<u8> = [1u16, 2, 3, 4, 5]
        .iter()
        .flat_map(|t| t.to_le_bytes())
        .collect();
    let boxes = f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let w = f32_bytes(&[7.0]);
    let tensors = [
        SaveTensor::ragged("tokens", Dtype::U16, &[5], &tokens, &[3, 0, 2]),
        SaveTensor::new("w", Dtype::F32, &[1], &w),
        SaveTensor::ragged("boxes", Dtype::F32, &[3, 2], &boxes, &[1, 2]),
    ];
    save(&path, &tensors, &no_metadata()).unwrap();
    let store = open(&path);
    assert_eq!(
        store.names().collect::<Vec<_>>(),
        ["tokens", "tokens.offsets", "w", "boxes", "boxes.offsets"]
    );
    let t = store.ragged("tokens").unwrap();
    assert_eq!((t.num_rows(), t.num_values()), (3, 5));
    assert_eq!(t.row(0).unwrap().as_slice::<u16>().unwrap(), [1, 2, 3]);
    assert_eq!(t.row_len(1).unwrap(), 0);
    assert_eq!(t.row(2).unwrap().as_slice::<u16>().unwrap(), [4, 5]);
    let b = store.ragged("boxes").unwrap();
    assert_eq!(b.item_shape(), [2]);
    assert_eq!(
        b.row(1).unwrap().as_slice::<f32>().unwrap(),
        [2.0, 3.0, 4.0, 5.0]
    );
    assert_eq!(store.tensor("w").unwrap().as_slice::<f32>().unwrap(), [7.0]);
    store.verify().unwrap();
}

#[test]
fn ragged_lengths_that_miss_the_values_are_refused_before_a_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.mmt");
    let tokens = [0u8; 10];
    let short = [SaveTensor::ragged(
        "tokens",
        Dtype::U16,
        &[5],
        &tokens,
        &[3, 1],
    )];
    let err = save(&path, &short, &no_metadata()).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("its 2 row lengths add up to 4 values, but its values have 5"),
        "{err}"
    );
    let scalar = [SaveTensor::ragged(
        "tokens",
        Dtype::U16,
        &[],
        &tokens[..2],
        &[],
    )];
    assert!(save(&path, &scalar, &no_metadata()).is_err());
    assert!(entries(dir.path()).is_empty());
}
