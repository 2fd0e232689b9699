//! Ragged tensors (format 1.1) and ragged dataset columns (manifest 1.1): the link between values
//! and offsets, the offsets' rules, the versions written, and each refusal with its own message.

use mmtensor_format::{
    check_offsets, offsets_name, ColumnSpec, Dtype, Error, FileLayout, Header, LayoutBuilder,
    Manifest, Preamble, Shard, MANIFEST_FLAG_RAGGED,
};

fn ragged_header() -> (Header, Vec<u8>, u64) {
    let mut b = LayoutBuilder::new();
    b.alignment(64).unwrap().block_size(4096).unwrap();
    b.tensor("label", Dtype::I64, &[3]).unwrap();
    b.ragged("tokens", Dtype::U16, &[10], 3).unwrap();
    let layout = b.build().unwrap();
    let head = layout.encode_head(0);
    (layout.header().clone(), head, layout.file_len())
}

/// `header` encoded with a correct preamble (minor 1), then zeros up to `len`.
fn craft(header: &Header, len: u64) -> Vec<u8> {
    let json = header.to_json();
    let mut pre = Preamble {
        major: 1,
        minor: 1,
        flags: 0,
        header_len: json.len() as u64,
        header_checksum: 0,
    };
    pre.header_checksum = pre.compute_checksum(&json);
    let mut out = pre.encode().to_vec();
    out.extend_from_slice(&json);
    out.resize(len as usize, 0);
    out
}

fn refusal(mutate: impl FnOnce(&mut Header)) -> String {
    let (mut h, _, len) = ragged_header();
    mutate(&mut h);
    let bytes = craft(&h, len + 4096);
    FileLayout::parse(&bytes, bytes.len() as u64)
        .unwrap_err()
        .to_string()
}

#[test]
fn a_ragged_store_is_two_tensors_linked_and_version_1_1() {
    let (h, head, len) = ragged_header();
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["label", "tokens", "tokens.offsets"]);
    assert_eq!(h.tensors[1].offsets.as_deref(), Some("tokens.offsets"));
    assert_eq!(h.tensors[2].shape, [4]);
    assert_eq!(h.tensors[2].dtype, Dtype::U64);
    assert_eq!(&head[8..12], &[1, 0, 1, 0], "major 1, minor 1");
    let json = std::str::from_utf8(&head[32..]).unwrap();
    assert!(json.contains(r#""offsets":"tokens.offsets""#), "{json}");
    let parsed = FileLayout::parse(&head, len).unwrap();
    assert_eq!(parsed.header(), &h);
}

#[test]
fn a_store_without_ragged_tensors_is_still_written_as_1_0() {
    let mut b = LayoutBuilder::new();
    b.tensor("x", Dtype::F32, &[2, 2]).unwrap();
    let head = b.build().unwrap().encode_head(0);
    assert_eq!(&head[8..12], &[1, 0, 0, 0], "major 1, minor 0");
    assert!(!std::str::from_utf8(&head[32..])
        .unwrap()
        .contains("offsets"));
}

#[test]
fn a_1_0_reader_view_is_two_plain_tensors() {
    // What a 1.0 reader does with a 1.1 store: it ignores the unknown field and sees the values
    // and the offsets as two ordinary, valid tensors.
    let (h, _, len) = ragged_header();
    let mut plain = h.clone();
    for t in &mut plain.tensors {
        t.offsets = None;
    }
    let bytes = craft(&plain, len);
    assert!(FileLayout::parse(&bytes, len).is_ok());
}

#[test]
fn broken_links_are_refused_naming_the_tensor() {
    let e = refusal(|h| h.tensors[1].offsets = Some("label".into()));
    assert!(
        e.contains("ragged tensor `tokens`") && e.contains("must be the next tensor"),
        "{e}"
    );
    let e = refusal(|h| {
        h.tensors[2].offsets = None;
        h.tensors[1].offsets = Some("elsewhere".into());
    });
    assert!(e.contains("`elsewhere` must be the next tensor"), "{e}");
    let e = refusal(|h| {
        h.tensors[0].offsets = Some("tokens".into());
    });
    assert!(e.contains("ragged tensor `label`"), "{e}");
    let e = refusal(|h| h.tensors[2].offsets = Some("x".into()));
    assert!(
        e.contains("ragged tensor `tokens`") && e.contains("themselves ragged"),
        "{e}"
    );
}

#[test]
fn offsets_of_the_wrong_kind_are_refused() {
    let (h, _, len) = ragged_header();
    // Rebuild with an offsets tensor of another dtype and rank, linked by hand.
    for (dtype, shape) in [
        (Dtype::I64, vec![4u64]),
        (Dtype::U64, vec![2, 2]),
        (Dtype::U64, vec![0]),
    ] {
        let mut b = LayoutBuilder::new();
        b.alignment(64).unwrap().block_size(4096).unwrap();
        b.tensor("label", Dtype::I64, &[3]).unwrap();
        b.tensor("tokens", Dtype::U16, &[10]).unwrap();
        b.tensor("tokens.offsets", dtype, &shape).unwrap();
        let mut bad = b.build().unwrap().header().clone();
        bad.tensors[1].offsets = Some("tokens.offsets".into());
        let bytes = craft(&bad, len + 4096);
        let e = FileLayout::parse(&bytes, bytes.len() as u64).unwrap_err();
        assert!(
            matches!(&e, Error::Ragged { tensor, reason } if tensor == "tokens" && reason.contains("U64 of shape [rows + 1]")),
            "{e}"
        );
    }
    let _ = h;
    let mut b = LayoutBuilder::new();
    assert!(matches!(
        b.ragged("s", Dtype::U8, &[], 1),
        Err(Error::Ragged { .. })
    ));
    assert!(matches!(
        b.ragged("s", Dtype::U8, &[1], u64::MAX),
        Err(Error::Ragged { .. })
    ));
}

fn le(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn offsets_rules_each_name_the_index() {
    assert!(check_offsets("t", &le(&[0, 3, 3, 10]), 10).is_ok());
    assert!(check_offsets("t", &le(&[0]), 0).is_ok());
    let cases: [(&[u64], u64, u64, &str); 5] = [
        (&[1, 3, 10], 10, 0, "the first offset must be 0"),
        (
            &[0, 5, 4, 10],
            10,
            2,
            "smaller than the offset before it, 5",
        ),
        (&[0, 11, 10], 10, 1, "past the end of the values (10 long)"),
        (
            &[0, 3, 9],
            10,
            2,
            "the last offset must be the values' length, 10",
        ),
        (&[0, u64::MAX], 10, 1, "past the end"),
    ];
    for (offsets, len, index, what) in cases {
        let e = check_offsets("tokens", &le(offsets), len).unwrap_err();
        assert!(
            matches!(&e, Error::RaggedOffsets { tensor, index: i, .. } if tensor == "tokens" && *i == index),
            "{offsets:?}: {e}"
        );
        assert!(e.to_string().contains(what), "{e}");
    }
    assert!(check_offsets("t", &[0u8; 7], 0).is_err());
    assert!(check_offsets("t", &[], 0).is_err());
}

fn ragged_manifest() -> Manifest {
    Manifest::new(
        vec![
            ColumnSpec::ragged("tokens", Dtype::U16, vec![]).unwrap(),
            ColumnSpec::new("label", Dtype::I64, vec![]).unwrap(),
        ],
        vec![Shard::new("shard-00000.mmt", 8192, 7, 3).unwrap()],
    )
    .unwrap()
}

#[test]
fn a_ragged_manifest_sets_version_1_1_and_the_required_flag() {
    let m = ragged_manifest();
    let bytes = m.encode();
    assert_eq!(&bytes[8..12], &[1, 0, 1, 0]);
    assert_eq!(
        u32::from_le_bytes(bytes[12..16].try_into().unwrap()),
        MANIFEST_FLAG_RAGGED
    );
    let body = std::str::from_utf8(&bytes[32..]).unwrap();
    assert!(
        body.contains(r#"{"name":"tokens","dtype":"U16","row_shape":[],"ragged":true}"#),
        "{body}"
    );
    assert!(
        body.contains(r#"{"name":"label","dtype":"I64","row_shape":[]}"#),
        "{body}"
    );
    let back = Manifest::parse(&bytes).unwrap();
    assert_eq!(back, m);
    assert!(back.columns()[0].is_ragged() && !back.columns()[1].is_ragged());

    let plain = Manifest::new(
        vec![ColumnSpec::new("x", Dtype::F32, vec![2]).unwrap()],
        vec![],
    )
    .unwrap();
    let bytes = plain.encode();
    assert_eq!(&bytes[8..16], &[1, 0, 0, 0, 0, 0, 0, 0], "1.0, no flags");
}

#[test]
fn a_ragged_column_without_the_flag_is_refused() {
    let mut bytes = ragged_manifest().encode();
    bytes[12] = 0;
    // Re-seal the checksum over the changed preamble.
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&bytes[..24]);
    h.update(&bytes[32..]);
    let sum = h.digest().to_le_bytes();
    bytes[24..32].copy_from_slice(&sum);
    let e = Manifest::parse(&bytes).unwrap_err().to_string();
    assert!(e.contains("required flag bit 0"), "{e}");
}

#[test]
fn a_column_may_not_take_a_ragged_columns_offsets_name() {
    let e = Manifest::new(
        vec![
            ColumnSpec::ragged("tokens", Dtype::U16, vec![]).unwrap(),
            ColumnSpec::new(offsets_name("tokens"), Dtype::U64, vec![]).unwrap(),
        ],
        vec![],
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::DuplicateColumn { ref name, .. } if name == "tokens.offsets"),
        "{e}"
    );
}

#[test]
fn a_shard_must_hold_each_ragged_column_as_values_then_offsets() {
    let m = ragged_manifest();
    let shard = &m.shards()[0];
    let layout = |rows: u64, link: bool| {
        let mut b = LayoutBuilder::new();
        if link {
            b.ragged("tokens", Dtype::U16, &[7], rows).unwrap();
        } else {
            b.tensor("tokens", Dtype::U16, &[rows]).unwrap();
        }
        b.tensor("label", Dtype::I64, &[3]).unwrap();
        let l = b.build().unwrap();
        let head = l.encode_head(0);
        FileLayout::parse(&head, l.file_len()).unwrap()
    };
    let ok = layout(3, true);
    let s = Shard::new(
        "shard-00000.mmt",
        ok.file_len(),
        ok.preamble().header_checksum,
        3,
    )
    .unwrap();
    assert_eq!(s.mismatch(m.columns(), &ok), None);
    let _ = shard;
    let short = layout(2, true);
    let s = Shard::new(
        "s.mmt",
        short.file_len(),
        short.preamble().header_checksum,
        3,
    )
    .unwrap();
    let why = s.mismatch(m.columns(), &short).unwrap();
    assert!(
        why.contains("[3]") && why.contains("need `tokens.offsets` [4]"),
        "{why}"
    );
    let flat = layout(3, false);
    let s = Shard::new("s.mmt", flat.file_len(), flat.preamble().header_checksum, 3).unwrap();
    let why = s.mismatch(m.columns(), &flat).unwrap();
    assert!(why.contains("need 3"), "{why}");
}

#[test]
fn a_ragged_manifest_refuses_a_row_count_whose_offsets_overflow() {
    let e = Manifest::new(
        vec![ColumnSpec::ragged("tokens", Dtype::U8, vec![]).unwrap()],
        vec![Shard::new("s.mmt", 1, 0, u64::MAX).unwrap()],
    )
    .unwrap_err();
    assert!(matches!(e, Error::ShapeOverflow { .. }), "{e}");
}
