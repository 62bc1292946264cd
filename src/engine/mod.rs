//! Executes a model: KV cache, prefill and decode, sampling.

pub mod constrain;
pub mod gbnf;
pub mod hybrid;
pub mod sampler;
pub mod stream;
pub use crate::trace;

use crate::backend::{Backend, BackendError, Batch};
use crate::model::{Model, Workspace};

pub use sampler::{Sampler, SamplerConfig, argmax};

/// One conversation's state on a backend: the per-layer KV caches and how many
/// positions of each sequence are filled.
pub struct Session<'m, B: Backend> {
    pub model: &'m Model<B>,
    pub backend: &'m B,
    kv: Vec<B::Kv>,
    pub n_ctx: usize,
    filled: Vec<usize>,
    /// Tokens per forward pass during prefill (bounds activation memory).
    pub ubatch: usize,
    /// Decode steps keep their activations from one step to the next
    /// (`reuse_buffers`, default on; gpu-check compares with fresh ones).
    workspace: Option<Workspace<B>>,
    pub reuse_buffers: bool,
}

impl<'m, B: Backend> Session<'m, B> {
    pub fn new(
        backend: &'m B,
        model: &'m Model<B>,
        n_ctx: usize,
        n_seq: usize,
    ) -> Result<Self, BackendError> {
        let cfg = &model.config;
        crate::backend::check_kv_fits(backend, cfg, cfg.n_layers, n_ctx, n_seq)?;
        let kv = (0..model.config.n_layers)
            .map(|_| backend.kv_cache(&model.config, n_ctx, n_seq))
            .collect::<Result<_, _>>()?;
        Ok(Session {
            model,
            backend,
            kv,
            n_ctx,
            filled: vec![0; n_seq],
            ubatch: 512,
            workspace: None,
            reuse_buffers: true,
        })
    }

    /// Positions already in sequence `seq`'s cache.
    pub fn len(&self, seq: usize) -> usize {
        self.filled[seq]
    }

    pub fn is_empty(&self, seq: usize) -> bool {
        self.filled[seq] == 0
    }

    /// Forget sequence `seq` (its cache entries are overwritten from position 0).
    pub fn reset(&mut self, seq: usize) {
        self.filled[seq] = 0;
    }

    /// Append `tokens` to sequence `seq` and return the logits after the last one.
    pub fn prefill(&mut self, seq: usize, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        if tokens.is_empty() {
            return Err(BackendError::Invalid("prefill of an empty prompt".into()));
        }
        let start = self.filled[seq];
        if start + tokens.len() > self.n_ctx {
            return Err(BackendError::ContextFull {
                seq: seq as u32,
                pos: (start + tokens.len() - 1) as u32,
                ctx: self.n_ctx,
            });
        }
        // Layer-major: every micro-batch of the prompt passes a layer before the
        // next layer starts.
        let span = crate::backend::SequenceSpan::new(seq, start, tokens.len());
        let batch = span.batch(tokens);
        let logits = self.model.forward_layer_major(
            self.backend,
            &mut self.kv,
            &batch,
            self.ubatch,
            &[tokens.len() - 1],
            &mut |_| Ok(()),
            &mut |_| Ok(()),
        )?;
        self.filled[seq] = start + tokens.len();
        Ok(logits)
    }

    /// One decode step for several sequences at once: `tokens[i]` is appended to
    /// sequence `seqs[i]`; returns the logits of each, concatenated.
    pub fn decode(&mut self, seqs: &[usize], tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        let positions: Vec<u32> = seqs.iter().map(|&s| self.filled[s] as u32).collect();
        for (&s, &p) in seqs.iter().zip(&positions) {
            if p as usize >= self.n_ctx {
                return Err(BackendError::ContextFull {
                    seq: s as u32,
                    pos: p,
                    ctx: self.n_ctx,
                });
            }
        }
        let seq_ids: Vec<u32> = seqs.iter().map(|&s| s as u32).collect();
        let batch = Batch {
            tokens,
            positions: &positions,
            seqs: &seq_ids,
        };
        let rows: Vec<usize> = (0..tokens.len()).collect();
        if !self.reuse_buffers {
            self.workspace = None;
        }
        let logits = self.model.forward_in(
            self.backend,
            &mut self.kv,
            &batch,
            &rows,
            &mut self.workspace,
        )?;
        for &s in seqs {
            self.filled[s] += 1;
        }
        Ok(logits)
    }
}

/// Sequences that can be prefilled and decoded together: what the server's
/// scheduler drives (a `Session` on one backend, or a hybrid GPU + CPU session
/// within a VRAM budget).
/// What an engine shows of itself (`/v1/ferry/status`, the web page).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EngineStatus {
    /// One letter per layer, as `ferry plan` draws them: `R` resident on the
    /// device, `P` streamed in prefill and parked on the device for decode,
    /// `s` streamed through a slot, `c` streamed in prefill and on the CPU in
    /// decode, `C` on the CPU (a CPU engine).
    pub layers: String,
    /// The timeline of the last traced prefill (copies and compute).
    pub trace: Vec<crate::trace::Span>,
}

pub trait Engine {
    fn n_ctx(&self) -> usize;
    fn n_seq(&self) -> usize;
    /// Positions in sequence `seq`'s cache.
    fn len(&self, seq: usize) -> usize;
    /// Forget sequence `seq`.
    fn reset(&mut self, seq: usize);
    /// Append `tokens` to sequence `seq`; the logits after the last.
    fn prefill(&mut self, seq: usize, tokens: &[u32]) -> Result<Vec<f32>, BackendError>;
    /// One token for each of `seqs`, in one batch; their logits, concatenated.
    fn decode(&mut self, seqs: &[usize], tokens: &[u32]) -> Result<Vec<f32>, BackendError>;
    /// Make sequence `to` a copy of sequence `from` (its cached positions),
    /// so that choices of one request share one prefill. `Ok(false)` where
    /// the engine cannot (the caller prefills `to` itself).
    fn fork(&mut self, from: usize, to: usize) -> Result<bool, BackendError> {
        let _ = (from, to);
        Ok(false)
    }
    /// Where the layers are now, and the last pass's timeline (`None`: the
    /// engine does not say).
    fn status(&mut self) -> Option<EngineStatus> {
        None
    }
}

impl<B: Backend> Engine for Session<'_, B> {
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    fn n_seq(&self) -> usize {
        self.filled.len()
    }
    fn len(&self, seq: usize) -> usize {
        Session::len(self, seq)
    }
    fn reset(&mut self, seq: usize) {
        Session::reset(self, seq)
    }
    fn prefill(&mut self, seq: usize, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        Session::prefill(self, seq, tokens)
    }
    fn decode(&mut self, seqs: &[usize], tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        Session::decode(self, seqs, tokens)
    }
    fn fork(&mut self, from: usize, to: usize) -> Result<bool, BackendError> {
        let len = self.filled[from];
        for kv in &mut self.kv {
            self.backend.copy_kv(kv, from, to, len)?;
        }
        self.filled[to] = len;
        Ok(true)
    }
    fn status(&mut self) -> Option<EngineStatus> {
        // Every layer where the backend is: the device memory it reports
        // (a GPU) or the host.
        let at = if self.backend.device_memory_used().is_some() {
            "R"
        } else {
            "C"
        };
        Some(EngineStatus {
            layers: at.repeat(self.model.config.n_layers),
            trace: Vec::new(),
        })
    }
}

/// What a generation did, for the timing summary.
#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens actually computed (the rest were already in the cache).
    pub prefilled_tokens: usize,
    pub prefill_secs: f64,
    pub generated_tokens: usize,
    pub decode_secs: f64,
    pub stopped_by_eog: bool,
}

impl GenerationStats {
    pub fn prefill_tps(&self) -> f64 {
        self.prefilled_tokens as f64 / self.prefill_secs.max(1e-9)
    }
    pub fn decode_tps(&self) -> f64 {
        // The first generated token comes from the prefill's logits.
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_secs.max(1e-9)
    }
}

impl<B: Backend> Session<'_, B> {
    /// Keep the first `n` positions of sequence `seq` and forget the rest.
    pub fn truncate(&mut self, seq: usize, n: usize) {
        self.filled[seq] = self.filled[seq].min(n);
    }

    /// Generate up to `max_new` tokens after `prompt` on sequence `seq`, reusing
    /// the longest prefix of `prompt` already in the cache (`cached` are the
    /// tokens the cache holds). `on_token` sees each new token and may stop
    /// the generation by returning false. End-of-generation tokens stop it too.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &mut self,
        seq: usize,
        cached: &[u32],
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        is_eog: &dyn Fn(u32) -> bool,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, GenerationStats), BackendError> {
        let mut steps = SeqSteps { session: self, seq };
        generate_on(
            &mut steps,
            cached,
            prompt,
            max_new,
            sampler,
            is_eog,
            &mut on_token,
        )
    }
}

/// What a generation loop needs from a session holding one sequence.
pub(crate) trait Steps {
    fn n_ctx(&self) -> usize;
    /// Positions in the cache.
    fn filled(&self) -> usize;
    /// Keep the first `n` positions.
    fn truncate(&mut self, n: usize);
    /// Append `tokens`; the logits after the last.
    fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>, BackendError>;
    /// Append one token; its logits.
    fn step(&mut self, token: u32) -> Result<Vec<f32>, BackendError>;
}

struct SeqSteps<'s, 'm, B: Backend> {
    session: &'s mut Session<'m, B>,
    seq: usize,
}

impl<B: Backend> Steps for SeqSteps<'_, '_, B> {
    fn n_ctx(&self) -> usize {
        self.session.n_ctx
    }
    fn filled(&self) -> usize {
        self.session.filled[self.seq]
    }
    fn truncate(&mut self, n: usize) {
        self.session.truncate(self.seq, n);
    }
    fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        self.session.prefill(self.seq, tokens)
    }
    fn step(&mut self, token: u32) -> Result<Vec<f32>, BackendError> {
        self.session.decode(&[self.seq], &[token])
    }
}

/// The generation loop every session shares: reuse the cached prefix
/// (recomputing at least the last prompt token for its logits), prefill the
/// rest, then sample and decode until `max_new`, an end-of-generation token,
/// a full context, or `on_token` says stop.
pub(crate) fn generate_on(
    s: &mut dyn Steps,
    cached: &[u32],
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    is_eog: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<(Vec<u32>, GenerationStats), BackendError> {
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    if prompt.is_empty() {
        return Err(BackendError::Invalid("the prompt is empty".into()));
    }
    if prompt.len() + max_new.min(1) > s.n_ctx() {
        return Err(BackendError::ContextFull {
            seq: 0,
            pos: prompt.len() as u32,
            ctx: s.n_ctx(),
        });
    }
    let common = cached
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count()
        .min(s.filled())
        .min(prompt.len() - 1);
    s.truncate(common);
    sampler.observe(prompt);
    let t0 = std::time::Instant::now();
    let mut logits = s.extend(&prompt[common..])?;
    stats.prefilled_tokens = prompt.len() - common;
    stats.prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut out = Vec::new();
    while out.len() < max_new {
        let token = sampler.sample(&logits);
        out.push(token);
        if is_eog(token) {
            stats.stopped_by_eog = true;
            break;
        }
        if !on_token(token) || out.len() == max_new || s.filled() >= s.n_ctx() {
            break;
        }
        logits = s.step(token)?;
    }
    stats.generated_tokens = out.len();
    stats.decode_secs = t1.elapsed().as_secs_f64();
    Ok((out, stats))
}
