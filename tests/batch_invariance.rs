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

/// Decode keeps its activations from step to step (`Session::reuse_buffers`):
/// the logits must equal those of fresh buffers at every step, bit for bit,
/// across changes of the batch size too.
#[test]
fn kept_buffers_decode_equals_fresh() {
    let path = common::model(common::MODELS[0]);
    let g = Gguf::open(&path).unwrap();
    let backend = CpuBackend::new(2);
    let model = backend.run(|| Model::load(&backend, &g, |_, _| {}).unwrap());
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let run = |reuse: bool| -> Vec<f32> {
        let mut s = Session::new(&backend, &model, 64, 2).unwrap();
        s.reuse_buffers = reuse;
        backend.run(|| {
            let mut out = s.prefill(0, &tok.encode(PROMPTS[0], true, false)).unwrap();
            out.extend(s.prefill(1, &tok.encode(PROMPTS[1], true, false)).unwrap());
            for step in 0..6u32 {
                let (seqs, toks): (&[usize], Vec<u32>) = match step % 3 {
                    2 => (&[0], vec![100 + step]),
                    _ => (&[0, 1], vec![100 + step, 200 + step]),
                };
                out.extend(s.decode(seqs, &toks).unwrap());
            }
            out
        })
    };
    let (kept, fresh) = (run(true), run(false));
    assert_eq!(kept.len(), fresh.len());
    assert!(
        kept.iter()
            .zip(&fresh)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "decode with kept buffers differs from fresh buffers"
    );
}
