//! Synthetic and derived models for tests and device checks: random llama-shaped
//! models of any weight type, and real models cut down to their first layers (so
//! real weights fit where a whole model does not).

use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};

use crate::gguf::{Gguf, GgufWriter, Value};
use crate::quant::{self, GgmlType};

/// How the weight types are chosen per tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMix {
    /// Every matrix of one type (Q8_0 where rows do not divide into its blocks).
    Uniform(GgmlType),
    /// llama.cpp's Q4_K_M: Q4_K, with Q6_K for the output, and for attn_v and
    /// ffn_down in the first and last eighth of the layers and every third between.
    Q4KM,
    /// llama.cpp's Q5_K_M: the same recipe on Q5_K.
    Q5KM,
    /// A "UD"-style low-bit mix as large-model releases ship them: the
    /// feed-forward gate and up matrices (dense or experts) IQ2_XXS, down
    /// IQ3_XXS; attention Q5_K with attn_v Q6_K; the output Q6_K; the rest Q5_K.
    UdIq2Xxs,
    /// Every 1-3 bit i-quant in one file, for tests: attn_q IQ2_XS, attn_k
    /// IQ2_S, attn_v IQ3_S, attn_output IQ1_S, ffn_gate IQ1_M, ffn_up
    /// IQ2_XXS, ffn_down IQ3_XXS; the rest Q8_0.
    IqEvery,
}

impl QuantMix {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q4_k_m" => Some(QuantMix::Q4KM),
            "q5_k_m" => Some(QuantMix::Q5KM),
            "ud-iq2_xxs" => Some(QuantMix::UdIq2Xxs),
            "iq-every" => Some(QuantMix::IqEvery),
            other => GgmlType::from_name(other)
                .filter(|t| GgmlType::WEIGHT_TYPES.contains(t))
                .map(QuantMix::Uniform),
        }
    }

    pub fn name(&self) -> String {
        match self {
            QuantMix::Uniform(t) => t.name().to_string(),
            QuantMix::Q4KM => "Q4_K_M".into(),
            QuantMix::Q5KM => "Q5_K_M".into(),
            QuantMix::UdIq2Xxs => "UD-IQ2_XXS".into(),
            QuantMix::IqEvery => "IQ-every".into(),
        }
    }

    /// The type of tensor `name` (of layer `layer` of `n_layers`, if in a layer).
    pub fn type_for(&self, name: &str, layer: Option<u64>, n_layers: u64) -> GgmlType {
        let base = match self {
            QuantMix::Uniform(t) => return *t,
            QuantMix::Q4KM => GgmlType::Q4_K,
            QuantMix::Q5KM => GgmlType::Q5_K,
            QuantMix::UdIq2Xxs => {
                let ffn = |m: &str| {
                    name.ends_with(&format!("{m}.weight"))
                        || name.ends_with(&format!("{m}_exps.weight"))
                };
                return if ffn("ffn_gate") || ffn("ffn_up") {
                    GgmlType::IQ2_XXS
                } else if ffn("ffn_down") {
                    GgmlType::IQ3_XXS
                } else if name == "output.weight" || name.ends_with("attn_v.weight") {
                    GgmlType::Q6_K
                } else {
                    GgmlType::Q5_K
                };
            }
            QuantMix::IqEvery => {
                let table = [
                    ("attn_q", GgmlType::IQ2_XS),
                    ("attn_k", GgmlType::IQ2_S),
                    ("attn_v", GgmlType::IQ3_S),
                    ("attn_output", GgmlType::IQ1_S),
                    ("ffn_gate", GgmlType::IQ1_M),
                    ("ffn_up", GgmlType::IQ2_XXS),
                    ("ffn_down", GgmlType::IQ3_XXS),
                ];
                return table
                    .iter()
                    .find(|(m, _)| {
                        name.ends_with(&format!(".{m}.weight"))
                            || name.ends_with(&format!(".{m}_exps.weight"))
                    })
                    .map_or(GgmlType::Q8_0, |&(_, t)| t);
            }
        };
        let more_bits =
            |i: u64| i < n_layers / 8 || i >= 7 * n_layers / 8 || (i - n_layers / 8) % 3 == 2;
        if name == "output.weight" {
            return GgmlType::Q6_K;
        }
        match layer {
            Some(i)
                if (name.ends_with("attn_v.weight")
                    || name.ends_with("ffn_down.weight")
                    || name.ends_with("ffn_down_exps.weight"))
                    && more_bits(i) =>
            {
                GgmlType::Q6_K
            }
            _ => base,
        }
    }
}

/// Shape of a random model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    /// An architecture ferry runs (`crate::model::ARCHITECTURES`): its
    /// extra tensors (biases, q/k norms, post norms) come with it.
    pub arch: &'static str,
    pub d_model: u64,
    pub d_ff: u64,
    pub n_heads: u64,
    pub n_kv_heads: u64,
    /// Head size where it is not `d_model / n_heads` (qwen3, gemma3).
    pub head_dim: Option<u64>,
    pub n_layers: u64,
    pub n_vocab: u64,
    /// Sliding window of the file (`attention.sliding_window`), if any.
    pub window: Option<u64>,
    /// Llama 3.1-style RoPE frequency factors (`rope_freqs.weight`).
    pub rope_freqs: bool,
    /// A mixture of experts in every layer: experts, used per token, each
    /// expert's width (`d_ff` stays the file's `feed_forward_length`).
    pub experts: Option<[u64; 3]>,
    pub weight_type: GgmlType,
    /// Overrides `weight_type` per tensor when set.
    pub mix: Option<QuantMix>,
    /// Tied embeddings (no output.weight), as the small Qwen2.5 models.
    pub tied: bool,
    pub seed: u64,
}

impl TinySpec {
    pub fn head_dim(&self) -> u64 {
        self.head_dim.unwrap_or(self.d_model / self.n_heads)
    }
}

/// A real model's shape, for synthetic files (`ferry synth --preset`).
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub arch: &'static str,
    pub tied: bool,
    /// d_model, d_ff, heads, kv_heads, layers, vocab.
    pub shape: [u64; 6],
    pub head_dim: Option<u64>,
    pub window: Option<u64>,
    pub rope_freqs: bool,
    /// Experts, used per token, expert width (mixtures of experts).
    pub experts: Option<[u64; 3]>,
}

const fn preset(name: &'static str, arch: &'static str, tied: bool, shape: [u64; 6]) -> Preset {
    Preset {
        name,
        arch,
        tied,
        shape,
        head_dim: None,
        window: None,
        rope_freqs: false,
        experts: None,
    }
}

const fn with_experts(p: Preset, experts: [u64; 3]) -> Preset {
    Preset {
        experts: Some(experts),
        ..p
    }
}

const fn with_heads(p: Preset, head_dim: u64, window: Option<u64>) -> Preset {
    Preset {
        head_dim: Some(head_dim),
        window,
        ..p
    }
}

/// Shapes of real models for synthetic benchmarks and tests.
pub const PRESETS: [Preset; 23] = [
    preset("tiny", "llama", true, [256, 512, 4, 2, 2, 512]),
    preset(
        "qwen2.5-0.5b",
        "qwen2",
        true,
        [896, 4864, 14, 2, 24, 151936],
    ),
    preset("llama-1b", "llama", true, [2048, 8192, 32, 8, 16, 128256]),
    preset(
        "qwen2.5-7b",
        "qwen2",
        false,
        [3584, 18944, 28, 4, 28, 152064],
    ),
    preset(
        "llama3-8b",
        "llama",
        false,
        [4096, 14336, 32, 8, 32, 128256],
    ),
    Preset {
        rope_freqs: true,
        ..preset(
            "llama3.1-8b",
            "llama",
            false,
            [4096, 14336, 32, 8, 32, 128256],
        )
    },
    Preset {
        window: Some(4096),
        ..preset(
            "mistral-7b",
            "llama",
            false,
            [4096, 14336, 32, 8, 32, 32000],
        )
    },
    preset(
        "qwen2.5-14b",
        "qwen2",
        false,
        [5120, 13824, 40, 8, 48, 152064],
    ),
    preset(
        "qwen2.5-32b",
        "qwen2",
        false,
        [5120, 27648, 40, 8, 64, 152064],
    ),
    preset(
        "qwen2.5-72b",
        "qwen2",
        false,
        [8192, 29568, 64, 8, 80, 152064],
    ),
    preset(
        "llama3-70b",
        "llama",
        false,
        [8192, 28672, 64, 8, 80, 128256],
    ),
    preset("smollm2-135m", "llama", true, [576, 1536, 9, 3, 30, 49152]),
    with_heads(
        preset("qwen3-0.6b", "qwen3", true, [1024, 3072, 16, 8, 28, 151936]),
        128,
        None,
    ),
    with_heads(
        preset("qwen3-8b", "qwen3", false, [4096, 12288, 32, 8, 36, 151936]),
        128,
        None,
    ),
    with_heads(
        preset(
            "qwen3-32b",
            "qwen3",
            false,
            [5120, 25600, 64, 8, 64, 151936],
        ),
        128,
        None,
    ),
    with_heads(
        preset("gemma3-270m", "gemma3", true, [640, 2048, 4, 1, 18, 262144]),
        256,
        Some(512),
    ),
    with_heads(
        preset("gemma3-1b", "gemma3", true, [1152, 6912, 4, 1, 26, 262144]),
        256,
        Some(512),
    ),
    with_heads(
        preset(
            "gemma3-27b",
            "gemma3",
            true,
            [5376, 21504, 32, 16, 62, 262208],
        ),
        128,
        Some(1024),
    ),
    // Mixtures of experts. The small ones keep the real models' structure
    // (routing, renormalised top-k, q/k norms) at a size for CI.
    with_experts(
        with_heads(
            preset(
                "qwen3-30b-a3b",
                "qwen3moe",
                false,
                [2048, 6144, 32, 4, 48, 151936],
            ),
            128,
            None,
        ),
        [128, 8, 768],
    ),
    with_experts(
        with_heads(
            preset(
                "qwen3-235b-a22b",
                "qwen3moe",
                false,
                [4096, 12288, 64, 4, 94, 151936],
            ),
            128,
            None,
        ),
        [128, 8, 1536],
    ),
    with_experts(
        with_heads(
            preset(
                "qwen3moe-mini",
                "qwen3moe",
                false,
                [512, 1024, 8, 4, 4, 151936],
            ),
            64,
            None,
        ),
        [16, 4, 256],
    ),
    with_experts(
        preset(
            "mixtral-8x7b",
            "llama",
            false,
            [4096, 14336, 32, 8, 32, 32000],
        ),
        [8, 2, 14336],
    ),
    with_experts(
        preset("mixtral-mini", "llama", false, [512, 1024, 8, 4, 3, 32000]),
        [8, 2, 1024],
    ),
];

impl TinySpec {
    /// A preset's shape (see `PRESETS`).
    pub fn preset(name: &str, weight_type: GgmlType) -> Option<Self> {
        let p = PRESETS.iter().find(|p| p.name == name)?;
        let [d, ff, h, kv, l, v] = p.shape;
        Some(TinySpec {
            arch: p.arch,
            mix: None,
            tied: p.tied,
            d_model: d,
            d_ff: ff,
            n_heads: h,
            n_kv_heads: kv,
            head_dim: p.head_dim,
            n_layers: l,
            n_vocab: v,
            window: p.window,
            rope_freqs: p.rope_freqs,
            experts: p.experts,
            weight_type,
            seed: 1,
        })
    }

    pub fn new(weight_type: GgmlType) -> Self {
        TinySpec {
            arch: "llama",
            mix: None,
            tied: true,
            d_model: 256,
            d_ff: 512,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: None,
            n_layers: 2,
            n_vocab: 512,
            window: None,
            rope_freqs: false,
            experts: None,
            weight_type,
            seed: 1,
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

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

/// Write a random model whose matrices follow `spec` (its type, or its mix).
/// Weights are scaled so that activations stay finite through the layers. With
/// `vocab_from`, the tokenizer (and so the vocabulary size) is copied from that
/// model; otherwise a generated byte-level BPE tokenizer of the preset's
/// vocabulary size (`tokenizer::synthetic`) makes the file runnable.
pub fn write_random_llama(path: &Path, spec: &TinySpec) -> Result<()> {
    write_random_model(path, spec, None)
}

pub fn write_random_model(path: &Path, spec: &TinySpec, vocab_from: Option<&Gguf>) -> Result<()> {
    let n_vocab = match vocab_from {
        Some(g) => g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len() as u64)
            .context("--vocab-from: that model has no tokenizer.ggml.tokens")?,
        None => spec.n_vocab,
    };
    let (d, ff, h, kvh) = (spec.d_model, spec.d_ff, spec.n_heads, spec.n_kv_heads);
    let arch = spec.arch;
    let mix = spec.mix.unwrap_or(QuantMix::Uniform(spec.weight_type));
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", arch);
    w.set_str(
        "general.name",
        format!("synthetic {} (random weights)", mix.name()),
    );
    w.set("general.synthetic", Value::Bool(true));
    w.set_str(
        "general.description",
        "ferry synth: random weights in the shape of a real model; not a language model",
    );
    for (k, val) in [
        ("block_count", spec.n_layers),
        ("embedding_length", d),
        ("feed_forward_length", ff),
        ("attention.head_count", h),
        ("attention.head_count_kv", kvh),
        ("context_length", 32768),
    ] {
        w.set(format!("{arch}.{k}"), Value::U32(val as u32));
    }
    w.set(
        format!("{arch}.attention.layer_norm_rms_epsilon"),
        Value::F32(1e-6),
    );
    if let Some([n_expert, n_used, ff_exp]) = spec.experts {
        w.set(format!("{arch}.expert_count"), Value::U32(n_expert as u32));
        w.set(
            format!("{arch}.expert_used_count"),
            Value::U32(n_used as u32),
        );
        if arch != "llama" {
            w.set(
                format!("{arch}.expert_feed_forward_length"),
                Value::U32(ff_exp as u32),
            );
        }
    }
    w.set(
        format!("{arch}.rope.freq_base"),
        Value::F32(match arch {
            "qwen2" | "qwen3" | "qwen3moe" | "gemma3" => 1e6,
            _ => 5e5,
        }),
    );
    if spec.head_dim.is_some() {
        for k in ["attention.key_length", "attention.value_length"] {
            w.set(format!("{arch}.{k}"), Value::U32(spec.head_dim() as u32));
        }
    }
    if let Some(win) = spec.window {
        w.set(
            format!("{arch}.attention.sliding_window"),
            Value::U32(win as u32),
        );
    }
    match vocab_from {
        Some(g) => {
            for (k, val) in g.metadata() {
                if k.starts_with("tokenizer.") {
                    w.set(k.clone(), val.clone());
                }
            }
        }
        None => {
            for (k, val) in crate::tokenizer::synthetic::metadata(n_vocab as usize)
                .map_err(anyhow::Error::msg)?
            {
                w.set(k, val);
            }
        }
    }
    let tensors = tensor_list(spec, n_vocab);
    for (name, shape, ty) in &tensors {
        w.add_tensor(name.clone(), shape, *ty)?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = w.write_header(BufWriter::with_capacity(1 << 20, file))?;
    // Rows are generated and quantized in parallel, in bounded groups, each
    // from its own seed, so the file is the same whatever the thread count. A
    // writer thread takes finished groups while the next one is computed, so
    // the file is written at the pace of the slower of the CPU and the disk.
    use rayon::prelude::*;
    const ROWS: u64 = 64;
    const POOL: u64 = 4096;
    const POOL_UNIT: u64 = 256;
    let (send, receive) = std::sync::mpsc::sync_channel::<Vec<Vec<u8>>>(2);
    std::thread::scope(|scope| -> Result<()> {
        let writer = scope.spawn(move || -> Result<()> {
            for group in receive {
                for part in group {
                    out.write(&part)?;
                }
            }
            out.finish()?;
            Ok(())
        });
        for (ti, (name, shape, ty)) in tensors.iter().enumerate() {
            if name == "rope_freqs.weight" {
                let f = llama3_rope_factors(spec.head_dim() as usize, 5e5);
                let bytes = f.iter().flat_map(|v| v.to_le_bytes()).collect();
                if send.send(vec![bytes]).is_err() {
                    break;
                }
                continue;
            }
            let (cols, rows) = (shape[0], shape.iter().skip(1).product::<u64>());
            let std = if shape.len() == 1 {
                0.1
            } else {
                1.0 / (cols as f32).sqrt()
            };
            let mean = if shape.len() == 1 { 1.0 } else { 0.0 };
            let chunks = rows.div_ceil(ROWS);
            // Large matrices are assembled from a pool of quantized 256-element
            // units drawn at random: each unit is a quantized normal sample as
            // before, but quantizing (a scale search per block for k-quants)
            // happens once per pool instead of once per block, so the 32B
            // preset is written at disk speed.
            let unit = if cols.is_multiple_of(POOL_UNIT)
                && POOL_UNIT.is_multiple_of(ty.block_elems() as u64)
            {
                POOL_UNIT
            } else {
                ty.block_elems() as u64
            };
            let pool = (rows * cols > 16 * POOL * unit).then(|| {
                let mut rng = Rng((spec.seed ^ ((ti as u64) << 40) ^ 0x5EED) | 1);
                let values: Vec<f32> = (0..POOL * unit)
                    .map(|_| mean + rng.normal() * std)
                    .collect();
                // Units in parallel: the i-quants' scale search costs
                // milliseconds per unit.
                values
                    .par_chunks(unit as usize)
                    .flat_map_iter(|u| quant::quantize(*ty, u).expect("whole blocks"))
                    .collect::<Vec<u8>>()
            });
            let unit_bytes = (unit / ty.block_elems() as u64) as usize * ty.block_bytes();
            for group in (0..chunks).collect::<Vec<_>>().chunks(256) {
                let parts: Vec<Vec<u8>> = group
                    .par_iter()
                    .map(|&c| {
                        let mut rng = Rng((spec.seed
                            ^ ((ti as u64) << 40)
                            ^ c.wrapping_mul(0x9E37_79B9))
                            | 1);
                        let n = (ROWS.min(rows - c * ROWS) * cols) as usize;
                        if let Some(pool) = &pool {
                            let units = n / unit as usize;
                            let mut out = Vec::with_capacity(units * unit_bytes);
                            for _ in 0..units {
                                let k = (rng.next() % POOL) as usize;
                                out.extend_from_slice(&pool[k * unit_bytes..(k + 1) * unit_bytes]);
                            }
                            return out;
                        }
                        let values: Vec<f32> = (0..n).map(|_| mean + rng.normal() * std).collect();
                        quant::quantize(*ty, &values).expect("whole blocks")
                    })
                    .collect();
                if send.send(parts).is_err() {
                    // The writer stopped on an error; it reports it below.
                    break;
                }
            }
        }
        drop(send);
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?
    })?;
    Ok(())
}

/// Llama 3.1's RoPE frequency factors (factor 8, low/high frequency factors
/// 1 and 4, original context 8192), as llama.cpp's converter computes them.
pub fn llama3_rope_factors(head_dim: usize, base: f64) -> Vec<f32> {
    let (factor, low, high, old_ctx) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < old_ctx / high {
                1.0
            } else if wavelen > old_ctx / low {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// The tensors of a synthetic model: names, shapes and types (after the Q8_0
/// fallback for rows that do not divide into the type's blocks).
pub fn tensor_list(spec: &TinySpec, n_vocab: u64) -> Vec<(String, Vec<u64>, GgmlType)> {
    let (d, ff, h, kvh, v) = (
        spec.d_model,
        spec.d_ff,
        spec.n_heads,
        spec.n_kv_heads,
        n_vocab,
    );
    let hd = spec.head_dim();
    let arch = spec.arch;
    let desc = crate::model::Arch::from_name(arch).map(|a| *a.desc());
    let mix = spec.mix.unwrap_or(QuantMix::Uniform(spec.weight_type));
    let mut tensors: Vec<(String, Vec<u64>, GgmlType)> = vec![
        (
            "token_embd.weight".into(),
            vec![d, v],
            mix.type_for("token_embd.weight", None, spec.n_layers),
        ),
        ("output_norm.weight".into(), vec![d], GgmlType::F32),
    ];
    if spec.rope_freqs {
        tensors.push(("rope_freqs.weight".into(), vec![hd / 2], GgmlType::F32));
    }
    if !spec.tied {
        tensors.push((
            "output.weight".into(),
            vec![d, v],
            mix.type_for("output.weight", None, spec.n_layers),
        ));
    }
    for l in 0..spec.n_layers {
        let mut layer: Vec<(&str, Vec<u64>)> = vec![
            ("attn_norm.weight", vec![d]),
            ("attn_q.weight", vec![d, h * hd]),
            ("attn_k.weight", vec![d, kvh * hd]),
            ("attn_v.weight", vec![d, kvh * hd]),
            ("attn_output.weight", vec![h * hd, d]),
            ("ffn_norm.weight", vec![d]),
        ];
        match spec.experts {
            None => layer.extend([
                ("ffn_gate.weight", vec![d, ff]),
                ("ffn_up.weight", vec![d, ff]),
                ("ffn_down.weight", vec![ff, d]),
            ]),
            Some([e, _, ffe]) => layer.extend([
                ("ffn_gate_inp.weight", vec![d, e]),
                ("ffn_gate_exps.weight", vec![d, ffe, e]),
                ("ffn_up_exps.weight", vec![d, ffe, e]),
                ("ffn_down_exps.weight", vec![ffe, d, e]),
            ]),
        }
        use crate::model::Presence;
        if desc.is_some_and(|a| a.qkv_bias == Presence::Required) {
            layer.extend([
                ("attn_q.bias", vec![h * hd]),
                ("attn_k.bias", vec![kvh * hd]),
                ("attn_v.bias", vec![kvh * hd]),
            ]);
        }
        if desc.is_some_and(|a| a.qk_norm) {
            layer.extend([
                ("attn_q_norm.weight", vec![hd]),
                ("attn_k_norm.weight", vec![hd]),
            ]);
        }
        if desc.is_some_and(|a| a.post_norms) {
            layer.extend([
                ("post_attention_norm.weight", vec![d]),
                ("post_ffw_norm.weight", vec![d]),
            ]);
        }
        for (n, shape) in layer {
            let name = format!("blk.{l}.{n}");
            // Vectors and the router stay f32, as llama.cpp's quantizer keeps them.
            let ty = if shape.len() == 1 || n == "ffn_gate_inp.weight" {
                GgmlType::F32
            } else {
                mix.type_for(&name, Some(l), spec.n_layers)
            };
            tensors.push((name, shape, ty));
        }
    }
    // Row lengths that are not a whole number of the type's blocks (896 for
    // k-quants) fall back to Q8_0, as llama.cpp's quantizer falls back.
    for (_, shape, ty) in tensors.iter_mut() {
        if shape[0] % ty.block_elems() as u64 != 0 {
            *ty = GgmlType::Q8_0;
        }
    }
    tensors
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
