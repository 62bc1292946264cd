//! Token sampling: repeat penalty, presence and frequency penalties, top-k,
//! top-p, min-p, temperature, then a seeded draw — the order llama.cpp's
//! default sampler chain applies them. Temperature 0 is greedy.

#[derive(Debug, Clone)]
pub struct SamplerConfig {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    pub repeat_last_n: usize,
    /// OpenAI's presence penalty: subtracted once from every token already generated.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty: subtracted once per earlier occurrence in the generation.
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0x5eed,
        }
    }
}

impl SamplerConfig {
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        }
    }
}

pub struct Sampler {
    cfg: SamplerConfig,
    rng: u64,
    recent: Vec<u32>,
    /// How often each token was sampled so far (presence/frequency penalties).
    generated: std::collections::HashMap<u32, u32>,
}

/// Index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams.
        let mut z = cfg.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Sampler {
            cfg,
            rng: (z ^ (z >> 31)) | 1,
            recent: Vec::new(),
            generated: Default::default(),
        }
    }

    /// Remember tokens (the prompt, and each sampled token) for the repeat penalty.
    pub fn observe(&mut self, tokens: &[u32]) {
        self.recent.extend_from_slice(tokens);
        let keep = self.cfg.repeat_last_n;
        if self.recent.len() > keep {
            self.recent.drain(..self.recent.len() - keep);
        }
    }

    fn uniform(&mut self) -> f32 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let mut logits = logits.to_vec();
        if self.cfg.repeat_penalty != 1.0 && self.cfg.repeat_last_n > 0 {
            let mut seen = self.recent.clone();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / self.cfg.repeat_penalty
                    } else {
                        *l * self.cfg.repeat_penalty
                    };
                }
            }
        }
        if self.cfg.presence_penalty != 0.0 || self.cfg.frequency_penalty != 0.0 {
            for (&t, &count) in &self.generated {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= self.cfg.presence_penalty + self.cfg.frequency_penalty * count as f32;
                }
            }
        }
        let token = if self.cfg.temperature <= 0.0 {
            argmax(&logits)
        } else {
            self.sample_stochastic(&logits)
        };
        self.observe(&[token]);
        *self.generated.entry(token).or_default() += 1;
        token
    }

    fn sample_stochastic(&mut self, logits: &[f32]) -> u32 {
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.cfg.top_k > 0 {
            cand.truncate(self.cfg.top_k.max(1));
        }
        let softmax = |c: &[(u32, f32)], temp: f32| -> Vec<f32> {
            let max = c[0].1;
            let e: Vec<f32> = c.iter().map(|&(_, l)| ((l - max) / temp).exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        };
        if self.cfg.top_p < 1.0 {
            let p = softmax(&cand, 1.0);
            let mut cum = 0.0;
            let mut keep = cand.len();
            for (i, &pi) in p.iter().enumerate() {
                cum += pi;
                if cum >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        if self.cfg.min_p > 0.0 {
            let p = softmax(&cand, 1.0);
            let threshold = p[0] * self.cfg.min_p;
            let keep = p.iter().take_while(|&&pi| pi >= threshold).count();
            cand.truncate(keep.max(1));
        }
        let p = softmax(&cand, self.cfg.temperature);
        let r = self.uniform();
        let mut cum = 0.0;
        for (i, &pi) in p.iter().enumerate() {
            cum += pi;
            if r < cum {
                return cand[i].0;
            }
        }
        cand[cand.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 * 0.3).collect();
        let cfg = SamplerConfig {
            temperature: 1.0,
            seed: 42,
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone());
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone());
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        let mut s = Sampler::new(SamplerConfig { top_k: 1, ..cfg });
        assert_eq!(s.sample(&logits), argmax(&logits));
    }

    #[test]
    fn filters_restrict_the_candidates() {
        // One dominant token: min-p 0.5 leaves only it.
        let mut logits = vec![0.0f32; 50];
        logits[7] = 10.0;
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.5,
            min_p: 0.5,
            top_k: 0,
            top_p: 1.0,
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&logits), 7);
        }
        // top-k 3 never returns anything outside the three largest.
        let logits: Vec<f32> = (0..50).map(|i| i as f32 * 0.1).collect();
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 3,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        });
        for _ in 0..200 {
            assert!(s.sample(&logits) >= 47);
        }
    }

    #[test]
    fn repeat_penalty_discourages_recent_tokens() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        });
        s.observe(&[0]);
        // Token 0 has the highest logit but was seen: 4.0 / 2 < 3.0.
        assert_eq!(s.sample(&[4.0, 3.0, 1.0]), 1);
    }

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            frequency_penalty: 0.6,
            ..Default::default()
        });
        let logits = [2.0, 1.0];
        // 2.0, then 1.4, then 0.8 < 1.0: token 0 twice, then token 1.
        assert_eq!(s.sample(&logits), 0);
        assert_eq!(s.sample(&logits), 0);
        assert_eq!(s.sample(&logits), 1);
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            presence_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(s.sample(&logits), 0);
        assert_eq!(s.sample(&logits), 1);
    }
}
