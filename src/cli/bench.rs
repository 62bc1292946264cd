//! `ferry bench`: llama-bench-style measurements, resident and within budgets.

use crate::cli::*;
use crate::*;

pub(crate) fn bench(args: BenchArgs) -> Result<()> {
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

pub(crate) fn bench_on<B: Backend + Sync>(
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
    let model = load_model(backend, g, path)?;
    let (model_type, model_n_params) = model_description(g);
    let meta = ferry::bench::ResultMeta {
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
    };
    bench_loaded(backend, &model, meta, args, tests)
}

/// The tests on a loaded model (resident, or a mixture's experts placed by
/// an `ExpertPlan`), at each context depth.
pub(crate) fn bench_loaded<B: Backend + Sync>(
    backend: &B,
    model: &Model<B>,
    meta: ferry::bench::ResultMeta,
    args: &BenchArgs,
    tests: &[ferry::bench::Test],
) -> Result<Vec<ferry::bench::BenchResult>>
where
    B::Weight: Send + Sync,
    B::Vector: Send + Sync,
    B::Kv: Send,
    B::Act: Send,
{
    let mut results = Vec::new();
    let mut setup = ferry::bench::BenchSetup {
        backend,
        model,
        meta,
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
pub(crate) fn bench_streamed(
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
        if let Some(ep) = ferry::plan::expert_plan(&shape, &req, &cost) {
            // A mixture of experts: attention resident, experts by layer in
            // VRAM or host memory (`ExpertPlan`).
            eprint!("{}", ep.describe(&shape, &cost.profile));
            cuda.set_budget(Some(budget));
            cuda.reset_peak()?;
            let model = Model::load_placed(cuda, g, &ep.host_experts, |_, _| {})?;
            let meta = ferry::bench::ResultMeta {
                model_filename: path.display().to_string(),
                model_type: model_type.clone(),
                model_size: model_bytes,
                model_n_params,
                backends: "CUDA".into(),
                n_threads: 0,
                n_batch: args.batch,
                n_ubatch: args.ubatch.min(args.batch),
                mode: "experts".into(),
                vram_budget: Some(budget),
            };
            results.extend(bench_loaded(cuda, &model, meta, args, tests)?);
            eprintln!(
                "peak device memory: {} of the {} budget",
                ferry::plan::HumanBytes(cuda.peak_memory()),
                ferry::plan::HumanBytes(budget)
            );
            drop(model);
            // The staged experts are known by their host addresses, which a
            // model loaded next may reuse.
            cuda.release_workspace()?;
            cuda.set_budget(None);
            continue;
        }
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
pub(crate) fn model_description(g: &Gguf) -> (String, u64) {
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

pub(crate) fn print_bench(results: &[ferry::bench::BenchResult], output: &str) -> Result<()> {
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
