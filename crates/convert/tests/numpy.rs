//! Every fixture written by real NumPy (`fixtures/numpy/make.py`) converts and reads back bit-exact.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use mmtensor_convert::{convert, ConvertOptions, Input, NoProgress, Summary};
use mmtensor_format::{Dtype, FileLayout};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/numpy")
}

fn manifest() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Converts and returns the output's bytes and parsed layout.
fn run(
    inputs: &[Input],
    options: &ConvertOptions,
) -> mmtensor_convert::Result<(Vec<u8>, FileLayout, Summary)> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mmt");
    let summary = convert(inputs, &out, options, &NoProgress, &AtomicBool::new(false))?;
    let bytes = std::fs::read(&out).unwrap();
    let layout = FileLayout::parse(&bytes, bytes.len() as u64).unwrap();
    Ok((bytes, layout, summary))
}

fn tensor_bytes<'a>(bytes: &'a [u8], layout: &FileLayout, name: &str) -> &'a [u8] {
    let t = layout
        .tensor(name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    let r = layout.tensor_range(t);
    &bytes[r.start as usize..r.end as usize]
}

fn options_for(file: &str) -> ConvertOptions {
    let mut o = ConvertOptions::default();
    o.alignment = 64;
    o.block_size = 4096;
    if file.ends_with("bf16.npy") {
        o.input_dtype.add("bf16").unwrap();
    }
    if file.ends_with("f8e4m3.npy") {
        o.input_dtype.add("f8e4m3=float8_e4m3fn").unwrap();
    }
    o
}

#[test]
fn every_fixture_converts_bit_exact() {
    let m = manifest();
    assert!(m.len() > 60, "the manifest lists {} inputs", m.len());
    let mut checked = 0;
    for (file, tensors) in &m {
        let input = Input::path(fixtures().join(file));
        let (bytes, layout, summary) =
            run(&[input], &options_for(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let tensors = tensors.as_object().unwrap();
        assert_eq!(summary.tensors, tensors.len(), "{file}");
        assert_eq!(layout.header().tensors.len(), tensors.len(), "{file}");
        for (name, want) in tensors {
            let t = layout
                .tensor(name)
                .unwrap_or_else(|| panic!("{file}: no tensor {name}"));
            assert_eq!(
                t.dtype.name(),
                want["dtype"].as_str().unwrap(),
                "{file} {name}"
            );
            let shape: Vec<u64> = want["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(t.shape, shape, "{file} {name}");
            assert_eq!(
                tensor_bytes(&bytes, &layout, name),
                hex(want["hex"].as_str().unwrap()),
                "{file} {name}"
            );
            assert!(layout.header().metadata["source.inputs"]
                .contains(file.split('/').next_back().unwrap()));
            checked += 1;
        }
    }
    assert!(checked > 70);
}

#[test]
fn many_inputs_into_one_store_with_renames() {
    let f = fixtures();
    let inputs = vec![
        Input::parse(&format!("s={}", f.join("npz/stored.npz").display())).unwrap(),
        Input::parse(&format!("c={}", f.join("npz/compressed.npz").display())).unwrap(),
        Input::parse(&format!(
            "emb={}",
            f.join("shards/emb/part-*.npy").display()
        ))
        .unwrap(),
        Input::path(f.join("safetensors/model.safetensors")),
        Input::parse(&format!("w={}", f.join("npy/float32.npy").display())).unwrap(),
    ];
    let (bytes, layout, _) = run(&inputs, &ConvertOptions::default()).unwrap();
    let m = manifest();
    for (name, file, key) in [
        ("s.fortran", "npz/stored.npz", "fortran"),
        ("c.bigf", "npz/compressed.npz", "bigf"),
        ("emb", "shards/emb", "emb"),
        (
            "layer.weight",
            "safetensors/model.safetensors",
            "layer.weight",
        ),
        ("w", "npy/float32.npy", "float32"),
    ] {
        let want = hex(m[file][key]["hex"].as_str().unwrap());
        assert_eq!(tensor_bytes(&bytes, &layout, name), want, "{name}");
        assert_eq!(layout.tensor(name).unwrap().offset % 4096, 0);
    }
    assert_eq!(layout.tensor("emb").unwrap().shape, [6, 3]);
}

#[test]
fn cast_all_floats_to_bf16_leaves_integers_alone() {
    let f = fixtures();
    let mut o = ConvertOptions::default();
    o.dtype.add("bfloat16").unwrap();
    o.dtype.add("b=i64").unwrap();
    let inputs = [
        Input::path(f.join("npy/float64-be-f.npy")),
        Input::path(f.join("npy/int32.npy")),
        Input::parse(&format!("b={}", f.join("npy/int16-be.npy").display())).unwrap(),
        Input::path(f.join("npy/complex64.npy")),
    ];
    let (bytes, layout, _) = run(&inputs, &o).unwrap();
    let m = manifest();
    let src = hex(m["npy/float64-be-f.npy"]["float64-be-f"]["hex"]
        .as_str()
        .unwrap());
    let want: Vec<u8> = src
        .chunks(8)
        .flat_map(|c| half::bf16::from_f64(f64::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
        .collect();
    assert_eq!(layout.tensor("float64-be-f").unwrap().dtype, Dtype::BF16);
    assert_eq!(tensor_bytes(&bytes, &layout, "float64-be-f"), want);
    assert_eq!(layout.tensor("int32").unwrap().dtype, Dtype::I32);
    assert_eq!(layout.tensor("complex64").unwrap().dtype, Dtype::C64);
    let src = hex(m["npy/int16-be.npy"]["int16-be"]["hex"].as_str().unwrap());
    let want: Vec<u8> = src
        .chunks(2)
        .flat_map(|c| i64::from(i16::from_le_bytes([c[0], c[1]])).to_le_bytes())
        .collect();
    assert_eq!(tensor_bytes(&bytes, &layout, "b"), want);
    let inputs: serde_json::Value =
        serde_json::from_str(&layout.header().metadata["source.inputs"]).unwrap();
    let changed = inputs
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i["changed"]["float64-be-f"].as_str())
        .unwrap();
    assert!(
        changed.contains("big-endian") && changed.contains("F64 -> BF16"),
        "{changed}"
    );
}

#[test]
fn small_chunks_give_the_same_bytes() {
    // Chunks far smaller than the arrays exercise every chunk boundary of swap, transpose and cast.
    let f = fixtures();
    for file in [
        "npy/rank4-f.npy",
        "npz/compressed.npz",
        "npy/complex128-be-f.npy",
    ] {
        let mut o = ConvertOptions::default();
        o.chunk_size = 1; // rounded up to the minimum
        let (a, la, _) = run(&[Input::path(f.join(file))], &o).unwrap();
        let (b, lb, _) = run(&[Input::path(f.join(file))], &ConvertOptions::default()).unwrap();
        for t in &la.header().tensors {
            assert_eq!(
                tensor_bytes(&a, &la, &t.name),
                tensor_bytes(&b, &lb, &t.name)
            );
        }
    }
}

#[test]
fn regression_provenance_does_not_grow_with_the_tensor_count() {
    // Before: two metadata entries per tensor (`source.tensor.NAME` and `.stored_as`), which
    // tripled the header of a store of many small tensors. Now one entry per input, plus one per
    // transformed tensor only.
    let dir = tempfile::tempdir().unwrap();
    let provenance_len = |n: usize| {
        let mut npz = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for i in 0..n {
            npz.start_file(
                format!("t{i}.npy"),
                zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Stored),
            )
            .unwrap();
            let mut npy = mmtensor_format::npy::encode_header(Dtype::F32, &[2]);
            npy.extend_from_slice(&[0; 8]);
            std::io::Write::write_all(&mut npz, &npy).unwrap();
        }
        let path = dir.path().join(format!("many{n}.npz"));
        std::fs::write(&path, npz.finish().unwrap().into_inner()).unwrap();
        let (_, layout, summary) = run(&[Input::path(&path)], &ConvertOptions::default()).unwrap();
        assert_eq!(summary.tensors, n);
        assert!(!layout
            .header()
            .metadata
            .keys()
            .any(|k| k.starts_with("source.tensor")));
        layout
            .header()
            .metadata
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
    };
    let (few, many) = (provenance_len(10), provenance_len(2000));
    // Only the digits of the file name and of the count differ.
    assert!(
        many <= few + 8,
        "{few} bytes for 10 tensors, {many} for 2000"
    );
}
