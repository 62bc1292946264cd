//! Block formats against the reference: dequantization bit-exact with gguf-py's
//! numpy dequantizers (random blocks and every tensor of both real models),
//! quantization bit-exact with ggml's `quantize_row_*_ref`, dot products
//! consistent with dequantize-then-multiply, and bounded k-quant round-trip error.

mod common;

use common::*;
use ferry::gguf::Gguf;
use ferry::quant::{self, GgmlType};
use sha2::{Digest, Sha256};

#[test]
fn dequantize_random_blocks_bit_exact_with_numpy() {
    for name in [
        "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
        "Q6_K", "IQ4_NL", "IQ4_XS", "MXFP4", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
        "IQ1_S", "IQ1_M",
    ] {
        let ty = GgmlType::from_name(name).unwrap();
        let blocks = read_fixture(&format!("quant/{name}.blocks"));
        let expected = f32s(&read_fixture(&format!("quant/{name}.f32")));
        let got = quant::dequantize_to_vec(ty, &blocks).unwrap();
        assert_eq!(got.len(), expected.len(), "{name}");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{name} element {i}: got {g}, numpy {e}"
            );
        }
    }
}

/// The 1-3 bit i-quants' dot products against ggml's own: `vec_dot` of
/// llama.cpp's CPU backend (its x86 kernels) on random blocks and Q8_K
/// activations that ggml quantized, every weight row with every activation
/// row (`scripts/gen_fixtures.py quant_lowbit`). Bit for bit, for the scalar
/// form and for the kernel this CPU runs.
#[test]
fn lowbit_dot_products_bit_identical_to_ggml() {
    use ferry::quant::{
        BlockFormat, BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S,
        BlockIQ3XXS, BlockQ8K,
    };
    fn check<W: BlockFormat<Act = BlockQ8K>>(name: &str) {
        const ROWS: usize = 16;
        let blocks = read_fixture(&format!("quant/{name}.blocks"));
        let acts = read_fixture("quant/lowbit.q8k");
        let want = f32s(&read_fixture(&format!("quant/{name}.dot")));
        let w: Vec<W> = bytemuck::pod_collect_to_vec(&blocks);
        let a: Vec<BlockQ8K> = bytemuck::pod_collect_to_vec(&acts);
        let per_row = w.len() / ROWS;
        let kernel = ferry::backend::cpu::simd::dot_kernel::<W>();
        for i in 0..ROWS {
            for j in 0..ROWS {
                let (wr, ar) = (
                    &w[i * per_row..(i + 1) * per_row],
                    &a[j * per_row..(j + 1) * per_row],
                );
                let e = want[i * ROWS + j];
                let scalar = W::vec_dot(wr, ar);
                let simd = kernel(wr, ar);
                assert_eq!(
                    (scalar.to_bits(), simd.to_bits()),
                    (e.to_bits(), e.to_bits()),
                    "{name} row {i} x activations {j}: scalar {scalar}, SIMD {simd} ({}), ggml {e}",
                    ferry::backend::cpu::simd::describe()
                );
            }
        }
    }
    check::<BlockIQ2XXS>("IQ2_XXS");
    check::<BlockIQ2XS>("IQ2_XS");
    check::<BlockIQ2S>("IQ2_S");
    check::<BlockIQ3XXS>("IQ3_XXS");
    check::<BlockIQ3S>("IQ3_S");
    check::<BlockIQ1S>("IQ1_S");
    check::<BlockIQ1M>("IQ1_M");
}

#[test]
fn quantize_bit_exact_with_ggml_reference() {
    let x = f32s(&read_fixture("quant/input.f32"));
    for name in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q8_K"] {
        let ty = GgmlType::from_name(name).unwrap();
        let expected = read_fixture(&format!("quant/{name}.ref"));
        let got = quant::quantize(ty, &x).unwrap();
        assert_eq!(got.len(), expected.len(), "{name}");
        let bb = ty.block_bytes();
        for (b, (g, e)) in got.chunks(bb).zip(expected.chunks(bb)).enumerate() {
            assert_eq!(
                g, e,
                "{name}: block {b} differs from ggml's reference quantizer"
            );
        }
    }
}

/// The grid formats' quantizers against ggml's `quantize_row_*_ref`. An
/// all-zero IQ4_NL block is compared by its scale only: ggml writes the
/// indices of whatever its stack array held (the previous block's, or
/// uninitialised memory for the first), which decode to zeros all the same.
#[test]
fn grid_quantizers_bit_exact_with_ggml_reference() {
    let x = f32s(&read_fixture("quant/input.f32"));
    for name in ["IQ4_NL", "IQ4_XS", "MXFP4"] {
        let ty = GgmlType::from_name(name).unwrap();
        let expected = read_fixture(&format!("quant/{name}.ref"));
        let got = quant::quantize(ty, &x).unwrap();
        assert_eq!(got.len(), expected.len(), "{name}");
        let bb = ty.block_bytes();
        let mut compared = 0;
        for (b, (g, e)) in got.chunks(bb).zip(expected.chunks(bb)).enumerate() {
            if ty == GgmlType::IQ4_NL && e[..2] == [0, 0] {
                assert_eq!(g[..2], e[..2], "{name}: block {b}'s scale");
                continue;
            }
            assert_eq!(
                g, e,
                "{name}: block {b} differs from ggml's reference quantizer"
            );
            compared += 1;
        }
        assert!(
            compared * 10 >= got.len() / bb * 9,
            "{name}: {compared} blocks compared"
        );
    }
}

#[test]
fn dequantize_every_real_tensor_bit_exact_with_numpy() {
    let fixture: serde_json::Value =
        serde_json::from_slice(&read_fixture("real_tensors.json")).unwrap();
    for model in MODELS {
        let g = Gguf::open(model_path(model)).unwrap();
        let expected = fixture[model].as_object().unwrap();
        assert_eq!(expected.len(), g.tensors().len(), "{model}: tensor count");
        for t in g.tensors() {
            let e = &expected[&t.name];
            assert_eq!(
                e["type"].as_str().unwrap(),
                t.ty.name(),
                "{model} {}",
                t.name
            );
            let values = quant::dequantize_to_vec(t.ty, g.tensor_bytes(t)).unwrap();
            assert_eq!(values.len() as u64, e["n"].as_u64().unwrap());
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let hash = format!("{:x}", Sha256::digest(&bytes));
            assert_eq!(
                hash,
                e["sha256"].as_str().unwrap(),
                "{model} tensor {} ({})",
                t.name,
                t.ty
            );
        }
    }
}

fn model_path(m: &str) -> std::path::PathBuf {
    model(m)
}

fn random_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    // Varying magnitudes per 32 values, like real weight rows.
    let mut v = Vec::with_capacity(n);
    for c in 0..n / 32 {
        let scale = 0.01 + 2.0 * rng.uniform() + if c % 7 == 0 { 5.0 } else { 0.0 };
        for _ in 0..32 {
            v.push(rng.normal() * scale);
        }
    }
    v
}

/// Relative RMS error of quantize → dequantize on normal-ish data. The bounds are
/// a little above what each format's bit width allows with simple min/max scaling.
#[test]
fn round_trip_error_is_bounded() {
    let mut rng = Rng(7);
    let x = random_values(&mut rng, 256 * 64);
    let bounds = [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 5e-3),
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q8_1, 0.01),
        (GgmlType::Q8_K, 0.02),
        (GgmlType::Q6_K, 0.04),
        (GgmlType::Q5_0, 0.06),
        (GgmlType::Q5_1, 0.06),
        (GgmlType::Q5_K, 0.07),
        (GgmlType::Q4_0, 0.12),
        (GgmlType::Q4_1, 0.12),
        (GgmlType::Q4_K, 0.13),
        (GgmlType::Q3_K, 0.20),
        (GgmlType::Q2_K, 0.40),
        (GgmlType::IQ3_S, 0.18),
        (GgmlType::IQ3_XXS, 0.24),
        (GgmlType::IQ2_S, 0.32),
        (GgmlType::IQ2_XS, 0.37),
        (GgmlType::IQ2_XXS, 0.43),
        (GgmlType::IQ1_M, 0.53),
        (GgmlType::IQ1_S, 0.58),
    ];
    let norm: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    for (ty, bound) in bounds {
        let q = quant::quantize(ty, &x).unwrap();
        assert_eq!(q.len(), ty.bytes_for(x.len() as u64).unwrap() as usize);
        let y = quant::dequantize_to_vec(ty, &q).unwrap();
        let err: f64 = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let rel = err / norm;
        eprintln!("{ty}: relative round-trip error {rel:.4} (bound {bound})");
        assert!(
            rel <= bound,
            "{ty}: relative round-trip error {rel:.4} > {bound}"
        );
        // Quantizing again what we dequantized must reproduce the same values
        // (the format can represent its own output).
        if ty.is_quantized() && ty != GgmlType::Q2_K && ty != GgmlType::Q3_K {
            let y2 = quant::dequantize_to_vec(ty, &quant::quantize(ty, &y).unwrap()).unwrap();
            let drift: f64 = y
                .iter()
                .zip(&y2)
                .map(|(&a, &b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                / norm;
            assert!(
                drift <= bound / 2.0,
                "{ty}: re-quantization drift {drift:.4}"
            );
        }
    }
}

#[test]
fn zero_and_constant_blocks_round_trip() {
    for ty in GgmlType::WEIGHT_TYPES {
        let n = 256;
        let zeros = vec![0f32; n];
        let y = quant::dequantize_to_vec(ty, &quant::quantize(ty, &zeros).unwrap()).unwrap();
        assert!(
            y.iter().all(|&v| v == 0.0),
            "{ty}: zeros must stay zeros, got {:?}",
            &y[..4]
        );
        let c = vec![0.5f32; n];
        let y = quant::dequantize_to_vec(ty, &quant::quantize(ty, &c).unwrap()).unwrap();
        for v in y {
            assert!(
                (v - 0.5).abs() < 0.02,
                "{ty}: constant 0.5 came back as {v}"
            );
        }
    }
}

/// The integer dot product against the activation format equals the float dot
/// product of the dequantized weights with the dequantized activations (up to
/// float summation order), and is close to the dot with the exact activations.
#[test]
fn dot_products_match_dequantized_reference() {
    let mut rng = Rng(99);
    let n = 256 * 8;
    for ty in GgmlType::WEIGHT_TYPES {
        let w = quant::quantize(ty, &random_values(&mut rng, n)).unwrap();
        let x = random_values(&mut rng, n);
        let got = quant::dot(ty, &w, &x).unwrap() as f64;

        let wf = quant::dequantize_to_vec(ty, &w).unwrap();
        let act = quant::activation_type(ty);
        let xq = quant::dequantize_to_vec(act, &quant::quantize(act, &x).unwrap()).unwrap();
        let exact_q: f64 = wf.iter().zip(&xq).map(|(&a, &b)| a as f64 * b as f64).sum();
        let exact: f64 = wf.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
        let mag: f64 = wf
            .iter()
            .zip(&x)
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum();

        assert!(
            (got - exact_q).abs() <= 1e-4 * mag,
            "{ty}: integer dot {got} vs dequantized {exact_q} (magnitude {mag})"
        );
        assert!(
            (got - exact).abs() <= 1e-2 * mag,
            "{ty}: dot with quantized activations {got} too far from exact {exact}"
        );
    }
}

#[test]
fn dynamic_entry_points_reject_bad_lengths() {
    assert!(quant::dequantize_to_vec(GgmlType::Q4_0, &[0u8; 17]).is_err());
    assert!(quant::quantize(GgmlType::Q4_K, &[0f32; 100]).is_err());
    let mut out = vec![0f32; 31];
    assert!(quant::dequantize(GgmlType::Q4_0, &[0u8; 18], &mut out).is_err());
    assert!(quant::dot(GgmlType::Q8_0, &[0u8; 34], &[0f32; 64]).is_err());
    assert!(quant::quantize(GgmlType::I32, &[0f32; 4]).is_err());
}

#[test]
fn type_table_is_consistent() {
    for ty in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        assert_eq!(GgmlType::from_name(ty.name()), Some(ty));
    }
    assert_eq!(GgmlType::Q4_K.bits_per_weight(), 4.5);
    assert_eq!(GgmlType::from_id(34), None);
    assert_eq!(GgmlType::unsupported_name(34), Some("TQ1_0"));
    assert_eq!(GgmlType::from_id(16), Some(GgmlType::IQ2_XXS));
}
