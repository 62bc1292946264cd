//! Where each weight of a model lives in its file(s), checked against the
//! hyperparameters. A layer is a unit: the streaming engine pins, copies and
//! places layers by the byte ranges listed here.

use crate::gguf::{Gguf, TensorInfo};
use crate::quant::GgmlType;

use super::config::{Config, Presence};

#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{file}: tensor '{name}' is missing; the file is not a complete {arch} model")]
    Missing {
        file: String,
        name: String,
        arch: &'static str,
    },
    #[error(
        "{file}: tensor '{name}' has shape {got:?}, expected {want:?} for this model's hyperparameters"
    )]
    Shape {
        file: String,
        name: String,
        got: Vec<u64>,
        want: Vec<u64>,
    },
    #[error(
        "{file}: it holds tensors of layer {layer} but block_count says {block_count} layers; the file is inconsistent (re-convert it, or correct block_count)"
    )]
    ExtraLayer {
        file: String,
        layer: usize,
        block_count: usize,
    },
    #[error("{file}: tensor '{name}' has type {ty}, which cannot be used as {role}")]
    Type {
        file: String,
        name: String,
        ty: GgmlType,
        role: &'static str,
    },
}

/// One weight tensor: its name, type, shape and byte range in the model files.
#[derive(Debug, Clone)]
pub struct TensorRef {
    pub name: String,
    pub ty: GgmlType,
    /// ggml order: `shape[0]` is the row length (input features of a matrix).
    pub shape: Vec<u64>,
    pub file_index: usize,
    pub file_offset: u64,
    pub n_bytes: u64,
}

impl TensorRef {
    pub fn from_info(t: &TensorInfo) -> Self {
        TensorRef {
            name: t.name.clone(),
            ty: t.ty,
            shape: t.shape.clone(),
            file_index: t.file_index,
            file_offset: t.file_offset,
            n_bytes: t.n_bytes,
        }
    }
    /// Input features (row length) of a matrix.
    pub fn cols(&self) -> usize {
        self.shape[0] as usize
    }
    /// Output features (rows) of a matrix.
    pub fn rows(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1) as usize
    }
}

/// The weights of one transformer block.
#[derive(Debug, Clone)]
pub struct LayerTensors {
    pub index: usize,
    pub attn_norm: TensorRef,
    pub wq: TensorRef,
    pub wk: TensorRef,
    pub wv: TensorRef,
    pub bq: Option<TensorRef>,
    pub bk: Option<TensorRef>,
    pub bv: Option<TensorRef>,
    /// RMS norm weights of each query and key head (qwen3, gemma3).
    pub q_norm: Option<TensorRef>,
    pub k_norm: Option<TensorRef>,
    pub wo: TensorRef,
    /// Norm of the attention's output before the residual (gemma).
    pub post_attn_norm: Option<TensorRef>,
    pub ffn_norm: TensorRef,
    pub w_gate: TensorRef,
    pub w_up: TensorRef,
    pub w_down: TensorRef,
    /// Norm of the feed-forward block's output before the residual (gemma).
    pub post_ffn_norm: Option<TensorRef>,
}

impl LayerTensors {
    /// The seven matrices, in the order packed buffers (streaming slots, host
    /// copies) hold them and `Layer::assemble` takes them.
    pub fn matrices(&self) -> [&TensorRef; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }

    pub fn all(&self) -> Vec<&TensorRef> {
        let mut v = vec![
            &self.attn_norm,
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.ffn_norm,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ];
        v.extend(self.vectors_opt().into_iter().flatten());
        v
    }

    /// The optional vectors (biases and the extra norms).
    fn vectors_opt(&self) -> [Option<&TensorRef>; 7] {
        [
            self.bq.as_ref(),
            self.bk.as_ref(),
            self.bv.as_ref(),
            self.q_norm.as_ref(),
            self.k_norm.as_ref(),
            self.post_attn_norm.as_ref(),
            self.post_ffn_norm.as_ref(),
        ]
    }

    /// Total bytes of the layer's weights.
    pub fn n_bytes(&self) -> u64 {
        self.all().iter().map(|t| t.n_bytes).sum()
    }
}

/// Every weight of a model.
#[derive(Debug, Clone)]
pub struct ModelTensors {
    pub token_embd: TensorRef,
    pub layers: Vec<LayerTensors>,
    pub output_norm: TensorRef,
    /// `None` when the output projection is tied to the token embeddings.
    pub output: Option<TensorRef>,
}

impl ModelTensors {
    pub fn from_gguf(g: &Gguf, cfg: &Config) -> Result<Self, WeightError> {
        let file = g.path().display().to_string();
        let find = |name: &str, want: &[usize]| -> Result<TensorRef, WeightError> {
            let t = g.tensor(name).ok_or_else(|| WeightError::Missing {
                file: file.clone(),
                name: name.to_string(),
                arch: cfg.arch.name(),
            })?;
            let want: Vec<u64> = want.iter().map(|&v| v as u64).collect();
            // Trailing dimensions of size one are equivalent.
            let mut got = t.shape.clone();
            while got.len() > want.len() && got.last() == Some(&1) {
                got.pop();
            }
            if got != want {
                return Err(WeightError::Shape {
                    file: file.clone(),
                    name: name.to_string(),
                    got: t.shape.clone(),
                    want,
                });
            }
            let r = TensorRef::from_info(t);
            if !GgmlType::WEIGHT_TYPES.contains(&r.ty) {
                return Err(WeightError::Type {
                    file: file.clone(),
                    name: name.to_string(),
                    ty: r.ty,
                    role: "a weight",
                });
            }
            Ok(r)
        };
        let vector = |name: &str, n: usize| -> Result<TensorRef, WeightError> {
            let r = find(name, &[n])?;
            if !matches!(r.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                return Err(WeightError::Type {
                    file: file.clone(),
                    name: name.to_string(),
                    ty: r.ty,
                    role: "a norm weight or bias (float types only)",
                });
            }
            Ok(r)
        };
        let (d, q, kv, ff) = (cfg.d_model, cfg.q_width(), cfg.kv_width(), cfg.d_ff);
        let desc = cfg.arch.desc();
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let present = |p: Presence, s: &str, width: usize| match p {
                Presence::Required => vector(&n(s), width).map(Some),
                // Files of the family may carry them; used where present.
                Presence::Optional if g.tensor(&n(s)).is_some() => vector(&n(s), width).map(Some),
                Presence::Optional | Presence::Never => Ok(None),
            };
            let bias = |s: &str, width: usize| present(desc.qkv_bias, s, width);
            let needed = |yes: bool| match yes {
                true => Presence::Required,
                false => Presence::Never,
            };
            let hd = cfg.head_dim;
            layers.push(LayerTensors {
                index: i,
                attn_norm: vector(&n("attn_norm.weight"), d)?,
                wq: find(&n("attn_q.weight"), &[d, q])?,
                wk: find(&n("attn_k.weight"), &[d, kv])?,
                wv: find(&n("attn_v.weight"), &[d, kv])?,
                bq: bias("attn_q.bias", q)?,
                bk: bias("attn_k.bias", kv)?,
                bv: bias("attn_v.bias", kv)?,
                q_norm: present(needed(desc.qk_norm), "attn_q_norm.weight", hd)?,
                k_norm: present(needed(desc.qk_norm), "attn_k_norm.weight", hd)?,
                wo: find(&n("attn_output.weight"), &[q, d])?,
                post_attn_norm: present(needed(desc.post_norms), "post_attention_norm.weight", d)?,
                ffn_norm: vector(&n("ffn_norm.weight"), d)?,
                w_gate: find(&n("ffn_gate.weight"), &[d, ff])?,
                w_up: find(&n("ffn_up.weight"), &[d, ff])?,
                w_down: find(&n("ffn_down.weight"), &[ff, d])?,
                post_ffn_norm: present(needed(desc.post_norms), "post_ffw_norm.weight", d)?,
            });
        }
        // Layers beyond block_count would be ignored without a word.
        if let Some(layer) = g
            .tensors()
            .iter()
            .filter_map(|t| t.name.strip_prefix("blk.")?.split('.').next()?.parse().ok())
            .find(|&l: &usize| l >= cfg.n_layers)
        {
            return Err(WeightError::ExtraLayer {
                file: file.clone(),
                layer,
                block_count: cfg.n_layers,
            });
        }
        let token_embd = find("token_embd.weight", &[d, cfg.n_vocab])?;
        let output = match g.tensor("output.weight") {
            Some(_) => Some(find("output.weight", &[d, cfg.n_vocab])?),
            None => None,
        };
        Ok(ModelTensors {
            token_embd,
            layers,
            output_norm: vector("output_norm.weight", d)?,
            output,
        })
    }

    /// The output projection (the token embeddings when tied).
    pub fn output(&self) -> &TensorRef {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}
