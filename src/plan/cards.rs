//! Several GPUs in one host (issue #26): a VRAM budget per card, the layers
//! dealt to the cards in blocks, each card keeping what fits of its layers
//! and streaming the rest through its own slots on its own PCIe link.
//!
//! Prefill stays layer-major (every layer crosses a link at most once per
//! prompt); the activations move to the next card at each block boundary.
//! With blocks smaller than a card's share, a card copies its next block's
//! layers while the other cards compute theirs, so every link is busy: with
//! one contiguous range per card, a later card's copies could start only
//! as far ahead as its slots reach. The planner tries block sizes and keeps
//! the fastest prediction. Decode runs each layer where it lives: on its
//! card (resident, or streamed on that card's link) or on the CPU.
//!
//! What is here is the plan and its cost model (`ferry plan --gpu-profile
//! 2x NAME`), tested in CI with simulated cards; running across cards waits
//! for a machine with several GPUs.

use super::cost::{self, CostModel};
use super::profile::{CpuProfile, GpuProfile, MachineProfile};
use super::{
    DecodePlace, HumanBytes, MemoryPlan, ModelShape, PlanError, PlanRequest, allocator_reserve,
    spread_resident,
};

/// The cards of one host and its CPU.
#[derive(Debug, Clone)]
pub struct CardsProfile {
    pub cards: Vec<GpuProfile>,
    pub cpu: CpuProfile,
}

impl CardsProfile {
    /// `2x rtx4090` (several of one card), `rtx4090+rtx3090` (cards that
    /// differ), or anything `MachineProfile::load` takes (one card).
    pub fn load(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let mut cards = Vec::new();
        let mut cpu = None;
        for part in spec.split('+') {
            let part = part.trim();
            let (count, name) = match part.split_once(['x', 'X']) {
                Some((n, name)) if n.trim().parse::<usize>().is_ok() => {
                    (n.trim().parse::<usize>().unwrap_or(1), name.trim())
                }
                _ => (1, part),
            };
            if !(1..=16).contains(&count) {
                return Err(format!("'{part}': between 1 and 16 cards"));
            }
            let m = MachineProfile::load(name)?;
            cpu.get_or_insert(m.cpu);
            cards.extend(std::iter::repeat_n(m.gpu, count));
        }
        let cpu = cpu.ok_or_else(|| format!("'{spec}': no card named"))?;
        Ok(CardsProfile { cards, cpu })
    }

    /// Card `c` with the host's CPU, as the single-card cost model takes it.
    pub fn machine(&self, c: usize) -> MachineProfile {
        MachineProfile {
            gpu: self.cards[c].clone(),
            cpu: self.cpu.clone(),
        }
    }

    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .cards
            .iter()
            .enumerate()
            .map(|(i, g)| {
                format!(
                    "{i}: {} ({:.0} GiB, H2D {:.0} GB/s)",
                    g.name,
                    g.vram_bytes as f64 / (1u64 << 30) as f64,
                    g.h2d_gbps
                )
            })
            .collect();
        format!("{} + {}", names.join(", "), self.cpu.name)
    }
}

/// Where a model's layers go across several cards.
#[derive(Debug, Clone)]
pub struct CardPlan {
    /// The card that runs each layer.
    pub card_of_layer: Vec<usize>,
    /// Layers resident on their card (the rest are streamed in prefill).
    pub resident: Vec<bool>,
    /// Decode placement of each layer (on its card, streamed on its card's
    /// link, or on the CPU).
    pub decode: Vec<DecodePlace>,
    /// Layers per block dealt to the cards in turn.
    pub block: usize,
    /// Streaming slots per card.
    pub slots: Vec<usize>,
    /// How each card's budget is spent.
    pub memory: Vec<MemoryPlan>,
    pub budgets: Vec<u64>,
    pub predicted_pp_tps: f64,
    pub predicted_tg_tps: f64,
    pub pp_tokens: usize,
}

/// Seconds to move a micro-batch's activations from one card to the next
/// (through pinned host memory: a copy out, a copy in, at the slower card's
/// copy rate; peer-to-peer copies, where the cards allow them, are faster).
fn hop_secs(shape: &ModelShape, tokens: usize, from: &GpuProfile, to: &GpuProfile) -> f64 {
    let bytes = (tokens * shape.d_model * 4) as f64;
    2.0 * bytes / (from.h2d_gbps.min(to.h2d_gbps) * 1e9) + 20e-6
}

/// Prefill of `n` tokens across the cards: one compute chain in layer order
/// (a card waits for the previous layer, on whichever card), one copy engine
/// per card bringing its streamed layers into its slots in layer order, each
/// as soon as the slot's previous layer has run.
pub fn prefill_time_cards(
    shape: &ModelShape,
    profile: &CardsProfile,
    plan: &CardPlan,
    n: usize,
) -> f64 {
    let costs: Vec<CostModel> = (0..profile.cards.len())
        .map(|c| CostModel::new(profile.machine(c)))
        .collect();
    let mut copy_free = vec![0f64; profile.cards.len()];
    let mut slot_free: Vec<Vec<f64>> = plan.slots.iter().map(|&s| vec![0.0; s.max(1)]).collect();
    let mut next_slot = vec![0usize; profile.cards.len()];
    let mut done = 0f64;
    let mut prev_card = plan.card_of_layer.first().copied().unwrap_or(0);
    for i in 0..shape.n_layers {
        let c = plan.card_of_layer[i];
        let cm = &costs[c];
        let attn = (n * n / 2) as u64 * (shape.n_heads * shape.head_dim * 2) as u64;
        let compute =
            cm.gpu_layer(&shape.layer_types[i], shape.layer_macs[i], n) + cm.gpu_gemm(attn, 1);
        if c != prev_card {
            done += hop_secs(shape, n, &profile.cards[prev_card], &profile.cards[c]);
        }
        let ready = if plan.resident[i] {
            0.0
        } else {
            let s = next_slot[c] % slot_free[c].len();
            next_slot[c] += 1;
            let start = copy_free[c].max(slot_free[c][s]);
            copy_free[c] = start + cm.h2d(shape.layer_bytes[i]);
            let arrived = copy_free[c];
            slot_free[c][s] = done.max(arrived) + compute;
            arrived
        };
        done = done.max(ready) + compute;
        prev_card = c;
    }
    let last = plan.card_of_layer.last().copied().unwrap_or(0);
    done + costs[last].gpu_layer(&shape.output_types, shape.output_macs, 1)
}

/// Seconds per decode step of `batch` sequences: each layer where the plan
/// puts it, plus a hop at each change of card.
pub fn decode_time_cards(
    shape: &ModelShape,
    profile: &CardsProfile,
    plan: &CardPlan,
    batch: usize,
) -> f64 {
    let mut t = 0.0;
    let mut prev: Option<usize> = None;
    for i in 0..shape.n_layers {
        let c = plan.card_of_layer[i];
        let cm = CostModel::new(profile.machine(c));
        let w = shape.decode_types(i, batch);
        if prev.is_some_and(|p| p != c) {
            t += hop_secs(
                shape,
                batch,
                &profile.cards[prev.unwrap_or(c)],
                &profile.cards[c],
            );
        }
        t += match plan.decode[i] {
            DecodePlace::Gpu => cm.gpu_layer(&w, shape.layer_macs[i], batch) + cm.decode_layer_secs,
            DecodePlace::Cpu => {
                cm.cpu_layer(&w, shape.layer_macs[i], batch) + 2.0 * cm.crossing_secs
            }
            DecodePlace::Streamed => {
                cm.h2d(shape.layer_bytes[i])
                    .max(cm.gpu_layer(&w, shape.layer_macs[i], batch))
            }
        };
        prev = Some(c);
    }
    let last = plan.card_of_layer.last().copied().unwrap_or(0);
    let cm = CostModel::new(profile.machine(last));
    t + cm.gpu_layer(&shape.output_types, shape.output_macs, batch)
}

/// The plan across cards for one budget per card: for each block size, the
/// layers dealt to the cards in turn; on each card, its layers' KV cache, a
/// micro-batch's activations and workspace, two to four slots and as many of
/// its layers resident as fit (spread among them); the output projection on
/// the card of the last layer. The fastest predicted prefill wins (then
/// decode).
pub fn plan_cards(
    shape: &ModelShape,
    req: &PlanRequest,
    budgets: &[u64],
    profile: &CardsProfile,
) -> Result<CardPlan, PlanError> {
    let cards = profile.cards.len();
    if budgets.len() != cards {
        return Err(PlanError::Cards(format!(
            "--vram-budget: {} budgets for {cards} cards; pass one value for all, or one per card",
            budgets.len()
        )));
    }
    let n = shape.n_layers;
    let act = cost::activation_bytes(shape, req.ubatch) + (req.n_ctx * shape.d_model * 4) as u64;
    let workspace = cost::workspace_bytes(shape, req.ubatch);
    let kv_layer = shape.kv_bytes_per_token * req.n_ctx as u64 * req.n_parallel as u64;
    let pp_tokens = req.ubatch.max(512);
    let mut blocks: Vec<usize> = [1, 2, 4, 8, n.div_ceil(cards)]
        .into_iter()
        .filter(|&b| b >= 1 && b <= n)
        .collect();
    blocks.dedup();
    let mut best: Option<CardPlan> = None;
    let mut smallest_short: Option<(usize, u64)> = None;
    'blocks: for block in blocks {
        let card_of_layer: Vec<usize> = (0..n).map(|i| (i / block) % cards).collect();
        let last = card_of_layer[n - 1];
        let mut resident = vec![false; n];
        let mut slots = vec![0usize; cards];
        let mut memory = Vec::with_capacity(cards);
        for c in 0..cards {
            let layers: Vec<usize> = (0..n).filter(|&i| card_of_layer[i] == c).collect();
            let slot = layers
                .iter()
                .map(|&i| shape.layer_bytes[i])
                .max()
                .unwrap_or(0);
            let fixed = MemoryPlan {
                embeddings: 0,
                resident_weights: 0,
                slots: 0,
                kv_cache: kv_layer * layers.len() as u64,
                activations: act,
                output: if c == last { shape.output_bytes } else { 0 },
                workspace,
                allocator: 0,
            };
            let mem = |r: usize, s: usize, keep: &[bool]| {
                let resident_weights: u64 = (0..layers.len())
                    .filter(|&j| keep[j])
                    .map(|j| shape.layer_bytes[layers[j]])
                    .sum();
                MemoryPlan {
                    resident_weights,
                    slots: s as u64 * slot,
                    allocator: allocator_reserve(r, layers.len(), s),
                    ..fixed.clone()
                }
            };
            // Most resident layers with two slots, then more slots (up to
            // four) with what is left.
            let mut chosen = None;
            for r in (0..=layers.len()).rev() {
                let keep = spread_resident(layers.len(), r);
                let s = if r == layers.len() { 0 } else { 2 };
                if mem(r, s, &keep).total() <= budgets[c] {
                    let s = if s == 0 {
                        0
                    } else {
                        (2..=4)
                            .rev()
                            .find(|&s| mem(r, s, &keep).total() <= budgets[c])
                            .unwrap_or(2)
                    };
                    chosen = Some((r, s, keep));
                    break;
                }
            }
            let Some((r, s, keep)) = chosen else {
                let need = mem(0, 2, &vec![false; layers.len()]).total();
                if smallest_short.is_none_or(|(_, b)| need < b) {
                    smallest_short = Some((c, need));
                }
                continue 'blocks;
            };
            for (j, &i) in layers.iter().enumerate() {
                resident[i] = keep[j];
            }
            slots[c] = s;
            memory.push(mem(r, s, &keep));
        }
        // Decode: each non-resident layer on its card's link or the CPU,
        // whichever its card's cost model prices lower for the batch.
        let decode: Vec<DecodePlace> = (0..n)
            .map(|i| {
                if resident[i] {
                    return DecodePlace::Gpu;
                }
                let cm = CostModel::new(profile.machine(card_of_layer[i]));
                let w = shape.decode_types(i, req.n_parallel);
                cm.decode_place(&w, shape.layer_macs[i], req.n_parallel)
            })
            .collect();
        let mut candidate = CardPlan {
            card_of_layer,
            resident,
            decode,
            block,
            slots,
            memory,
            budgets: budgets.to_vec(),
            predicted_pp_tps: 0.0,
            predicted_tg_tps: 0.0,
            pp_tokens,
        };
        candidate.predicted_pp_tps =
            pp_tokens as f64 / prefill_time_cards(shape, profile, &candidate, pp_tokens);
        candidate.predicted_tg_tps = req.n_parallel.max(1) as f64
            / decode_time_cards(shape, profile, &candidate, req.n_parallel.max(1));
        let better = best.as_ref().is_none_or(|b| {
            candidate.predicted_pp_tps > b.predicted_pp_tps * 1.0001
                || (candidate.predicted_pp_tps >= b.predicted_pp_tps * 0.9999
                    && candidate.predicted_tg_tps > b.predicted_tg_tps)
        });
        if better {
            best = Some(candidate);
        }
    }
    best.ok_or_else(|| {
        let (c, need) = smallest_short.unwrap_or((0, 0));
        PlanError::BudgetTooSmall {
            budget: HumanBytes(budgets.get(c).copied().unwrap_or(0)),
            needed: HumanBytes(need),
            why: format!(
                "card {c}: two streaming slots, its layers' KV cache, activations and workspace"
            ),
        }
    })
}

impl CardPlan {
    pub fn describe(&self, shape: &ModelShape, profile: &CardsProfile) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "model       {} ({} layers)", shape.name, shape.n_layers);
        let _ = writeln!(s, "machine     {}", profile.describe());
        let _ = writeln!(
            s,
            "cards       layers dealt in blocks of {} in turn; activations move to the next card at each block boundary",
            self.block
        );
        for (c, m) in self.memory.iter().enumerate() {
            let mine: Vec<usize> = (0..shape.n_layers)
                .filter(|&i| self.card_of_layer[i] == c)
                .collect();
            let res = mine.iter().filter(|&&i| self.resident[i]).count();
            let _ = writeln!(
                s,
                "card {c}      {} layers, {res} resident, {} slots; budget {}: resident weights {}, slots {}, KV cache {}, activations {}, output {}, workspace {}, allocator reserve {} (total {})",
                mine.len(),
                self.slots[c],
                HumanBytes(self.budgets[c]),
                HumanBytes(m.resident_weights),
                HumanBytes(m.slots),
                HumanBytes(m.kv_cache),
                HumanBytes(m.activations),
                HumanBytes(m.output),
                HumanBytes(m.workspace),
                HumanBytes(m.allocator),
                HumanBytes(m.total())
            );
        }
        let layers: String = (0..shape.n_layers)
            .map(|i| {
                let letter = (b'a' + (self.card_of_layer[i] % 26) as u8) as char;
                if self.resident[i] {
                    letter.to_ascii_uppercase()
                } else {
                    match self.decode[i] {
                        DecodePlace::Cpu => '-',
                        _ => letter,
                    }
                }
            })
            .collect();
        let _ = writeln!(
            s,
            "layers      {layers}   (A, B, …: resident on card 0, 1, …; a, b, …: streamed on that card's link; -: streamed in prefill, on the CPU in decode)"
        );
        let _ = writeln!(
            s,
            "predicted   pp{} {:.1} t/s, tg {:.2} t/s",
            self.pp_tokens, self.predicted_pp_tps, self.predicted_tg_tps
        );
        s
    }
}

/// `ferry plan` for several cards: the plan, and what one card of the first
/// kind would predict with the same total budget (the two-link gain).
pub fn report(
    shape: &ModelShape,
    req: &PlanRequest,
    budgets: &[u64],
    profile: &CardsProfile,
) -> Result<String, PlanError> {
    let plan = plan_cards(shape, req, budgets, profile)?;
    let mut s = plan.describe(shape, profile);
    let one = PlanRequest {
        budget: budgets.iter().sum(),
        ..req.clone()
    };
    if let Ok(single) = super::plan(shape, &one, &CostModel::new(profile.machine(0))) {
        s.push_str(&format!(
            "one card    {} with the same total budget ({}): pp{} {:.1} t/s, tg {:.2} t/s (these cards: {:.2}× and {:.2}×)\n",
            profile.cards[0].name,
            HumanBytes(one.budget),
            single.pp_tokens,
            single.predicted_pp_tps,
            single.predicted_tg_tps,
            plan.predicted_pp_tps / single.predicted_pp_tps,
            plan.predicted_tg_tps / single.predicted_tg_tps
        ));
    }
    Ok(s)
}
