//! The `ferry` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod cli;

use cli::bench::*;
use cli::run::*;
use cli::serve::*;
use cli::*;

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
    /// With --chat: control tokens typed in a message (`<|im_end|>` …) act as
    /// control tokens, as llama.cpp does. By default a message is text.
    #[arg(long, requires = "chat")]
    content_special: bool,
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
    /// Connections served at once; more get 503 and are closed (lowered to
    /// what the process's open-file limit leaves room for).
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    max_connections: usize,
    /// Seconds a client has to send a request's headers, from connecting or
    /// from the end of its previous response: also how long an idle
    /// keep-alive connection stays open.
    #[arg(long, default_value_t = 10.0, value_parser = positive_secs)]
    header_timeout: f64,
    /// Seconds a request's body may take to arrive (408 after).
    #[arg(long, default_value_t = 30.0, value_parser = positive_secs)]
    body_timeout: f64,
    /// Parse control tokens written in chat message content (`<|im_end|>` …)
    /// as control tokens, as llama.cpp does. By default message content is
    /// text, so a client cannot forge turns of the conversation.
    #[arg(long)]
    content_special: bool,
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
        /// The preset's weight types: a mix (q4_k_m, q5_k_m, ud-iq2_xxs) or one type (q4_k, q8_0, iq2_xxs, ...).
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
    /// Write a model with random weights in the shape of a real one (llama,
    /// qwen2, qwen3 and gemma3 presets: tiny, qwen2.5-0.5b … qwen2.5-72b,
    /// llama3-8b, llama3.1-8b, mistral-7b, llama3-70b, qwen3-0.6b … qwen3-32b,
    /// gemma3-270m … gemma3-27b; an unknown name lists them all). The file
    /// says in its metadata that its weights are random.
    Synth {
        #[arg(long)]
        preset: String,
        /// Weight types: a mix (q4_k_m, q5_k_m, ud-iq2_xxs) or one type for every matrix
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

/// A timeout in seconds: finite, above 0 and at most a day.
fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86400.0 => Ok(v),
        _ => Err(format!(
            "{s} is not a number of seconds above 0 (at most 86400)"
        )),
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
                format!("unknown quantization '{quant}' (a weight type such as q4_k or iq2_xxs, or a mix: q4_k_m, q5_k_m, ud-iq2_xxs)")
            })?;
            let shape = match (&model, &preset) {
                (Some(m), _) => ModelShape::from_gguf(&Gguf::open(m)?)?,
                (None, Some(p)) => ferry::plan::preset_shape_mix(p, mix)
                    .with_context(|| format!("unknown preset '{p}'"))?,
                (None, None) => anyhow::bail!("pass -m MODEL or --preset NAME"),
            };
            let model_bytes =
                shape.layer_bytes.iter().sum::<u64>() + shape.embd_bytes + shape.output_bytes;
            let cards =
                ferry::plan::CardsProfile::load(&gpu_profile).map_err(anyhow::Error::msg)?;
            if cards.cards.len() > 1 || vram_budget.contains(',') {
                // Several cards: one budget for all, or one per card.
                let mut budgets = vram_budget
                    .split(',')
                    .map(|b| budget_from(b.trim(), model_bytes))
                    .collect::<Result<Vec<u64>>>()?;
                if budgets.len() == 1 {
                    budgets = vec![budgets[0]; cards.cards.len()];
                }
                let req = PlanRequest {
                    budget: budgets.iter().sum(),
                    n_ctx: ctx_size,
                    ubatch,
                    n_parallel: parallel,
                    host_embeddings: !no_pin,
                };
                print!(
                    "{}",
                    ferry::plan::cards::report(&shape, &req, &budgets, &cards)?
                );
                return Ok(());
            }
            let profile = MachineProfile::load(&gpu_profile)
                .map_err(anyhow::Error::msg)?
                .for_host_memory(!no_pin);
            let budget = budget_from(&vram_budget, model_bytes)?;
            let req = PlanRequest {
                budget,
                n_ctx: ctx_size,
                ubatch,
                n_parallel: parallel,
                host_embeddings: !no_pin,
            };
            let cost = CostModel::new(profile.clone());
            match ferry::plan::expert_plan(&shape, &req, &cost) {
                Some(ep) => print!("{}", ep.describe(&shape, &profile)),
                None => print!(
                    "{}",
                    ferry::plan::plan(&shape, &req, &cost)?.describe(&shape, &profile)
                ),
            }
        }
        Command::Calibrate {
            size,
            repetitions,
            out,
            attention,
        } => cli::calibrate::calibrate(&size, repetitions, out, attention)?,
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
                    "unknown quantization '{quant}'; use a mix (q4_k_m, q5_k_m, ud-iq2_xxs) or a type (q4_0, q8_0, q6_k, iq2_xxs, iq3_s, f16, ...)"
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
