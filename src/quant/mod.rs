//! Block formats of ggml: one trait, `#[repr(C)]` block structs with their sizes
//! checked at compile time, and for each format the scalar reference of
//! dequantization, quantization and the dot product against its activation type.
//!
//! Every weight format pairs with an *activation* format that the activations
//! are quantized to before an integer dot product: Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1
//! (which carries the block sum) for Q4_1/Q5_1, Q8_K for the k-quants, and plain
//! f32 for the float formats. The 1-3 bit i-quants (`iq_lowbit`) pair with Q8_K.

mod float;
mod iq_lowbit;
#[rustfmt::skip]
pub mod iq_tables;
mod iquants;
mod kquants;
mod legacy;
mod types;

pub use iq_lowbit::{
    BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS, Decoded,
    Finish, Group32, LowBit, TiledBlock, finish, finish_shift_sum, grids_c_source, vec_dot_lowbit,
    vec_dot_lowbit_tiled,
};
pub use iquants::{BlockIQ4NL, BlockIQ4XS, BlockMXFP4, IQ4_GRID, MXFP4_GRID, e8m0_to_f32_half};
pub use kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, Scales, Unpacked};
pub use legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
pub use types::{GgmlType, QK, QK_K};

use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};

/// A block format: `ELEMS` values stored in `size_of::<Self>()` bytes.
pub trait BlockFormat: Pod + Zeroable + Send + Sync + 'static {
    const TYPE: GgmlType;
    const ELEMS: usize;
    /// The format activations are quantized to for `vec_dot`.
    type Act: BlockFormat;

    /// Decode one block into `out` (`out.len() == ELEMS`).
    fn dequantize(&self, out: &mut [f32]);

    /// Encode `x` (`x.len() == ELEMS`) into one block, as ggml's reference
    /// quantizer (`quantize_row_*_ref`) does.
    fn quantize(x: &[f32]) -> Self;

    /// Encode activations as ggml's CPU backend does at run time. For Q8_0 and
    /// Q8_1 this differs from the reference quantizer (scale `127/amax`, ties
    /// to even); matching it keeps logits identical to llama.cpp's.
    fn quantize_activation(x: &[f32]) -> Self {
        Self::quantize(x)
    }

    /// Dot product of a row of weight blocks with a row of activation blocks
    /// covering the same number of elements.
    fn vec_dot(w: &[Self], a: &[Self::Act]) -> f32;
}

// Compile-time checks that the structs have ggml's exact on-disk sizes.
const _: () = {
    assert!(std::mem::size_of::<BlockQ4_0>() == 18);
    assert!(std::mem::size_of::<BlockQ4_1>() == 20);
    assert!(std::mem::size_of::<BlockQ5_0>() == 22);
    assert!(std::mem::size_of::<BlockQ5_1>() == 24);
    assert!(std::mem::size_of::<BlockQ8_0>() == 34);
    assert!(std::mem::size_of::<BlockQ8_1>() == 36);
    assert!(std::mem::size_of::<BlockQ2K>() == 84);
    assert!(std::mem::size_of::<BlockQ3K>() == 110);
    assert!(std::mem::size_of::<BlockQ4K>() == 144);
    assert!(std::mem::size_of::<BlockQ5K>() == 176);
    assert!(std::mem::size_of::<BlockQ6K>() == 210);
    assert!(std::mem::size_of::<BlockQ8K>() == 292);
    assert!(std::mem::size_of::<BlockIQ4NL>() == 18);
    assert!(std::mem::size_of::<BlockIQ4XS>() == 136);
    assert!(std::mem::size_of::<BlockMXFP4>() == 17);
    assert!(std::mem::size_of::<BlockIQ2XXS>() == 66);
    assert!(std::mem::size_of::<BlockIQ2XS>() == 74);
    assert!(std::mem::size_of::<BlockIQ2S>() == 82);
    assert!(std::mem::size_of::<BlockIQ3XXS>() == 98);
    assert!(std::mem::size_of::<BlockIQ3S>() == 110);
    assert!(std::mem::size_of::<BlockIQ1S>() == 50);
    assert!(std::mem::size_of::<BlockIQ1M>() == 56);
};

/// Errors of the dynamic (by `GgmlType`) entry points.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("{ty}: {len} bytes is not a whole number of {block} byte blocks")]
    Partial {
        ty: GgmlType,
        len: usize,
        block: usize,
    },
    #[error("{ty}: {len} values is not a whole number of {block} value blocks")]
    PartialValues {
        ty: GgmlType,
        len: usize,
        block: usize,
    },
    #[error("{ty}: output holds {got} values, input has {want}")]
    Length {
        ty: GgmlType,
        got: usize,
        want: usize,
    },
    #[error("type {0} cannot be used here (integer type, or activation-only format)")]
    Unsupported(GgmlType),
}

/// View bytes as blocks, copying only if the bytes are not aligned for the block.
pub fn blocks_from_bytes<B: BlockFormat>(
    bytes: &[u8],
) -> Result<std::borrow::Cow<'_, [B]>, QuantError> {
    let size = std::mem::size_of::<B>();
    if !bytes.len().is_multiple_of(size) {
        return Err(QuantError::Partial {
            ty: B::TYPE,
            len: bytes.len(),
            block: size,
        });
    }
    Ok(match bytemuck::try_cast_slice(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => std::borrow::Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
    })
}

fn dequantize_typed<B: BlockFormat>(bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let blocks = blocks_from_bytes::<B>(bytes)?;
    let want = blocks.len() * B::ELEMS;
    if out.len() != want {
        return Err(QuantError::Length {
            ty: B::TYPE,
            got: out.len(),
            want,
        });
    }
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(B::ELEMS)) {
        b.dequantize(o);
    }
    Ok(())
}

fn quantize_typed<B: BlockFormat>(x: &[f32]) -> Result<Vec<B>, QuantError> {
    if !x.len().is_multiple_of(B::ELEMS) {
        return Err(QuantError::PartialValues {
            ty: B::TYPE,
            len: x.len(),
            block: B::ELEMS,
        });
    }
    Ok(x.chunks_exact(B::ELEMS).map(B::quantize).collect())
}

/// Quantize a row of values into blocks of `B`.
pub fn quantize_blocks<B: BlockFormat>(x: &[f32]) -> Result<Vec<B>, QuantError> {
    quantize_typed::<B>(x)
}

/// Dequantize a row of blocks.
pub fn dequantize_blocks<B: BlockFormat>(blocks: &[B]) -> Vec<f32> {
    let mut out = vec![0f32; blocks.len() * B::ELEMS];
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(B::ELEMS)) {
        b.dequantize(o);
    }
    out
}

/// Call `$f::<BlockType>($args)` for a runtime `GgmlType`.
macro_rules! dispatch {
    ($ty:expr, $f:ident ( $($arg:expr),* ), $unsupported:expr) => {
        match $ty {
            GgmlType::F32 => $f::<f32>($($arg),*),
            GgmlType::F16 => $f::<f16>($($arg),*),
            GgmlType::BF16 => $f::<bf16>($($arg),*),
            GgmlType::Q4_0 => $f::<BlockQ4_0>($($arg),*),
            GgmlType::Q4_1 => $f::<BlockQ4_1>($($arg),*),
            GgmlType::Q5_0 => $f::<BlockQ5_0>($($arg),*),
            GgmlType::Q5_1 => $f::<BlockQ5_1>($($arg),*),
            GgmlType::Q8_0 => $f::<BlockQ8_0>($($arg),*),
            GgmlType::Q8_1 => $f::<BlockQ8_1>($($arg),*),
            GgmlType::Q2_K => $f::<BlockQ2K>($($arg),*),
            GgmlType::Q3_K => $f::<BlockQ3K>($($arg),*),
            GgmlType::Q4_K => $f::<BlockQ4K>($($arg),*),
            GgmlType::Q5_K => $f::<BlockQ5K>($($arg),*),
            GgmlType::Q6_K => $f::<BlockQ6K>($($arg),*),
            GgmlType::Q8_K => $f::<BlockQ8K>($($arg),*),
            GgmlType::IQ4_NL => $f::<BlockIQ4NL>($($arg),*),
            GgmlType::IQ4_XS => $f::<BlockIQ4XS>($($arg),*),
            GgmlType::MXFP4 => $f::<BlockMXFP4>($($arg),*),
            GgmlType::IQ2_XXS => $f::<BlockIQ2XXS>($($arg),*),
            GgmlType::IQ2_XS => $f::<BlockIQ2XS>($($arg),*),
            GgmlType::IQ2_S => $f::<BlockIQ2S>($($arg),*),
            GgmlType::IQ3_XXS => $f::<BlockIQ3XXS>($($arg),*),
            GgmlType::IQ3_S => $f::<BlockIQ3S>($($arg),*),
            GgmlType::IQ1_S => $f::<BlockIQ1S>($($arg),*),
            GgmlType::IQ1_M => $f::<BlockIQ1M>($($arg),*),
            GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64 => $unsupported,
        }
    };
}

/// Dequantize raw tensor bytes of type `ty` into `out`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    dispatch!(
        ty,
        dequantize_typed(bytes, out),
        Err(QuantError::Unsupported(ty))
    )
}

/// Dequantize raw tensor bytes of type `ty` into a new vector.
pub fn dequantize_to_vec(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, QuantError> {
    let n_blocks = bytes.len() / ty.block_bytes();
    let mut out = vec![0f32; n_blocks * ty.block_elems()];
    dequantize(ty, bytes, &mut out)?;
    Ok(out)
}

fn quantize_to_bytes<B: BlockFormat>(x: &[f32]) -> Result<Vec<u8>, QuantError> {
    Ok(bytemuck::cast_slice(&quantize_typed::<B>(x)?).to_vec())
}

/// Quantize values into raw bytes of type `ty`.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>, QuantError> {
    dispatch!(ty, quantize_to_bytes(x), Err(QuantError::Unsupported(ty)))
}

fn dot_typed<B: BlockFormat>(w: &[u8], x: &[f32]) -> Result<f32, QuantError> {
    let w = blocks_from_bytes::<B>(w)?;
    if x.len() != w.len() * B::ELEMS {
        return Err(QuantError::Length {
            ty: B::TYPE,
            got: x.len(),
            want: w.len() * B::ELEMS,
        });
    }
    let a = quantize_typed::<B::Act>(x)?;
    Ok(B::vec_dot(&w, &a))
}

/// Reference dot product of a weight row (raw bytes of `ty`) with f32 activations,
/// which are first quantized to the weight type's activation format.
pub fn dot(ty: GgmlType, w: &[u8], x: &[f32]) -> Result<f32, QuantError> {
    dispatch!(ty, dot_typed(w, x), Err(QuantError::Unsupported(ty)))
}

/// The activation format a weight type's integer dot product uses.
pub fn activation_type(ty: GgmlType) -> GgmlType {
    fn act<B: BlockFormat>() -> GgmlType {
        <B::Act as BlockFormat>::TYPE
    }
    dispatch!(ty, act(), ty)
}

/// Round to nearest, ties to even (ggml's `nearest_int`), for |x| < 2^22.
///
/// Adding 1.5·2^23 pushes the fraction out of the mantissa under the default
/// round-to-nearest-even mode; this avoids a libm call (`rintf`) on CPUs
/// targeted without SSE4.1.
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    if x.abs() < 4_194_304.0 {
        let magic = 12_582_912.0f32;
        ((x + magic) - magic) as i32
    } else {
        x.round_ties_even() as i32
    }
}
