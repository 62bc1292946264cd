//! A mixture of experts on the GPU (kernels/moe.cu): a batch's routed
//! products grouped by expert (`moe_experts_cuda`, host-resident experts
//! staged once per prompt) and decode steps routed on the device
//! (`moe_block_cuda`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::{CudaAct, CudaBackend, CudaWeight, err, grid};
use crate::arch::{Activation, ExpertWeights};
use crate::backend::{Backend, BackendError, Routing};

/// A mixture's common expert shape: `(d_model, ff, first gate, first down)`
/// where every expert's gate and up matrices share one type and shape, every
/// down matrix another, and rows are whole multiples of 8 (what
/// kernels/moe.cu reads); `None` otherwise.
fn expert_shape<'a>(
    w: &ExpertWeights<'a, CudaWeight>,
) -> Option<(usize, usize, &'a CudaWeight, &'a CudaWeight)> {
    let (g0, d0) = (w.gate.first()?, w.down.first()?);
    let (d, ff) = (g0.cols, g0.rows);
    let uniform = w
        .gate
        .iter()
        .chain(w.up)
        .all(|m| (m.ty, m.rows, m.cols) == (g0.ty, ff, d))
        && w.down
            .iter()
            .all(|m| (m.ty, m.rows, m.cols) == (d0.ty, d, ff))
        && w.up.len() == w.gate.len()
        && w.down.len() == w.gate.len();
    (uniform && d.is_multiple_of(8) && ff.is_multiple_of(8)).then_some((d, ff, g0, d0))
}

/// A weight's type id, block elements and block bytes, as kernels take them.
fn typed_args(m: &CudaWeight) -> (i32, i32, i32) {
    (
        m.ty.id() as i32,
        m.ty.block_elems() as i32,
        m.ty.block_bytes() as i32,
    )
}

/// The gated activation as kernels/moe.cu's `gate_act` takes it.
fn act_arg(act: Activation) -> i32 {
    match act {
        Activation::Silu => 0,
        Activation::GeluTanh => 1,
    }
}

impl CudaBackend {
    /// `out[t] = Σ_s y[t·k + s]` in slot order (a mixture's weighted expert
    /// outputs, `y` holding `out.n · k` rows).
    fn moe_sum(&self, y: &CudaSlice<f32>, out: &mut CudaAct, k: usize) -> Result<(), BackendError> {
        let (n, k_i, d_i) = (out.n * out.width, k as i32, out.width as i32);
        let mut b = self.stream.launch_builder(&self.k.moe_sum);
        b.arg(y).arg(&mut out.data).arg(&k_i).arg(&d_i).arg(&n);
        // SAFETY: moe_sum's signature; y holds n·k rows of out's width.
        unsafe { b.launch(grid(n, 256)) }.map_err(err)?;
        Ok(())
    }

    /// Decode steps (up to 64 token-expert pairs): the router's choice on the
    /// device (`moe_route`), then each pair's MLP from a table of the
    /// experts' addresses (kept per layer), then the sum: no return to the
    /// host inside the layer.
    pub(super) fn moe_block_cuda(
        &self,
        x: &CudaAct,
        router: &CudaWeight,
        w: ExpertWeights<'_, CudaWeight>,
        spec: &crate::arch::MoeSpec,
        act: Activation,
        out: &mut CudaAct,
    ) -> Result<bool, BackendError> {
        const MAX_PAIRS: usize = 64;
        let (k, e_n) = (spec.n_used, spec.n_expert);
        let pairs = x.n * k;
        let Some((d, ff, g0, d0)) = expert_shape(&w) else {
            return Ok(false);
        };
        if pairs == 0
            || pairs > MAX_PAIRS
            || e_n > 1024
            || w.gate.len() != e_n
            || (x.width, out.n, out.width) != (d, x.n, d)
        {
            return Ok(false);
        }
        // The device copy of the addresses is reused while they are the same
        // (checked in full: freed memory may come back to another layer).
        let words: Vec<u64> = (0..e_n)
            .flat_map(|e| [w.gate[e].ptr, w.up[e].ptr, w.down[e].ptr])
            .collect();
        let key = (g0.ptr, w.up[0].ptr, d0.ptr, e_n);
        let table = {
            let mut tables = self.expert_tables.lock().expect("expert tables lock");
            if tables.len() > 4096 {
                tables.clear();
            }
            match tables.get(&key) {
                Some((held, t)) if *held == words => t.clone(),
                _ => {
                    let t = Arc::new(self.upload(&words)?);
                    tables.insert(key, (words, t.clone()));
                    t
                }
            }
        };
        let mut logits = self.act(x.n, e_n)?;
        self.matmul(x, router, &mut logits);
        self.forget_q8();
        let mut ids = self.zeros::<u32>(pairs)?;
        let mut weights = self.zeros::<f32>(pairs)?;
        let (e_i, k_i, norm) = (e_n as i32, k as i32, spec.norm_weights as i32);
        let mut b = self.stream.launch_builder(&self.k.moe_route);
        b.arg(&logits.data)
            .arg(&e_i)
            .arg(&k_i)
            .arg(&norm)
            .arg(&mut ids)
            .arg(&mut weights);
        let cfg = LaunchConfig {
            grid_dim: (x.n as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: moe_route's signature; logits hold n × e_n, ids and
        // weights n × k; e_n ≤ 1024 (its shared table).
        unsafe { b.launch(cfg) }.map_err(err)?;
        let mut h = self.zeros::<f32>(pairs * ff)?;
        let mut y = self.zeros::<f32>(pairs * d)?;
        let grid2 = |rows: usize| LaunchConfig {
            grid_dim: (rows.div_ceil(8) as u32, pairs as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let act_code = act_arg(act);
        let (d_i, ff_i) = (d as i32, ff as i32);
        let (ty, be, bb) = typed_args(g0);
        let mut b = self.stream.launch_builder(&self.k.moe_gate_up_ids);
        b.arg(&*table)
            .arg(&ids)
            .arg(&x.data)
            .arg(&mut h)
            .arg(&k_i)
            .arg(&ty)
            .arg(&ff_i)
            .arg(&d_i)
            .arg(&be)
            .arg(&bb)
            .arg(&act_code);
        // SAFETY: moe_gate_up_ids' signature; the table holds 3 addresses for
        // each of the e_n experts (ff × d matrices), ids are < e_n.
        unsafe { b.launch(grid2(ff)) }.map_err(err)?;
        let (ty, be, bb) = typed_args(d0);
        let mut b = self.stream.launch_builder(&self.k.moe_down_ids);
        b.arg(&*table)
            .arg(&ids)
            .arg(&weights)
            .arg(&h)
            .arg(&mut y)
            .arg(&ty)
            .arg(&d_i)
            .arg(&ff_i)
            .arg(&be)
            .arg(&bb);
        // SAFETY: moe_down_ids' signature; down matrices are d × ff.
        unsafe { b.launch(grid2(d)) }.map_err(err)?;
        self.moe_sum(&y, out, k)?;
        Ok(true)
    }

    /// The routed products of any batch in the three launches of
    /// kernels/moe.cu (pairs grouped by expert, each weight row decoded once
    /// per 8 of its expert's pairs).
    pub(super) fn moe_experts_cuda(
        &self,
        x: &CudaAct,
        w: ExpertWeights<'_, CudaWeight>,
        act: Activation,
        routing: &Routing<'_>,
        out: &mut CudaAct,
    ) -> Result<bool, BackendError> {
        let (k, pairs) = (routing.n_used, routing.experts.len());
        let Some((d, ff, g0, d0)) = expert_shape(&w) else {
            return Ok(false);
        };
        if pairs == 0 || pairs != x.n * k || (x.width, out.n, out.width) != (d, x.n, d) {
            return Ok(false);
        }
        let n_expert = w.gate.len();
        let mut by_expert: Vec<Vec<u32>> = vec![Vec::new(); n_expert];
        for (p, &e) in routing.experts.iter().enumerate() {
            let list = by_expert.get_mut(e as usize).ok_or_else(|| {
                BackendError::Invalid(format!("moe_experts: expert {e} of {n_expert}"))
            })?;
            list.push(p as u32);
        }
        // Host-resident experts that more than one chunk of pairs reads (the
        // kernels decode a row once per 8 pairs) are copied in once instead,
        // into the workspace (a prompt's products); the rest, a decode step's,
        // are read across the bus where they lie.
        let chunk = 8;
        let wanted: Vec<usize> = (0..n_expert)
            .filter(|&e| by_expert[e].len() > chunk && w.gate[e].on_host)
            .collect();
        let mats = |e: usize| [&w.gate[e], &w.up[e], &w.down[e]];
        let bytes = |m: &CudaWeight| m.rows * m.cols / m.ty.block_elems() * m.ty.block_bytes();
        let span = |e: usize| {
            mats(e)
                .iter()
                .map(|m| bytes(m).next_multiple_of(256))
                .sum::<usize>()
        };
        let mut stage_at = vec![None; n_expert];
        let mut scratch = self.scratch.lock().expect("scratch lock");
        let mut stage_base = 0u64;
        if !wanted.is_empty() {
            // Experts still staged from an earlier micro-batch of this layer
            // (a layer-major prompt) are not copied again: each crosses the
            // bus at most once per prompt.
            let st = &mut scratch.staged;
            let missing: Vec<usize> = wanted
                .iter()
                .copied()
                .filter(|&e| !st.iter().any(|&(p, _)| p == w.gate[e].ptr))
                .collect();
            let extra: usize = missing.iter().map(|&e| span(e)).sum();
            let capacity = scratch.experts.as_ref().map_or(0, |b| b.len());
            let (copy, mut end) = if scratch.staged_end + extra <= capacity {
                (missing, scratch.staged_end)
            } else {
                scratch.staged.clear();
                let need: usize = wanted.iter().map(|&e| span(e)).sum();
                if capacity < need {
                    scratch.experts = None;
                    scratch.experts = Some(self.zeros::<u8>(need)?);
                }
                (wanted.clone(), 0)
            };
            let buf = scratch.experts.as_mut().expect("allocated above");
            stage_base = buf.device_ptr_mut(&self.stream).0;
            for e in copy {
                let mut at = stage_base + end as u64;
                for m in mats(e) {
                    // SAFETY: a copy of the weight's bytes (page-locked host
                    // memory, unified addressing) into the staging buffer,
                    // which holds them (sized above); ordered on the compute
                    // stream, after the kernels that read what it replaces.
                    let r = unsafe {
                        cudarc::driver::sys::cuMemcpyAsync(
                            at,
                            m.ptr,
                            bytes(m),
                            self.stream.cu_stream(),
                        )
                    };
                    if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                        return Err(BackendError::Invalid(format!(
                            "copying a host-resident expert to the device failed ({r:?})"
                        )));
                    }
                    at += bytes(m).next_multiple_of(256) as u64;
                }
                scratch.staged.push((w.gate[e].ptr, end));
                end += span(e);
            }
            scratch.staged_end = end;
            for &e in &wanted {
                stage_at[e] = scratch
                    .staged
                    .iter()
                    .find(|&&(p, _)| p == w.gate[e].ptr)
                    .map(|&(_, off)| off);
            }
        }
        let addr = |e: usize, k: usize| match stage_at[e] {
            Some(off) => {
                let m = mats(e);
                let before: usize = m[..k].iter().map(|m| bytes(m).next_multiple_of(256)).sum();
                stage_base + (off + before) as u64
            }
            None => mats(e)[k].ptr,
        };
        // One upload: five words per expert with pairs (gate, up, down, first
        // pair in `order`, count), then `order` and the weights, two to a word.
        let mut groups: Vec<u64> = Vec::new();
        let mut order: Vec<u32> = Vec::with_capacity(pairs);
        let mut most = 0;
        for (e, list) in by_expert.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
            groups.extend([
                addr(e, 0),
                addr(e, 1),
                addr(e, 2),
                order.len() as u64,
                list.len() as u64,
            ]);
            order.extend(list);
            most = most.max(list.len());
        }
        let n_groups = groups.len() / 5;
        let pack = |v: &mut Vec<u64>, words: &[u32]| {
            v.extend(
                words
                    .chunks(2)
                    .map(|c| c[0] as u64 | (*c.get(1).unwrap_or(&0) as u64) << 32),
            );
        };
        let (order_at, mut table) = (groups.len(), groups);
        pack(&mut table, &order);
        let weights_at = table.len();
        let bits: Vec<u32> = routing.weights.iter().map(|w| w.to_bits()).collect();
        pack(&mut table, &bits);
        let table = self.upload(&table)?;
        self.forget_q8();
        let groups = table.slice(..order_at);
        let order = table.slice(order_at..weights_at);
        let weights = table.slice(weights_at..);
        let mut h = self.zeros::<f32>(pairs * ff)?;
        let mut y = self.zeros::<f32>(pairs * d)?;
        let rows_grid = |rows: usize| LaunchConfig {
            grid_dim: (
                rows.div_ceil(8) as u32,
                n_groups as u32,
                most.div_ceil(8) as u32,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let act_code = act_arg(act);
        let (d_i, ff_i, k_i) = (d as i32, ff as i32, k as i32);
        let (ty, be, bb) = typed_args(g0);
        let mut b = self.stream.launch_builder(&self.k.moe_gate_up);
        b.arg(&groups)
            .arg(&order)
            .arg(&x.data)
            .arg(&mut h)
            .arg(&k_i)
            .arg(&ty)
            .arg(&ff_i)
            .arg(&d_i)
            .arg(&be)
            .arg(&bb)
            .arg(&act_code);
        // SAFETY: moe_gate_up's signature; the groups' addresses are the
        // experts' matrices (ff × d each, checked above), `order` lists every
        // pair once, h holds pairs × ff.
        unsafe { b.launch(rows_grid(ff)) }.map_err(err)?;
        let (ty, be, bb) = typed_args(d0);
        let mut b = self.stream.launch_builder(&self.k.moe_down);
        b.arg(&groups)
            .arg(&order)
            .arg(&weights)
            .arg(&h)
            .arg(&mut y)
            .arg(&ty)
            .arg(&d_i)
            .arg(&ff_i)
            .arg(&be)
            .arg(&bb);
        // SAFETY: moe_down's signature; down matrices are d × ff, y pairs × d.
        unsafe { b.launch(rows_grid(d)) }.map_err(err)?;
        self.moe_sum(&y, out, k)?;
        Ok(true)
    }
}
