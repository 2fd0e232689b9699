//! Views over every golden fixture are bit-exact against the bytes the writer was given.

use std::path::PathBuf;

use mmtensor::{bf16, f16, Complex, Dtype, Element, Error, Format, Store, F8E4M3, F8E5M2};
use mmtensor_convert::sample::{golden_stores, SampleTensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/golden")
        .join(name)
}

/// Both ways of opening a store: mapped and copied.
fn open_both(name: &str) -> [Store; 2] {
    let path = fixture(name);
    // SAFETY: the fixtures are committed files that nothing modifies while the tests run.
    let mapped = unsafe { Store::open(&path) }.unwrap();
    let copied = Store::read(&path).unwrap();
    assert!(mapped.is_mapped() && !copied.is_mapped());
    [mapped, copied]
}

/// The typed view equals the sample's bytes reinterpreted, and so does the copy.
fn typed<T: Element + PartialEq + std::fmt::Debug + bytemuck::Pod>(
    t: &mmtensor::Tensor<'_>,
    s: &SampleTensor,
) {
    let expected: Vec<T> = bytemuck::pod_collect_to_vec(&s.bytes);
    assert_eq!(t.as_slice::<T>().unwrap(), &expected[..], "{}", s.name);
    assert_eq!(t.to_vec::<T>().unwrap(), expected, "{}", s.name);
}

fn check_typed(t: &mmtensor::Tensor<'_>, s: &SampleTensor) {
    match s.dtype {
        Dtype::Bool => {
            let expected: Vec<bool> = s.bytes.iter().map(|&b| b == 1).collect();
            assert_eq!(t.as_slice::<bool>().unwrap(), &expected[..]);
            assert_eq!(t.to_vec::<bool>().unwrap(), expected);
        }
        Dtype::U8 => typed::<u8>(t, s),
        Dtype::U16 => typed::<u16>(t, s),
        Dtype::U32 => typed::<u32>(t, s),
        Dtype::U64 => typed::<u64>(t, s),
        Dtype::I8 => typed::<i8>(t, s),
        Dtype::I16 => typed::<i16>(t, s),
        Dtype::I32 => typed::<i32>(t, s),
        Dtype::I64 => typed::<i64>(t, s),
        Dtype::F16 => typed::<f16>(t, s),
        Dtype::BF16 => typed::<bf16>(t, s),
        Dtype::F32 => typed::<f32>(t, s),
        Dtype::F64 => typed::<f64>(t, s),
        Dtype::C64 => {
            typed::<Complex<f32>>(t, s);
            typed::<[f32; 2]>(t, s);
        }
        Dtype::C128 => {
            typed::<Complex<f64>>(t, s);
            typed::<[f64; 2]>(t, s);
        }
        Dtype::F8E4M3 => typed::<F8E4M3>(t, s),
        Dtype::F8E5M2 => typed::<F8E5M2>(t, s),
        other => panic!("no typed check for {other}"),
    }
}

#[test]
fn every_fixture_tensor_is_bit_exact_mapped_and_copied() {
    for (file, sample) in golden_stores() {
        for store in open_both(file) {
            assert_eq!(store.format(), Format::Mmt);
            let names: Vec<&str> = store.names().collect();
            let expected: Vec<&str> = sample.tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, expected, "{file}");
            let metadata: Vec<(String, String)> = store
                .metadata()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(metadata, sample.metadata, "{file}");
            assert_eq!(store.tensors().len(), sample.tensors.len());
            for (t, s) in store.tensors().zip(&sample.tensors) {
                assert_eq!(
                    (t.name(), t.dtype(), t.shape()),
                    (&*s.name, s.dtype, &s.shape[..])
                );
                assert_eq!(t.bytes().unwrap(), &s.bytes[..], "{file}: {}", s.name);
                let by_name = store.tensor(&s.name).unwrap();
                assert_eq!(by_name.byte_range(), t.byte_range());
                check_typed(&t, s);
                t.verify().unwrap();
            }
            store.verify().unwrap();
        }
    }
}

#[test]
fn mapped_views_are_aligned_to_the_store_alignment() {
    for (file, sample) in golden_stores() {
        for store in open_both(file) {
            for t in store.tensors() {
                let addr = t.bytes().unwrap().as_ptr() as u64;
                assert_eq!(t.byte_range().start % sample.alignment, 0);
                // The mapping starts on a page and the heap copy on 64 bytes, so an aligned offset
                // is an aligned address, at least to 64 bytes.
                assert_eq!(addr % sample.alignment.min(64), 0, "{file}: {}", t.name());
            }
        }
    }
}

#[test]
fn asking_for_the_wrong_type_names_both_types() {
    let [store, _] = open_both("dtypes-a64.mmt");
    let t = store.tensor("float32").unwrap();
    let err = t.as_slice::<f64>().unwrap_err();
    assert!(
        matches!(
            &err,
            Error::DtypeMismatch {
                dtype: Dtype::F32,
                requested: "f64",
                expected: "f32",
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("F32") && msg.contains("`f64`") && msg.contains("`f32`"),
        "{msg}"
    );
    assert!(
        msg.contains("dtypes-a64.mmt") && msg.contains("float32"),
        "{msg}"
    );

    // Raw-byte types do not stand in for their neighbours.
    let e4 = store.tensor("float8_e4m3fn").unwrap();
    assert!(matches!(
        e4.as_slice::<u8>(),
        Err(Error::DtypeMismatch { .. })
    ));
    assert!(matches!(
        e4.as_slice::<F8E5M2>(),
        Err(Error::DtypeMismatch { .. })
    ));
    assert_eq!(e4.as_slice::<F8E4M3>().unwrap().len(), 15);
    let b = store.tensor("bool").unwrap();
    assert!(matches!(
        b.as_slice::<u8>(),
        Err(Error::DtypeMismatch { .. })
    ));
    let c = store.tensor("complex64").unwrap();
    assert!(matches!(
        c.to_vec::<f32>(),
        Err(Error::DtypeMismatch { .. })
    ));
    let err = store.tensor("nope").unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { tensor, .. } if tensor == "nope"),
        "{err:?}"
    );
}

#[test]
fn row_ranges_are_zero_copy_slices_of_the_tensor() {
    for store in open_both("page-a4096.mmt") {
        let x = store.tensor("x").unwrap();
        let all: &[f32] = x.as_slice().unwrap();
        let rows = x.rows(10..20).unwrap();
        assert_eq!(rows.shape(), [10, 8]);
        let part: &[f32] = rows.as_slice().unwrap();
        assert_eq!(part.as_ptr(), all[80..].as_ptr());
        assert_eq!(part, &all[80..160]);
        // Rows of rows are relative to the view.
        let inner = rows.rows(2..=3).unwrap();
        assert_eq!(inner.as_slice::<f32>().unwrap(), &all[96..112]);
        assert_eq!(inner.byte_range().start, x.byte_range().start + 12 * 32);
        assert_eq!(x.rows(..).unwrap().shape(), x.shape());
        assert_eq!(x.rows(256..).unwrap().shape(), [0, 8]);
        rows.verify().unwrap();
        inner.verify().unwrap();

        for bad in [x.rows(250..257), rows.rows(5..11), x.rows(..=u64::MAX)] {
            let err = bad.unwrap_err();
            assert!(
                matches!(
                    &err,
                    Error::Format {
                        source: mmtensor_format::Error::RowRange { .. },
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = x.rows(5..4).unwrap_err();
        assert!(
            matches!(
                &reversed,
                Error::Format {
                    source: mmtensor_format::Error::RowRange {
                        start: 5,
                        end: 4,
                        ..
                    },
                    ..
                }
            ),
            "{reversed:?}"
        );
    }
    let [store, _] = open_both("dtypes-a64.mmt");
    let scalar = store.tensor("scalar").unwrap();
    assert_eq!(scalar.shape(), [] as [u64; 0]);
    assert_eq!(scalar.as_slice::<f64>().unwrap().len(), 1);
    assert!(matches!(
        scalar.rows(0..1),
        Err(Error::Format {
            source: mmtensor_format::Error::Scalar { .. },
            ..
        })
    ));
    let empty = store.tensor("empty").unwrap();
    assert_eq!(empty.as_slice::<f32>().unwrap(), &[] as &[f32]);
    assert_eq!(empty.rows(0..0).unwrap().shape(), [0, 4]);
    empty.verify().unwrap();
}

#[test]
fn empty_store_has_no_tensors() {
    for store in open_both("empty.mmt") {
        assert_eq!(store.names().count(), 0);
        assert!(store.metadata().is_empty());
        store.verify().unwrap();
        store.prefetch().wait().unwrap();
    }
}

#[test]
fn advice_and_prefetch_work_on_every_view() {
    use mmtensor::Advice;
    for store in open_both("page-a4096.mmt") {
        store.advise(Advice::Random).unwrap();
        for t in store.tensors() {
            for a in [
                Advice::Normal,
                Advice::Sequential,
                Advice::Random,
                Advice::WillNeed,
            ] {
                t.advise(a).unwrap();
            }
            let p = t.prefetch();
            p.wait().unwrap();
            if t.shape().first().is_some_and(|&n| n > 2) {
                t.rows(1..2).unwrap().advise(Advice::WillNeed).unwrap();
                t.rows(1..2).unwrap().prefetch().wait().unwrap();
            }
        }
        let p = store.prefetch();
        p.cancel();
        p.wait().unwrap();
        store.prefetch().wait().unwrap();
    }
}

#[test]
fn a_store_clone_keeps_the_bytes_alive() {
    let [store, _] = open_both("page-a4096.mmt");
    let owner = store.clone();
    let (ptr, len) = {
        let b = store.tensor("labels").unwrap().bytes().unwrap();
        (b.as_ptr() as usize, b.len())
    };
    drop(store);
    // The pointer a binding would hand to a foreign array is still valid through the clone.
    let again = owner.tensor("labels").unwrap().bytes().unwrap();
    assert_eq!((again.as_ptr() as usize, again.len()), (ptr, len));
    let handle =
        std::thread::spawn(move || owner.tensor("labels").unwrap().to_vec::<i64>().unwrap());
    assert_eq!(handle.join().unwrap().len(), 256);
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_views_borrow_the_store() {
    let [store, _] = open_both("page-a4096.mmt");
    let x = store.tensor("x").unwrap();
    let a = x.to_ndarray::<f32>().unwrap();
    assert_eq!(a.shape(), [256, 8]);
    assert_eq!(a.as_ptr(), x.as_slice::<f32>().unwrap().as_ptr());
    let r = x.rows(3..5).unwrap().to_ndarray::<f32>().unwrap();
    assert_eq!(r[[1, 2]], a[[4, 2]]);
    let [dt, _] = open_both("dtypes-a64.mmt");
    let s = dt.tensor("scalar").unwrap().to_ndarray::<f64>().unwrap();
    assert_eq!(s.ndim(), 0);
    let err = x.to_ndarray::<i32>().unwrap_err();
    assert!(matches!(err, Error::DtypeMismatch { .. }), "{err:?}");
}
