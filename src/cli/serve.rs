//! `ferry serve`: the HTTP server over a resident or planned engine.

use crate::cli::*;
use crate::*;

pub(crate) fn serve_model(args: ServeArgs) -> Result<()> {
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
            Some(budget) => {
                let config = ferry::model::Config::from_gguf(&g)?;
                let n_ctx = args.setup.n_ctx(config.context_train);
                let placement =
                    Placement::new(&args.budget, budget, n_ctx, args.ubatch, args.parallel);
                match load_experts_placed(&b, &g, &placement)? {
                    Some(model) => serve_loaded(&*b, model, &g, &path, &args),
                    None => serve_planned(&b, &g, &path, &args, budget),
                }
            }
        },
    }
}

pub(crate) fn serve_on<B: Backend + Sync>(
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
    serve_loaded(backend, load_model(backend, g, path)?, g, path, args)
}

/// `ferry serve` on a loaded model.
pub(crate) fn serve_loaded<B: Backend + Sync>(
    backend: &B,
    model: Model<B>,
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
pub(crate) fn serve_planned(
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
    // Each prefill's copy/compute timeline, for the web page (a few events a layer).
    hm.gpu.tracing = true;
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
pub(crate) struct Http {
    tok: std::sync::Arc<Tokenizer>,
    metrics: std::sync::Arc<ferry::server::metrics::Metrics>,
    jobs: std::sync::mpsc::Receiver<ferry::server::scheduler::Job>,
    engine: ferry::server::EngineConfig,
    thread: std::thread::JoinHandle<Result<()>>,
}

pub(crate) fn start_http(
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
    let (max_connections, why) = ferry::server::conn::connection_cap(
        args.max_connections,
        ferry::server::conn::open_file_limit(),
    );
    if let Some(why) = why {
        eprintln!("ferry serve: warning: {why}");
    }
    let opts = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        api_key: args.api_key.clone(),
        parallel: args.parallel,
        queue: args.queue,
        n_ctx,
        max_body_bytes: max_body,
        model_id: model_id.clone(),
        content_special: args.content_special,
        limits: ferry::server::conn::ConnLimits {
            max_connections,
            header_timeout: std::time::Duration::from_secs_f64(args.header_timeout),
        },
        body_timeout: std::time::Duration::from_secs_f64(args.body_timeout),
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

pub(crate) fn join_http(thread: std::thread::JoinHandle<Result<()>>) -> Result<()> {
    match thread.join() {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("the HTTP thread panicked")),
    }
}
