//! Executes a model: KV cache, prefill and decode, sampling.

pub mod sampler;

use crate::backend::{Backend, BackendError, Batch};
use crate::model::Model;

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
}

impl<'m, B: Backend> Session<'m, B> {
    pub fn new(backend: &'m B, model: &'m Model<B>, n_ctx: usize, n_seq: usize) -> Self {
        let kv = (0..model.config.n_layers)
            .map(|_| backend.kv_cache(&model.config, n_ctx, n_seq))
            .collect();
        Session {
            model,
            backend,
            kv,
            n_ctx,
            filled: vec![0; n_seq],
            ubatch: 512,
        }
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
        let mut logits = Vec::new();
        for (c, chunk) in tokens.chunks(self.ubatch.max(1)).enumerate() {
            let p0 = start + c * self.ubatch;
            let positions: Vec<u32> = (p0..p0 + chunk.len()).map(|p| p as u32).collect();
            let seqs = vec![seq as u32; chunk.len()];
            let batch = Batch {
                tokens: chunk,
                positions: &positions,
                seqs: &seqs,
            };
            let last = p0 + chunk.len() == start + tokens.len();
            let rows: &[usize] = if last { &[chunk.len() - 1] } else { &[] };
            logits = self
                .model
                .forward(self.backend, &mut self.kv, &batch, rows)?;
            self.filled[seq] = p0 + chunk.len();
        }
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
        let logits = self
            .model
            .forward(self.backend, &mut self.kv, &batch, &rows)?;
        for &s in seqs {
            self.filled[s] += 1;
        }
        Ok(logits)
    }
}
