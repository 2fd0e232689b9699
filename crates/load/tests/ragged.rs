//! Ragged tensors and columns (format 1.1) as the loader reads them: rows as zero-copy views,
//! gathered and padded batches, offsets checked at open, and sequence windows of the stream.

use std::path::Path;

use mmtensor::order::Shuffle;
use mmtensor::{Dataset, Dtype, Error, Loader, LoaderOptions, Pad, Store};
use mmtensor_format::{ColumnSpec, Manifest, Shard, MANIFEST_FILE};
use mmtensor_testsupport::TestStore;

fn u16s(v: impl IntoIterator<Item = u16>) -> Vec<u8> {
    v.into_iter().flat_map(|t| t.to_le_bytes()).collect()
}

/// Documents of `lengths` tokens; token `k` of the stream is `first + k`.
fn docs_store(path: &Path, lengths: &[u64], first: u16) {
    let n: u64 = lengths.iter().sum();
    TestStore::new()
        .tensor("label", Dtype::I64, &[lengths.len() as u64], {
            (0..lengths.len() as i64)
                .flat_map(|i| i.to_le_bytes())
                .collect::<Vec<u8>>()
        })
        .ragged(
            "tokens",
            Dtype::U16,
            &[],
            u16s((0..n as u16).map(|k| first + k)),
            lengths,
        )
        .write(path)
        .unwrap();
}

fn open(path: &Path) -> Store {
    // SAFETY: the test's own files, not modified while open.
    unsafe { Store::open(path).unwrap() }
}

#[test]
fn rows_are_zero_copy_views_of_the_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.mmt");
    docs_store(&path, &[3, 0, 5, 1], 100);
    let store = open(&path);
    let tokens = store.ragged("tokens").unwrap();
    assert_eq!(tokens.num_rows(), 4);
    assert_eq!(tokens.num_values(), 9);
    assert_eq!(tokens.dtype(), Dtype::U16);
    assert_eq!(tokens.item_shape(), &[] as &[u64]);
    let row = tokens.row(2).unwrap();
    assert_eq!(row.shape(), [5]);
    assert_eq!(row.as_slice::<u16>().unwrap(), [103, 104, 105, 106, 107]);
    assert_eq!(tokens.row(1).unwrap().shape(), [0]);
    // Zero copy: the row's slice lies inside the values tensor's slice of the mapping.
    let values = store.tensor("tokens").unwrap();
    let all = values.as_slice::<u16>().unwrap();
    let r = row.as_slice::<u16>().unwrap();
    assert_eq!(r.as_ptr(), all[3..].as_ptr());
    assert_eq!(tokens.row_len(3).unwrap(), 1);
    let e = tokens.row(4).unwrap_err();
    assert!(
        matches!(
            e,
            Error::RowIndex {
                index: 4,
                rows: 4,
                ..
            }
        ),
        "{e}"
    );
    // A fixed tensor is not ragged; a ragged one is not a loader row column.
    assert!(matches!(
        store.ragged("label"),
        Err(Error::NotRagged { .. })
    ));
    let e = Loader::new(
        &store,
        LoaderOptions {
            columns: Some(vec!["tokens".into()]),
            ..LoaderOptions::new(2)
        },
    )
    .err()
    .unwrap();
    assert!(matches!(e, Error::RaggedColumn { .. }), "{e}");
    assert!(e.to_string().contains("seq_len"), "{e}");
    // Default columns leave the ragged tensor's two tensors out.
    let l = Loader::new(&store, LoaderOptions::new(2)).unwrap();
    assert_eq!(l.column_names().collect::<Vec<_>>(), ["label"]);
}

#[test]
fn take_gives_values_and_offsets_or_a_padded_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.mmt");
    docs_store(&path, &[3, 0, 5, 1], 0);
    let store = open(&path);
    let t = store.ragged("tokens").unwrap();
    let b = t.take(&[2, 0, 1, 2]).unwrap();
    assert_eq!(b.offsets, [0, 5, 8, 8, 13]);
    assert_eq!(b.values, u16s([3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7]));

    let pad = Pad::new(u16::MAX.to_le_bytes().to_vec());
    let p = t.take_padded(&[0, 3, 1], &pad).unwrap();
    assert_eq!(p.shape, [3, 3]);
    assert_eq!(p.lengths, [3, 1, 0]);
    let m = u16::MAX;
    assert_eq!(p.data, u16s([0, 1, 2, 8, m, m, m, m, m]));

    // pad_to, a multiple of 8, a cast to I64 with an I64 pad value.
    let pad = Pad {
        to: Some(4),
        multiple_of: 8,
        truncate: true,
        dtype: Some(Dtype::I64),
        ..Pad::new((-1i64).to_le_bytes().to_vec())
    };
    let p = t.take_padded(&[2], &pad).unwrap();
    assert_eq!(p.shape, [1, 8]);
    assert_eq!(p.lengths, [4]);
    let got: Vec<i64> = p
        .data
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, [3, 4, 5, 6, -1, -1, -1, -1]);

    let strict = Pad {
        to: Some(4),
        ..Pad::new(0u16.to_le_bytes().to_vec())
    };
    let e = t.take_padded(&[0, 2], &strict).unwrap_err();
    assert!(
        matches!(
            e,
            Error::RowTooLong {
                row: 2,
                length: 5,
                pad_to: 4,
                ..
            }
        ),
        "{e}"
    );
    let e = t.take_padded(&[0], &Pad::new(vec![0])).unwrap_err();
    assert!(e.to_string().contains("pad value is 1 bytes"), "{e}");
}

#[test]
fn hostile_offsets_are_refused_at_open_naming_the_column_and_index() {
    let dir = tempfile::tempdir().unwrap();
    for (offsets, index, what) in [
        (&[0u64, 4, 2, 6][..], 2, "smaller than the offset before it"),
        (&[0, 3, 7, 6], 2, "past the end"),
        (&[1, 3, 4, 6], 0, "first offset must be 0"),
        (
            &[0, 3, 4, 5],
            3,
            "the last offset must be the values' length, 6",
        ),
    ] {
        let path = dir.path().join("bad.mmt");
        TestStore::new()
            .ragged_offsets("tokens", Dtype::U16, &[6], u16s(0..6), offsets)
            .write(&path)
            .unwrap();
        // SAFETY: the test's own file.
        let e = unsafe { Store::open(&path) }.err().unwrap();
        let msg = e.to_string();
        assert!(
            matches!(&e, Error::Format { source: mmtensor_format::Error::RaggedOffsets { tensor, index: i, .. }, .. } if tensor == "tokens" && *i == index),
            "{offsets:?}: {msg}"
        );
        assert!(msg.contains(what) && msg.contains("bad.mmt"), "{msg}");
        assert!(Store::read(&path).is_err(), "the safe copy checks too");
    }
}

fn options(seq_len: u64, batch: u64) -> LoaderOptions {
    LoaderOptions {
        seq_len: Some(seq_len),
        ..LoaderOptions::new(batch)
    }
}

fn windows_of(loader: &mut Loader, dtype: Dtype) -> Vec<Vec<i64>> {
    let mut out = Vec::new();
    for b in loader.iter().unwrap() {
        let b = b.unwrap();
        let c = b.column("tokens").unwrap();
        assert_eq!(c.dtype(), dtype);
        let w = c.shape()[1] as usize;
        let vals: Vec<i64> = match dtype {
            Dtype::U16 => c
                .as_slice::<u16>()
                .unwrap()
                .iter()
                .map(|&v| v as i64)
                .collect(),
            Dtype::I64 => c.as_slice::<i64>().unwrap().to_vec(),
            _ => unreachable!(),
        };
        out.extend(vals.chunks(w).map(<[i64]>::to_vec));
    }
    out
}

#[test]
fn packed_windows_follow_the_stream_known_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.mmt");
    docs_store(&path, &[3, 9, 5, 12], 0); // 29 tokens: 0..29
    let store = open(&path);
    let mut l = Loader::new(&store, options(4, 3)).unwrap();
    // (29 - 1) / 4 = 7 windows of 5 tokens: window w is tokens 4w..4w+5.
    assert_eq!(l.spec().num_rows, 7);
    assert_eq!(l.len(), 3);
    let w = windows_of(&mut l, Dtype::U16);
    let want: Vec<Vec<i64>> = (0..7).map(|w| (4 * w..4 * w + 5).collect()).collect();
    assert_eq!(w, want);

    // Widened to I64 in the gather, shuffled: each window once, the same set.
    let mut o = options(4, 2);
    o.dtypes.insert("tokens".into(), Dtype::I64);
    o.shuffle = Shuffle::Full;
    o.seed = 3;
    let mut l = Loader::new(&store, o).unwrap();
    let mut got = windows_of(&mut l, Dtype::I64);
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn windows_within_documents_never_cross_a_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.mmt");
    docs_store(&path, &[3, 9, 5, 12], 0);
    let store = open(&path);
    let mut o = options(4, 8);
    o.within_documents = true;
    let mut l = Loader::new(&store, o).unwrap();
    // Doc 0 (0..3): none; doc 1 (3..12): 3, 7; doc 2 (12..17): 12; doc 3 (17..29): 17, 21.
    let starts: Vec<i64> = windows_of(&mut l, Dtype::U16)
        .iter()
        .map(|w| w[0])
        .collect();
    assert_eq!(starts, [3, 7, 12, 17, 21]);

    let mut o = options(20, 1);
    o.within_documents = true;
    let e = Loader::new(&store, o).err().unwrap();
    assert!(e.to_string().contains("longest has 12"), "{e}");
    let e = Loader::new(&store, options(29, 1)).err().unwrap();
    assert!(matches!(e, Error::Windows { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("seq_len = 29 needs at least 30 items"),
        "{e}"
    );
    assert!(Loader::new(&store, options(28, 1)).is_ok());
    let e = Loader::new(&store, options(0, 1)).err().unwrap();
    assert!(e.to_string().contains("seq_len is 0"), "{e}");
}

/// A dataset of ragged `tokens` over shards of the given document lengths; stream token k = k.
fn docs_dataset(dir: &Path, shards: &[&[u64]]) {
    let mut listed = Vec::new();
    let mut first = 0u16;
    for (i, lengths) in shards.iter().enumerate() {
        let name = format!("shard-{i:05}.mmt");
        let path = dir.join(&name);
        docs_store(&path, lengths, first);
        first += lengths.iter().sum::<u64>() as u16;
        let bytes = std::fs::read(&path).unwrap();
        let sum = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
        listed.push(Shard::new(name, bytes.len() as u64, sum, lengths.len() as u64).unwrap());
    }
    let m = Manifest::new(
        vec![
            ColumnSpec::new("label", Dtype::I64, vec![]).unwrap(),
            ColumnSpec::ragged("tokens", Dtype::U16, vec![]).unwrap(),
        ],
        listed,
    )
    .unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), m.encode()).unwrap();
}

#[test]
fn a_dataset_is_one_stream_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    docs_dataset(dir.path(), &[&[3, 4], &[], &[2], &[6, 5]]); // 20 tokens
                                                              // SAFETY: the test's own files.
    let ds = unsafe { Dataset::open(dir.path()) }.unwrap();
    assert_eq!(ds.columns().len(), 1, "label only");
    let e = ds.column("tokens").err().unwrap();
    assert!(matches!(e, Error::RaggedColumn { .. }), "{e}");
    let t = ds.ragged("tokens").unwrap();
    assert_eq!(t.num_rows(), 5);
    assert_eq!(t.num_values(), 20);
    assert_eq!(t.row(2).unwrap().as_slice::<u16>().unwrap(), [7, 8]);
    assert_eq!(
        t.row(4).unwrap().as_slice::<u16>().unwrap(),
        [15, 16, 17, 18, 19]
    );
    assert_eq!(t.take(&[4, 0]).unwrap().offsets, [0, 5, 8]);
    // Windows of 3 + 1 cross shard boundaries: (20 - 1) / 3 = 6 windows.
    let mut l = Loader::from_dataset(&ds, options(3, 4)).unwrap();
    let w = windows_of(&mut l, Dtype::U16);
    let want: Vec<Vec<i64>> = (0..6).map(|w| (3 * w..3 * w + 4).collect()).collect();
    assert_eq!(w, want);
    ds.verify().unwrap();
}

#[test]
fn windows_split_across_ranks_once_each_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    docs_dataset(dir.path(), &[&[50, 30], &[80], &[41]]); // 201 tokens, 50 windows of 4 + 1
                                                          // SAFETY: the test's own files.
    let ds = unsafe { Dataset::open(dir.path()) }.unwrap();
    let mut all = Vec::new();
    for rank in 0..3 {
        let o = LoaderOptions {
            shuffle: Shuffle::block(4),
            seed: 9,
            rank,
            world_size: 3,
            drop_last: true,
            ..options(4, 5)
        };
        let mut l = Loader::from_dataset(&ds, o.clone()).unwrap();
        let full = windows_of(&mut l, Dtype::U16);
        // Resume after every batch: the rest equals the uninterrupted run's rest.
        for k in 0..l.len() {
            let mut r = Loader::from_dataset(&ds, o.clone()).unwrap();
            r.set_state(r.state_at(0, k as u64)).unwrap();
            assert_eq!(windows_of(&mut r, Dtype::U16), full[k * 5..]);
        }
        all.extend(full);
    }
    let mut starts: Vec<i64> = all.iter().map(|w| w[0]).collect();
    starts.sort();
    starts.dedup();
    assert_eq!(starts.len(), all.len(), "no window twice");
    assert_eq!(
        all.len(),
        45,
        "50 windows: 16 per rank, 3 full batches of 5 with drop_last"
    );
    assert!(starts.iter().all(|s| s % 4 == 0));
}

fn padded_options(batch: u64, to: Option<u64>) -> LoaderOptions {
    let mut o = LoaderOptions::new(batch);
    o.pad.insert(
        "tokens".into(),
        Pad {
            to,
            truncate: to.is_some(),
            ..Pad::new((-1i64).to_le_bytes().to_vec())
        },
    );
    o.dtypes.insert("tokens".into(), Dtype::I64);
    o
}

/// One padded batch: labels, padded rows as vectors, lengths, padded width.
type PaddedRows = (Vec<i64>, Vec<Vec<i64>>, Vec<i64>, u64);

/// Every batch of `loader`.
fn padded_batches(loader: &mut Loader) -> Vec<PaddedRows> {
    let mut out = Vec::new();
    for b in loader.iter().unwrap() {
        let b = b.unwrap();
        let names: Vec<&str> = b.column_names().collect();
        assert_eq!(names, ["label", "tokens", "tokens.lengths"]);
        let t = b.column("tokens").unwrap();
        let width = t.shape()[1];
        assert_eq!(t.shape(), [b.len() as u64, width]);
        let rows: Vec<Vec<i64>> = t
            .as_slice::<i64>()
            .unwrap()
            .chunks(width.max(1) as usize)
            .map(<[i64]>::to_vec)
            .collect();
        let labels = b
            .column("label")
            .unwrap()
            .as_slice::<i64>()
            .unwrap()
            .to_vec();
        let lengths = b
            .column("tokens.lengths")
            .unwrap()
            .as_slice::<i64>()
            .unwrap()
            .to_vec();
        out.push((
            labels,
            if width == 0 {
                vec![vec![]; b.len()]
            } else {
                rows
            },
            lengths,
            width,
        ));
    }
    out
}

#[test]
fn ragged_rows_as_samples_are_padded_to_the_batch_with_their_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.mmt");
    docs_store(&path, &[3, 0, 5, 1, 2], 0); // rows 0..3, -, 3..8, 8, 9..11
    let store = open(&path);
    let mut l = Loader::new(&store, padded_options(2, None)).unwrap();
    let b = padded_batches(&mut l);
    assert_eq!(b.len(), 3);
    assert_eq!(
        b[0],
        (
            vec![0, 1],
            vec![vec![0, 1, 2], vec![-1, -1, -1]],
            vec![3, 0],
            3
        )
    );
    assert_eq!(
        b[1],
        (
            vec![2, 3],
            vec![vec![3, 4, 5, 6, 7], vec![8, -1, -1, -1, -1]],
            vec![5, 1],
            5
        )
    );
    assert_eq!(b[2], (vec![4], vec![vec![9, 10]], vec![2], 2));
    // pad_to 4 with truncate: every batch is 4 wide; row 2 is cut to 4.
    let mut l = Loader::new(&store, padded_options(5, Some(4))).unwrap();
    let b = padded_batches(&mut l);
    assert_eq!(b[0].3, 4);
    assert_eq!(b[0].1[2], [3, 4, 5, 6]);
    assert_eq!(b[0].2, [3, 0, 4, 1, 2]);
    // A pad for a column that is not ragged, or a ragged column without one.
    let mut o = padded_options(2, None);
    o.pad.insert("label".into(), Pad::new(vec![0; 8]));
    let e = Loader::new(&store, o).err().unwrap();
    assert!(e.to_string().contains("not a ragged column"), "{e}");
    let mut o = LoaderOptions::new(2);
    o.columns = Some(vec!["tokens".into()]);
    let e = Loader::new(&store, o).err().unwrap();
    assert!(e.to_string().contains("`pad`"), "{e}");
}

#[test]
fn length_grouped_batches_follow_the_spec_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.mmt");
    let lengths: Vec<u64> = (0..40).map(|i| (i * 7919) % 23).collect();
    docs_store(&path, &lengths, 0);
    let store = open(&path);
    let mut o = padded_options(4, None);
    o.shuffle = Shuffle::Full;
    o.seed = 11;
    let plain = Loader::new(&store, o.clone()).unwrap();
    o.group_by_length = Some(3);
    let mut grouped = Loader::new(&store, o.clone()).unwrap();
    // The spec, computed here from the plain order: windows of 3 batches (12 rows) sorted by
    // length, longest first, cut into batches, batches shuffled by the salted generator.
    let mut want = plain.spec().epoch(0).unwrap();
    want.group_by_length(3, 11, |r| lengths[r as usize]);
    let got: Vec<Vec<i64>> = padded_batches(&mut grouped)
        .into_iter()
        .map(|b| b.0)
        .collect();
    let want_rows: Vec<Vec<i64>> = want
        .iter()
        .map(|b| b.iter().map(|&r| r as i64).collect())
        .collect();
    assert_eq!(got, want_rows);
    // Same rows per window as the plain order, each batch sorted longest first.
    let plain_rows = plain.spec().epoch(0).unwrap().row_indices().to_vec();
    for w in 0..(40 / 12 + 1) {
        let a = (w * 12).min(40);
        let b = (a + 12).min(40);
        let mut x = plain_rows[a..b].to_vec();
        let mut y = want.row_indices()[a..b].to_vec();
        x.sort();
        y.sort();
        assert_eq!(x, y, "window {w}");
    }
    for batch in want.iter() {
        let l: Vec<u64> = batch.iter().map(|&r| lengths[r as usize]).collect();
        assert!(l.windows(2).all(|p| p[0] >= p[1]), "{l:?}");
    }
    // Less padding than the plain order.
    let width = |l: &mut Loader| {
        padded_batches(l)
            .iter()
            .map(|b| b.3 * b.0.len() as u64)
            .sum::<u64>()
    };
    let mut plain = Loader::new(&store, {
        let mut p = o.clone();
        p.group_by_length = None;
        p
    })
    .unwrap();
    let mut fresh = Loader::new(&store, o.clone()).unwrap();
    assert!(width(&mut fresh) < width(&mut plain), "epoch 0 of both");
    // Resume at every batch (of epoch 0: a fresh loader; `grouped` has moved on).
    let full = padded_batches(&mut Loader::new(&store, o.clone()).unwrap());
    for k in 0..fresh.len() {
        let mut r = Loader::new(&store, o.clone()).unwrap();
        r.set_state(r.state_at(0, k as u64)).unwrap();
        assert_eq!(padded_batches(&mut r), full[k..]);
    }
}

#[test]
fn a_mixture_of_token_streams_reads_windows_of_each_source_by_weight() {
    use mmtensor::{MixInput, Mixture};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.mmt"), dir.path().join("b.mmt"));
    docs_store(&a, &[50, 31, 20], 0); // 101 tokens: 25 windows of 4 + 1
    docs_store(&b, &[41], 10_000); // 41 tokens: 10 windows
    let (sa, sb) = (open(&a), open(&b));
    let mix = Mixture::new(vec![
        MixInput::new("a", &sa, 0.75),
        MixInput::new("b", &sb, 0.25),
    ]);
    let mut o = options(4, 5);
    o.shuffle = Shuffle::Full;
    o.seed = 3;
    o.dtypes.insert("tokens".into(), Dtype::I64);
    let mut l = Loader::from_mix(&mix, o.clone()).unwrap();
    let windows = windows_of(&mut l, Dtype::I64);
    assert_eq!(windows.len(), 35, "25 + 10 windows, 7 full batches of 5");
    let from_b = windows.iter().filter(|w| w[0] >= 10_000).count();
    assert!(
        (7..=10).contains(&from_b),
        "about a quarter from b: {from_b}"
    );
    for w in &windows {
        // A window is 5 consecutive tokens of one source, starting at a multiple of 4.
        let base = if w[0] >= 10_000 { 10_000 } else { 0 };
        assert_eq!((w[0] - base) % 4, 0, "{w:?}");
        assert!(w.windows(2).all(|p| p[1] == p[0] + 1), "{w:?}");
    }
    // Resumed at batch 3: the same rest.
    let mut r = Loader::from_mix(&mix, o).unwrap();
    r.set_state(r.state_at(0, 3)).unwrap();
    assert_eq!(windows_of(&mut r, Dtype::I64), windows[15..]);
}
