//! Executes a plan across the GPU and the CPU: prefill streams the
//! non-resident layers through GPU slots (layer-major, `StreamedModel`); decode
//! runs each non-resident layer where the plan put it — on the CPU from the
//! same pinned host memory the copies read, or streamed into a slot — and runs
//! on the GPU any streamed layer whose weights a slot still holds from the
//! prefill (the slots' memory is reused during decode instead of sitting idle).
//!
//! Activations cross between the devices only at layer boundaries where the
//! placement changes. Each layer's KV cache exists on both sides; rows are
//! copied to the side that runs the layer when that side lacks them, so any
//! sequence of placements stays consistent.

use half::f16;

use crate::backend::cpu::{CpuAct, CpuBackend, CpuKv};
use crate::backend::cuda::{CudaAct, CudaBackend, CudaKv};
use crate::backend::{Backend, BackendError, Batch};
use crate::engine::stream::StreamedModel;
use crate::gguf::Gguf;
use crate::model::{Layer, Scratch};
use crate::plan::DecodePlace;

/// Where one layer runs in one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// On the GPU with weights already there (resident, or left in a slot).
    Gpu,
    /// Copied into its slot first, then on the GPU.
    Stream,
    /// On the CPU from pinned host memory.
    Cpu,
}

/// What a forward pass did, for reports and traces.
#[derive(Debug, Clone, Default)]
pub struct PassStats {
    pub gpu_layers: usize,
    pub cpu_layers: usize,
    pub streamed_layers: usize,
    pub streamed_bytes: u64,
    /// Layer boundaries where activations moved between the devices.
    pub crossings: usize,
}

pub struct HybridModel {
    pub gpu: StreamedModel,
    /// A CPU view of every streamed layer (weights in the pinned buffers).
    cpu_layers: Vec<Option<Layer<CpuBackend>>>,
    /// The decode placement of each layer (for the last batch size asked).
    pub decode: Vec<DecodePlace>,
    /// Places the layers for each decode batch size; `None`: `decode` as given.
    placer: Option<crate::plan::DecodePlacer>,
    /// Page-locked host buffer through which activations go back to the GPU
    /// (read by a kernel: a copy would wait behind the weight prefetches).
    staging: Option<cudarc::driver::PinnedHostSlice<f32>>,
    shape: crate::plan::ModelShape,
    /// The decode batch the parked layers left room for (`hand_over`).
    handover_batch: usize,
}

/// How a pass uses the slots: where each layer runs, which slot each
/// slot-using layer occupies, and the users of each slot in order.
struct SlotSchedule {
    runs: Vec<Run>,
    slot_of: Vec<Option<usize>>,
    users: Vec<std::collections::VecDeque<usize>>,
    /// Layers to copy in, in layer order (the copy stream's order).
    copies: Vec<usize>,
}

/// Resolve a pass's placement against the slots: a streamed layer placed on
/// the GPU runs from the slot holding it (`holding[i]`) if no copy earlier in
/// the pass takes that slot, else it is copied again; every copied layer
/// takes the least recently used slot that no layer waiting in it still needs.
fn assign_slots(
    runs: &[Run],
    streamed: &[bool],
    holding: &[Option<usize>],
    n_slots: usize,
) -> SlotSchedule {
    let mut runs = runs.to_vec();
    let mut slot_of = vec![None; runs.len()];
    let mut users = vec![std::collections::VecDeque::new(); n_slots];
    let mut copies = Vec::new();
    if n_slots == 0 {
        return SlotSchedule {
            runs,
            slot_of,
            users,
            copies,
        };
    }
    // Layers that would run from the slot holding them, by slot.
    let mut waiting: Vec<Option<usize>> = vec![None; n_slots];
    for (i, run) in runs.iter_mut().enumerate() {
        if *run == Run::Gpu && streamed[i] {
            match holding[i] {
                Some(s) => waiting[s] = Some(i),
                None => *run = Run::Stream,
            }
        }
    }
    let mut last_use: Vec<Option<usize>> = vec![None; n_slots];
    for i in 0..runs.len() {
        match runs[i] {
            Run::Gpu if streamed[i] => {
                let s = holding[i].expect("resolved above");
                if waiting[s] == Some(i) {
                    waiting[s] = None;
                    slot_of[i] = Some(s);
                    last_use[s] = Some(i);
                    users[s].push_back(i);
                    continue;
                }
                // A copy earlier in this pass took its slot.
                runs[i] = Run::Stream;
            }
            Run::Stream => {}
            _ => continue,
        }
        let lru = |candidates: &mut dyn Iterator<Item = usize>| {
            candidates.min_by_key(|&s| last_use[s].map_or(0, |u| u + 1))
        };
        let s = lru(&mut (0..n_slots).filter(|&s| waiting[s].is_none()))
            .or_else(|| lru(&mut (0..n_slots)))
            .expect("at least one slot");
        waiting[s] = None;
        slot_of[i] = Some(s);
        last_use[s] = Some(i);
        users[s].push_back(i);
        copies.push(i);
    }
    SlotSchedule {
        runs,
        slot_of,
        users,
        copies,
    }
}

/// Issues a pass's weight copies as early as the slots allow: the copy of a
/// streamed layer starts as soon as every earlier user of its slot has been
/// queued on the compute stream (its end is the copy's `free` event), so the
/// copy engine fills slots while the CPU computes the layers placed there.
struct CopyPump {
    free: Vec<cudarc::driver::CudaEvent>,
    next: usize,
    arrivals: Vec<Option<cudarc::driver::CudaEvent>>,
    bytes: u64,
}

impl CopyPump {
    fn new(cuda: &CudaBackend, n_layers: usize, n_slots: usize) -> Result<Self, BackendError> {
        let free = (0..n_slots)
            .map(|_| cuda.stream.record_event(None))
            .collect::<Result<_, _>>()
            .map_err(crate::backend::cuda::err)?;
        Ok(CopyPump {
            free,
            next: 0,
            arrivals: (0..n_layers).map(|_| None).collect(),
            bytes: 0,
        })
    }

    /// Issue every copy whose slot is free of earlier users, in layer order.
    fn pump(
        &mut self,
        gpu: &mut StreamedModel,
        cuda: &CudaBackend,
        sched: &SlotSchedule,
    ) -> Result<(), BackendError> {
        while let Some(&u) = sched.copies.get(self.next) {
            let s = sched.slot_of[u].expect("copied layers have a slot");
            if sched.users[s].front() != Some(&u) {
                break;
            }
            let (arrived, bytes) = gpu.prefetch(cuda, u, s, &self.free[s])?;
            self.arrivals[u] = Some(arrived);
            self.bytes += bytes;
            self.next += 1;
        }
        Ok(())
    }
}

/// The KV cache of a hybrid session: one per layer on the GPU and, for
/// streamed layers, one on the host, with how many positions of each
/// sequence each side holds.
pub struct HybridKv {
    pub gpu: Vec<CudaKv>,
    cpu: Vec<Option<CpuKv>>,
    valid: KvValidity,
    pub n_ctx: usize,
    pub n_seq: usize,
}

impl HybridModel {
    pub fn new(
        gpu: StreamedModel,
        cpu: &CpuBackend,
        g: &Gguf,
        decode: Vec<DecodePlace>,
    ) -> Result<Self, BackendError> {
        let n = gpu.model.config.n_layers;
        if decode.len() != n {
            return Err(BackendError::Invalid(
                "decode placement does not match the layer count".into(),
            ));
        }
        let cpu_layers = cpu.run(|| {
            (0..n)
                .map(|i| gpu.cpu_layer(cpu, g, i))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let shape = crate::plan::ModelShape::from_gguf(g)
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        Ok(HybridModel {
            gpu,
            cpu_layers,
            decode,
            placer: None,
            staging: None,
            shape,
            handover_batch: 0,
        })
    }

    /// Memory handover after a prefill: the memory that only prefill needed
    /// (the f16 conversion workspace, micro-batch activations) and whatever
    /// the plan left unused, less what decode steps of `n_seq` sequences need,
    /// holds device copies of non-resident layers, which decode then runs like
    /// resident ones; the decode placement is redone around them. The next
    /// prefill (or a batch larger than `n_seq`) gives the memory back first.
    /// Returns how many layers are parked. Does nothing without a budget.
    pub fn hand_over(&mut self, cuda: &CudaBackend, n_seq: usize) -> Result<usize, BackendError> {
        let Some(budget) = cuda.budget() else {
            return Ok(0);
        };
        cuda.release_workspace()?;
        let used = cuda.memory_in_use()?;
        let reserve = crate::plan::decode_reserve_bytes(&self.shape, n_seq);
        let room = budget.saturating_sub(used).saturating_sub(reserve);
        let bytes: Vec<Option<u64>> = (0..self.decode.len())
            .map(|i| {
                (!self.gpu.on_device(i))
                    .then(|| self.gpu.streamed_len(i).map(|l| l as u64))
                    .flatten()
            })
            .collect();
        for i in crate::plan::handover_layers(&bytes, room) {
            self.gpu.park(cuda, i)?;
        }
        self.handover_batch = n_seq.max(1);
        self.sync_placer();
        Ok(self.gpu.parked_layers())
    }

    /// Give the parked layers' memory back (a pass larger than the handover
    /// left room for is coming).
    fn take_back(&mut self, cuda: &CudaBackend) -> Result<(), BackendError> {
        if self.gpu.parked_layers() > 0 {
            self.gpu.unpark_all(cuda)?;
            self.sync_placer();
        }
        self.handover_batch = 0;
        Ok(())
    }

    /// The decode placer places around the layers on the device now.
    fn sync_placer(&mut self) {
        let on_device: Vec<bool> = (0..self.decode.len())
            .map(|i| self.gpu.on_device(i))
            .collect();
        if let Some(p) = self.placer.as_mut() {
            p.set_on_device(on_device);
        }
    }

    /// Place the layers for each decode batch size with `placer` (the plan's
    /// cost model), instead of one fixed placement.
    pub fn with_placer(mut self, placer: crate::plan::DecodePlacer) -> Self {
        self.placer = Some(placer);
        self
    }

    pub fn kv(
        &self,
        cuda: &CudaBackend,
        cpu: &CpuBackend,
        n_ctx: usize,
        n_seq: usize,
    ) -> Result<HybridKv, BackendError> {
        let cfg = &self.gpu.model.config;
        let n = cfg.n_layers;
        let on_host = (0..n).filter(|&i| self.gpu.is_streamed(i)).count();
        crate::backend::check_kv_fits(cpu, cfg, on_host, n_ctx, n_seq)?;
        Ok(HybridKv {
            gpu: (0..n)
                .map(|_| cuda.kv_cache(cfg, n_ctx, n_seq))
                .collect::<Result<_, _>>()?,
            cpu: (0..n)
                .map(|i| {
                    self.gpu
                        .is_streamed(i)
                        .then(|| cpu.kv_cache(cfg, n_ctx, n_seq))
                        .transpose()
                })
                .collect::<Result<_, _>>()?,
            valid: KvValidity::new(n, n_seq),
            n_ctx,
            n_seq,
        })
    }

    /// One decode step of sequence 0: `token` at position `pos`, layers placed by `runs`.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_step(
        &mut self,
        cuda: &CudaBackend,
        cpu: &CpuBackend,
        kv: &mut HybridKv,
        token: u32,
        pos: usize,
        runs: &[Run],
    ) -> Result<(Vec<f32>, PassStats), BackendError> {
        let batch = Batch {
            tokens: &[token],
            positions: &[pos as u32],
            seqs: &[0],
        };
        self.forward(cuda, cpu, kv, &batch, runs, &[0])
    }

    /// Where each layer runs in a decode step of `batch` sequences: the
    /// placement for that batch size, except that a streamed layer still in
    /// its slot runs on the GPU for free.
    pub fn decode_runs(&mut self, batch: usize) -> Vec<Run> {
        if let Some(p) = self.placer.as_mut() {
            self.decode = p.for_batch(batch).to_vec();
        }
        (0..self.decode.len())
            .map(|i| {
                if self.gpu.on_device(i) || self.gpu.in_slot(i) {
                    Run::Gpu
                } else {
                    match self.decode[i] {
                        DecodePlace::Gpu | DecodePlace::Streamed => Run::Stream,
                        DecodePlace::Cpu => Run::Cpu,
                    }
                }
            })
            .collect()
    }

    /// The plan's placement with no regard to what the slots hold: every
    /// streamed layer placed on the GPU is copied in (tests the prefetching).
    pub fn planned_runs(&self) -> Vec<Run> {
        (0..self.decode.len())
            .map(|i| match (!self.gpu.on_device(i), self.decode[i]) {
                (false, _) => Run::Gpu,
                (true, DecodePlace::Cpu) => Run::Cpu,
                (true, _) => Run::Stream,
            })
            .collect()
    }

    /// `static` placement: every streamed layer on the CPU, whatever the batch.
    pub fn static_runs(&self) -> Vec<Run> {
        (0..self.decode.len())
            .map(|i| {
                if self.gpu.is_streamed(i) {
                    Run::Cpu
                } else {
                    Run::Gpu
                }
            })
            .collect()
    }

    /// Streamed prefill (layer-major, overlapped copies) over every layer on the GPU.
    pub fn prefill(
        &mut self,
        cuda: &CudaBackend,
        kv: &mut HybridKv,
        batch: &Batch,
        ubatch: usize,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>, BackendError> {
        let n = self.gpu.model.config.n_layers;
        let spans = batch_spans(batch, kv.n_seq);
        for i in 0..n {
            kv.sync(cuda, i, &spans, true)?;
        }
        // The prefill needs the parked layers' memory back.
        self.take_back(cuda)?;
        let logits = self
            .gpu
            .forward(cuda, &mut kv.gpu, batch, ubatch, logit_rows)?;
        for i in 0..n {
            kv.valid.ran(i, &spans, true);
        }
        self.hand_over(cuda, kv.n_seq)?;
        Ok(logits)
    }

    /// Resolve a pass's placement against what the slots hold now (`assign_slots`).
    fn schedule(&self, runs: &[Run]) -> SlotSchedule {
        let streamed: Vec<bool> = (0..runs.len()).map(|i| !self.gpu.on_device(i)).collect();
        let holding: Vec<Option<usize>> =
            (0..runs.len()).map(|i| self.gpu.slot_holding(i)).collect();
        assign_slots(runs, &streamed, &holding, self.gpu.n_slots())
    }

    /// Activations handed back to the GPU through the page-locked staging buffer.
    fn upload(&mut self, cuda: &CudaBackend, x: &CpuAct) -> Result<CudaAct, BackendError> {
        let need = x.data.len();
        if self.staging.as_ref().is_none_or(|s| s.len() < need) {
            // SAFETY: a plain page-locked allocation (flags 0: cacheable).
            let buf = unsafe { cuda.ctx.alloc_pinned_with_flags::<f32>(need.max(1), 0) }
                .map_err(crate::backend::cuda::err)?;
            self.staging = Some(buf);
        }
        let staging = self.staging.as_mut().expect("allocated above");
        staging.as_mut_slice().map_err(crate::backend::cuda::err)?[..need].copy_from_slice(&x.data);
        cuda.act_from_pinned(staging, x.n, x.width)
    }

    /// A forward pass with each layer placed by `runs` (decode steps, or the
    /// `static` mode's prefill). Copies of the layers placed on the GPU but not
    /// in a slot are issued as early as their slots allow, so they overlap the
    /// CPU's layers.
    pub fn forward(
        &mut self,
        cuda: &CudaBackend,
        cpu: &CpuBackend,
        kv: &mut HybridKv,
        batch: &Batch,
        runs: &[Run],
        logit_rows: &[usize],
    ) -> Result<(Vec<f32>, PassStats), BackendError> {
        let cfg = self.gpu.model.config.clone();
        let n = batch.len();
        if n > self.handover_batch && self.gpu.parked_layers() > 0 {
            // More tokens than the handover left room for: it needs that memory.
            // (The placement in `runs` stays valid: parked layers run on the
            // GPU, copied through a slot again.)
            self.take_back(cuda)?;
        }
        let spans = batch_spans(batch, kv.n_seq);
        let mut stats = PassStats::default();
        let mut sched = self.schedule(runs);
        let mut pump = CopyPump::new(cuda, cfg.n_layers, self.gpu.n_slots())?;
        pump.pump(&mut self.gpu, cuda, &sched)?;
        let mut on_gpu = true;
        let mut xg = cuda.act(n, cfg.d_model)?;
        self.gpu.model.embed(cuda, batch.tokens, &mut xg)?;
        let mut xc = CpuAct::zeros(0, cfg.d_model);
        let mut gpu_scratch = Scratch::new(cuda, &cfg, n)?;
        let mut cpu_scratch: Option<Scratch<CpuBackend>> = None;
        for i in 0..sched.runs.len() {
            let run = sched.runs[i];
            match run {
                Run::Gpu | Run::Stream => {
                    if !on_gpu {
                        xg = self.upload(cuda, &xc)?;
                        on_gpu = true;
                        stats.crossings += 1;
                    }
                    if run == Run::Stream {
                        let arrived = pump.arrivals[i].take().ok_or_else(|| {
                            BackendError::Invalid(format!("layer {i}: its copy was never issued"))
                        })?;
                        cuda.stream
                            .wait(&arrived)
                            .map_err(crate::backend::cuda::err)?;
                        stats.streamed_layers += 1;
                    }
                    kv.sync(cuda, i, &spans, true)?;
                    self.gpu.model.layers[i].forward(
                        cuda,
                        &cfg,
                        &mut xg,
                        &mut gpu_scratch,
                        &mut kv.gpu[i],
                        batch,
                    )?;
                    kv.valid.ran(i, &spans, true);
                    stats.gpu_layers += 1;
                    if let Some(s) = sched.slot_of[i] {
                        // This slot's next copy may start once this layer is done.
                        sched.users[s].pop_front();
                        pump.free[s] = cuda
                            .stream
                            .record_event(None)
                            .map_err(crate::backend::cuda::err)?;
                        pump.pump(&mut self.gpu, cuda, &sched)?;
                    }
                }
                Run::Cpu => {
                    let layer = self.cpu_layers[i].as_ref().ok_or_else(|| {
                        BackendError::Invalid(format!(
                            "layer {i} is resident on the GPU and has no host copy to run on the CPU"
                        ))
                    })?;
                    if on_gpu {
                        xc = CpuAct {
                            n,
                            width: cfg.d_model,
                            data: cuda.to_host(&xg)?,
                        };
                        on_gpu = false;
                        stats.crossings += 1;
                    }
                    kv.sync(cuda, i, &spans, false)?;
                    if cpu_scratch.is_none() {
                        cpu_scratch = Some(Scratch::new(cpu, &cfg, n)?);
                    }
                    let scratch = cpu_scratch.as_mut().expect("made above");
                    let cache = kv.cpu[i]
                        .as_mut()
                        .expect("streamed layers have a host cache");
                    cpu.run(|| layer.forward(cpu, &cfg, &mut xc, scratch, cache, batch))?;
                    kv.valid.ran(i, &spans, false);
                    stats.cpu_layers += 1;
                }
            }
        }
        if !on_gpu {
            xg = self.upload(cuda, &xc)?;
            stats.crossings += 1;
        }
        stats.streamed_bytes = pump.bytes;
        let logits = self.gpu.model.logits(cuda, &xg, logit_rows)?;
        cuda.check()?;
        Ok((logits, stats))
    }
}

/// `(sequence, first position, last position + 1)` of each sequence in the
/// batch (a sequence's rows are consecutive positions).
pub fn batch_spans(batch: &Batch, n_seq: usize) -> Vec<(usize, usize, usize)> {
    let mut span: Vec<Option<(usize, usize)>> = vec![None; n_seq];
    for (&s, &p) in batch.seqs.iter().zip(batch.positions) {
        let p = p as usize;
        let e = &mut span[s as usize];
        *e = Some(e.map_or((p, p + 1), |(a, b)| (a.min(p), b.max(p + 1))));
    }
    span.into_iter()
        .enumerate()
        .filter_map(|(s, e)| e.map(|(a, b)| (s, a, b)))
        .collect()
}

/// Rows to copy before a layer runs: positions `rows` of sequence `seq`, to
/// the GPU or to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowCopy {
    pub seq: usize,
    pub rows: std::ops::Range<usize>,
    pub to_gpu: bool,
}

/// Which positions of each layer's KV cache are current on each side: the
/// bookkeeping of a hybrid session, kept apart from the copies so that it is
/// tested without a GPU.
#[derive(Debug, Clone)]
pub struct KvValidity {
    gpu: Vec<Vec<usize>>,
    cpu: Vec<Vec<usize>>,
}

impl KvValidity {
    pub fn new(n_layers: usize, n_seq: usize) -> Self {
        KvValidity {
            gpu: vec![vec![0; n_seq]; n_layers],
            cpu: vec![vec![0; n_seq]; n_layers],
        }
    }

    /// The copies that make one side of layer `i` hold every position before
    /// each span's start (rows from the start on will be rewritten), counted
    /// as done.
    pub fn sync(
        &mut self,
        i: usize,
        spans: &[(usize, usize, usize)],
        to_gpu: bool,
    ) -> Vec<RowCopy> {
        let mut copies = Vec::new();
        for &(s, start, _) in spans {
            let (mine, other) = if to_gpu {
                (&mut self.gpu[i][s], self.cpu[i][s])
            } else {
                (&mut self.cpu[i][s], self.gpu[i][s])
            };
            let (have, there) = ((*mine).min(start), other.min(start));
            if there > have {
                copies.push(RowCopy {
                    seq: s,
                    rows: have..there,
                    to_gpu,
                });
            }
            *mine = have.max(there);
        }
        copies
    }

    /// Layer `i` ran on one side over `spans`: that side holds the rows, the
    /// other side's copies of them are stale.
    pub fn ran(&mut self, i: usize, spans: &[(usize, usize, usize)], on_gpu: bool) {
        for &(s, start, end) in spans {
            let (mine, other) = if on_gpu {
                (&mut self.gpu[i][s], &mut self.cpu[i][s])
            } else {
                (&mut self.cpu[i][s], &mut self.gpu[i][s])
            };
            *mine = end;
            *other = (*other).min(start);
        }
    }

    /// Forget sequence `s` from position `n` on.
    pub fn truncate(&mut self, s: usize, n: usize) {
        for v in self.gpu.iter_mut().chain(self.cpu.iter_mut()) {
            v[s] = v[s].min(n);
        }
    }
}

impl HybridKv {
    /// Copy to one side of layer `i` the rows before the batch's `spans` it lacks.
    fn sync(
        &mut self,
        cuda: &CudaBackend,
        i: usize,
        spans: &[(usize, usize, usize)],
        to_gpu: bool,
    ) -> Result<(), BackendError> {
        for c in self.valid.sync(i, spans, to_gpu) {
            let host = self.cpu[i]
                .as_mut()
                .expect("rows move only where a host cache exists");
            let base = c.seq * self.n_ctx;
            let rows = base + c.rows.start..base + c.rows.end;
            if c.to_gpu {
                cuda.kv_from_host(&mut self.gpu[i], rows, &host.k, &host.v)?;
            } else {
                cuda.kv_to_host(&self.gpu[i], rows, &mut host.k, &mut host.v)?;
            }
        }
        Ok(())
    }

    /// Forget sequence `s` from position `n` on.
    pub fn truncate(&mut self, s: usize, n: usize) {
        self.valid.truncate(s, n);
    }
}

/// Bytes of f16 keys and values a host cache holds (for reports).
pub fn host_kv_bytes(kv: &HybridKv) -> u64 {
    kv.cpu
        .iter()
        .flatten()
        .map(|c| ((c.k.len() + c.v.len()) * std::mem::size_of::<f16>()) as u64)
        .sum()
}

/// Sequences on a hybrid model: streamed prefill, then decode steps placed
/// per layer by the plan. `ferry run` uses sequence 0 (`generate`); the
/// server decodes several together (`Engine`).
pub struct HybridSession<'a> {
    pub model: &'a mut HybridModel,
    cuda: &'a CudaBackend,
    cpu: &'a CpuBackend,
    kv: HybridKv,
    filled: Vec<usize>,
    pub n_ctx: usize,
    pub ubatch: usize,
    /// Summed over the decode steps since the last generation started.
    pub decode_stats: PassStats,
}

impl<'a> HybridSession<'a> {
    pub fn new(
        model: &'a mut HybridModel,
        cuda: &'a CudaBackend,
        cpu: &'a CpuBackend,
        n_ctx: usize,
        n_seq: usize,
        ubatch: usize,
    ) -> Result<Self, BackendError> {
        let kv = model.kv(cuda, cpu, n_ctx, n_seq)?;
        Ok(HybridSession {
            model,
            cuda,
            cpu,
            kv,
            filled: vec![0; n_seq],
            n_ctx,
            ubatch,
            decode_stats: PassStats::default(),
        })
    }

    /// A forward pass of `batch` with every layer placed for decode; adds
    /// to `decode_stats`.
    fn decode_batch(&mut self, batch: &Batch, rows: &[usize]) -> Result<Vec<f32>, BackendError> {
        let runs = self.model.decode_runs(batch.len());
        let (logits, s) =
            self.model
                .forward(self.cuda, self.cpu, &mut self.kv, batch, &runs, rows)?;
        let d = &mut self.decode_stats;
        d.gpu_layers += s.gpu_layers;
        d.cpu_layers += s.cpu_layers;
        d.streamed_layers += s.streamed_layers;
        d.streamed_bytes += s.streamed_bytes;
        d.crossings += s.crossings;
        Ok(logits)
    }
}

impl crate::engine::Engine for HybridSession<'_> {
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    fn n_seq(&self) -> usize {
        self.filled.len()
    }
    fn len(&self, seq: usize) -> usize {
        self.filled[seq]
    }
    fn reset(&mut self, seq: usize) {
        self.filled[seq] = 0;
        self.kv.truncate(seq, 0);
    }
    fn prefill(&mut self, seq: usize, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        if tokens.is_empty() {
            return Err(BackendError::Invalid("prefill of an empty prompt".into()));
        }
        let span = crate::backend::SequenceSpan::new(seq, self.filled[seq], tokens.len());
        let batch = span.batch(tokens);
        let logits = self.model.prefill(
            self.cuda,
            &mut self.kv,
            &batch,
            self.ubatch,
            &[tokens.len() - 1],
        )?;
        self.filled[seq] += tokens.len();
        Ok(logits)
    }
    fn decode(&mut self, seqs: &[usize], tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        let positions: Vec<u32> = seqs.iter().map(|&s| self.filled[s] as u32).collect();
        let seq_ids: Vec<u32> = seqs.iter().map(|&s| s as u32).collect();
        let batch = Batch {
            tokens,
            positions: &positions,
            seqs: &seq_ids,
        };
        let rows: Vec<usize> = (0..tokens.len()).collect();
        let logits = self.decode_batch(&batch, &rows)?;
        for &s in seqs {
            self.filled[s] += 1;
        }
        Ok(logits)
    }
    fn status(&mut self) -> Option<crate::engine::EngineStatus> {
        let runs = self.model.decode_runs(1);
        let gpu = &self.model.gpu;
        let layers = runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if !gpu.is_streamed(i) {
                    'R'
                } else if gpu.is_parked(i) {
                    'P'
                } else if *r == Run::Cpu {
                    'c'
                } else {
                    's'
                }
            })
            .collect();
        Some(crate::engine::EngineStatus {
            layers,
            trace: gpu.last_trace.clone(),
        })
    }
}

impl crate::engine::Steps for HybridSession<'_> {
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    fn filled(&self) -> usize {
        self.filled[0]
    }
    fn truncate(&mut self, n: usize) {
        self.filled[0] = self.filled[0].min(n);
        self.kv.truncate(0, self.filled[0]);
    }
    fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        crate::engine::Engine::prefill(self, 0, tokens)
    }
    fn step(&mut self, token: u32) -> Result<Vec<f32>, BackendError> {
        crate::engine::Engine::decode(self, &[0], &[token])
    }
}

impl HybridSession<'_> {
    /// Generate after `prompt`, reusing the cached prefix: see `Session::generate`.
    pub fn generate(
        &mut self,
        cached: &[u32],
        prompt: &[u32],
        max_new: usize,
        sampler: &mut crate::engine::Sampler,
        is_eog: &dyn Fn(u32) -> bool,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, crate::engine::GenerationStats), BackendError> {
        self.decode_stats = PassStats::default();
        crate::engine::generate_on(self, cached, prompt, max_new, sampler, is_eog, on_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the two KV caches: each side holds, per layer, sequence
    /// and position, the "row" last written there (None: never written).
    struct Sides {
        gpu: Vec<Vec<Vec<Option<u64>>>>,
        cpu: Vec<Vec<Vec<Option<u64>>>>,
    }

    /// What the row of `layer` at (`seq`, `pos`) must hold: a function of the
    /// tokens up to it (a row depends on its whole prefix).
    fn row(layer: usize, tokens: &[u32]) -> u64 {
        tokens.iter().fold(layer as u64 * 1_000_003, |h, &t| {
            h.wrapping_mul(0x100_0000_01b3).wrapping_add(t as u64 + 1)
        })
    }

    #[test]
    fn every_layer_sees_its_whole_prefix_whatever_the_placements() {
        let (n_layers, n_seq, n_ctx) = (4, 3, 64);
        let mut valid = KvValidity::new(n_layers, n_seq);
        let mut sides = Sides {
            gpu: vec![vec![vec![None; n_ctx]; n_seq]; n_layers],
            cpu: vec![vec![vec![None; n_ctx]; n_seq]; n_layers],
        };
        // The tokens of each sequence (the truth the rows must follow).
        let mut seqs: Vec<Vec<u32>> = vec![Vec::new(); n_seq];
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % m
        };
        let mut copies = 0;
        for _ in 0..400 {
            // Pick an operation: prefill one sequence on the GPU (every layer),
            // a decode step of several sequences with per-layer placements, or
            // a truncation (a new prompt that shares only a prefix).
            let op = next(10);
            if op == 0 {
                let s = next(n_seq as u64) as usize;
                let keep = next(seqs[s].len() as u64 + 1) as usize;
                seqs[s].truncate(keep);
                valid.truncate(s, keep);
                continue;
            }
            let (batch_seqs, n_new, all_gpu): (Vec<usize>, usize, bool) = if op < 4 {
                (
                    vec![next(n_seq as u64) as usize],
                    1 + next(5) as usize,
                    true,
                )
            } else {
                let mut b: Vec<usize> = (0..n_seq).filter(|_| next(2) == 0).collect();
                if b.is_empty() {
                    b.push(0);
                }
                (b, 1, false)
            };
            if batch_seqs.iter().any(|&s| seqs[s].len() + n_new > n_ctx) {
                continue;
            }
            let mut positions = Vec::new();
            let mut ids = Vec::new();
            for &s in &batch_seqs {
                for _ in 0..n_new {
                    positions.push(seqs[s].len() as u32);
                    ids.push(s as u32);
                    seqs[s].push(next(1000) as u32);
                }
            }
            let tokens = vec![0u32; ids.len()];
            let batch = Batch {
                tokens: &tokens,
                positions: &positions,
                seqs: &ids,
            };
            let spans = batch_spans(&batch, n_seq);
            for layer in 0..n_layers {
                let on_gpu = all_gpu || next(2) == 0;
                for c in valid.sync(layer, &spans, on_gpu) {
                    copies += 1;
                    let (from, to) = if c.to_gpu {
                        (&sides.cpu, &mut sides.gpu)
                    } else {
                        (&sides.gpu, &mut sides.cpu)
                    };
                    for p in c.rows {
                        to[layer][c.seq][p] = from[layer][c.seq][p];
                    }
                }
                let side = if on_gpu {
                    &mut sides.gpu
                } else {
                    &mut sides.cpu
                };
                for &(s, start, end) in &spans {
                    // The side that runs the layer holds the whole prefix.
                    for p in 0..start {
                        assert_eq!(
                            side[layer][s][p],
                            Some(row(layer, &seqs[s][..=p])),
                            "layer {layer} seq {s} pos {p} on the {}",
                            if on_gpu { "GPU" } else { "CPU" }
                        );
                    }
                    for p in start..end {
                        side[layer][s][p] = Some(row(layer, &seqs[s][..=p]));
                    }
                }
                valid.ran(layer, &spans, on_gpu);
            }
        }
        // The placements moved rows both ways many times.
        assert!(copies > 50, "{copies}");
    }

    /// Random passes over random slot contents: every layer that runs from a
    /// slot finds its own weights there when its turn comes (a copy for a later
    /// layer never lands in a slot whose layer has yet to run), copies follow
    /// layer order, and nothing placed on the CPU or resident moves.
    #[test]
    fn slot_schedules_never_clobber_a_layer_before_it_runs() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % m
        };
        for _ in 0..2000 {
            let n = 1 + next(12) as usize;
            let n_slots = 1 + next(4) as usize;
            let streamed: Vec<bool> = (0..n).map(|_| next(3) != 0).collect();
            // What each slot holds at the start: a distinct streamed layer or nothing.
            let mut content: Vec<Option<usize>> = vec![None; n_slots];
            let mut holding = vec![None; n];
            for (s, c) in content.iter_mut().enumerate() {
                let i = next(n as u64) as usize;
                if streamed[i] && holding[i].is_none() && next(4) != 0 {
                    *c = Some(i);
                    holding[i] = Some(s);
                }
            }
            let runs: Vec<Run> = (0..n)
                .map(|i| match (streamed[i], next(3)) {
                    (false, _) => Run::Gpu,
                    (true, 0) => Run::Cpu,
                    (true, 1) => Run::Stream,
                    (true, _) => Run::Gpu,
                })
                .collect();
            let sched = assign_slots(&runs, &streamed, &holding, n_slots);
            let mut users = sched.users.clone();
            for i in 0..n {
                match (runs[i], sched.runs[i]) {
                    (Run::Cpu, r) => assert_eq!(r, Run::Cpu),
                    (_, _) if !streamed[i] => assert_eq!(sched.runs[i], Run::Gpu),
                    (Run::Stream, r) => assert_eq!(r, Run::Stream),
                    _ => {}
                }
                let Some(s) = sched.slot_of[i] else {
                    assert!(sched.runs[i] == Run::Cpu || !streamed[i]);
                    continue;
                };
                // The slot's users come in pass order; this layer is next.
                assert_eq!(
                    users[s].pop_front(),
                    Some(i),
                    "layer {i} out of turn in slot {s}"
                );
                match sched.runs[i] {
                    // The copy lands once the slot's earlier users have run.
                    Run::Stream => content[s] = Some(i),
                    Run::Gpu => assert_eq!(content[s], Some(i), "layer {i} clobbered in slot {s}"),
                    Run::Cpu => unreachable!("CPU layers take no slot"),
                }
            }
            assert!(users.iter().all(|u| u.is_empty()));
            let copied: Vec<usize> = (0..n).filter(|&i| sched.runs[i] == Run::Stream).collect();
            assert_eq!(sched.copies, copied);
        }
    }

    #[test]
    fn spans_cover_each_sequence_of_a_batch() {
        let batch = Batch {
            tokens: &[0; 5],
            positions: &[7, 3, 4, 5, 9],
            seqs: &[2, 0, 0, 0, 2],
        };
        assert_eq!(batch_spans(&batch, 3), vec![(0, 3, 6), (2, 7, 10)]);
    }
}
