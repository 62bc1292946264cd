//! The planner: from a model, a VRAM budget, a context size and a machine
//! profile to a placement — which layers stay resident on the GPU, how many
//! streaming slots prefill uses, where the KV cache lives, and where each
//! non-resident layer runs during decode — chosen by minimising the time a cost
//! model predicts. There is no fixed batch-size threshold anywhere: the
//! decode placement follows from the profile's bandwidths and rates.
//!
//! The cost model (`cost`) is deliberately simple and explicit: every
//! prediction is bytes over a bandwidth or operations over a rate, so a plan
//! can be explained line by line (`ferry plan` prints it).

pub mod calibrate;
pub mod cards;
pub mod cost;
pub mod profile;

use crate::gguf::Gguf;
use crate::model::{Config, ModelTensors};
use crate::quant::GgmlType;
pub use crate::units::{GEMV_MAX_BATCH, HumanBytes, parse_size};

pub use cards::{CardPlan, CardsProfile, plan_cards};
pub use cost::{CostModel, DecodePlacer};
pub use profile::{CpuProfile, GpuProfile, MachineProfile, RatesByType};

/// Weight bytes by type (of a layer, or of the output): a decode step reads
/// each type at its own rate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypedBytes(pub Vec<(GgmlType, u64)>);

impl TypedBytes {
    pub fn add(&mut self, ty: GgmlType, bytes: u64) {
        match self.0.iter_mut().find(|(t, _)| *t == ty) {
            Some((_, b)) => *b += bytes,
            None => self.0.push((ty, bytes)),
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, b)| b).sum()
    }

    /// All of `bytes` in one type (shapes built by hand, tests).
    pub fn of(ty: GgmlType, bytes: u64) -> Self {
        TypedBytes(vec![(ty, bytes)])
    }
}

/// What the planner needs to know about a model.
#[derive(Debug, Clone)]
pub struct ModelShape {
    pub name: String,
    pub n_layers: usize,
    /// Weight bytes of each layer.
    pub layer_bytes: Vec<u64>,
    /// The same by weight type (sums to `layer_bytes`).
    pub layer_types: Vec<TypedBytes>,
    /// Multiply-adds per token of each layer's matrices (attention excluded;
    /// a mixture's: the router and the experts a token runs).
    pub layer_macs: Vec<u64>,
    /// The routed experts' share of `layer_types` (empty for dense layers).
    pub layer_expert_types: Vec<TypedBytes>,
    /// Experts per layer and experts a token runs, for a mixture of experts.
    pub experts: Option<(usize, usize)>,
    /// Width of an expert's hidden layer (a mixture of experts).
    pub d_ff_expert: usize,
    /// Bytes of the token embeddings.
    pub embd_bytes: u64,
    /// The output projection is the token embedding matrix (no `output.weight`).
    pub tied: bool,
    /// Bytes of the output projection and final norm.
    pub output_bytes: u64,
    /// The same by weight type.
    pub output_types: TypedBytes,
    pub output_macs: u64,
    /// KV-cache bytes per token per layer (f16 keys and values).
    pub kv_bytes_per_token: u64,
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub head_dim: usize,
}

impl ModelShape {
    pub fn from_gguf(g: &Gguf) -> anyhow::Result<Self> {
        let cfg = Config::from_gguf(g)?;
        let t = ModelTensors::from_gguf(g, &cfg)?;
        let macs = |r: &crate::model::TensorRef| (r.rows() * r.cols()) as u64;
        let layer_types: Vec<TypedBytes> = t
            .layers
            .iter()
            .map(|l| {
                let mut b = TypedBytes::default();
                for r in l.all() {
                    b.add(r.ty, r.n_bytes);
                }
                b
            })
            .collect();
        let layer_bytes = layer_types.iter().map(TypedBytes::total).collect();
        let layer_expert_types = t
            .layers
            .iter()
            .map(|l| {
                let mut b = TypedBytes::default();
                if let crate::model::Ffn::Moe { gate, up, down, .. } = &l.ffn {
                    for r in gate.iter().chain(up).chain(down) {
                        b.add(r.ty, r.n_bytes);
                    }
                }
                b
            })
            .collect();
        let layer_macs = t
            .layers
            .iter()
            .map(|l| l.macs_per_token(cfg.moe.map_or(0, |m| m.n_used)))
            .collect();
        let out = t.output();
        Ok(ModelShape {
            name: g
                .get("general.name")
                .and_then(|v| v.as_str())
                .unwrap_or(cfg.arch.name())
                .to_string(),
            n_layers: cfg.n_layers,
            layer_bytes,
            layer_types,
            layer_macs,
            layer_expert_types,
            experts: cfg.moe.map(|m| (m.n_expert, m.n_used)),
            d_ff_expert: cfg.moe.map_or(0, |m| m.d_ff_expert),
            embd_bytes: t.token_embd.n_bytes,
            tied: t.output.is_none(),
            output_bytes: out.n_bytes + t.output_norm.n_bytes,
            output_types: TypedBytes(vec![
                (out.ty, out.n_bytes),
                (t.output_norm.ty, t.output_norm.n_bytes),
            ]),
            output_macs: macs(out),
            kv_bytes_per_token: 2 * 2 * cfg.kv_width() as u64,
            d_model: cfg.d_model,
            d_ff: cfg.d_ff,
            n_heads: cfg.n_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// The weights a decode step of `batch` tokens reads from layer `i`:
    /// all of a dense layer; of a mixture, everything but the routed experts
    /// and the share of those the batch is expected to choose (uniform
    /// routing: `1 − (1 − k/E)^batch` of them).
    pub fn decode_types(&self, i: usize, batch: usize) -> TypedBytes {
        let (Some((e, k)), Some(exp)) = (self.experts, self.layer_expert_types.get(i)) else {
            return self.layer_types[i].clone();
        };
        let frac = expert_fraction(e, k, batch);
        let mut out = self.dense_types(i);
        for &(ty, b) in &exp.0 {
            out.add(ty, (b as f64 * frac).round() as u64);
        }
        out
    }

    /// Layer `i`'s weights but its routed experts (all of a dense layer).
    pub fn dense_types(&self, i: usize) -> TypedBytes {
        let mut out = TypedBytes::default();
        for &(ty, b) in &self.layer_types[i].0 {
            let routed = self
                .layer_expert_types
                .get(i)
                .and_then(|e| e.0.iter().find(|(t, _)| *t == ty))
                .map_or(0, |x| x.1);
            out.add(ty, b - routed);
        }
        out
    }

    pub fn total_layer_bytes(&self) -> u64 {
        self.layer_bytes.iter().sum()
    }

    pub fn max_layer_bytes(&self) -> u64 {
        self.layer_bytes.iter().copied().max().unwrap_or(0)
    }
}

/// Where a layer's weights are during prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillPlace {
    /// Always in VRAM.
    Resident,
    /// Copied into a slot before its turn, once per prompt (layer-major).
    Streamed,
}

/// Where a non-resident layer runs during decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodePlace {
    Gpu,
    /// On the CPU from host memory, with its KV cache on the host.
    Cpu,
    /// Streamed to a GPU slot for every decode step.
    Streamed,
}

#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub budget: u64,
    pub n_ctx: usize,
    pub ubatch: usize,
    /// Sequences decoded together (the decode batch).
    pub n_parallel: usize,
    /// Untied token embeddings stay in page-locked host memory (the GPU reads
    /// the prompt's rows across the bus); false with `--no-pin`, where they
    /// take device memory.
    pub host_embeddings: bool,
}

/// How the budget is spent.
#[derive(Debug, Clone, Default)]
pub struct MemoryPlan {
    /// Token embeddings on the device (0 when they stay in host memory or
    /// are the output projection).
    pub embeddings: u64,
    pub resident_weights: u64,
    pub slots: u64,
    pub kv_cache: u64,
    pub activations: u64,
    pub output: u64,
    pub workspace: u64,
    /// Allocation granularity and the allocator's reserve (see `allocator_reserve`).
    pub allocator: u64,
}

/// Device memory the allocator takes beyond the bytes asked for: each large
/// allocation is rounded up to the driver's 2 MiB granule (a resident layer is
/// seven matrices, the KV cache two buffers per layer), and the stream-ordered
/// pool keeps a reserve. Measured on H100/H200: without it a plan at 60 % of a
/// 32B model overran its budget by 180 MiB.
pub fn allocator_reserve(resident_layers: usize, n_layers: usize, n_slots: usize) -> u64 {
    const GRANULE: u64 = 2 << 20;
    (256 << 20) + GRANULE * (7 * resident_layers + 2 * n_layers + n_slots + 16) as u64
}

impl MemoryPlan {
    pub fn total(&self) -> u64 {
        self.embeddings
            + self.resident_weights
            + self.slots
            + self.kv_cache
            + self.activations
            + self.output
            + self.workspace
            + self.allocator
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub prefill: Vec<PrefillPlace>,
    pub decode: Vec<DecodePlace>,
    pub n_slots: usize,
    /// Layers copied ahead of the one computing (the prefetch depth).
    pub prefetch: usize,
    /// KV cache of each layer on the GPU (else on the host).
    pub kv_on_gpu: Vec<bool>,
    pub output_on_gpu: bool,
    pub memory: MemoryPlan,
    pub budget: u64,
    pub predicted_pp_tps: f64,
    pub predicted_tg_tps: f64,
    /// Prompt length the prefill prediction is for.
    pub pp_tokens: usize,
    /// Memory handover: non-resident layers that park on the GPU after each
    /// prefill, in the memory only prefill needed (decode runs them there;
    /// `decode` and the tg prediction count them on the GPU).
    pub parked: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Cards(String),
    #[error(
        "a VRAM budget of {budget} is too small for this model and context: it needs at least {needed} \
         ({why}); pass --vram-budget {needed} or more, or a smaller -c/--ctx-size"
    )]
    BudgetTooSmall {
        budget: HumanBytes,
        needed: HumanBytes,
        why: String,
    },
}

/// Layers to keep resident when `r` of `n` fit: spread evenly, so that the
/// compute of the resident layers between two streamed ones hides their copies.
pub fn spread_resident(n: usize, r: usize) -> Vec<bool> {
    let mut keep = vec![false; n];
    if r == 0 {
        return keep;
    }
    for i in 0..r.min(n) {
        // The i-th resident layer sits at the centre of the i-th of r equal spans.
        let idx = ((2 * i + 1) * n) / (2 * r);
        keep[idx.min(n - 1)] = true;
    }
    keep
}

/// Device memory a decode step of `n_seq` sequences needs besides weights and
/// KV cache: its activations, logits and small tables (a margin), and the f16
/// workspace when the batch is too large for the matrix-vector kernels.
pub fn decode_reserve_bytes(shape: &ModelShape, n_seq: usize) -> u64 {
    let n = n_seq.max(1);
    let mut reserve = cost::activation_bytes(shape, n) + (64 << 20) + n as u64 * (1 << 20);
    if n > GEMV_MAX_BATCH {
        reserve += cost::workspace_bytes(shape, n);
    }
    reserve
}

/// Memory handover: which of the candidate layers (`bytes[i]`: `Some` for a
/// layer decode would otherwise run from host memory) to park in `room`
/// bytes of device memory that prefill used and decode does not. As many as
/// fit, spread evenly (like resident layers) so the copies and CPU layers
/// between them stay balanced.
pub fn handover_layers(bytes: &[Option<u64>], room: u64) -> Vec<usize> {
    let candidates: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i].is_some()).collect();
    for k in (1..=candidates.len()).rev() {
        let pick = spread_resident(candidates.len(), k);
        let chosen: Vec<usize> = (0..candidates.len())
            .filter(|&j| pick[j])
            .map(|j| candidates[j])
            .collect();
        let total: u64 = chosen.iter().map(|&i| bytes[i].unwrap_or(0)).sum();
        if total <= room {
            return chosen;
        }
    }
    Vec::new()
}

/// A mixture of experts within a budget, placed expert stack by expert
/// stack: every layer's attention, norms and router resident (with the
/// embeddings, the output projection and the KV cache), and the routed
/// experts of as many layers as fit; the other layers' experts stay in
/// page-locked host memory. A decode step's GPU reads the few experts its
/// tokens chose across the bus; a prompt's micro-batch copies in the experts
/// it runs on more than 8 tokens, once each, into a staging buffer of one
/// layer's experts. Nothing of a layer runs on the CPU.
#[derive(Debug, Clone)]
pub struct ExpertPlan {
    /// Layers whose experts stay in host memory.
    pub host_experts: Vec<bool>,
    pub memory: MemoryPlan,
    pub budget: u64,
    pub predicted_pp_tps: f64,
    pub predicted_tg_tps: f64,
    pub pp_tokens: usize,
}

impl ExpertPlan {
    pub fn describe(&self, shape: &ModelShape, profile: &MachineProfile) -> String {
        let head = format!(
            "model       {} ({} layers, a mixture of experts)\nmachine     {}\n",
            shape.name,
            shape.n_layers,
            profile.describe()
        );
        head + &self.describe_placement(shape)
    }

    fn describe_placement(&self, shape: &ModelShape) -> String {
        let n_host = self.host_experts.iter().filter(|&&h| h).count();
        let host_bytes: u64 = (0..shape.n_layers)
            .filter(|&i| self.host_experts[i])
            .map(|i| shape.layer_expert_types[i].total())
            .sum();
        let m = &self.memory;
        format!(
            "experts     {} of {} layers' experts resident, {} layers' ({}) in host memory, read by the GPU across the bus (a prompt's busy ones copied in)\n\
             budget      {}: embeddings {}, attention and resident experts {}, KV cache {}, activations {}, output {}, workspace and staging {}, allocator reserve {} (total {})\n\
             layers      {}   (E experts resident, h experts in host memory)\n\
             predicted   pp{} {:.1} t/s, tg {:.2} t/s\n",
            shape.n_layers - n_host,
            shape.n_layers,
            n_host,
            HumanBytes(host_bytes),
            HumanBytes(self.budget),
            HumanBytes(m.embeddings),
            HumanBytes(m.resident_weights),
            HumanBytes(m.kv_cache),
            HumanBytes(m.activations),
            HumanBytes(m.output),
            HumanBytes(m.workspace),
            HumanBytes(m.allocator),
            HumanBytes(m.total()),
            self.host_experts
                .iter()
                .map(|&h| if h { 'h' } else { 'E' })
                .collect::<String>(),
            self.pp_tokens,
            self.predicted_pp_tps,
            self.predicted_tg_tps
        )
    }
}

/// The expert placement of a mixture of experts within `req`'s budget
/// (`ExpertPlan`), or `None` for a dense model or a budget too small for
/// everything but the experts.
pub fn expert_plan(shape: &ModelShape, req: &PlanRequest, cost: &CostModel) -> Option<ExpertPlan> {
    let (_, k) = shape.experts?;
    let n = shape.n_layers;
    let expert_bytes: Vec<u64> = (0..n)
        .map(|i| shape.layer_expert_types.get(i).map_or(0, TypedBytes::total))
        .collect();
    let dense: u64 = (0..n).map(|i| shape.layer_bytes[i] - expert_bytes[i]).sum();
    let pairs = req.ubatch * k;
    let act = cost::activation_bytes(shape, req.ubatch)
        + (pairs * (shape.d_ff_expert + shape.d_model) * 4) as u64;
    let staging = expert_bytes.iter().copied().max().unwrap_or(0);
    let workspace = cost::workspace_bytes(shape, req.ubatch) + staging;
    let kv_all = shape.kv_bytes_per_token * (req.n_ctx * req.n_parallel * n) as u64;
    let embeddings = if shape.tied { 0 } else { shape.embd_bytes };
    let memory = |resident_experts: u64, r: usize| MemoryPlan {
        embeddings,
        resident_weights: dense + resident_experts,
        slots: 0,
        kv_cache: kv_all,
        activations: act,
        output: shape.output_bytes,
        workspace,
        allocator: allocator_reserve(n, n, 0) + (2 << 20) * (r as u64 * 3),
    };
    if memory(0, 0).total() > req.budget {
        return None;
    }
    // The first layers' experts resident, as many as fit.
    let mut host = vec![true; n];
    let mut resident = 0u64;
    for i in 0..n {
        let r = host.iter().filter(|&&h| !h).count() + 1;
        if memory(resident + expert_bytes[i], r).total() > req.budget {
            break;
        }
        resident += expert_bytes[i];
        host[i] = false;
    }
    let r = host.iter().filter(|&&h| !h).count();
    let pp_tokens = req.ubatch.max(512);
    let batch = req.n_parallel.max(1);
    let (mut pp, mut tg) = (0f64, 0f64);
    for i in 0..n {
        let compute = cost.gpu_layer(&shape.layer_types[i], shape.layer_macs[i], pp_tokens);
        let frac_pp = expert_fraction(shape.experts.map_or(1, |x| x.0), k, pp_tokens);
        let read = shape.decode_types(i, batch);
        let active = read.total() - (shape.layer_bytes[i] - expert_bytes[i]);
        if host[i] {
            pp += compute + cost.h2d((expert_bytes[i] as f64 * frac_pp) as u64);
            tg += cost.gpu_gemv(&shape.dense_types(i)) + cost.h2d(active) + cost.decode_layer_secs;
        } else {
            pp += compute;
            tg += cost.gpu_gemv(&read) + cost.decode_layer_secs;
        }
        // The router's choices are read back each layer.
        tg += cost.crossing_secs;
    }
    tg += cost.gpu_layer(&shape.output_types, shape.output_macs, batch);
    pp += cost.gpu_layer(&shape.output_types, shape.output_macs, 1);
    Some(ExpertPlan {
        host_experts: host,
        memory: memory(resident, r),
        budget: req.budget,
        predicted_pp_tps: pp_tokens as f64 / pp,
        predicted_tg_tps: batch as f64 / tg,
        pp_tokens,
    })
}

pub fn plan(shape: &ModelShape, req: &PlanRequest, cost: &CostModel) -> Result<Plan, PlanError> {
    let n = shape.n_layers;
    let slot = shape.max_layer_bytes();
    // A micro-batch's intermediates, plus the residual stream of a whole
    // prompt (layer-major prefill keeps it between layers).
    let act = cost::activation_bytes(shape, req.ubatch) + (req.n_ctx * shape.d_model * 4) as u64;
    let workspace = cost::workspace_bytes(shape, req.ubatch);
    let kv_layer = shape.kv_bytes_per_token * req.n_ctx as u64 * req.n_parallel as u64;
    let output = shape.output_bytes;

    // The least that works: two slots, activations, workspace, the KV cache of
    // the layers the GPU computes during prefill (all of them), and the output
    // projection, which the executor keeps on the GPU. The token embeddings
    // stay in host memory (the GPU reads only the prompt's rows; tied ones are
    // the output projection and counted there).
    let kv_all = kv_layer * n as u64;
    let embeddings = if shape.tied || req.host_embeddings {
        0
    } else {
        shape.embd_bytes
    };
    let min_needed =
        2 * slot + act + workspace + kv_all + output + embeddings + allocator_reserve(0, n, 2);
    if req.budget < min_needed {
        return Err(PlanError::BudgetTooSmall {
            budget: HumanBytes(req.budget),
            needed: HumanBytes(min_needed),
            why: format!(
                "2 streaming slots of {} + KV cache {} for {} tokens + activations and workspace {} + output projection {}{} + allocator reserve {}",
                HumanBytes(2 * slot),
                HumanBytes(kv_all),
                req.n_ctx,
                HumanBytes(act + workspace),
                HumanBytes(output),
                if embeddings > 0 {
                    format!(
                        " + token embeddings {} (pageable host memory: --no-pin)",
                        HumanBytes(embeddings)
                    )
                } else {
                    String::new()
                },
                HumanBytes(allocator_reserve(0, n, 2))
            ),
        });
    }

    // Try every number of resident layers that fits, with the output projection
    // on the GPU when it fits too, and keep the fastest predicted plan.
    let mut best: Option<Plan> = None;
    // The executor keeps the output projection on the GPU (CPU placement of the
    // output is a decode-time option the executor does not have yet).
    for output_on_gpu in [true] {
        for r in 0..=n {
            let resident = spread_resident(n, r);
            let resident_bytes: u64 = (0..n)
                .filter(|&i| resident[i])
                .map(|i| shape.layer_bytes[i])
                .sum();
            let pp_tokens = req.ubatch.max(512);
            let preferred = cost::slots_needed(shape, &resident, cost, pp_tokens);
            let memory = |n_slots: usize| MemoryPlan {
                embeddings,
                resident_weights: resident_bytes,
                slots: n_slots as u64 * slot,
                kv_cache: kv_all,
                activations: act,
                output: if output_on_gpu { output } else { 0 },
                workspace,
                allocator: allocator_reserve(r, n, n_slots),
            };
            // The preferred number of slots, or fewer (down to two) if that is what fits.
            let fitting = if preferred == 0 {
                Some(0).filter(|&s| memory(s).total() <= req.budget)
            } else {
                (2..=preferred)
                    .rev()
                    .find(|&s| memory(s).total() <= req.budget)
            };
            let Some(n_slots) = fitting else { continue };
            let mem = memory(n_slots);
            // After the prompt, its workspace and activations are free; what
            // decode does not need holds parked layers (`hand_over`).
            // (The allocator reserve is headroom for prefill's peak: the
            // executor measures what is in use after it, which leaves it out.)
            let after_prefill = mem.total() - mem.workspace - mem.activations - mem.allocator
                + decode_reserve_bytes(shape, req.n_parallel);
            let room = req.budget.saturating_sub(after_prefill);
            let offloaded: Vec<Option<u64>> = (0..n)
                .map(|i| (!resident[i]).then_some(shape.layer_bytes[i]))
                .collect();
            let parked = handover_layers(&offloaded, room);
            let mut on_device = resident.clone();
            for &i in &parked {
                on_device[i] = true;
            }
            let decode =
                cost.decode_placement(shape, &on_device, req.n_parallel, output_on_gpu, n_slots);
            let pp =
                cost.prefill_time_with_slots(shape, &resident, pp_tokens, n_slots, output_on_gpu);
            let tg = cost.decode_time(shape, &decode, req.n_parallel, output_on_gpu, n_slots);
            let candidate = Plan {
                prefill: resident
                    .iter()
                    .map(|&r| {
                        if r {
                            PrefillPlace::Resident
                        } else {
                            PrefillPlace::Streamed
                        }
                    })
                    .collect(),
                kv_on_gpu: vec![true; n],
                decode,
                n_slots,
                prefetch: n_slots.saturating_sub(1),
                output_on_gpu,
                memory: mem,
                budget: req.budget,
                predicted_pp_tps: pp_tokens as f64 / pp,
                predicted_tg_tps: req.n_parallel as f64 / tg,
                pp_tokens,
                parked,
            };
            // Prefill first (the product's job), then decode; on a tie, more
            // resident layers (candidates come in that order): parked layers
            // decode as fast, but are copied again after every prompt.
            let better = match &best {
                None => true,
                Some(b) => {
                    let key = |p: &Plan| (p.predicted_pp_tps * (1.0 + 1e-9), p.predicted_tg_tps);
                    let (cp, ct) = key(&candidate);
                    let (bp, bt) = key(b);
                    cp > bp * 1.0001 || ((cp - bp).abs() <= bp * 1e-4 && ct >= bt * (1.0 - 1e-9))
                }
            };
            if better {
                best = Some(candidate);
            }
        }
    }
    best.ok_or_else(|| PlanError::BudgetTooSmall {
        budget: HumanBytes(req.budget),
        needed: HumanBytes(min_needed),
        why: "no placement fits".into(),
    })
}

impl Plan {
    pub fn resident_layers(&self) -> usize {
        self.prefill
            .iter()
            .filter(|&&p| p == PrefillPlace::Resident)
            .count()
    }

    /// A human-readable account of the plan (`ferry plan`, `--verbose`).
    pub fn describe(&self, shape: &ModelShape, profile: &MachineProfile) -> String {
        let mut s = String::new();
        use std::fmt::Write;
        let _ = writeln!(s, "model       {} ({} layers)", shape.name, shape.n_layers);
        let _ = writeln!(s, "machine     {}", profile.describe());
        // The weight types and the decode rates the cost model reads each at.
        let mut by_type = TypedBytes::default();
        for t in shape.layer_types.iter().chain([&shape.output_types]) {
            for &(ty, b) in &t.0 {
                by_type.add(ty, b);
            }
        }
        by_type.0.sort_by_key(|&(_, b)| std::cmp::Reverse(b));
        let eff = CostModel::new(profile.clone()).gemv_efficiency;
        let total = by_type.total();
        let rates: Vec<String> = by_type
            .0
            .iter()
            .filter(|&&(_, b)| b * 100 >= total)
            .map(|&(ty, b)| {
                let measured = |m: &profile::RatesByType| m.contains_key(ty.name());
                format!(
                    "{ty} {} (GPU {:.0} GB/s{}, CPU {:.0} GB/s{})",
                    HumanBytes(b),
                    profile.gpu.gemv_rate(ty, eff),
                    if measured(&profile.gpu.gemv_gbps_by_type) {
                        ""
                    } else {
                        " assumed"
                    },
                    profile.cpu.gemv_rate(ty),
                    if measured(&profile.cpu.gemv_gbps_by_type) {
                        ""
                    } else {
                        " assumed"
                    },
                )
            })
            .collect();
        let _ = writeln!(s, "weights     {}", rates.join(", "));
        let _ = writeln!(
            s,
            "budget      {}: embeddings {}, resident weights {}, {} slots {}, KV cache {}, activations {}, output {}, workspace {}, allocator reserve {} (total {})",
            HumanBytes(self.budget),
            HumanBytes(self.memory.embeddings),
            HumanBytes(self.memory.resident_weights),
            self.n_slots,
            HumanBytes(self.memory.slots),
            HumanBytes(self.memory.kv_cache),
            HumanBytes(self.memory.activations),
            HumanBytes(self.memory.output),
            HumanBytes(self.memory.workspace),
            HumanBytes(self.memory.allocator),
            HumanBytes(self.memory.total())
        );
        let _ = writeln!(
            s,
            "prefill     {} of {} layers resident, the rest streamed (prefetch depth {}), layer-major",
            self.resident_layers(),
            shape.n_layers,
            self.prefetch
        );
        let count = |p: DecodePlace| self.decode.iter().filter(|&&d| d == p).count();
        let _ = writeln!(
            s,
            "decode      GPU {} layers, CPU {} layers, streamed {} layers; output projection on the {}",
            count(DecodePlace::Gpu),
            count(DecodePlace::Cpu),
            count(DecodePlace::Streamed),
            if self.output_on_gpu { "GPU" } else { "CPU" }
        );
        if !self.parked.is_empty() {
            let bytes: u64 = self.parked.iter().map(|&i| shape.layer_bytes[i]).sum();
            let _ = writeln!(
                s,
                "handover    after each prompt {} streamed layers ({}) park on the GPU for decode, in the memory prefill used",
                self.parked.len(),
                HumanBytes(bytes)
            );
        }
        let mut map = String::new();
        for (i, (p, d)) in self.prefill.iter().zip(&self.decode).enumerate() {
            map.push(match (p, d) {
                (PrefillPlace::Resident, _) => 'R',
                (PrefillPlace::Streamed, _) if self.parked.contains(&i) => 'P',
                (PrefillPlace::Streamed, DecodePlace::Cpu) => 'c',
                (PrefillPlace::Streamed, _) => 's',
            });
        }
        let _ = writeln!(
            s,
            "layers      {map}   (R resident, P streamed in prefill / parked for decode, s streamed, c streamed in prefill / CPU in decode)"
        );
        let _ = writeln!(
            s,
            "predicted   pp{} {:.1} t/s, tg {:.2} t/s",
            self.pp_tokens, self.predicted_pp_tps, self.predicted_tg_tps
        );
        s
    }
}

/// The expected share of `e` experts that a batch of `batch` tokens, each
/// choosing `k` of them uniformly, runs: `1 − (1 − k/e)^batch`.
pub fn expert_fraction(e: usize, k: usize, batch: usize) -> f64 {
    if e == 0 {
        return 1.0;
    }
    1.0 - (1.0 - (k.min(e) as f64 / e as f64)).powi(batch.max(1) as i32)
}

/// The shape of a synthetic preset (see `crate::synth::PRESETS`) with matrices
/// of `ty`, computed without writing the model.
pub fn preset_shape(name: &str, ty: crate::quant::GgmlType) -> Option<ModelShape> {
    preset_shape_mix(name, crate::synth::QuantMix::Uniform(ty))
}

/// The shape of a synthetic preset quantized with `mix` (a type, or a recipe
/// such as Q4_K_M): the tensors `ferry synth` would write, with their exact
/// types, counted without writing them.
pub fn preset_shape_mix(name: &str, mix: crate::synth::QuantMix) -> Option<ModelShape> {
    let mut spec = crate::synth::TinySpec::preset(name, crate::quant::GgmlType::F32)?;
    spec.mix = Some(mix);
    let tensors = crate::synth::tensor_list(&spec, spec.n_vocab);
    let bytes = |shape: &[u64], ty: crate::quant::GgmlType| {
        ty.bytes_for(shape.iter().product()).unwrap_or(0)
    };
    let find = |n: &str| tensors.iter().find(|t| t.0 == n);
    let n = spec.n_layers as usize;
    let (mut layer_types, mut layer_macs) = (vec![TypedBytes::default(); n], vec![0u64; n]);
    let mut layer_expert_types = vec![TypedBytes::default(); n];
    for (tname, shape, ty) in &tensors {
        let Some(rest) = tname.strip_prefix("blk.") else {
            continue;
        };
        let l: usize = rest.split('.').next()?.parse().ok()?;
        layer_types[l].add(*ty, bytes(shape, *ty));
        match shape.len() {
            2 => layer_macs[l] += shape[0] * shape[1],
            // An expert stack: a token runs `n_used` of its matrices.
            3 => {
                layer_expert_types[l].add(*ty, bytes(shape, *ty));
                layer_macs[l] += shape[0] * shape[1] * spec.experts.map_or(0, |x| x[1]);
            }
            _ => {}
        }
    }
    let (_, embd_shape, embd_ty) = find("token_embd.weight")?;
    let (_, out_shape, out_ty) = find("output.weight").or(find("token_embd.weight"))?;
    let (d, h, kvh) = (spec.d_model, spec.n_heads, spec.n_kv_heads);
    let hd = spec.head_dim();
    Some(ModelShape {
        name: format!("{name} ({} synthetic)", mix.name()),
        n_layers: n,
        layer_bytes: layer_types.iter().map(TypedBytes::total).collect(),
        layer_types,
        layer_macs,
        layer_expert_types,
        experts: spec.experts.map(|x| (x[0] as usize, x[1] as usize)),
        d_ff_expert: spec.experts.map_or(0, |x| x[2] as usize),
        embd_bytes: bytes(embd_shape, *embd_ty),
        tied: spec.tied,
        output_bytes: bytes(out_shape, *out_ty) + 4 * d,
        output_types: TypedBytes(vec![
            (*out_ty, bytes(out_shape, *out_ty)),
            (crate::quant::GgmlType::F32, 4 * d),
        ]),
        output_macs: out_shape.iter().product(),
        kv_bytes_per_token: 2 * 2 * kvh * hd,
        d_model: d as usize,
        d_ff: spec.d_ff as usize,
        n_heads: h as usize,
        head_dim: hd as usize,
    })
}
