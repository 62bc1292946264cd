//! Architectures: hyperparameters, per-layer weights and the forward pass,
//! written once against the `Backend` trait.

pub use crate::arch::{
    ARCHITECTURES, Activation, Arch, ArchDesc, AttnSpec, Config, ConfigError, Ffn, LayerSpec,
    LayerTensors, ModelTensors, MoeSpec, Presence, RopeKind, RopeParams, RopeScaling, TensorRef,
    WeightError,
};

pub mod moe;

use crate::backend::{Backend, BackendError, Batch};
use crate::gguf::Gguf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weight(#[from] WeightError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// One transformer block's weights as a backend holds them.
pub struct Layer<B: Backend> {
    pub index: usize,
    pub attn_norm: B::Vector,
    pub wq: B::Weight,
    pub wk: B::Weight,
    pub wv: B::Weight,
    pub bq: Option<B::Vector>,
    pub bk: Option<B::Vector>,
    pub bv: Option<B::Vector>,
    pub q_norm: Option<B::Vector>,
    pub k_norm: Option<B::Vector>,
    pub wo: B::Weight,
    pub post_attn_norm: Option<B::Vector>,
    pub ffn_norm: B::Vector,
    pub ffn: Ffn<B::Weight>,
    pub post_ffn_norm: Option<B::Vector>,
}

/// Scratch activations for one forward pass over `n` tokens.
pub struct Scratch<B: Backend> {
    pub n: usize,
    h: B::Act,
    q: B::Act,
    k: B::Act,
    v: B::Act,
    attn: B::Act,
    proj: B::Act,
    gate: B::Act,
    up: B::Act,
}

impl<B: Backend> Scratch<B> {
    pub fn new(b: &B, cfg: &Config, n: usize) -> Result<Self, BackendError> {
        Ok(Scratch {
            n,
            h: b.act(n, cfg.d_model)?,
            q: b.act(n, cfg.q_width())?,
            k: b.act(n, cfg.kv_width())?,
            v: b.act(n, cfg.kv_width())?,
            attn: b.act(n, cfg.q_width())?,
            proj: b.act(n, cfg.d_model)?,
            gate: b.act(n, cfg.dense_ff_width())?,
            up: b.act(n, cfg.dense_ff_width())?,
        })
    }
}

/// The activations of a forward pass, kept between passes over the same
/// number of tokens (`Model::forward_in`): a decode loop then allocates and
/// zeroes nothing per step (on a GPU a dozen allocations, each checked
/// against the budget, and their memsets, all before the step's first
/// kernel).
pub struct Workspace<B: Backend> {
    x: B::Act,
    scratch: Scratch<B>,
    /// The final norm and the logits where the pass wants every row's
    /// (allocated on first use).
    normed: Option<B::Act>,
    logits: Option<B::Act>,
}

impl<B: Backend> Workspace<B> {
    pub fn new(b: &B, cfg: &Config, n: usize) -> Result<Self, BackendError> {
        Ok(Workspace {
            x: b.act(n, cfg.d_model)?,
            scratch: Scratch::new(b, cfg, n)?,
            normed: None,
            logits: None,
        })
    }
}

impl<B: Backend> Layer<B> {
    pub fn load(b: &B, g: &Gguf, t: &LayerTensors) -> Result<Self, BackendError> {
        Self::assemble(b, g, t, |_, m| b.load_weight(g, m))
    }

    /// A layer whose matrices come from `matrix(k, tensor)` (k indexes
    /// `LayerTensors::matrices`: a plain load, or a view into a packed buffer)
    /// and whose norms and biases are loaded from the file.
    pub fn assemble(
        b: &B,
        g: &Gguf,
        t: &LayerTensors,
        mut matrix: impl FnMut(usize, &TensorRef) -> Result<B::Weight, BackendError>,
    ) -> Result<Self, BackendError> {
        let opt = |t: &Option<TensorRef>| t.as_ref().map(|t| b.load_vector(g, t)).transpose();
        let [wq, wk, wv, wo] = [&t.wq, &t.wk, &t.wv, &t.wo];
        Ok(Layer {
            index: t.index,
            attn_norm: b.load_vector(g, &t.attn_norm)?,
            wq: matrix(0, wq)?,
            wk: matrix(1, wk)?,
            wv: matrix(2, wv)?,
            bq: opt(&t.bq)?,
            bk: opt(&t.bk)?,
            bv: opt(&t.bv)?,
            q_norm: opt(&t.q_norm)?,
            k_norm: opt(&t.k_norm)?,
            wo: matrix(3, wo)?,
            post_attn_norm: opt(&t.post_attn_norm)?,
            ffn_norm: b.load_vector(g, &t.ffn_norm)?,
            ffn: t.ffn.map_matrices(4, &mut matrix)?,
            post_ffn_norm: opt(&t.post_ffn_norm)?,
        })
    }

    /// One transformer block over the batch, as its `LayerSpec` describes
    /// it: `x += post_norm(attention(norm(x)))`, then `x +=
    /// post_norm(ffn(norm(x)))` (the post norms where the architecture has
    /// them). Every executor (resident, layer-major, streamed, hybrid) runs a
    /// layer through here. Where a step departs from llama's (q/k norms, a
    /// query scale, post norms) the backend's fused entry points give way to
    /// the unfused sequence of operations, which every backend has.
    pub fn forward(
        &self,
        b: &B,
        cfg: &Config,
        x: &mut B::Act,
        s: &mut Scratch<B>,
        kv: &mut B::Kv,
        batch: &Batch,
    ) -> Result<(), BackendError> {
        self.forward_tapped(b, cfg, x, s, kv, batch, &mut |_, _| {})
    }

    /// `forward`, showing `tap` the intermediate activations under
    /// llama.cpp's graph names (`attn_norm`, `Qcur_normed`, `Kcur_normed`,
    /// `kqv_out`, `attn_post_norm`, `ffn_inp`, `ffn_norm`, `ffn_out`,
    /// `ffn_post_norm`, `l_out`) where this layer's path computes them apart
    /// (`examples/dump_layers.rs`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_tapped(
        &self,
        b: &B,
        cfg: &Config,
        x: &mut B::Act,
        s: &mut Scratch<B>,
        kv: &mut B::Kv,
        batch: &Batch,
        tap: &mut dyn FnMut(&str, &B::Act),
    ) -> Result<(), BackendError> {
        let spec = &cfg.layers[self.index];
        let eps = cfg.rms_eps;
        // Attention.
        b.rms_norm(x, &self.attn_norm, eps, &mut s.h);
        tap("attn_norm", &s.h);
        let w = [&self.wq, &self.wk, &self.wv];
        let bias = [self.bq.as_ref(), self.bk.as_ref(), self.bv.as_ref()];
        let qkv = [&mut s.q, &mut s.k, &mut s.v];
        let norms = self.q_norm.as_ref().zip(self.k_norm.as_ref());
        if norms.is_none() && spec.query_scale.is_none() {
            b.qkv_attention(&spec.attn, &s.h, w, bias, qkv, kv, batch, &mut s.attn)?;
        } else {
            let [q, k, v] = qkv;
            b.matmul_qkv(&s.h, w, bias, q, k, v);
            if let Some((qn, kn)) = norms {
                b.rms_norm_heads(q, qn, spec.attn.head_dim, eps);
                b.rms_norm_heads(k, kn, spec.attn.head_dim, eps);
                tap("Qcur_normed", q);
                tap("Kcur_normed", k);
            }
            match spec.query_scale {
                // Rotated, then scaled (llama.cpp's order for gemma).
                Some(f) => {
                    let a = &spec.attn;
                    let heads = (a.n_heads, a.n_kv_heads, a.head_dim);
                    b.rope_qk(q, k, heads.0, heads.1, heads.2, &a.rope, batch.positions);
                    b.scale(q, f);
                    b.attention(a, q, k, v, kv, batch, &mut s.attn)?;
                }
                None => b.rope_attention(&spec.attn, q, k, v, kv, batch, &mut s.attn)?,
            }
        }
        tap("kqv_out", &s.attn);
        match &self.post_attn_norm {
            Some(post) => {
                b.matmul(&s.attn, &self.wo, &mut s.proj);
                b.rms_norm(&s.proj, post, eps, &mut s.h);
                tap("attn_post_norm", &s.h);
                b.add(x, &s.h);
            }
            None => b.matmul_add(&s.attn, &self.wo, &mut s.proj, x),
        }
        tap("ffn_inp", x);

        // Feed-forward (a gated activation, or a mixture of experts).
        b.rms_norm(x, &self.ffn_norm, eps, &mut s.h);
        tap("ffn_norm", &s.h);
        match (&self.ffn, &self.post_ffn_norm) {
            (Ffn::Dense { gate, up, down }, None) => b.feed_forward(
                &s.h,
                [gate, up, down],
                spec.activation,
                &mut s.gate,
                &mut s.up,
                &mut s.proj,
                x,
            ),
            (Ffn::Dense { gate, up, down }, Some(post)) => {
                let (g, u) = (&mut s.gate, &mut s.up);
                b.matmul_glu(&s.h, gate, up, spec.activation, g, u);
                b.matmul(&s.gate, down, &mut s.proj);
                tap("ffn_out", &s.proj);
                b.rms_norm(&s.proj, post, eps, &mut s.h);
                tap("ffn_post_norm", &s.h);
                b.add(x, &s.h);
            }
            (
                Ffn::Moe {
                    router,
                    gate,
                    up,
                    down,
                },
                post,
            ) => {
                let moe = spec.moe.as_ref().ok_or_else(|| {
                    BackendError::Invalid(format!(
                        "layer {} has experts but no MoeSpec",
                        self.index
                    ))
                })?;
                let w = crate::arch::ExpertWeights { gate, up, down };
                let (act, n) = (spec.activation, s.n);
                moe::forward(b, moe, act, router, w, &s.h, n, cfg.d_model, &mut s.proj)?;
                tap("ffn_moe_out", &s.proj);
                match post {
                    Some(post) => {
                        b.rms_norm(&s.proj, post, eps, &mut s.h);
                        b.add(x, &s.h);
                    }
                    None => b.add(x, &s.proj),
                }
            }
        }
        tap("l_out", x);
        Ok(())
    }
}

/// A model loaded onto one backend.
pub struct Model<B: Backend> {
    pub config: Config,
    pub tensors: ModelTensors,
    pub token_embd: B::Weight,
    pub layers: Vec<Layer<B>>,
    pub output_norm: B::Vector,
    /// `None` when tied to `token_embd`.
    pub output: Option<B::Weight>,
}

impl<B: Backend> Model<B> {
    /// Load every weight onto `b`, calling `progress(done, total)` after each layer.
    pub fn load(
        b: &B,
        g: &Gguf,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let config = Config::from_gguf(g)?;
        let tensors = ModelTensors::from_gguf(g, &config)?;
        let mut layers = Vec::with_capacity(config.n_layers);
        for (i, t) in tensors.layers.iter().enumerate() {
            layers.push(Layer::load(b, g, t)?);
            progress(i + 1, config.n_layers);
        }
        Ok(Self::from_layers(b, g, config, tensors, layers)?)
    }

    /// `load`, with the routed experts of the layers `host_experts` marks
    /// left in host memory, where the backend's kernels read them
    /// (`Backend::load_weights_in_host`: a plan's experts beyond the VRAM
    /// budget); everything else on the backend.
    pub fn load_placed(
        b: &B,
        g: &Gguf,
        host_experts: &[bool],
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let config = Config::from_gguf(g)?;
        let tensors = ModelTensors::from_gguf(g, &config)?;
        let mut layers = Vec::with_capacity(config.n_layers);
        for (i, t) in tensors.layers.iter().enumerate() {
            let matrices = t.matrices();
            // The attention's four and the router come first (`matrices`).
            let first_expert = 5;
            let mut host = match (host_experts.get(i), &t.ffn) {
                (Some(true), Ffn::Moe { .. }) => Some(
                    b.load_weights_in_host(g, &matrices[first_expert..])?
                        .into_iter(),
                ),
                _ => None,
            };
            layers.push(Layer::assemble(b, g, t, |k, m| match &mut host {
                Some(h) if k >= first_expert => h
                    .next()
                    .ok_or_else(|| BackendError::Invalid(format!("{}: no host copy", m.name))),
                _ => b.load_weight(g, m),
            })?);
            progress(i + 1, config.n_layers);
        }
        Ok(Self::from_layers(b, g, config, tensors, layers)?)
    }

    /// A model from layers loaded elsewhere (the streaming engine places them);
    /// loads the embeddings, final norm and output projection.
    pub fn from_layers(
        b: &B,
        g: &Gguf,
        config: Config,
        tensors: ModelTensors,
        layers: Vec<Layer<B>>,
    ) -> Result<Self, BackendError> {
        let token_embd = b.load_weight(g, &tensors.token_embd)?;
        Self::from_parts(b, g, config, tensors, layers, token_embd)
    }

    /// As `from_layers`, with the token embeddings placed by the caller.
    pub fn from_parts(
        b: &B,
        g: &Gguf,
        config: Config,
        tensors: ModelTensors,
        layers: Vec<Layer<B>>,
        token_embd: B::Weight,
    ) -> Result<Self, BackendError> {
        Ok(Model {
            token_embd,
            output_norm: b.load_vector(g, &tensors.output_norm)?,
            output: tensors
                .output
                .as_ref()
                .map(|t| b.load_weight(g, t))
                .transpose()?,
            layers,
            tensors,
            config,
        })
    }

    /// The batch's token embeddings into `x`, scaled where the architecture
    /// scales them (gemma: √d_model).
    pub fn embed(&self, b: &B, tokens: &[u32], x: &mut B::Act) -> Result<(), BackendError> {
        b.embed(&self.token_embd, tokens, x)?;
        if let Some(s) = self.config.embed_scale {
            b.scale(x, s);
        }
        Ok(())
    }

    pub fn output_weight(&self) -> &B::Weight {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Run the batch through every layer and return the logits of the rows in
    /// `logit_rows` (row-major, `n_vocab` each). `kv` holds one cache per layer.
    pub fn forward(
        &self,
        b: &B,
        kv: &mut [B::Kv],
        batch: &Batch,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>, BackendError> {
        self.forward_in(b, kv, batch, logit_rows, &mut None)
    }

    /// `forward` in the activations of `ws`, made (or remade) for the
    /// batch's size where it holds none of that size.
    pub fn forward_in(
        &self,
        b: &B,
        kv: &mut [B::Kv],
        batch: &Batch,
        logit_rows: &[usize],
        ws: &mut Option<Workspace<B>>,
    ) -> Result<Vec<f32>, BackendError> {
        let cfg = &self.config;
        let n = batch.len();
        let ws = match ws {
            Some(w) if w.scratch.n == n => w,
            _ => ws.insert(Workspace::new(b, cfg, n)?),
        };
        self.embed(b, batch.tokens, &mut ws.x)?;
        for (layer, kv) in self.layers.iter().zip(kv.iter_mut()) {
            layer.forward(b, cfg, &mut ws.x, &mut ws.scratch, kv, batch)?;
        }
        if logit_rows.iter().copied().eq(0..n) {
            // Every row, in order (a decode step): no gather.
            let (normed, logits) = match (&mut ws.normed, &mut ws.logits) {
                (Some(normed), Some(logits)) => (normed, logits),
                (normed, logits) => (
                    normed.insert(b.act(n, cfg.d_model)?),
                    logits.insert(b.act(n, cfg.n_vocab)?),
                ),
            };
            return self.output_into(b, &ws.x, normed, logits);
        }
        self.logits(b, &ws.x, logit_rows)
    }

    /// Layer-major forward pass: the whole batch passes layer i, in
    /// micro-batches of `ubatch` tokens, before layer i+1 starts. `before_layer`
    /// runs before each layer (the streaming engine waits for the layer's
    /// weights there) and `after_layer` after it.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_layer_major(
        &self,
        b: &B,
        kv: &mut [B::Kv],
        batch: &Batch,
        ubatch: usize,
        logit_rows: &[usize],
        before_layer: &mut dyn FnMut(usize) -> Result<(), BackendError>,
        after_layer: &mut dyn FnMut(usize) -> Result<(), BackendError>,
    ) -> Result<Vec<f32>, BackendError> {
        let cfg = &self.config;
        let n = batch.len();
        let mut x = b.act(n, cfg.d_model)?;
        self.embed(b, batch.tokens, &mut x)?;
        let chunks = batch.micro_batches(ubatch);
        // Scratch for a full micro-batch and, if the last one is shorter, for it.
        let mut full = Scratch::new(b, cfg, chunks[0].0.len())?;
        let last_len = chunks.last().map_or(0, |c| c.0.len());
        let mut tail = match last_len != chunks[0].0.len() {
            true => Some(Scratch::new(b, cfg, last_len)?),
            false => None,
        };
        for (i, (layer, kv)) in self.layers.iter().zip(kv.iter_mut()).enumerate() {
            before_layer(i)?;
            if chunks.len() == 1 {
                layer.forward(b, cfg, &mut x, &mut full, kv, batch)?;
            } else {
                for (r, sub) in &chunks {
                    let mut xc = b.read_rows(&x, r.clone())?;
                    let scratch = match &mut tail {
                        Some(t) if r.len() == last_len => t,
                        _ => &mut full,
                    };
                    layer.forward(b, cfg, &mut xc, scratch, kv, sub)?;
                    b.write_rows(&mut x, r.start, &xc);
                }
            }
            after_layer(i)?;
        }
        self.logits(b, &x, logit_rows)
    }

    /// Final norm and output projection of the chosen rows.
    pub fn logits(&self, b: &B, x: &B::Act, rows: &[usize]) -> Result<Vec<f32>, BackendError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let picked = b.gather_rows(x, rows)?;
        let mut normed = b.act(rows.len(), self.config.d_model)?;
        let mut logits = b.act(rows.len(), self.config.n_vocab)?;
        self.output_into(b, &picked, &mut normed, &mut logits)
    }

    /// Final norm of `x` into `normed`, output projection into `logits`,
    /// read back to the host.
    fn output_into(
        &self,
        b: &B,
        x: &B::Act,
        normed: &mut B::Act,
        logits: &mut B::Act,
    ) -> Result<Vec<f32>, BackendError> {
        b.rms_norm(x, &self.output_norm, self.config.rms_eps, normed);
        b.matmul(normed, self.output_weight(), logits);
        if let Some(c) = self.config.final_softcap {
            b.softcap(logits, c);
        }
        b.to_host(logits)
    }
}
