//! A sequence's logits must not depend on which other sequences share its
//! decode batch: the server batches parallel requests, and a greedy request
//! must give the same text alone or in company.

mod common;

use ferry::backend::Backend;
use ferry::backend::cpu::CpuBackend;
use ferry::engine::Session;
use ferry::gguf::Gguf;
use ferry::model::Model;
use ferry::tokenizer::Tokenizer;

const PROMPTS: [&str; 9] = [
    "The capital of France is",
    "fn main() {",
    "Once upon a time, in a land far away, there lived",
    "1, 2, 3, 4,",
    "Water boils at",
    "The quick brown fox",
    "def fibonacci(n):",
    "Question: what is 7 times 8? Answer:",
    "Hello",
];

#[test]
fn batched_decode_equals_single_decode() {
    for name in common::MODELS {
        let path = common::model(name);
        let g = Gguf::open(&path).unwrap();
        let backend = CpuBackend::new(2).with_batch_invariance(PROMPTS.len());
        let model = backend.run(|| Model::load(&backend, &g, |_, _| {}).unwrap());
        let tok = Tokenizer::from_gguf(&g).unwrap();
        let n = PROMPTS.len();
        let encoded: Vec<Vec<u32>> = PROMPTS.iter().map(|p| tok.encode(p, true, false)).collect();
        // Every sequence prefilled alone, then decoded for a few steps: once all
        // together, once each alone.
        let mut together = Session::new(&backend, &model, 128, n).unwrap();
        let mut alone = Session::new(&backend, &model, 128, n).unwrap();
        let mut next = Vec::new();
        for (s, p) in encoded.iter().enumerate() {
            let a = backend.run(|| together.prefill(s, p).unwrap());
            let b = backend.run(|| alone.prefill(s, p).unwrap());
            assert_eq!(a, b);
            next.push(ferry::engine::argmax(&a));
        }
        for step in 0..4 {
            // Batch sizes vary across steps (all, then subsets) so both matmul
            // paths (few tokens, many tokens) are exercised.
            let active: Vec<usize> = (0..n)
                .filter(|s| step == 0 || s % (step + 1) != 0)
                .collect();
            let toks: Vec<u32> = active.iter().map(|&s| next[s]).collect();
            let batched = backend.run(|| together.decode(&active, &toks).unwrap());
            for (i, &s) in active.iter().enumerate() {
                let single = backend.run(|| alone.decode(&[s], &[next[s]]).unwrap());
                let vocab = batched.len() / active.len();
                let b = &batched[i * vocab..(i + 1) * vocab];
                let max = b
                    .iter()
                    .zip(&single)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    max == 0.0,
                    "{name}: step {step} seq {s} (batch of {}): max diff {max}",
                    active.len()
                );
                next[s] = ferry::engine::argmax(&single);
            }
        }
    }
}
