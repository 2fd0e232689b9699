//! A store's fingerprint identifies its file and the version of it opened, and reopening a path
//! against a fingerprint refuses a file that was replaced, rewritten or truncated since.

use std::collections::HashMap;
use std::path::Path;

use std::os::unix::fs::MetadataExt;

use mmtensor::{Error, FileStamp, Fingerprint, Format, Store};
use mmtensor_format::{Dtype, Preamble};
use mmtensor_testsupport::{f32_bytes, TestStore};
use safetensors::tensor::TensorView;

fn open(path: &Path) -> Store {
    // SAFETY: each test owns its temporary files and changes them only by renaming new files over
    // them, or after every store of the old file is dropped.
    unsafe { Store::open(path) }.unwrap()
}

fn open_expecting(path: &Path, fp: &Fingerprint) -> mmtensor::Result<Store> {
    // SAFETY: as `open`.
    unsafe { Store::open_expecting(path, fp) }
}

/// Both ways of reopening a path against `fp`: mapped and copied.
fn reopen_both(path: &Path, fp: &Fingerprint) -> [mmtensor::Result<Store>; 2] {
    [open_expecting(path, fp), Store::read_expecting(path, fp)]
}

fn mmt(path: &Path, values: impl IntoIterator<Item = f32>, rows: u64) {
    TestStore::new()
        .tensor("x", Dtype::F32, &[rows, 4], f32_bytes(values))
        .write(path)
        .unwrap();
}

/// Writes `.tmp` beside `path` and renames it over `path`, as mmtensor's writer replaces files.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn an_mmt_fingerprint_is_the_header_checksum_the_length_and_the_file_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.mmt");
    mmt(&path, (0..32).map(|i| i as f32), 8);
    let bytes = std::fs::read(&path).unwrap();
    let pre = Preamble::parse(&bytes).unwrap();

    let mapped = open(&path);
    let copied = Store::read(&path).unwrap();
    let fp = mapped.fingerprint();
    assert_eq!(copied.fingerprint(), fp, "mapped and copied stores agree");
    assert_eq!(fp.format(), Format::Mmt);
    assert_eq!(fp.len(), bytes.len() as u64);
    assert_eq!(fp.header_xxh3(), pre.header_checksum);
    // The stamp is what `stat` says of the file (Python's `os.stat`: st_ino, st_mtime_ns).
    let meta = std::fs::metadata(&path).unwrap();
    let nanos = u32::try_from(meta.mtime_nsec()).unwrap();
    assert_eq!(fp.file(), FileStamp::new(meta.ino(), meta.mtime(), nanos));
    assert_eq!(
        fp.file().mtime_ns(),
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(nanos)
    );
    let (secs, nanos) = fp.file().mtime();
    let stamp = FileStamp::new(fp.file().inode(), secs, nanos);
    let rebuilt = Fingerprint::new(fp.format(), fp.len(), fp.header_xxh3(), stamp);
    assert_eq!(rebuilt, fp);

    for again in reopen_both(&path, &rebuilt) {
        let again = again.unwrap();
        assert_eq!(again.fingerprint(), fp);
        assert_eq!(
            again.tensor("x").unwrap().as_slice::<f32>().unwrap()[5],
            5.0
        );
    }
    mapped.check_fingerprint(&fp).unwrap();
}

#[test]
fn a_store_renamed_over_the_path_is_refused_even_with_the_same_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.mmt");
    mmt(&path, (0..32).map(|i| i as f32), 8);
    let old = open(&path);
    let fp = old.fingerprint();
    // Same names, dtype, shape and length; one value differs. The block checksum table differs,
    // and with it the header that records the table's hash.
    let other = dir.path().join("b.mmt");
    mmt(
        &other,
        (0..32).map(|i| if i == 31 { -1.0 } else { i as f32 }),
        8,
    );
    std::fs::rename(&other, &path).unwrap();

    for reopened in reopen_both(&path, &fp) {
        let err = reopened.expect_err("a changed file is refused");
        let Error::Changed {
            path: p,
            expected,
            len,
            found: Some(found),
            source: None,
        } = &err
        else {
            panic!("expected Changed with the new fingerprint, got {err:?}");
        };
        assert_eq!((p, *expected, *len), (&path, fp, fp.len()));
        assert_eq!(found.len(), fp.len());
        assert_ne!(found.header_xxh3(), fp.header_xxh3());
        let text = err.to_string();
        assert!(
            text.contains("the file changed since the store was first opened"),
            "{text}"
        );
        assert!(
            text.contains(&format!("{:016x}", fp.header_xxh3())),
            "{text}"
        );
        assert!(
            text.contains(&format!("{:016x}", found.header_xxh3())),
            "{text}"
        );
    }
    // The old store still reads the old file.
    assert_eq!(
        old.tensor("x").unwrap().as_slice::<f32>().unwrap()[31],
        31.0
    );
    assert!(old.check_fingerprint(&fp).is_ok());
}

#[test]
fn a_truncated_file_is_refused_as_changed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.mmt");
    mmt(&path, (0..64).map(|i| i as f32), 16);
    let fp = Store::read(&path).unwrap().fingerprint();
    // No store of the file lives any more, so cutting it in place is safe here.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(fp.len() - 64).unwrap();
    drop(file);

    let [mapped, copied] = reopen_both(&path, &fp);
    // Mapped: the open reads the header, which no longer fits the file.
    let err = mapped.err().unwrap();
    assert!(
        matches!(&err, Error::Changed { found: None, source: Some(s), len, .. }
            if matches!(**s, Error::Format { .. }) && *len == fp.len() - 64),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("is not a valid tensor file"),
        "{err}"
    );
    // Copied: refused for its length alone, before reading it.
    let err = copied.err().unwrap();
    assert!(
        matches!(&err, Error::Changed { found: None, source: None, len, .. } if *len == fp.len() - 64),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with(&format!("it is now {} bytes long", fp.len() - 64)),
        "{err}"
    );
}

#[test]
fn a_file_that_is_no_longer_a_tensor_file_is_refused_as_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.mmt");
    mmt(&path, (0..32).map(|i| i as f32), 8);
    let fp = Store::read(&path).unwrap().fingerprint();
    replace(&path, &vec![b'z'; fp.len() as usize]);
    for reopened in reopen_both(&path, &fp) {
        let err = reopened.err().unwrap();
        assert!(
            matches!(&err, Error::Changed { source: Some(s), .. } if matches!(**s, Error::UnknownFormat { .. })),
            "{err:?}"
        );
    }
}

#[test]
fn a_file_that_is_gone_is_reported_as_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.mmt");
    mmt(&path, (0..32).map(|i| i as f32), 8);
    let fp = Store::read(&path).unwrap().fingerprint();
    std::fs::remove_file(&path).unwrap();
    for reopened in reopen_both(&path, &fp) {
        let err = reopened.err().unwrap();
        assert!(
            matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{err:?}"
        );
    }
}

#[test]
fn a_large_mmt_header_parsed_from_the_mapping_has_the_same_fingerprint() {
    // More than the first 4 KiB read at open: the header is parsed from the mapping instead.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.mmt");
    let mut store = TestStore::new();
    for i in 0..200 {
        store = store.tensor(
            &format!("tensor_with_a_long_name_{i:04}"),
            Dtype::U8,
            &[1],
            [i as u8],
        );
    }
    store.write(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let pre = Preamble::parse(&bytes).unwrap();
    assert!(pre.header_len > 4096);
    let fp = open(&path).fingerprint();
    assert_eq!(fp.header_xxh3(), pre.header_checksum);
    assert_eq!(Store::read(&path).unwrap().fingerprint(), fp);
}

fn safetensors_file(path: &Path, w: &[f32], name: &str) {
    let bytes = f32_bytes(w.iter().copied());
    let view = TensorView::new(safetensors::Dtype::F32, vec![w.len()], &bytes).unwrap();
    let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let tmp = path.with_extension("tmp");
    safetensors::serialize_to_file([(name, view)], Some(meta), &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_safetensors_fingerprint_hashes_the_header_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    safetensors_file(&path, &[1.0, 2.0, 3.0, 4.0], "w");
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;

    let fp = open(&path).fingerprint();
    assert_eq!(Store::read(&path).unwrap().fingerprint(), fp);
    assert_eq!(fp.format(), Format::Safetensors);
    assert_eq!(fp.len(), bytes.len() as u64);
    assert_eq!(
        fp.header_xxh3(),
        mmtensor_format::block_checksum(&bytes[..8 + header_len])
    );
    for again in reopen_both(&path, &fp) {
        again.unwrap();
    }

    // Another tensor name, same length: the header differs.
    safetensors_file(&path, &[1.0, 2.0, 3.0, 4.0], "v");
    for reopened in reopen_both(&path, &fp) {
        assert!(matches!(
            reopened,
            Err(Error::Changed { found: Some(_), .. })
        ));
    }

    // Other values under the same header: safetensors has no checksums, so the header hash is
    // the same, and the file's stamp is what differs (defect 8 of the second review).
    safetensors_file(&path, &[9.0, 2.0, 3.0, 4.0], "w");
    let now = open(&path).fingerprint();
    assert_eq!((now.len(), now.header_xxh3()), (fp.len(), fp.header_xxh3()));
    assert_ne!(now, fp);
}

#[test]
fn an_npy_fingerprint_hashes_the_header_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    let npy = |shape: &[u64], n: usize| {
        let mut file = mmtensor_format::npy::encode_header(Dtype::F32, shape);
        let header = file.len();
        file.extend_from_slice(&f32_bytes((0..n).map(|i| i as f32)));
        (file, header)
    };
    let (file, header) = npy(&[3, 4], 12);
    replace(&path, &file);
    let fp = open(&path).fingerprint();
    assert_eq!(Store::read(&path).unwrap().fingerprint(), fp);
    assert_eq!(fp.format(), Format::Npy);
    assert_eq!(fp.len(), file.len() as u64);
    assert_eq!(
        fp.header_xxh3(),
        mmtensor_format::block_checksum(&file[..header])
    );

    // The same bytes, another shape: the header differs, the length does not.
    let (other, _) = npy(&[4, 3], 12);
    assert_eq!(other.len(), file.len());
    replace(&path, &other);
    for reopened in reopen_both(&path, &fp) {
        let err = reopened.err().unwrap();
        assert!(
            matches!(err, Error::Changed { found: Some(f), .. } if f.format() == Format::Npy && f.len() == fp.len())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Defect 8 of the second review: a `.npy` or `.safetensors` file replaced (by rename, or in place)
// with the same header and length but other data kept its fingerprint, so a store pickled into a
// worker reopened the new data with no `Error::Changed`. The fingerprint now also holds the
// file's inode number and modification time, taken from the descriptor the store was opened from.
// ---------------------------------------------------------------------------------------------

/// The bytes of one small file of each format, and the same file with one data byte changed: the
/// same header and the same length, other data. (For `.mmt`, whose header covers the data's
/// checksums, that is a corrupted copy: what `verify` finds.)
fn same_header_other_data(format: Format) -> (Vec<u8>, Vec<u8>) {
    let values: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let bytes = match format {
        Format::Mmt => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.mmt");
            mmt(&path, values.iter().copied(), 8);
            std::fs::read(&path).unwrap()
        }
        Format::Npy => {
            let mut file = mmtensor_format::npy::encode_header(Dtype::F32, &[8, 4]);
            file.extend_from_slice(&f32_bytes(values.iter().copied()));
            file
        }
        Format::Safetensors => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.safetensors");
            safetensors_file(&path, &values, "x");
            std::fs::read(&path).unwrap()
        }
        other => panic!("no sample file for {other}"),
    };
    // The last tensor byte: every format here ends with its data (`.mmt` pads the data to its
    // alignment, so step back over the padding to the last value's bytes).
    let data_end = match format {
        Format::Mmt => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.mmt");
            std::fs::write(&path, &bytes).unwrap();
            let store = Store::read(&path).unwrap();
            let t = store.tensor("x").unwrap();
            t.byte_range().end as usize
        }
        _ => bytes.len(),
    };
    let mut other = bytes.clone();
    other[data_end - 1] ^= 0x40;
    assert_ne!(other, bytes);
    (bytes, other)
}

const FORMATS: [(Format, &str); 3] = [
    (Format::Npy, "x.npy"),
    (Format::Safetensors, "m.safetensors"),
    (Format::Mmt, "a.mmt"),
];

/// Sets the file's modification time to 2001, so that a write made by the test moves it whatever
/// the filesystem's timestamp granularity (a write in the same clock tick as the file's creation
/// could otherwise leave it unchanged: a limit the fingerprint documents).
fn age(path: &Path) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000))
        .unwrap();
}

#[test]
fn a_file_renamed_over_the_path_with_the_same_header_and_length_is_refused() {
    for (format, name) in FORMATS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let (bytes, other) = same_header_other_data(format);
        replace(&path, &bytes);
        // The parent keeps its store open, as a DataLoader's main process does.
        let old = open(&path);
        let fp = old.fingerprint();
        assert_eq!(fp.format(), format);
        replace(&path, &other);
        for reopened in reopen_both(&path, &fp) {
            let err = reopened.expect_err(&format!("{format}: a file renamed over the path"));
            let Error::Changed {
                found: Some(found), ..
            } = &err
            else {
                panic!("{format}: expected Changed with the new fingerprint, got {err:?}");
            };
            // Everything the old fingerprint held but the stamp is the same: another file.
            assert_eq!(
                (found.format(), found.len(), found.header_xxh3()),
                (fp.format(), fp.len(), fp.header_xxh3()),
                "{format}"
            );
            assert_ne!(found.file().inode(), fp.file().inode(), "{format}");
            let text = err.to_string();
            assert!(
                text.contains("the file changed since the store was first opened"),
                "{text}"
            );
            assert!(
                text.contains(&format!("inode {}", fp.file().inode()))
                    && text.contains(&format!("inode {}", found.file().inode()))
                    && text
                        .ends_with("but another file at the path or the same file written since"),
                "{text}"
            );
        }
        // The old store still reads the old file.
        assert_eq!(
            old.tensor("x").unwrap().as_slice::<f32>().unwrap()[31],
            31.0
        );
    }
}

#[test]
fn a_file_rewritten_in_place_at_the_same_length_is_refused() {
    use std::os::unix::fs::FileExt;
    for (format, name) in FORMATS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let (bytes, other) = same_header_other_data(format);
        replace(&path, &bytes);
        age(&path);
        // A copy, so that no mapping of the file lives while it is written in place below.
        let fp = Store::read(&path).unwrap().fingerprint();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&other, 0).unwrap();
        drop(file);
        for reopened in reopen_both(&path, &fp) {
            let err = reopened.expect_err(&format!("{format}: a file rewritten in place"));
            // The same inode and header; the write moved the modification time.
            assert!(
                matches!(&err, Error::Changed { found: Some(f), .. }
                    if f.len() == fp.len() && f.header_xxh3() == fp.header_xxh3()
                        && f.file().inode() == fp.file().inode()
                        && f.file().mtime_ns() != fp.file().mtime_ns()),
                "{format}: {err:?}"
            );
        }
    }
}

#[test]
fn a_write_in_place_that_sets_the_modification_time_back_is_not_detected() {
    // The documented limit (see `Fingerprint`): the same inode, length, header and modification
    // time. Pinned so that the documentation changes if the fingerprint ever detects it.
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    let (bytes, other) = same_header_other_data(Format::Npy);
    replace(&path, &bytes);
    age(&path);
    let fp = Store::read(&path).unwrap().fingerprint();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&other, 0).unwrap();
    drop(file);
    age(&path);
    let again = Store::read_expecting(&path, &fp).unwrap();
    assert_ne!(
        again.tensor("x").unwrap().as_slice::<f32>().unwrap()[31],
        31.0
    );
}

#[test]
fn an_unchanged_file_of_every_format_reopens() {
    for (format, name) in FORMATS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let (bytes, _) = same_header_other_data(format);
        replace(&path, &bytes);
        let mapped = open(&path);
        let fp = mapped.fingerprint();
        assert_eq!(Store::read(&path).unwrap().fingerprint(), fp, "{format}");
        for again in reopen_both(&path, &fp) {
            let again = again.unwrap();
            assert_eq!(again.fingerprint(), fp, "{format}");
            assert_eq!(
                again.tensor("x").unwrap().as_slice::<f32>().unwrap()[31],
                31.0
            );
        }
    }
}
