//! The 1-3 bit i-quants: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S and
//! IQ1_M, the formats of most "UD" and low-bit releases of large models.
//!
//! Each stores super-blocks of 256 weights as indices into a grid
//! (`iq_tables`) of 8 or 4 magnitudes, sign bits (IQ2/IQ3) or a ±1/8 shift
//! (IQ1), an integer scale per 16 or 32 weights and one f16 scale. Every type
//! here decodes (`LowBit::decode`) to the same integer form, [`Decoded`]:
//! grid values, negation bits, odd integer scales and IQ1's shift signs. The
//! dequantization, the scalar dot product and the SIMD kernels
//! (`backend::cpu::simd`) are written once against that form.
//!
//! The dot product against Q8_K activations follows the lanes of ggml's AVX2
//! kernels (`ggml_vec_dot_iq*_q8_K` in ggml-cpu/arch/x86/quants.c): per
//! super-block, eight i32 sums, lane l holding weights 4l..4l+3 of every
//! 32; then one fused multiply-add per lane with `d_w · d_a`, and the lanes
//! summed as `hsum_float_8` sums them. Integer sums are exact, so this
//! scalar form and the AVX2 kernel give the same bits, and both give
//! llama.cpp's on x86 (`tests/quant_reference.rs` checks against ggml's own
//! `vec_dot`).
//!
//! The quantizers are ferry's own (ggml's need an importance matrix for most
//! of these types): a scale per super-block and per 16 or 32 weights from
//! the largest magnitudes, then for every 8 (IQ3: 4) weights the grid entry
//! nearest to them. They serve synthetic models and tests; their round-trip
//! error is bounded in the tests.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::iq_tables::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use super::{BlockFormat, BlockQ8K, GgmlType, QK_K};

/// IQ2_XXS: 2.06 bits per weight. Per 32 weights, four u16 (two u32):
/// the first holds four 8-bit indices into `IQ2XXS_GRID`, the second four
/// 7-bit sign indices (`ksigns`) and a 4-bit scale in its top bits.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockIQ2XXS {
    pub d: f16,
    pub qs: [u16; QK_K / 8],
}

/// IQ2_XS: 2.31 bits per weight. One u16 per 8 weights: a 9-bit index into
/// `IQ2XS_GRID` and a 7-bit sign index; a 4-bit scale per 16 weights.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockIQ2XS {
    pub d: f16,
    pub qs: [u16; QK_K / 8],
    pub scales: [u8; QK_K / 32],
}

/// IQ2_S: 2.56 bits per weight. A 10-bit index into `IQ2S_GRID` per 8
/// weights (low 8 bits in `qs[..32]`, high 2 in `qh`), 8 explicit sign
/// bits per 8 weights (`qs[32..]`), a 4-bit scale per 16 weights.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockIQ2S {
    pub d: f16,
    pub qs: [u8; QK_K / 4],
    pub qh: [u8; QK_K / 32],
    pub scales: [u8; QK_K / 32],
}

/// IQ3_XXS: 3.06 bits per weight. An 8-bit index into `IQ3XXS_GRID` per 4
/// weights (`qs[..64]`), then per 32 weights a u32 of four 7-bit sign
/// indices and a 4-bit scale.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockIQ3XXS {
    pub d: f16,
    pub qs: [u8; 3 * QK_K / 8],
}

/// IQ3_S: 3.44 bits per weight. A 9-bit index into `IQ3S_GRID` per 4
/// weights (low 8 bits in `qs`, the 9th in `qh`), 8 sign bits per 8
/// weights, a 4-bit scale per 32 weights.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockIQ3S {
    pub d: f16,
    pub qs: [u8; QK_K / 4],
    pub qh: [u8; QK_K / 32],
    pub signs: [u8; QK_K / 8],
    pub scales: [u8; QK_K / 64],
}

/// IQ1_S: 1.56 bits per weight. An 11-bit index into `IQ1S_GRID` (values
/// -1, 0, 1) per 8 weights (low 8 bits in `qs`, 3 in `qh`); per 32 weights
/// in `qh`'s top bits a 3-bit scale and the sign of a ±1/8 shift.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockIQ1S {
    pub d: f16,
    pub qs: [u8; QK_K / 8],
    pub qh: [u16; QK_K / 32],
}

/// IQ1_M: 1.75 bits per weight. Per 8 weights an 11-bit index into
/// `IQ1S_GRID` and the sign of its ±1/8 shift (a nibble of `qh`: 3 index
/// bits, 1 shift bit); a 3-bit scale per 16 weights; the f16 super-block
/// scale spread over the top nibbles of the four u16 of `scales`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockIQ1M {
    pub qs: [u8; QK_K / 8],
    pub qh: [u8; QK_K / 16],
    pub scales: [u8; QK_K / 32],
}

/// ggml's `ksigns_iq2xs`: a 7-bit sign index and its parity bit as the 8th,
/// so that every 8 weights have an even number of negative signs.
#[inline]
fn ksigns(i: u32) -> u8 {
    KSIGNS[(i & 127) as usize]
}

/// `ksigns` as a table (a lookup per 8 weights where the parity took a
/// popcount and four more operations in the decode kernels).
const KSIGNS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = i as u8 | (((i as u32).count_ones() & 1) as u8) << 7;
        i += 1;
    }
    t
};

/// The shift IQ1 weights carry (`IQ1S_DELTA`, `IQ1M_DELTA`).
pub const IQ1_DELTA: f32 = 0.125;

/// A super-block of any type here as integers: weight `e` is
/// `d · C · scale[e / 16] · (±q[e] + delta[e / 8] / 8)`, negated where bit
/// `e % 32` of `neg[e / 32]` is set; `C` is [`LowBit::DEQ_SCALE`].
#[derive(Clone, Copy)]
pub struct Decoded {
    /// Grid values: magnitudes (IQ2, IQ3) or -1/0/1 (IQ1).
    pub q: [i8; QK_K],
    pub neg: [u32; QK_K / 32],
    /// Odd integer scales, 1..31, one per 16 weights.
    pub scale: [i16; QK_K / 16],
    /// IQ1's shift sign (±1) per 8 weights; 0 for the other types.
    pub delta: [i8; QK_K / 8],
}

impl Default for Decoded {
    fn default() -> Self {
        Decoded {
            q: [0; QK_K],
            neg: [0; QK_K / 32],
            scale: [0; QK_K / 16],
            delta: [0; QK_K / 8],
        }
    }
}

/// How ggml's AVX2 kernel turns its lane sums into the dot product.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Finish {
    /// `C · hsum(acc)` (IQ2: 1/8, IQ3_XXS: 1/4, IQ3_S: 1).
    Scaled(f32),
    /// IQ1_S: `hsum(acc) + 1/8 · s`, the shifts summed in one scalar `s`.
    Iq1S,
    /// IQ1_M: `hsum(acc) + 1/8 · hsum(acc2)`, the shifts in lanes of their own.
    Iq1M,
}

/// 32 weights of a block as integers: four grid entries of 8 values
/// (IQ3: two entries of 4 in each), sign bits, the odd integer scales of the
/// two halves, IQ1's shift sign per 8 (0 for the others).
#[derive(Clone, Copy, Default)]
pub struct Group32 {
    pub q: [u64; 4],
    pub neg: u32,
    pub scale: [i16; 2],
    pub delta: [i8; 4],
}

/// A 1-3 bit i-quant block.
pub trait LowBit: BlockFormat<Act = BlockQ8K> {
    /// The super-block scale.
    fn d(&self) -> f32;
    /// Weights 32·b .. 32·b + 32 as integers: the one per-type definition
    /// that dequantization and every dot product read.
    fn group(&self, b: usize) -> Group32;
    /// The block as integers (every field of `out` is written).
    fn decode(&self, out: &mut Decoded) {
        for b in 0..QK_K / 32 {
            let g = self.group(b);
            for (l, &e) in g.q.iter().enumerate() {
                let bytes: [i8; 8] = bytemuck::cast(e.to_le_bytes());
                out.q[32 * b + 8 * l..32 * b + 8 * l + 8].copy_from_slice(&bytes);
            }
            out.neg[b] = g.neg;
            out.scale[2 * b..2 * b + 2].copy_from_slice(&g.scale);
            out.delta[4 * b..4 * b + 4].copy_from_slice(&g.delta);
        }
    }
    /// The factor between `d · scale` and a weight's step (ggml's
    /// `(0.5 + ls) · 0.25` is `(2·ls + 1) / 8`).
    const DEQ_SCALE: f32;
    const FINISH: Finish;
    /// Whether the type has IQ1's shift.
    const SHIFTED: bool = false;
    /// The factor llama.cpp's tiled CPU GEMM (batches of 8 tokens and more)
    /// applies to `d` (`tiled_unpack_src0`): `DEQ_SCALE`, and for IQ1,
    /// whose values it holds as `8·q ± 1`, 1/8.
    const TILED_SCALE: f32 = if Self::SHIFTED {
        0.125
    } else {
        Self::DEQ_SCALE
    };
}

/// Sign bits of four groups of 8 from 7-bit sign indices (`ksigns`) packed
/// 7 bits apart in `aux`.
#[inline]
fn ksigns4(aux: u32) -> u32 {
    (0..4).fold(0u32, |n, l| n | (ksigns(aux >> (7 * l)) as u32) << (8 * l))
}

/// Two 4-value IQ3 grid entries as one 8-value entry.
#[inline]
fn pair(lo: u32, hi: u32) -> u64 {
    lo as u64 | (hi as u64) << 32
}

impl LowBit for BlockIQ2XXS {
    const DEQ_SCALE: f32 = 0.125;
    const FINISH: Finish = Finish::Scaled(0.125);
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    #[inline(always)]
    fn group(&self, b: usize) -> Group32 {
        let idx = self.qs[4 * b] as u32 | (self.qs[4 * b + 1] as u32) << 16;
        let aux = self.qs[4 * b + 2] as u32 | (self.qs[4 * b + 3] as u32) << 16;
        let s = 2 * (aux >> 28) as i16 + 1;
        Group32 {
            q: std::array::from_fn(|l| IQ2XXS_GRID[((idx >> (8 * l)) & 255) as usize]),
            neg: ksigns4(aux),
            scale: [s, s],
            delta: [0; 4],
        }
    }
}

/// The two 4-bit scales of 32 weights (IQ2_XS, IQ2_S) as odd integers.
#[inline]
fn nibble_scales(s: u8) -> [i16; 2] {
    [2 * (s & 15) as i16 + 1, 2 * (s >> 4) as i16 + 1]
}

impl LowBit for BlockIQ2XS {
    const DEQ_SCALE: f32 = 0.125;
    const FINISH: Finish = Finish::Scaled(0.125);
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    #[inline(always)]
    fn group(&self, b: usize) -> Group32 {
        let v: [u16; 4] = std::array::from_fn(|l| self.qs[4 * b + l]);
        Group32 {
            q: std::array::from_fn(|l| IQ2XS_GRID[(v[l] & 511) as usize]),
            neg: (0..4).fold(0u32, |n, l| {
                n | (ksigns((v[l] >> 9) as u32) as u32) << (8 * l)
            }),
            scale: nibble_scales(self.scales[b]),
            delta: [0; 4],
        }
    }
}

impl LowBit for BlockIQ2S {
    const DEQ_SCALE: f32 = 0.125;
    const FINISH: Finish = Finish::Scaled(0.125);
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    #[inline(always)]
    fn group(&self, b: usize) -> Group32 {
        let qh = self.qh[b] as usize;
        let signs = &self.qs[QK_K / 8 + 4 * b..QK_K / 8 + 4 * b + 4];
        Group32 {
            q: std::array::from_fn(|l| {
                IQ2S_GRID[self.qs[4 * b + l] as usize | ((qh << (8 - 2 * l)) & 0x300)]
            }),
            neg: u32::from_le_bytes([signs[0], signs[1], signs[2], signs[3]]),
            scale: nibble_scales(self.scales[b]),
            delta: [0; 4],
        }
    }
}

impl LowBit for BlockIQ3XXS {
    const DEQ_SCALE: f32 = 0.25;
    const FINISH: Finish = Finish::Scaled(0.25);
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    #[inline(always)]
    fn group(&self, b: usize) -> Group32 {
        let at = QK_K / 4 + 4 * b;
        let aux = u32::from_le_bytes([
            self.qs[at],
            self.qs[at + 1],
            self.qs[at + 2],
            self.qs[at + 3],
        ]);
        let s = 2 * (aux >> 28) as i16 + 1;
        let g = |k: usize| IQ3XXS_GRID[self.qs[8 * b + k] as usize];
        Group32 {
            q: std::array::from_fn(|l| pair(g(2 * l), g(2 * l + 1))),
            neg: ksigns4(aux),
            scale: [s, s],
            delta: [0; 4],
        }
    }
}

impl LowBit for BlockIQ3S {
    const DEQ_SCALE: f32 = 1.0;
    const FINISH: Finish = Finish::Scaled(1.0);
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    #[inline(always)]
    fn group(&self, b: usize) -> Group32 {
        let s = 2 * ((self.scales[b / 2] >> (4 * (b % 2))) & 15) as i16 + 1;
        let qh = self.qh[b] as usize;
        let g = |k: usize| IQ3S_GRID[self.qs[8 * b + k] as usize | (((qh >> k) & 1) << 8)];
        let signs = &self.signs[4 * b..4 * b + 4];
        Group32 {
            q: std::array::from_fn(|l| pair(g(2 * l), g(2 * l + 1))),
            neg: u32::from_le_bytes([signs[0], signs[1], signs[2], signs[3]]),
            scale: [s, s],
            delta: [0; 4],
        }
    }
}

impl LowBit for BlockIQ1S {
    const DEQ_SCALE: f32 = 1.0;
    const FINISH: Finish = Finish::Iq1S;
    const SHIFTED: bool = true;
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    #[inline(always)]
    fn group(&self, b: usize) -> Group32 {
        let qh = self.qh[b] as usize;
        let s = 2 * ((qh >> 12) & 7) as i16 + 1;
        let delta = if qh & 0x8000 != 0 { -1 } else { 1 };
        Group32 {
            q: std::array::from_fn(|l| {
                IQ1S_GRID[self.qs[4 * b + l] as usize | (((qh >> (3 * l)) & 7) << 8)]
            }),
            neg: 0,
            scale: [s, s],
            delta: [delta; 4],
        }
    }
}

impl BlockIQ1M {
    /// The four u16 of `scales`.
    #[inline]
    fn sc(&self) -> [u16; 4] {
        std::array::from_fn(|i| u16::from_le_bytes([self.scales[2 * i], self.scales[2 * i + 1]]))
    }

    /// The super-block scale, from the top nibbles of the four u16.
    pub fn scale(&self) -> f16 {
        let sc = self.sc();
        f16::from_bits(
            (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000),
        )
    }
}

impl LowBit for BlockIQ1M {
    const DEQ_SCALE: f32 = 1.0;
    const FINISH: Finish = Finish::Iq1M;
    const SHIFTED: bool = true;
    fn d(&self) -> f32 {
        self.scale().to_f32()
    }
    #[inline(always)]
    fn group(&self, b: usize) -> Group32 {
        let sc = u16::from_le_bytes([self.scales[2 * (b / 2)], self.scales[2 * (b / 2) + 1]]);
        let shift = 6 * (b % 2);
        let nib = |l: usize| (self.qh[2 * b + l / 2] >> (4 * (l % 2))) as usize & 15;
        Group32 {
            q: std::array::from_fn(|l| {
                IQ1S_GRID[self.qs[4 * b + l] as usize | ((nib(l) & 7) << 8)]
            }),
            neg: 0,
            scale: [
                2 * ((sc >> shift) & 7) as i16 + 1,
                2 * ((sc >> (shift + 3)) & 7) as i16 + 1,
            ],
            delta: std::array::from_fn(|l| if nib(l) & 8 != 0 { -1 } else { 1 }),
        }
    }
}

/// Dequantize through the integer form, in ggml's float order:
/// `(d · scale · C) · q`, negated, or IQ1's `(d · scale) · (q ± 1/8)`.
fn dequantize_lowbit<W: LowBit>(w: &W, out: &mut [f32]) {
    let mut dec = Decoded::default();
    w.decode(&mut dec);
    let d = w.d();
    for (e, o) in out.iter_mut().enumerate().take(QK_K) {
        let dl = d * dec.scale[e / 16] as f32;
        let q = dec.q[e] as f32;
        *o = if W::SHIFTED {
            dl * (q + IQ1_DELTA * dec.delta[e / 8] as f32)
        } else {
            let v = dl * W::DEQ_SCALE * q;
            if dec.neg[e / 32] >> (e % 32) & 1 != 0 {
                -v
            } else {
                v
            }
        };
    }
}

/// The integer lane sums of one super-block against one Q8_K block:
/// `(lanes, shift_lanes, shift_sum)` as ggml's AVX2 kernels form them.
fn lane_sums(dec: &Decoded, a: &BlockQ8K) -> ([i32; 8], [i32; 8], i32) {
    let mut lanes = [0i32; 8];
    let mut shift_lanes = [0i32; 8];
    let mut shift_sum = 0i32;
    for e in 0..QK_K {
        let s = dec.scale[e / 16] as i32;
        let a = a.qs[e] as i32;
        let mut p = dec.q[e] as i32 * a;
        if dec.neg[e / 32] >> (e % 32) & 1 != 0 {
            p = -p;
        }
        lanes[(e % 32) / 4] += s * p;
        let sh = dec.delta[e / 8] as i32 * a * s;
        shift_lanes[(e % 32) / 4] += sh;
        shift_sum += sh;
    }
    (lanes, shift_lanes, shift_sum)
}

/// `hsum_float_8`: (lanes 0-3 + lanes 4-7), then pairs, then the two left.
#[inline]
fn hsum8(v: &[f32; 8]) -> f32 {
    let s: [f32; 4] = std::array::from_fn(|i| v[i + 4] + v[i]);
    let t = [s[0] + s[2], s[1] + s[3]];
    t[0] + t[1]
}

/// The dot product in the lanes of ggml's AVX2 kernel (see the module notes).
pub fn vec_dot_lowbit<W: LowBit>(w: &[W], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    let mut acc2 = [0f32; 8];
    let mut acc1 = 0f32;
    let mut dec = Decoded::default();
    for (w, a) in w.iter().zip(a) {
        w.decode(&mut dec);
        let d = w.d() * a.d;
        let (lanes, shift_lanes, shift_sum) = lane_sums(&dec, a);
        for l in 0..8 {
            acc[l] = d.mul_add(lanes[l] as f32, acc[l]);
            acc2[l] = d.mul_add(shift_lanes[l] as f32, acc2[l]);
        }
        acc1 = finish_shift_sum(acc1, d, shift_sum);
    }
    finish::<W>(&acc, &acc2, acc1)
}

/// The exact integer sum of one super-block against one Q8_K block in the
/// units of llama.cpp's tiled GEMM: `Σ scale · (±q) · a`, for IQ1
/// `Σ scale · (8·q ± 1) · a`.
fn tiled_sum<W: LowBit>(dec: &Decoded, a: &BlockQ8K) -> i32 {
    let (lanes, shift_lanes, _) = lane_sums(dec, a);
    let s: i32 = lanes.iter().sum();
    if W::SHIFTED {
        8 * s + shift_lanes.iter().sum::<i32>()
    } else {
        s
    }
}

/// The dot product as llama.cpp's tiled CPU GEMM forms it for batches of
/// 8 tokens and more (ggml-cpu/tiled: `tiled_run_microtile`, AVX2 and
/// AVX-512 VNNI alike): per super-block the exact integer sum, times
/// `d · TILED_SCALE`, then `acc = fma(that, d_a, acc)`, super-block after
/// super-block.
pub fn vec_dot_lowbit_tiled<W: LowBit>(w: &[W], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    let mut dec = Decoded::default();
    for (w, a) in w.iter().zip(a) {
        w.decode(&mut dec);
        acc = (tiled_sum::<W>(&dec, a) as f32 * (w.d() * W::TILED_SCALE)).mul_add(a.d, acc);
    }
    acc
}

/// 8 bits as 8 bytes: 0xFF where the bit is set.
const BYTE_MASKS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut j = 0;
        while j < 8 {
            if i >> j & 1 != 0 {
                t[i] |= 0xFF << (8 * j);
            }
            j += 1;
        }
        i += 1;
    }
    t
};

/// A super-block as llama.cpp's tiled GEMM holds it, decoded once for all
/// the tokens of a tile: signed values (IQ1: `8·q ± 1`), the integer scale
/// of each 16, and `d · TILED_SCALE`.
#[derive(Clone, Copy)]
pub struct TiledBlock {
    pub w: [i8; QK_K],
    pub scale: [i16; QK_K / 16],
    pub d: f32,
}

impl Default for TiledBlock {
    fn default() -> Self {
        TiledBlock {
            w: [0; QK_K],
            scale: [0; QK_K / 16],
            d: 0.0,
        }
    }
}

impl TiledBlock {
    /// `block`'s values in the tiled GEMM's units, 8 at a time: a negated
    /// magnitude `q` (≥ 1 in every grid) is `(q ^ 0xFF) + 1` with no carry
    /// out of its byte.
    pub fn of<W: LowBit>(block: &W) -> Self {
        let mut t = TiledBlock {
            d: block.d() * W::TILED_SCALE,
            ..Default::default()
        };
        for b in 0..QK_K / 32 {
            let g = block.group(b);
            for l in 0..4 {
                let e = if W::SHIFTED {
                    let mut v: [i8; 8] = bytemuck::cast(g.q[l].to_le_bytes());
                    for x in &mut v {
                        *x = 8 * *x + g.delta[l];
                    }
                    u64::from_le_bytes(bytemuck::cast(v))
                } else {
                    let m = BYTE_MASKS[((g.neg >> (8 * l)) & 255) as usize];
                    (g.q[l] ^ m).wrapping_add(m & 0x0101_0101_0101_0101)
                };
                let at = 32 * b + 8 * l;
                t.w[at..at + 8]
                    .copy_from_slice(&bytemuck::cast::<[u8; 8], [i8; 8]>(e.to_le_bytes()));
            }
            t.scale[2 * b..2 * b + 2].copy_from_slice(&g.scale);
        }
        t
    }

    /// The exact `Σ scale · w · a` against one Q8_K block.
    pub fn sum(&self, a: &BlockQ8K) -> i32 {
        let mut s = 0i32;
        for (g, sc) in self.scale.iter().enumerate() {
            let part: i32 = (16 * g..16 * g + 16)
                .map(|e| self.w[e] as i32 * a.qs[e] as i32)
                .sum();
            s += *sc as i32 * part;
        }
        s
    }
}

/// IQ1_S's scalar accumulation of its shifts, `acc1 += d · s`, which the
/// compiler contracts to a fused multiply-add in llama.cpp's x86 build
/// (checked against ggml's `vec_dot` in `tests/quant_reference.rs`).
#[inline]
pub fn finish_shift_sum(acc1: f32, d: f32, s: i32) -> f32 {
    d.mul_add(s as f32, acc1)
}

/// The lanes to the dot product, as `W`'s AVX2 kernel ends.
#[inline]
pub fn finish<W: LowBit>(acc: &[f32; 8], acc2: &[f32; 8], acc1: f32) -> f32 {
    match W::FINISH {
        Finish::Scaled(c) => c * hsum8(acc),
        Finish::Iq1S => hsum8(acc) + IQ1_DELTA * acc1,
        Finish::Iq1M => hsum8(acc) + IQ1_DELTA * hsum8(acc2),
    }
}

// ---------------------------------------------------------------------------
// Quantization: for a few super-block scales, every group's best integer
// scale and nearest grid entries; the lowest squared error wins.

/// A grid's entries, indexed by the pattern of their values' levels: every
/// combination of levels (IQ2: 3^8, IQ3: 8^4, IQ1: 3^8) maps to the entry
/// nearest to it, found once by exhaustive search, so fitting 8 weights is a
/// rounding per weight and one lookup.
struct GridIndex {
    entries: Vec<u64>,
    levels: Vec<f32>,
    width: usize,
    map: Vec<u16>,
}

impl GridIndex {
    fn build(entries: Vec<u64>, width: usize) -> Self {
        let mut levels: Vec<i8> = entries
            .iter()
            .flat_map(|&e| (0..width).map(move |j| (e >> (8 * j)) as u8 as i8))
            .collect();
        levels.sort_unstable();
        levels.dedup();
        let levels: Vec<f32> = levels.into_iter().map(f32::from).collect();
        let n = levels.len();
        let map = (0..n.pow(width as u32))
            .map(|p| {
                let target: Vec<f32> = (0..width)
                    .map(|j| levels[(p / n.pow(j as u32)) % n])
                    .collect();
                let mut best = (0usize, f32::INFINITY);
                for (k, &e) in entries.iter().enumerate() {
                    let err: f32 = (0..width)
                        .map(|j| (grid_byte(e, j) - target[j]).powi(2))
                        .sum();
                    if err < best.1 {
                        best = (k, err);
                    }
                }
                best.0 as u16
            })
            .collect();
        GridIndex {
            entries,
            levels,
            width,
            map,
        }
    }

    /// The entry nearest to `target` (grid units), by its levels' pattern.
    fn nearest(&self, target: &[f32]) -> usize {
        let n = self.levels.len();
        let mut p = 0usize;
        for j in (0..self.width).rev() {
            let t = target[j];
            let mut li = 0;
            for (i, &l) in self.levels.iter().enumerate() {
                if (l - t).abs() < (self.levels[li] - t).abs() {
                    li = i;
                }
            }
            p = p * n + li;
        }
        self.map[p] as usize
    }

    fn value(&self, k: usize, j: usize) -> f32 {
        grid_byte(self.entries[k], j)
    }
}

#[derive(Clone, Copy)]
enum Grid {
    Iq2Xxs,
    Iq2Xs,
    Iq2S,
    Iq3Xxs,
    Iq3S,
    Iq1S,
}

fn grid(g: Grid) -> &'static GridIndex {
    use std::sync::OnceLock;
    static INDEX: [OnceLock<GridIndex>; 6] = [const { OnceLock::new() }; 6];
    INDEX[g as usize].get_or_init(|| match g {
        Grid::Iq2Xxs => GridIndex::build(IQ2XXS_GRID.to_vec(), 8),
        Grid::Iq2Xs => GridIndex::build(IQ2XS_GRID.to_vec(), 8),
        Grid::Iq2S => GridIndex::build(IQ2S_GRID.to_vec(), 8),
        Grid::Iq3Xxs => GridIndex::build(IQ3XXS_GRID.iter().map(|&v| v as u64).collect(), 4),
        Grid::Iq3S => GridIndex::build(IQ3S_GRID.iter().map(|&v| v as u64).collect(), 4),
        Grid::Iq1S => GridIndex::build(IQ1S_GRID.to_vec(), 8),
    })
}

#[inline]
fn grid_byte(entry: u64, j: usize) -> f32 {
    ((entry >> (8 * j)) as u8 as i8) as f32
}

/// Signs for 8 weights: bits of the negative ones, and for the parity-coded
/// types (7 stored bits) the smallest magnitude's sign flipped if needed.
/// Returns the sign bits and the per-weight targets as magnitudes (negative
/// where the sign was flipped against the value).
fn signs8(x: &[f32], parity: bool) -> (u8, [f32; 8]) {
    let mut bits = 0u8;
    let mut t = [0f32; 8];
    for j in 0..8 {
        if x[j] < 0.0 {
            bits |= 1 << j;
        }
        t[j] = x[j].abs();
    }
    if parity && bits.count_ones() % 2 == 1 {
        let j = (0..8).min_by(|&a, &b| t[a].total_cmp(&t[b])).unwrap_or(0);
        bits ^= 1 << j;
        t[j] = -t[j];
    }
    (bits, t)
}

/// Magnitudes `t` at step `dl`: the nearest entry and its squared error.
fn fit_magnitudes(g: &GridIndex, t: &[f32], dl: f32) -> (usize, f32) {
    let k = if dl > 0.0 {
        let target: [f32; 8] = std::array::from_fn(|j| t.get(j).map_or(0.0, |v| v / dl));
        g.nearest(&target[..g.width])
    } else {
        0
    };
    let err = t
        .iter()
        .enumerate()
        .map(|(j, v)| (dl * g.value(k, j) - v).powi(2))
        .sum();
    (k, err)
}

/// IQ1: 8 weights at step `dl` with shift sign `s`: entry and squared error.
fn fit_shifted(x: &[f32], dl: f32, s: i8) -> (usize, f32) {
    let g = grid(Grid::Iq1S);
    let shift = IQ1_DELTA * s as f32;
    let k = if dl > 0.0 {
        let target: [f32; 8] = std::array::from_fn(|j| x[j] / dl - shift);
        g.nearest(&target)
    } else {
        0
    };
    let err = x
        .iter()
        .enumerate()
        .map(|(j, v)| (dl * (g.value(k, j) + shift) - v).powi(2))
        .sum();
    (k, err)
}

/// What a group of weights is stored as: grid entries, sign bytes per 8
/// weights, shift signs per 8.
#[derive(Clone, Copy, Default)]
struct Code {
    idx: [u16; 8],
    signs: [u8; 4],
    shift: [i8; 4],
}

/// A super-block scale and each group's integer scale and code.
type Fit = (f16, Vec<(i32, Code)>);

/// Fit one super-block: for each candidate super-block scale (the largest
/// group magnitude mapped to each of `mags` at the largest integer scale),
/// every group of `group` weights tries each `bits`-bit scale `ls` (step
/// `d · (2·ls + 1) · c`) with `fit_group(weights, step) -> (error, code)`;
/// the candidate with the lowest total error wins.
fn search(
    x: &[f32],
    group: usize,
    bits: u32,
    c: f32,
    mags: &[f32],
    fit_group: impl Fn(&[f32], f32) -> (f32, Code),
) -> Fit {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let n_groups = x.len() / group;
    if amax == 0.0 {
        return (f16::ZERO, vec![(0, Code::default()); n_groups]);
    }
    let smax = (2 * ((1 << bits) - 1) + 1) as f32;
    let mut best: Option<(f32, Fit)> = None;
    for &m in mags {
        let d = f16::from_f32(amax / (c * m * smax));
        let df = d.to_f32();
        if df == 0.0 || !df.is_finite() {
            continue;
        }
        let mut total = 0f32;
        let mut fits = Vec::with_capacity(n_groups);
        for xs in x.chunks(group) {
            let mut g_best = (f32::INFINITY, 0i32, Code::default());
            for ls in 0..(1i32 << bits) {
                let (err, code) = fit_group(xs, df * (2 * ls + 1) as f32 * c);
                if err < g_best.0 {
                    g_best = (err, ls, code);
                }
            }
            total += g_best.0;
            fits.push((g_best.1, g_best.2));
        }
        if best.as_ref().is_none_or(|b| total < b.0) {
            best = Some((total, (d, fits)));
        }
    }
    best.map_or_else(
        || (f16::ZERO, vec![(0, Code::default()); n_groups]),
        |b| b.1,
    )
}

/// Groups of 8 weights with sign bits (parity-coded or not) and 8-wide grid
/// entries: IQ2_XXS, IQ2_XS, IQ2_S.
fn fit_signed8(xs: &[f32], dl: f32, g: &GridIndex, parity: bool) -> (f32, Code) {
    let mut code = Code::default();
    let mut err = 0f32;
    for (l, x8) in xs.chunks(8).enumerate() {
        let (bits, t) = signs8(x8, parity);
        let (k, e) = fit_magnitudes(g, &t, dl);
        code.idx[l] = k as u16;
        code.signs[l] = bits;
        err += e;
    }
    (err, code)
}

/// Groups of 8 weights with sign bits and two 4-wide grid entries: IQ3.
fn fit_signed4(xs: &[f32], dl: f32, g: &GridIndex, parity: bool) -> (f32, Code) {
    let mut code = Code::default();
    let mut err = 0f32;
    for (l, x8) in xs.chunks(8).enumerate() {
        let (bits, t) = signs8(x8, parity);
        for h in 0..2 {
            let (k, e) = fit_magnitudes(g, &t[4 * h..4 * h + 4], dl);
            code.idx[2 * l + h] = k as u16;
            err += e;
        }
        code.signs[l] = bits;
    }
    (err, code)
}

/// IQ1: groups of 8 weights, each with its own shift sign (`shared`: one for
/// the whole group, IQ1_S).
fn fit_iq1(xs: &[f32], dl: f32, shared: bool) -> (f32, Code) {
    let fit = |s: i8| {
        let mut code = Code::default();
        let mut err = 0f32;
        for (l, x8) in xs.chunks(8).enumerate() {
            let (k, e) = if shared {
                fit_shifted(x8, dl, s)
            } else {
                let (a, b) = (fit_shifted(x8, dl, 1), fit_shifted(x8, dl, -1));
                code.shift[l] = if b.1 < a.1 { -1 } else { 1 };
                if b.1 < a.1 { b } else { a }
            };
            if shared {
                code.shift[l] = s;
            }
            code.idx[l] = k as u16;
            err += e;
        }
        (err, code)
    };
    if shared {
        let (a, b) = (fit(1), fit(-1));
        if b.0 < a.0 { b } else { a }
    } else {
        fit(1)
    }
}

const IQ2_MAGS: [f32; 3] = [43.0, 25.0, 8.0];

impl BlockIQ2XXS {
    fn fit(x: &[f32]) -> Self {
        let g = grid(Grid::Iq2Xxs);
        let (d, fits) = search(x, 32, 4, 0.125, &IQ2_MAGS, |xs, dl| {
            fit_signed8(xs, dl, g, true)
        });
        let mut b = BlockIQ2XXS {
            d,
            qs: [0; QK_K / 8],
        };
        for (i, (ls, c)) in fits.iter().enumerate() {
            let mut idx = 0u32;
            let mut aux = (*ls as u32) << 28;
            for l in 0..4 {
                idx |= (c.idx[l] as u32) << (8 * l);
                aux |= ((c.signs[l] & 127) as u32) << (7 * l);
            }
            b.qs[4 * i] = idx as u16;
            b.qs[4 * i + 1] = (idx >> 16) as u16;
            b.qs[4 * i + 2] = aux as u16;
            b.qs[4 * i + 3] = (aux >> 16) as u16;
        }
        b
    }
}

/// IQ2_XS / IQ2_S: 4-bit scales per 16, packed two per byte.
fn pack_nibble_scales(fits: &[(i32, Code)]) -> [u8; QK_K / 32] {
    std::array::from_fn(|i| (fits[2 * i].0 | (fits[2 * i + 1].0 << 4)) as u8)
}

impl BlockIQ2XS {
    fn fit(x: &[f32]) -> Self {
        let g = grid(Grid::Iq2Xs);
        let (d, fits) = search(x, 16, 4, 0.125, &IQ2_MAGS, |xs, dl| {
            fit_signed8(xs, dl, g, true)
        });
        let mut b = BlockIQ2XS {
            d,
            qs: [0; QK_K / 8],
            scales: pack_nibble_scales(&fits),
        };
        for (i, (_, c)) in fits.iter().enumerate() {
            for l in 0..2 {
                b.qs[2 * i + l] = c.idx[l] | (((c.signs[l] & 127) as u16) << 9);
            }
        }
        b
    }
}

impl BlockIQ2S {
    fn fit(x: &[f32]) -> Self {
        let g = grid(Grid::Iq2S);
        let (d, fits) = search(x, 16, 4, 0.125, &IQ2_MAGS, |xs, dl| {
            fit_signed8(xs, dl, g, false)
        });
        let mut b = BlockIQ2S {
            d,
            qs: [0; QK_K / 4],
            qh: [0; QK_K / 32],
            scales: pack_nibble_scales(&fits),
        };
        for (i, (_, c)) in fits.iter().enumerate() {
            for l in 0..2 {
                let e = 2 * i + l;
                b.qs[e] = c.idx[l] as u8;
                b.qh[e / 4] |= ((c.idx[l] >> 8) as u8) << (2 * (e % 4));
                b.qs[QK_K / 8 + e] = c.signs[l];
            }
        }
        b
    }
}

impl BlockIQ3XXS {
    fn fit(x: &[f32]) -> Self {
        let g = grid(Grid::Iq3Xxs);
        let (d, fits) = search(x, 32, 4, 0.25, &[62.0, 36.0, 20.0, 4.0], |xs, dl| {
            fit_signed4(xs, dl, g, true)
        });
        let mut b = BlockIQ3XXS {
            d,
            qs: [0; 3 * QK_K / 8],
        };
        for (i, (ls, c)) in fits.iter().enumerate() {
            let mut aux = (*ls as u32) << 28;
            for l in 0..4 {
                aux |= ((c.signs[l] & 127) as u32) << (7 * l);
            }
            for k in 0..8 {
                b.qs[8 * i + k] = c.idx[k] as u8;
            }
            b.qs[QK_K / 4 + 4 * i..QK_K / 4 + 4 * i + 4].copy_from_slice(&aux.to_le_bytes());
        }
        b
    }
}

impl BlockIQ3S {
    fn fit(x: &[f32]) -> Self {
        let g = grid(Grid::Iq3S);
        let (d, fits) = search(x, 32, 4, 1.0, &[15.0, 9.0, 5.0, 1.0], |xs, dl| {
            fit_signed4(xs, dl, g, false)
        });
        let mut b = BlockIQ3S {
            d,
            qs: [0; QK_K / 4],
            qh: [0; QK_K / 32],
            signs: [0; QK_K / 8],
            scales: [0; QK_K / 64],
        };
        for (i, (ls, c)) in fits.iter().enumerate() {
            b.scales[i / 2] |= (*ls as u8) << (4 * (i % 2));
            for k in 0..8 {
                b.qs[8 * i + k] = c.idx[k] as u8;
                b.qh[i] |= ((c.idx[k] >> 8) as u8) << k;
            }
            b.signs[4 * i..4 * i + 4].copy_from_slice(&c.signs);
        }
        b
    }
}

impl BlockIQ1S {
    fn fit(x: &[f32]) -> Self {
        let (d, fits) = search(x, 32, 3, 1.0, &[1.0 + IQ1_DELTA], |xs, dl| {
            fit_iq1(xs, dl, true)
        });
        let mut b = BlockIQ1S {
            d,
            qs: [0; QK_K / 8],
            qh: [0; QK_K / 32],
        };
        for (i, (ls, c)) in fits.iter().enumerate() {
            let mut qh = (*ls as u16) << 12;
            if c.shift[0] < 0 {
                qh |= 0x8000;
            }
            for l in 0..4 {
                b.qs[4 * i + l] = c.idx[l] as u8;
                qh |= (c.idx[l] >> 8) << (3 * l);
            }
            b.qh[i] = qh;
        }
        b
    }
}

impl BlockIQ1M {
    fn fit(x: &[f32]) -> Self {
        let (d, fits) = search(x, 16, 3, 1.0, &[1.0 + IQ1_DELTA], |xs, dl| {
            fit_iq1(xs, dl, false)
        });
        let mut b = BlockIQ1M {
            qs: [0; QK_K / 8],
            qh: [0; QK_K / 16],
            scales: [0; QK_K / 32],
        };
        let mut sc = [0u16; 4];
        for (i, (ls, c)) in fits.iter().enumerate() {
            // Scale of the 16 weights i: u16 i / 4, bits 3 · (i % 4).
            sc[i / 4] |= (*ls as u16) << (3 * (i % 4));
            for l in 0..2 {
                let e = 2 * i + l;
                b.qs[e] = c.idx[l] as u8;
                let nib = ((c.idx[l] >> 8) as u8) | if c.shift[l] < 0 { 8 } else { 0 };
                b.qh[e / 2] |= nib << (4 * (e % 2));
            }
        }
        let dbits = d.to_bits();
        sc[0] |= (dbits & 0x000f) << 12;
        sc[1] |= (dbits & 0x00f0) << 8;
        sc[2] |= (dbits & 0x0f00) << 4;
        sc[3] |= dbits & 0xf000;
        for (i, s) in sc.iter().enumerate() {
            b.scales[2 * i..2 * i + 2].copy_from_slice(&s.to_le_bytes());
        }
        b
    }
}

macro_rules! lowbit_format {
    ($ty:ty, $gt:expr) => {
        impl BlockFormat for $ty {
            const TYPE: GgmlType = $gt;
            const ELEMS: usize = QK_K;
            type Act = BlockQ8K;
            fn dequantize(&self, out: &mut [f32]) {
                dequantize_lowbit(self, out)
            }
            fn quantize(x: &[f32]) -> Self {
                Self::fit(x)
            }
            fn vec_dot(w: &[Self], a: &[BlockQ8K]) -> f32 {
                vec_dot_lowbit(w, a)
            }
        }
    };
}

lowbit_format!(BlockIQ2XXS, GgmlType::IQ2_XXS);
lowbit_format!(BlockIQ2XS, GgmlType::IQ2_XS);
lowbit_format!(BlockIQ2S, GgmlType::IQ2_S);
lowbit_format!(BlockIQ3XXS, GgmlType::IQ3_XXS);
lowbit_format!(BlockIQ3S, GgmlType::IQ3_S);
lowbit_format!(BlockIQ1S, GgmlType::IQ1_S);
lowbit_format!(BlockIQ1M, GgmlType::IQ1_M);

/// The grids as C arrays (`iq2xxs_grid` … `iq1s_grid`, ggml's names), each
/// declared `qualifier const`: the CUDA kernels' copy of `iq_tables`
/// (`__device__`), also compiled on the host by the kernel tests (`static`).
pub fn grids_c_source(qualifier: &str) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mut table = |name: &str, ty: &str, vals: &mut dyn Iterator<Item = u64>| {
        let vals: Vec<String> = vals.map(|v| format!("{v:#x}ull")).collect();
        let _ = writeln!(
            s,
            "{qualifier} const {ty} {name}[{}] = {{{}}};",
            vals.len(),
            vals.join(",")
        );
    };
    table(
        "iq2xxs_grid",
        "unsigned long long",
        &mut IQ2XXS_GRID.iter().copied(),
    );
    table(
        "iq2xs_grid",
        "unsigned long long",
        &mut IQ2XS_GRID.iter().copied(),
    );
    table(
        "iq2s_grid",
        "unsigned long long",
        &mut IQ2S_GRID.iter().copied(),
    );
    table(
        "iq3xxs_grid",
        "unsigned int",
        &mut IQ3XXS_GRID.iter().map(|&v| v as u64),
    );
    table(
        "iq3s_grid",
        "unsigned int",
        &mut IQ3S_GRID.iter().map(|&v| v as u64),
    );
    table(
        "iq1s_grid",
        "unsigned long long",
        &mut IQ1S_GRID.iter().copied(),
    );
    s
}
