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

impl TinySpec {
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
    for (name, shape, ty) in &tensors {
        w.add_tensor(name.clone(), shape, *ty)?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = w.write_header(BufWriter::with_capacity(1 << 20, file))?;
    let mut rng = Rng(spec.seed | 1);
    for (_, shape, ty) in &tensors {
        let n: u64 = shape.iter().product();
        let values: Vec<f32> = if shape.len() == 1 {
            (0..n).map(|_| 1.0 + 0.1 * rng.normal()).collect()
        } else {
            let std = 1.0 / (shape[0] as f32).sqrt();
            (0..n).map(|_| rng.normal() * std).collect()
        };
        out.write(&quant::quantize(*ty, &values)?)?;
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
