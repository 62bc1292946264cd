//! Bad models and bad requests give clear errors naming the problem.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ferry::backend::cpu::CpuBackend;
use ferry::engine::Session;
use ferry::gguf::{Gguf, GgufWriter, Value};
use ferry::model::Model;
use ferry::quant::{self, GgmlType};

struct Tiny {
    arch: &'static str,
    skip: Option<&'static str>,
    reshape: Option<(&'static str, Vec<u64>)>,
}

/// A two-layer llama-shaped model with random weights.
fn tiny_model(dir: &Path, name: &str, t: Tiny) -> PathBuf {
    let (d, ff, heads, kv_heads, vocab, layers) = (64u64, 128u64, 4u64, 2u64, 96u64, 2);
    let hd = d / heads;
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", t.arch);
    for (k, v) in [
        ("block_count", layers),
        ("embedding_length", d),
        ("feed_forward_length", ff),
        ("attention.head_count", heads),
        ("attention.head_count_kv", kv_heads),
        ("context_length", 256),
    ] {
        w.set(format!("{}.{k}", t.arch), Value::U32(v as u32));
    }
    w.set(
        format!("{}.attention.layer_norm_rms_epsilon", t.arch),
        Value::F32(1e-5),
    );
    let mut tensors: Vec<(String, Vec<u64>, GgmlType)> = vec![
        ("token_embd.weight".into(), vec![d, vocab], GgmlType::Q8_0),
        ("output_norm.weight".into(), vec![d], GgmlType::F32),
    ];
    for l in 0..layers {
        for (n, shape, ty) in [
            ("attn_norm.weight", vec![d], GgmlType::F32),
            ("attn_q.weight", vec![d, heads * hd], GgmlType::Q8_0),
            ("attn_k.weight", vec![d, kv_heads * hd], GgmlType::Q8_0),
            ("attn_v.weight", vec![d, kv_heads * hd], GgmlType::Q8_0),
            ("attn_output.weight", vec![heads * hd, d], GgmlType::Q8_0),
            ("ffn_norm.weight", vec![d], GgmlType::F32),
            ("ffn_gate.weight", vec![d, ff], GgmlType::Q8_0),
            ("ffn_up.weight", vec![d, ff], GgmlType::Q8_0),
            ("ffn_down.weight", vec![ff, d], GgmlType::Q8_0),
        ] {
            tensors.push((format!("blk.{l}.{n}"), shape, ty));
        }
    }
    let mut rng = Rng(17);
    let mut datas = Vec::new();
    for (name, shape, ty) in &tensors {
        if Some(name.as_str()) == t.skip {
            continue;
        }
        let shape = match &t.reshape {
            Some((n, s)) if n == name => s.clone(),
            _ => shape.clone(),
        };
        let n: u64 = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                if shape.len() == 1 {
                    1.0
                } else {
                    rng.normal() * 0.05
                }
            })
            .collect();
        w.add_tensor(name.clone(), &shape, *ty).unwrap();
        datas.push(quant::quantize(*ty, &values).unwrap());
    }
    let path = dir.join(format!("{name}.gguf"));
    let f = std::fs::File::create(&path).unwrap();
    let mut out = w.write_header(std::io::BufWriter::new(f)).unwrap();
    for d in &datas {
        out.write(d).unwrap();
    }
    out.finish().unwrap();
    path
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-model-errors-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn load_err(path: &Path) -> String {
    let g = Gguf::open(path).unwrap();
    let b = CpuBackend::new(1);
    match Model::load(&b, &g, |_, _| {}) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_tiny_synthetic_model_runs() {
    let p = tiny_model(
        &dir(),
        "ok",
        Tiny {
            arch: "llama",
            skip: None,
            reshape: None,
        },
    );
    let g = Gguf::open(&p).unwrap();
    let b = CpuBackend::new(1);
    let m = Model::load(&b, &g, |_, _| {}).unwrap();
    assert!(m.output.is_none(), "tied output");
    let mut s = Session::new(&b, &m, 32, 1).unwrap();
    let logits = s.prefill(0, &[1, 2, 3, 4, 5]).unwrap();
    assert_eq!(logits.len(), 96);
    assert!(logits.iter().all(|v| v.is_finite()));
    // Decoding past the context is an error, not a panic.
    let mut s = Session::new(&b, &m, 6, 1).unwrap();
    s.prefill(0, &[1, 2, 3, 4, 5, 6]).unwrap();
    let e = s.decode(&[0], &[7]).unwrap_err().to_string();
    assert!(e.contains("outside the context of 6 tokens"), "{e}");
    // Out-of-vocabulary token ids are rejected.
    let mut s = Session::new(&b, &m, 32, 1).unwrap();
    let e = s.prefill(0, &[1000]).unwrap_err().to_string();
    assert!(e.contains("token id 1000"), "{e}");
}

#[test]
fn unknown_architecture_missing_tensor_and_wrong_shape_are_named() {
    let d = dir();
    let e = load_err(&tiny_model(
        &d,
        "arch",
        Tiny {
            arch: "gptj",
            skip: None,
            reshape: None,
        },
    ));
    assert!(e.contains("architecture 'gptj' is not supported"), "{e}");

    let e = load_err(&tiny_model(
        &d,
        "missing",
        Tiny {
            arch: "llama",
            skip: Some("blk.1.ffn_up.weight"),
            reshape: None,
        },
    ));
    assert!(e.contains("tensor 'blk.1.ffn_up.weight' is missing"), "{e}");

    let e = load_err(&tiny_model(
        &d,
        "shape",
        Tiny {
            arch: "llama",
            skip: None,
            reshape: Some(("blk.0.attn_k.weight", vec![64, 64])),
        },
    ));
    assert!(
        e.contains("blk.0.attn_k.weight") && e.contains("[64, 64]") && e.contains("[64, 32]"),
        "{e}"
    );
}

#[test]
fn run_rejects_a_prompt_longer_than_the_context() {
    let model = model("smollm2");
    let prompt = "word ".repeat(40);
    let (ok, _, err) = ferry(&[
        "run",
        "-m",
        model.to_str().unwrap(),
        "-c",
        "16",
        "--temp",
        "0",
        "-p",
        &prompt,
    ]);
    assert!(!ok);
    assert!(
        err.contains("the context holds 16") && err.contains("-c"),
        "{err}"
    );
}

#[test]
fn run_generates_greedy_text_on_the_real_model() {
    let model = model("smollm2");
    let (ok, text, err) = ferry(&[
        "run",
        "-m",
        model.to_str().unwrap(),
        "-n",
        "8",
        "--temp",
        "0",
        "-p",
        "The capital of France is",
    ]);
    assert!(ok, "{err}");
    // llama.cpp's greedy continuation of this prompt starts " Paris."
    assert!(text.starts_with(" Paris."), "{text:?}");
    assert!(
        err.contains("prefill:") && err.contains("decode:") && err.contains("tokens/s"),
        "{err}"
    );
}

/// Layer-major prefill in micro-batches gives the same logits as one batch.
#[test]
fn micro_batched_prefill_equals_one_batch() {
    let g = Gguf::open(model("smollm2")).unwrap();
    let b = CpuBackend::new(2);
    let m = Model::load(&b, &g, |_, _| {}).unwrap();
    let tokens: Vec<u32> = (0..23).map(|i| 100 + i * 37).collect();
    let run = |ubatch: usize| {
        let mut s = Session::new(&b, &m, 64, 1).unwrap();
        s.ubatch = ubatch;
        s.prefill(0, &tokens).unwrap()
    };
    let whole = run(512);
    for ub in [4usize, 7] {
        let chunked = run(ub);
        assert!(
            whole
                .iter()
                .zip(&chunked)
                .all(|(a, c)| a.to_bits() == c.to_bits()),
            "micro-batches of {ub} changed the logits"
        );
    }
}

/// A file whose `general.alignment` is 1 and whose tensor data starts at an
/// odd offset (the format allows it) loads and gives the same logits as the
/// same weights aligned: misaligned tensors are read from aligned copies,
/// never cast in place (that panicked).
#[test]
fn tensors_at_any_alignment_load_and_agree() {
    use ferry::synth::{TinySpec, write_random_model};
    let d = dir();
    let aligned = d.join("aligned.gguf");
    let spec = TinySpec::preset("tiny", GgmlType::Q4_K).unwrap();
    write_random_model(&aligned, &spec, None).unwrap();
    let g = Gguf::open(&aligned).unwrap();
    // Notes of growing length until the data section starts at an odd offset.
    let mut found = None;
    for pad in 1..8 {
        let odd = d.join(format!("alignment-1-{pad}.gguf"));
        let mut w = GgufWriter::new();
        for (k, v) in g.metadata() {
            w.set(k.clone(), v.clone());
        }
        w.set("general.alignment", Value::U32(1));
        w.set("general.note", Value::String("x".repeat(pad)));
        for t in g.tensors() {
            w.add_tensor(t.name.clone(), &t.shape, t.ty).unwrap();
        }
        let file = std::fs::File::create(&odd).unwrap();
        let mut out = w.write_header(std::io::BufWriter::new(file)).unwrap();
        for t in g.tensors() {
            out.write(g.tensor_bytes(t)).unwrap();
        }
        out.finish().unwrap();
        let g1 = Gguf::open(&odd).unwrap();
        if g1.tensors().iter().all(|t| t.file_offset % 2 == 1) {
            found = Some(g1);
            break;
        }
    }
    let g1 = found.expect("a note length that puts the tensors at odd offsets");
    let b = CpuBackend::new(2);
    let logits = |g: &Gguf| {
        let m = Model::load(&b, g, |_, _| {}).unwrap();
        let mut s = Session::new(&b, &m, 32, 1).unwrap();
        s.prefill(0, &[1, 2, 3, 4, 5]).unwrap()
    };
    let (want, got) = (logits(&g), logits(&g1));
    assert!(
        want.iter()
            .zip(&got)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

/// Copy `g` to `path` with its metadata changed by `edit`.
fn rewrite(g: &Gguf, path: &Path, edit: impl FnOnce(&mut Vec<(String, Value)>)) {
    let mut meta = g.metadata().to_vec();
    edit(&mut meta);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.set(k, v);
    }
    for t in g.tensors() {
        w.add_tensor(t.name.clone(), &t.shape, t.ty).unwrap();
    }
    let file = std::fs::File::create(path).unwrap();
    let mut out = w.write_header(std::io::BufWriter::new(file)).unwrap();
    for t in g.tensors() {
        out.write(g.tensor_bytes(t)).unwrap();
    }
    out.finish().unwrap();
}

/// Files whose parts disagree are refused with what disagrees: layers
/// beyond `block_count` (they were ignored), a vocabulary with fewer tokens
/// than the embeddings have rows (ids without text).
#[test]
fn inconsistent_files_are_refused() {
    use ferry::synth::{TinySpec, write_random_model};
    let d = dir();
    let base = d.join("consistent.gguf");
    write_random_model(
        &base,
        &TinySpec::preset("tiny", GgmlType::Q8_0).unwrap(),
        None,
    )
    .unwrap();
    let g = Gguf::open(&base).unwrap();

    let fewer = d.join("block-count-1.gguf");
    rewrite(&g, &fewer, |m| {
        for (k, v) in m.iter_mut() {
            if k == "llama.block_count" {
                *v = Value::U32(1);
            }
        }
    });
    let err = load_err(&fewer);
    assert!(
        err.contains("tensors of layer 1 but block_count says 1"),
        "{err}"
    );

    let short_vocab = d.join("short-vocab.gguf");
    rewrite(&g, &short_vocab, |m| {
        m.retain(|(k, _)| !k.starts_with("tokenizer."));
        m.extend(ferry::tokenizer::synthetic::metadata(300).unwrap());
    });
    let g2 = Gguf::open(&short_vocab).unwrap();
    let Err(err) = ferry::tokenizer::Tokenizer::from_gguf(&g2) else {
        panic!("a vocabulary shorter than the embeddings was accepted");
    };
    let err = err.to_string();
    assert!(err.contains("fewer than the 512 rows"), "{err}");
}

/// A mixture of experts whose description or tensors do not hold together
/// is refused naming what is wrong: more experts used than there are, no
/// experts used, expert stacks of the wrong shape, and the per-expert tensors
/// of old Mixtral conversions.
#[test]
fn inconsistent_mixtures_of_experts_are_refused() {
    use ferry::synth::{TinySpec, write_random_model};
    let d = dir();
    let base = d.join("moe.gguf");
    let mut spec = TinySpec::preset("mixtral-mini", GgmlType::Q8_0).unwrap();
    spec.n_layers = 1;
    spec.n_vocab = 512;
    write_random_model(&base, &spec, None).unwrap();
    let g = Gguf::open(&base).unwrap();
    let b = CpuBackend::new(2);
    assert!(
        Model::load(&b, &g, |_, _| {}).is_ok(),
        "the base file loads"
    );

    let set = |name: &str, key: &'static str, v: u32| {
        let p = d.join(name);
        rewrite(&g, &p, |m| {
            for (k, val) in m.iter_mut() {
                if k == key {
                    *val = Value::U32(v);
                }
            }
        });
        load_err(&p)
    };
    let err = set("moe-used-9.gguf", "llama.expert_used_count", 9);
    assert!(
        err.contains("expert_used_count") && err.contains("9"),
        "{err}"
    );
    let err = set("moe-used-0.gguf", "llama.expert_used_count", 0);
    assert!(err.contains("expert_used_count"), "{err}");
    let err = set("moe-count-4.gguf", "llama.expert_count", 4);
    assert!(
        err.contains("ffn_gate_inp.weight") && err.contains("shape"),
        "{err}"
    );

    // Old conversions: one tensor per expert.
    let split = d.join("moe-split.gguf");
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k.clone(), v.clone());
    }
    for t in g.tensors() {
        let name = t.name.replace("ffn_gate_exps", "ffn_gate.0");
        w.add_tensor(name, &t.shape, t.ty).unwrap();
    }
    let file = std::fs::File::create(&split).unwrap();
    let mut out = w.write_header(std::io::BufWriter::new(file)).unwrap();
    for t in g.tensors() {
        out.write(g.tensor_bytes(t)).unwrap();
    }
    out.finish().unwrap();
    let err = load_err(&split);
    assert!(
        err.contains("each expert as a tensor of its own") && err.contains("convert"),
        "{err}"
    );
}
