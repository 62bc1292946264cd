//! `ferry synth` and `ferry bench`: every preset has the shape and size of its
//! real model, synthetic models run, and bench output parses with llama-bench's
//! column names in every format.

mod common;

use common::*;
use ferry::backend::cpu::CpuBackend;
use ferry::engine::Session;
use ferry::gguf::Gguf;
use ferry::model::Model;
use ferry::quant::GgmlType;
use ferry::synth::{PRESETS, QuantMix, TinySpec, tensor_list, write_random_model};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-synth-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Write `spec` to `name` with `threads` worker threads.
fn write_with_threads(spec: &TinySpec, threads: usize, name: &str) -> std::path::PathBuf {
    let path = tmp(name);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(|| write_random_model(&path, spec, None).unwrap());
    path
}

/// Prefill 8 tokens on the CPU: the logits are finite and not flat.
fn assert_runs(g: &Gguf, what: &str) {
    let backend = CpuBackend::new(2);
    let m = Model::load(&backend, g, |_, _| {}).unwrap();
    let mut s = Session::new(&backend, &m, 64, 1).unwrap();
    let logits = s.prefill(0, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()), "{what}");
    let spread = logits.iter().fold(f32::MIN, |a, &b| a.max(b))
        - logits.iter().fold(f32::MAX, |a, &b| a.min(b));
    assert!(spread > 1e-3, "{what}: logits are flat");
}

#[test]
fn every_preset_has_its_real_models_size() {
    // Sizes of the real Q4_K_M GGUFs (llama.cpp), GiB; ours follow the same recipe
    // but give every tensor outside it the base type, so allow 12 %.
    let real: [(&str, f64); 7] = [
        ("qwen2.5-7b", 4.36),
        ("qwen2.5-14b", 8.37),
        ("qwen2.5-32b", 18.49),
        ("qwen2.5-72b", 44.15),
        ("llama3-70b", 39.59),
        // Qwen3-30B-A3B-Q4_K_M.gguf (18.6 GB), Mixtral-8x7B Q4_K_M (26.44 GB).
        ("qwen3-30b-a3b", 17.32),
        ("mixtral-8x7b", 24.62),
    ];
    for name in PRESETS.map(|p| p.name) {
        let mut spec = TinySpec::preset(name, GgmlType::Q8_0).unwrap();
        spec.mix = Some(QuantMix::Q4KM);
        let tensors = tensor_list(&spec, spec.n_vocab);
        let bytes: u64 = tensors
            .iter()
            .map(|(_, s, t)| t.bytes_for(s.iter().product()).unwrap())
            .sum();
        // A mixture adds the router and replaces three matrices by three stacks.
        let per_layer = match spec.arch {
            "qwen2" => 12,
            "qwen3" => 11,
            "qwen3moe" => 12,
            "gemma3" => 13,
            _ => 9,
        } + (spec.experts.is_some() && spec.arch == "llama") as u64;
        assert_eq!(
            tensors.len() as u64,
            2 + (!spec.tied) as u64 + spec.rope_freqs as u64 + spec.n_layers * per_layer,
            "{name}"
        );
        if let Some((_, gib)) = real.iter().find(|r| r.0 == name) {
            let ours = bytes as f64 / (1u64 << 30) as f64;
            assert!(
                (ours - gib).abs() / gib < 0.12,
                "{name}: {ours:.2} GiB vs real {gib} GiB"
            );
        }
    }
}

#[test]
fn synthetic_models_of_every_mix_run_on_the_cpu() {
    for (arch, quant) in [
        ("llama", "q4_k_m"),
        ("qwen2", "q5_k_m"),
        ("qwen2", "q4_0"),
        ("llama", "f16"),
        ("qwen3", "q8_0"),
        ("gemma3", "q4_k_m"),
    ] {
        let mut spec = TinySpec::preset("tiny", GgmlType::Q8_0).unwrap();
        spec.arch = arch;
        spec.mix = QuantMix::parse(quant);
        let path = tmp(&format!("{arch}-{quant}.gguf"));
        write_random_model(&path, &spec, None).unwrap();
        let g = Gguf::open(&path).unwrap();
        assert_eq!(
            g.get("general.synthetic").and_then(|v| v.as_bool()),
            Some(true)
        );
        assert_runs(&g, &format!("{arch} {quant}"));
    }
}

/// Large matrices (over 16 × the pool's 4096 units) are assembled from a pool of
/// quantized random units: the file still runs (valid blocks, finite, varied
/// logits), every 256-element unit of such a matrix is one of a few thousand,
/// and the bytes do not depend on the thread count.
#[test]
fn large_matrices_are_drawn_from_a_pool_of_valid_units() {
    let mut spec = TinySpec::preset("tiny", GgmlType::Q8_0).unwrap();
    // Pooled beyond 16 · 4096 · 256 = 16.8 M elements: the 9216 × 2048 gate has 18.9 M.
    (spec.d_model, spec.d_ff, spec.n_layers) = (2048, 9216, 1);
    spec.mix = QuantMix::parse("q4_k_m");
    let (a, b) = (
        write_with_threads(&spec, 1, "pool-1.gguf"),
        write_with_threads(&spec, 2, "pool-2.gguf"),
    );
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let g = Gguf::open(&a).unwrap();
    let gate = g.tensor("blk.0.ffn_gate.weight").unwrap();
    assert_eq!(gate.ty, GgmlType::Q4_K);
    let bytes = g.tensor_bytes(gate);
    let units: std::collections::HashSet<&[u8]> = bytes.chunks(144).collect();
    assert!(units.len() <= 4096, "{} distinct units", units.len());
    assert!(units.len() > 3000, "{} distinct units", units.len());
    assert_runs(&g, "pooled q4_k_m");
    let _ = (std::fs::remove_file(a), std::fs::remove_file(b));
}

#[test]
fn vocab_from_copies_the_tokenizer() {
    let src = Gguf::open(model("smollm2")).unwrap();
    let spec = TinySpec::preset("tiny", GgmlType::Q8_0).unwrap();
    let path = tmp("tiny-vocab.gguf");
    write_random_model(&path, &spec, Some(&src)).unwrap();
    let g = Gguf::open(&path).unwrap();
    let tok = ferry::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(
        g.tensor("token_embd.weight").unwrap().shape,
        vec![256, 49152]
    );
    let (ok, out, err) = ferry(&["tokenize", "-m", path.to_str().unwrap(), "Hello world"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[19556,905]");
}

#[test]
fn bench_output_parses_like_llama_bench() {
    let path = tmp("bench.gguf");
    write_random_model(
        &path,
        &TinySpec::preset("tiny", GgmlType::Q8_0).unwrap(),
        None,
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let base = [
        "bench", "-m", p, "-p", "8,16", "-n", "2", "--pg", "8,2", "-r", "2", "-t", "1",
    ];

    let (ok, out, err) = ferry(&[&base[..], &["-o", "json"]].concat());
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let tests: Vec<&str> = rows.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["pp8", "pp16", "tg2", "pp8+tg2"]);
    for r in &rows {
        for key in [
            "model_filename",
            "model_type",
            "model_size",
            "model_n_params",
            "backends",
            "n_threads",
            "n_batch",
            "n_ubatch",
            "n_prompt",
            "n_gen",
            "avg_ns",
            "stddev_ns",
            "avg_ts",
            "stddev_ts",
            "samples_ns",
            "mode",
        ] {
            assert!(!r[key].is_null(), "missing {key}");
        }
        // A CPU run: no budget, no peak, no overlap.
        assert_eq!(r["mode"], "cpu");
        assert!(r["vram_budget"].is_null() && r["overlap"].is_null());
        assert_eq!(r["samples_ns"].as_array().unwrap().len(), 2);
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
    }

    let (ok, out, _) = ferry(&[&base[..], &["-o", "jsonl"]].concat());
    assert!(ok);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["test"], "pp8+tg2");

    let (ok, out, _) = ferry(&[&base[..], &["-o", "csv"]].concat());
    assert!(ok);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert!(
        header.contains(&"avg_ts")
            && header.contains(&"n_prompt")
            && header.contains(&"model_type")
            && header.contains(&"mode")
            && header.contains(&"vram_budget")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 4);
    // Every row has the header's number of fields (quoted fields hold no commas here).
    for row in &rows {
        assert_eq!(row.split(',').count(), header.len(), "{row}");
    }

    let (ok, out, _) = ferry(&[&base[..], &["-o", "md"]].concat());
    assert!(ok);
    let head = out.lines().next().unwrap();
    assert!(
        head.contains("| mode | vram |") && head.contains("| t/s |"),
        "{head}"
    );
    assert_eq!(out.lines().count(), 2 + 4);
    assert!(out.lines().nth(2).unwrap().contains("| cpu | - |"), "{out}");

    // Depths: every test again with tokens already in the cache.
    let (ok, out, err) = ferry(&[
        "bench", "-m", p, "-p", "8", "-n", "2", "-d", "0,16", "-r", "1", "-t", "1", "-o", "json",
    ]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let tests: Vec<&str> = rows.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["pp8", "tg2", "pp8 @ d16", "tg2 @ d16"]);
    let depths: Vec<u64> = rows
        .iter()
        .map(|r| r["n_depth"].as_u64().unwrap())
        .collect();
    assert_eq!(depths, [0, 0, 16, 16]);

    let (ok, _, err) = ferry(&["bench", "-m", p, "-d", "64", "--vram-budget", "1GiB"]);
    assert!(!ok && err.contains("--n-depth"), "{err}");
    let (ok, _, err) = ferry(&["bench", "-m", p, "-o", "xml"]);
    assert!(!ok && err.contains("md, json, jsonl or csv"), "{err}");
    let (ok, _, err) = ferry(&["bench", "-m", p, "--pg", "8"]);
    assert!(!ok && err.contains("--pg"), "{err}");
    let (ok, _, err) = ferry(&["bench", "-m", p, "--mode", "stream,strem"]);
    assert!(!ok && err.contains("--mode strem"), "{err}");
}

#[test]
fn synth_rejects_unknown_presets_and_types() {
    let (ok, _, err) = ferry(&["synth", "--preset", "gpt5", "/tmp/x.gguf"]);
    assert!(!ok && err.contains("qwen2.5-32b"), "{err}");
    let (ok, _, err) = ferry(&[
        "synth",
        "--preset",
        "tiny",
        "--quant",
        "tq1_0",
        "/tmp/x.gguf",
    ]);
    assert!(!ok && err.contains("q4_k_m"), "{err}");
}

#[test]
fn synthetic_models_without_vocab_from_are_runnable() {
    let path = tmp("tiny-generated-vocab.gguf");
    let (ok, _, err) = ferry(&["synth", "--preset", "tiny", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let g = Gguf::open(&path).unwrap();
    let tok = ferry::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let spec = TinySpec::preset("tiny", GgmlType::Q8_0).unwrap();
    assert_eq!(tok.vocab_size() as u64, spec.n_vocab);
    assert!(tok.chat_template().is_some());
    // Text in, (random) text out, timings on stderr.
    let (ok, _, err) = ferry(&[
        "run",
        "-m",
        path.to_str().unwrap(),
        "--device",
        "cpu",
        "-p",
        "hello there",
        "-n",
        "8",
        "--temp",
        "0",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("decode:"), "{err}");
}

#[test]
fn synthetic_files_do_not_depend_on_the_thread_count() {
    let spec = TinySpec::preset("tiny", GgmlType::Q8_0)
        .map(|mut s| {
            s.mix = QuantMix::parse("q4_k_m");
            s
        })
        .unwrap();
    let bytes = |threads, name| std::fs::read(write_with_threads(&spec, threads, name)).unwrap();
    assert!(bytes(1, "threads-1.gguf") == bytes(3, "threads-3.gguf"));
}

/// The per-layer description read from a file: gemma3's five local layers
/// then a global one, each with its RoPE base, its query scale and embedding
/// scale; a llama file with a window (Mistral) windows every layer; qwen3
/// normalizes q and k and has no window.
#[test]
fn layer_descriptions_follow_the_architecture() {
    use ferry::model::{Activation, Config};
    let config = |arch: &'static str, window: Option<u64>, head_dim: Option<u64>| {
        let mut spec = TinySpec::preset("tiny", GgmlType::Q8_0).unwrap();
        (spec.arch, spec.window, spec.head_dim, spec.n_layers) = (arch, window, head_dim, 7);
        let path = tmp(&format!("desc-{arch}.gguf"));
        write_random_model(&path, &spec, None).unwrap();
        Config::from_gguf(&Gguf::open(&path).unwrap()).unwrap()
    };
    let g = config("gemma3", Some(16), Some(32));
    for (i, l) in g.layers.iter().enumerate() {
        let global = i == 5;
        assert_eq!(l.attn.window, (!global).then_some(16), "gemma3 layer {i}");
        let base = if global { 1e6 } else { 1e4 };
        assert_eq!(l.attn.rope.freq_base, base, "gemma3 layer {i}");
        assert_eq!(l.query_scale, Some(1.0 / 32f32.sqrt()));
        assert_eq!(l.attn.scale, 1.0);
        assert!(l.qk_norm && l.post_norms);
        assert_eq!(l.activation, Activation::GeluTanh);
    }
    assert_eq!(g.embed_scale, Some(16.0));
    assert_eq!(g.q_width(), 4 * 32);

    let m = config("llama", Some(8), None);
    assert!(m.layers.iter().all(|l| l.attn.window == Some(8)));
    assert!(
        m.layers
            .iter()
            .all(|l| !l.qk_norm && l.query_scale.is_none())
    );
    assert_eq!(m.layers[0].attn.scale, 1.0 / 64f32.sqrt());

    let q = config("qwen3", None, Some(128));
    assert!(
        q.layers
            .iter()
            .all(|l| l.qk_norm && l.attn.window.is_none())
    );
    assert_eq!((q.q_width(), q.kv_width()), (4 * 128, 2 * 128));
    assert_eq!(q.embed_scale, None);
}
