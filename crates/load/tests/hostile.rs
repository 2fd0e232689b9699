//! Hostile headers, truncated files and corrupted bytes give typed errors, never a panic or a fault.

use std::path::{Path, PathBuf};

use mmtensor::{Error, Store};
use mmtensor_format::{Dtype, Error as FormatError, FileLayout, Preamble, MAGIC};
use mmtensor_testsupport::{f32_bytes, TestStore};
use proptest::prelude::*;
use safetensors::SafeTensorError;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/golden")
        .join(name)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Opens `path` both ways; both must agree on success or failure. Returns the mapped result.
fn open(path: &Path) -> Result<Store, Error> {
    // SAFETY: each test owns its temporary files and does not change them while they are open.
    let mapped = unsafe { Store::open(path) };
    let copied = Store::read(path);
    assert_eq!(
        mapped.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        copied.as_ref().map(|_| ()).map_err(|e| e.to_string()),
    );
    mapped
}

/// Exercises every accessor of every tensor, which must not panic whatever the store holds.
fn touch_everything(store: &Store) {
    let _ = store.verify();
    for t in store.tensors() {
        let _ = t.bytes();
        let _ = t.as_slice::<u8>();
        let _ = t.as_slice::<f32>();
        let _ = t.to_vec::<bool>();
        let _ = t.rows(0..1).map(|r| r.verify());
        let _ = t.verify();
        let _ = t.prefetch().wait();
    }
}

#[test]
fn every_truncation_of_every_fixture_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["dtypes-a64.mmt", "page-a4096.mmt", "empty.mmt"] {
        let full = std::fs::read(fixture(name)).unwrap();
        let layout = FileLayout::parse(&full, full.len() as u64).unwrap();
        let header_end = 32 + layout.preamble().header_len as usize;
        // Every length through the header and a little past it, then a stride over the data.
        let lengths = (0..(header_end + 80).min(full.len()))
            .chain((header_end + 80..full.len()).step_by(97))
            .chain([full.len() - 1]);
        for len in lengths {
            let path = write(dir.path(), "cut.mmt", &full[..len]);
            let err = open(&path).expect_err(&format!("{name} cut to {len} bytes opened"));
            // Each stretch of the file has its own error: empty, a short preamble, a header
            // past the end, then a tensor or the checksum table past the end.
            let expected = match len {
                0 => matches!(err, Error::UnknownFormat { .. }),
                1..32 => matches!(
                    &err,
                    Error::Format { path: p, source: FormatError::TooShort { len: l, .. } }
                        if p == &path && *l == len as u64
                ),
                _ if len < header_end => matches!(
                    &err,
                    Error::Format { path: p, source: FormatError::Truncated { file_len, .. } }
                        if p == &path && *file_len == len as u64
                ),
                _ => matches!(
                    &err,
                    Error::Format { path: p, source: FormatError::OutOfBounds { file_len, .. } }
                        if p == &path && *file_len == len as u64
                ),
            };
            assert!(expected, "{name} cut to {len}: unexpected {err:?}");
        }
    }
}

#[test]
fn a_file_shorter_than_its_tensors_is_refused_naming_the_missing_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(fixture("page-a4096.mmt")).unwrap();
    let layout = FileLayout::parse(&full, full.len() as u64).unwrap();
    let x = layout.tensor("x").unwrap();
    let cut = layout.tensor_range(x).start as usize + 100;
    let path = write(dir.path(), "short.mmt", &full[..cut]);
    let err = open(&path).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Format { source: mmtensor_format::Error::OutOfBounds { what, file_len, .. }, .. }
                if what.contains('x') && *file_len == cut as u64
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("short.mmt"), "{err}");
}

/// Whether an inner error is the one a case expects (a `matches!` on the exact variant).
type Expect<E> = fn(&E) -> bool;

/// An `.mmt` file with `json` as its header (correctly checksummed) and `data_len` zero bytes after.
fn mmt_with_header(json: &str, data_len: usize) -> Vec<u8> {
    let mut pre = Preamble {
        major: 1,
        minor: 0,
        flags: 0,
        header_len: json.len() as u64,
        header_checksum: 0,
    };
    pre.header_checksum = pre.compute_checksum(json.as_bytes());
    let mut out = pre.encode().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.resize(out.len().next_multiple_of(64) + data_len, 0);
    out
}

#[test]
fn hostile_headers_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let table = r#""checksums":{"offset":0,"length":0,"xxh3":"2d06800538d394c2"}"#;
    let cases: Vec<(&str, Vec<u8>, Expect<FormatError>)> = vec![
        (
            "huge header length",
            {
                let mut b = MAGIC.to_vec();
                b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
                b.extend_from_slice(&u64::MAX.to_le_bytes());
                b.extend_from_slice(&[0; 8]);
                b
            },
            |e| matches!(e, FormatError::HeaderTooLarge { len: u64::MAX, .. }),
        ),
        (
            "bad header checksum",
            {
                let mut b = std::fs::read(fixture("empty.mmt")).unwrap();
                b[40] ^= 1;
                b
            },
            |e| matches!(e, FormatError::HeaderChecksum { .. }),
        ),
        (
            "unknown major version",
            {
                let mut b = std::fs::read(fixture("empty.mmt")).unwrap();
                b[8] = 2;
                b
            },
            |e| matches!(e, FormatError::UnsupportedVersion { major: 2, .. }),
        ),
        ("not json", mmt_with_header("{{{{", 0), |e| {
            matches!(e, FormatError::HeaderJson { .. })
        }),
        (
            "tensor past the end",
            mmt_with_header(
                &format!(
                    r#"{{"alignment":64,"block_size":4096,{table},"tensors":[{{"name":"x","dtype":"F32","shape":[1000000],"offset":0,"length":4000000}}]}}"#
                ),
                64,
            ),
            |e| matches!(e, FormatError::OutOfBounds { .. }),
        ),
        (
            "shape overflow",
            mmt_with_header(
                &format!(
                    r#"{{"alignment":64,"block_size":4096,{table},"tensors":[{{"name":"x","dtype":"F64","shape":[4294967296,4294967296],"offset":0,"length":0}}]}}"#
                ),
                64,
            ),
            |e| matches!(e, FormatError::ShapeOverflow { .. }),
        ),
        (
            "offset overflow",
            mmt_with_header(
                &format!(
                    r#"{{"alignment":64,"block_size":4096,{table},"tensors":[{{"name":"x","dtype":"U8","shape":[1],"offset":18446744073709551615,"length":1}}]}}"#
                ),
                64,
            ),
            |e| matches!(e, FormatError::OutOfBounds { .. }),
        ),
        (
            "unknown dtype",
            mmt_with_header(
                &format!(
                    r#"{{"alignment":64,"block_size":4096,{table},"tensors":[{{"name":"x","dtype":"F128","shape":[1],"offset":0,"length":16}}]}}"#
                ),
                64,
            ),
            |e| matches!(e, FormatError::UnknownDtype { name, .. } if name == "F128"),
        ),
    ];
    for (what, bytes, expected) in cases {
        let path = write(dir.path(), "hostile.mmt", &bytes);
        let err = open(&path).expect_err(what);
        assert!(
            matches!(&err, Error::Format { source, .. } if expected(source)),
            "{what}: {err:?}"
        );
    }
}

/// Issue 10, defect 4: a tensor of shape `[0, 2^40, 2^40]` holds no byte, so the store used to
/// open, and then `rows()` computed a row of 2^80 bytes (a panic in debug builds, a wrapped range in
/// release builds). It must be refused at open, as overflowing.
#[test]
fn zero_size_shape_with_overflowing_dims_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let table = r#""checksums":{"offset":0,"length":0,"xxh3":"2d06800538d394c2"}"#;
    let json = format!(
        r#"{{"alignment":64,"block_size":4096,{table},"tensors":[{{"name":"z","dtype":"U8","shape":[0,1099511627776,1099511627776],"offset":0,"length":0}}]}}"#
    );
    let path = write(dir.path(), "zero-size.mmt", &mmt_with_header(&json, 0));
    let err = open(&path).expect_err("the store opened");
    assert!(
        matches!(
            &err,
            Error::Format {
                source: mmtensor_format::Error::ShapeOverflow { tensor, .. },
                ..
            } if tensor == "z"
        ),
        "{err:?}"
    );
}

#[test]
fn files_of_no_known_format_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bytes in [&b""[..], b"x", b"PK\x03\x04 a zip file", &[0u8; 4096]] {
        let path = write(dir.path(), "what", bytes);
        let err = open(&path).unwrap_err();
        assert!(matches!(err, Error::UnknownFormat { .. }), "{err:?}");
    }
    let err = open(&dir.path().join("missing.mmt")).unwrap_err();
    assert!(matches!(&err, Error::Io { action: "open", .. }), "{err:?}");
    assert!(err.to_string().contains("missing.mmt"), "{err}");
}

#[test]
fn hostile_safetensors_and_npy_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let st = |json: &str, data: usize| {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b.resize(b.len() + data, 0);
        b
    };
    let cases: [(Vec<u8>, Expect<SafeTensorError>); 6] = [
        // The data section is shorter than the header says.
        (
            st(
                r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                8,
            ),
            |e| matches!(e, SafeTensorError::MetadataIncompleteBuffer),
        ),
        // Longer.
        (
            st(
                r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                24,
            ),
            |e| matches!(e, SafeTensorError::MetadataIncompleteBuffer),
        ),
        // Offsets that do not tile the data.
        (
            st(
                r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
                24,
            ),
            |e| matches!(e, SafeTensorError::InvalidOffset(name) if name == "x"),
        ),
        // A shape that overflows.
        (
            st(
                r#"{"x":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,0]}}"#,
                0,
            ),
            |e| matches!(e, SafeTensorError::ValidationOverflow),
        ),
        // Not JSON.
        (st(r#"{"x":"#, 0), |e| {
            matches!(e, SafeTensorError::InvalidHeaderDeserialization(_))
        }),
        // A header length far past the end.
        (
            {
                let mut b = u64::MAX.to_le_bytes().to_vec();
                b.extend_from_slice(b"{}");
                b
            },
            |e| matches!(e, SafeTensorError::HeaderTooLarge),
        ),
    ];
    for (bytes, expected) in cases {
        let path = write(dir.path(), "bad.safetensors", &bytes);
        let err = open(&path).unwrap_err();
        assert!(
            matches!(&err, Error::Safetensors { source, .. } if expected(source)),
            "{err:?}"
        );
    }
    let path = write(
        dir.path(),
        "f4.safetensors",
        &st(
            r#"{"s":{"dtype":"F8_E8M0","shape":[2],"data_offsets":[0,2]}}"#,
            2,
        ),
    );
    let err = open(&path).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedDtype { tensor, dtype, .. } if tensor == "s" && dtype == "F8_E8M0"),
        "{err:?}"
    );

    // .npy: data shorter than the header promises, a void dtype, a malformed header.
    let mut npy = mmtensor_format::npy::encode_header(Dtype::F32, &[10]);
    npy.extend_from_slice(&[0; 39]);
    let err = open(&write(dir.path(), "short.npy", &npy)).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Format {
                source: mmtensor_format::Error::Truncated { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let mut void = mmtensor_format::npy::encode_header(Dtype::BF16, &[2]);
    void.extend_from_slice(&[0; 4]);
    let err = open(&write(dir.path(), "void.npy", &void)).unwrap_err();
    assert!(
        matches!(&err, Error::NpyVoid { descr, .. } if descr == "<V2"),
        "{err:?}"
    );
    assert!(err.to_string().contains("mmt convert"), "{err}");
    let mut bad = mmtensor_format::npy::encode_header(Dtype::F32, &[2]);
    bad[12] = b'!';
    bad.extend_from_slice(&[0; 8]);
    let err = open(&write(dir.path(), "bad.npy", &bad)).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Format {
                source: FormatError::Npy { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

/// A store whose tensors are `x` (F32 [1000, 3], three 4096-byte blocks) and `mask` (BOOL [8]).
fn small_store(dir: &Path, mask: &[u8; 8]) -> (PathBuf, Vec<u8>) {
    let path = dir.join("small.mmt");
    TestStore::new()
        .alignment(64)
        .block_size(4096)
        .tensor(
            "x",
            Dtype::F32,
            &[1000, 3],
            f32_bytes((0..3000).map(|i| i as f32)),
        )
        .tensor("mask", Dtype::Bool, &[8], *mask)
        .write(&path)
        .unwrap();
    (path.clone(), std::fs::read(path).unwrap())
}

#[test]
fn verify_names_the_first_bad_block_with_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, good) = small_store(dir.path(), &[0, 1, 0, 1, 1, 0, 0, 1]);
    let layout = FileLayout::parse(&good, good.len() as u64).unwrap();
    let x = layout.tensor_range(layout.tensor("x").unwrap());

    // Corrupt blocks 2 and 1: the first in file order is reported.
    let mut bad = good.clone();
    bad[x.start as usize + 2 * 4096 + 5] ^= 0x40;
    bad[x.start as usize + 4096 + 7] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    for store in [open(&path).unwrap(), Store::read(&path).unwrap()] {
        let err = store.verify().unwrap_err();
        let want_start = x.start + 4096;
        assert!(
            matches!(&err, Error::ChecksumMismatch { tensor, block: 1, start, end, .. }
                if tensor == "x" && *start == want_start && *end == want_start + 4096),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("`x`") && msg.contains("block 1") && msg.contains(&want_start.to_string()),
            "{msg}"
        );
        let t = store.tensor("x").unwrap();
        // Rows 0..300 are bytes 0..3600: block 0 only, which is intact.
        t.rows(0..300).unwrap().verify().unwrap();
        // Rows 700..1000 start at byte 8400, in block 2.
        let err = t.rows(700..).unwrap().verify().unwrap_err();
        assert!(
            matches!(err, Error::ChecksumMismatch { block: 2, .. }),
            "{err:?}"
        );
        assert!(matches!(
            t.verify(),
            Err(Error::ChecksumMismatch { block: 1, .. })
        ));
        store.tensor("mask").unwrap().verify().unwrap();
    }

    // A padding byte.
    let mut bad = good.clone();
    let pad = layout.padding_ranges()[1].start + 3;
    bad[pad as usize] = 0xee;
    std::fs::write(&path, &bad).unwrap();
    let err = open(&path).unwrap().verify().unwrap_err();
    assert!(
        matches!(err, Error::NonZeroPadding { offset, value: 0xee, .. } if offset == pad),
        "{err:?}"
    );

    // The checksum table itself.
    let mut bad = good.clone();
    let table = layout.checksum_table_range();
    bad[table.start as usize + 9] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let store = open(&path).unwrap();
    let err = store.verify().unwrap_err();
    assert!(
        matches!(err, Error::ChecksumTable { start, .. } if start == table.start),
        "{err:?}"
    );
    assert!(matches!(
        store.tensor("mask").unwrap().verify(),
        Err(Error::ChecksumTable { .. })
    ));
}

#[test]
fn bool_views_refuse_bytes_other_than_zero_and_one() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = small_store(dir.path(), &[0, 1, 1, 7, 0, 2, 0, 0]);
    let layout = FileLayout::parse(&bytes, bytes.len() as u64).unwrap();
    let mask_start = layout.tensor_range(layout.tensor("mask").unwrap()).start;
    let store = open(&path).unwrap();
    let mask = store.tensor("mask").unwrap();
    for err in [
        mask.as_slice::<bool>().unwrap_err(),
        mask.to_vec::<bool>().unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::InvalidBool { tensor, offset, value: 7, .. }
                if tensor == "mask" && *offset == mask_start + 3),
            "{err:?}"
        );
    }
    assert_eq!(
        mask.rows(0..3).unwrap().as_slice::<bool>().unwrap(),
        [false, true, true]
    );
    assert_eq!(mask.bytes().unwrap(), [0, 1, 1, 7, 0, 2, 0, 0]);
    // The checksums match what the writer was given, but verify still reports the first byte that
    // is not a bool, as the views do.
    let err = store.verify().unwrap_err();
    assert!(
        matches!(&err, Error::InvalidBool { offset, value: 7, .. } if *offset == mask_start + 3),
        "{err:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Any few corrupted bytes anywhere in a fixture: open either fails with an error or gives a
    /// store whose every accessor returns (an error or a value) without panicking.
    #[test]
    fn corrupted_fixtures_never_panic(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let name = ["dtypes-a64.mmt", "page-a4096.mmt", "empty.mmt"][which];
        let mut bytes = std::fs::read(fixture(name)).unwrap();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), name, &bytes);
        if let Ok(store) = open(&path) {
            touch_everything(&store);
        }
    }
}

/// A safetensors or `.npy` tensor of shape `[0, 2^40, 2^40]` holds no byte, so the foreign parsers
/// accept it, but its row size overflows: it is refused at open as the same `.mmt` tensor is
/// (`zero_size_shape_with_overflowing_dims_is_refused_at_open`), naming the tensor.
#[test]
fn foreign_zero_size_shape_with_overflowing_dims_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let json =
        r#"{"z":{"dtype":"U8","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]}}"#;
    let mut st = (json.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(json.as_bytes());
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let mut header =
        "{'descr': '|u1', 'fortran_order': False, 'shape': (0, 1099511627776, 1099511627776), }"
            .to_owned();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    for path in [
        write(dir.path(), "zero-size.safetensors", &st),
        write(dir.path(), "z.npy", &npy),
    ] {
        let err = open(&path).expect_err("the store opened");
        assert!(
            matches!(
                &err,
                Error::Format {
                    source: FormatError::ShapeOverflow { tensor, .. },
                    ..
                } if tensor == "z"
            ),
            "{}: {err:?}",
            path.display()
        );
        assert!(err.to_string().contains("`z`"), "{err}");
    }
}
