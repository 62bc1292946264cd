//! The cost model: time = bytes / bandwidth or operations / rate, with one
//! efficiency factor per kind of work (how much of the peak real kernels get).
//! Prefill overlap is simulated event by event: the copy engine fills slots in
//! layer order while the compute stream runs layer after layer.

use super::{DecodePlace, MachineProfile, ModelShape, TypedBytes};

#[derive(Debug, Clone)]
pub struct CostModel {
    pub profile: MachineProfile,
    /// Fraction of the bf16 peak that GEMMs reach.
    pub gemm_efficiency: f64,
    /// Fraction of HBM bandwidth that GEMVs reach, where the profile has no
    /// measured GEMV rate (`GpuProfile::gemv_gbps`).
    pub gemv_efficiency: f64,
    /// Fixed cost of moving activations between CPU and GPU at a layer boundary, seconds.
    pub crossing_secs: f64,
    /// GPU time of a layer in a decode step beyond reading its weights
    /// (attention, norms, RoPE, launches), seconds. 25 us: a Q5_K_M 32B
    /// decoded resident at 82.5 t/s on an H100 (12.12 ms a step) where its
    /// GEMVs at the calibrated per-type rates take 10.54 ms (2026-12-07).
    pub decode_layer_secs: f64,
}

impl CostModel {
    pub fn new(profile: MachineProfile) -> Self {
        CostModel {
            profile,
            gemm_efficiency: 0.6,
            gemv_efficiency: 0.7,
            crossing_secs: 20e-6,
            decode_layer_secs: 25e-6,
        }
    }

    pub fn h2d(&self, bytes: u64) -> f64 {
        bytes as f64 / (self.profile.gpu.h2d_gbps * 1e9)
    }

    pub fn gpu_gemm(&self, macs: u64, tokens: usize) -> f64 {
        2.0 * macs as f64 * tokens as f64
            / (self.profile.gpu.bf16_tflops * 1e12 * self.gemm_efficiency)
    }

    /// Seconds the decode GEMVs take to read `w`, each type at its rate.
    pub fn gpu_gemv(&self, w: &TypedBytes) -> f64 {
        let gpu = &self.profile.gpu;
        w.0.iter()
            .map(|&(ty, b)| b as f64 / (gpu.gemv_rate(ty, self.gemv_efficiency) * 1e9))
            .sum()
    }

    /// GPU time of a layer over `tokens` tokens: the larger of reading its
    /// weights and computing with them.
    pub fn gpu_layer(&self, w: &TypedBytes, macs: u64, tokens: usize) -> f64 {
        self.gpu_gemv(w).max(self.gpu_gemm(macs, tokens))
    }

    /// CPU time of a layer for a decode batch: memory-bound at small batches,
    /// compute-bound at large ones.
    pub fn cpu_layer(&self, w: &TypedBytes, macs: u64, batch: usize) -> f64 {
        let cpu = &self.profile.cpu;
        let mem: f64 =
            w.0.iter()
                .map(|&(ty, b)| b as f64 / (cpu.gemv_rate(ty) * 1e9))
                .sum();
        let compute = 2.0 * macs as f64 * batch as f64 / (cpu.gemm_gflops * 1e9);
        mem.max(compute)
    }

    /// Where a non-resident layer should run for a decode batch: on the CPU, or
    /// streamed to the GPU for every step — whichever the model predicts faster.
    pub fn decode_place(&self, w: &TypedBytes, macs: u64, batch: usize) -> DecodePlace {
        let cpu = self.cpu_layer(w, macs, batch) + 2.0 * self.crossing_secs;
        let stream = self.h2d(w.total()).max(self.gpu_layer(w, macs, batch));
        if cpu <= stream {
            DecodePlace::Cpu
        } else {
            DecodePlace::Streamed
        }
    }

    /// Attention of a layer over a prompt of `n` tokens (causal: n²/2 pairs).
    fn attention(&self, shape: &ModelShape, n: usize) -> f64 {
        let macs = (n * n / 2) as u64 * (shape.n_heads * shape.head_dim * 2) as u64;
        self.gpu_gemm(macs, 1)
    }

    /// Predicted prefill time of `n` tokens with `slots` streaming slots.
    pub fn prefill_time_with_slots(
        &self,
        shape: &ModelShape,
        resident: &[bool],
        n: usize,
        slots: usize,
        output_on_gpu: bool,
    ) -> f64 {
        // Copy engine and compute stream, simulated in layer order.
        let mut copy_free = 0f64; // when the copy engine is next idle
        let mut compute_done = 0f64; // when the previous layer finished
        let mut slot_free: Vec<f64> = vec![0.0; slots.max(1)]; // when each slot can be reused
        let mut next_slot = 0;
        for (i, &r) in resident.iter().enumerate() {
            let compute = self.gpu_layer(&shape.layer_types[i], shape.layer_macs[i], n)
                + self.attention(shape, n);
            let ready = if r {
                0.0
            } else {
                let s = next_slot % slot_free.len();
                next_slot += 1;
                let start = copy_free.max(slot_free[s]);
                copy_free = start + self.h2d(shape.layer_bytes[i]);
                let arrived = copy_free;
                // The slot is busy until this layer's compute finishes.
                let done = compute_done.max(arrived) + compute;
                slot_free[s] = done;
                arrived
            };
            compute_done = compute_done.max(ready) + compute;
        }
        let output = if output_on_gpu {
            self.gpu_layer(&shape.output_types, shape.output_macs, 1)
        } else {
            self.cpu_layer(&shape.output_types, shape.output_macs, 1)
        };
        compute_done + output
    }

    pub fn prefill_time(
        &self,
        shape: &ModelShape,
        resident: &[bool],
        n: usize,
        output_on_gpu: bool,
    ) -> f64 {
        let slots = slots_needed(shape, resident, self, n);
        self.prefill_time_with_slots(shape, resident, n, slots, output_on_gpu)
    }

    /// Seconds per decode step of a batch, simulated as the executor runs it:
    /// layers one after another (CPU or GPU), while the copy engine brings in
    /// the streamed layers in layer order, each as soon as its slot's previous
    /// user has finished — so copies overlap the CPU's layers.
    pub fn decode_time(
        &self,
        shape: &ModelShape,
        place: &[DecodePlace],
        batch: usize,
        output_on_gpu: bool,
        slots: usize,
    ) -> f64 {
        let mut t = 0.0;
        let mut copy_free = 0f64;
        let mut slot_free = vec![0f64; slots.max(1)];
        let mut next_slot = 0;
        let mut prev = DecodePlace::Gpu;
        // As many streamed layers as there are slots stay in them from one
        // step to the next (the executor runs a layer from the slot still
        // holding it): no copies. More, and each step copies them all.
        let streamed = place
            .iter()
            .filter(|&&p| p == DecodePlace::Streamed)
            .count();
        let held = streamed <= slots;
        for (i, &p) in place.iter().enumerate() {
            // What the step reads (a mixture: the experts the batch chooses);
            // a streamed layer not held in a slot is copied whole.
            let (w, bytes, macs) = (
                &shape.decode_types(i, batch),
                shape.layer_bytes[i],
                shape.layer_macs[i],
            );
            let on_cpu = |p| p == DecodePlace::Cpu;
            if on_cpu(p) != on_cpu(prev) {
                t += self.crossing_secs;
            }
            let gpu = || self.gpu_layer(w, macs, batch) + self.decode_layer_secs;
            match p {
                DecodePlace::Gpu => t += gpu(),
                DecodePlace::Streamed if held => t += gpu(),
                DecodePlace::Cpu => t += self.cpu_layer(w, macs, batch),
                DecodePlace::Streamed if self.profile.gpu.copies_block_host => {
                    // The host waits out each copy: nothing overlaps it.
                    t += self.h2d(bytes) + gpu();
                }
                DecodePlace::Streamed => {
                    let s = next_slot % slot_free.len();
                    next_slot += 1;
                    copy_free = copy_free.max(slot_free[s]) + self.h2d(bytes);
                    t = t.max(copy_free) + gpu();
                    slot_free[s] = t;
                }
            }
            prev = p;
        }
        if prev == DecodePlace::Cpu {
            t += self.crossing_secs;
        }
        // The CPU's layers and the copies both read host memory: together they
        // can go no faster than its bandwidth, however well they overlap.
        if self.profile.cpu.host_read_gbps > 0.0 {
            let host_bytes: u64 = place
                .iter()
                .enumerate()
                .map(|(i, p)| match p {
                    DecodePlace::Cpu => shape.decode_types(i, batch).total(),
                    DecodePlace::Streamed if !held => shape.layer_bytes[i],
                    _ => 0,
                })
                .sum();
            t = t.max(host_bytes as f64 / (self.profile.cpu.host_read_gbps * 1e9));
        }
        t + if output_on_gpu {
            self.gpu_layer(&shape.output_types, shape.output_macs, batch)
        } else {
            self.cpu_layer(&shape.output_types, shape.output_macs, batch)
        }
    }

    /// Decode placement of the non-resident layers for a batch: `k` of them
    /// streamed, spread evenly among them (so each copy runs while the CPU
    /// computes the layers before it), the rest on the CPU, with `k` the one
    /// the simulation predicts fastest. Neither side is idle when the CPU's
    /// share and the copies take about the same time.
    pub fn decode_placement(
        &self,
        shape: &ModelShape,
        resident: &[bool],
        batch: usize,
        output_on_gpu: bool,
        slots: usize,
    ) -> Vec<DecodePlace> {
        let off: Vec<usize> = (0..resident.len()).filter(|&i| !resident[i]).collect();
        let mut best: Option<(f64, Vec<DecodePlace>)> = None;
        for k in 0..=off.len() {
            let streamed = super::spread_resident(off.len(), k);
            let mut place: Vec<DecodePlace> = resident
                .iter()
                .map(|&r| {
                    if r {
                        DecodePlace::Gpu
                    } else {
                        DecodePlace::Cpu
                    }
                })
                .collect();
            for (j, &i) in off.iter().enumerate() {
                if streamed[j] {
                    place[i] = DecodePlace::Streamed;
                }
            }
            let t = self.decode_time(shape, &place, batch, output_on_gpu, slots);
            if best.as_ref().is_none_or(|(b, _)| t < b * (1.0 - 1e-9)) {
                best = Some((t, place));
            }
        }
        best.map(|(_, p)| p).unwrap_or_default()
    }
}

/// The fewest slots (at least 2) within 1 % of the best prefill time with up to 4.
pub fn slots_needed(shape: &ModelShape, resident: &[bool], cost: &CostModel, n: usize) -> usize {
    if resident.iter().all(|&r| r) {
        return 0;
    }
    let times: Vec<(usize, f64)> = (2..=4)
        .map(|s| (s, cost.prefill_time_with_slots(shape, resident, n, s, true)))
        .collect();
    let best = times.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
    times.iter().find(|t| t.1 <= best * 1.01).map_or(2, |t| t.0)
}

/// Activations of one micro-batch on the GPU (f32): the residual stream, the
/// normed input, q/k/v, attention output and the two FFN halves.
pub fn activation_bytes(shape: &ModelShape, ubatch: usize) -> u64 {
    let per_token = 4 * (3 * shape.d_model + 3 * shape.n_heads * shape.head_dim + 2 * shape.d_ff);
    (ubatch * per_token) as u64
}

/// Library and conversion workspace: f16 copies of the largest matrix and of
/// a micro-batch's widest activation, plus cuBLAS's workspace.
pub fn workspace_bytes(shape: &ModelShape, ubatch: usize) -> u64 {
    let largest = (shape.d_model * shape.d_ff * 2) as u64;
    let acts = (ubatch * shape.d_ff * 2) as u64;
    largest + acts + (32 << 20)
}

/// Decode placement for each batch size: the split of the non-resident layers
/// between the CPU and streaming (`CostModel::decode_placement`), computed for
/// the batch a decode step actually has — parallel sequences raise it — and
/// remembered per size.
#[derive(Debug, Clone)]
pub struct DecodePlacer {
    cost: CostModel,
    shape: ModelShape,
    resident: Vec<bool>,
    slots: usize,
    output_on_gpu: bool,
    known: std::collections::BTreeMap<usize, Vec<DecodePlace>>,
}

impl DecodePlacer {
    pub fn new(
        cost: CostModel,
        shape: ModelShape,
        resident: Vec<bool>,
        slots: usize,
        output_on_gpu: bool,
    ) -> Self {
        DecodePlacer {
            cost,
            shape,
            resident,
            slots,
            output_on_gpu,
            known: Default::default(),
        }
    }

    /// Layers whose weights are on the device for decode changed (memory
    /// handover parked some, or a prefill took them back): place again.
    pub fn set_on_device(&mut self, on_device: Vec<bool>) {
        if on_device != self.resident {
            self.resident = on_device;
            self.known.clear();
        }
    }

    /// The placement for a decode step of `batch` sequences.
    pub fn for_batch(&mut self, batch: usize) -> &[DecodePlace] {
        let batch = batch.max(1);
        let DecodePlacer {
            cost,
            shape,
            resident,
            slots,
            output_on_gpu,
            known,
        } = self;
        known.entry(batch).or_insert_with(|| {
            cost.decode_placement(shape, resident, batch, *output_on_gpu, *slots)
        })
    }
}
