//! The CPU backend's SIMD kernels against the scalar references of `quant`.

mod common;

use common::Rng;
use ferry::backend::cpu::simd;
use ferry::quant::{
    self, BlockFormat, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1,
    BlockQ5K, BlockQ6K, BlockQ8_0,
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
