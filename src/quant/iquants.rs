//! The non-linear 4-bit formats: IQ4_NL and IQ4_XS (a 16-value grid, per
//! block or per 32 of a 256-element super-block), and MXFP4 (OCP
//! microscaling: E2M1 values with a power-of-two E8M0 scale per 32, the
//! weights of gpt-oss).
//!
//! Each decodes to `x = scale · grid[q]` with a 4-bit index `q` into a table
//! of small integers, so the dot products are integer sums of grid values
//! times 8-bit activations, scaled once per 32 elements, as ggml computes
//! them (`ggml_vec_dot_iq4_nl_q8_0`, `_iq4_xs_q8_K`, `_mxfp4_q8_0`). The
//! quantizers are ggml's reference ones (`quantize_row_*_ref`), operation
//! for operation.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{BlockFormat, BlockQ8_0, BlockQ8K, GgmlType, QK, QK_K, nearest_int};

/// The IQ4 grid (`kvalues_iq4nl`): non-uniform, denser near zero.
pub const IQ4_GRID: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// E2M1 values doubled (`kvalues_mxfp4`), so that they are integers.
pub const MXFP4_GRID: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// IQ4_NL: 32 elements, `x = d · IQ4_GRID[q]`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockIQ4NL {
    pub d: f16,
    /// Element j in the low nibble of byte j, element j+16 in the high one.
    pub qs: [u8; QK / 2],
}

/// IQ4_XS: 256 elements in 8 groups of 32, `x = d · (scale[g] - 32) ·
/// IQ4_GRID[q]` with 6-bit group scales (low 4 bits in `scales_l`, high 2 in
/// `scales_h`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockIQ4XS {
    pub d: f16,
    pub scales_h: u16,
    pub scales_l: [u8; QK_K / 64],
    /// Group g: bytes 16g..16g+16, low nibbles elements 32g.., high 32g+16..
    pub qs: [u8; QK_K / 2],
}

/// MXFP4: 32 elements, `x = 2^(e - 127) · MXFP4_GRID[q] / 2`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockMXFP4 {
    pub e: u8,
    pub qs: [u8; QK / 2],
}

/// `GGML_E8M0_TO_FP32_HALF`: 2^(e - 128) as an f32, exactly (subnormal for
/// e < 2).
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// The 32 grid indices of a block's 16 bytes (low nibbles first).
#[inline]
fn indices(qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = qs[j] & 0x0f;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

#[inline]
fn grid_dot(grid: &[i8; 16], qs: &[u8], a: &[i8]) -> i32 {
    let mut s = 0i32;
    for j in 0..16 {
        s += a[j] as i32 * grid[(qs[j] & 0x0f) as usize] as i32;
        s += a[j + 16] as i32 * grid[(qs[j] >> 4) as usize] as i32;
    }
    s
}

/// ggml's `best_index_int8`: the grid index nearest to `x` (grid ascending).
fn best_index(grid: &[i8; 16], x: f32) -> u8 {
    if x <= grid[0] as f32 {
        return 0;
    }
    if x >= grid[15] as f32 {
        return 15;
    }
    let (mut lo, mut hi) = (0usize, 15usize);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < grid[mid] as f32 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - (grid[hi - 1] as f32) < grid[hi] as f32 - x {
        (hi - 1) as u8
    } else {
        hi as u8
    }
}

/// One group of 32 as ggml's `quantize_row_iq4_nl_impl` fits it: indices
/// into `l`, and the group's float scale (`ntry` extra scales tried, none
/// below 0).
fn fit_group(x: &[f32], l: &mut [u8], ntry: i32) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        return 0.0;
    }
    let g0 = IQ4_GRID[0] as f32;
    let mut d = if ntry > 0 { -max / g0 } else { max / g0 };
    let mut id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for (j, &v) in x.iter().enumerate() {
        let i = best_index(&IQ4_GRID, id * v);
        l[j] = i;
        let q = IQ4_GRID[i as usize] as f32;
        let w = v * v;
        sumqx += w * q * v;
        sumq2 += w * q * q;
    }
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -ntry..=ntry {
        id = (itry as f32 + g0) / max;
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for &v in x {
            let q = IQ4_GRID[best_index(&IQ4_GRID, id * v) as usize] as f32;
            let w = v * v;
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

fn pack_indices(l: &[u8]) -> [u8; 16] {
    let mut qs = [0u8; 16];
    for j in 0..16 {
        qs[j] = l[j] | (l[16 + j] << 4);
    }
    qs
}

impl BlockFormat for BlockIQ4NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const ELEMS: usize = QK;
    type Act = BlockQ8_0;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, q) in out.iter_mut().zip(indices(&self.qs)) {
            *o = d * IQ4_GRID[q as usize] as f32;
        }
    }

    /// `quantize_row_iq4_nl_ref` (no extra scales tried).
    fn quantize(x: &[f32]) -> Self {
        let mut l = [0u8; 32];
        let d = fit_group(x, &mut l, -1);
        BlockIQ4NL {
            d: f16::from_f32(d),
            qs: if d == 0.0 { [0; 16] } else { pack_indices(&l) },
        }
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        let mut sum = 0f32;
        for (w, a) in w.iter().zip(a) {
            let d = a.d.to_f32() * w.d.to_f32();
            sum += d * grid_dot(&IQ4_GRID, &w.qs, &a.qs) as f32;
        }
        sum
    }
}

impl BlockIQ4XS {
    /// The 6-bit scale of group `g`, minus 32.
    pub fn group_scale(&self, g: usize) -> i32 {
        let lo = (self.scales_l[g / 2] >> (4 * (g % 2))) & 0x0f;
        let hi = ((self.scales_h >> (2 * g)) & 3) as u8;
        (lo | (hi << 4)) as i32 - 32
    }
}

impl BlockFormat for BlockIQ4XS {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const ELEMS: usize = QK_K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for g in 0..8 {
            let dl = d * self.group_scale(g) as f32;
            let q = indices(&self.qs[16 * g..16 * g + 16]);
            for (o, &q) in out[32 * g..32 * g + 32].iter_mut().zip(&q) {
                *o = dl * IQ4_GRID[q as usize] as f32;
            }
        }
    }

    /// `quantize_row_iq4_xs_ref`: each group fitted with 7 extra scales
    /// tried, the group scales quantized to 6 bits against the largest.
    fn quantize(x: &[f32]) -> Self {
        let mut l = [0u8; QK_K];
        let mut scales = [0f32; 8];
        let (mut amax_scale, mut max_scale) = (0f32, 0f32);
        for g in 0..8 {
            scales[g] = fit_group(&x[32 * g..32 * g + 32], &mut l[32 * g..32 * g + 32], 7);
            if scales[g].abs() > amax_scale {
                amax_scale = scales[g].abs();
                max_scale = scales[g];
            }
        }
        let mut b = BlockIQ4XS {
            d: f16::ZERO,
            scales_h: 0,
            scales_l: [0; 4],
            qs: [0; 128],
        };
        let d = -max_scale / 32.0;
        b.d = f16::from_f32(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for g in 0..8 {
            let ls = nearest_int(id * scales[g]).clamp(-32, 31);
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for j in 0..32 {
                l[32 * g + j] = best_index(&IQ4_GRID, idl * x[32 * g + j]);
            }
            let ls = (ls + 32) as u8;
            if g % 2 == 0 {
                b.scales_l[g / 2] = ls & 0x0f;
            } else {
                b.scales_l[g / 2] |= (ls & 0x0f) << 4;
            }
            b.scales_h |= ((ls >> 4) as u16) << (2 * g);
        }
        for g in 0..8 {
            b.qs[16 * g..16 * g + 16].copy_from_slice(&pack_indices(&l[32 * g..32 * g + 32]));
        }
        b
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8K]) -> f32 {
        let mut sum = 0f32;
        for (w, a) in w.iter().zip(a) {
            let d4d8 = w.d.to_f32() * a.d;
            for g in 0..8 {
                let dl = d4d8 * w.group_scale(g) as f32;
                let s = grid_dot(
                    &IQ4_GRID,
                    &w.qs[16 * g..16 * g + 16],
                    &a.qs[32 * g..32 * g + 32],
                );
                sum += dl * s as f32;
            }
        }
        sum
    }
}

impl BlockFormat for BlockMXFP4 {
    const TYPE: GgmlType = GgmlType::MXFP4;
    const ELEMS: usize = QK;
    type Act = BlockQ8_0;

    fn dequantize(&self, out: &mut [f32]) {
        let d = e8m0_to_f32_half(self.e);
        for (o, q) in out.iter_mut().zip(indices(&self.qs)) {
            *o = d * MXFP4_GRID[q as usize] as f32;
        }
    }

    /// `quantize_row_mxfp4_ref`: the exponent from the largest magnitude,
    /// each value to the nearest grid point (the first on ties).
    fn quantize(x: &[f32]) -> Self {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = if amax > 0.0 {
            (amax.log2().floor() - 2.0 + 127.0) as u8
        } else {
            0
        };
        let d = e8m0_to_f32_half(e);
        let best = |v: f32| {
            let mut best = (0u8, (MXFP4_GRID[0] as f32 * d - v).abs());
            for (i, &g) in MXFP4_GRID.iter().enumerate().skip(1) {
                let err = (g as f32 * d - v).abs();
                if err < best.1 {
                    best = (i as u8, err);
                }
            }
            best.0
        };
        let mut qs = [0u8; 16];
        for j in 0..16 {
            qs[j] = best(x[j]) | (best(x[j + 16]) << 4);
        }
        BlockMXFP4 { e, qs }
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        let mut sum = 0f32;
        for (w, a) in w.iter().zip(a) {
            let d = a.d.to_f32() * e8m0_to_f32_half(w.e);
            sum += d * grid_dot(&MXFP4_GRID, &w.qs, &a.qs) as f32;
        }
        sum
    }
}
