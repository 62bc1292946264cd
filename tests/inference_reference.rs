//! The CPU engine against llama.cpp on both real models: logits bit-identical
//! to llama.cpp's at every position of every prompt, greedy continuations
//! identical.
//!
//! - The activations are quantized at run time as llama.cpp quantizes them,
//!   the dot products accumulate in the lanes and order of its x86 kernels,
//!   and attention, softmax, SiLU, RoPE and RMSNorm are computed as its CPU
//!   backend computes them (`backend::cpu::reference_math`).
//! - Where llama.cpp's result for a token depends on its batch, ferry's does
//!   too: it repacks Q4_K matrices, and multiplies tokens in whole groups of
//!   four with one float order and the rest with another; from 8 tokens on it
//!   takes Q6_K products in a per-super-block order (`backend::cpu::matmul`,
//!   `q4_k_llama_order`, `q6_k_llama_order`).
//! - SmolLM2 is Q4_1/Q8_0; Qwen2.5-Coder mixes Q5_0, Q8_0, Q4_K and Q6_K.
//!
//! The arithmetic matched is that of llama-cpp-python 0.3.36 built for an
//! x86 CPU with AVX2 (the fixtures' `scripts/gen_fixtures.py`), and ferry's
//! AVX2 kernels reproduce it; the test runs where those kernels run.

mod common;

use common::*;
use ferry::backend::cpu::CpuBackend;
use ferry::backend::{Backend, SequenceSpan};
use ferry::engine::{Session, argmax};
use ferry::gguf::Gguf;
use ferry::model::Model;
use sha2::{Digest, Sha256};

#[derive(serde::Deserialize)]
struct Case {
    kind: String,
    tokens: Vec<u32>,
    greedy: Vec<u32>,
}

#[test]
fn first_position_is_bit_identical_to_llama_cpp() {
    let backend = CpuBackend::new(0);
    let fixture: serde_json::Value =
        serde_json::from_slice(&read_fixture("logits/short.json")).unwrap();
    for name in MODELS {
        let g = Gguf::open(model(name)).unwrap();
        let m = Model::load(&backend, &g, |_, _| {}).unwrap();
        for case in fixture[name].as_array().unwrap() {
            let tokens: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
            let mut kv: Vec<_> = (0..m.config.n_layers)
                .map(|_| backend.kv_cache(&m.config, 64, 1).unwrap())
                .collect();
            let rows: Vec<usize> = (0..tokens.len()).collect();
            let span = SequenceSpan::new(0, 0, tokens.len());
            let batch = span.batch(&tokens);
            let logits = m.forward(&backend, &mut kv, &batch, &rows).unwrap();
            for (i, row) in logits.chunks(m.config.n_vocab).enumerate() {
                let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                let same =
                    format!("{:x}", Sha256::digest(&bytes)) == case["sha256"][i].as_str().unwrap();
                eprintln!(
                    "{name} {tokens:?} position {i}: {}",
                    if same { "identical" } else { "differs" }
                );
                assert!(
                    same,
                    "{name} {tokens:?}: logits at position {i} differ from llama.cpp's"
                );
            }
        }
    }
}

#[test]
fn logits_and_greedy_continuations_match_llama_cpp() {
    let backend = CpuBackend::new(0);
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for name in MODELS {
        let g = Gguf::open(model(name)).unwrap();
        let m = Model::load(&backend, &g, |_, _| {}).unwrap();
        let cases: Vec<Case> =
            serde_json::from_slice(&read_fixture(&format!("logits/{name}.json"))).unwrap();
        assert!(cases.len() >= 8);
        for (i, c) in cases.iter().enumerate() {
            let want = f32s(&read_fixture(&format!("logits/{name}-{i}.f32")));
            let mut s = Session::new(&backend, &m, 256, 1).unwrap();
            let logits = s.prefill(0, &c.tokens).unwrap();
            assert_eq!(logits.len(), want.len());
            let max = want.iter().fold(f32::MIN, |a, &b| a.max(b));
            let min = want.iter().fold(f32::MAX, |a, &b| a.min(b));
            let max_diff = logits
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let rel = max_diff / (max - min);
            if max_diff != 0.0 {
                failures.push(format!(
                    "{name} #{i}: logits differ from llama.cpp's by up to {max_diff} ({rel:.2e} of the range)"
                ));
            }
            // Greedy continuation: every step picks llama.cpp's token.
            let mut logits = logits;
            let mut same = 0;
            for (step, &reference) in c.greedy.iter().enumerate() {
                let ours = argmax(&logits);
                if ours != reference {
                    let gap = logits[ours as usize] - logits[reference as usize];
                    failures.push(format!(
                        "{name} #{i}: step {step}: ferry picks {ours}, llama.cpp {reference} (gap {gap:.3} logits)"
                    ));
                    break;
                }
                same += 1;
                if step + 1 < c.greedy.len() {
                    logits = s.decode(&[0], &[ours]).unwrap();
                }
            }
            report.push(format!(
                "{name} #{i} ({:>4}, {:>2} tokens): max |Δ| {max_diff:.4} of range {:.2} = {rel:.2e}; greedy identical for {same}/{}",
                c.kind,
                c.tokens.len(),
                max - min,
                c.greedy.len()
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
