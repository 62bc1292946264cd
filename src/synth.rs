//! Synthetic and derived models for tests and device checks: random llama-shaped
//! models of any weight type, and real models cut down to their first layers (so
//! real weights fit where a whole model does not).

use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};

use crate::gguf::{Gguf, GgufWriter, Value};
use crate::quant::{self, GgmlType};

/// Shape of a random llama-architecture model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub d_model: u64,
    pub d_ff: u64,
    pub n_heads: u64,
    pub n_kv_heads: u64,
    pub n_layers: u64,
    pub n_vocab: u64,
    pub weight_type: GgmlType,
    pub seed: u64,
}

/// Shapes of real models (llama architecture, no biases) for synthetic benchmarks.
pub const PRESETS: [(&str, [u64; 6]); 6] = [
    // name: [d_model, d_ff, heads, kv_heads, layers, vocab]
    ("tiny", [256, 512, 4, 2, 2, 512]),
    ("qwen2.5-0.5b", [896, 4864, 14, 2, 24, 151936]),
    ("llama-1b", [2048, 8192, 32, 8, 16, 128256]),
    ("qwen2.5-7b", [3584, 18944, 28, 4, 28, 152064]),
    ("llama3-8b", [4096, 14336, 32, 8, 32, 128256]),
    ("qwen2.5-32b", [5120, 27648, 40, 8, 64, 152064]),
];

impl TinySpec {
    /// A preset's shape (see `PRESETS`).
    pub fn preset(name: &str, weight_type: GgmlType) -> Option<Self> {
        let (_, [d, ff, h, kv, l, v]) = PRESETS.iter().find(|(n, _)| *n == name)?;
        Some(TinySpec {
            d_model: *d,
            d_ff: *ff,
            n_heads: *h,
            n_kv_heads: *kv,
            n_layers: *l,
            n_vocab: *v,
            weight_type,
            seed: 1,
        })
    }

    pub fn new(weight_type: GgmlType) -> Self {
        TinySpec {
            d_model: 256,
            d_ff: 512,
            n_heads: 4,
            n_kv_heads: 2,
            n_layers: 2,
            n_vocab: 512,
            weight_type,
            seed: 1,
        }
    }
}

struct Rng(u64);
impl Rng {
    fn normal(&mut self) -> f32 {
        let mut s = 0f32;
        for _ in 0..4 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            s += (self.0 >> 40) as f32 / (1u64 << 24) as f32;
        }
        (s - 2.0) * 1.7
    }
}

/// Write a random llama model (no tokenizer) whose matrices are `spec.weight_type`.
/// Weights are scaled so that activations stay finite through the layers.
pub fn write_random_llama(path: &Path, spec: &TinySpec) -> Result<()> {
    let (d, ff, h, kvh, v) = (
        spec.d_model,
        spec.d_ff,
        spec.n_heads,
        spec.n_kv_heads,
        spec.n_vocab,
    );
    let hd = d / h;
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", "llama");
    w.set_str(
        "general.name",
        format!("synthetic {} (random weights)", spec.weight_type),
    );
    w.set("general.synthetic", Value::Bool(true));
    for (k, val) in [
        ("block_count", spec.n_layers),
        ("embedding_length", d),
        ("feed_forward_length", ff),
        ("attention.head_count", h),
        ("attention.head_count_kv", kvh),
        ("context_length", 4096),
    ] {
        w.set(format!("llama.{k}"), Value::U32(val as u32));
    }
    w.set("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    let mat = spec.weight_type;
    let mut tensors: Vec<(String, Vec<u64>, GgmlType)> = vec![
        ("token_embd.weight".into(), vec![d, v], mat),
        ("output_norm.weight".into(), vec![d], GgmlType::F32),
    ];
    for l in 0..spec.n_layers {
        for (n, shape, ty) in [
            ("attn_norm.weight", vec![d], GgmlType::F32),
            ("attn_q.weight", vec![d, h * hd], mat),
            ("attn_k.weight", vec![d, kvh * hd], mat),
            ("attn_v.weight", vec![d, kvh * hd], mat),
            ("attn_output.weight", vec![h * hd, d], mat),
            ("ffn_norm.weight", vec![d], GgmlType::F32),
            ("ffn_gate.weight", vec![d, ff], mat),
            ("ffn_up.weight", vec![d, ff], mat),
            ("ffn_down.weight", vec![ff, d], mat),
        ] {
            tensors.push((format!("blk.{l}.{n}"), shape, ty));
        }
    }
    // Row lengths that are not a whole number of the type's blocks (896 for
    // k-quants) fall back to Q8_0, as llama.cpp's quantizer falls back.
    for (_, shape, ty) in tensors.iter_mut() {
        if shape[0] % ty.block_elems() as u64 != 0 {
            *ty = GgmlType::Q8_0;
        }
    }
    for (name, shape, ty) in &tensors {
        w.add_tensor(name.clone(), shape, *ty)?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = w.write_header(BufWriter::with_capacity(1 << 20, file))?;
    // Rows are generated and quantized in parallel, in bounded groups, each
    // from its own seed, so the file is the same whatever the thread count.
    use rayon::prelude::*;
    const ROWS: u64 = 64;
    for (ti, (_, shape, ty)) in tensors.iter().enumerate() {
        let (cols, rows) = (shape[0], shape.iter().skip(1).product::<u64>());
        let std = if shape.len() == 1 {
            0.1
        } else {
            1.0 / (cols as f32).sqrt()
        };
        let mean = if shape.len() == 1 { 1.0 } else { 0.0 };
        let chunks = rows.div_ceil(ROWS);
        for group in (0..chunks).collect::<Vec<_>>().chunks(256) {
            let parts: Vec<Vec<u8>> = group
                .par_iter()
                .map(|&c| {
                    let mut rng =
                        Rng((spec.seed ^ ((ti as u64) << 40) ^ c.wrapping_mul(0x9E37_79B9)) | 1);
                    let n = (ROWS.min(rows - c * ROWS) * cols) as usize;
                    let values: Vec<f32> = (0..n).map(|_| mean + rng.normal() * std).collect();
                    quant::quantize(*ty, &values).expect("whole blocks")
                })
                .collect();
            for p in parts {
                out.write(&p)?;
            }
        }
    }
    out.finish()?;
    Ok(())
}

/// Copy `src` keeping only its first `layers` transformer blocks (and every
/// tensor outside the blocks), with `block_count` adjusted.
pub fn truncate_layers(src: &Path, dst: &Path, layers: usize) -> Result<()> {
    let g = Gguf::open(src)?;
    let arch = g.architecture()?.to_string();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if k.starts_with("split.") {
            continue;
        }
        w.set(k.clone(), v.clone());
    }
    w.set(format!("{arch}.block_count"), Value::U32(layers as u32));
    let keep: Vec<_> = g
        .tensors()
        .iter()
        .filter(|t| crate::inspect::layer_of(t).is_none_or(|l| l < layers))
        .collect();
    for t in &keep {
        w.add_tensor(t.name.clone(), &t.shape, t.ty)?;
    }
    let file = std::fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut out = w.write_header(BufWriter::with_capacity(1 << 20, file))?;
    for t in keep {
        out.write(g.tensor_bytes(t))?;
    }
    out.finish()?;
    Ok(())
}
