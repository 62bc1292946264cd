//! Hyperparameters of the supported architectures, read from GGUF metadata.

use crate::gguf::Gguf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM, Mistral-style models.
    Llama,
    /// Qwen2 / Qwen2.5: llama plus biases on Q, K and V.
    Qwen2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
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
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "architecture '{0}' is not supported; ferry runs 'llama' (Llama 2/3, SmolLM, Mistral-style) and 'qwen2' models"
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
    pub rope: RopeParams,
}

impl Config {
    pub fn from_gguf(g: &Gguf) -> Result<Self, ConfigError> {
        let arch_name = g.architecture()?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => return Err(ConfigError::UnsupportedArch(other.to_string())),
        };
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
        let n_vocab = g
            .tensor("token_embd.weight")
            .and_then(|t| t.shape.get(1).copied())
            .map(|v| v as usize)
            .or(g.get_u64_opt(&key("vocab_size"))?.map(|v| v as usize))
            .unwrap_or(0);
        let rms_eps = g
            .get_f64_opt(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5) as f32;
        let freq_base = g.get_f64_opt(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32;
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
            rope: RopeParams {
                kind: match arch {
                    Arch::Llama => RopeKind::Normal,
                    Arch::Qwen2 => RopeKind::Neox,
                },
                n_dims,
                freq_base,
                scaling,
            },
        })
    }

    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

impl RopeParams {
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
            let extrap = theta;
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
