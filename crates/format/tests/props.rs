//! Property tests: parsing never panics, and no single-byte corruption of a header gets through.

use mmtensor_format::{
    block_checksum, block_checksums, encode_checksum_table, Dtype, FileLayout, LayoutBuilder,
};
use proptest::prelude::*;

/// Tensors (name, dtype, shape), alignment and metadata of one random store.
type Set = (Vec<(String, Dtype, Vec<u64>)>, u64, Vec<(String, String)>);

fn dtype() -> impl Strategy<Value = Dtype> {
    proptest::sample::select(Dtype::ALL.to_vec())
}

prop_compose! {
    fn tensor_set()(
        tensors in proptest::collection::vec(
            (dtype(), proptest::collection::vec(0u64..6, 0..4)),
            0..6,
        ),
        align_pow in 6u32..13,
        meta in proptest::collection::btree_map("[a-z]{1,6}", "\\PC{0,8}", 0..3),
    ) -> Set {
        let tensors = tensors
            .into_iter()
            .enumerate()
            .map(|(i, (d, s))| (format!("t{i}/é"), d, s))
            .collect();
        (tensors, 1u64 << align_pow, meta.into_iter().collect())
    }
}

/// Lays a whole file out in memory as the writer would.
fn encode(set: &Set) -> Vec<u8> {
    let mut b = LayoutBuilder::new();
    b.alignment(set.1).unwrap().block_size(4096).unwrap();
    for (k, v) in &set.2 {
        b.metadata(k, v).unwrap();
    }
    for (n, d, s) in &set.0 {
        b.tensor(n, *d, s).unwrap();
    }
    let layout = b.build().unwrap();
    let mut sums = Vec::new();
    let mut body = Vec::new();
    for (i, t) in layout.header().tensors.iter().enumerate() {
        let bytes: Vec<u8> = (0..t.length)
            .map(|j| (j as u8).wrapping_add(i as u8))
            .collect();
        sums.extend(block_checksums(&bytes, 4096));
        body.push(bytes);
    }
    let table = encode_checksum_table(&sums);
    let mut out = layout.encode_head(block_checksum(&table));
    for (i, bytes) in body.iter().enumerate() {
        out.resize(layout.tensor_start(i).unwrap() as usize, 0);
        out.extend_from_slice(bytes);
    }
    out.resize(layout.checksum_table_start() as usize, 0);
    out.extend_from_slice(&table);
    assert_eq!(out.len() as u64, layout.file_len());
    out
}

proptest! {
    #[test]
    fn written_sets_parse_back_equal(set in tensor_set()) {
        let file = encode(&set);
        let parsed = FileLayout::parse(&file, file.len() as u64).unwrap();
        prop_assert_eq!(parsed.header.alignment, set.1);
        prop_assert_eq!(parsed.header.tensors.len(), set.0.len());
        for (t, (n, d, s)) in parsed.header.tensors.iter().zip(&set.0) {
            prop_assert_eq!(&t.name, n);
            prop_assert_eq!(t.dtype, *d);
            prop_assert_eq!(&t.shape, s);
            prop_assert_eq!((parsed.data_start + t.offset) % set.1, 0);
        }
        let meta: Vec<_> = parsed.header.metadata.clone().into_iter().collect();
        prop_assert_eq!(meta, set.2.clone());
        for r in parsed.padding_ranges() {
            prop_assert!(file[r.start as usize..r.end as usize].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn single_byte_header_corruption_is_rejected(
        set in tensor_set(),
        pos in any::<proptest::sample::Index>(),
        byte in 1u8..=255,
    ) {
        let file = encode(&set);
        let header_end = 32 + u64::from_le_bytes(file[16..24].try_into().unwrap()) as usize;
        let i = pos.index(header_end);
        let mut bad = file.clone();
        bad[i] ^= byte;
        prop_assert!(FileLayout::parse(&bad, bad.len() as u64).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = FileLayout::parse(&bytes, bytes.len() as u64);
        let mut with_magic = mmtensor_format::MAGIC.to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = FileLayout::parse(&with_magic, with_magic.len() as u64);
        let _ = FileLayout::parse(&with_magic, u64::MAX);
    }

    #[test]
    fn arbitrary_npy_headers_never_panic(
        body in "[{}()\\[\\]',: a-zA-Z0-9<>|=_-]{0,120}",
        version in 0u8..4,
    ) {
        let mut v = mmtensor_format::npy::NPY_MAGIC.to_vec();
        v.extend_from_slice(&[version, 0]);
        v.extend_from_slice(&(body.len() as u16).to_le_bytes());
        v.extend_from_slice(body.as_bytes());
        let _ = mmtensor_format::npy::parse_header(&v);
        let _ = mmtensor_format::npy::parse_header(&v[..v.len() / 2]);
    }

    #[test]
    fn file_truncation_is_rejected(set in tensor_set(), cut in any::<proptest::sample::Index>()) {
        let file = encode(&set);
        let n = cut.index(file.len());
        prop_assert!(FileLayout::parse(&file[..n], n as u64).is_err());
    }
}
