//! `ferry run`: text generation and chat, resident or within a budget.

use crate::cli::*;
use crate::*;

pub(crate) fn run_model(args: RunArgs) -> Result<()> {
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
            Some(budget) => {
                let config = ferry::model::Config::from_gguf(&g)?;
                let n_ctx = args.setup.n_ctx(config.context_train);
                let placement = Placement::new(&args.budget, budget, n_ctx, args.ubatch, 1);
                match load_experts_placed(&b, &g, &placement)? {
                    Some(model) => run_loaded(&*b, model, &g, &path, &args, t0),
                    None => run_planned(&b, &g, &path, &args, budget, t0),
                }
            }
        },
    }
}

/// Runs one generation: `(cached, prompt, max_new, sampler, is_eog, on_token)`.
pub(crate) type GenerateFn<'a> = dyn FnMut(
        &[u32],
        &[u32],
        usize,
        &mut Sampler,
        &(dyn Fn(u32) -> bool + Sync),
        &mut (dyn FnMut(u32) -> bool + Send),
    ) -> Result<(Vec<u32>, GenerationStats), ferry::backend::BackendError>
    + 'a;

pub(crate) fn run_on<B: Backend + Sync>(
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
    run_loaded(backend, load_model(backend, g, path)?, g, path, args, t0)
}

/// `ferry run` on a loaded model.
pub(crate) fn run_loaded<B: Backend + Sync>(
    backend: &B,
    model: Model<B>,
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
pub(crate) fn converse(
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
        let prompt = ferry::tokenizer::encode_conversation_with(
            &tok,
            &template,
            &messages,
            &ferry::tokenizer::RenderOptions::generation(true),
            args.content_special,
        )?;
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
pub(crate) struct Placement<'a> {
    budget: u64,
    n_ctx: usize,
    ubatch: usize,
    parallel: usize,
    gpu_profile: &'a str,
    pin: bool,
    verbose: bool,
}

impl<'a> Placement<'a> {
    pub(crate) fn new(
        b: &'a BudgetArgs,
        budget: u64,
        n_ctx: usize,
        ubatch: usize,
        parallel: usize,
    ) -> Self {
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

/// A mixture of experts within the budget, where its expert plan fits
/// (`ferry::plan::ExpertPlan`): loaded with every layer's attention on the
/// GPU and the experts that do not fit in page-locked host memory. `None`
/// for a dense model, or a budget too small for that plan (the layer plan,
/// `load_planned`, applies).
pub(crate) fn load_experts_placed(
    cuda: &ferry::backend::cuda::CudaBackend,
    g: &Gguf,
    p: &Placement,
) -> Result<Option<Model<ferry::backend::cuda::CudaBackend>>> {
    use ferry::plan::{CostModel, MachineProfile, ModelShape, PlanRequest};
    let shape = ModelShape::from_gguf(g)?;
    if shape.experts.is_none() {
        return Ok(None);
    }
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
    let Some(ep) = ferry::plan::expert_plan(&shape, &req, &CostModel::new(profile.clone())) else {
        return Ok(None);
    };
    if p.verbose {
        eprint!("{}", ep.describe(&shape, &profile));
    }
    let n_host = ep.host_experts.iter().filter(|&&h| h).count();
    eprintln!(
        "ferry: VRAM budget {}: attention of every layer and the experts of {} of {} layers on the GPU, the other experts in pinned host memory",
        ferry::plan::HumanBytes(p.budget),
        shape.n_layers - n_host,
        shape.n_layers
    );
    cuda.set_budget(Some(p.budget));
    let bar = indicatif::ProgressBar::new(shape.n_layers as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "placing layers (experts: VRAM or host memory) [{bar:30}] {pos}/{len}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let model = Model::load_placed(cuda, g, &ep.host_experts, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    Ok(Some(model))
}

/// Plan the model for the budget and load it that way: resident layers in
/// VRAM, the rest in (pinned) host memory, streamed in prefill and placed per
/// layer in decode. From here on every device allocation is held to the budget.
pub(crate) fn load_planned(
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
pub(crate) fn run_planned(
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
