//! Streamed execution on CUDA: the layers a plan leaves out of VRAM live in
//! pinned host memory and are copied, on a copy stream of their own, into a
//! small ring of device slots while the compute stream works on earlier
//! layers. Events order the two streams; the host never waits.
//!
//! A streamed layer is an ordinary `Layer<CudaBackend>` whose weights point into
//! its slot, so resident and streamed layers run the same kernels in the same
//! order and produce identical results.
//!
//! The whole batch passes each layer before the next (layer-major), so a
//! streamed layer crosses PCIe once per prompt.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, PinnedHostSlice};

use crate::backend::cuda::{CudaBackend, CudaWeight, err};
use crate::backend::{Backend, BackendError, Batch};
use crate::gguf::Gguf;
use crate::model::{Config, Layer, LayerTensors, Model, ModelTensors};

/// A streamed layer's weights in host memory: pinned (cacheable, not
/// write-combined, so the CPU can also read them at full speed), or pageable
/// with `--no-pin`.
struct HostCopy {
    pinned: Arc<dyn AsRef<[u8]> + Send + Sync>,
    len: usize,
    slot: usize,
    /// Offsets of the seven matrices in the packed buffer.
    offsets: Vec<usize>,
}

/// Pinned host memory viewed as bytes, shareable with the CPU backend (its
/// weights for CPU-placed layers point here, so the host holds one copy).
struct PinnedBytes {
    _pinned: PinnedHostSlice<u8>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the buffer is only written while it is being filled (before any
// sharing); afterwards the GPU's copy engine and CPU threads only read it.
unsafe impl Send for PinnedBytes {}
unsafe impl Sync for PinnedBytes {}

impl AsRef<[u8]> for PinnedBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` addresses `len` bytes owned by `_pinned`, alive as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Shares the host buffer through an `Arc` so CPU weights keep it alive.
struct SharedPinned(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl AsRef<[u8]> for SharedPinned {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

pub struct StreamedModel {
    pub model: Model<CudaBackend>,
    host: Vec<Option<HostCopy>>,
    slots: Vec<Arc<CudaSlice<u8>>>,
    /// Device addresses of the slots (copies bypass cudarc's event tracking;
    /// this module orders them with its own events).
    slot_ptrs: Vec<u64>,
    copy: Arc<CudaStream>,
    /// Which layer's weights each slot holds now (decode reuses them).
    slot_holds: Vec<Option<usize>>,
    /// Streamed layers parked in device memory that prefill used and decode
    /// does not (`park`): decode runs them like resident layers; the next
    /// prefill gives the memory back (`unpark_all`).
    parked: Vec<Option<Arc<CudaSlice<u8>>>>,
    /// Bytes copied host → device by the last forward pass.
    pub last_streamed_bytes: u64,
    /// Record a timeline of the next forward passes (`last_trace`).
    pub tracing: bool,
    pub last_trace: Vec<crate::trace::Span>,
}

/// Timing events of a traced pass: spans as (name, lane, start, end, bytes).
struct Timing {
    spans: Vec<(String, &'static str, CudaEvent, CudaEvent, u64)>,
    open: Option<CudaEvent>,
}

type Tracer = std::cell::RefCell<Option<Timing>>;

fn timed_event(stream: &CudaStream) -> Result<CudaEvent, BackendError> {
    stream
        .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(err)
}

impl StreamedModel {
    /// Load `g` with the layers marked in `resident` uploaded to VRAM and the
    /// rest packed into pinned host memory (pageable with `pin` false: copies
    /// then go through the driver's staging buffer, several times slower),
    /// streamed through `n_slots` slots. `progress(layers done)` after each layer.
    pub fn load(
        b: &CudaBackend,
        g: &Gguf,
        resident: &[bool],
        n_slots: usize,
        pin: bool,
        mut progress: impl FnMut(usize),
    ) -> Result<Self, BackendError> {
        let config = Config::from_gguf(g).map_err(|e| BackendError::Invalid(e.to_string()))?;
        let tensors = ModelTensors::from_gguf(g, &config)
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        if resident.len() != config.n_layers {
            return Err(BackendError::Invalid(
                "placement does not match the layer count".into(),
            ));
        }
        let packed_len = |t: &LayerTensors| packed_layout(t).1;
        let slot_bytes = tensors
            .layers
            .iter()
            .zip(resident)
            .filter(|(_, r)| !**r)
            .map(|(t, _)| packed_len(t))
            .max()
            .unwrap_or(0);
        let n_streamed = resident.iter().filter(|r| !**r).count();
        let n_slots = if n_streamed == 0 {
            0
        } else {
            n_slots.clamp(2, n_streamed.max(2))
        };
        let slots: Vec<Arc<CudaSlice<u8>>> = (0..n_slots)
            .map(|_| b.zeros::<u8>(slot_bytes).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let copy = b.ctx.new_stream().map_err(err)?;
        let slot_ptrs: Vec<u64> = slots.iter().map(|s| s.device_ptr(&b.stream).0).collect();

        let mut layers = Vec::with_capacity(config.n_layers);
        let mut host = Vec::with_capacity(config.n_layers);
        let mut k = 0;
        for (t, &r) in tensors.layers.iter().zip(resident) {
            if r {
                layers.push(Layer::load(b, g, t)?);
                host.push(None);
                progress(layers.len());
                continue;
            }
            let slot = k % n_slots;
            k += 1;
            let len = packed_len(t);
            let (offsets, _) = packed_layout(t);
            let pack = |dst: &mut [u8]| {
                for (m, &off) in t.matrices().iter().zip(&offsets) {
                    let src = &g.files[m.file_index].bytes()
                        [m.file_offset as usize..(m.file_offset + m.n_bytes) as usize];
                    dst[off..off + src.len()].copy_from_slice(src);
                }
            };
            let pinned: Arc<dyn AsRef<[u8]> + Send + Sync> = if pin {
                // SAFETY: a plain page-locked allocation; flags 0 keeps it cacheable.
                let mut pinned = unsafe { b.ctx.alloc_pinned_with_flags::<u8>(len.max(1), 0) }
                    .map_err(|e| {
                        BackendError::Invalid(format!(
                            "pinning {} of host memory for layer {} failed ({e:?}): the host has too little memory that can be page-locked (check free memory, and `ulimit -l` where the driver honours it); free memory, lower the model's host share with a larger --vram-budget, or pass --no-pin to stream from pageable memory (slower copies)",
                            crate::units::HumanBytes(len as u64),
                            t.index
                        ))
                    })?;
                pack(pinned.as_mut_slice().map_err(err)?);
                let ptr = pinned.as_ptr().map_err(err)?;
                Arc::new(PinnedBytes {
                    _pinned: pinned,
                    ptr,
                    len,
                })
            } else {
                let mut v = vec![0u8; len.max(1)];
                pack(&mut v);
                Arc::new(v)
            };
            layers.push(Layer::assemble(b, g, t, |k, m| {
                CudaWeight::in_buffer(&b.stream, slots[slot].clone(), offsets[k], m)
            })?);
            host.push(Some(HostCopy {
                pinned,
                len,
                slot,
                offsets,
            }));
            progress(layers.len());
        }
        // Untied token embeddings stay in page-locked host memory: the embed
        // kernel reads just the prompt's rows across the bus, and the budget
        // keeps the device memory for layers. (Tied ones are the output
        // projection too, which decode reads whole every step; with `--no-pin`
        // nothing is page-locked and the plan counts them on the device.)
        let token_embd = if tensors.output.is_some() && pin {
            host_weight(b, g, &tensors.token_embd)?
        } else {
            b.load_weight(g, &tensors.token_embd)?
        };
        let n_layers = config.n_layers;
        let model = Model::from_parts(b, g, config, tensors, layers, token_embd)?;
        Ok(StreamedModel {
            model,
            host,
            slots,
            slot_holds: vec![None; n_slots],
            parked: (0..n_layers).map(|_| None).collect(),
            slot_ptrs,
            copy,
            last_streamed_bytes: 0,
            tracing: false,
            last_trace: Vec::new(),
        })
    }

    /// Whether layer `i` is streamed (not resident).
    pub fn is_streamed(&self, i: usize) -> bool {
        self.host[i].is_some()
    }

    /// Whether layer `i`'s weights are on the device for good: resident, or
    /// parked for decode.
    pub fn on_device(&self, i: usize) -> bool {
        self.host[i].is_none() || self.parked[i].is_some()
    }

    /// Whether streamed layer `i` is parked in device memory for decode.
    pub fn is_parked(&self, i: usize) -> bool {
        self.parked[i].is_some()
    }

    pub fn parked_layers(&self) -> usize {
        self.parked.iter().filter(|p| p.is_some()).count()
    }

    /// Bytes of streamed layer `i` (its packed weights).
    pub fn streamed_len(&self, i: usize) -> Option<usize> {
        self.host[i].as_ref().map(|h| h.len)
    }

    /// Memory handover: copy streamed layer `i` into a device buffer of its
    /// own, made from memory that prefill needed and decode does not, and
    /// point the layer there, so decode runs it like a resident layer. The
    /// copy runs on the copy stream; the compute stream waits for it.
    pub fn park(&mut self, b: &CudaBackend, i: usize) -> Result<(), BackendError> {
        let Some(h) = &self.host[i] else {
            return Ok(());
        };
        if self.parked[i].is_some() {
            return Ok(());
        }
        // SAFETY: every byte is written by the copy below before any kernel
        // reads it (the compute stream waits for the copy).
        let mut buf = unsafe { b.stream.alloc::<u8>(h.len.max(1)) }.map_err(err)?;
        b.account("a layer parked for decode", h.len)?;
        // The allocation is ordered on the compute stream; the copy stream
        // must not write before it exists.
        let ready = b.stream.record_event(None).map_err(err)?;
        self.copy.wait(&ready).map_err(err)?;
        let dst = buf.device_ptr_mut(&b.stream).0;
        // SAFETY: the host buffer outlives the copy (owned by the model; the
        // compute stream waits for the copy before any use, and every pass
        // ends with `check`); `buf` holds `len` bytes.
        unsafe {
            let src = &(*h.pinned).as_ref()[..h.len];
            cudarc::driver::result::memcpy_htod_async(dst, src, self.copy.cu_stream())
                .map_err(err)?;
        }
        let arrived = self.copy.record_event(None).map_err(err)?;
        b.stream.wait(&arrived).map_err(err)?;
        let buf = Arc::new(buf);
        self.point_at(b, i, buf.clone())?;
        self.parked[i] = Some(buf);
        Ok(())
    }

    /// Give back the memory of every parked layer (before a prefill, which
    /// needs it for activations); the layers point at their slots again.
    pub fn unpark_all(&mut self, b: &CudaBackend) -> Result<(), BackendError> {
        for i in 0..self.parked.len() {
            if self.parked[i].take().is_some() {
                let slot = self.host[i]
                    .as_ref()
                    .expect("parked layers are streamed")
                    .slot;
                self.point_at(b, i, self.slots[slot].clone())?;
            }
        }
        Ok(())
    }

    /// Whether streamed layer `i`'s weights sit in its slot now (left there by
    /// the last prefill or decode step), so the GPU can run it without a copy.
    pub fn in_slot(&self, i: usize) -> bool {
        self.host[i]
            .as_ref()
            .is_some_and(|h| self.slot_holds[h.slot] == Some(i))
    }

    /// The slot holding streamed layer `i`'s weights now, if one does.
    pub fn slot_holding(&self, i: usize) -> Option<usize> {
        self.host[i]
            .as_ref()
            .map(|h| h.slot)
            .filter(|&s| self.slot_holds[s] == Some(i))
    }

    /// Point streamed layer `i`'s matrices at `slot` (views, nothing copied).
    fn bind(&mut self, b: &CudaBackend, i: usize, slot: usize) -> Result<(), BackendError> {
        let h = self.host[i].as_mut().expect("streamed layer");
        if h.slot == slot || self.parked[i].is_some() {
            return Ok(());
        }
        h.slot = slot;
        self.point_at(b, i, self.slots[slot].clone())
    }

    /// Point streamed layer `i`'s matrices into `buf` (a slot or its parking
    /// buffer), at the offsets of its packed layout.
    fn point_at(
        &mut self,
        b: &CudaBackend,
        i: usize,
        buf: Arc<CudaSlice<u8>>,
    ) -> Result<(), BackendError> {
        let offsets = &self.host[i].as_ref().expect("streamed layer").offsets;
        let t = &self.model.tensors.layers[i];
        let view = |k: usize, m: &crate::model::TensorRef| {
            CudaWeight::in_buffer(&b.stream, buf.clone(), offsets[k], m)
        };
        let (wq, wk, wv, wo) = (
            view(0, &t.wq)?,
            view(1, &t.wk)?,
            view(2, &t.wv)?,
            view(3, &t.wo)?,
        );
        let ffn = t.ffn.map_matrices(4, view)?;
        let layer = &mut self.model.layers[i];
        (layer.wq, layer.wk, layer.wv, layer.wo) = (wq, wk, wv, wo);
        layer.ffn = ffn;
        Ok(())
    }

    /// Give every streamed layer its prefill slot again (k-th streamed layer →
    /// slot k mod slots), which the layer-major pass's copy ring relies on;
    /// decode may have moved layers between slots.
    fn bind_prefill_slots(&mut self, b: &CudaBackend) -> Result<(), BackendError> {
        let n = self.slots.len();
        let streamed: Vec<usize> = (0..self.host.len())
            .filter(|&i| self.host[i].is_some())
            .collect();
        for (k, i) in streamed.into_iter().enumerate() {
            let before = self.host[i].as_ref().expect("streamed").slot;
            if before != k % n {
                let holds = self.slot_holds[before] == Some(i);
                self.bind(b, i, k % n)?;
                if holds {
                    // Its bytes are in the old slot, not the new one.
                    self.slot_holds[before] = None;
                }
            }
        }
        Ok(())
    }

    /// Queue the copy of streamed layer `i` into `slot` once `free` (the end of
    /// the compute that last used the slot) has passed, and point the layer
    /// at that slot. Returns the copy's arrival event and its bytes. Decode
    /// issues these ahead of time, so copies run while the CPU computes.
    pub fn prefetch(
        &mut self,
        b: &CudaBackend,
        i: usize,
        slot: usize,
        free: &CudaEvent,
    ) -> Result<(CudaEvent, u64), BackendError> {
        self.bind(b, i, slot)?;
        let arrived = issue_copy(
            &self.host,
            &self.copy,
            &self.slot_ptrs,
            i,
            Some(free),
            &Tracer::new(None),
        )?;
        self.slot_holds[slot] = Some(i);
        Ok((arrived, self.host[i].as_ref().expect("streamed").len as u64))
    }

    /// Streamed layer `i` as a CPU layer whose matrices are read in place from
    /// the pinned host buffer (norms and biases from the model file).
    pub fn cpu_layer(
        &self,
        cpu: &crate::backend::cpu::CpuBackend,
        g: &Gguf,
        i: usize,
    ) -> Result<Option<Layer<crate::backend::cpu::CpuBackend>>, BackendError> {
        use crate::backend::cpu::CpuWeight;
        let Some(h) = &self.host[i] else {
            return Ok(None);
        };
        let t = &self.model.tensors.layers[i];
        let bytes = crate::gguf::SharedBytes::external(Box::new(SharedPinned(h.pinned.clone())));
        let layer = Layer::assemble(cpu, g, t, |k, m| {
            let mut at = m.clone();
            at.file_offset = h.offsets[k] as u64;
            CpuWeight::new(bytes.clone(), &at)
        })?;
        Ok(Some(layer))
    }

    pub fn n_slots(&self) -> usize {
        self.slots.len()
    }

    pub fn resident_layers(&self) -> usize {
        self.host.iter().filter(|h| h.is_none()).count()
    }

    /// A layer-major forward pass over the batch in micro-batches of `ubatch`
    /// tokens, streaming the non-resident layers; returns the logits of `logit_rows`.
    pub fn forward(
        &mut self,
        b: &CudaBackend,
        kv: &mut [<CudaBackend as Backend>::Kv],
        batch: &Batch,
        ubatch: usize,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>, BackendError> {
        let n_layers = self.model.config.n_layers;
        self.unpark_all(b)?;
        self.bind_prefill_slots(b)?;
        // Small uploads queue behind big copies on the copy engine: prepare every
        // micro-batch's tables before the first layer's copy is queued.
        if let Some(kv0) = kv.first() {
            for (_, sub) in batch.micro_batches(ubatch) {
                b.prepare_batch(&self.model.config, &sub, kv0.n_ctx, kv0.n_seq)?;
            }
        }
        let order: Vec<usize> = (0..n_layers).filter(|&i| self.host[i].is_some()).collect();
        let s = self.slots.len();
        let (host, copy, slot_ptrs) = (&self.host, &self.copy, &self.slot_ptrs);
        let tracer: Tracer = std::cell::RefCell::new(self.tracing.then(|| Timing {
            spans: Vec::new(),
            open: None,
        }));
        let mut arrived: Vec<Option<CudaEvent>> = (0..order.len()).map(|_| None).collect();
        // Fill every slot at once; later copies wait for their slot to be free.
        for k in 0..order.len().min(s) {
            arrived[k] = Some(issue_copy(host, copy, slot_ptrs, order[k], None, &tracer)?);
        }
        let arrived = std::cell::RefCell::new(arrived);
        let mut streamed = 0u64;
        let k = std::cell::Cell::new(0usize);
        let logits = self.model.forward_layer_major(
            b,
            kv,
            batch,
            ubatch,
            logit_rows,
            &mut |i| {
                if let Some(h) = &host[i] {
                    let e = arrived.borrow_mut()[k.get()].take().expect("copy issued");
                    b.stream.wait(&e).map_err(err)?;
                    streamed += h.len as u64;
                }
                if let Some(t) = tracer.borrow_mut().as_mut() {
                    t.open = Some(timed_event(&b.stream)?);
                }
                Ok(())
            },
            &mut |i| {
                if let Some(t) = tracer.borrow_mut().as_mut() {
                    let start = t.open.take().expect("opened before the layer");
                    let kind = if host[i].is_some() {
                        "streamed"
                    } else {
                        "resident"
                    };
                    t.spans.push((
                        format!("layer {i} ({kind})"),
                        "compute",
                        start,
                        timed_event(&b.stream)?,
                        0,
                    ));
                }
                if host[i].is_some() {
                    let free = b.stream.record_event(None).map_err(err)?;
                    let next = k.get() + s;
                    if next < order.len() {
                        arrived.borrow_mut()[next] = Some(issue_copy(
                            host,
                            copy,
                            slot_ptrs,
                            order[next],
                            Some(&free),
                            &tracer,
                        )?);
                    }
                    k.set(k.get() + 1);
                }
                Ok(())
            },
        )?;
        self.last_streamed_bytes = streamed;
        for &i in &order {
            let h = self.host[i].as_ref().expect("streamed layer");
            self.slot_holds[h.slot] = Some(i);
        }
        b.check()?;
        if let Some(t) = tracer.into_inner() {
            self.last_trace = timeline(t)?;
        }
        Ok(logits)
    }

    /// llama.cpp's mechanism, for comparison (`--mode sync`): micro-batch by
    /// micro-batch, every non-resident layer is uploaded into one slot and the
    /// host waits for the copy before the layer runs — once per micro-batch.
    pub fn forward_sync(
        &mut self,
        b: &CudaBackend,
        kv: &mut [<CudaBackend as Backend>::Kv],
        batch: &Batch,
        ubatch: usize,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>, BackendError> {
        let cfg = self.model.config.clone();
        self.unpark_all(b)?;
        self.bind_prefill_slots(b)?;
        let mut x = b.act(batch.len(), cfg.d_model)?;
        self.model.embed(b, batch.tokens, &mut x)?;
        let mut streamed = 0u64;
        for (r, sub) in batch.micro_batches(ubatch) {
            let mut xc = b.read_rows(&x, r.clone())?;
            let mut scratch = crate::model::Scratch::new(b, &cfg, r.len())?;
            for (i, kv) in kv.iter_mut().enumerate().take(cfg.n_layers) {
                if let Some(h) = &self.host[i] {
                    // Synchronous: wait for everything queued, copy, wait again.
                    b.stream.synchronize().map_err(err)?;
                    let e = issue_copy(
                        &self.host,
                        &self.copy,
                        &self.slot_ptrs,
                        i,
                        None,
                        &Tracer::new(None),
                    )?;
                    e.synchronize().map_err(err)?;
                    streamed += h.len as u64;
                    self.slot_holds[h.slot] = Some(i);
                }
                self.model.layers[i].forward(b, &cfg, &mut xc, &mut scratch, kv, &sub)?;
            }
            b.write_rows(&mut x, r.start, &xc);
        }
        self.last_streamed_bytes = streamed;
        let logits = self.model.logits(b, &x, logit_rows)?;
        b.check()?;
        Ok(logits)
    }
}

/// Queue the copy of layer `i` into its slot once `free` (the end of the
/// previous user's compute) has passed; returns the arrival event.
fn issue_copy(
    host: &[Option<HostCopy>],
    copy: &CudaStream,
    slot_ptrs: &[u64],
    i: usize,
    free: Option<&CudaEvent>,
    tracer: &Tracer,
) -> Result<CudaEvent, BackendError> {
    let h = host[i].as_ref().expect("streamed layer");
    if let Some(e) = free {
        copy.wait(e).map_err(err)?;
    }
    let start = match tracer.borrow().as_ref() {
        Some(_) => Some(timed_event(copy)?),
        None => None,
    };
    // SAFETY: the pinned buffer outlives the copy (owned by the model, and every
    // forward pass ends with `check`, which waits for the compute stream, which
    // waited for every copy); the slot holds at least `len` bytes.
    unsafe {
        let src = &(*h.pinned).as_ref()[..h.len];
        cudarc::driver::result::memcpy_htod_async(slot_ptrs[h.slot], src, copy.cu_stream())
            .map_err(err)?;
    }
    if let (Some(start), Some(t)) = (start, tracer.borrow_mut().as_mut()) {
        let end = timed_event(copy)?;
        t.spans
            .push((format!("copy layer {i}"), "copy", start, end, h.len as u64));
        return timed_event(copy);
    }
    copy.record_event(None).map_err(err)
}

/// Turn a finished pass's events into spans, in ms from its first event.
fn timeline(t: Timing) -> Result<Vec<crate::trace::Span>, BackendError> {
    let Some(first) = t.spans.first().map(|s| &s.2) else {
        return Ok(Vec::new());
    };
    let mut spans = Vec::with_capacity(t.spans.len());
    for (name, lane, start, end, bytes) in &t.spans {
        spans.push(crate::trace::Span {
            name: name.clone(),
            lane: lane.to_string(),
            start_ms: first.elapsed_ms(start).map_err(err)? as f64,
            dur_ms: start.elapsed_ms(end).map_err(err)? as f64,
            bytes: *bytes,
        });
    }
    let min = spans.iter().map(|s| s.start_ms).fold(f64::MAX, f64::min);
    for s in &mut spans {
        s.start_ms -= min;
    }
    Ok(spans)
}

/// Where each of a layer's matrices sits in its packed host buffer and slot
/// (each starts 256-byte aligned, as its own allocation would: the decode
/// kernels read whole blocks with 16-byte loads), and the packed length.
fn packed_layout(t: &LayerTensors) -> (Vec<usize>, usize) {
    let mut offsets = Vec::new();
    let mut end = 0usize;
    for m in t.matrices() {
        let off = end.next_multiple_of(256);
        offsets.push(off);
        end = off + m.n_bytes as usize;
    }
    (offsets, end)
}

/// A weight that kernels read straight from page-locked host memory: with
/// unified addressing the host address of such memory is valid on the device.
/// For tensors of which a kernel touches a few rows (the token embeddings).
pub(crate) fn host_weight(
    b: &CudaBackend,
    g: &Gguf,
    t: &crate::model::TensorRef,
) -> Result<CudaWeight, BackendError> {
    let src = &g.files[t.file_index].bytes()
        [t.file_offset as usize..(t.file_offset + t.n_bytes) as usize];
    // SAFETY: a plain page-locked allocation, filled here before any sharing.
    let mut pinned = unsafe { b.ctx.alloc_pinned_with_flags::<u8>(src.len().max(1), 0) }.map_err(|e| {
        BackendError::Invalid(format!(
            "pinning {} of host memory for {} failed ({e:?}): free host memory or raise `ulimit -l`",
            crate::units::HumanBytes(src.len() as u64),
            t.name
        ))
    })?;
    pinned.as_mut_slice().map_err(err)?[..src.len()].copy_from_slice(src);
    let ptr = pinned.as_ptr().map_err(err)?;
    let owner = Arc::new(PinnedBytes {
        _pinned: pinned,
        ptr,
        len: src.len(),
    });
    // SAFETY: page-locked memory with unified addressing: its host address
    // is valid on the device; `owner` keeps it allocated.
    Ok(unsafe { CudaWeight::from_raw(t.ty, t.rows(), t.cols(), owner, ptr as u64) })
}
