//! The generator of `fixtures/attacks/`: hostile and broken `.mmt`, `.npy`, `.npz` and `.safetensors`
//! files, each with the error every reader must give it.
//!
//! This test rebuilds every file in memory and compares it with the committed copy, so the corpus,
//! its `manifest.json` and its `README.md` never drift from this source. After changing an attack
//! here, rewrite the folder with
//! `MMT_BLESS=1 cargo test -p mmtensor-convert --test attack_corpus`.
//! `crates/cli/tests/attacks.rs` runs the corpus through the loader and the `mmt` binary.
//!
//! Most `.mmt` attacks carry a *correct* header checksum (xxh3-64 of preamble bytes 0..24 then the
//! header): a wrong one would be refused before the rule under attack is ever reached.

use std::io::{Cursor, Write};
use std::path::PathBuf;

use mmtensor_format::{
    block_checksum, block_checksums, encode_checksum_table, npy, Dtype, LayoutBuilder, Preamble,
    PREAMBLE_LEN,
};
use serde_json::{json, Value};

/// One hostile file and what must happen to it.
struct Attack {
    file: String,
    bytes: Vec<u8>,
    /// What the file attacks.
    attacks: &'static str,
    /// Substring of the error that opening it gives (loader `Store::open`/`Store::read`, `mmt info`,
    /// `mmt verify`); `None` when it opens.
    open: Option<&'static str>,
    /// For a store that opens: substring of the error `verify` gives (`mmt verify` exits 3).
    verify: Option<&'static str>,
    /// Substring of the error `mmt convert` gives; `None` when it converts (a store whose header
    /// and data are intact: `.mmt` stores are inputs, checked block by block as they are read).
    convert: Option<&'static str>,
    /// Substring of the error of `mmt info` and `mmt verify` when it differs from `open` (the CLI
    /// reads only `.mmt`, so other files get "not an .mmt file").
    cli: Option<&'static str>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/attacks")
}

// ---------------------------------------------------------------------------------------------
// .mmt

/// A valid store: `a` F32 [10, 3] (one block), `b` U8 [5000] (two blocks of 4096, the last short),
/// alignment 64, block size 4096.
fn good_mmt() -> Vec<u8> {
    let mut b = LayoutBuilder::new();
    b.alignment(64).unwrap().block_size(4096).unwrap();
    b.tensor("a", Dtype::F32, &[10, 3]).unwrap();
    b.tensor("b", Dtype::U8, &[5000]).unwrap();
    b.metadata("made.by", "crates/convert/tests/attack_corpus.rs")
        .unwrap();
    let layout = b.build().unwrap();
    let a: Vec<u8> = (0..30)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let bb: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut sums = block_checksums(&a, 4096);
    sums.extend(block_checksums(&bb, 4096));
    let table = encode_checksum_table(&sums);
    let mut file = layout.encode_head(block_checksum(&table));
    file.resize(layout.data_start() as usize, 0);
    file.extend_from_slice(&a);
    file.resize(layout.tensor_start(1).unwrap() as usize, 0);
    file.extend_from_slice(&bb);
    file.resize(layout.checksum_table_start() as usize, 0);
    file.extend_from_slice(&table);
    assert_eq!(file.len() as u64, layout.file_len());
    file
}

fn header_len(file: &[u8]) -> usize {
    u64::from_le_bytes(file[16..24].try_into().unwrap()) as usize
}

fn data_start(header_len: usize, alignment: usize) -> usize {
    (PREAMBLE_LEN as usize + header_len).div_ceil(alignment) * alignment
}

/// Rewrites the preamble's checksum so that it matches bytes 0..24 and the header.
fn fix_checksum(file: &mut [u8]) {
    let n = header_len(file);
    if n > file.len() - 32 {
        // A header length past the end is refused before its checksum is read.
        return;
    }
    let mut pre = [0u8; 24];
    pre.copy_from_slice(&file[..24]);
    let p = Preamble {
        major: u16::from_le_bytes([pre[8], pre[9]]),
        minor: u16::from_le_bytes([pre[10], pre[11]]),
        flags: u32::from_le_bytes(pre[12..16].try_into().unwrap()),
        header_len: n as u64,
        header_checksum: 0,
    };
    let sum = p.compute_checksum(&file[32..32 + n]);
    file[24..32].copy_from_slice(&sum.to_le_bytes());
}

/// The good store with its header replaced by `json` (correctly checksummed); the data section is
/// moved so that it still starts at the (64-aligned) data start after the new header.
fn with_header(json: &[u8]) -> Vec<u8> {
    let good = good_mmt();
    let data = &good[data_start(header_len(&good), 64)..];
    let mut out = good[..32].to_vec();
    out[16..24].copy_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json);
    out.resize(data_start(json.len(), 64), 0);
    out.extend_from_slice(data);
    fix_checksum(&mut out);
    out
}

/// The good store with its header JSON edited by `edit`.
fn edited(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let good = good_mmt();
    let mut v: Value = serde_json::from_slice(&good[32..32 + header_len(&good)]).unwrap();
    edit(&mut v);
    with_header(&serde_json::to_vec(&v).unwrap())
}

/// The good store with `from` replaced by `to` in its header text (for what `Value` cannot hold).
fn text_edited(from: &str, to: &str) -> Vec<u8> {
    let good = good_mmt();
    let text = std::str::from_utf8(&good[32..32 + header_len(&good)]).unwrap();
    assert!(text.contains(from), "{text}");
    with_header(text.replacen(from, to, 1).as_bytes())
}

/// The good store with preamble bytes `at..` replaced, then re-checksummed.
fn preamble_patched(at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut f = good_mmt();
    f[at..at + bytes.len()].copy_from_slice(bytes);
    fix_checksum(&mut f);
    f
}

fn mmt_attacks() -> Vec<Attack> {
    let good = good_mmt();
    let hl = header_len(&good);
    let ds = data_start(hl, 64);
    let b_start = ds + 128;
    let table_start = ds + 5184;
    let a = |file: &str, bytes: Vec<u8>, attacks, open, verify| Attack {
        file: format!("mmt-{file}.mmt"),
        bytes,
        attacks,
        open,
        verify,
        // A store is an input: what the loader refuses, convert refuses too; a corrupt block or
        // padding is found as it is read.
        convert: open.or(verify.map(|v: &'static str| match v {
            v if v.starts_with("tensor") => "does not match its checksum",
            v => v,
        })),
        cli: None,
    };
    let t = |v: &mut Value, i: usize| v["tensors"][i].as_object_mut().unwrap().clone();
    let set_t = |field: &'static str, i: usize, value: Value| {
        move |v: &mut Value| {
            let mut o = t(v, i);
            o.insert(field.into(), value);
            v["tensors"][i] = Value::Object(o);
        }
    };
    let mut bad_checksum = good.clone();
    bad_checksum[40] ^= 0x01;
    let mut text_mode = good.clone();
    text_mode.splice(4..6, [b'\n']);
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let deep_json = format!(
        r#"{{"alignment":64,"block_size":4096,"checksums":{{"offset":0,"length":0,"xxh3":"2d06800538d394c2"}},"extra":{deep},"tensors":[]}}"#
    );
    let mut non_utf8 = good[32..32 + hl].to_vec();
    let at = non_utf8
        .windows(10)
        .position(|w| w == br#""name":"b""#)
        .unwrap()
        + 8;
    non_utf8[at] = 0xff;
    let mut flipped_b_first = good.clone();
    flipped_b_first[b_start] ^= 0x01;
    let mut flipped_b_last = good.clone();
    flipped_b_last[b_start + 4999] ^= 0x80;
    let mut bad_table = good.clone();
    bad_table[table_start + 3] ^= 0x10;
    let mut bad_padding = good.clone();
    bad_padding[ds + 121] = 0xaa;
    assert!(32 + hl < ds, "the good store has padding after its header");
    let mut header_gap = good.clone();
    header_gap[32 + hl] = 0x20;
    let mut all = vec![
        a("empty", vec![], "a zero-byte file", Some("not an .mmt, .safetensors or .npy file"), None),
        a("too-short", good[..20].to_vec(), "a file shorter than the 32-byte preamble", Some("shorter than the 32-byte .mmt preamble"), None),
        a("text-mode-magic", text_mode, "a store that went through a text-mode transfer (CR LF became LF in the magic)", Some("not an .mmt"), None),
        a("header-len-past-end", preamble_patched(16, &(good.len() as u64).to_le_bytes()), "header length (bytes 16..24) reaching past the end of the file", Some("the header needs bytes 32.."), None),
        a("header-len-over-cap", preamble_patched(16, &(100u64 * 1024 * 1024 + 1).to_le_bytes()), "header length one byte over the 100 MiB cap (nothing may be allocated for it)", Some("is over the 104857600-byte cap"), None),
        a("header-len-u64-max", preamble_patched(16, &u64::MAX.to_le_bytes()), "header length 2^64-1: 32 + header_len overflows", Some("is over the 104857600-byte cap"), None),
        a("bad-header-checksum", bad_checksum, "one header byte changed without fixing the header checksum", Some("header checksum mismatch"), None),
        a("major-2", preamble_patched(8, &2u16.to_le_bytes()), "major version 2 (checksum correct)", Some("unsupported .mmt version 2.0"), None),
        a("required-flag", preamble_patched(12, &1u32.to_le_bytes()), "unknown required flag bit 0 (checksum correct)", Some("unknown required flags 0x00000001"), None),
        a("header-not-json", with_header(b"this is not JSON at all"), "a header that is not JSON", Some("header is not valid .mmt JSON"), None),
        a("header-non-utf8", with_header(&non_utf8), "a tensor name holding the byte 0xff (not UTF-8)", Some("header is not valid .mmt JSON"), None),
        a("header-deep-nesting", with_header(deep_json.as_bytes()), "an unknown field nested 5000 arrays deep (stack exhaustion in a recursive parser): unknown fields are ignored, so it must open and verify without a crash", None, None),
        a("header-missing-tensors", edited(|v| { v.as_object_mut().unwrap().remove("tensors"); }), "a header without the `tensors` field", Some("missing field `tensors`"), None),
        a("name-empty", edited(set_t("name", 1, json!(""))), "an empty tensor name", Some("it is empty"), None),
        a("name-nul", edited(set_t("name", 1, json!("b\u{0}c"))), "a tensor name holding a NUL", Some("contains a NUL"), None),
        a("name-too-long", edited(set_t("name", 1, json!("n".repeat(1025)))), "a 1025-byte tensor name", Some("longer than 1024 bytes"), None),
        a("name-duplicate", edited(set_t("name", 1, json!("a"))), "two tensors named `a`", Some("tensor name `a` appears twice"), None),
        a("dtype-unknown", edited(set_t("dtype", 0, json!("F128"))), "a dtype the format does not have", Some("unknown dtype `F128`"), None),
        a("rank-65", edited(set_t("shape", 0, json!(vec![1; 65]))), "a shape of rank 65", Some("has rank 65, over the maximum of 64"), None),
        a("shape-overflow", edited(set_t("shape", 0, json!([1u64 << 32, 1u64 << 32, 4]))), "a shape whose element count overflows u64", Some("overflows 64-bit byte arithmetic"), None),
        a("shape-number-too-big", text_edited(r#""shape":[10,3]"#, r#""shape":[99999999999999999999,3]"#), "a dimension that is not an integer in 0..2^64", Some("header is not valid .mmt JSON"), None),
        a("shape-negative", edited(set_t("shape", 0, json!([-10, 3]))), "a negative dimension", Some("header is not valid .mmt JSON"), None),
        a("length-mismatch", edited(set_t("length", 0, json!(119))), "a byte length (119) that disagrees with F32 [10, 3] (120)", Some("byte length 119 disagrees with its shape and dtype, which need 120 bytes"), None),
        a("offset-misaligned", edited(set_t("offset", 1, json!(132))), "a tensor offset that is not a multiple of the alignment", Some("not a multiple of the alignment 64"), None),
        a("offset-overlap", edited(set_t("offset", 1, json!(64))), "tensor `b` starting inside tensor `a`", Some("inside `a`"), None),
        a("offset-out-of-bounds", edited(set_t("offset", 1, json!(1u64 << 40))), "a tensor beyond the end of the file", Some("tensor `b` spans bytes"), None),
        a("offset-overflow", edited(set_t("offset", 1, json!(u64::MAX - 63))), "data_start + offset overflowing u64", Some("tensor `b` spans bytes"), None),
        a("alignment-not-pow2", edited(|v| v["alignment"] = json!(96)), "an alignment that is not a power of two", Some("header field `alignment` is 96"), None),
        a("block-size-zero", edited(|v| v["block_size"] = json!(0)), "a block size of 0 (a division by zero in block counts)", Some("header field `block_size` is 0"), None),
        a("table-length-wrong", edited(|v| v["checksums"]["length"] = json!(16)), "a checksum table with 2 entries for 3 blocks", Some("checksum table: length is 16 bytes"), None),
        a("table-misaligned", edited(|v| v["checksums"]["offset"] = json!(5188)), "a checksum table that is not 8-aligned", Some("not a multiple of 8"), None),
        a("table-out-of-bounds", edited(|v| v["checksums"]["offset"] = json!(1u64 << 40)), "a checksum table beyond the end of the file", Some("checksum table spans bytes"), None),
        a("table-inside-tensor", edited(|v| v["checksums"]["offset"] = json!(200)), "a checksum table inside tensor `b`", Some("inside tensor `b`"), None),
        a("table-hash-malformed", edited(|v| v["checksums"]["xxh3"] = json!("XYZ")), "a table hash that is not 16 hex digits", Some("checksums.xxh3"), None),
        a("truncated-data", good[..b_start + 1000].to_vec(), "a store cut inside tensor `b`", Some("tensor `b` spans bytes"), None),
        a("truncated-table", good[..good.len() - 4].to_vec(), "a store cut inside its checksum table", Some("checksum table spans bytes"), None),
        a("corrupt-first-byte", flipped_b_first, "one bit flipped in the first byte of tensor `b` (the header is intact: it opens)", None, Some("tensor `b`, block 0")),
        a("corrupt-last-byte", flipped_b_last, "one bit flipped in the last byte of tensor `b`, in its short last block", None, Some("tensor `b`, block 1")),
        a("corrupt-table", bad_table, "one bit flipped in the checksum table", None, Some("the checksum table (bytes")),
        a("corrupt-padding", bad_padding, "a nonzero byte in the padding between two tensors", None, Some("not zero")),
        a("corrupt-header-padding", header_gap, "a nonzero byte in the padding after the header", None, Some("not zero")),
    ];
    // The loader detects formats and calls an empty file unknown; the CLI reads only .mmt, and
    // convert takes it for one by its name.
    all[0].cli = Some("shorter than the 32-byte .mmt preamble");
    all[0].convert = Some("shorter than the 32-byte .mmt preamble");
    all
}

// ---------------------------------------------------------------------------------------------
// .npy

/// An npy file from a header dict literal and data, version 1.0.
fn npy_raw(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut v = npy::NPY_MAGIC.to_vec();
    v.extend_from_slice(&[1, 0]);
    let mut text = dict.to_owned();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    v.extend_from_slice(&(text.len() as u16).to_le_bytes());
    v.extend_from_slice(text.as_bytes());
    v.extend_from_slice(data);
    v
}

/// A version-2.0 `.npy` (4-byte header length, for headers over 64 KiB) holding `dict`.
fn npy_raw_v2(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut v = npy::NPY_MAGIC.to_vec();
    v.extend_from_slice(&[2, 0]);
    let mut text = dict.to_owned();
    while !(12 + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    v.extend_from_slice(&(text.len() as u32).to_le_bytes());
    v.extend_from_slice(text.as_bytes());
    v.extend_from_slice(data);
    v
}

/// A 160 KiB header: NumPy's three keys, about 14,000 distinct keys `'k0': 0, ...`, then `'descr'`
/// again. A duplicate check that scans the earlier keys is quadratic on it (12 s at the 1 MiB cap,
/// which `mmtensor_format::npy`'s own regression test uses; this copy stays small enough for
/// `the_corpus_stays_small`).
fn npy_many_keys() -> Vec<u8> {
    let mut dict = npy_dict("<f4", "(4,)");
    dict.pop(); // the closing brace
    let mut i = 0;
    while dict.len() < 160 * 1024 {
        dict.push_str(&format!("'k{i}': 0, "));
        i += 1;
    }
    dict.push_str("'descr': '<f4'}");
    npy_raw_v2(&dict, &[0; 16])
}

fn npy_dict(descr: &str, shape: &str) -> String {
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
}

fn good_npy() -> Vec<u8> {
    let mut v = npy::encode_header(Dtype::F32, &[4]);
    for x in [1.0f32, 2.0, 3.0, 4.0] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn npy_attacks() -> Vec<Attack> {
    let a = |file: &str, bytes: Vec<u8>, attacks, open, convert: &'static str| Attack {
        file: format!("npy-{file}.npy"),
        bytes,
        attacks,
        open,
        verify: None,
        convert: Some(convert),
        cli: Some("not an .mmt file"),
    };
    let good = good_npy();
    let mut bad_magic = good.clone();
    bad_magic[1] = b'n';
    let mut len_lie = good.clone();
    len_lie[8..10].copy_from_slice(&60000u16.to_le_bytes());
    let mut v2_huge = npy::NPY_MAGIC.to_vec();
    v2_huge.extend_from_slice(&[2, 0]);
    v2_huge.extend_from_slice(&u32::MAX.to_le_bytes());
    v2_huge.extend_from_slice(b"{'descr': '<f4'");
    let mut version = good.clone();
    version[6] = 9;
    // A pickle of the Python list [1, 2] (protocol 2), as NumPy stores object arrays.
    let pickle = b"\x80\x02]q\x00(K\x01K\x02e.";
    let mut non_utf8 = npy_raw(&npy_dict("<f4", "(4,)"), &good[64..]);
    non_utf8[12] = 0xff;
    vec![
        a("bad-magic", bad_magic, "bytes 0..6 are not \\x93NUMPY", Some("not an .mmt, .safetensors or .npy file"), "not a .npy file"),
        a("header-len-lie", len_lie, "a header length (60000) reaching past the end of the file", Some("file is truncated: the .npy header needs bytes 10..60010 but the file has 144 bytes"), "file is truncated: the .npy header needs bytes 10..60010"),
        a("header-len-over-cap", v2_huge, "a version-2 header length of 4 GiB, over the 1 MiB cap (nothing may be allocated for it)", Some("over the 1048576-byte cap"), "over the 1048576-byte cap"),
        a("bad-version", version, "version 9.0", Some("unsupported .npy version 9.0"), "unsupported .npy version 9.0"),
        a("object-pickle", npy_raw(&npy_dict("|O", "(2,)"), pickle), "an object array: pickled Python objects, which must never be loaded", Some("pickled Python objects"), "pickled Python objects"),
        a("structured", npy_raw("{'descr': [('a', '<f4'), ('b', '<i8')], 'fortran_order': False, 'shape': (1,), }", &[0; 12]), "a structured (record) dtype", Some("structured"), "structured"),
        a("shape-overflow", npy_raw(&npy_dict("<f4", "(4294967296, 4294967296)"), &[]), "a shape whose byte length overflows u64", Some("overflows 64-bit byte arithmetic"), "overflows 64-bit byte arithmetic"),
        a("shape-too-big-integer", npy_raw(&npy_dict("<f4", "(99999999999999999999,)"), &[]), "a dimension over 2^64", Some("does not fit in 64 bits"), "does not fit in 64 bits"),
        a("shape-negative", npy_raw(&npy_dict("<f4", "(-4,)"), &[]), "a negative dimension", Some("negative numbers are not valid"), "negative numbers are not valid"),
        a("shape-huge-claim", npy_raw(&npy_dict("|u1", "(1099511627776,)"), &[0; 16]), "a 1 TiB array with 16 bytes of data (nothing may be allocated for the claim)", Some("file is truncated: the array data"), "the file is truncated or its header lies"),
        a("truncated-data", good[..good.len() - 3].to_vec(), "data three bytes shorter than the shape needs", Some("file is truncated: the array data"), "holds only 13"),
        a("deep-nesting", npy_raw(&format!("{}1{}", "(".repeat(5000), ")".repeat(5000)), &[]), "a header literal nested 5000 tuples deep", Some("nested too deeply"), "nested too deeply"),
        a("header-non-utf8", non_utf8, "a header byte 0xff (not ASCII/UTF-8)", Some("not valid UTF-8"), "not valid UTF-8"),
        a("not-a-dict", npy_raw("[1, 2, 3]", &[]), "a header literal that is a list, not a dict", Some("header is not a dict"), "header is not a dict"),
        a("many-keys", npy_many_keys(), "a 160 KiB header of 14,000 distinct keys, then a duplicate (a duplicate check that scans earlier keys is quadratic)", Some("key 'descr' appears twice"), "key 'descr' appears twice"),
    ]
}

// ---------------------------------------------------------------------------------------------
// .npz

fn zip_of(members: &[(&str, &[u8], zip::CompressionMethod)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes, method) in members {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(*method)
            .last_modified_time(zip::DateTime::default());
        w.start_file(*name, opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Offsets of the local and central headers of the first member.
fn zip_headers(zip: &[u8]) -> (usize, usize) {
    let find = |sig: &[u8]| zip.windows(4).position(|w| w == sig).unwrap();
    (find(b"PK\x03\x04"), find(b"PK\x01\x02"))
}

/// Overwrites a member's CRC or sizes in both its local and central headers.
fn zip_patch(zip: &mut [u8], field: &str, value: u32) {
    let (local, central) = zip_headers(zip);
    let (l, c) = match field {
        "crc" => (14, 16),
        "compressed" => (18, 20),
        "uncompressed" => (22, 24),
        _ => unreachable!(),
    };
    zip[local + l..local + l + 4].copy_from_slice(&value.to_le_bytes());
    zip[central + c..central + c + 4].copy_from_slice(&value.to_le_bytes());
}

fn npz_attacks() -> Vec<Attack> {
    use zip::CompressionMethod::{Deflated, Stored};
    let a = |file: &str, bytes: Vec<u8>, attacks, convert: &'static str| Attack {
        file: format!("npz-{file}.npz"),
        bytes,
        attacks,
        open: Some("not an .mmt, .safetensors or .npy file"),
        verify: None,
        convert: Some(convert),
        cli: Some("not an .mmt file"),
    };
    let good = good_npy();
    // 16 MiB of zeros behind a header that promises 16 bytes: deflate squeezes it to ~16 KiB.
    let mut bomb_data = npy::encode_header(Dtype::F32, &[4]);
    bomb_data.resize(bomb_data.len() + (16 << 20), 0);
    let bomb_honest = zip_of(&[("x.npy", &bomb_data, Deflated)]);
    let mut bomb_lying = bomb_honest.clone();
    zip_patch(&mut bomb_lying, "uncompressed", good.len() as u32);
    // A header and a zip entry that both claim ~4 GB; the member holds 16 bytes.
    let mut claim = npy::encode_header(Dtype::U8, &[4_000_000_000]);
    let claim_len = claim.len() as u32;
    claim.extend_from_slice(&[0; 16]);
    let mut huge_claim = zip_of(&[("x.npy", &claim, Deflated)]);
    zip_patch(&mut huge_claim, "uncompressed", 4_000_000_000 + claim_len);
    let mut bad_crc = zip_of(&[("x.npy", &good, Stored)]);
    let (_, central) = zip_headers(&bad_crc);
    let crc = u32::from_le_bytes(bad_crc[central + 16..central + 20].try_into().unwrap());
    zip_patch(&mut bad_crc, "crc", crc ^ 1);
    let mut size_small = zip_of(&[("x.npy", &good, Stored)]);
    zip_patch(&mut size_small, "uncompressed", good.len() as u32 - 4);
    zip_patch(&mut size_small, "compressed", good.len() as u32 - 4);
    let mut compressed_past_end = zip_of(&[("x.npy", &good, Stored)]);
    zip_patch(&mut compressed_past_end, "compressed", 1 << 30);
    zip_patch(&mut compressed_past_end, "uncompressed", 1 << 30);
    let pickled = npy_raw(&npy_dict("|O", "(2,)"), b"\x80\x02]q\x00(K\x01K\x02e.");
    let mut truncated = zip_of(&[("x.npy", &good, Stored), ("y.npy", &good, Stored)]);
    truncated.truncate(truncated.len() - 30);
    vec![
        a("bomb-header-lies", bomb_honest, "zip bomb: a member inflating to 16 MiB whose npy header promises 16 bytes (refused from the sizes, before inflating)", "more than 16"),
        a("bomb-size-lies", bomb_lying, "zip bomb: the same member with its zip size lowered to match the npy header (refused after reading one byte past the promise)", "x.npy"),
        a("huge-claim", huge_claim, "a member whose npy header and zip entry both claim ~4 GB but that holds 16 bytes (nothing may be allocated for the claim)", "holds only 16"),
        a("bad-crc", bad_crc, "a member whose CRC-32 does not match its bytes", "x.npy"),
        a("size-lies-small", size_small, "a member whose declared sizes are 4 bytes smaller than its data", "x.npy"),
        a("compressed-past-end", compressed_past_end, "a member whose compressed size reaches 1 GiB past the end of the archive", "x.npy"),
        a("member-pickle", zip_of(&[("x.npy", &pickled, Deflated)]), "a member that is a pickled object array", "pickled Python objects"),
        a("truncated", truncated, "an archive cut inside its central directory", "not a readable .npz (zip) archive"),
        a("not-zip", b"this is not a zip archive, whatever its name says".to_vec(), "a file named .npz that is not a zip archive", "not a readable .npz (zip) archive"),
    ]
}

// ---------------------------------------------------------------------------------------------
// .safetensors

fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn st_attacks() -> Vec<Attack> {
    let a =
        |file: &str, bytes: Vec<u8>, attacks, open: &'static str, convert: &'static str| Attack {
            file: format!("st-{file}.safetensors"),
            bytes,
            attacks,
            open: Some(open),
            verify: None,
            convert: Some(convert),
            cli: Some("not an .mmt file"),
        };
    let two = |x: &str, y: &str| {
        format!(
            r#"{{"x":{{"dtype":"F32","shape":[2],"data_offsets":{x}}},"y":{{"dtype":"F32","shape":[2],"data_offsets":{y}}}}}"#
        )
    };
    let mut len_past_end = st(&two("[0,8]", "[8,16]"), &[0; 16]);
    len_past_end[..8].copy_from_slice(&1_000_000u64.to_le_bytes());
    let mut len_huge = st(&two("[0,8]", "[8,16]"), &[0; 16]);
    len_huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    vec![
        a("header-len-past-end", len_past_end, "a header length (1,000,000) past the end of the file", "invalid header length", "invalid header length"),
        a("header-len-huge", len_huge, "a header length of 2^64-1 (nothing may be allocated for it)", "header too large", "header too large"),
        a("overlap", st(&two("[0,8]", "[4,12]"), &[0; 12]), "two tensors whose data ranges overlap", "invalid offset", "invalid offset"),
        a("out-of-bounds", st(&two("[0,8]", "[8,4096]"), &[0; 16]), "a tensor whose data reaches past the end of the file (the safetensors crate does not say which tensor)", "invalid shape, data type, or offset for tensor", "invalid shape, data type, or offset for tensor"),
        a("dtype-unknown", st(r#"{"x":{"dtype":"F128","shape":[2],"data_offsets":[0,32]}}"#, &[0; 32]), "a dtype safetensors does not have", "F128", "F128"),
        a("dtype-unsupported", st(r#"{"x":{"dtype":"F8_E8M0","shape":[2],"data_offsets":[0,2]}}"#, &[0; 2]), "a safetensors dtype .mmt does not have (F8_E8M0)", "F8_E8M0", "F8_E8M0"),
        a("shape-length-mismatch", st(r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]), "a shape that needs 12 bytes for an 8-byte range (the safetensors crate does not say which tensor)", "invalid shape, data type, or offset for tensor", "invalid shape, data type, or offset for tensor"),
        a("shape-overflow", st(r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#, &[0; 8]), "a shape whose element count overflows", "overflow", "overflow"),
        a("header-not-json", st("{not json", &[]), "a header that is not JSON", "invalid JSON", "invalid JSON"),
    ]
}

fn corpus() -> Vec<Attack> {
    let mut all = mmt_attacks();
    all.extend(npy_attacks());
    all.extend(npz_attacks());
    all.extend(st_attacks());
    all
}

fn manifest(corpus: &[Attack]) -> String {
    let entries: Vec<Value> = corpus
        .iter()
        .map(|a| {
            json!({
                "file": a.file,
                "attacks": a.attacks,
                "open": a.open,
                "verify": a.verify,
                "convert": a.convert,
                "cli": a.cli.or(a.open),
            })
        })
        .collect();
    serde_json::to_string_pretty(&entries).unwrap() + "\n"
}

fn readme(corpus: &[Attack]) -> String {
    let mut s = String::from(
        "# Hostile and broken files\n\n\
         Every file here attacks one reader of mmtensor. Generated by `crates/convert/tests/attack_corpus.rs`\n\
         (never edit by hand; after changing an attack there, run\n\
         `MMT_BLESS=1 cargo test -p mmtensor-convert --test attack_corpus`). `manifest.json` holds the\n\
         same table for `crates/cli/tests/attacks.rs`, which runs every file through the loader\n\
         (`Store::open`, `Store::read`, `verify`), `mmt info`, `mmt verify` and `mmt convert` and asserts\n\
         the error below, the exit code, and that nothing is left under the output name. A panic, a signal\n\
         or exit code 101 fails it.\n\n\
         Most `.mmt` attacks carry a correct header checksum (xxh3-64 of preamble bytes 0..24, then the\n\
         header), so that they reach the rule they attack.\n\n\
         Columns: *open* is the error of the loader's `Store::open` and `Store::read`; \"opens\" means the\n\
         header is intact and *verify* is the error `verify` gives (`mmt verify` exits 3). *info/verify* is\n\
         the error of `mmt info` and `mmt verify` (exit 1; they read only `.mmt`). *convert* is the error of\n\
         `mmt convert FILE -o out.mmt` (exit 1), or \"converts\" for an intact store (a `.mmt` input is read\n\
         with its checksums and padding checked).\n\n\
         | file | attacks | open | verify | info/verify | convert |\n\
         |------|---------|------|--------|-------------|---------|\n",
    );
    for a in corpus {
        let cell = |o: Option<&str>| o.map_or("-".to_owned(), |s| format!("`{s}`"));
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            a.file,
            a.attacks.replace('|', "\\|"),
            a.open.map_or("opens".to_owned(), |s| format!("`{s}`")),
            cell(a.verify),
            cell(a.cli.or(a.open)),
            a.convert
                .map_or("converts".to_owned(), |s| format!("`{s}`"))
        ));
    }
    s
}

#[test]
fn committed_corpus_matches_its_generator() {
    let corpus = corpus();
    assert!(corpus.len() >= 30);
    let mut files: Vec<(String, Vec<u8>)> = corpus
        .iter()
        .map(|a| (a.file.clone(), a.bytes.clone()))
        .collect();
    files.push(("manifest.json".into(), manifest(&corpus).into_bytes()));
    files.push(("README.md".into(), readme(&corpus).into_bytes()));
    let dir = fixtures();
    if std::env::var_os("MMT_BLESS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in &files {
        let committed = std::fs::read(dir.join(name)).unwrap_or_else(|e| {
            panic!("fixtures/attacks/{name}: {e} (run with MMT_BLESS=1 to create it)")
        });
        assert!(
            &committed == bytes,
            "fixtures/attacks/{name} differs from its generator: rerun with MMT_BLESS=1"
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = files.into_iter().map(|(n, _)| n).collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "fixtures/attacks holds files the generator does not make"
    );
}

#[test]
fn the_corpus_stays_small() {
    let total: usize = corpus().iter().map(|a| a.bytes.len()).sum();
    assert!(total < 512 * 1024, "the corpus is {total} bytes");
}
