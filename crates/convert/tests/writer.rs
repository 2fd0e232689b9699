//! The streaming writer: byte accounting, atomic replacement and clean-up.

use std::io::{Read, Seek};
use std::path::Path;

use mmtensor_convert::{Error, StoreWriter};
use mmtensor_format::{block_checksums, decode_checksum_table, Dtype, FileLayout, LayoutBuilder};
use proptest::prelude::*;

fn plan(tensors: &[(&str, Dtype, &[u64])]) -> mmtensor_format::Layout {
    let mut b = LayoutBuilder::new();
    b.block_size(4096).unwrap();
    for (n, d, s) in tensors {
        b.tensor(n, *d, s).unwrap();
    }
    b.build().unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn chunked_writes_land_at_aligned_offsets_with_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s.mmt");
    let layout = plan(&[("a", Dtype::U8, &[10_000]), ("b", Dtype::F32, &[3, 3])]);
    let mut w = StoreWriter::create(&target, layout).unwrap();
    let a: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    w.begin_tensor("a").unwrap();
    for c in a.chunks(777) {
        w.write_chunk(c).unwrap();
    }
    w.end_tensor().unwrap();
    let b: Vec<u8> = (0..9).flat_map(|i| (i as f32).to_le_bytes()).collect();
    w.write_tensor_from("b", &b[..]).unwrap();
    assert_eq!(w.finish().unwrap(), target);

    let file = std::fs::read(&target).unwrap();
    let l = FileLayout::parse(&file, file.len() as u64).unwrap();
    let ra = l.tensor_range(l.tensor("a").unwrap());
    let rb = l.tensor_range(l.tensor("b").unwrap());
    assert_eq!(ra.start % 4096, 0);
    assert_eq!(rb.start % 4096, 0);
    assert_eq!(&file[ra.start as usize..ra.end as usize], &a[..]);
    assert_eq!(&file[rb.start as usize..rb.end as usize], &b[..]);
    let table: Vec<u64> =
        decode_checksum_table(&file[l.checksum_table_range().start as usize..]).collect();
    let mut want = block_checksums(&a, 4096);
    want.extend(block_checksums(&b, 4096));
    assert_eq!(table, want);
    assert_eq!(entries(dir.path()), ["s.mmt"]);
}

#[test]
fn too_many_bytes_is_an_error_not_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s.mmt");
    let mut w = StoreWriter::create(&target, plan(&[("a", Dtype::U16, &[4])])).unwrap();
    w.begin_tensor("a").unwrap();
    w.write_chunk(&[0; 6]).unwrap();
    let err = w.write_chunk(&[0; 3]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyBytes {
                expected: 8,
                given: 9,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("`a`"));
    drop(w);
    assert!(
        entries(dir.path()).is_empty(),
        "a dropped writer leaves nothing"
    );
}

#[test]
fn too_few_bytes_and_out_of_order_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s.mmt");
    let layout = plan(&[("a", Dtype::U8, &[4]), ("b", Dtype::U8, &[4])]);
    // Any error poisons the writer, so each misuse gets a fresh one.
    let mut w = StoreWriter::create(&target, layout.clone()).unwrap();
    assert!(matches!(w.write_chunk(&[1]), Err(Error::NoOpenTensor)));
    drop(w);
    let mut w = StoreWriter::create(&target, layout.clone()).unwrap();
    let err = w.begin_tensor("b").unwrap_err();
    assert!(
        matches!(&err, Error::OutOfOrder { expected: Some(e), .. } if e == "a"),
        "{err}"
    );
    drop(w);
    let mut w = StoreWriter::create(&target, layout.clone()).unwrap();
    w.begin_tensor("a").unwrap();
    w.write_chunk(&[1, 2]).unwrap();
    assert!(matches!(
        w.end_tensor(),
        Err(Error::TooFewBytes {
            given: 2,
            expected: 4,
            ..
        })
    ));
    drop(w);
    let mut w = StoreWriter::create(&target, layout).unwrap();
    w.write_tensor("a", &[1, 2, 3, 4]).unwrap();
    let err = w.finish().unwrap_err();
    assert!(
        matches!(&err, Error::TooFewBytes { tensor, given: 0, .. } if tensor == "b"),
        "{err}"
    );
    assert!(
        entries(dir.path()).is_empty(),
        "a failed finish leaves nothing"
    );
}

#[test]
fn regression_finish_without_end_tensor_said_too_few_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s.mmt");
    let mut w = StoreWriter::create(&target, plan(&[("a", Dtype::U8, &[4])])).unwrap();
    w.begin_tensor("a").unwrap();
    w.write_chunk(&[1, 2, 3, 4]).unwrap();
    // Before the fix: "given 4 bytes, fewer than the 4 its shape and dtype hold".
    let err = w.finish().unwrap_err();
    assert!(
        matches!(&err, Error::NotEnded { tensor, length: 4 } if tensor == "a"),
        "{err}"
    );
    assert!(err.to_string().contains("end_tensor"), "{err}");
    assert!(entries(dir.path()).is_empty());
}

fn assert_poisoned(w: &mut StoreWriter, target: &Path) {
    for err in [
        w.write_chunk(&[0; 2]).unwrap_err(),
        w.end_tensor().unwrap_err(),
        w.begin_tensor("a").unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::Poisoned { path } if path == target),
            "{err}"
        );
        assert!(err.to_string().contains("s.mmt"), "{err}");
    }
}

#[test]
fn regression_a_writer_goes_on_after_too_many_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s.mmt");
    let mut w = StoreWriter::create(&target, plan(&[("a", Dtype::U16, &[4])])).unwrap();
    w.begin_tensor("a").unwrap();
    w.write_chunk(&[0; 6]).unwrap();
    assert!(matches!(
        w.write_chunk(&[0; 3]),
        Err(Error::TooManyBytes { .. })
    ));
    // Before the fix the writer took these bytes and committed the store.
    assert_poisoned(&mut w, &target);
    let err = w.finish().unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn replacing_a_target_never_truncates_what_a_reader_holds() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s.mmt");
    let old = plan(&[("a", Dtype::U8, &[5000])]);
    let mut w = StoreWriter::create(&target, old).unwrap();
    w.write_tensor("a", &[7u8; 5000]).unwrap();
    w.finish().unwrap();
    let before = std::fs::read(&target).unwrap();
    // A reader that opened the old file (as a mapping would) keeps seeing all of its bytes.
    let mut reader = std::fs::File::open(&target).unwrap();

    let new = plan(&[("b", Dtype::U8, &[3])]);
    let mut w = StoreWriter::create(&target, new).unwrap();
    w.write_tensor("b", &[1, 2, 3]).unwrap();
    w.finish().unwrap();

    let mut held = Vec::new();
    reader.rewind().unwrap();
    reader.read_to_end(&mut held).unwrap();
    assert_eq!(held, before);
    let now = std::fs::read(&target).unwrap();
    assert!(FileLayout::parse(&now, now.len() as u64)
        .unwrap()
        .tensor("b")
        .is_some());
    assert_eq!(entries(dir.path()), ["s.mmt"]);
}

#[test]
fn an_unfinished_writer_leaves_the_old_target_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s.mmt");
    std::fs::write(&target, b"previous contents").unwrap();
    let mut w = StoreWriter::create(&target, plan(&[("a", Dtype::U8, &[4])])).unwrap();
    w.begin_tensor("a").unwrap();
    w.write_chunk(&[1, 2]).unwrap();
    assert_eq!(
        entries(dir.path()).len(),
        2,
        "the temporary file sits beside the target"
    );
    drop(w);
    assert_eq!(std::fs::read(&target).unwrap(), b"previous contents");
    assert_eq!(entries(dir.path()), ["s.mmt"]);
}

#[test]
fn missing_folder_is_reported_with_its_path() {
    let err = StoreWriter::create("/nonexistent/dir/s.mmt", plan(&[])).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/dir"), "{err}");
}

#[test]
fn empty_store_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("e.mmt");
    StoreWriter::create(&target, plan(&[]))
        .unwrap()
        .finish()
        .unwrap();
    let file = std::fs::read(&target).unwrap();
    let l = FileLayout::parse(&file, file.len() as u64).unwrap();
    assert!(l.header().tensors.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_sets_written_in_random_chunks_read_back_equal(
        tensors in proptest::collection::vec(
            (proptest::sample::select(Dtype::ALL.to_vec()), proptest::collection::vec(0u64..40, 0..3)),
            0..5,
        ),
        chunk in 1usize..5000,
        seed in any::<u8>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("p.mmt");
        let mut b = LayoutBuilder::new();
        b.block_size(4096).unwrap().alignment(64).unwrap();
        let names: Vec<String> = (0..tensors.len()).map(|i| format!("t{i}")).collect();
        for ((d, s), n) in tensors.iter().zip(&names) {
            b.tensor(n, *d, s).unwrap();
        }
        let layout = b.build().unwrap();
        let data: Vec<Vec<u8>> = layout
            .header()
            .tensors
            .iter()
            .map(|t| (0..t.length).map(|j| (j as u8) ^ seed).collect())
            .collect();
        let mut w = StoreWriter::create(&target, layout).unwrap();
        for (n, bytes) in names.iter().zip(&data) {
            w.begin_tensor(n).unwrap();
            for c in bytes.chunks(chunk) {
                w.write_chunk(c).unwrap();
            }
            w.end_tensor().unwrap();
        }
        w.finish().unwrap();
        let file = std::fs::read(&target).unwrap();
        let l = FileLayout::parse(&file, file.len() as u64).unwrap();
        for (t, bytes) in l.header().tensors.iter().zip(&data) {
            let r = l.tensor_range(t);
            prop_assert_eq!(&file[r.start as usize..r.end as usize], &bytes[..]);
        }
    }
}

#[test]
fn regression_a_250_byte_target_name_gets_a_temporary_file_within_name_max() {
    // Before: `.NAME.XXXXXX.partial` added 16 bytes to the name and creating it failed with
    // ENAMETOOLONG for legal names of 240 to 255 bytes.
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}.mmt", "n".repeat(246));
    assert_eq!(name.len(), 250);
    let target = dir.path().join(&name);
    let mut w = StoreWriter::create(&target, plan(&[("x", Dtype::U8, &[3])])).unwrap();
    let tmp = entries(dir.path());
    assert_eq!(tmp.len(), 1);
    assert!(
        tmp[0].len() <= 255 && tmp[0].ends_with(".partial"),
        "{tmp:?}"
    );
    assert!(mmtensor_convert::AtomicFile::is_temp_of(
        &target,
        std::ffi::OsStr::new(&tmp[0])
    ));
    w.write_tensor("x", &[1, 2, 3]).unwrap();
    w.finish().unwrap();
    assert_eq!(entries(dir.path()), [name]);
}

#[test]
fn a_checksum_table_written_in_several_pieces_verifies() {
    // `finish` encodes the table in pieces of 8192 checksums; 16387 blocks of 4 KiB take three
    // pieces, the last one partial.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s.mmt");
    let blocks = 2 * 8192 + 3;
    let mut w = StoreWriter::create(&target, plan(&[("a", Dtype::U8, &[blocks * 4096])])).unwrap();
    w.begin_tensor("a").unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    let mut left = blocks * 4096;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.write_chunk(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    w.end_tensor().unwrap();
    w.finish().unwrap();
    let store = mmtensor::Store::read(&target).unwrap();
    store.verify().unwrap();
    let file = std::fs::read(&target).unwrap();
    let l = FileLayout::parse(&file, file.len() as u64).unwrap();
    let table: Vec<u64> =
        decode_checksum_table(&file[l.checksum_table_range().start as usize..]).collect();
    assert_eq!(table.len() as u64, blocks);
}
