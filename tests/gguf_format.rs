//! GGUF reader and writer: round trips of every value type, split models,
//! validation errors, and hostile input (truncated and byte-flipped copies of the
//! real models must give errors, never panics).

mod common;

use std::path::Path;

use common::*;
use ferry::gguf::{
    Gguf, GgufError, GgufFile, GgufWriter, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS, Value,
    ValueType, parse_header, split_path, string_array,
};
use ferry::quant::{self, GgmlType};

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn all_values() -> Vec<(String, Value)> {
    vec![
        ("t.u8".into(), Value::U8(200)),
        ("t.i8".into(), Value::I8(-100)),
        ("t.u16".into(), Value::U16(60000)),
        ("t.i16".into(), Value::I16(-30000)),
        ("t.u32".into(), Value::U32(4_000_000_000)),
        ("t.i32".into(), Value::I32(-2_000_000_000)),
        ("t.f32".into(), Value::F32(1.5e-7)),
        ("t.bool".into(), Value::Bool(true)),
        ("t.string".into(), Value::String("héllo 世界 😀".into())),
        ("t.u64".into(), Value::U64(u64::MAX)),
        ("t.i64".into(), Value::I64(i64::MIN)),
        ("t.f64".into(), Value::F64(-2.5e300)),
        ("t.empty".into(), Value::Array(ValueType::U32, vec![])),
        ("t.strings".into(), string_array(["a", "", "ccc"])),
        (
            "t.nested".into(),
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-2)]),
                    Value::Array(ValueType::String, vec![Value::String("x".into())]),
                ],
            ),
        ),
    ]
}

fn write_model(
    path: &Path,
    extra: &[(String, Value)],
    tensors: &[(&str, Vec<u64>, GgmlType)],
) -> Vec<Vec<u8>> {
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", "test");
    for (k, v) in all_values().into_iter().chain(extra.iter().cloned()) {
        w.set(k, v);
    }
    let mut rng = Rng(42);
    let mut datas = Vec::new();
    for (name, shape, ty) in tensors {
        w.add_tensor(*name, shape, *ty).unwrap();
        let n: u64 = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        datas.push(quant::quantize(*ty, &values).unwrap());
    }
    let f = std::fs::File::create(path).unwrap();
    let mut out = w.write_header(std::io::BufWriter::new(f)).unwrap();
    for d in &datas {
        // Stream in uneven pieces to exercise the chunked writer.
        for piece in d.chunks(1000) {
            out.write(piece).unwrap();
        }
    }
    out.finish().unwrap();
    datas
}

#[test]
fn writer_round_trips_metadata_and_tensors() {
    let dir = tmpdir("roundtrip");
    let path = dir.join("m.gguf");
    let tensors = vec![
        ("a", vec![64, 3], GgmlType::F32),
        ("b", vec![256, 2], GgmlType::Q4_K),
        ("c", vec![32, 5, 2], GgmlType::Q8_0),
        ("d", vec![7], GgmlType::F16),
        ("e", vec![256], GgmlType::Q6_K),
    ];
    let datas = write_model(&path, &[], &tensors);
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.version(), 3);
    for (k, v) in all_values() {
        assert_eq!(g.get(&k), Some(&v), "{k}");
    }
    assert_eq!(g.tensors().len(), tensors.len());
    for ((name, shape, ty), data) in tensors.iter().zip(&datas) {
        let t = g.tensor(name).unwrap();
        assert_eq!(&t.shape, shape);
        assert_eq!(t.ty, *ty);
        assert_eq!(t.file_offset % 32, 0, "tensor data is aligned");
        assert_eq!(g.tensor_bytes(t), &data[..]);
    }
    assert_eq!(g.get_str("general.architecture").unwrap(), "test");
    assert!(g.get_u64("t.string").is_err());
    let e = g.get_str("missing.key").unwrap_err().to_string();
    assert!(e.contains("missing.key") && e.contains("m.gguf"), "{e}");
}

#[test]
fn custom_alignment_is_honoured() {
    let dir = tmpdir("align");
    let path = dir.join("m.gguf");
    write_model(
        &path,
        &[("general.alignment".into(), Value::U32(256))],
        &[("a", vec![3], GgmlType::F32), ("b", vec![5], GgmlType::F32)],
    );
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.files[0].header.alignment, 256);
    for t in g.tensors() {
        assert_eq!(t.file_offset % 256, 0);
    }
}

#[test]
fn split_models_open_as_one() {
    let dir = tmpdir("split");
    let prefix = dir.join("model").to_str().unwrap().to_string();
    let parts: [&[(&str, Vec<u64>, GgmlType)]; 3] = [
        &[("tok_embd", vec![32, 4], GgmlType::F32)],
        &[
            ("blk.0.w", vec![32, 2], GgmlType::Q8_0),
            ("blk.0.b", vec![32], GgmlType::F32),
        ],
        &[("output", vec![256, 1], GgmlType::Q4_K)],
    ];
    let mut all = Vec::new();
    for (i, tensors) in parts.iter().enumerate() {
        let extra = vec![
            (KEY_SPLIT_NO.to_string(), Value::U16(i as u16)),
            (KEY_SPLIT_COUNT.to_string(), Value::U16(3)),
            (KEY_SPLIT_TENSORS.to_string(), Value::I32(4)),
        ];
        let datas = write_model(&split_path(&prefix, i as u32 + 1, 3), &extra, tensors);
        all.extend(tensors.iter().map(|t| t.0).zip(datas));
    }
    // Any part opens the whole model.
    for no in 1..=3 {
        let g = Gguf::open(split_path(&prefix, no, 3)).unwrap();
        assert_eq!(g.files.len(), 3);
        assert_eq!(g.tensors().len(), 4);
        for (name, data) in &all {
            let t = g.tensor(name).unwrap();
            assert_eq!(g.tensor_bytes(t), &data[..], "{name}");
        }
    }
    std::fs::remove_file(split_path(&prefix, 2, 3)).unwrap();
    let err = Gguf::open(split_path(&prefix, 1, 3))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("part 2 of 3 is missing"), "{err}");
}

/// A minimal GGUF v3 file built by hand, for headers the writer refuses to make.
fn handmade(
    version: u32,
    tensor_type: u32,
    shape: &[u64],
    offset: u64,
    data_len: usize,
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&0u64.to_le_bytes()); // kv
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(b"w.x1");
    b.extend_from_slice(&(shape.len() as u32).to_le_bytes());
    for d in shape {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&tensor_type.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, data_len));
    b
}

#[test]
fn validation_errors_name_the_problem() {
    let p = Path::new("x.gguf");
    let ok = handmade(3, 0, &[4, 2], 0, 32);
    assert!(parse_header(p, &ok).is_ok());

    let e = parse_header(p, &handmade(1, 0, &[4, 2], 0, 32)).unwrap_err();
    assert!(
        matches!(e, GgufError::UnsupportedVersion { version: 1, .. }),
        "{e}"
    );

    let e = parse_header(p, &handmade(3, 34, &[256], 0, 54)).unwrap_err();
    assert!(
        e.to_string().contains("TQ1_0") && e.to_string().contains("w.x1"),
        "{e}"
    );
    let e = parse_header(p, &handmade(3, 99, &[4], 0, 16)).unwrap_err();
    assert!(
        matches!(e, GgufError::UnsupportedType { type_id: 99, .. }),
        "{e}"
    );

    let e = parse_header(p, &handmade(3, 0, &[4, 2], 0, 31)).unwrap_err();
    assert!(
        matches!(e, GgufError::Truncated { .. }) && e.to_string().contains("w.x1"),
        "{e}"
    );

    let e = parse_header(p, &handmade(3, 0, &[u64::MAX / 2, 4], 0, 32)).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");

    let e = parse_header(p, &handmade(3, 2, &[33], 0, 64)).unwrap_err();
    assert!(
        e.to_string()
            .contains("not a multiple of the Q4_0 block size 32"),
        "{e}"
    );

    let e = parse_header(p, &handmade(3, 0, &[4], 7, 64)).unwrap_err();
    assert!(e.to_string().contains("alignment"), "{e}");

    let e = parse_header(p, &handmade(3, 0, &[1, 2, 3, 4, 5], 0, 480)).unwrap_err();
    assert!(e.to_string().contains("5 dimensions"), "{e}");

    let e = parse_header(p, b"GGML\x03\0\0\0").unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { .. }), "{e}");
    let e = parse_header(p, b"").unwrap_err();
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");

    // A huge array length must be rejected before any allocation.
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(u64::MAX / 4).to_le_bytes());
    let e = parse_header(p, &b).unwrap_err();
    assert!(
        matches!(e, GgufError::Truncated { .. }) && e.to_string().contains("'k'"),
        "{e}"
    );
    // A length no file could have is a corrupt header, not a short download;
    // a tensor running past the end of a file is a short file.
    assert!(
        e.to_string().contains("a length in the header is corrupt"),
        "{e}"
    );
    let e = parse_header(p, &handmade(3, 0, &[4, 2], 0, 31)).unwrap_err();
    assert!(e.to_string().contains("probably incomplete"), "{e}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let e = GgufFile::open("/nonexistent/model.gguf")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("/nonexistent/model.gguf") && e.contains("cannot open"),
        "{e}"
    );
}

#[test]
fn truncated_real_models_give_errors_not_panics() {
    for model in MODELS {
        let bytes = std::fs::read(common::model(model)).unwrap();
        let header_end = parse_header(Path::new(model), &bytes).unwrap().data_offset as usize;
        let mut rng = Rng(3);
        // Every cut in the first 4 KiB, then random cuts in the rest of the header
        // and in the tensor data.
        let mut cuts: Vec<usize> = (0..4096.min(header_end)).collect();
        cuts.extend((0..300).map(|_| rng.below(header_end)));
        cuts.extend((0..100).map(|_| header_end + rng.below(bytes.len() - header_end)));
        for cut in cuts {
            let r = parse_header(Path::new(model), &bytes[..cut]);
            assert!(
                r.is_err(),
                "{model}: cut at {cut} of {} parsed",
                bytes.len()
            );
        }
    }
}

#[test]
fn byte_flipped_real_models_give_errors_or_valid_headers() {
    for model in MODELS {
        let mut bytes = std::fs::read(common::model(model)).unwrap();
        let header_end = parse_header(Path::new(model), &bytes).unwrap().data_offset as usize;
        let mut rng = Rng(11);
        let (mut errors, mut parsed) = (0, 0);
        for _ in 0..1500 {
            // Flip 1 to 4 bytes; concentrate on the first KiB where counts and
            // lengths live, and spread the rest over the header.
            let n = 1 + rng.below(4);
            let mut saved = Vec::new();
            for _ in 0..n {
                let at = if rng.below(2) == 0 {
                    rng.below(1024)
                } else {
                    rng.below(header_end)
                };
                saved.push((at, bytes[at]));
                bytes[at] ^= 1 << rng.below(8);
            }
            match parse_header(Path::new(model), &bytes) {
                Ok(h) => {
                    parsed += 1;
                    // A header that parses must describe in-bounds tensors.
                    for t in &h.tensors {
                        assert!(t.file_offset + t.n_bytes <= bytes.len() as u64);
                    }
                }
                Err(e) => {
                    errors += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
            for (at, b) in saved.into_iter().rev() {
                bytes[at] = b;
            }
        }
        assert!(
            errors > 100,
            "{model}: only {errors} of 1500 corruptions detected ({parsed} parsed)"
        );
    }
}
