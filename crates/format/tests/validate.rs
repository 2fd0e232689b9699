//! Every rule of the format, broken one at a time: each must give its own typed error.

use mmtensor_format::{
    Alignment, BlockSize, Dtype, Error, FileLayout, Header, LayoutBuilder, Preamble, MAGIC,
    MAX_HEADER_LEN, PREAMBLE_LEN,
};

/// A valid planned header for two tensors, alignment 64, block size 4096.
fn base() -> Header {
    let mut b = LayoutBuilder::new();
    b.alignment(64).unwrap().block_size(4096).unwrap();
    b.tensor("a", Dtype::F32, &[10, 3]).unwrap();
    b.tensor("b", Dtype::U8, &[5000]).unwrap();
    b.build().unwrap().header().clone()
}

/// Encodes `header` with a correct preamble and checksum, then zero data up to a length that fits
/// everything the header claims (or `file_len` when given).
fn craft(header: &Header, file_len: Option<u64>) -> Vec<u8> {
    let json = header.to_json();
    let mut pre = Preamble {
        major: 1,
        minor: 0,
        flags: 0,
        header_len: json.len() as u64,
        header_checksum: 0,
    };
    pre.header_checksum = pre.compute_checksum(&json);
    let mut out = pre.encode().to_vec();
    out.extend_from_slice(&json);
    let data_start = pre.data_start(header.alignment).unwrap();
    let need = header
        .tensors
        .iter()
        .map(|t| t.offset.saturating_add(t.length))
        .chain([header
            .checksums
            .offset
            .saturating_add(header.checksums.length)])
        .max()
        .unwrap()
        .min(1 << 20)
        + data_start;
    out.resize(file_len.unwrap_or(need) as usize, 0);
    out
}

fn parse(bytes: &[u8]) -> Result<FileLayout, Error> {
    FileLayout::parse(bytes, bytes.len() as u64)
}

#[test]
fn base_is_valid() {
    let bytes = craft(&base(), None);
    let l = parse(&bytes).unwrap();
    assert_eq!(*l.header(), base());
    assert_eq!(l.tensor("b").unwrap().first_block, 1);
    assert_eq!(l.header().total_blocks(), 3);
}

#[test]
fn bad_magic_and_short_input() {
    let mut bytes = craft(&base(), None);
    bytes[0] = b'P';
    assert!(matches!(parse(&bytes), Err(Error::BadMagic { .. })));
    assert!(matches!(
        parse(&MAGIC[..5]),
        Err(Error::TooShort { len: 5, .. })
    ));
    assert!(matches!(parse(b"PK\x03\x04"), Err(Error::BadMagic { .. })));
    assert!(matches!(parse(b""), Err(Error::TooShort { len: 0, .. })));
}

#[test]
fn newer_major_is_refused_newer_minor_is_read() {
    let h = base();
    let mut bytes = craft(&h, None);
    bytes[8] = 2;
    assert!(matches!(
        parse(&bytes),
        Err(Error::UnsupportedVersion { major: 2, .. })
    ));
    // A minor bump with a correct checksum reads fine.
    let mut bytes = craft(&h, None);
    bytes[10] = 7;
    let header_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let mut pre = Preamble::parse(&bytes).unwrap();
    pre.header_checksum = pre.compute_checksum(&bytes[32..32 + header_len as usize]);
    bytes[..32].copy_from_slice(&pre.encode());
    assert_eq!(parse(&bytes).unwrap().preamble().minor, 7);
}

#[test]
fn unknown_required_flags_refused_optional_ignored() {
    let mut bytes = craft(&base(), None);
    let fix = |bytes: &mut Vec<u8>, flags: u32| {
        let mut pre = Preamble::parse(&bytes[..]).unwrap();
        pre.flags = flags;
        let n = pre.header_len as usize;
        pre.header_checksum = pre.compute_checksum(&bytes[32..32 + n]);
        // Parse would refuse required flags, so encode by hand.
        bytes[..32].copy_from_slice(&pre.encode());
    };
    fix(&mut bytes, 0x0001_0000);
    assert!(parse(&bytes).is_ok());
    fix(&mut bytes, 0x0000_0004);
    assert!(matches!(
        parse(&bytes),
        Err(Error::UnknownRequiredFlags { flags: 4 })
    ));
}

#[test]
fn header_length_cap_and_past_end() {
    let mut bytes = craft(&base(), None);
    bytes[16..24].copy_from_slice(&(MAX_HEADER_LEN + 1).to_le_bytes());
    assert!(matches!(parse(&bytes), Err(Error::HeaderTooLarge { .. })));
    let len = bytes.len() as u64;
    bytes[16..24].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(parse(&bytes), Err(Error::Truncated { .. })));
    // The prefix given may be shorter than the file: that is reported too, never read past.
    let bytes = craft(&base(), None);
    assert!(matches!(
        FileLayout::parse(&bytes[..40], bytes.len() as u64),
        Err(Error::Truncated { .. })
    ));
}

#[test]
fn every_header_byte_is_covered_by_the_checksum() {
    let bytes = craft(&base(), None);
    let header_end = 32 + u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    for i in 0..header_end {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        assert!(parse(&b).is_err(), "flip at byte {i} went unnoticed");
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let h = base();
    let json = String::from_utf8(h.to_json()).unwrap();
    let json = json.replacen('{', "{\"future\":{\"x\":[1,2]},", 1);
    let json = json.replace("\"name\":\"a\"", "\"name\":\"a\",\"extra\":true");
    let mut pre = Preamble {
        major: 1,
        minor: 1,
        flags: 0,
        header_len: json.len() as u64,
        header_checksum: 0,
    };
    pre.header_checksum = pre.compute_checksum(json.as_bytes());
    let mut bytes = pre.encode().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    let start = pre.data_start(Alignment::MIN).unwrap();
    bytes.resize(
        (start + h.checksums.offset + h.checksums.length) as usize,
        0,
    );
    assert_eq!(parse(&bytes).unwrap().header().tensors, h.tensors);
}

fn expect(h: Header, check: impl Fn(&Error) -> bool) {
    let bytes = craft(&h, None);
    let err = parse(&bytes).unwrap_err();
    assert!(check(&err), "unexpected error: {err}");
    // Every message names something concrete.
    assert!(!err.to_string().is_empty());
}

#[test]
fn store_fields_out_of_range() {
    // `Header` holds validated newtypes, so these values can only come from header text.
    let json = String::from_utf8(base().to_json()).unwrap();
    assert!(json.contains("\"alignment\":64,") && json.contains("\"block_size\":4096,"));
    let cases = [0u64, 32, 96, 1 << 31]
        .map(|a| ("alignment", format!("\"alignment\":{a},"), a))
        .into_iter()
        .chain(
            [0u64, 1000, 2048, 1 << 31].map(|b| ("block_size", format!("\"block_size\":{b},"), b)),
        );
    for (field, text, value) in cases {
        let edited = if field == "alignment" {
            json.replacen("\"alignment\":64,", &text, 1)
        } else {
            json.replacen("\"block_size\":4096,", &text, 1)
        };
        let mut pre = Preamble {
            major: 1,
            minor: 0,
            flags: 0,
            header_len: edited.len() as u64,
            header_checksum: 0,
        };
        pre.header_checksum = pre.compute_checksum(edited.as_bytes());
        let mut bytes = pre.encode().to_vec();
        bytes.extend_from_slice(edited.as_bytes());
        bytes.resize(1 << 14, 0);
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidField { field: f, value: v, .. } if *f == field && *v == value.to_string()),
            "{err}"
        );
    }
    // The newtypes refuse the same values with the same error.
    assert!(matches!(
        Alignment::new(96),
        Err(Error::InvalidField {
            field: "alignment",
            ..
        })
    ));
    assert!(matches!(
        BlockSize::new(1000),
        Err(Error::InvalidField {
            field: "block_size",
            ..
        })
    ));
    assert_eq!(Alignment::new(1 << 30).unwrap(), Alignment::MAX);
    assert_eq!(BlockSize::new(4096).unwrap(), BlockSize::MIN);
}

#[test]
fn tensor_rules() {
    let mut h = base();
    h.tensors[1].name = "a".into();
    expect(h, |e| {
        matches!(
            e,
            Error::DuplicateName {
                first: 0,
                second: 1,
                ..
            }
        )
    });

    let mut h = base();
    h.tensors[0].name = String::new();
    expect(h, |e| matches!(e, Error::InvalidName { .. }));

    let mut h = base();
    h.tensors[0].name = "a\0b".into();
    expect(h, |e| matches!(e, Error::InvalidName { .. }));

    let mut h = base();
    h.tensors[0].name = "n".repeat(1025);
    expect(h, |e| matches!(e, Error::InvalidName { .. }));

    let mut h = base();
    h.tensors[0].length += 4;
    expect(h, |e| {
        matches!(e, Error::LengthMismatch { expected: 120, .. })
    });

    let mut h = base();
    h.tensors[0].shape = vec![u64::MAX, 2];
    expect(h, |e| matches!(e, Error::ShapeOverflow { .. }));

    let mut h = base();
    h.tensors[0].shape = vec![1; 65];
    expect(h, |e| matches!(e, Error::RankTooLarge { rank: 65, .. }));

    let mut h = base();
    h.tensors[1].offset += 8;
    expect(h, |e| matches!(e, Error::Misaligned { .. }));

    let mut h = base();
    h.tensors[1].offset = 64;
    expect(
        h,
        |e| matches!(e, Error::Overlap { previous, .. } if previous == "a"),
    );

    let mut h = base();
    h.tensors[1].offset = u64::MAX - 63;
    expect(h, |e| matches!(e, Error::OutOfBounds { .. }));
}

#[test]
fn out_of_bounds_and_truncated_data() {
    let h = base();
    let full = craft(&h, None);
    // Cut the file one byte short: the checksum table no longer fits.
    let short = &full[..full.len() - 1];
    assert!(
        matches!(parse(short), Err(Error::OutOfBounds { what, .. }) if what == "checksum table")
    );
    // Cut it inside the second tensor.
    let layout = parse(&full).unwrap();
    let b = layout.tensor_range(layout.tensor("b").unwrap());
    let cut = &full[..(b.start + 10) as usize];
    assert!(matches!(parse(cut), Err(Error::OutOfBounds { what, .. }) if what == "tensor `b`"));
}

#[test]
fn checksum_table_rules() {
    let mut h = base();
    h.checksums.length -= 8;
    expect(h, |e| matches!(e, Error::ChecksumTable { .. }));
    let mut h = base();
    h.checksums.offset = 4;
    expect(h, |e| matches!(e, Error::ChecksumTable { .. }));
    let mut h = base();
    h.checksums.offset = 0;
    expect(h, |e| matches!(e, Error::ChecksumTable { .. }));
}

#[test]
fn malformed_json_and_dtype() {
    let h = base();
    let json = String::from_utf8(h.to_json())
        .unwrap()
        .replace("\"F32\"", "\"F33\"");
    let mut pre = Preamble {
        major: 1,
        minor: 0,
        flags: 0,
        header_len: json.len() as u64,
        header_checksum: 0,
    };
    pre.header_checksum = pre.compute_checksum(json.as_bytes());
    let mut bytes = pre.encode().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.resize(1 << 14, 0);
    assert!(matches!(parse(&bytes), Err(Error::UnknownDtype { tensor: Some(t), .. }) if t == "a"));

    let json = b"{\"alignment\":64,";
    pre.header_len = json.len() as u64;
    pre.header_checksum = pre.compute_checksum(json);
    let mut bytes = pre.encode().to_vec();
    bytes.extend_from_slice(json);
    match parse(&bytes) {
        Err(Error::HeaderJson { offset, .. }) => assert!(offset >= PREAMBLE_LEN),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn zero_size_and_scalar_tensors_are_valid() {
    let mut b = LayoutBuilder::new();
    b.tensor("e", Dtype::F64, &[0, 7]).unwrap();
    b.tensor("s", Dtype::I32, &[]).unwrap();
    b.tensor("e2", Dtype::U8, &[3, 0]).unwrap();
    let layout = b.build().unwrap();
    let h = layout.header();
    assert_eq!(h.tensors[0].length, 0);
    assert_eq!(h.tensors[1].length, 4);
    assert_eq!(h.tensors[1].numel(), 1);
    assert_eq!(h.total_blocks(), 1);
    let bytes = craft(h, None);
    assert_eq!(parse(&bytes).unwrap().header(), h);
}

#[test]
fn builder_refuses_what_the_reader_would() {
    let mut b = LayoutBuilder::new();
    b.tensor("x", Dtype::U8, &[1]).unwrap();
    assert!(matches!(
        b.tensor("x", Dtype::U8, &[1]),
        Err(Error::DuplicateName { .. })
    ));
    assert!(matches!(
        b.tensor("", Dtype::U8, &[1]),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        b.tensor("big", Dtype::F64, &[1 << 62]),
        Err(Error::ShapeOverflow { .. })
    ));
    for a in [48, 32] {
        assert!(matches!(
            b.alignment(a),
            Err(Error::InvalidField {
                field: "alignment",
                ..
            })
        ));
    }
    assert!(matches!(
        b.block_size(1 << 31),
        Err(Error::InvalidField {
            field: "block_size",
            ..
        })
    ));
}

#[test]
fn rows_and_blocks() {
    let mut b = LayoutBuilder::new();
    b.block_size(4096).unwrap();
    b.tensor("pre", Dtype::U8, &[5000]).unwrap();
    b.tensor("x", Dtype::F32, &[1000, 4]).unwrap();
    b.tensor("s", Dtype::F32, &[]).unwrap();
    let h = b.build().unwrap().header().clone();
    let x = &h.tensors[1];
    assert_eq!(x.row_bytes(), 16);
    assert_eq!(x.row_byte_range(10..20).unwrap(), 160..320);
    assert!(matches!(
        x.row_byte_range(10..1001),
        Err(Error::RowRange { .. })
    ));
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 20..10;
    assert!(matches!(
        x.row_byte_range(backwards),
        Err(Error::RowRange { .. })
    ));
    assert!(matches!(
        h.tensors[2].row_byte_range(0..1),
        Err(Error::Scalar { .. })
    ));
    // "pre" has 2 blocks, so x's blocks start at 2; bytes 4000..4200 of x cover its blocks 0 and 1.
    assert_eq!(x.blocks_for(4000..4200, BlockSize::MIN), 2..4);
    assert_eq!(x.blocks_for(0..0, BlockSize::MIN), 2..2);
}

/// Issue 10, defect 4: `[0, 2^40, 2^40]` holds no byte, so it used to validate, and then
/// `row_bytes` (2^80 elements) panicked in debug builds and wrapped in release builds.
#[test]
fn zero_size_shape_with_overflowing_dims_is_refused() {
    let shape = [0, 1 << 40, 1 << 40];
    // By the header validator, in a crafted file...
    let mut h = base();
    h.tensors[0].shape = shape.to_vec();
    h.tensors[0].length = 0;
    let err = parse(&craft(&h, None)).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeOverflow { tensor, shape: s, .. } if tensor == "a" && s == &shape),
        "{err}"
    );
    // ... by the layout builder ...
    let mut b = LayoutBuilder::new();
    assert!(matches!(
        b.tensor("z", Dtype::U8, &shape),
        Err(Error::ShapeOverflow { .. })
    ));
    // ... and by the function both share, for any position of the zero.
    assert!(matches!(
        mmtensor_format::checked_byte_len("z", Dtype::U8, &[1 << 40, 0, 1 << 40]),
        Err(Error::ShapeOverflow { .. })
    ));
    // The bound is the product of the non-zero dims times the dtype size: 2^62 u8 passes, the same
    // shape in f32 (2^64 bytes) does not.
    assert_eq!(
        mmtensor_format::checked_byte_len("z", Dtype::U8, &[0, 1 << 31, 1 << 31]).unwrap(),
        0
    );
    assert!(matches!(
        mmtensor_format::checked_byte_len("z", Dtype::F32, &[0, 1 << 31, 1 << 31]),
        Err(Error::ShapeOverflow { .. })
    ));
    // A zero-size shape whose dims fit still works, and its rows are 0..n of n rows.
    let mut b = LayoutBuilder::new();
    b.tensor("e", Dtype::F64, &[0, 1 << 20, 1 << 20]).unwrap();
    b.tensor("f", Dtype::F64, &[1 << 20, 0]).unwrap();
    let h = b.build().unwrap().header().clone();
    assert_eq!(h.tensors[0].row_bytes(), 8 << 40);
    assert_eq!(h.tensors[0].row_byte_range(0..0).unwrap(), 0..0);
    assert_eq!(h.tensors[1].row_bytes(), 0);
    assert_eq!(h.tensors[1].row_byte_range(5..1 << 20).unwrap(), 0..0);
}

/// A hand-built `TensorInfo` (its fields are public) with an overflowing shape gets an error or a
/// saturated value from every accessor, never a panic or a wrapped number.
#[test]
fn hand_built_tensor_info_never_overflows() {
    let mut t = base().tensors[0].clone();
    t.shape = vec![4, 1 << 40, 1 << 40];
    assert_eq!(t.numel(), u64::MAX);
    assert_eq!(t.row_bytes(), u64::MAX);
    assert!(matches!(
        t.row_byte_range(0..1),
        Err(Error::ShapeOverflow { .. })
    ));
    t.shape = vec![u64::MAX, 2];
    assert!(matches!(
        t.row_byte_range(1 << 62..(1 << 62) + 1),
        Err(Error::ShapeOverflow { .. })
    ));
    t.first_block = u64::MAX;
    assert_eq!(t.blocks_for(0..8192, BlockSize::MIN), u64::MAX..u64::MAX);
}

/// Issue 10, defect 9: `encode_prefix` returned the bytes up to the data start, so an alignment of
/// 2^30 allocated 1 GiB of zeros. `encode_head` returns only the preamble and the header.
#[test]
fn max_alignment_encodes_its_head_in_a_small_buffer() {
    let mut b = LayoutBuilder::new();
    b.alignment(1 << 30).unwrap();
    b.tensor("x", Dtype::F32, &[3, 2]).unwrap();
    let layout = b.build().unwrap();
    assert_eq!(layout.data_start(), 1 << 30);
    let head = layout.encode_head(7);
    assert_eq!(head.len() as u64, layout.head_len());
    assert!(head.len() < 4096, "{}", head.len());
    assert!(head.capacity() < 4096, "{}", head.capacity());
    // The head alone is enough to parse and validate the layout.
    let parsed = layout.reparse(&head).unwrap();
    assert_eq!(parsed.header().checksums.checksum, 7);
    assert_eq!(parsed.data_start(), 1 << 30);
    assert_eq!(layout.tensor_start(0), Some(1 << 30));
    assert_eq!(layout.tensor_start(1), None);
}

/// Issue 10: the `mmt.` prefix is the format's, so the layout builder (not each converter) refuses
/// it, naming the key; readers still accept such keys from a newer writer.
#[test]
fn layout_builder_refuses_reserved_metadata_keys() {
    let mut b = LayoutBuilder::new();
    let err = b.metadata("mmt.shard.index", "0").unwrap_err();
    assert_eq!(
        err,
        Error::ReservedKey {
            key: "mmt.shard.index".into()
        }
    );
    assert!(err.to_string().contains("`mmt.shard.index`"), "{err}");
    assert!(!err.to_string().ends_with('.'));
    b.metadata("mmtx", "ok")
        .unwrap()
        .metadata("a.mmt.b", "ok")
        .unwrap();
    b.tensor("x", Dtype::U8, &[1]).unwrap();
    let layout = b.build().unwrap();
    assert!(!layout.header().metadata.contains_key("mmt.shard.index"));
    // A reader accepts a reserved key (a newer writer may set one).
    let mut h = base();
    h.metadata.insert("mmt.shard.index".into(), "0".into());
    assert_eq!(
        parse(&craft(&h, None)).unwrap().header().metadata["mmt.shard.index"],
        "0"
    );
}

/// The name index is built while validating and holds positions, not names: every name must be
/// found at its position and no other name found, for many names (collisions in the table).
#[test]
fn every_name_is_found_at_its_position() {
    let mut b = LayoutBuilder::new();
    b.alignment(64).unwrap().block_size(4096).unwrap();
    for i in 0..5000 {
        b.tensor(&format!("layer.{i}.weight"), Dtype::U8, &[1])
            .unwrap();
    }
    let h = b.build().unwrap().header().clone();
    let bytes = craft(&h, None);
    let l = parse(&bytes).unwrap();
    for (i, t) in h.tensors.iter().enumerate() {
        assert_eq!(l.position(&t.name), Some(i));
        assert_eq!(l.tensor(&t.name).unwrap().name, t.name);
    }
    for absent in ["", "layer.5000.weight", "layer.1.weigh", "layer.1.weightx"] {
        assert_eq!(l.position(absent), None, "{absent}");
    }
    // A hand-built header whose block count passes 2^64 (5000 x 2^52 blocks) saturates.
    let mut t = h.tensors[0].clone();
    t.length = u64::MAX;
    let mut big = h.clone();
    big.tensors = vec![t; 5000];
    assert_eq!(big.total_blocks(), u64::MAX);
}
