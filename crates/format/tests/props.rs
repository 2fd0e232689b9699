//! Property tests: parsing never panics, no single-byte corruption of a header gets through, and
//! the validator (not only the checksum or the JSON parser) refuses every broken rule.

use mmtensor_format::{
    block_checksum, block_checksums, encode_checksum_table, Dtype, Error, FileLayout, Header,
    LayoutBuilder, Preamble,
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
        prop_assert_eq!(parsed.header().alignment, set.1);
        prop_assert_eq!(parsed.header().tensors.len(), set.0.len());
        for (t, (n, d, s)) in parsed.header().tensors.iter().zip(&set.0) {
            prop_assert_eq!(&t.name, n);
            prop_assert_eq!(t.dtype, *d);
            prop_assert_eq!(&t.shape, s);
            prop_assert_eq!((parsed.data_start() + t.offset) % set.1, 0);
        }
        let meta: Vec<_> = parsed.header().metadata.clone().into_iter().collect();
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

    /// Corruptions that keep the header well-formed JSON with a correct checksum, so only
    /// `Header::validate` can catch them: this fails if validation is removed or weakened, which a
    /// random byte flip (caught by the header checksum) would not notice.
    #[test]
    fn semantic_header_corruption_is_refused_by_validate(
        set in tensor_set(),
        kind in 0usize..6,
        pick in any::<proptest::sample::Index>(),
    ) {
        let file = encode(&set);
        let layout = FileLayout::parse(&file, file.len() as u64).unwrap();
        let mut h = layout.header().clone();
        let n = h.tensors.len();
        prop_assume!(n >= if kind == 2 { 2 } else { 1 } || kind == 3 || kind == 4);
        let i = if n == 0 { 0 } else { pick.index(n) };
        match kind {
            0 => h.tensors[i].offset += 1,
            1 => h.tensors[i].length += 1,
            2 => h.tensors[n - 1].name = h.tensors[0].name.clone(),
            3 => h.checksums.length += 8,
            4 => h.checksums.offset += 4,
            _ => h.tensors[i].name = String::new(),
        }
        // Re-encode with a correct checksum and the same data section after the new header.
        let json = h.to_json();
        let mut pre = Preamble { header_len: json.len() as u64, ..*layout.preamble() };
        pre.header_checksum = pre.compute_checksum(&json);
        let data_start = pre.data_start(h.alignment).unwrap();
        let mut bad = pre.encode().to_vec();
        bad.extend_from_slice(&json);
        bad.resize(data_start as usize, 0);
        bad.extend_from_slice(&file[layout.data_start() as usize..]);
        // The JSON itself is fine: only the validator can refuse it ...
        let reread = Header::from_json(&json).unwrap();
        let err = reread.validate(data_start, bad.len() as u64).unwrap_err();
        let expected = match kind {
            0 => matches!(err, Error::Misaligned { .. }),
            1 => matches!(err, Error::LengthMismatch { .. }),
            2 => matches!(err, Error::DuplicateName { .. }),
            3 | 4 => matches!(err, Error::ChecksumTable { .. }),
            _ => matches!(err, Error::InvalidName { .. }),
        };
        prop_assert!(expected, "kind {}: {}", kind, err);
        // ... and the reader's one path gives exactly its error.
        prop_assert_eq!(FileLayout::parse(&bad, bad.len() as u64).unwrap_err(), err);
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

prop_compose! {
    /// A random valid manifest: 1 to 4 columns, 0 to 6 shards.
    fn manifest()(
        columns in proptest::collection::vec(
            (dtype(), proptest::collection::vec(0u64..5, 0..3)),
            1..5,
        ),
        shards in proptest::collection::vec((any::<u64>(), any::<u64>(), 0u64..1_000_000), 0..7),
    ) -> mmtensor_format::Manifest {
        use mmtensor_format::{ColumnSpec, Manifest, Shard};
        let columns = columns
            .into_iter()
            .enumerate()
            .map(|(i, (d, s))| ColumnSpec::new(format!("c{i}/é"), d, s).unwrap())
            .collect();
        let shards = shards
            .into_iter()
            .enumerate()
            .map(|(i, (len, sum, rows))| Shard::new(format!("shard-{i:05}.mmt"), len, sum, rows).unwrap())
            .collect();
        Manifest::new(columns, shards).unwrap()
    }
}

proptest! {
    /// A manifest survives encode then parse, and encoding is canonical: what was parsed encodes
    /// to the same bytes.
    #[test]
    fn manifest_round_trip(m in manifest()) {
        let bytes = m.encode();
        let back = mmtensor_format::Manifest::parse(&bytes).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.encode(), bytes);
        let total: u64 = m.shards().iter().map(|s| s.num_rows()).sum();
        prop_assert_eq!(m.num_rows(), total);
    }

    /// No single-byte change of a manifest is accepted: the checksum covers every byte but itself,
    /// and a changed checksum no longer matches.
    #[test]
    fn manifest_single_byte_corruption_is_refused(
        m in manifest(),
        pos in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut bytes = m.encode();
        let i = pos.index(bytes.len());
        bytes[i] ^= xor;
        prop_assert!(mmtensor_format::Manifest::parse(&bytes).is_err());
    }

    /// Parsing arbitrary bytes never panics.
    #[test]
    fn manifest_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = mmtensor_format::Manifest::parse(&bytes);
    }
}
