//! The `ferry` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use ferry::backend::Backend;
use ferry::backend::cpu::CpuBackend;
use ferry::engine::{GenerationStats, Sampler, SamplerConfig, Session};
use ferry::gguf::Gguf;
use ferry::model::Model;
use ferry::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Inference for GGUF models larger than the GPU's memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct SamplingArgs {
    /// Temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.8, value_parser = non_negative)]
    temp: f32,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 0.95, value_parser = probability)]
    top_p: f32,
    /// Drop tokens less likely than P times the most likely one.
    #[arg(long, default_value_t = 0.05, value_parser = probability)]
    min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1 = off).
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
}

impl SamplingArgs {
    fn config(&self) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
            ..Default::default()
        }
    }
}

/// How `run` and `serve` place a model on a GPU within a VRAM budget.
#[derive(clap::Args, Debug)]
struct BudgetArgs {
    /// All device memory ferry may use (e.g. 8GiB, or 25% of the model); the
    /// plan streams the layers that do not fit. Default on a GPU: free device
    /// memory minus 5 %, with every layer resident when the model fits.
    #[arg(long)]
    vram_budget: Option<String>,
    /// Machine profile for the plan: auto (this machine's `ferry calibrate`
    /// result, else the built-in profile of the card), calibrated, a built-in
    /// name, or a file.
    #[arg(long, default_value = "auto")]
    gpu_profile: String,
    /// Keep streamed layers in pageable host memory instead of pinned memory
    /// (when memory cannot be page-locked; copies are several times slower).
    #[arg(long)]
    no_pin: bool,
    /// Show the plan (where every layer runs in prefill and decode) and the
    /// decode placement actually used.
    #[arg(short, long)]
    verbose: bool,
}

/// Context, threads and device: how `run` and `serve` set up a model.
#[derive(clap::Args, Debug)]
struct SetupArgs {
    /// Context size in tokens, per sequence (default: the model's training
    /// context, at most 4096).
    #[arg(short = 'c', long, value_parser = at_least_one)]
    ctx_size: Option<usize>,
    /// CPU threads (default: one per physical core).
    #[arg(short, long, default_value_t = 0, value_parser = thread_count)]
    threads: usize,
    /// Where to run: auto (the GPU if there is one), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
}

impl SetupArgs {
    /// The context to use for a model trained with `context_train` tokens.
    fn n_ctx(&self, context_train: usize) -> usize {
        self.ctx_size.unwrap_or(context_train.min(4096)).max(16)
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Model file (.gguf). Without it, the default model (SmolLM2-135M-Instruct)
    /// is used from the model cache, and fetched on first use.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// The prompt (raw text, unless --chat).
    #[arg(short, long)]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long, conflicts_with = "prompt")]
    file: Option<PathBuf>,
    /// Tokens to generate at most (generation also stops at end-of-turn).
    #[arg(short = 'n', long, default_value_t = 256)]
    n_predict: usize,
    #[command(flatten)]
    setup: SetupArgs,
    /// Interactive chat with the model's chat template (-p, if given, is the first message).
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Print special tokens (e.g. <|im_end|>) in the output.
    #[arg(long)]
    show_special: bool,
    #[command(flatten)]
    budget: BudgetArgs,
    /// Tokens per prefill micro-batch.
    #[arg(long = "ub", default_value_t = 512, value_parser = at_least_one)]
    ubatch: usize,
    /// Write a Chrome/Perfetto trace of the prefill's copies and per-layer
    /// compute (with --vram-budget on a GPU); `ferry trace-svg` draws it.
    #[arg(long)]
    trace: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Model files, comma separated.
    #[arg(short, long, value_delimiter = ',', required = true)]
    model: Vec<PathBuf>,
    /// Prompt lengths to test (ppN), comma separated; 0 skips.
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<usize>,
    /// Generation lengths to test (tgN), comma separated; 0 skips.
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Prompt then generation, as "P,N" (ppP+tgN).
    #[arg(long = "pg")]
    pg: Option<String>,
    /// Context depths, comma separated: each test starts with this many
    /// tokens already in the cache (prefilled, not timed), e.g. -d 0,8192 for
    /// decode speed at an empty and an 8K context.
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    n_depth: Vec<usize>,
    /// Repetitions of each test (after one warm-up).
    #[arg(short = 'r', long, default_value_t = 5)]
    repetitions: usize,
    /// CPU threads, comma separated (0 = physical cores).
    #[arg(short = 't', long, value_delimiter = ',', default_value = "0")]
    threads: Vec<usize>,
    /// Micro-batch: tokens per forward pass during prefill.
    #[arg(long = "ub", default_value_t = 512, value_parser = at_least_one)]
    ubatch: usize,
    /// Logical batch (llama-bench's -b); prefill is split into micro-batches of --ub.
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    batch: usize,
    /// Output format: md, json, jsonl or csv.
    #[arg(short = 'o', long, default_value = "md")]
    output: String,
    /// Where to run: auto (the GPU if there is one), cpu or cuda.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// With --device cuda: VRAM budgets to plan for (e.g. 4GiB,8GiB); layers that do
    /// not fit are streamed from pinned host memory during prefill.
    #[arg(long, value_delimiter = ',')]
    vram_budget: Vec<String>,
    /// Machine profile the planner uses with --vram-budget: auto (this
    /// machine's `ferry calibrate` result, else the card's built-in profile),
    /// a built-in name, or a file.
    #[arg(long, default_value = "auto")]
    gpu_profile: String,
    /// With --vram-budget: stream (copies overlapped with compute, once per
    /// prompt; decode placed per layer by the cost model), sync (llama.cpp's
    /// mechanism: a synchronous upload of each layer for every micro-batch),
    /// static (non-resident layers always on the CPU), cpu (the whole model on
    /// the CPU, for comparison).
    #[arg(long, value_delimiter = ',', default_value = "stream")]
    mode: Vec<String>,
    /// Write a Chrome/Perfetto trace of each streamed prefill test's last
    /// repetition (one file per budget and test when there are several).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Keep streamed layers in pageable host memory instead of pinned memory.
    #[arg(long)]
    no_pin: bool,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Model file (.gguf). Without it, the default model (SmolLM2-135M-Instruct)
    /// from the model cache.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Address to listen on. The default accepts only local connections; to
    /// listen on a network, pass e.g. 0.0.0.0 together with --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "FERRY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Sequences decoded together in one batch.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    parallel: usize,
    /// Requests that may wait for a free sequence beyond --parallel; more get 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    #[command(flatten)]
    setup: SetupArgs,
    /// Largest request body accepted, e.g. 4MiB.
    #[arg(long, default_value = "4MiB")]
    max_body: String,
    /// Prompt tokens prefilled at a time, between decode steps of the other sequences.
    #[arg(long = "ub", default_value_t = 512, value_parser = at_least_one)]
    ubatch: usize,
    /// Model name reported by /v1/models (default: the file name without .gguf).
    #[arg(long)]
    alias: Option<String>,
    #[command(flatten)]
    budget: BudgetArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models,
    /// /health, /metrics), decoding parallel requests together.
    Serve(ServeArgs),
    /// Check the CUDA backend against the CPU backend: logits of a prefill and
    /// of greedy decode steps, on the given models and on synthetic models of
    /// every weight type. Prints a pass/fail table.
    GpuCheck {
        /// Model files to check.
        models: Vec<PathBuf>,
        /// Also write and check synthetic models of every weight type in this directory.
        #[arg(long)]
        synthetic: Option<PathBuf>,
        /// Largest accepted max |Δ logit| / logit range.
        #[arg(long, default_value_t = 0.05)]
        tolerance: f32,
    },
    /// Plan a model's placement for a VRAM budget: resident layers, streaming
    /// slots, KV cache, decode placement, predicted speeds. With --gpu-profile
    /// it plans for a machine you don't have.
    Plan {
        /// Model file (or --preset).
        #[arg(short, long, required_unless_present = "preset")]
        model: Option<PathBuf>,
        /// Plan for a synthetic preset's shape instead of a file (with --quant).
        #[arg(long, conflicts_with = "model")]
        preset: Option<String>,
        /// The preset's weight types: a mix (q4_k_m, q5_k_m) or one type (q4_k, q8_0, ...).
        #[arg(long, default_value = "q4_k_m")]
        quant: String,
        /// All device memory ferry may use, e.g. 8GiB, or a percentage of the model (25%).
        #[arg(long)]
        vram_budget: String,
        #[arg(short = 'c', long, default_value_t = 4096, value_parser = at_least_one)]
        ctx_size: usize,
        #[arg(long = "ub", default_value_t = 512, value_parser = at_least_one)]
        ubatch: usize,
        /// Sequences decoded together.
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        parallel: usize,
        /// auto (this machine's `ferry calibrate` result, else h100), calibrated,
        /// a built-in GPU (h100, h200, a100-80g, l40s, rtx4090, rtx3090, l4) or a profile file.
        #[arg(long, default_value = "auto")]
        gpu_profile: String,
        /// Plan as `run --no-pin` does: streamed layers in pageable host memory
        /// (copies at the pageable rate, holding the host), embeddings on the device.
        #[arg(long)]
        no_pin: bool,
    },
    /// Measure this machine's pinned host-to-device copy bandwidth (the figure
    /// the planner's streaming predictions rest on).
    Calibrate {
        /// Bytes per copy.
        #[arg(long, default_value = "1GiB")]
        size: String,
        #[arg(long, default_value_t = 5)]
        repetitions: usize,
        /// Where to write the machine profile (default ~/.cache/ferry/machine.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only time the prompt-attention kernel (8K tokens, the 7B and 32B
        /// head shapes) and write no profile.
        #[arg(long)]
        attention: bool,
    },
    /// Write a model with random weights in the shape of a real one (llama
    /// architecture; presets: tiny, qwen2.5-0.5b, llama-1b, qwen2.5-7b,
    /// llama3-8b, qwen2.5-32b). The file says in its metadata that its weights are random.
    Synth {
        #[arg(long)]
        preset: String,
        /// Weight types: a mix (q4_k_m, q5_k_m) or one type for every matrix
        /// (q4_0, q8_0, q6_k, f16, ...).
        #[arg(long, default_value = "q4_k_m")]
        quant: String,
        /// Copy the tokenizer (and so the vocabulary size) from this model.
        #[arg(long)]
        vocab_from: Option<PathBuf>,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Keep only the preset's first N layers (small files for tests).
        #[arg(long)]
        layers: Option<u64>,
        out: PathBuf,
    },
    /// Write a copy of a model that keeps only its first N layers (real weights
    /// small enough to carry around for checks).
    Truncate {
        model: PathBuf,
        #[arg(long)]
        layers: usize,
        out: PathBuf,
    },
    /// Measure prefill (ppN) and generation (tgN) speed, llama-bench style.
    Bench(BenchArgs),
    /// Generate text from a prompt, or chat (--chat). Text goes to stdout, timings to stderr.
    Run(RunArgs),
    /// Draw a trace written by --trace as an SVG timeline (copy and compute streams).
    TraceSvg {
        trace: PathBuf,
        /// Output file (default: the trace's name with .svg).
        #[arg(short, long)]
        out: Option<PathBuf>,
        #[arg(long)]
        title: Option<String>,
    },
    /// Show a model's architecture, hyperparameters, tensors by type, bytes per layer and tokenizer.
    Inspect {
        /// Model file (.gguf; any part of a split model).
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the token ids of a text as a JSON array.
    Tokenize {
        /// Model file whose tokenizer to use.
        #[arg(short, long)]
        model: PathBuf,
        /// Treat special tokens written in the text (e.g. <|im_start|>) as plain text.
        #[arg(long)]
        no_special: bool,
        /// Do not add the BOS/EOS tokens the model asks for.
        #[arg(long)]
        no_bos: bool,
        /// Read the text from a file instead of the command line.
        #[arg(short, long, conflicts_with = "text")]
        file: Option<PathBuf>,
        /// The text to tokenize.
        #[arg(required_unless_present = "file")]
        text: Option<String>,
    },
}

/// `--temp`: a finite number ≥ 0.
fn non_negative(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s} is not a finite number ≥ 0 (0: greedy)")),
    }
}

/// `--top-p`, `--min-p`: a probability, 0 to 1.
fn probability(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s} is not a probability between 0 and 1")),
    }
}

/// `--repeat-penalty`: a finite number > 0 (1: off).
fn positive(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s} is not a finite number > 0 (1: off)")),
    }
}

/// Context sizes, micro-batches, parallel sequences: at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(format!("{s} is not a whole number ≥ 1")),
    }
}

/// `-t`: 0 (one per physical core) up to the machine's logical cores.
fn thread_count(s: &str) -> Result<usize, String> {
    let most = std::thread::available_parallelism().map_or(1, |n| n.get());
    match s.parse::<usize>() {
        Ok(v) if v <= most => Ok(v),
        Ok(v) => Err(format!(
            "{v} threads is more than this machine's {most} logical cores; pass 0 (one per physical core) or at most {most}"
        )),
        Err(_) => Err(format!(
            "{s} is not a thread count (0: one per physical core)"
        )),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run_model(args)?,
        Command::Serve(args) => serve_model(args)?,
        Command::TraceSvg { trace, out, title } => {
            let text = std::fs::read_to_string(&trace)
                .with_context(|| format!("reading {}", trace.display()))?;
            let spans = ferry::engine::trace::from_chrome_json(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", trace.display()))?;
            let out = out.unwrap_or_else(|| trace.with_extension("svg"));
            let title = title.unwrap_or_else(|| trace.display().to_string());
            std::fs::write(&out, ferry::engine::trace::to_svg(&spans, &title))
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} ({} spans)", out.display(), spans.len());
        }
        Command::GpuCheck {
            models,
            synthetic,
            tolerance,
        } => ferry::gpu_check::run(models, synthetic, tolerance)?,
        Command::Plan {
            model,
            preset,
            quant,
            vram_budget,
            ctx_size,
            ubatch,
            parallel,
            gpu_profile,
            no_pin,
        } => {
            use ferry::plan::{CostModel, MachineProfile, ModelShape, PlanRequest};
            let mix = ferry::synth::QuantMix::parse(&quant).with_context(|| {
                format!("unknown quantization '{quant}' (a weight type such as q4_k, or q4_k_m / q5_k_m)")
            })?;
            let shape = match (&model, &preset) {
                (Some(m), _) => ModelShape::from_gguf(&Gguf::open(m)?)?,
                (None, Some(p)) => ferry::plan::preset_shape_mix(p, mix)
                    .with_context(|| format!("unknown preset '{p}'"))?,
                (None, None) => anyhow::bail!("pass -m MODEL or --preset NAME"),
            };
            let profile = MachineProfile::load(&gpu_profile)
                .map_err(anyhow::Error::msg)?
                .for_host_memory(!no_pin);
            let model_bytes =
                shape.layer_bytes.iter().sum::<u64>() + shape.embd_bytes + shape.output_bytes;
            let budget = budget_from(&vram_budget, model_bytes)?;
            let req = PlanRequest {
                budget,
                n_ctx: ctx_size,
                ubatch,
                n_parallel: parallel,
                host_embeddings: !no_pin,
            };
            let cost = CostModel::new(profile.clone());
            let plan = ferry::plan::plan(&shape, &req, &cost)?;
            print!("{}", plan.describe(&shape, &profile));
        }
        Command::Calibrate {
            size,
            repetitions,
            out,
            attention,
        } => {
            use ferry::plan::{GpuProfile, MachineProfile};
            let cuda = ferry::backend::cuda::CudaBackend::new(0)?;
            // Not part of the profile: the speed of ferry's own prompt-attention
            // kernel at an 8K context, for the head shapes of Qwen2.5-7B and -32B.
            let time_attention = || -> anyhow::Result<()> {
                let kernel = if cuda.flash_wgmma() {
                    "warpgroup MMAs"
                } else {
                    "mma.sync"
                };
                for (label, heads) in [("7B", (28, 4, 128)), ("32B", (40, 8, 128))] {
                    let (ms, tf) = cuda.measure_attention(heads, 8192, repetitions)?;
                    println!(
                        "prompt attention ({kernel}), 8192 tokens, causal, {label} heads {heads:?}: {ms:.2} ms, {tf:.0} TFLOP/s"
                    );
                }
                Ok(())
            };
            if attention {
                return time_attention();
            }
            let bytes = ferry::plan::parse_size(&size).map_err(anyhow::Error::msg)? as usize;
            let (pinned, pageable) = cuda.measure_h2d(bytes, repetitions)?;
            println!(
                "{}: host-to-device {:.1} GB/s pinned, {:.1} GB/s pageable ({} per copy, median of {})",
                cuda.name(),
                pinned,
                pageable,
                ferry::plan::HumanBytes(bytes as u64),
                repetitions
            );
            let hbm = cuda.measure_hbm(bytes, repetitions)?;
            println!("device memory: {hbm:.0} GB/s (device-to-device copy)");
            let tflops = cuda.measure_gemm_tflops(4096, 8192, repetitions)?;
            println!("GEMM (f16 in, f32 accumulate, 4096 x 8192 x 8192): {tflops:.0} TFLOP/s");
            let gemv = ferry::plan::calibrate::measure_cuda_gemv(&cuda, repetitions)?;
            println!(
                "decode GEMV (Q4_K, 1 token, 27648 x 5120 and 5120 x 27648): {gemv:.0} GB/s = {:.0} % of device memory",
                100.0 * gemv / hbm
            );
            time_attention()?;
            let cpu = CpuBackend::new(0);
            let host_read = cpu.measure_read_gbps(bytes.max(1 << 30), repetitions);
            println!(
                "host memory read: {:.1} GB/s with {} threads",
                host_read,
                cpu.threads()
            );
            let mut cpu_profile = cpu.run(|| ferry::plan::calibrate::measure_cpu(&cpu))?;
            cpu_profile.host_read_gbps = host_read;
            println!(
                "CPU Q4_K matrix-vector: {:.1} GB/s; matrix-matrix (256 tokens): {:.0} GFLOP/s",
                cpu_profile.gemv_gbps, cpu_profile.gemm_gflops
            );
            let (_, total) = cuda.free_memory()?;
            let profile = MachineProfile {
                gpu: GpuProfile {
                    name: format!("{} (calibrated)", cuda.name()),
                    vram_bytes: total as u64,
                    h2d_gbps: pinned,
                    h2d_pageable_gbps: pageable,
                    copies_block_host: false,
                    bf16_tflops: tflops,
                    hbm_gbps: hbm,
                    gemv_gbps: gemv,
                },
                cpu: cpu_profile,
            };
            let out = out.unwrap_or_else(ferry::plan::calibrate::default_profile_path);
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&out, serde_json::to_string_pretty(&profile)?)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {} (plan and bench use it with --gpu-profile calibrated)",
                out.display()
            );
        }
        Command::Synth {
            preset,
            quant,
            vocab_from,
            seed,
            layers,
            out,
        } => {
            let mix = ferry::synth::QuantMix::parse(&quant).with_context(|| {
                format!(
                    "unknown quantization '{quant}'; use q4_k_m, q5_k_m, q4_0, q8_0, q6_k, f16, ..."
                )
            })?;
            let mut spec = ferry::synth::TinySpec::preset(&preset, ferry::quant::GgmlType::Q8_0)
                .with_context(|| {
                    let names: Vec<&str> = ferry::synth::PRESETS.iter().map(|p| p.name).collect();
                    format!("unknown preset '{preset}'; known: {}", names.join(", "))
                })?;
            spec.mix = Some(mix);
            spec.seed = seed;
            if let Some(n) = layers {
                anyhow::ensure!(
                    (1..=spec.n_layers).contains(&n),
                    "--layers {n}: the preset '{preset}' has {} layers; keep 1 to {} of them",
                    spec.n_layers,
                    spec.n_layers
                );
                spec.n_layers = n;
            }
            let vocab = vocab_from.as_ref().map(Gguf::open).transpose()?;
            let t0 = std::time::Instant::now();
            ferry::synth::write_random_model(&out, &spec, vocab.as_ref())?;
            let size = std::fs::metadata(&out)?.len();
            eprintln!(
                "wrote {} ({:.2} GiB) in {:.1} s",
                out.display(),
                size as f64 / (1u64 << 30) as f64,
                t0.elapsed().as_secs_f64()
            );
        }
        Command::Truncate { model, layers, out } => {
            let have = ferry::model::Config::from_gguf(&Gguf::open(&model)?)?.n_layers;
            anyhow::ensure!(
                (1..=have).contains(&layers),
                "--layers {layers}: {} has {have} layers; keep 1 to {have} of them",
                model.display()
            );
            ferry::synth::truncate_layers(&model, &out, layers)?;
            eprintln!("wrote {} ({} layers)", out.display(), layers);
        }
        Command::Bench(args) => bench(args)?,
        Command::Inspect { model, json } => {
            let g = Gguf::open(&model)?;
            let s = ferry::inspect::summarize(&g);
            if json {
                println!("{}", serde_json::to_string_pretty(&s.json)?);
            } else {
                print!("{}", s.text);
            }
        }
        Command::Tokenize {
            model,
            no_special,
            no_bos,
            file,
            text,
        } => {
            let text = match file {
                Some(f) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?,
                None => text.unwrap_or_default(),
            };
            let g = Gguf::open(&model)?;
            let tok = Tokenizer::from_gguf(&g).with_context(|| format!("{}", model.display()))?;
            let ids = tok.encode(&text, !no_bos, !no_special);
            println!("{}", serde_json::to_string(&ids)?);
        }
    }
    Ok(())
}

/// Load a model onto the CPU backend with a progress bar on stderr.
/// Which device runs the model.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DeviceArg {
    /// The GPU when there is one, else the CPU (said once on stderr).
    Auto,
    Cpu,
    Cuda,
}

enum Device {
    Cpu(CpuBackend),
    Cuda(Box<ferry::backend::cuda::CudaBackend>),
}

fn open_device(choice: DeviceArg, threads: usize) -> Result<Device> {
    use ferry::backend::cuda::{CudaBackend, availability};
    Ok(match choice {
        DeviceArg::Cpu => Device::Cpu(CpuBackend::new(threads)),
        DeviceArg::Cuda => Device::Cuda(Box::new(
            CudaBackend::new(0).map_err(|e| anyhow::anyhow!("--device cuda: {e}"))?,
        )),
        DeviceArg::Auto => match availability() {
            Ok(()) => Device::Cuda(Box::new(CudaBackend::new(0)?)),
            Err(why) => {
                eprintln!("ferry: no GPU ({why}); running on the CPU");
                Device::Cpu(CpuBackend::new(threads))
            }
        },
    })
}

/// Load a model onto a backend with a progress bar on stderr.
fn load_model<B: Backend + Sync>(backend: &B, g: &Gguf, path: &std::path::Path) -> Result<Model<B>>
where
    B::Weight: Send,
    B::Vector: Send,
{
    let total = g.total_tensor_bytes();
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {bytes}/{total_bytes}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let per_layer = total / (ferry::model::Config::from_gguf(g)?.n_layers.max(1) as u64);
    let model = backend.run(|| {
        Model::load(backend, g, |done, _| {
            bar.set_position(done as u64 * per_layer)
        })
    })?;
    bar.finish_and_clear();
    Ok(model)
}

fn print_stats(s: &GenerationStats, load_secs: Option<f64>) {
    if let Some(l) = load_secs {
        eprintln!("load:    {:.2} s", l);
    }
    eprintln!(
        "prefill: {} tokens in {:.3} s, {:.1} tokens/s",
        s.prefilled_tokens,
        s.prefill_secs,
        s.prefill_tps()
    );
    eprintln!(
        "decode:  {} tokens in {:.3} s, {:.1} tokens/s",
        s.generated_tokens,
        s.decode_secs,
        s.decode_tps()
    );
}

fn run_model(args: RunArgs) -> Result<()> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => ferry::fetch::default_model()?,
    };
    let t0 = std::time::Instant::now();
    let g = Gguf::open(&path)?;
    match open_device(args.setup.device, args.setup.threads)? {
        Device::Cpu(b) => {
            if args.budget.vram_budget.is_some() {
                anyhow::bail!("--vram-budget needs a GPU (--device cuda)");
            }
            run_on(&b, &g, &path, &args, t0)
        }
        Device::Cuda(b) => match gpu_budget(&b, &g, &args.budget, &args.setup, args.ubatch, 1)? {
            None => run_on(&*b, &g, &path, &args, t0),
            Some(budget) => run_planned(&b, &g, &path, &args, budget, t0),
        },
    }
}

/// Runs one generation: `(cached, prompt, max_new, sampler, is_eog, on_token)`.
type GenerateFn<'a> = dyn FnMut(
        &[u32],
        &[u32],
        usize,
        &mut Sampler,
        &(dyn Fn(u32) -> bool + Sync),
        &mut (dyn FnMut(u32) -> bool + Send),
    ) -> Result<(Vec<u32>, GenerationStats), ferry::backend::BackendError>
    + 'a;

fn run_on<B: Backend + Sync>(
    backend: &B,
    g: &Gguf,
    path: &std::path::Path,
    args: &RunArgs,
    t0: std::time::Instant,
) -> Result<()>
where
    B::Weight: Send + Sync,
    B::Vector: Send + Sync,
    B::Kv: Send,
    B::Act: Send,
{
    let model = load_model(backend, g, path)?;
    let load_secs = t0.elapsed().as_secs_f64();
    let n_ctx = args.setup.n_ctx(model.config.context_train);
    let mut session = Session::new(backend, &model, n_ctx, 1)?;
    // The whole loop runs on the backend's pool, so that every operation's
    // parallel section starts without a cross-thread hand-off.
    let mut generate = |cached: &[u32],
                        prompt: &[u32],
                        max_new: usize,
                        sampler: &mut Sampler,
                        is_eog: &(dyn Fn(u32) -> bool + Sync),
                        on_token: &mut (dyn FnMut(u32) -> bool + Send)| {
        backend.run(|| session.generate(0, cached, prompt, max_new, sampler, is_eog, on_token))
    };
    converse(
        &mut generate,
        g,
        path,
        args,
        n_ctx,
        model.config.context_train,
        load_secs,
    )
}

/// The text and chat loops of `ferry run`, over any way to generate.
fn converse(
    generate: &mut GenerateFn,
    g: &Gguf,
    path: &std::path::Path,
    args: &RunArgs,
    n_ctx: usize,
    context_train: usize,
    load_secs: f64,
) -> Result<()> {
    use std::io::Write;
    let tok = Tokenizer::from_gguf(g).with_context(|| path.display().to_string())?;
    let mut sampler = Sampler::new(args.sampling.config());
    let is_eog = |t: u32| tok.is_eog(t);
    let prompt_text = match (&args.prompt, &args.file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?)
        }
        (None, None) => None,
    };
    let stdout = std::io::stdout();

    if !args.chat {
        let text = prompt_text.context("no prompt: pass -p TEXT, -f FILE, or --chat")?;
        let prompt = tok.encode(&text, true, true);
        if prompt.len() >= n_ctx {
            anyhow::bail!(
                "the prompt is {} tokens but the context holds {n_ctx}; pass a larger -c (the model was trained with {context_train}) or a shorter prompt",
                prompt.len(),
            );
        }
        let max_new = args.n_predict.min(n_ctx - prompt.len());
        let mut dec = tok.stream_decoder(args.show_special);
        let (_, stats) = generate(&[], &prompt, max_new, &mut sampler, &is_eog, &mut |t| {
            let piece = dec.push(t).unwrap_or_default();
            let mut out = std::io::stdout();
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
            true
        })?;
        let mut out = stdout.lock();
        let _ = out.write_all(dec.finish().as_bytes());
        let _ = writeln!(out);
        if !stats.stopped_by_eog && max_new < args.n_predict && stats.generated_tokens >= max_new {
            eprintln!(
                "stopped after {max_new} of the {} tokens asked for: the context of {n_ctx} tokens is full (the prompt took {}); pass a larger -c",
                args.n_predict,
                prompt.len()
            );
        }
        print_stats(&stats, Some(load_secs));
        return Ok(());
    }

    // Interactive chat: the conversation is re-rendered each turn and the KV
    // cache keeps the part of it that did not change.
    let template = ChatTemplate::for_tokenizer(&tok)?;
    let mut messages = Vec::new();
    if let Some(sys) = &args.system {
        messages.push(ChatMessage::new("system", sys.clone()));
    }
    let mut cached: Vec<u32> = Vec::new();
    let mut first = prompt_text;
    let stdin = std::io::stdin();
    eprintln!(
        "ferry chat: {} (context {n_ctx} tokens). Empty line or Ctrl-D ends.",
        path.display()
    );
    loop {
        let user = match first.take() {
            Some(p) => p,
            None => {
                eprint!("> ");
                let mut line = String::new();
                if stdin.read_line(&mut line)? == 0 {
                    break;
                }
                line.trim_end_matches(['\n', '\r']).to_string()
            }
        };
        if user.is_empty() {
            break;
        }
        messages.push(ChatMessage::new("user", user));
        let rendered = template.render(&messages, true)?;
        let prompt = tok.encode_chat(&rendered);
        if prompt.len() >= n_ctx {
            anyhow::bail!(
                "the conversation is {} tokens but the context holds {n_ctx}; restart with a larger -c",
                prompt.len()
            );
        }
        let max_new = args.n_predict.min(n_ctx - prompt.len());
        let mut dec = tok.stream_decoder(args.show_special);
        let mut reply = String::new();
        let (generated, stats) =
            generate(&cached, &prompt, max_new, &mut sampler, &is_eog, &mut |t| {
                let piece = dec.push(t).unwrap_or_default();
                reply.push_str(&piece);
                let mut out = std::io::stdout();
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
                true
            })?;
        let mut out = stdout.lock();
        let rest = dec.finish();
        reply.push_str(&rest);
        let _ = writeln!(out, "{rest}");
        drop(out);
        cached = prompt;
        cached.extend(&generated);
        messages.push(ChatMessage::new("assistant", reply));
        print_stats(&stats, None);
    }
    Ok(())
}

/// How `run` and `serve` place a model within a budget.
struct Placement<'a> {
    budget: u64,
    n_ctx: usize,
    ubatch: usize,
    parallel: usize,
    gpu_profile: &'a str,
    pin: bool,
    verbose: bool,
}

impl<'a> Placement<'a> {
    fn new(b: &'a BudgetArgs, budget: u64, n_ctx: usize, ubatch: usize, parallel: usize) -> Self {
        Placement {
            budget,
            n_ctx,
            ubatch,
            parallel,
            gpu_profile: &b.gpu_profile,
            pin: !b.no_pin,
            verbose: b.verbose,
        }
    }
}

/// Plan the model for the budget and load it that way: resident layers in
/// VRAM, the rest in (pinned) host memory, streamed in prefill and placed per
/// layer in decode. From here on every device allocation is held to the budget.
fn load_planned(
    cuda: &ferry::backend::cuda::CudaBackend,
    cpu: &CpuBackend,
    g: &Gguf,
    p: &Placement,
) -> Result<ferry::engine::hybrid::HybridModel> {
    use ferry::engine::stream::StreamedModel;
    use ferry::plan::{CostModel, MachineProfile, ModelShape, PlanRequest};
    let shape = ModelShape::from_gguf(g)?;
    let profile = MachineProfile::load(&resolve_profile(p.gpu_profile, cuda))
        .map_err(anyhow::Error::msg)?
        .for_host_memory(p.pin);
    let req = PlanRequest {
        budget: p.budget,
        n_ctx: p.n_ctx,
        ubatch: p.ubatch,
        n_parallel: p.parallel,
        host_embeddings: p.pin,
    };
    let cost = CostModel::new(profile.clone());
    let plan = ferry::plan::plan(&shape, &req, &cost)?;
    if p.verbose {
        eprint!("{}", plan.describe(&shape, &profile));
    }
    let resident: Vec<bool> = plan
        .prefill
        .iter()
        .map(|x| *x == ferry::plan::PrefillPlace::Resident)
        .collect();
    let n_res = resident.iter().filter(|r| **r).count();
    cuda.set_budget(Some(p.budget));
    eprintln!(
        "ferry: VRAM budget {}: {n_res} of {} layers resident, the rest streamed from {} host memory ({} slots)",
        ferry::plan::HumanBytes(p.budget),
        resident.len(),
        if p.pin { "pinned" } else { "pageable" },
        plan.n_slots.max(2)
    );
    let bar = indicatif::ProgressBar::new(resident.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "placing layers (resident: VRAM, the rest: host memory) [{bar:30}] {pos}/{len}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let sm = StreamedModel::load(cuda, g, &resident, plan.n_slots.max(2), p.pin, |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    // Decode steps place the layers for the batch they have (the server's
    // active sequences), by the same cost model.
    let placer = ferry::plan::DecodePlacer::new(
        cost,
        shape,
        resident,
        plan.n_slots.max(2),
        plan.output_on_gpu,
    );
    Ok(
        ferry::engine::hybrid::HybridModel::new(sm, cpu, g, plan.decode.clone())?
            .with_placer(placer),
    )
}

/// `ferry run` on the GPU within a VRAM budget: the plan keeps some layers
/// resident, streams the rest through slots during prefill, and places each
/// non-resident layer for decode (CPU or streamed) by the calibrated cost model.
fn run_planned(
    cuda: &ferry::backend::cuda::CudaBackend,
    g: &Gguf,
    path: &std::path::Path,
    args: &RunArgs,
    budget: u64,
    t0: std::time::Instant,
) -> Result<()> {
    use ferry::engine::hybrid::HybridSession;
    let config = ferry::model::Config::from_gguf(g)?;
    let n_ctx = args.setup.n_ctx(config.context_train);
    let cpu = CpuBackend::new(args.setup.threads);
    let placement = Placement::new(&args.budget, budget, n_ctx, args.ubatch, 1);
    let mut hm = load_planned(cuda, &cpu, g, &placement)?;
    hm.gpu.tracing = args.trace.is_some();
    let load_secs = t0.elapsed().as_secs_f64();
    let mut session = HybridSession::new(&mut hm, cuda, &cpu, n_ctx, 1, args.ubatch)?;
    let mut generate = |cached: &[u32],
                        prompt: &[u32],
                        max_new: usize,
                        sampler: &mut Sampler,
                        is_eog: &(dyn Fn(u32) -> bool + Sync),
                        on_token: &mut (dyn FnMut(u32) -> bool + Send)| {
        session.generate(cached, prompt, max_new, sampler, is_eog, on_token)
    };
    converse(
        &mut generate,
        g,
        path,
        args,
        n_ctx,
        config.context_train,
        load_secs,
    )?;
    if args.budget.verbose {
        // After the generated text (stdout) has ended its line.
        let d = &session.decode_stats;
        eprintln!(
            "memory handover: {} non-resident layers parked on the GPU for decode (in memory prefill used)",
            session.model.gpu.parked_layers()
        );
        eprintln!(
            "decode placement, summed over the steps: {} layer runs on the GPU, {} on the CPU, {} streamed ({:.2} GiB), {} device crossings",
            d.gpu_layers,
            d.cpu_layers,
            d.streamed_layers,
            d.streamed_bytes as f64 / (1u64 << 30) as f64,
            d.crossings
        );
    }
    if let Some(path) = &args.trace {
        std::fs::write(
            path,
            ferry::engine::trace::to_chrome_json(&session.model.gpu.last_trace),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("trace of the last prefill: {}", path.display());
    }
    eprintln!(
        "peak device memory: {} of the {} budget",
        ferry::plan::HumanBytes(cuda.peak_memory()),
        ferry::plan::HumanBytes(budget)
    );
    Ok(())
}

/// `--gpu-profile auto`: this machine's calibration if there is one, else the
/// built-in profile whose name the card's name contains (h100 as a last resort).
fn resolve_profile(choice: &str, cuda: &ferry::backend::cuda::CudaBackend) -> String {
    if choice != "auto" {
        return choice.to_string();
    }
    ferry::plan::MachineProfile::auto_name(Some(&cuda.name()))
}

fn serve_model(args: ServeArgs) -> Result<()> {
    if args.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        anyhow::bail!(
            "--api-key (or FERRY_API_KEY) is empty: a blank key would serve everyone while looking protected; pass a non-blank key, or unset it to serve without one"
        );
    }
    let path = match &args.model {
        Some(p) => p.clone(),
        None => ferry::fetch::default_model()?,
    };
    let g = Gguf::open(&path)?;
    match open_device(args.setup.device, args.setup.threads)? {
        // Parallel requests share decode steps; the batch-invariant matmul path
        // keeps each request's output independent of its company.
        Device::Cpu(b) => {
            if args.budget.vram_budget.is_some() {
                anyhow::bail!("--vram-budget needs a GPU (--device cuda)");
            }
            serve_on(&b.with_batch_invariance(args.parallel), &g, &path, &args)
        }
        Device::Cuda(b) => match gpu_budget(
            &b,
            &g,
            &args.budget,
            &args.setup,
            args.ubatch,
            args.parallel,
        )? {
            None => serve_on(&*b, &g, &path, &args),
            Some(budget) => serve_planned(&b, &g, &path, &args, budget),
        },
    }
}

fn serve_on<B: Backend + Sync>(
    backend: &B,
    g: &Gguf,
    path: &std::path::Path,
    args: &ServeArgs,
) -> Result<()>
where
    B::Weight: Send + Sync,
    B::Vector: Send + Sync,
    B::Kv: Send,
    B::Act: Send,
{
    let model = load_model(backend, g, path)?;
    let n_ctx = args.setup.n_ctx(model.config.context_train);
    let http = start_http(args, g, path, n_ctx, &backend.name())?;
    if let Some(used) = backend.device_memory_used() {
        http.metrics
            .device_memory_used
            .store(used, std::sync::atomic::Ordering::Relaxed);
    }
    let Http {
        tok,
        metrics,
        jobs,
        engine,
        thread,
    } = http;
    backend.run(|| -> Result<(), ferry::backend::BackendError> {
        let mut session = Session::new(backend, &model, n_ctx, args.parallel)?;
        session.ubatch = engine.prefill_chunk;
        ferry::server::run_engine(&mut session, &tok, &engine, jobs, &metrics)
    })?;
    join_http(thread)
}

/// `ferry serve` on a GPU within a VRAM budget: the hybrid engine decodes the
/// parallel sequences together, each non-resident layer where the plan puts
/// it for that batch size.
fn serve_planned(
    cuda: &ferry::backend::cuda::CudaBackend,
    g: &Gguf,
    path: &std::path::Path,
    args: &ServeArgs,
    budget: u64,
) -> Result<()> {
    use ferry::engine::hybrid::HybridSession;
    let config = ferry::model::Config::from_gguf(g)?;
    let n_ctx = args.setup.n_ctx(config.context_train);
    let cpu = CpuBackend::new(args.setup.threads);
    let placement = Placement::new(&args.budget, budget, n_ctx, args.ubatch, args.parallel);
    let mut hm = load_planned(cuda, &cpu, g, &placement)?;
    let mut http = start_http(args, g, path, n_ctx, &format!("{} + CPU", cuda.name()))?;
    // A prompt is prefilled in one layer-major pass (micro-batched inside by
    // --ub), so each streamed layer crosses PCIe once per prompt rather than
    // once per scheduler chunk.
    http.engine.prefill_chunk = n_ctx;
    let mut session = HybridSession::new(
        &mut hm,
        cuda,
        &cpu,
        n_ctx,
        args.parallel,
        args.ubatch.max(1),
    )?;
    http.metrics
        .device_memory_used
        .store(cuda.peak_memory(), std::sync::atomic::Ordering::Relaxed);
    ferry::server::run_engine(
        &mut session,
        &http.tok,
        &http.engine,
        http.jobs,
        &http.metrics,
    )?;
    join_http(http.thread)
}

/// The HTTP side of `ferry serve`, listening; the engine runs on the caller's thread.
struct Http {
    tok: std::sync::Arc<Tokenizer>,
    metrics: std::sync::Arc<ferry::server::metrics::Metrics>,
    jobs: std::sync::mpsc::Receiver<ferry::server::scheduler::Job>,
    engine: ferry::server::EngineConfig,
    thread: std::thread::JoinHandle<Result<()>>,
}

fn start_http(
    args: &ServeArgs,
    g: &Gguf,
    path: &std::path::Path,
    n_ctx: usize,
    device: &str,
) -> Result<Http> {
    use ferry::server::{EngineConfig, ServeOptions, Server, metrics::Metrics};
    use std::sync::Arc;
    let max_body = ferry::plan::parse_size(&args.max_body).map_err(anyhow::Error::msg)? as usize;
    if !is_loopback(&args.host) && args.api_key.is_none() {
        eprintln!(
            "ferry serve: warning: listening on {} without --api-key: anyone who can reach it can use it",
            args.host
        );
    }
    let tok = Arc::new(Tokenizer::from_gguf(g).with_context(|| path.display().to_string())?);
    let cfg = ferry::model::Config::from_gguf(g)?;
    let metrics = Arc::new(Metrics::default());
    // f16 keys and values for every layer, slot and position.
    let kv_bytes = (cfg.n_layers * args.parallel * n_ctx * cfg.kv_width() * 2 * 2) as u64;
    metrics
        .weight_bytes
        .store(g.total_tensor_bytes(), std::sync::atomic::Ordering::Relaxed);
    metrics
        .kv_cache_bytes
        .store(kv_bytes, std::sync::atomic::Ordering::Relaxed);
    let model_id = args.alias.clone().unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
            .unwrap_or_else(|| "model".into())
    });
    let opts = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        api_key: args.api_key.clone(),
        parallel: args.parallel,
        queue: args.queue,
        n_ctx,
        max_body_bytes: max_body,
        model_id: model_id.clone(),
    };
    let (jobs_tx, jobs) = std::sync::mpsc::channel();
    let server = Server::new(&opts, tok.clone(), jobs_tx, metrics.clone());
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let (host, port) = (args.host.clone(), args.port);
    let thread = std::thread::Builder::new()
        .name("ferry-http".into())
        .spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(ferry::server::serve(server, &host, port, |addr| {
                let _ = bound_tx.send(addr);
            }))
        })?;
    let Ok(addr) = bound_rx.recv() else {
        join_http(thread)?;
        anyhow::bail!("the HTTP server stopped before listening");
    };
    eprintln!(
        "ferry serve: {model_id} on http://{addr} ({device} on {}, {} parallel sequences of {n_ctx} tokens, queue {})",
        cfg.arch.name(),
        args.parallel,
        args.queue
    );
    Ok(Http {
        tok,
        metrics,
        jobs,
        engine: EngineConfig {
            parallel: args.parallel,
            n_ctx,
            prefill_chunk: args.ubatch.max(1),
        },
        thread,
    })
}

fn join_http(thread: std::thread::JoinHandle<Result<()>>) -> Result<()> {
    match thread.join() {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("the HTTP thread panicked")),
    }
}

/// The budget to plan within on a GPU, or `None` when no budget was asked for
/// and the planner keeps every layer resident within the default budget (free
/// memory minus 5 %): the resident engine, same kernels, then runs the model.
fn gpu_budget(
    cuda: &ferry::backend::cuda::CudaBackend,
    g: &Gguf,
    budget_args: &BudgetArgs,
    setup: &SetupArgs,
    ubatch: usize,
    parallel: usize,
) -> Result<Option<u64>> {
    use ferry::plan::{CostModel, MachineProfile, ModelShape, PlanRequest};
    let model_bytes = g.total_tensor_bytes();
    if let Some(s) = &budget_args.vram_budget {
        return Ok(Some(budget_from(s, model_bytes)?));
    }
    let (free, _) = cuda.free_memory()?;
    let budget = (free as u64) / 100 * 95;
    let shape = ModelShape::from_gguf(g)?;
    let profile = MachineProfile::load(&resolve_profile(&budget_args.gpu_profile, cuda))
        .map_err(anyhow::Error::msg)?
        .for_host_memory(!budget_args.no_pin);
    let req = PlanRequest {
        budget,
        n_ctx: setup.n_ctx(ferry::model::Config::from_gguf(g)?.context_train),
        ubatch,
        n_parallel: parallel,
        host_embeddings: !budget_args.no_pin,
    };
    // A budget too small for any plan goes to the planned path, which says so.
    let all_resident = ferry::plan::plan(&shape, &req, &CostModel::new(profile))
        .is_ok_and(|p| p.resident_layers() == shape.n_layers);
    Ok((!all_resident).then_some(budget))
}

/// A budget as a size (8GiB) or a percentage of the model's bytes (25%).
fn budget_from(s: &str, model_bytes: u64) -> Result<u64> {
    Ok(match s.strip_suffix('%') {
        Some(p) => {
            let p: f64 = p
                .trim()
                .parse()
                .with_context(|| format!("--vram-budget {s}: not a percentage"))?;
            if !(p.is_finite() && p > 0.0 && p <= 100.0) {
                anyhow::bail!(
                    "--vram-budget {s}: a percentage of the model must be above 0 and at most 100; give a larger budget in bytes (e.g. 24GiB)"
                );
            }
            (p / 100.0 * model_bytes as f64) as u64
        }
        None => ferry::plan::parse_size(s).map_err(anyhow::Error::msg)?,
    })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn bench(args: BenchArgs) -> Result<()> {
    use ferry::bench::Test;
    let mut tests: Vec<Test> = Vec::new();
    tests.extend(
        args.n_prompt
            .iter()
            .filter(|&&p| p > 0)
            .map(|&p| Test::Prompt(p)),
    );
    tests.extend(
        args.n_gen
            .iter()
            .filter(|&&n| n > 0)
            .map(|&n| Test::Generate(n)),
    );
    if let Some(pg) = &args.pg {
        let (p, n) = pg
            .split_once(',')
            .and_then(|(p, n)| Some((p.trim().parse().ok()?, n.trim().parse().ok()?)))
            .context("--pg takes two numbers, as in --pg 512,128")?;
        tests.push(Test::PromptGenerate(p, n));
    }
    if !["md", "json", "jsonl", "csv"].contains(&args.output.as_str()) {
        anyhow::bail!("-o must be md, json, jsonl or csv");
    }
    if let Some(bad) = args
        .mode
        .iter()
        .find(|m| !["stream", "sync", "static", "cpu"].contains(&m.as_str()))
    {
        anyhow::bail!("--mode {bad}: the modes are stream, sync, static and cpu");
    }
    if !args.vram_budget.is_empty() && args.n_depth.iter().any(|&d| d > 0) {
        anyhow::bail!("--n-depth measures resident runs; leave out --vram-budget");
    }
    let mut results: Vec<ferry::bench::BenchResult> = Vec::new();
    for path in &args.model {
        for &threads in &args.threads {
            let g = Gguf::open(path)?;
            let r = match open_device(args.device, threads)? {
                Device::Cpu(b) => {
                    if !args.vram_budget.is_empty() {
                        anyhow::bail!("--vram-budget needs --device cuda");
                    }
                    bench_on(&b, &g, path, b.threads(), &args, &tests)?
                }
                Device::Cuda(b) if !args.vram_budget.is_empty() => {
                    let mut r = bench_streamed(&b, &g, path, &args, &tests)?;
                    // `cpu` beside the budgeted modes: the whole model on the CPU.
                    if args.mode.iter().any(|m| m == "cpu") {
                        let cpu = CpuBackend::new(threads);
                        r.extend(bench_on(&cpu, &g, path, cpu.threads(), &args, &tests)?);
                    }
                    r
                }
                Device::Cuda(b) => bench_on(&*b, &g, path, 0, &args, &tests)?,
            };
            results.extend(r);
        }
    }
    print_bench(&results, &args.output)
}

fn bench_on<B: Backend + Sync>(
    backend: &B,
    g: &Gguf,
    path: &std::path::Path,
    n_threads: usize,
    args: &BenchArgs,
    tests: &[ferry::bench::Test],
) -> Result<Vec<ferry::bench::BenchResult>>
where
    B::Weight: Send + Sync,
    B::Vector: Send + Sync,
    B::Kv: Send,
    B::Act: Send,
{
    use ferry::bench::BenchSetup;
    let mut results = Vec::new();
    {
        {
            let model = load_model(backend, g, path)?;
            let (model_type, model_n_params) = model_description(g);
            let mut setup = BenchSetup {
                backend,
                model: &model,
                meta: ferry::bench::ResultMeta {
                    model_filename: path.display().to_string(),
                    model_type,
                    model_size: g.total_tensor_bytes(),
                    model_n_params,
                    backends: if n_threads > 0 { "CPU" } else { "CUDA" }.into(),
                    n_threads,
                    n_batch: args.batch,
                    n_ubatch: args.ubatch.min(args.batch),
                    mode: if n_threads > 0 { "cpu" } else { "resident" }.into(),
                    vram_budget: None,
                },
                repetitions: args.repetitions,
                depth: 0,
            };
            for &depth in &args.n_depth {
                setup.depth = depth;
                for &t in tests {
                    let r = ferry::bench::run_test(&setup, t)?;
                    if args.output == "jsonl" {
                        println!("{}", serde_json::to_string(&r)?);
                    } else {
                        eprintln!("{}: {:.2} ± {:.2} t/s", r.test, r.avg_ts, r.stddev_ts);
                    }
                    results.push(r);
                }
            }
        }
    }
    Ok(results)
}

/// Tests within a VRAM budget: the plan's resident layers stay on the GPU, the
/// rest live in pinned host memory. Prefill modes: `stream` (layer-major,
/// overlapped copies), `sync` (llama.cpp's mechanism: a synchronous upload per
/// layer and micro-batch), `static` (non-resident layers on the CPU). Decode
/// modes: `stream` (the plan's per-layer placement, slots reused) and `static`.
/// Each row is set against its bound: for prefill the larger of all-resident
/// compute and streamed bytes over the copy rate; for decode the bytes each
/// device reads over its measured memory bandwidth.
fn bench_streamed(
    cuda: &ferry::backend::cuda::CudaBackend,
    g: &Gguf,
    path: &std::path::Path,
    args: &BenchArgs,
    tests: &[ferry::bench::Test],
) -> Result<Vec<ferry::bench::BenchResult>> {
    use ferry::backend::Batch;
    use ferry::bench::{BenchResult, Test};
    use ferry::engine::hybrid::{HybridModel, Run};
    use ferry::engine::stream::StreamedModel;
    use ferry::plan::{CostModel, MachineProfile, ModelShape, PlanRequest};
    let shape = ModelShape::from_gguf(g)?;
    let profile = MachineProfile::load(&resolve_profile(&args.gpu_profile, cuda))
        .map_err(anyhow::Error::msg)?
        .for_host_memory(!args.no_pin);
    let cost = CostModel::new(profile);
    let model_bytes = g.total_tensor_bytes();
    let cpu = CpuBackend::new(args.threads.first().copied().unwrap_or(0));
    let hbm_gbps = cuda.measure_hbm(1 << 30, 3)?;
    let host_gbps = cpu.measure_read_gbps(1 << 30, 3);
    // The copy rate of the host memory this run streams from.
    let (pinned_gbps, pageable_gbps) = cuda.measure_h2d(1 << 30, 3)?;
    let h2d_gbps = if args.no_pin {
        pageable_gbps
    } else {
        pinned_gbps
    };
    eprintln!(
        "measured: device memory {hbm_gbps:.0} GB/s, host memory read {host_gbps:.1} GB/s ({} CPU threads), host-to-device {h2d_gbps:.1} GB/s ({})\n",
        cpu.threads(),
        if args.no_pin { "pageable" } else { "pinned" }
    );
    eprintln!(
        "| mode | budget | resident layers | slots | test | t/s | streamed GiB | copy GB/s | decode placement (GPU/slot/CPU/streamed) | bound t/s | of bound | overlap bound t/s | of overlap bound | peak VRAM |"
    );
    eprintln!(
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    let (model_type, model_n_params) = model_description(g);
    let mut results = Vec::new();
    let n_ctx = tests
        .iter()
        .map(|t| match *t {
            Test::Prompt(n) => n,
            Test::Generate(n) => n + 1,
            Test::PromptGenerate(p, n) => p + n,
        })
        .max()
        .unwrap_or(1)
        + 1;
    for budget_s in &args.vram_budget {
        let budget = budget_from(budget_s, model_bytes)?;
        let req = PlanRequest {
            budget,
            n_ctx,
            ubatch: args.ubatch,
            n_parallel: 1,
            host_embeddings: !args.no_pin,
        };
        let plan = ferry::plan::plan(&shape, &req, &cost)?;
        let resident: Vec<bool> = plan
            .prefill
            .iter()
            .map(|p| *p == ferry::plan::PrefillPlace::Resident)
            .collect();
        // Everything from here on, loading included, must fit the budget.
        cuda.set_budget(Some(budget));
        let sm = StreamedModel::load(
            cuda,
            g,
            &resident,
            plan.n_slots.max(2),
            !args.no_pin,
            |_| {},
        )?;
        // Decode places the layers around those on the device (memory
        // handover parks some after each prefill), as `run` and `serve` do.
        let placer = ferry::plan::DecodePlacer::new(
            cost.clone(),
            shape.clone(),
            resident.clone(),
            plan.n_slots.max(2),
            plan.output_on_gpu,
        );
        let mut hm = HybridModel::new(sm, &cpu, g, plan.decode.clone())?.with_placer(placer);
        let n_layers = hm.gpu.model.config.n_layers;
        let n_vocab = hm.gpu.model.config.n_vocab as u32;
        let (n_resident, n_slots) = (hm.gpu.resident_layers(), hm.gpu.n_slots());
        let head = |mode: &str| {
            format!(
                "| {mode} | {} | {n_resident}/{n_layers} | {n_slots} |",
                ferry::plan::HumanBytes(budget),
            )
        };
        let meta = |mode: &str| ferry::bench::ResultMeta {
            model_filename: path.display().to_string(),
            model_type: model_type.clone(),
            model_size: model_bytes,
            model_n_params,
            backends: "CUDA+CPU".into(),
            n_threads: cpu.threads(),
            n_batch: args.batch,
            n_ubatch: args.ubatch,
            mode: mode.to_string(),
            vram_budget: Some(budget),
        };
        for &t in tests {
            match t {
                Test::Prompt(n) => {
                    let tokens: Vec<u32> = (0..n as u32)
                        .map(|i| (n_vocab / 20 + i * 7919) % (n_vocab / 2))
                        .collect();
                    let span = ferry::backend::SequenceSpan::new(0, 0, n);
                    let batch = span.batch(&tokens);
                    for mode in args.mode.iter().filter(|m| *m != "cpu") {
                        let reps = if mode == "static" {
                            args.repetitions.min(1)
                        } else {
                            args.repetitions
                        };
                        let mut times = Vec::new();
                        let mut bytes = 0u64;
                        cuda.reset_peak()?;
                        for rep in 0..=reps.max(1) {
                            let mut kv = hm.kv(cuda, &cpu, n_ctx, 1)?;
                            // The last repetition of a streamed prefill is traced:
                            // its copy and compute timings give the overlap.
                            hm.gpu.tracing = mode == "stream" && rep == reps.max(1);
                            let t0 = std::time::Instant::now();
                            match mode.as_str() {
                                "stream" => {
                                    hm.prefill(cuda, &mut kv, &batch, args.ubatch, &[n - 1])?;
                                    bytes = hm.gpu.last_streamed_bytes;
                                }
                                "sync" => {
                                    hm.gpu.forward_sync(
                                        cuda,
                                        &mut kv.gpu,
                                        &batch,
                                        args.ubatch,
                                        &[n - 1],
                                    )?;
                                    bytes = hm.gpu.last_streamed_bytes;
                                }
                                "static" => {
                                    let runs = hm.static_runs();
                                    hm.forward(cuda, &cpu, &mut kv, &batch, &runs, &[n - 1])?;
                                    bytes = 0;
                                }
                                other => anyhow::bail!(
                                    "--mode {other}: with --vram-budget the modes are stream, sync, static and cpu"
                                ),
                            };
                            if rep > 0 {
                                times.push(t0.elapsed().as_secs_f64());
                            }
                        }
                        let overlap = hm
                            .gpu
                            .tracing
                            .then(|| ferry::engine::trace::overlap(&hm.gpu.last_trace))
                            .flatten();
                        let traced = std::mem::replace(&mut hm.gpu.tracing, false);
                        if traced && let Some(path) = &args.trace {
                            let several = args.vram_budget.len()
                                * tests
                                    .iter()
                                    .filter(|t| matches!(t, Test::Prompt(_)))
                                    .count()
                                > 1;
                            let path = if several {
                                let stem = path.with_extension("");
                                PathBuf::from(format!(
                                    "{}-{}-pp{n}.json",
                                    stem.display(),
                                    budget_s.trim_end_matches('%')
                                ))
                            } else {
                                path.clone()
                            };
                            std::fs::write(
                                &path,
                                ferry::engine::trace::to_chrome_json(&hm.gpu.last_trace),
                            )
                            .with_context(|| format!("writing {}", path.display()))?;
                            eprintln!("trace: {}", path.display());
                        }
                        let mean = times.iter().sum::<f64>() / times.len() as f64;
                        eprintln!(
                            "{} pp{n} | {:.1} | {:.2} | {:.1} | | | | | | {} |",
                            head(mode),
                            n as f64 / mean,
                            bytes as f64 / (1u64 << 30) as f64,
                            bytes as f64 / mean / 1e9,
                            ferry::plan::HumanBytes(cuda.peak_memory())
                        );
                        let mut r = BenchResult::from_samples(
                            &meta(mode),
                            t,
                            times.iter().map(|s| (s * 1e9) as u64).collect(),
                        );
                        r.vram_peak = Some(cuda.peak_memory());
                        r.overlap = overlap;
                        results.push(r);
                    }
                }
                Test::Generate(n) => {
                    for mode in args.mode.iter().filter(|m| *m != "cpu") {
                        if mode == "sync" {
                            // One token per step: llama.cpp runs such batches
                            // on the CPU, which is the `static` row.
                            continue;
                        }
                        let mut times = Vec::new();
                        let mut counts = [0usize; 4];
                        let mut bound_secs = 0.0;
                        let mut overlap_secs = 0.0;
                        cuda.reset_peak()?;
                        for rep in 0..=args.repetitions.max(1) {
                            let mut kv = hm.kv(cuda, &cpu, n_ctx, 1)?;
                            let first = [n_vocab / 3];
                            hm.prefill(
                                cuda,
                                &mut kv,
                                &Batch {
                                    tokens: &first,
                                    positions: &[0],
                                    seqs: &[0],
                                },
                                1,
                                &[0],
                            )?;
                            let mut token = first[0];
                            counts = [0; 4];
                            bound_secs = 0.0;
                            overlap_secs = 0.0;
                            let t0 = std::time::Instant::now();
                            for step in 0..n {
                                let runs = match mode.as_str() {
                                    "stream" => hm.decode_runs(1),
                                    "static" => hm.static_runs(),
                                    other => anyhow::bail!(
                                        "--mode {other}: decode modes are stream, static and cpu"
                                    ),
                                };
                                // The overlap bound: the CPU's layers and the copies
                                // run side by side but share host memory, so a step
                                // takes at least the larger of host bytes / host read
                                // rate and copied bytes / copy rate, plus the GPU's part.
                                let (mut host_b, mut copy_b, mut gpu_b) = (0.0f64, 0.0f64, 0.0f64);
                                for (i, r) in runs.iter().enumerate() {
                                    let b = shape.layer_bytes[i] as f64;
                                    match r {
                                        Run::Cpu => host_b += b,
                                        Run::Stream => {
                                            host_b += b;
                                            copy_b += b;
                                        }
                                        Run::Gpu => gpu_b += b,
                                    }
                                    match r {
                                        Run::Gpu if hm.gpu.on_device(i) => counts[0] += 1,
                                        Run::Gpu => counts[1] += 1,
                                        Run::Cpu => counts[2] += 1,
                                        Run::Stream => counts[3] += 1,
                                    }
                                    bound_secs += match r {
                                        Run::Cpu => b / (host_gbps * 1e9),
                                        Run::Stream => b / (h2d_gbps * 1e9),
                                        Run::Gpu => b / (hbm_gbps * 1e9),
                                    };
                                }
                                bound_secs += shape.output_bytes as f64 / (hbm_gbps * 1e9);
                                overlap_secs += (host_b / (host_gbps * 1e9))
                                    .max(copy_b / (h2d_gbps * 1e9))
                                    + (gpu_b + shape.output_bytes as f64) / (hbm_gbps * 1e9);
                                let (logits, _) =
                                    hm.decode_step(cuda, &cpu, &mut kv, token, step + 1, &runs)?;
                                token = ferry::engine::argmax(&logits);
                            }
                            if rep > 0 {
                                times.push(t0.elapsed().as_secs_f64());
                            }
                        }
                        let mean = times.iter().sum::<f64>() / times.len() as f64;
                        let per = |c: usize| c / n.max(1);
                        // Memory handover: layers parked after the prefill run
                        // on the GPU (counted there) instead of the host.
                        let parked = match mode.as_str() {
                            "stream" => format!(" ({} parked)", hm.gpu.parked_layers()),
                            _ => String::new(),
                        };
                        let mut r = BenchResult::from_samples(
                            &meta(mode),
                            t,
                            times.iter().map(|s| (s * 1e9) as u64).collect(),
                        );
                        r.vram_peak = Some(cuda.peak_memory());
                        results.push(r);
                        eprintln!(
                            "{} tg{n} | {:.2} | | | {}/{}/{}/{}{parked} | {:.2} | {:.0} % | {:.2} | {:.0} % | {} |",
                            head(mode),
                            n as f64 / mean,
                            per(counts[0]),
                            per(counts[1]),
                            per(counts[2]),
                            per(counts[3]),
                            n as f64 / bound_secs,
                            100.0 * bound_secs / mean,
                            n as f64 / overlap_secs,
                            100.0 * overlap_secs / mean,
                            ferry::plan::HumanBytes(cuda.peak_memory())
                        );
                    }
                }
                Test::PromptGenerate(..) => {
                    eprintln!("--pg is not measured with --vram-budget yet");
                }
            }
        }
    }
    Ok(results)
}

/// `(model type as llama-bench writes it, parameter count)`.
fn model_description(g: &Gguf) -> (String, u64) {
    let arch = ferry::model::Config::from_gguf(g)
        .map(|c| c.arch.name().to_string())
        .unwrap_or_default();
    let label = g
        .get("general.size_label")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    (
        format!("{arch} {label}").trim().to_string(),
        g.tensors().iter().map(|t| t.n_elements()).sum(),
    )
}

fn print_bench(results: &[ferry::bench::BenchResult], output: &str) -> Result<()> {
    match output {
        "md" => print!("{}", ferry::bench::markdown(results)),
        "json" => println!("{}", serde_json::to_string_pretty(results)?),
        "csv" => {
            let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
            println!(
                "model_filename,model_type,model_size,model_n_params,backends,n_threads,n_batch,n_ubatch,n_prompt,n_gen,test,avg_ns,stddev_ns,avg_ts,stddev_ts,mode,vram_budget,vram_peak,overlap"
            );
            for r in results {
                println!(
                    "\"{}\",\"{}\",{},{},{},{},{},{},{},{},\"{}\",{},{},{:.6},{:.6},{},{},{},{}",
                    r.meta.model_filename,
                    r.meta.model_type,
                    r.meta.model_size,
                    r.meta.model_n_params,
                    r.meta.backends,
                    r.meta.n_threads,
                    r.meta.n_batch,
                    r.meta.n_ubatch,
                    r.n_prompt,
                    r.n_gen,
                    r.test,
                    r.avg_ns,
                    r.stddev_ns,
                    r.avg_ts,
                    r.stddev_ts,
                    r.meta.mode,
                    opt(r.meta.vram_budget),
                    opt(r.vram_peak),
                    r.overlap.map_or(String::new(), |o| format!("{o:.4}"))
                );
            }
        }
        _ => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry::settings::warn_unknown();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
