//! Architectures with no small real model here (qwen3, gemma3 at the 1B
//! shape, Llama 3.1 RoPE scaling) against llama.cpp on synthetic files in
//! their real shapes: random weights from a seed, a real tokenizer. The test
//! writes each file again with `ferry synth` (deterministic), checks its
//! sha256 against the one llama.cpp scored (`scripts/gen_synth_fixtures.py`),
//! then compares the logits at every position of each prompt bit for bit, the
//! last position's values, and greedy continuations.
//!
//! The gemma3 case has a prompt longer than its 512-token sliding window
//! (791 tokens): ferry reads each row's keys from a multiple of 64 before the
//! window's start, masking the ones before it, and so matches llama.cpp,
//! which masks the whole cache, bit for bit there too.
//!
//! Matrices are Q8_0 (qwen3, llama3.1) or Q4_K_M (gemma3), whose products
//! follow llama.cpp's float order at these shapes. Two quantizations do not
//! yet at the Llama 3 8B shape (open in the quantization issue): Q4_0 (which
//! llama.cpp repacks for AVX2), up to 5e-2 apart, and Q4_K_M at 14 and 30
//! tokens, 1e-6 apart.

mod common;

use common::*;
use ferry::backend::cpu::CpuBackend;
use ferry::backend::{Backend, SequenceSpan};
use ferry::engine::{Session, argmax};
use ferry::gguf::Gguf;
use ferry::model::Model;
use sha2::{Digest, Sha256};

#[derive(serde::Deserialize)]
struct Prompt {
    tokens: Vec<u32>,
    sha256: Vec<String>,
    greedy: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct Fixture {
    synth: Vec<String>,
    file_sha256: String,
    prompts: Vec<Prompt>,
}

fn hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Prompts up to this long are compared at every position (all rows' logits
/// at once); longer ones at the last.
const ALL_ROWS_MAX: usize = 64;

/// How close ferry must be to llama.cpp on a case.
#[derive(Clone, Copy, PartialEq)]
enum Match {
    /// Every position's logits bit for bit, and the greedy continuations.
    Bits,
    /// The last position within this fraction of the logits' range. For
    /// the 4-bit grid formats at the qwen3-0.6b and llama-1b shapes, where
    /// llama.cpp repacks IQ4_NL and MXFP4 rows and sums in other orders
    /// (uniform Q5_K at the qwen3-0.6b shape differs by as much, 1 %):
    /// a wrong layout or scale gives noise, not a 1 % difference.
    Within(f32),
}

fn check(case: &str, window: Option<usize>) {
    check_with(case, window, Match::Bits)
}

fn check_with(case: &str, window: Option<usize>, how: Match) {
    let fx: Fixture = serde_json::from_slice(&read_fixture(&format!("synth/{case}.json"))).unwrap();
    let dir = std::env::temp_dir().join(format!("ferry-synth-ref-{}-{case}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{case}.gguf"));
    // The fixture's command names the models by the path they had; here they
    // come from models/ (or $FERRY_MODELS).
    let args: Vec<String> = fx
        .synth
        .iter()
        .map(|a| match std::path::Path::new(a).file_name() {
            Some(f) if a.ends_with(".gguf") => model_file(f.to_str().unwrap()),
            _ => a.clone(),
        })
        .collect();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(&args)
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "ferry {args:?} failed");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        hex(&bytes),
        fx.file_sha256,
        "{case}: `ferry {}` no longer writes the file llama.cpp scored; regenerate the fixture",
        args.join(" ")
    );
    drop(bytes);

    let backend = CpuBackend::new(0);
    let g = Gguf::open(&path).unwrap();
    let m = Model::load(&backend, &g, |_, _| {}).unwrap();
    let n_vocab = m.config.n_vocab;
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (i, p) in fx.prompts.iter().enumerate() {
        let n = p.tokens.len();
        if let Some(w) = window {
            assert!(
                fx.prompts.iter().any(|p| p.tokens.len() > w),
                "{case}: no prompt beyond the {w}-token window"
            );
        }
        // Every position's logits (short prompts), bit for bit.
        if n <= ALL_ROWS_MAX {
            let mut kv: Vec<_> = (0..m.config.n_layers)
                .map(|_| backend.kv_cache(&m.config, n, 1).unwrap())
                .collect();
            let rows: Vec<usize> = (0..n).collect();
            let span = SequenceSpan::new(0, 0, n);
            let logits = m
                .forward(&backend, &mut kv, &span.batch(&p.tokens), &rows)
                .unwrap();
            for (j, row) in logits.chunks(n_vocab).enumerate() {
                if how == Match::Bits && hex(&le_bytes(row)) != p.sha256[j] {
                    failures.push(format!("{case} #{i}: position {j} differs from llama.cpp"));
                }
            }
        }
        // The last position's values and the greedy continuation (cases
        // held to the bits have no values file: the hashes suffice).
        let mut s = Session::new(&backend, &m, n + p.greedy.len() + 1, 1).unwrap();
        let mut logits = s.prefill(0, &p.tokens).unwrap();
        let same_bits = hex(&le_bytes(&logits)) == p.sha256[n - 1];
        let values = format!("synth/{case}-{i}.f32");
        let want = fixture(&values)
            .exists()
            .then(|| f32s(&read_fixture(&values)));
        assert!(
            want.is_some() || how == Match::Bits,
            "{case}: a tolerance needs {values}"
        );
        // (max |Δ|, range) where there are values to measure against.
        let measured = want.as_ref().map(|want| {
            let range = want.iter().fold(f32::MIN, |a, &b| a.max(b))
                - want.iter().fold(f32::MAX, |a, &b| a.min(b));
            let max_diff = logits
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            (max_diff, range)
        });
        match (how, measured) {
            (Match::Bits, _) if !same_bits => failures.push(format!(
                "{case} #{i}: last position differs from llama.cpp{}",
                measured.map_or(String::new(), |(d, _)| format!(" by up to {d}"))
            )),
            (Match::Within(f), Some((d, range))) if d > f * range => failures.push(format!(
                "{case} #{i}: last position differs from llama.cpp by {d}, over {f} of the range {range}"
            )),
            _ => {}
        }
        let mut same = 0;
        for (step, &reference) in p.greedy.iter().enumerate() {
            let ours = argmax(&logits);
            if ours != reference {
                // Within a tolerance, random weights' near-ties may go
                // either way: the continuation is reported, not required.
                if how == Match::Bits {
                    failures.push(format!(
                        "{case} #{i}: greedy step {step}: ferry {ours}, llama.cpp {reference}"
                    ));
                }
                break;
            }
            same += 1;
            logits = s.decode(&[0], &[ours]).unwrap();
        }
        report.push(format!(
            "{case} #{i} ({n} tokens): last position {}{}; greedy {same}/{}",
            if same_bits {
                "bit-identical"
            } else {
                "differs"
            },
            measured.map_or(String::new(), |(d, r)| format!(
                ", max |Δ| {d:.2e} of range {r:.2}"
            )),
            p.greedy.len()
        ));
    }
    eprintln!("{}", report.join("\n"));
    std::fs::remove_dir_all(&dir).ok();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn qwen3_matches_llama_cpp() {
    check("qwen3", None);
}

#[test]
fn gemma3_1b_shape_matches_llama_cpp_within_and_beyond_its_window() {
    check("gemma3-1b", Some(512));
}

#[test]
fn llama31_rope_factors_match_llama_cpp() {
    check("llama31", None);
}

#[test]
fn iq4_nl_matches_llama_cpp() {
    check_with("iq4_nl", None, Match::Within(0.02));
}

#[test]
fn iq4_xs_matches_llama_cpp() {
    check_with("iq4_xs", None, Match::Within(0.02));
}

#[test]
fn mxfp4_matches_llama_cpp() {
    check_with("mxfp4", None, Match::Within(0.02));
}

#[test]
fn qwen3moe_matches_llama_cpp() {
    check("qwen3moe", None);
}

#[test]
fn mixtral_style_llama_with_experts_matches_llama_cpp() {
    check("mixtral", None);
}

/// Q4_K_M's Q6_K down experts sum in another order than llama.cpp's where
/// an expert takes many tokens of a prompt (up to 1e-6 apart; the Q4_K
/// experts alone are bit-identical).
#[test]
fn qwen3moe_q4_k_m_matches_llama_cpp_within_1e_6() {
    check_with("qwen3moe-q4km", None, Match::Within(1e-6));
}

/// Every 1-3 bit i-quant in one file (issue #23): IQ2_XS, IQ2_S, IQ3_S,
/// IQ1_S, IQ1_M, IQ2_XXS and IQ3_XXS matrices, Q8_0 elsewhere.
#[test]
fn every_lowbit_iquant_matches_llama_cpp() {
    check("iq-every", None);
}

/// The same types as experts: IQ1_M gate, IQ2_XXS up, IQ3_XXS down experts
/// (an expert with 8 tokens or more of a prompt in llama.cpp's tiled order,
/// fewer in its dot product's), the attention in the others.
#[test]
fn every_lowbit_iquant_as_experts_matches_llama_cpp() {
    check("iq-every-moe", None);
}

/// A UD-style low-bit mixture of experts: IQ2_XXS gate/up and IQ3_XXS down
/// experts, Q5_K/Q6_K attention. Within 2 % of the logits' range: llama.cpp
/// repacks the Q5_K attention matrices and sums them in another order (the
/// i-quant experts alone are bit-identical, above).
#[test]
fn ud_iq2_xxs_mixture_of_experts_matches_llama_cpp() {
    check_with("ud-iq2", None, Match::Within(0.02));
}
