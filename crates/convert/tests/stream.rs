//! `DatasetWriter`: rows streamed in batches of any size, shards cut at row boundaries, nothing
//! visible before `finish`, and many part writers made visible by one `commit`.

use std::path::Path;

use mmtensor::Dataset;
use mmtensor_convert::{commit, prune, ConvertOptions, DatasetWriter, Error, Fill};
use mmtensor_format::{ColumnSpec, Dtype, MANIFEST_FILE};

fn columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("x", Dtype::F32, vec![3]).unwrap(),
        ColumnSpec::new("y", Dtype::I64, vec![]).unwrap(),
        ColumnSpec::new("m", Dtype::Bool, vec![2]).unwrap(),
    ]
}

/// Rows `from..from + n` of the test columns: x = [i, i + 0.5, -i], y = i * 7, m = [i odd, 1].
fn batch(from: u64, n: u64) -> [Vec<u8>; 3] {
    let (mut x, mut y, mut m) = (Vec::new(), Vec::new(), Vec::new());
    for i in from..from + n {
        for v in [i as f32, i as f32 + 0.5, -(i as f32)] {
            x.extend_from_slice(&v.to_le_bytes());
        }
        y.extend_from_slice(&(i as i64 * 7).to_le_bytes());
        m.extend_from_slice(&[(i % 2) as u8, 1]);
    }
    [x, y, m]
}

fn write(w: &mut DatasetWriter, from: u64, n: u64) {
    let [x, y, m] = batch(from, n);
    w.write_rows(n, &[&x, &y, &m]).unwrap();
}

/// Opens the dataset, verifies every byte (checksums, padding, bools) and checks that it holds
/// rows `0..rows` of [`batch`].
fn check_rows(dir: &Path, rows: u64) {
    // SAFETY: nothing modifies the test's files while they are mapped.
    let ds = unsafe { Dataset::open(dir) }.unwrap();
    ds.verify().unwrap();
    assert_eq!(ds.num_rows(), rows);
    let [x, y, m] = batch(0, rows);
    let all: Vec<u64> = (0..rows).collect();
    for (name, want) in [("x", x), ("y", y), ("m", m)] {
        let column = ds.column(name).unwrap();
        let mut got = vec![0u8; (rows * column.row_bytes()) as usize];
        column.take_into(&all, &mut got).unwrap();
        assert_eq!(got, want, "column {name}");
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn batches_of_any_size_are_cut_into_full_shards_and_a_short_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    // 3 x 4 + 8 + 2 = 22 bytes a row: 10 rows a shard.
    let mut w = DatasetWriter::create(&out, columns(), 220, &ConvertOptions::default()).unwrap();
    assert_eq!(w.rows_per_shard(), 10);
    let mut row = 0;
    for n in [1, 0, 7, 13, 2, 30, 1, 3] {
        write(&mut w, row, n);
        row += n;
    }
    assert!(
        !out.join(MANIFEST_FILE).exists(),
        "nothing is visible before finish"
    );
    let summary = w.finish().unwrap();
    assert_eq!(row, 57);
    let rows: Vec<u64> = summary
        .manifest
        .shards()
        .iter()
        .map(|s| s.num_rows())
        .collect();
    assert_eq!(rows, [10, 10, 10, 10, 10, 7]);
    assert_eq!(summary.rows_written, 57);
    check_rows(&out, 57);
}

#[test]
fn a_stream_shorter_than_one_shard_is_laid_out_for_its_rows() {
    for alignment in [64, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ds");
        let mut options = ConvertOptions::default();
        options.alignment = alignment;
        options.block_size = 4096;
        let mut w = DatasetWriter::create(&out, columns(), 1 << 30, &options).unwrap();
        // Rows written one at a time, then a batch: every column moves down at finish.
        for i in 0..5 {
            write(&mut w, i, 1);
        }
        write(&mut w, 5, 300);
        let summary = w.finish().unwrap();
        assert_eq!(summary.manifest.shards().len(), 1);
        let shard = &summary.manifest.shards()[0];
        let len = std::fs::metadata(out.join(shard.file())).unwrap().len();
        assert_eq!(len, shard.length());
        assert!(len < 64 << 10, "the shard is cut to its rows: {len} bytes");
        check_rows(&out, 305);
    }
}

#[test]
fn a_batch_that_does_not_fit_is_refused_whole_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let mut w =
        DatasetWriter::create(&out, columns(), 1 << 20, &ConvertOptions::default()).unwrap();
    write(&mut w, 0, 4);
    let [x, y, m] = batch(4, 2);
    let err = w.write_rows(2, &[&x, &y]).unwrap_err();
    assert!(matches!(err, Error::Batch { .. }), "{err}");
    assert!(err.to_string().contains("3"), "{err}");
    let err = w.write_rows(2, &[&x, &y[..8], &m]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("column `y`") && text.contains("8 bytes given for 2 rows"),
        "{text}"
    );
    let bad = [m[0], 2, m[2], m[3]];
    let err = w.write_rows(2, &[&x, &y, &bad]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("column `m`: element 1 of the batch (C order) is the byte 2"),
        "{text}"
    );
    write(&mut w, 4, 6);
    w.finish().unwrap();
    check_rows(&out, 10);
}

#[test]
fn a_writer_dropped_before_finish_leaves_nothing_and_the_old_dataset_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let mut w = DatasetWriter::create(&out, columns(), 220, &ConvertOptions::default()).unwrap();
    write(&mut w, 0, 35);
    drop(w);
    assert_eq!(
        files(&out),
        Vec::<String>::new(),
        "complete shards are removed too"
    );

    let mut w = DatasetWriter::create(&out, columns(), 220, &ConvertOptions::default()).unwrap();
    write(&mut w, 0, 15);
    w.finish().unwrap();
    let before = files(&out);
    let manifest = std::fs::read(out.join(MANIFEST_FILE)).unwrap();
    let mut w =
        DatasetWriter::append(&out, None, Fill::LastShard, &ConvertOptions::default()).unwrap();
    write(&mut w, 15, 40);
    w.abort();
    assert_eq!(files(&out), before);
    assert_eq!(std::fs::read(out.join(MANIFEST_FILE)).unwrap(), manifest);
    check_rows(&out, 15);
    let err = DatasetWriter::create(&out, columns(), 220, &ConvertOptions::default()).unwrap_err();
    assert!(matches!(err, Error::DatasetExists { .. }), "{err}");
}

#[test]
fn append_fills_the_last_shard_first_and_takes_the_datasets_columns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let mut w = DatasetWriter::create(&out, columns(), 220, &ConvertOptions::default()).unwrap();
    write(&mut w, 0, 13);
    w.finish().unwrap();
    let mut w =
        DatasetWriter::append(&out, None, Fill::LastShard, &ConvertOptions::default()).unwrap();
    assert_eq!(w.columns(), columns().as_slice());
    write(&mut w, 13, 2);
    write(&mut w, 15, 9);
    let summary = w.finish().unwrap();
    let rows: Vec<u64> = summary
        .manifest
        .shards()
        .iter()
        .map(|s| s.num_rows())
        .collect();
    assert_eq!(rows, [10, 10, 4]);
    assert_eq!(summary.rows_written, 11);
    assert_eq!(summary.rows_rewritten, 3);
    assert_eq!(summary.replaced, ["shard-00001.mmt"]);
    check_rows(&out, 24);
}

#[test]
fn parts_become_visible_together_in_the_order_of_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    std::fs::create_dir(&out).unwrap();
    // Part i holds rows 10 i .. 10 i + 10 (plus 3 more for the last); they finish in reverse.
    let sizes = [10u64, 10, 10, 13];
    let mut writers: Vec<DatasetWriter> = (0..4)
        .map(|id| {
            DatasetWriter::part(
                &out,
                id,
                Some(columns()),
                Some(88),
                &ConvertOptions::default(),
            )
            .unwrap()
        })
        .collect();
    for (id, w) in writers.iter_mut().enumerate() {
        write(w, id as u64 * 10, sizes[id]);
    }
    // Two of four finished: the others are still at work.
    let w3 = writers.pop().unwrap();
    let w2 = writers.pop().unwrap();
    w3.finish().unwrap();
    w2.finish().unwrap();
    let err = commit(&out, Some(4)).unwrap_err().to_string();
    assert!(
        err.contains("part(s) 0, 1 are still being written"),
        "{err}"
    );
    for w in writers.into_iter().rev() {
        w.finish().unwrap();
    }
    assert!(
        !out.join(MANIFEST_FILE).exists(),
        "nothing is visible before the commit"
    );
    let err = commit(&out, Some(5)).unwrap_err().to_string();
    assert!(
        err.contains("part(s) 4 of the 5 expected are missing"),
        "{err}"
    );
    let summary = commit(&out, Some(4)).unwrap();
    assert_eq!(summary.rows_written, 43);
    check_rows(&out, 43);
    assert!(
        !out.join("_parts").exists(),
        "the records are gone once committed"
    );

    // A second round appends after the dataset's rows; a part whose writer died is named.
    let mut w = DatasetWriter::part(&out, 0, None, None, &ConvertOptions::default()).unwrap();
    write(&mut w, 43, 5);
    w.finish().unwrap();
    std::fs::create_dir_all(out.join("_parts")).unwrap();
    std::fs::write(
        out.join("_parts/part-00001.writing"),
        b"{\"nonce\":\"0123456789abcdef\"}",
    )
    .unwrap();
    std::fs::write(out.join("part-00001-0123456789abcdef-00000.mmt"), b"half").unwrap();
    let err = commit(&out, None).unwrap_err().to_string();
    assert!(
        err.contains("part(s) 1 stopped before they finished"),
        "{err}"
    );
    check_rows(&out, 43);
    let pruned = prune(&out, false).unwrap();
    let removed: Vec<&str> = pruned.removed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        removed,
        [
            "_parts/part-00001.writing",
            "part-00001-0123456789abcdef-00000.mmt"
        ],
        "the dead writer's files go; the finished part's shards stay"
    );
    commit(&out, None).unwrap();
    check_rows(&out, 48);
}

#[test]
fn a_part_with_other_columns_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let mut w = DatasetWriter::create(&out, columns(), 220, &ConvertOptions::default()).unwrap();
    write(&mut w, 0, 3);
    w.finish().unwrap();
    let mut other = columns();
    other[1] = ColumnSpec::new("y", Dtype::I32, vec![]).unwrap();
    let err = DatasetWriter::part(&out, 0, Some(other), None, &ConvertOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("column `y` is I64"), "{err}");
    let err = DatasetWriter::part(
        dir.path().join("new"),
        0,
        None,
        None,
        &ConvertOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs its columns"), "{err}");
    // Two writers of one part at once: the second is refused while the first lives.
    let first = DatasetWriter::part(&out, 7, None, None, &ConvertOptions::default()).unwrap();
    let err = DatasetWriter::part(&out, 7, None, None, &ConvertOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("part 7 is being written by another writer"),
        "{err}"
    );
    drop(first);
    assert!(!out.join("_parts/part-00007.writing").exists());
}

#[test]
fn short_shards_of_every_size_are_laid_out_again_byte_exact() {
    for alignment in [64, 4096] {
        for rows in [1, 2, 7, 63, 64, 65, 187, 500] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("ds");
            let mut options = ConvertOptions::default();
            options.alignment = alignment;
            options.block_size = 4096;
            // Room for about 47,000 rows a shard: every stream here ends in a short shard.
            let mut w = DatasetWriter::create(&out, columns(), 1 << 20, &options).unwrap();
            let mut row = 0;
            for n in [rows / 3, rows - rows / 3] {
                write(&mut w, row, n);
                row += n;
            }
            let summary = w.finish().unwrap();
            assert_eq!(summary.manifest.shards().len(), 1);
            check_rows(&out, rows);
        }
    }
}
