//! The float formats: F32, F16 and BF16, one value per "block". Their dot
//! product runs against plain f32 activations.

use half::{bf16, f16};

use super::{BlockFormat, GgmlType};

impl BlockFormat for f32 {
    const TYPE: GgmlType = GgmlType::F32;
    const ELEMS: usize = 1;
    type Act = f32;

    fn dequantize(&self, out: &mut [f32]) {
        out[0] = *self;
    }
    fn quantize(x: &[f32]) -> Self {
        x[0]
    }
    fn vec_dot(w: &[Self], a: &[f32]) -> f32 {
        w.iter().zip(a).map(|(w, a)| w * a).sum()
    }
}

impl BlockFormat for f16 {
    const TYPE: GgmlType = GgmlType::F16;
    const ELEMS: usize = 1;
    type Act = f32;

    fn dequantize(&self, out: &mut [f32]) {
        out[0] = self.to_f32();
    }
    fn quantize(x: &[f32]) -> Self {
        f16::from_f32(x[0])
    }
    fn vec_dot(w: &[Self], a: &[f32]) -> f32 {
        w.iter().zip(a).map(|(w, a)| w.to_f32() * a).sum()
    }
}

/// f32 → bf16 as ggml rounds it: NaNs stay (quiet) NaNs, everything else rounds
/// to nearest even.
pub fn bf16_from_f32(x: f32) -> bf16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return bf16::from_bits(((u >> 16) | 64) as u16);
    }
    bf16::from_bits(((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16)
}

impl BlockFormat for bf16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const ELEMS: usize = 1;
    type Act = f32;

    fn dequantize(&self, out: &mut [f32]) {
        out[0] = f32::from_bits((self.to_bits() as u32) << 16);
    }
    fn quantize(x: &[f32]) -> Self {
        bf16_from_f32(x[0])
    }
    fn vec_dot(w: &[Self], a: &[f32]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| f32::from_bits((w.to_bits() as u32) << 16) * a)
            .sum()
    }
}
