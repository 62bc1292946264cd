//! The `ferry inspect` and `ferry tokenize` commands on the real models.

mod common;

use common::*;

#[test]
fn inspect_reports_architecture_types_layers_and_tokenizer() {
    let m = model("qwen05");
    let (ok, out, err) = ferry(&["inspect", m.to_str().unwrap()]);
    assert!(ok, "{err}");
    for needle in [
        "architecture  qwen2",
        "block_count",
        "Q4_K",
        "Q6_K",
        "layers        24",
        "gpt2 / pre qwen2",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let (ok, out, _) = ferry(&["inspect", "--json", model("smollm2").to_str().unwrap()]);
    assert!(ok);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["architecture"], "llama");
    assert_eq!(j["tensor_count"], 272);
    assert_eq!(j["layers"], 30);
    assert_eq!(j["hyperparameters"]["embedding_length"], 576);
    assert_eq!(j["tokenizer"]["pre"], "smollm");
    let by_type: u64 = j["by_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(by_type, j["tensor_bytes"].as_u64().unwrap());
}

#[test]
fn tokenize_prints_llama_cpp_ids_and_nothing_else() {
    let corpus: Vec<String> =
        serde_json::from_slice(&read_fixture("tokenizer/corpus.json")).unwrap();
    for name in MODELS {
        let m = model(name);
        let expected: Vec<serde_json::Value> =
            serde_json::from_slice(&read_fixture(&format!("tokenizer/{name}.json"))).unwrap();
        for i in [9, 20, 47, 60, 97] {
            let s = &corpus[i];
            let (ok, out, err) = ferry(&["tokenize", "-m", m.to_str().unwrap(), s]);
            assert!(ok, "{err}");
            let ids: Vec<u32> = serde_json::from_str(out.trim()).unwrap();
            assert_eq!(
                serde_json::json!(ids),
                expected[i]["special"],
                "{name} {s:?}"
            );
            assert_eq!(out.lines().count(), 1);
        }
    }
    // --no-special and --file
    let m = model("qwen05");
    let dir = std::env::temp_dir().join(format!("ferry-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("prompt.txt");
    std::fs::write(&f, "<|im_start|>hi").unwrap();
    let (_, special, _) = ferry(&[
        "tokenize",
        "-m",
        m.to_str().unwrap(),
        "--file",
        f.to_str().unwrap(),
    ]);
    let (_, plain, _) = ferry(&[
        "tokenize",
        "-m",
        m.to_str().unwrap(),
        "--no-special",
        "<|im_start|>hi",
    ]);
    let special: Vec<u32> = serde_json::from_str(special.trim()).unwrap();
    let plain: Vec<u32> = serde_json::from_str(plain.trim()).unwrap();
    assert_eq!(special[0], 151644);
    assert!(plain.len() > special.len());
}

#[test]
fn bad_input_exits_nonzero_with_a_message() {
    let (ok, out, err) = ferry(&["inspect", "/no/such/model.gguf"]);
    assert!(!ok && out.is_empty());
    assert!(err.contains("/no/such/model.gguf"), "{err}");
    let dir = std::env::temp_dir().join(format!("ferry-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("truncated.gguf");
    let bytes = std::fs::read(model("smollm2")).unwrap();
    std::fs::write(&p, &bytes[..100_000]).unwrap();
    let (ok, _, err) = ferry(&["inspect", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("truncated") && err.contains("incomplete"),
        "{err}"
    );
}

#[test]
fn trace_svg_draws_a_trace_and_rejects_other_json() {
    let dir = std::env::temp_dir().join(format!("ferry-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spans = vec![
        ferry::engine::trace::Span {
            name: "copy layer 1".into(),
            lane: "copy".into(),
            start_ms: 0.0,
            dur_ms: 3.0,
            bytes: 1000,
        },
        ferry::engine::trace::Span {
            name: "layer 1 (streamed)".into(),
            lane: "compute".into(),
            start_ms: 3.0,
            dur_ms: 2.0,
            bytes: 0,
        },
    ];
    let trace = dir.join("t.json");
    std::fs::write(&trace, ferry::engine::trace::to_chrome_json(&spans)).unwrap();
    let (ok, _, err) = ferry(&["trace-svg", trace.to_str().unwrap()]);
    assert!(ok, "{err}");
    let svg = std::fs::read_to_string(dir.join("t.svg")).unwrap();
    assert_eq!(svg.matches("<title>").count(), 2);
    std::fs::write(&trace, "{\"not\": \"a trace\"}").unwrap();
    let (ok, _, err) = ferry(&["trace-svg", trace.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("not a Chrome trace"), "{err}");
}

#[test]
fn serve_and_run_reject_bad_settings_with_a_message() {
    let m = model("smollm2");
    let (ok, _, err) = ferry(&["serve", "-m", m.to_str().unwrap(), "--parallel", "0"]);
    assert!(!ok);
    assert!(err.contains("'0' for '--parallel"), "{err}");
    let (ok, _, err) = ferry(&[
        "run",
        "-m",
        m.to_str().unwrap(),
        "-p",
        "hi",
        "--device",
        "cpu",
        "--vram-budget",
        "1GiB",
    ]);
    assert!(!ok);
    assert!(err.contains("--vram-budget needs a GPU"), "{err}");
    let (ok, _, err) = ferry(&[
        "serve",
        "-m",
        m.to_str().unwrap(),
        "--device",
        "cpu",
        "--vram-budget",
        "25%",
    ]);
    assert!(!ok);
    assert!(err.contains("--vram-budget needs a GPU"), "{err}");
}

/// An empty or blank API key is refused at start (it used to turn
/// authentication off without a word); a FERRY_* variable ferry does not
/// read is named on stderr.
#[test]
fn a_blank_api_key_is_refused_and_unknown_settings_are_named() {
    let m = model("smollm2");
    for key in ["--api-key=", "--api-key=   "] {
        let (ok, _, err) = ferry(&["serve", "-m", m.to_str().unwrap(), key, "--port", "0"]);
        assert!(!ok, "{key}: the server started");
        assert!(
            err.contains("--api-key (or FERRY_API_KEY) is empty"),
            "{err}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["inspect", m.to_str().unwrap()])
        .env("FERRY_GEMV_RNG", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    assert!(
        err.contains("FERRY_GEMV_RNG is not a setting ferry reads")
            && err.contains("FERRY_GEMV_RING"),
        "{err}"
    );
}

/// Settings that cannot work are refused with the reason, before any model
/// is loaded.
#[test]
fn impossible_settings_are_refused_with_the_reason() {
    for (args, says) in [
        (
            vec!["run", "--temp", "nan", "-p", "x"],
            "not a finite number ≥ 0",
        ),
        (vec!["run", "--top-p", "5", "-p", "x"], "not a probability"),
        (vec!["run", "--repeat-penalty", "0", "-p", "x"], "> 0"),
        (vec!["run", "-c", "0", "-p", "x"], "not a whole number ≥ 1"),
        (vec!["run", "-t", "100000", "-p", "x"], "logical cores"),
        (vec!["serve", "--parallel", "0"], "not a whole number ≥ 1"),
        (
            vec!["serve", "--header-timeout", "0"],
            "not a number of seconds",
        ),
        (
            vec!["serve", "--body-timeout", "inf"],
            "not a number of seconds",
        ),
        (
            vec!["serve", "--max-connections", "0"],
            "not a whole number ≥ 1",
        ),
        (
            vec![
                "plan",
                "--preset",
                "tiny",
                "--vram-budget",
                "1GiB",
                "--parallel",
                "0",
            ],
            "not a whole number ≥ 1",
        ),
    ] {
        let (ok, _, err) = ferry(&args);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Messages that named the wrong problem: a directory, a missing file (its
/// reason said twice), a host that does not resolve (blamed on the port),
/// and file edits that would not load (`truncate --layers 0`).
#[test]
fn errors_name_the_real_problem() {
    let dir = std::env::temp_dir();
    let (ok, _, err) = ferry(&["inspect", dir.to_str().unwrap()]);
    assert!(
        !ok && err.contains("is a directory, not a GGUF file"),
        "{err}"
    );
    let (ok, _, err) = ferry(&["inspect", "/nonexistent/model.gguf"]);
    assert!(!ok, "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    let m = model("smollm2");
    let (ok, _, err) = ferry(&[
        "serve",
        "-m",
        m.to_str().unwrap(),
        "--device",
        "cpu",
        "--host",
        "no-such-host.invalid",
    ]);
    assert!(!ok && err.contains("--host must be"), "{err}");
    assert!(!err.contains("another server"), "{err}");
    let out = dir.join("ferry-truncate-0.gguf");
    for n in ["0", "31"] {
        let (ok, _, err) = ferry(&[
            "truncate",
            m.to_str().unwrap(),
            "--layers",
            n,
            out.to_str().unwrap(),
        ]);
        assert!(!ok && err.contains("keep 1 to 30"), "{n}: {err}");
    }
    let (ok, _, err) = ferry(&["plan", "--preset", "tiny", "--vram-budget", "inf%"]);
    assert!(!ok && err.contains("at most 100"), "{err}");
}

/// A context (or number of sequences) whose KV cache cannot fit the host's
/// memory is an error at start naming a context that fits, not an abort
/// ("memory allocation of … bytes failed") at the first request.
#[test]
fn a_kv_cache_beyond_memory_is_refused_at_start() {
    let m = model("smollm2");
    let (ok, _, err) = ferry(&[
        "run",
        "-m",
        m.to_str().unwrap(),
        "--device",
        "cpu",
        "-c",
        "1000000000",
        "-p",
        "hi",
    ]);
    assert!(!ok);
    assert!(
        err.contains("KV cache of 1000000000 positions") && err.contains("or less"),
        "{err}"
    );
}

/// A generation cut short by a full context says so.
#[test]
fn a_full_context_is_said() {
    let m = model("smollm2");
    let (ok, _, err) = ferry(&[
        "run",
        "-m",
        m.to_str().unwrap(),
        "--device",
        "cpu",
        "-c",
        "16",
        "-n",
        "100",
        "--temp",
        "0",
        "-p",
        "Hello",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("the context of 16 tokens is full"), "{err}");
}

/// `inspect` says how ferry reads the layers: Gemma 3's local and global
/// layers with their windows and RoPE bases.
#[test]
fn inspect_describes_the_layers() {
    let (ok, out, err) = ferry(&["inspect", model("gemma3").to_str().unwrap()]);
    assert!(ok, "{err}");
    for needle in [
        "15 layers attend over a 512-token window, RoPE base 10000",
        "3 layers attend over the whole context, RoPE base 1000000",
        "q/k norms",
        "GeluTanh",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

/// `ferry plan` for a mixture of experts shows its expert plan (which layers'
/// experts stay in host memory), and for several cards a budget per card,
/// beside one card with the same total.
#[test]
fn plan_shows_expert_placement_and_several_cards() {
    let (ok, out, err) = ferry(&[
        "plan",
        "--preset",
        "qwen3-30b-a3b",
        "--vram-budget",
        "8GiB",
        "--gpu-profile",
        "h100",
        "-c",
        "1024",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("layers' experts resident"), "{out}");
    assert!(out.contains("in host memory"), "{out}");
    let (ok, out, err) = ferry(&[
        "plan",
        "--preset",
        "qwen2.5-32b",
        "--vram-budget",
        "25%",
        "--gpu-profile",
        "2x rtx4090",
        "-c",
        "2048",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("card 0") && out.contains("card 1"), "{out}");
    assert!(out.contains("one card"), "{out}");
    let (ok, _, err) = ferry(&[
        "plan",
        "--preset",
        "qwen2.5-32b",
        "--vram-budget",
        "8GiB,8GiB,8GiB",
        "--gpu-profile",
        "2x rtx4090",
    ]);
    assert!(!ok && err.contains("3 budgets for 2 cards"), "{err}");
}
