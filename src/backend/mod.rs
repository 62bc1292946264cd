//! Backends execute the operations of a forward pass on one device. The model
//! code (`crate::model::forward`) is written once against this trait; the CPU
//! backend implements it here, the CUDA backend implements the same trait.

pub mod cpu;
pub mod cuda;

use crate::arch::{Activation, AttnSpec, Config, RopeParams, TensorRef};

/// Which tokens a forward pass processes: token `i` is at `positions[i]` of
/// sequence `seqs[i]`.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [u32],
    pub seqs: &'a [u32],
}

impl<'a> Batch<'a> {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The batch cut into consecutive micro-batches of at most `ubatch` tokens,
    /// each with the row range it covers.
    pub fn micro_batches(&self, ubatch: usize) -> Vec<(std::ops::Range<usize>, Batch<'a>)> {
        let n = self.len();
        let ubatch = ubatch.clamp(1, n.max(1));
        (0..n)
            .step_by(ubatch)
            .map(|start| {
                let r = start..(start + ubatch).min(n);
                let sub = Batch {
                    tokens: &self.tokens[r.clone()],
                    positions: &self.positions[r.clone()],
                    seqs: &self.seqs[r.clone()],
                };
                (r, sub)
            })
            .collect()
    }

    /// The KV-cache slot (`seq · n_ctx + pos`) of every token, after checking
    /// that each sequence and position fits the cache.
    pub fn cache_slots(&self, n_seq: usize, n_ctx: usize) -> Result<Vec<usize>, BackendError> {
        (0..self.len())
            .map(|i| {
                let (seq, pos) = (self.seqs[i], self.positions[i]);
                if seq as usize >= n_seq {
                    return Err(BackendError::BadSeq { seq, n: n_seq });
                }
                if pos as usize >= n_ctx {
                    return Err(BackendError::ContextFull {
                        seq,
                        pos,
                        ctx: n_ctx,
                    });
                }
                Ok(seq as usize * n_ctx + pos as usize)
            })
            .collect()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// A mixture of experts' choices for a batch: token `t` runs experts
/// `experts[t·n_used ..][..n_used]` with `weights` at the same places, in
/// slot order.
#[derive(Debug, Clone, Copy)]
pub struct Routing<'a> {
    pub n_used: usize,
    pub experts: &'a [u32],
    pub weights: &'a [f32],
}

pub use crate::arch::ExpertWeights;

/// Positions and sequence ids of `n` consecutive tokens of one sequence from
/// position `start`: the owned half of a prompt's `Batch`.
pub struct SequenceSpan {
    pub positions: Vec<u32>,
    pub seqs: Vec<u32>,
}

impl SequenceSpan {
    pub fn new(seq: usize, start: usize, n: usize) -> Self {
        SequenceSpan {
            positions: (start..start + n).map(|p| p as u32).collect(),
            seqs: vec![seq as u32; n],
        }
    }

    /// The batch of `tokens` (as many as the span) at these positions.
    pub fn batch<'a>(&'a self, tokens: &'a [u32]) -> Batch<'a> {
        assert_eq!(
            tokens.len(),
            self.positions.len(),
            "span and tokens differ in length"
        );
        Batch {
            tokens,
            positions: &self.positions,
            seqs: &self.seqs,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "position {pos} of sequence {seq} is outside the context of {ctx} tokens; use a larger -c/--ctx-size or a shorter prompt"
    )]
    ContextFull { seq: u32, pos: u32, ctx: usize },
    #[error("sequence {seq} is outside the {n} sequences the KV cache was made for")]
    BadSeq { seq: u32, n: usize },
    #[error(
        "device memory in use reached {} after allocating {what}, over the VRAM budget of {}; pass a larger --vram-budget, or a smaller -c/--ctx-size or --ub",
        crate::units::HumanBytes(*used),
        crate::units::HumanBytes(*budget)
    )]
    OverBudget {
        used: u64,
        budget: u64,
        what: String,
    },
}

/// The operations of a llama-style forward pass. Activations are row-major
/// `[n_tokens, width]` f32 matrices that live on the backend's device.
pub trait Backend {
    /// A weight matrix `[rows = out features, cols = in features]` in its file type.
    type Weight;
    /// A small f32 parameter vector (norm weights, biases).
    type Vector;
    /// Activations `[n, width]`.
    type Act;
    /// The KV cache of one layer, for every sequence.
    type Kv;

    fn name(&self) -> String;

    /// Run `f` in the backend's execution context (the CPU backend's thread
    /// pool, so that a decode loop does not hop threads at every operation).
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// Report an error that an operation could not return (device backends
    /// record launch failures); `Ok` on backends that fail eagerly.
    fn check(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Device memory in use, where the device reports it (GPUs).
    fn device_memory_used(&self) -> Option<u64> {
        None
    }

    /// Memory the backend can still allocate, where it can tell before
    /// allocating (the CPU backend: the host's available memory); GPUs
    /// enforce their budget on each allocation instead.
    fn memory_available(&self) -> Option<u64> {
        None
    }

    /// Make the backend's copy (or view) of a weight matrix.
    fn load_weight(
        &self,
        model: &crate::gguf::Gguf,
        t: &TensorRef,
    ) -> Result<Self::Weight, BackendError>;
    fn load_vector(
        &self,
        model: &crate::gguf::Gguf,
        t: &TensorRef,
    ) -> Result<Self::Vector, BackendError>;
    /// Weights the plan leaves in host memory, which the backend's kernels
    /// read from there (a GPU: page-locked memory, read across the bus); a
    /// backend whose memory is the host's loads them as any weight.
    fn load_weights_in_host(
        &self,
        model: &crate::gguf::Gguf,
        ts: &[&TensorRef],
    ) -> Result<Vec<Self::Weight>, BackendError> {
        ts.iter().map(|t| self.load_weight(model, t)).collect()
    }

    /// Zeroed activations (device memory can run out, or over the budget).
    fn act(&self, n: usize, width: usize) -> Result<Self::Act, BackendError>;
    /// A KV cache for one layer: `n_seq` sequences of `n_ctx` positions.
    fn kv_cache(&self, cfg: &Config, n_ctx: usize, n_seq: usize) -> Result<Self::Kv, BackendError>;

    /// Copy the first `len` positions of sequence `from`'s keys and values
    /// to sequence `to` (choices of one request share their prompt's
    /// prefill); the arguments are checked by `check_copy_kv`.
    fn copy_kv(
        &self,
        kv: &mut Self::Kv,
        from: usize,
        to: usize,
        len: usize,
    ) -> Result<(), BackendError>;

    /// `out[i] = table[tokens[i]]`.
    fn embed(
        &self,
        table: &Self::Weight,
        tokens: &[u32],
        out: &mut Self::Act,
    ) -> Result<(), BackendError>;
    /// `out = x / rms(x) * w`, row by row.
    fn rms_norm(&self, x: &Self::Act, w: &Self::Vector, eps: f32, out: &mut Self::Act);
    /// `rms_norm` of every `head_dim`-wide head of every row, in place, with
    /// the same `head_dim` weights for each head (q/k norms).
    fn rms_norm_heads(&self, x: &mut Self::Act, w: &Self::Vector, head_dim: usize, eps: f32);
    /// `x *= s`.
    fn scale(&self, x: &mut Self::Act, s: f32);
    /// `x = c · tanh(x / c)` (logit soft-capping).
    fn softcap(&self, x: &mut Self::Act, c: f32);
    /// `out = x · wᵀ`: `[n, cols] × [rows, cols]ᵀ → [n, rows]`.
    fn matmul(&self, x: &Self::Act, w: &Self::Weight, out: &mut Self::Act);
    /// `matmul` for a mixture's expert products, where a backend that
    /// follows llama.cpp's arithmetic follows its `mul_mat_id` (which may
    /// order a batch's sums unlike its `mul_mat`); others keep `matmul`.
    fn expert_matmul(&self, x: &Self::Act, w: &Self::Weight, out: &mut Self::Act) {
        self.matmul(x, w, out)
    }
    /// A whole mixture-of-experts block for a small batch, the router's
    /// choice included, where the backend offers it without returning to
    /// the host (`Ok(false)`: not offered; the model then routes on the host
    /// and calls `moe_experts`).
    fn moe_block(
        &self,
        _x: &Self::Act,
        _router: &Self::Weight,
        _w: ExpertWeights<'_, Self::Weight>,
        _spec: &crate::arch::MoeSpec,
        _act: Activation,
        _out: &mut Self::Act,
    ) -> Result<bool, BackendError> {
        Ok(false)
    }
    /// `out[t] = Σ_s weights[t, s] · down_e(act(gate_e · x[t]) · (up_e · x[t]))`
    /// over token `t`'s chosen experts `e`, summed in slot order: a
    /// mixture's routed experts as one grouped product (llama.cpp's
    /// `mul_mat_id`), where the backend offers one for this batch. `Ok(false)`:
    /// not offered (the model then runs each expert through the plain
    /// operations, which every backend has).
    fn moe_experts(
        &self,
        _x: &Self::Act,
        _w: ExpertWeights<'_, Self::Weight>,
        _act: Activation,
        _routing: &Routing<'_>,
        _out: &mut Self::Act,
    ) -> Result<bool, BackendError> {
        Ok(false)
    }
    /// `x[i] += b` for every row.
    fn add_bias(&self, x: &mut Self::Act, b: &Self::Vector);
    /// Rotate the heads of every row by its token's position.
    fn rope(
        &self,
        x: &mut Self::Act,
        n_heads: usize,
        head_dim: usize,
        rope: &RopeParams,
        positions: &[u32],
    );
    /// `rope` on the queries (`n_heads`) and keys (`n_kv_heads`) of a batch;
    /// a backend may do both in one pass (the CUDA one does: one launch
    /// fewer per layer of a decode step).
    #[allow(clippy::too_many_arguments)]
    fn rope_qk(
        &self,
        q: &mut Self::Act,
        k: &mut Self::Act,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        rope: &RopeParams,
        positions: &[u32],
    ) {
        self.rope(q, n_heads, head_dim, rope, positions);
        self.rope(k, n_kv_heads, head_dim, rope, positions);
    }
    /// Store `k`, `v` in the cache at the batch's positions, then causal
    /// grouped-query attention of `q` over each token's sequence up to its
    /// position (over the last `spec.window` positions where it has one),
    /// the scores scaled by `spec.scale`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        spec: &AttnSpec,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        kv: &mut Self::Kv,
        batch: &Batch,
        out: &mut Self::Act,
    ) -> Result<(), BackendError>;
    /// `gate = silu(gate) * up`.
    fn swiglu(&self, gate: &mut Self::Act, up: &Self::Act);
    /// `gate = gelu_tanh(gate) * up`.
    fn geglu(&self, gate: &mut Self::Act, up: &Self::Act);
    /// `gate = act(gate) * up`.
    fn glu(&self, gate: &mut Self::Act, up: &Self::Act, act: Activation) {
        match act {
            Activation::Silu => self.swiglu(gate, up),
            Activation::GeluTanh => self.geglu(gate, up),
        }
    }
    /// `x += y`.
    fn add(&self, x: &mut Self::Act, y: &Self::Act);
    /// `out = x · wᵀ (+ b)`: a projection with its bias (qwen2's q, k, v).
    /// Backends may fold the bias into the product's epilogue.
    fn matmul_bias(
        &self,
        x: &Self::Act,
        w: &Self::Weight,
        b: Option<&Self::Vector>,
        out: &mut Self::Act,
    ) {
        self.matmul(x, w, out);
        if let Some(b) = b {
            self.add_bias(out, b);
        }
    }
    /// The attention's input projections `q, k, v = x · w{q,k,v}ᵀ (+ b)`;
    /// backends may run them as one launch that reads `x` once.
    #[allow(clippy::too_many_arguments)]
    fn matmul_qkv(
        &self,
        x: &Self::Act,
        w: [&Self::Weight; 3],
        b: [Option<&Self::Vector>; 3],
        q: &mut Self::Act,
        k: &mut Self::Act,
        v: &mut Self::Act,
    ) {
        self.matmul_bias(x, w[0], b[0], q);
        self.matmul_bias(x, w[1], b[1], k);
        self.matmul_bias(x, w[2], b[2], v);
    }
    /// `acc += x · wᵀ` (a projection back into the residual stream); `tmp`
    /// is scratch of the product's shape for backends that need it.
    fn matmul_add(
        &self,
        x: &Self::Act,
        w: &Self::Weight,
        tmp: &mut Self::Act,
        acc: &mut Self::Act,
    ) {
        self.matmul(x, w, tmp);
        self.add(acc, tmp);
    }
    /// `gate = act(x · w_gateᵀ) * (x · w_upᵀ)`; `up` is scratch.
    fn matmul_glu(
        &self,
        x: &Self::Act,
        w_gate: &Self::Weight,
        w_up: &Self::Weight,
        act: Activation,
        gate: &mut Self::Act,
        up: &mut Self::Act,
    ) {
        self.matmul(x, w_gate, gate);
        self.matmul(x, w_up, up);
        self.glu(gate, up, act);
    }
    /// The feed-forward block added into the residual stream:
    /// `acc += (act(x · w_gateᵀ) * (x · w_upᵀ)) · w_downᵀ`. `gate`, `up` and
    /// `tmp` are scratch of the products' shapes, left unspecified afterwards,
    /// so a backend may keep the intermediate products in a narrower type.
    #[allow(clippy::too_many_arguments)]
    fn feed_forward(
        &self,
        x: &Self::Act,
        [w_gate, w_up, w_down]: [&Self::Weight; 3],
        act: Activation,
        gate: &mut Self::Act,
        up: &mut Self::Act,
        tmp: &mut Self::Act,
        acc: &mut Self::Act,
    ) {
        self.matmul_glu(x, w_gate, w_up, act, gate, up);
        self.matmul_add(gate, w_down, tmp, acc);
    }
    /// `rope_qk` on q and k at the batch's positions, then `attention`;
    /// backends may apply the rotation inside the attention kernel (q and k
    /// are then left as they were).
    #[allow(clippy::too_many_arguments)]
    fn rope_attention(
        &self,
        spec: &AttnSpec,
        q: &mut Self::Act,
        k: &mut Self::Act,
        v: &Self::Act,
        kv: &mut Self::Kv,
        batch: &Batch,
        out: &mut Self::Act,
    ) -> Result<(), BackendError> {
        rope_then_attention(self, spec, q, k, v, kv, batch, out)
    }
    /// The attention block up to its output projection: `q, k, v = x ·
    /// w{q,k,v}ᵀ (+ b)`, then `rope_attention` into `out`. Backends may fold
    /// the q and k biases into the rotation.
    #[allow(clippy::too_many_arguments)]
    fn qkv_attention(
        &self,
        spec: &AttnSpec,
        x: &Self::Act,
        w: [&Self::Weight; 3],
        b: [Option<&Self::Vector>; 3],
        [q, k, v]: [&mut Self::Act; 3],
        kv: &mut Self::Kv,
        batch: &Batch,
        out: &mut Self::Act,
    ) -> Result<(), BackendError> {
        self.matmul_qkv(x, w, b, q, k, v);
        self.rope_attention(spec, q, k, v, kv, batch, out)
    }
    /// `dst[rows[i]] = src[i] · scales[i]` for every row `i` of `src` (a
    /// mixture's weighted expert outputs into their tokens' rows).
    fn scatter_rows_scaled(
        &self,
        dst: &mut Self::Act,
        rows: &[usize],
        scales: &[f32],
        src: &Self::Act,
    ) -> Result<(), BackendError>;
    /// `x += y[first .. first + n]`, row by row (`n` the rows of `x`).
    fn add_rows(&self, x: &mut Self::Act, y: &Self::Act, first: usize);
    /// `dst = src[first .. first + n]` (`n` the rows of `dst`).
    fn copy_rows(&self, dst: &mut Self::Act, src: &Self::Act, first: usize);
    /// Copy rows `rows` of `x` into a new activation.
    fn gather_rows(&self, x: &Self::Act, rows: &[usize]) -> Result<Self::Act, BackendError>;
    /// Copy the contiguous rows `rows` of `x` into a new activation.
    fn read_rows(
        &self,
        x: &Self::Act,
        rows: std::ops::Range<usize>,
    ) -> Result<Self::Act, BackendError>;
    /// Overwrite rows `first..first + src.n` of `dst` with `src`.
    fn write_rows(&self, dst: &mut Self::Act, first: usize, src: &Self::Act);
    /// Read activations back to host memory (row-major).
    fn to_host(&self, x: &Self::Act) -> Result<Vec<f32>, BackendError>;
}

/// `Backend::rope_attention` as two steps: `rope_qk` on q and k at the
/// batch's positions, then `attention` (the trait's default, and what a
/// backend that fuses the rotation falls back to where it cannot).
#[allow(clippy::too_many_arguments)]
pub fn rope_then_attention<B: Backend + ?Sized>(
    b: &B,
    spec: &AttnSpec,
    q: &mut B::Act,
    k: &mut B::Act,
    v: &B::Act,
    kv: &mut B::Kv,
    batch: &Batch,
    out: &mut B::Act,
) -> Result<(), BackendError> {
    b.rope_qk(
        q,
        k,
        spec.n_heads,
        spec.n_kv_heads,
        spec.head_dim,
        &spec.rope,
        batch.positions,
    );
    b.attention(spec, q, k, v, kv, batch, out)
}

/// Check that `layers` KV caches of `n_seq` sequences × `n_ctx` positions
/// (f16 keys and values) fit the memory `b` has left, before allocating
/// them: too much is an error naming a context that fits, not an abort.
/// The arguments of `Backend::copy_kv` against a cache of `n_seq` sequences
/// of `n_ctx` positions.
pub fn check_copy_kv(
    (n_seq, n_ctx): (usize, usize),
    from: usize,
    to: usize,
    len: usize,
) -> Result<(), BackendError> {
    if from >= n_seq || to >= n_seq || from == to || len > n_ctx {
        return Err(BackendError::Invalid(format!(
            "copy_kv: sequence {from} to {to}, {len} positions, in a cache of {n_seq} sequences of {n_ctx}"
        )));
    }
    Ok(())
}

pub fn check_kv_fits<B: Backend + ?Sized>(
    b: &B,
    cfg: &Config,
    layers: usize,
    n_ctx: usize,
    n_seq: usize,
) -> Result<(), BackendError> {
    let per_position = (layers * n_seq * cfg.kv_width() * 2 * 2) as u64;
    let need = per_position.saturating_mul(n_ctx as u64);
    match b.memory_available() {
        Some(avail) if need > avail => {
            // Three quarters of what is free, for the weights' pages and the rest.
            let fits = (avail / 4 * 3 / per_position.max(1)) as usize;
            Err(BackendError::Invalid(format!(
                "a KV cache of {n_ctx} positions × {n_seq} sequences needs {}, more than the {} of memory available; pass -c/--ctx-size {} or less{}",
                crate::units::HumanBytes(need),
                crate::units::HumanBytes(avail),
                fits.max(1),
                if n_seq > 1 {
                    " or fewer --parallel sequences"
                } else {
                    ""
                }
            )))
        }
        _ => Ok(()),
    }
}
