//! The commands' bodies: opening a device, loading and planning (here),
//! `run` (`run.rs`), `serve` (`serve.rs`), `bench` (`bench.rs`). `main.rs`
//! parses the command line and dispatches.

pub(crate) mod bench;
pub(crate) mod calibrate;
pub(crate) mod run;
pub(crate) mod serve;

use crate::*;

/// Load a model onto the CPU backend with a progress bar on stderr.
/// Which device runs the model.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeviceArg {
    /// The GPU when there is one, else the CPU (said once on stderr).
    Auto,
    Cpu,
    Cuda,
}

pub(crate) enum Device {
    Cpu(CpuBackend),
    Cuda(Box<ferry::backend::cuda::CudaBackend>),
}

pub(crate) fn open_device(choice: DeviceArg, threads: usize) -> Result<Device> {
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
pub(crate) fn load_model<B: Backend + Sync>(
    backend: &B,
    g: &Gguf,
    path: &std::path::Path,
) -> Result<Model<B>>
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

pub(crate) fn print_stats(s: &GenerationStats, load_secs: Option<f64>) {
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
/// `--gpu-profile auto`: this machine's calibration if there is one, else the
/// built-in profile whose name the card's name contains (h100 as a last resort).
pub(crate) fn resolve_profile(choice: &str, cuda: &ferry::backend::cuda::CudaBackend) -> String {
    if choice != "auto" {
        return choice.to_string();
    }
    ferry::plan::MachineProfile::auto_name(Some(&cuda.name()))
}
/// The budget to plan within on a GPU, or `None` when no budget was asked for
/// and the planner keeps every layer resident within the default budget (free
/// memory minus 5 %): the resident engine, same kernels, then runs the model.
pub(crate) fn gpu_budget(
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
        if s.contains(',') {
            anyhow::bail!(
                "--vram-budget {s}: a budget per card plans several GPUs, which ferry does not run yet; `ferry plan --gpu-profile 2x NAME --vram-budget {s}` shows the plan, and one value runs on one card"
            );
        }
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
pub(crate) fn budget_from(s: &str, model_bytes: u64) -> Result<u64> {
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

pub(crate) fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
