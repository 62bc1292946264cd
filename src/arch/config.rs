//! Hyperparameters of the supported architectures, read from GGUF metadata.

use crate::gguf::Gguf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM, Mistral-style models.
    Llama,
    /// Qwen2 / Qwen2.5: llama plus biases on Q, K and V.
    Qwen2,
    /// Qwen3 (dense): RMS norms on each query and key head before RoPE, no biases.
    Qwen3,
    /// Gemma 3: sliding-window layers between global ones, each with its own
    /// RoPE base; q/k norms; GELU-tanh; norms after attention and after the
    /// feed-forward block; embeddings scaled by √d.
    Gemma3,
    /// Qwen3 mixture of experts (Qwen3-30B-A3B, Qwen3-235B-A22B): qwen3's
    /// attention, a routed mixture of experts in every layer.
    Qwen3Moe,
}

/// How an architecture departs from llama's layer: the one table a new
/// architecture adds a row to (with its tensor names in `weights.rs`).
#[derive(Debug, Clone, Copy)]
pub struct ArchDesc {
    pub arch: Arch,
    pub name: &'static str,
    pub rope: RopeKind,
    pub qkv_bias: Presence,
    pub qk_norm: bool,
    /// RMS norms on the attention's and the feed-forward block's outputs
    /// before they join the residual stream.
    pub post_norms: bool,
    pub activation: Activation,
    /// Token embeddings multiplied by √d_model.
    pub embed_scale_sqrt_d: bool,
    /// Queries scaled before attention (the scores then unscaled), as gemma
    /// does; otherwise the scores are scaled inside the softmax.
    pub scale_query: bool,
    /// Where the file sets `attention.sliding_window`: layer `i` uses it
    /// unless `(i + 1) % pattern == 0`; `Some(0)`: every layer does (Mistral
    /// files of the llama architecture; llama.cpp ignores their window, which
    /// only matters past it, 4096 tokens); `None`: no layer does.
    pub swa_pattern: Option<usize>,
    /// A mixture of experts in place of the dense feed-forward block:
    /// `Required` (every file), `Optional` (where the file sets
    /// `expert_count`: Mixtral files of the llama architecture), `Never`.
    pub experts: Presence,
}

/// Whether a family of tensors is in every file, in none, or in some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Never,
    Optional,
    Required,
}

/// Llama's layer, which every other row departs from.
const LLAMA: ArchDesc = ArchDesc {
    arch: Arch::Llama,
    name: "llama",
    rope: RopeKind::Normal,
    qkv_bias: Presence::Optional,
    qk_norm: false,
    post_norms: false,
    activation: Activation::Silu,
    embed_scale_sqrt_d: false,
    scale_query: false,
    swa_pattern: Some(0),
    experts: Presence::Optional,
};

pub const ARCHITECTURES: [ArchDesc; 5] = [
    LLAMA,
    ArchDesc {
        arch: Arch::Qwen2,
        name: "qwen2",
        rope: RopeKind::Neox,
        qkv_bias: Presence::Required,
        swa_pattern: None,
        experts: Presence::Never,
        ..LLAMA
    },
    ArchDesc {
        arch: Arch::Qwen3,
        name: "qwen3",
        rope: RopeKind::Neox,
        qkv_bias: Presence::Never,
        qk_norm: true,
        swa_pattern: None,
        experts: Presence::Never,
        ..LLAMA
    },
    ArchDesc {
        arch: Arch::Qwen3Moe,
        name: "qwen3moe",
        rope: RopeKind::Neox,
        qkv_bias: Presence::Never,
        qk_norm: true,
        swa_pattern: None,
        experts: Presence::Required,
        ..LLAMA
    },
    ArchDesc {
        arch: Arch::Gemma3,
        name: "gemma3",
        rope: RopeKind::Neox,
        qkv_bias: Presence::Never,
        qk_norm: true,
        post_norms: true,
        activation: Activation::GeluTanh,
        embed_scale_sqrt_d: true,
        scale_query: true,
        swa_pattern: Some(6),
        experts: Presence::Never,
    },
];

impl Arch {
    pub fn desc(self) -> &'static ArchDesc {
        ARCHITECTURES
            .iter()
            .find(|d| d.arch == self)
            .expect("every Arch has a row in ARCHITECTURES")
    }

    pub fn name(self) -> &'static str {
        self.desc().name
    }

    pub fn from_name(name: &str) -> Option<Arch> {
        ARCHITECTURES
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.arch)
    }

    /// The names ferry runs, for error messages and help.
    pub fn supported() -> String {
        ARCHITECTURES
            .iter()
            .map(|d| d.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The gated activation of a feed-forward block: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up`.
    Silu,
    /// GeGLU with the tanh approximation of GELU (gemma).
    GeluTanh,
}

/// What the attention of one layer computes: its heads, RoPE, window and
/// score scale. Every backend's attention follows this description.
#[derive(Debug, Clone)]
pub struct AttnSpec {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope: RopeParams,
    /// Sliding window: a token attends to the `window` positions up to and
    /// including its own (`None`: the whole context).
    pub window: Option<usize>,
    /// Scale of the scores inside the softmax (1 where the queries were
    /// scaled before: `LayerSpec::query_scale`).
    pub scale: f32,
}

impl AttnSpec {
    /// Full-context attention scaled by 1/√head_dim, with a plain RoPE
    /// (kernel measurements and checks, where no model is loaded).
    pub fn full(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        AttnSpec {
            n_heads,
            n_kv_heads,
            head_dim,
            rope: RopeParams {
                kind: RopeKind::Normal,
                n_dims: head_dim,
                freq_base: 10000.0,
                scaling: RopeScaling::None,
                freq_factors: None,
            },
            window: None,
            scale: 1.0 / (head_dim as f32).sqrt(),
        }
    }

    /// The first cached position a token at `pos` attends to.
    pub fn first_key(&self, pos: usize) -> usize {
        match self.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        }
    }
}

/// One transformer block as data: the forward pass (`Layer::forward`)
/// follows it, whatever the architecture.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub attn: AttnSpec,
    /// Queries multiplied by this before attention (gemma), if set.
    pub query_scale: Option<f32>,
    pub qk_norm: bool,
    pub post_norms: bool,
    pub activation: Activation,
    /// A mixture of experts in place of the dense feed-forward block.
    pub moe: Option<MoeSpec>,
}

/// A routed mixture of experts: each token's router logits (`ffn_gate_inp`)
/// go through a softmax; the `n_used` most probable experts run (their
/// gated MLPs of `d_ff_expert`), each output weighted by its probability
/// (renormalised over the chosen ones where `norm_weights`), and summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeSpec {
    pub n_expert: usize,
    pub n_used: usize,
    pub d_ff_expert: usize,
    pub norm_weights: bool,
}

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    /// Adjacent pairs (2i, 2i+1): llama-architecture GGUFs (their Q/K weights are
    /// permuted by the converter to make this equal to the HF layout).
    Normal,
    /// Halves (i, i + d/2): qwen2 and other NeoX-style models.
    Neox,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// YaRN: interpolate low frequencies, extrapolate high ones, scale attention.
    Yarn {
        factor: f32,
        original_context: u32,
        beta_fast: f32,
        beta_slow: f32,
        ext_factor: f32,
        attn_factor: f32,
    },
}

#[derive(Debug, Clone)]
pub struct RopeParams {
    pub kind: RopeKind,
    /// Dimensions per head that are rotated (the rest pass through).
    pub n_dims: usize,
    pub freq_base: f32,
    pub scaling: RopeScaling,
    /// Per-pair divisors of the frequencies (`rope_freqs.weight`: Llama 3.1+
    /// long-context scaling), `n_dims / 2` of them.
    pub freq_factors: Option<std::sync::Arc<[f32]>>,
}

/// `rope_freqs.weight`, where the file has it (Llama 3.1+ RoPE scaling).
fn rope_factors(g: &Gguf, n_dims: usize) -> Result<Option<std::sync::Arc<[f32]>>, ConfigError> {
    let Some(t) = g.tensor("rope_freqs.weight") else {
        return Ok(None);
    };
    let bad = |why: String| ConfigError::Bad {
        key: "rope_freqs.weight".into(),
        value: format!("{:?} {:?}", t.ty, t.shape),
        why,
    };
    if t.ty != crate::quant::GgmlType::F32 || t.shape.first() != Some(&(n_dims as u64 / 2)) {
        return Err(bad(format!(
            "must be {} f32 values (half the rotated dimensions)",
            n_dims / 2
        )));
    }
    let v: Vec<f32> = g
        .tensor_bytes(t)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if v.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
        return Err(bad("every factor must be a finite number > 0".into()));
    }
    Ok(Some(v.into()))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "architecture '{0}' is not supported; ferry runs {supported} models (see `ferry inspect` for a file's architecture)",
        supported = Arch::supported()
    )]
    UnsupportedArch(String),
    #[error("{0}")]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("hyperparameter '{key}' = {value}: {why}")]
    Bad {
        key: String,
        value: String,
        why: String,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub context_train: usize,
    pub rms_eps: f32,
    /// RoPE of the global (full-context) layers.
    pub rope: RopeParams,
    /// Token embeddings are multiplied by this (gemma: √d_model).
    pub embed_scale: Option<f32>,
    /// Final logits soft-capped: `c · tanh(logit / c)`.
    pub final_softcap: Option<f32>,
    /// The mixture of experts of the layers that have one.
    pub moe: Option<MoeSpec>,
    /// Each layer's description.
    pub layers: Vec<LayerSpec>,
}

/// The mixture of experts a file describes (`expert_count`, `expert_used_count`,
/// the experts' width), where its architecture has one.
fn moe_spec(
    g: &Gguf,
    arch_name: &str,
    desc: &ArchDesc,
    d_ff: usize,
) -> Result<Option<MoeSpec>, ConfigError> {
    let key = |k: &str| format!("{arch_name}.{k}");
    let n_expert = g.get_u64_opt(&key("expert_count"))?.unwrap_or(0) as usize;
    match desc.experts {
        Presence::Never => return Ok(None),
        Presence::Optional if n_expert == 0 => return Ok(None),
        _ => {}
    }
    let bad = |k: &str, v: usize, why: &str| ConfigError::Bad {
        key: key(k),
        value: v.to_string(),
        why: why.to_string(),
    };
    if !(1..=1024).contains(&n_expert) {
        return Err(bad("expert_count", n_expert, "must be between 1 and 1024"));
    }
    let n_used = g.get_u64_opt(&key("expert_used_count"))?.unwrap_or(0) as usize;
    if !(1..=n_expert.min(64)).contains(&n_used) {
        return Err(bad(
            "expert_used_count",
            n_used,
            "must be between 1 and expert_count (at most 64)",
        ));
    }
    let d_ff_expert = g
        .get_u64_opt(&key("expert_feed_forward_length"))?
        .map_or(d_ff, |v| v as usize);
    if d_ff_expert == 0 || d_ff_expert > 1 << 20 {
        return Err(bad(
            "expert_feed_forward_length",
            d_ff_expert,
            "must be between 1 and 2^20",
        ));
    }
    Ok(Some(MoeSpec {
        n_expert,
        n_used,
        d_ff_expert,
        // llama.cpp renormalises the chosen experts' weights for qwen3moe and
        // for Mixtral-style llama files.
        norm_weights: true,
    }))
}

impl Config {
    pub fn from_gguf(g: &Gguf) -> Result<Self, ConfigError> {
        let arch_name = g.architecture()?;
        let arch = Arch::from_name(arch_name)
            .ok_or_else(|| ConfigError::UnsupportedArch(arch_name.to_string()))?;
        let desc = arch.desc();
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize, ConfigError> { Ok(g.get_u64(&key(k))? as usize) };
        let n_layers = req("block_count")?;
        let d_model = req("embedding_length")?;
        let d_ff = req("feed_forward_length")?;
        let n_heads = req("attention.head_count")?;
        let n_kv_heads = g
            .get_u64_opt(&key("attention.head_count_kv"))?
            .map_or(n_heads, |v| v as usize);
        let bad = |k: &str, v: usize, why: &str| ConfigError::Bad {
            key: key(k),
            value: v.to_string(),
            why: why.to_string(),
        };
        for (k, v) in [
            ("block_count", n_layers),
            ("embedding_length", d_model),
            ("feed_forward_length", d_ff),
            ("attention.head_count", n_heads),
            ("attention.head_count_kv", n_kv_heads),
        ] {
            if v == 0 || v > 1 << 20 {
                return Err(bad(k, v, "must be between 1 and 2^20"));
            }
        }
        if n_heads % n_kv_heads != 0 {
            return Err(bad(
                "attention.head_count_kv",
                n_kv_heads,
                "must divide attention.head_count",
            ));
        }
        let head_dim = match g.get_u64_opt(&key("attention.key_length"))? {
            Some(v) => v as usize,
            None => {
                if d_model % n_heads != 0 {
                    return Err(bad(
                        "embedding_length",
                        d_model,
                        "not divisible by the head count",
                    ));
                }
                d_model / n_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > 1024 {
            return Err(bad(
                "attention.key_length",
                head_dim,
                "head size must be even and at most 1024",
            ));
        }
        if let Some(v) = g.get_u64_opt(&key("attention.value_length"))?
            && v as usize != head_dim
        {
            return Err(bad(
                "attention.value_length",
                v as usize,
                "ferry needs value heads as large as key heads (attention.key_length)",
            ));
        }
        let n_vocab = g
            .tensor("token_embd.weight")
            .and_then(|t| t.shape.get(1).copied())
            .map(|v| v as usize)
            .or(g.get_u64_opt(&key("vocab_size"))?.map(|v| v as usize))
            .unwrap_or(0);
        let float = |k: &str, default: f64, ok: fn(f64) -> bool, why: &str| {
            let v = g.get_f64_opt(&key(k))?.unwrap_or(default);
            if !ok(v) {
                return Err(ConfigError::Bad {
                    key: key(k),
                    value: v.to_string(),
                    why: why.to_string(),
                });
            }
            Ok(v as f32)
        };
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let rms_eps = float(
            "attention.layer_norm_rms_epsilon",
            1e-5,
            |v| v.is_finite() && v >= 0.0,
            "must be a finite number ≥ 0",
        )?;
        let freq_base = float(
            "rope.freq_base",
            10000.0,
            positive,
            "must be a finite number > 0",
        )?;
        let n_dims = g
            .get_u64_opt(&key("rope.dimension_count"))?
            .map_or(head_dim, |v| v as usize);
        if n_dims > head_dim || n_dims % 2 != 0 {
            return Err(bad(
                "rope.dimension_count",
                n_dims,
                "must be even and at most the head size",
            ));
        }
        let context_train = g.get_u64_opt(&key("context_length"))?.unwrap_or(4096) as usize;
        if context_train == 0 {
            return Err(bad("context_length", 0, "must be at least 1"));
        }
        let scaling_type = g
            .get(&key("rope.scaling.type"))
            .and_then(|v| v.as_str())
            .unwrap_or("none")
            .to_string();
        let factor = g
            .get_f64_opt(&key("rope.scaling.factor"))?
            .or(g.get_f64_opt(&key("rope.scale_linear"))?)
            .unwrap_or(1.0) as f32;
        let scaling = match scaling_type.as_str() {
            _ if factor == 1.0 || factor <= 0.0 => RopeScaling::None,
            "linear" | "none" => RopeScaling::Linear { factor },
            "yarn" => RopeScaling::Yarn {
                factor,
                original_context: g
                    .get_u64_opt(&key("rope.scaling.original_context_length"))?
                    .unwrap_or(context_train as u64) as u32,
                beta_fast: g
                    .get_f64_opt(&key("rope.scaling.yarn_beta_fast"))?
                    .unwrap_or(32.0) as f32,
                beta_slow: g
                    .get_f64_opt(&key("rope.scaling.yarn_beta_slow"))?
                    .unwrap_or(1.0) as f32,
                ext_factor: g
                    .get_f64_opt(&key("rope.scaling.yarn_ext_factor"))?
                    .unwrap_or(1.0) as f32,
                attn_factor: g
                    .get_f64_opt(&key("rope.scaling.attn_factor"))?
                    .unwrap_or(1.0) as f32,
            },
            other => {
                return Err(ConfigError::Bad {
                    key: key("rope.scaling.type"),
                    value: other.to_string(),
                    why: "supported: none, linear, yarn".into(),
                });
            }
        };
        let rope = RopeParams {
            kind: desc.rope,
            n_dims,
            freq_base,
            scaling,
            freq_factors: rope_factors(g, n_dims)?,
        };
        // Sliding-window layers: the window from the file, the layers from
        // the architecture's pattern (or the file's), their own RoPE base.
        let window = g
            .get_u64_opt(&key("attention.sliding_window"))?
            .map(|v| v as usize)
            .filter(|&w| w > 0 && desc.swa_pattern.is_some());
        let pattern = g
            .get_u64_opt(&key("attention.sliding_window_pattern"))?
            .map_or(desc.swa_pattern.unwrap_or(0), |v| v as usize);
        let rope_swa = RopeParams {
            freq_base: float(
                "rope.freq_base_swa",
                10000.0,
                positive,
                "must be a finite number > 0",
            )?,
            scaling: RopeScaling::None,
            ..rope.clone()
        };
        let attn_scale = match arch {
            // As llama.cpp (after gemma_pytorch): the 27B (62 layers) scales
            // by its query_pre_attn_scalar, d_model / n_heads.
            Arch::Gemma3 if n_layers == 62 => 1.0 / ((d_model / n_heads) as f32).sqrt(),
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        let moe = moe_spec(g, arch_name, desc, d_ff)?;
        let layers = (0..n_layers)
            .map(|i| {
                let local = window.is_some() && (pattern == 0 || (i + 1) % pattern != 0);
                LayerSpec {
                    attn: AttnSpec {
                        n_heads,
                        n_kv_heads,
                        head_dim,
                        rope: if local {
                            rope_swa.clone()
                        } else {
                            rope.clone()
                        },
                        window: window.filter(|_| local),
                        scale: if desc.scale_query { 1.0 } else { attn_scale },
                    },
                    query_scale: desc.scale_query.then_some(attn_scale),
                    qk_norm: desc.qk_norm,
                    post_norms: desc.post_norms,
                    activation: desc.activation,
                    moe,
                }
            })
            .collect();
        let final_softcap = g
            .get_f64_opt(&key("final_logit_softcapping"))?
            .filter(|&c| c != 0.0)
            .map(|c| {
                if positive(c) {
                    Ok(c as f32)
                } else {
                    Err(ConfigError::Bad {
                        key: key("final_logit_softcapping"),
                        value: c.to_string(),
                        why: "must be a finite number > 0 (or 0: none)".into(),
                    })
                }
            })
            .transpose()?;
        Ok(Config {
            arch,
            n_layers,
            d_model,
            d_ff,
            n_heads,
            n_kv_heads,
            head_dim,
            n_vocab,
            context_train,
            rms_eps,
            rope,
            embed_scale: desc.embed_scale_sqrt_d.then(|| (d_model as f32).sqrt()),
            final_softcap,
            moe,
            layers,
        })
    }

    /// Whether every layer attends over the whole context.
    pub fn all_global(&self) -> bool {
        self.layers.iter().all(|l| l.attn.window.is_none())
    }

    /// Width of the dense feed-forward blocks' intermediate activations (1
    /// where every layer is a mixture of experts, which sizes its own).
    pub fn dense_ff_width(&self) -> usize {
        match self.layers.iter().all(|l| l.moe.is_some()) {
            true => 1,
            false => self.d_ff,
        }
    }

    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

impl RopeParams {
    /// The scaling and frequency factors as words, for keys of caches of
    /// tables computed from these parameters.
    pub fn fingerprint(&self) -> Vec<u32> {
        let mut v: Vec<u32> = match self.scaling {
            RopeScaling::None => vec![0],
            RopeScaling::Linear { factor } => vec![1, factor.to_bits()],
            RopeScaling::Yarn {
                factor,
                original_context,
                beta_fast,
                beta_slow,
                ext_factor,
                attn_factor,
            } => vec![
                2,
                factor.to_bits(),
                original_context,
                beta_fast.to_bits(),
                beta_slow.to_bits(),
                ext_factor.to_bits(),
                attn_factor.to_bits(),
            ],
        };
        if let Some(f) = &self.freq_factors {
            v.extend(f.iter().map(|x| x.to_bits()));
        }
        v
    }

    /// cos/sin for every rotated pair at position `pos`, as ggml computes them
    /// (theta_i = pos * base^(-2i/n_dims), with the configured scaling).
    pub fn cos_sin(&self, pos: u32, cos: &mut [f32], sin: &mut [f32]) {
        let half = self.n_dims / 2;
        let theta_scale = self.freq_base.powf(-2.0 / self.n_dims as f32);
        let (freq_scale, ext_factor, mut mscale, corr) = match self.scaling {
            RopeScaling::None => (1.0f32, 0.0f32, 1.0f32, (0.0, 0.0)),
            RopeScaling::Linear { factor } => (1.0 / factor, 0.0, 1.0, (0.0, 0.0)),
            RopeScaling::Yarn {
                factor,
                original_context,
                beta_fast,
                beta_slow,
                ext_factor,
                attn_factor,
            } => {
                let corr_dim = |n_rot: f32| {
                    self.n_dims as f32
                        * (original_context as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln()
                        / (2.0 * self.freq_base.ln())
                };
                let start = corr_dim(beta_fast).floor().max(0.0);
                let end = corr_dim(beta_slow).ceil().min(self.n_dims as f32 - 1.0);
                (1.0 / factor, ext_factor, attn_factor, (start, end))
            }
        };
        if ext_factor != 0.0 {
            mscale *= 1.0 + 0.1 * (1.0 / freq_scale).ln();
        }
        let mut theta = pos as f32;
        for i in 0..half {
            let extrap = match &self.freq_factors {
                Some(f) => theta / f[i],
                None => theta,
            };
            let interp = freq_scale * extrap;
            let t = if ext_factor != 0.0 {
                let y = (i as f32 - corr.0) / (corr.1 - corr.0).max(0.001);
                let ramp = (1.0 - y.clamp(0.0, 1.0)) * ext_factor;
                interp * (1.0 - ramp) + extrap * ramp
            } else {
                interp
            };
            cos[i] = t.cos() * mscale;
            sin[i] = t.sin() * mscale;
            theta *= theta_scale;
        }
    }
}
