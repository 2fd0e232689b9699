//! Golden files pin the on-disk format: any change to the bytes the writer produces fails here.
//!
//! To change the format on purpose, bump the version in docs/FORMAT.md and run
//! `MMT_BLESS=1 cargo test -p mmtensor-convert --test golden` to rewrite `fixtures/golden/`.

use std::path::PathBuf;

use mmtensor_convert::sample::golden_stores;
use mmtensor_format::{block_checksum, block_checksums, decode_checksum_table, FileLayout};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden")
}

#[test]
fn writer_reproduces_golden_files_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let bless = std::env::var_os("MMT_BLESS").is_some();
    for (name, store) in golden_stores() {
        let fresh = dir.path().join(name);
        store.write(&fresh).unwrap();
        let fresh = std::fs::read(&fresh).unwrap();
        let golden_path = fixtures().join(name);
        if bless {
            std::fs::write(&golden_path, &fresh).unwrap();
            continue;
        }
        let golden = std::fs::read(&golden_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with MMT_BLESS=1 to create it)",
                golden_path.display()
            )
        });
        assert!(
            fresh == golden,
            "{name}: the writer's bytes differ from the golden file; if the format changed on purpose, bump its version and rebless"
        );
    }
}

#[test]
fn golden_files_hold_exactly_the_sample_bytes() {
    for (name, store) in golden_stores() {
        let file = std::fs::read(fixtures().join(name)).unwrap();
        let layout = FileLayout::parse(&file, file.len() as u64).unwrap();
        assert_eq!(layout.header().alignment, store.alignment);
        assert_eq!(layout.header().tensors.len(), store.tensors.len());
        let table = &file[layout.checksum_table_range().start as usize..]
            [..layout.header().checksums.length as usize];
        assert_eq!(block_checksum(table), layout.header().checksums.checksum);
        let table: Vec<u64> = decode_checksum_table(table).collect();
        for (t, s) in layout.header().tensors.iter().zip(&store.tensors) {
            assert_eq!(
                (t.name.as_str(), t.dtype, &t.shape),
                (s.name.as_str(), s.dtype, &s.shape)
            );
            let r = layout.tensor_range(t);
            assert_eq!(r.start % store.alignment, 0, "{name}: {}", t.name);
            assert_eq!(
                &file[r.start as usize..r.end as usize],
                &s.bytes[..],
                "{name}: {}",
                t.name
            );
            let blocks = t.blocks_for(0..t.length, layout.header().block_size);
            assert_eq!(
                &table[blocks.start as usize..blocks.end as usize],
                &block_checksums(&s.bytes, layout.header().block_size.get())[..]
            );
        }
        for r in layout.padding_ranges() {
            assert!(file[r.start as usize..r.end as usize]
                .iter()
                .all(|&b| b == 0));
        }
        assert_eq!(layout.checksum_table_range().end, file.len() as u64);
    }
}
