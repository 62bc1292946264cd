//! The CPU backend's SIMD kernels against the scalar references of `quant`.

mod common;

use common::Rng;
use ferry::backend::cpu::simd;
use ferry::quant::{
    self, BlockFormat, BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S,
    BlockIQ3XXS, BlockIQ4NL, BlockIQ4XS, BlockMXFP4, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1,
    BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0,
};

fn values(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| rng.normal() * (1.0 + (i % 37) as f32 * 0.1))
        .collect()
}

fn check<W: BlockFormat>() {
    let mut rng = Rng(5 + W::TYPE.id() as u64);
    let kernel = simd::dot_kernel::<W>();
    for n_blocks in [1usize, 2, 7, 16] {
        let n = n_blocks * W::ELEMS.max(256);
        let w: Vec<W> = quant::quantize_blocks(&values(&mut rng, n)).unwrap();
        let a: Vec<W::Act> = quant::quantize_blocks(&values(&mut rng, n)).unwrap();
        let want = W::vec_dot(&w, &a);
        let got = kernel(&w, &a);
        let scale: f32 = quant::dequantize_blocks(&w)
            .iter()
            .zip(quant::dequantize_blocks(&a))
            .map(|(x, y)| (x * y).abs())
            .sum();
        assert!(
            (got - want).abs() <= 1e-5 * scale + 1e-6,
            "{}: SIMD {got} vs reference {want} ({n} values, {})",
            W::TYPE,
            simd::describe()
        );
    }
}

#[test]
fn simd_dot_products_match_the_reference() {
    check::<BlockQ4_0>();
    check::<BlockQ4_1>();
    check::<BlockQ5_0>();
    check::<BlockQ5_1>();
    check::<BlockQ8_0>();
    check::<BlockQ2K>();
    check::<BlockQ3K>();
    check::<BlockQ4K>();
    check::<BlockQ5K>();
    check::<BlockQ6K>();
    check::<BlockIQ4NL>();
    check::<BlockIQ4XS>();
    check::<BlockMXFP4>();
    check::<BlockIQ2XXS>();
    check::<BlockIQ2XS>();
    check::<BlockIQ2S>();
    check::<BlockIQ3XXS>();
    check::<BlockIQ3S>();
    check::<BlockIQ1S>();
    check::<BlockIQ1M>();
}

#[test]
fn float_helpers_match_scalar() {
    let mut rng = Rng(1);
    for n in [1usize, 7, 8, 15, 64, 100] {
        let a = values(&mut rng, n);
        let b = values(&mut rng, n);
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((simd::dot_f32(&a, &b) - want).abs() < 1e-3 * (1.0 + want.abs()));
        let k: Vec<half::f16> = a.iter().map(|&v| half::f16::from_f32(v)).collect();
        let want: f32 = k.iter().zip(&b).map(|(x, y)| x.to_f32() * y).sum();
        assert!((simd::dot_f16_f32(&k, &b) - want).abs() < 1e-3 * (1.0 + want.abs()));
        let mut acc = b.clone();
        simd::axpy_f16(&mut acc, &k, 0.5);
        for i in 0..n {
            assert!((acc[i] - (b[i] + 0.5 * k[i].to_f32())).abs() < 1e-5);
        }
    }
}

#[test]
fn grouped_dots_agree_with_the_scalar_form() {
    let mut rng = Rng(77);
    let groups = 28;
    let cols = groups * 32;
    let w: Vec<i8> = (0..cols)
        .map(|_| (rng.below(255) as i32 - 127) as i8)
        .collect();
    let scale: Vec<[f32; 8]> = (0..groups)
        .map(|_| {
            let (a, b) = (rng.uniform(), rng.uniform());
            [a, a, a, a, b, b, b, b]
        })
        .collect();
    let acts: Vec<Vec<i8>> = (0..8)
        .map(|_| {
            (0..cols)
                .map(|_| (rng.below(255) as i32 - 127) as i8)
                .collect()
        })
        .collect();
    let ds: Vec<Vec<f32>> = (0..8)
        .map(|_| (0..groups).map(|_| rng.uniform() * 0.01).collect())
        .collect();
    let want: Vec<f32> = (0..8)
        .map(|k| simd::grouped_dot(&w, &scale, &acts[k], &ds[k]))
        .collect();
    let magnitude: Vec<f32> = (0..8)
        .map(|k| {
            (0..cols)
                .map(|i| {
                    (w[i] as f32
                        * acts[k][i] as f32
                        * scale[i / 32][0].max(scale[i / 32][4])
                        * ds[k][i / 32])
                        .abs()
                })
                .sum()
        })
        .collect();
    let four = simd::grouped_dot4(
        &w,
        &scale,
        std::array::from_fn(|k| acts[k].as_slice()),
        std::array::from_fn(|k| ds[k].as_slice()),
    );
    for k in 0..4 {
        assert!(
            (four[k] - want[k]).abs() <= 1e-5 * magnitude[k],
            "4-token kernel, row {k}"
        );
    }
    if let Some(eight) = simd::grouped_dot8(
        &w,
        &scale,
        std::array::from_fn(|k| acts[k].as_slice()),
        std::array::from_fn(|k| ds[k].as_slice()),
    ) {
        for k in 0..8 {
            assert!(
                (eight[k] - want[k]).abs() <= 1e-5 * magnitude[k],
                "8-token kernel, row {k}"
            );
        }
    }
}

#[test]
fn simd_activation_quantizers_are_bit_identical() {
    use ferry::quant::{BlockQ8_0, BlockQ8_1};
    let mut rng = Rng(3);
    let mut x = values(&mut rng, 32 * 64);
    x[0..32].fill(0.0);
    x[32..64].fill(-1.5);
    for (i, v) in x[64..96].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) * 0.5; // exact ties after scaling
    }
    let want0: Vec<BlockQ8_0> = x.chunks(32).map(BlockQ8_0::quantize_activation).collect();
    let want1: Vec<BlockQ8_1> = x.chunks(32).map(BlockQ8_1::quantize_activation).collect();
    assert_eq!(simd::quantize_q8_0(&x), want0);
    assert_eq!(simd::quantize_q8_1(&x), want1);
}

#[test]
fn attention_helpers_match_scalar() {
    let mut rng = Rng(9);
    for hd in [64usize, 128, 40] {
        let k = values(&mut rng, 8 * hd);
        let q = values(&mut rng, hd);
        let got = simd::dot8_rows(&k, &q, hd);
        for r in 0..8 {
            let want: f32 = k[r * hd..(r + 1) * hd]
                .iter()
                .zip(&q)
                .map(|(a, b)| a * b)
                .sum();
            assert!(
                (got[r] - want).abs() < 1e-3 * (1.0 + want.abs()),
                "hd {hd} row {r}"
            );
        }
        let n = 13;
        let v = values(&mut rng, n * hd);
        let p: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
        let mut out = vec![0f32; hd];
        simd::weighted_rows(&v, &p, hd, &mut out);
        for d in 0..hd {
            let want: f32 = (0..n).map(|j| p[j] * v[j * hd + d]).sum();
            assert!((out[d] - want).abs() < 1e-3 * (1.0 + want.abs()));
        }
    }
}

/// The prefill path (weights unpacked once per tile, `gemm`) and the decode
/// path (one fused dot product per row) agree for every weight type.
#[test]
fn gemm_path_matches_the_dot_path_for_every_type() {
    use ferry::backend::Backend;
    use ferry::backend::cpu::{CpuAct, CpuBackend};
    use ferry::gguf::Gguf;
    use ferry::quant::GgmlType;
    let dir = std::env::temp_dir().join(format!("ferry-gemm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let b = CpuBackend::new(2);
    let mut rng = Rng(21);
    for ty in GgmlType::WEIGHT_TYPES {
        let path = dir.join(format!("{}.gguf", ty.name()));
        let mut spec = ferry::synth::TinySpec::new(ty);
        spec.n_layers = 1;
        ferry::synth::write_random_llama(&path, &spec).unwrap();
        let g = Gguf::open(&path).unwrap();
        let t = g.tensor("blk.0.ffn_down.weight").unwrap();
        let tref = ferry::model::TensorRef::from_info(t);
        let w = b.load_weight(&g, &tref).unwrap();
        let n = 11;
        let mut x = CpuAct::zeros(n, w.cols);
        x.data.iter_mut().for_each(|v| *v = rng.normal());
        let mut batched = CpuAct::zeros(n, w.rows);
        b.matmul(&x, &w, &mut batched);
        for tok in 0..n {
            let mut one = CpuAct::zeros(1, w.cols);
            one.data.copy_from_slice(x.row(tok));
            let mut out = CpuAct::zeros(1, w.rows);
            b.matmul(&one, &w, &mut out);
            for r in 0..w.rows {
                let (a, c) = (batched.row(tok)[r], out.data[r]);
                // Outside the k-quants the two paths are the same arithmetic:
                // the server relies on it for batch-invariant decode.
                if !ty.gemm_differs_from_dot() {
                    assert_eq!(
                        a.to_bits(),
                        c.to_bits(),
                        "{ty}: token {tok} row {r}: gemm {a} vs dot {c}"
                    );
                }
                assert!(
                    (a - c).abs() <= 1e-4 * (1.0 + c.abs()),
                    "{ty}: token {tok} row {r}: gemm {a} vs dot {c}"
                );
            }
        }
    }
}

/// The 1-3 bit i-quants in llama.cpp's tiled order (batches of 8 tokens and
/// more): the SIMD row kernel gives the scalar form's bits, and a batch of 11
/// tokens through the backend gives each token `vec_dot_lowbit_tiled`'s bits.
#[test]
fn lowbit_tiled_products_match_the_scalar_form() {
    use ferry::backend::Backend;
    use ferry::backend::cpu::{CpuAct, CpuBackend};
    use ferry::quant::{BlockQ8K, TiledBlock};
    fn check_tiled<W: quant::LowBit>(b: &CpuBackend) {
        let mut rng = Rng(11 + W::TYPE.id() as u64);
        let row4 = simd::tiled_row4_kernel();
        let (rows, cols, n) = (5usize, 3 * 256, 11usize);
        let wv = values(&mut rng, rows * cols);
        let w: Vec<W> = quant::quantize_blocks(&wv).unwrap();
        let x = values(&mut rng, n * cols);
        let a: Vec<BlockQ8K> = x.chunks(256).map(BlockQ8K::quantize_activation).collect();
        let nb = cols / 256;
        let blocks: Vec<TiledBlock> = w[..nb].iter().map(TiledBlock::of).collect();
        let toks: [&[BlockQ8K]; 4] = std::array::from_fn(|k| &a[k * nb..(k + 1) * nb]);
        let got = row4(&blocks, toks);
        for k in 0..4 {
            let want = quant::vec_dot_lowbit_tiled(&w[..nb], toks[k]);
            assert_eq!(
                got[k].to_bits(),
                want.to_bits(),
                "{}: row kernel, token {k}",
                W::TYPE
            );
        }
        let bytes: Vec<u8> = bytemuck::cast_slice(&w).to_vec();
        let t = ferry::model::TensorRef {
            name: "w".into(),
            ty: W::TYPE,
            shape: vec![cols as u64, rows as u64],
            file_index: 0,
            file_offset: 0,
            n_bytes: bytes.len() as u64,
        };
        let wt = ferry::backend::cpu::CpuWeight::new(
            ferry::gguf::SharedBytes::external(Box::new(bytes)),
            &t,
        )
        .unwrap();
        let mut xa = CpuAct::zeros(n, cols);
        xa.data.copy_from_slice(&x);
        let mut out = CpuAct::zeros(n, rows);
        b.matmul(&xa, &wt, &mut out);
        for t in 0..n {
            for r in 0..rows {
                let want =
                    quant::vec_dot_lowbit_tiled(&w[r * nb..(r + 1) * nb], &a[t * nb..(t + 1) * nb]);
                let got = out.row(t)[r];
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{}: token {t} row {r}",
                    W::TYPE
                );
            }
        }
    }
    let b = CpuBackend::new(2);
    check_tiled::<BlockIQ2XXS>(&b);
    check_tiled::<BlockIQ2XS>(&b);
    check_tiled::<BlockIQ2S>(&b);
    check_tiled::<BlockIQ3XXS>(&b);
    check_tiled::<BlockIQ3S>(&b);
    check_tiled::<BlockIQ1S>(&b);
    check_tiled::<BlockIQ1M>(&b);
}

/// The 1-3 bit i-quants below 8 tokens: four tokens per pass through one
/// decoded row give each token the single-token kernel's bits.
#[test]
fn lowbit_four_token_kernel_matches_one_token() {
    use ferry::quant::BlockQ8K;
    fn check_x4<W: quant::LowBit>() {
        let mut rng = Rng(31 + W::TYPE.id() as u64);
        let nb = 3;
        let w: Vec<W> = quant::quantize_blocks(&values(&mut rng, nb * 256)).unwrap();
        let x = values(&mut rng, 4 * nb * 256);
        let a: Vec<BlockQ8K> = x.chunks(256).map(BlockQ8K::quantize_activation).collect();
        let toks: [&[BlockQ8K]; 4] = std::array::from_fn(|k| &a[k * nb..(k + 1) * nb]);
        let got = simd::lowbit_x4_kernel::<W>()(&w, toks);
        let one = simd::dot_kernel::<W>();
        for k in 0..4 {
            let want = one(&w, toks[k]);
            assert_eq!(got[k].to_bits(), want.to_bits(), "{}: token {k}", W::TYPE);
            assert_eq!(want.to_bits(), quant::vec_dot_lowbit(&w, toks[k]).to_bits());
        }
    }
    check_x4::<BlockIQ2XXS>();
    check_x4::<BlockIQ2XS>();
    check_x4::<BlockIQ2S>();
    check_x4::<BlockIQ3XXS>();
    check_x4::<BlockIQ3S>();
    check_x4::<BlockIQ1S>();
    check_x4::<BlockIQ1M>();
}
