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
    #[error(
        "{file}: layer {layer} stores each expert as a tensor of its own ('{name}'), as old conversions of Mixtral did; ferry reads the expert stacks ('ffn_gate_exps' ...) that current conversions write: convert the model again with a current llama.cpp (convert_hf_to_gguf.py)"
    )]
    SplitExperts {
        file: String,
        layer: usize,
        name: String,
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

    /// Expert `e` of a `[cols, rows, experts]` stack (`ffn_*_exps`): a matrix
    /// of its own whose bytes are one contiguous slice of the stack, so it can
    /// be pinned, copied or read on its own.
    pub fn expert(&self, e: usize) -> TensorRef {
        let n = self.shape[2];
        let bytes = self.n_bytes / n;
        TensorRef {
            name: format!("{}[{e}]", self.name),
            ty: self.ty,
            shape: self.shape[..2].to_vec(),
            file_index: self.file_index,
            file_offset: self.file_offset + e as u64 * bytes,
            n_bytes: bytes,
        }
    }
}

/// A layer's feed-forward block: one gated MLP, or a mixture of experts (a
/// router choosing `n_used` of the experts' gated MLPs for each token). `W`
/// is where a matrix lives: a `TensorRef` in a file, a backend's weight.
#[derive(Debug, Clone)]
pub enum Ffn<W> {
    Dense {
        gate: W,
        up: W,
        down: W,
    },
    Moe {
        /// `[d_model, n_expert]`: the router's logits.
        router: W,
        /// Expert `e`'s matrices at index `e`.
        gate: Vec<W>,
        up: Vec<W>,
        down: Vec<W>,
    },
}

/// One layer's experts as a backend holds them: expert `e`'s matrices at `e`.
pub struct ExpertWeights<'a, W> {
    pub gate: &'a [W],
    pub up: &'a [W],
    pub down: &'a [W],
}

impl<W> Clone for ExpertWeights<'_, W> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<W> Copy for ExpertWeights<'_, W> {}

impl<W> Ffn<W> {
    /// The routed experts' matrices, for a mixture.
    pub fn experts(&self) -> Option<ExpertWeights<'_, W>> {
        match self {
            Ffn::Moe { gate, up, down, .. } => Some(ExpertWeights { gate, up, down }),
            Ffn::Dense { .. } => None,
        }
    }

    /// The matrices in a fixed order (dense: gate, up, down; experts: the
    /// router, then every expert's gate, every up, every down), which
    /// `map_matrices` rebuilds from.
    pub fn matrices(&self) -> Vec<&W> {
        match self {
            Ffn::Dense { gate, up, down } => vec![gate, up, down],
            Ffn::Moe {
                router,
                gate,
                up,
                down,
            } => std::iter::once(router)
                .chain(gate)
                .chain(up)
                .chain(down)
                .collect(),
        }
    }

    /// The same block with each matrix made by `f(k, matrix)`, `k` its
    /// index in `matrices()`.
    pub fn map_matrices<V, E>(
        &self,
        first: usize,
        mut f: impl FnMut(usize, &W) -> Result<V, E>,
    ) -> Result<Ffn<V>, E> {
        let mut k = first;
        let mut next = |w: &W| {
            let v = f(k, w);
            k += 1;
            v
        };
        Ok(match self {
            Ffn::Dense { gate, up, down } => Ffn::Dense {
                gate: next(gate)?,
                up: next(up)?,
                down: next(down)?,
            },
            Ffn::Moe {
                router,
                gate,
                up,
                down,
            } => Ffn::Moe {
                router: next(router)?,
                gate: gate.iter().map(&mut next).collect::<Result<_, _>>()?,
                up: up.iter().map(&mut next).collect::<Result<_, _>>()?,
                down: down.iter().map(&mut next).collect::<Result<_, _>>()?,
            },
        })
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
    pub ffn: Ffn<TensorRef>,
    /// Norm of the feed-forward block's output before the residual (gemma).
    pub post_ffn_norm: Option<TensorRef>,
}

impl LayerTensors {
    /// The matrices, in the order packed buffers (streaming slots, host
    /// copies) hold them and `Layer::assemble` takes them: the attention's
    /// four, then the feed-forward block's (`Ffn::matrices`; an expert's
    /// matrices each on their own).
    pub fn matrices(&self) -> Vec<&TensorRef> {
        let mut v = vec![&self.wq, &self.wk, &self.wv, &self.wo];
        v.extend(self.ffn.matrices());
        v
    }

    pub fn all(&self) -> Vec<&TensorRef> {
        let mut v = self.matrices();
        v.extend([&self.attn_norm, &self.ffn_norm]);
        v.extend(self.vectors_opt().into_iter().flatten());
        v
    }

    /// Multiply-adds per token of the matrices a token passes through: every
    /// matrix of a dense layer; the attention, the router and `n_used`
    /// experts of a mixture.
    pub fn macs_per_token(&self, n_used: usize) -> u64 {
        let macs = |r: &TensorRef| r.shape.iter().take(2).product::<u64>();
        let attn: u64 = [&self.wq, &self.wk, &self.wv, &self.wo]
            .iter()
            .map(|r| macs(r))
            .sum();
        attn + match &self.ffn {
            Ffn::Dense { gate, up, down } => macs(gate) + macs(up) + macs(down),
            Ffn::Moe { router, gate, .. } => {
                macs(router) + 3 * macs(&gate[0]) * n_used.min(gate.len()) as u64
            }
        }
    }

    /// The routed experts' bytes (zero for a dense layer).
    pub fn expert_bytes(&self) -> u64 {
        match &self.ffn {
            Ffn::Dense { .. } => 0,
            Ffn::Moe { gate, up, down, .. } => {
                gate.iter().chain(up).chain(down).map(|t| t.n_bytes).sum()
            }
        }
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
                ffn: match &cfg.layers[i].moe {
                    None => Ffn::Dense {
                        gate: find(&n("ffn_gate.weight"), &[d, ff])?,
                        up: find(&n("ffn_up.weight"), &[d, ff])?,
                        down: find(&n("ffn_down.weight"), &[ff, d])?,
                    },
                    Some(m) => {
                        let old = n("ffn_gate.0.weight");
                        if g.tensor(&n("ffn_gate_exps.weight")).is_none()
                            && g.tensor(&old).is_some()
                        {
                            return Err(WeightError::SplitExperts {
                                file: file.clone(),
                                layer: i,
                                name: old,
                            });
                        }
                        let (e, ffe) = (m.n_expert, m.d_ff_expert);
                        let stack =
                            |s: &str, shape: &[usize]| -> Result<Vec<TensorRef>, WeightError> {
                                let t = find(&n(s), shape)?;
                                Ok((0..e).map(|k| t.expert(k)).collect())
                            };
                        Ffn::Moe {
                            router: find(&n("ffn_gate_inp.weight"), &[d, e])?,
                            gate: stack("ffn_gate_exps.weight", &[d, ffe, e])?,
                            up: stack("ffn_up_exps.weight", &[d, ffe, e])?,
                            down: stack("ffn_down_exps.weight", &[ffe, d, e])?,
                        }
                    }
                },
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
