//! A mixture-of-experts feed-forward block, written once against the
//! `Backend` trait: the router's logits, each token's choice of experts (on
//! the host, in llama.cpp's arithmetic), then each chosen expert's gated MLP
//! over the tokens that chose it (tokens grouped by expert: an expert's
//! weights are read once per pass), weighted and summed in the order
//! llama.cpp sums them.

use crate::arch::{Activation, MoeSpec};
use crate::backend::cpu::reference_math::{exp, reduce16};
use crate::backend::{Backend, BackendError, ExpertWeights, Routing};

/// Which experts a token runs and with what weight, in choosing order (most
/// probable first).
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub experts: Vec<usize>,
    pub weights: Vec<f32>,
}

/// Softmax of one row of router logits as llama.cpp's CPU backend computes
/// it (`ggml_vec_soft_max_f32`, AVX-512 build): `exp(x − max)` with the
/// vector exp in whole groups of 16, each group summed in lane order into an
/// f64 total, the rest with the C library's exp added one by one; then every
/// entry times the reciprocal of the total.
pub fn router_softmax(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let whole = row.len() & !15;
    let mut total = 0f64;
    for group in row[..whole].chunks_exact_mut(16) {
        let mut lanes = [0f32; 16];
        for (l, s) in group.iter_mut().enumerate() {
            *s = exp(*s - max);
            lanes[l] = *s;
        }
        total += reduce16(&lanes) as f64;
    }
    for s in &mut row[whole..] {
        *s = (*s - max).exp();
        total += *s as f64;
    }
    let inv = (1.0 / total) as f32;
    for s in row.iter_mut() {
        *s *= inv;
    }
}

/// The routes of every token from its router logits (`n × n_expert`,
/// row-major): softmax, the `n_used` most probable experts (ties to the lower
/// index), their probabilities, renormalised over the chosen ones where the
/// spec says so (the sum accumulated in f64 and floored at 2^-14, as
/// llama.cpp does).
pub fn route(spec: &MoeSpec, logits: &[f32]) -> Vec<Route> {
    logits
        .chunks_exact(spec.n_expert)
        .map(|row| {
            let mut probs = row.to_vec();
            router_softmax(&mut probs);
            let mut order: Vec<usize> = (0..spec.n_expert).collect();
            // Descending; NaN (a broken model) sorts last rather than panicking.
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            order.truncate(spec.n_used);
            let mut weights: Vec<f32> = order.iter().map(|&e| probs[e]).collect();
            if spec.norm_weights {
                let sum = weights.iter().map(|&w| w as f64).sum::<f64>() as f32;
                let sum = sum.max(6.103_515_6e-5);
                for w in &mut weights {
                    *w /= sum;
                }
            }
            Route {
                experts: order,
                weights,
            }
        })
        .collect()
}

/// For each expert, the (token, slot, weight) entries that chose it.
pub fn group_by_expert(n_expert: usize, routes: &[Route]) -> Vec<Vec<(usize, usize, f32)>> {
    let mut groups = vec![Vec::new(); n_expert];
    for (t, r) in routes.iter().enumerate() {
        for (slot, (&e, &w)) in r.experts.iter().zip(&r.weights).enumerate() {
            groups[e].push((t, slot, w));
        }
    }
    groups
}

/// `out = Σ_slots w · expert(x)` for every token of `x` (`out`: `n ×
/// d_model`, overwritten), the routes from the router's logits: on the
/// device where the backend offers the whole block for this batch (a decode
/// step on a GPU), otherwise on the host. Returns the host's routes (empty
/// where the device routed).
#[allow(clippy::too_many_arguments)]
pub fn forward<B: Backend>(
    b: &B,
    spec: &MoeSpec,
    act: Activation,
    router: &B::Weight,
    w: ExpertWeights<'_, B::Weight>,
    x: &B::Act,
    n: usize,
    d_model: usize,
    out: &mut B::Act,
) -> Result<Vec<Route>, BackendError> {
    if b.moe_block(x, router, w, spec, act, out)? {
        return Ok(Vec::new());
    }
    let mut logits = b.act(n, spec.n_expert)?;
    b.matmul(x, router, &mut logits);
    let routes = route(spec, &b.to_host(&logits)?);
    run_experts(b, spec, act, w, x, &routes, d_model, out)?;
    Ok(routes)
}

/// The routed experts of `routes` over `x` into `out`: as the backend's one
/// grouped product where it offers it, otherwise each chosen expert's rows
/// gathered and run through its gated MLP as one product, the weighted
/// results in one buffer per choosing slot, then summed in slot order
/// (llama.cpp's `moe_out = e₀ + e₁ + …`).
#[allow(clippy::too_many_arguments)]
pub fn run_experts<B: Backend>(
    b: &B,
    spec: &MoeSpec,
    act: Activation,
    w: ExpertWeights<'_, B::Weight>,
    x: &B::Act,
    routes: &[Route],
    d_model: usize,
    out: &mut B::Act,
) -> Result<(), BackendError> {
    let (k, n) = (spec.n_used, routes.len());
    let experts: Vec<u32> = routes
        .iter()
        .flat_map(|r| r.experts.iter().map(|&e| e as u32))
        .collect();
    let weights: Vec<f32> = routes.iter().flat_map(|r| r.weights.clone()).collect();
    let routing = Routing {
        n_used: k,
        experts: &experts,
        weights: &weights,
    };
    if b.moe_experts(x, w, act, &routing, out)? {
        return Ok(());
    }
    // Slot s of token t at row s·n + t.
    let mut slots = b.act(k * n, d_model)?;
    for (e, entries) in group_by_expert(spec.n_expert, routes)
        .into_iter()
        .enumerate()
    {
        if entries.is_empty() {
            continue;
        }
        let m = entries.len();
        let tokens: Vec<usize> = entries.iter().map(|&(t, _, _)| t).collect();
        let xe = b.gather_rows(x, &tokens)?;
        let mut gate = b.act(m, spec.d_ff_expert)?;
        let mut up = b.act(m, spec.d_ff_expert)?;
        b.expert_matmul(&xe, &w.gate[e], &mut gate);
        b.expert_matmul(&xe, &w.up[e], &mut up);
        b.glu(&mut gate, &up, act);
        let mut y = b.act(m, d_model)?;
        b.expert_matmul(&gate, &w.down[e], &mut y);
        let rows: Vec<usize> = entries.iter().map(|&(t, s, _)| s * n + t).collect();
        let scales: Vec<f32> = entries.iter().map(|&(_, _, w)| w).collect();
        b.scatter_rows_scaled(&mut slots, &rows, &scales, &y)?;
    }
    b.copy_rows(out, &slots, 0);
    for s in 1..k {
        b.add_rows(out, &slots, s * n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n_expert: usize, n_used: usize) -> MoeSpec {
        MoeSpec {
            n_expert,
            n_used,
            d_ff_expert: 4,
            norm_weights: true,
        }
    }

    #[test]
    fn routes_pick_the_most_probable_experts_with_renormalised_weights() {
        let logits = [0.1, 2.0, -1.0, 1.5, 0.0, 3.0, -2.0, 0.5];
        let r = &route(&spec(8, 3), &logits)[0];
        assert_eq!(r.experts, vec![5, 1, 3]);
        let sum: f32 = r.weights.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
        assert!(r.weights[0] > r.weights[1] && r.weights[1] > r.weights[2]);
        // exp(3) : exp(2) : exp(1.5)
        let want = [3f32.exp(), 2f32.exp(), 1.5f32.exp()];
        let total: f32 = want.iter().sum();
        for (w, v) in r.weights.iter().zip(want) {
            assert!((w - v / total).abs() < 1e-6);
        }
    }

    #[test]
    fn softmax_over_whole_groups_and_a_tail_sums_to_one() {
        for n in [8, 16, 60, 128] {
            let mut row: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 * 0.3 - 1.0).collect();
            router_softmax(&mut row);
            let sum: f64 = row.iter().map(|&p| p as f64).sum();
            assert!((sum - 1.0).abs() < 1e-5, "n={n}: {sum}");
        }
    }

    #[test]
    fn grouping_lists_each_choice_once_under_its_expert() {
        let routes = vec![
            Route {
                experts: vec![2, 0],
                weights: vec![0.6, 0.4],
            },
            Route {
                experts: vec![0, 1],
                weights: vec![0.7, 0.3],
            },
        ];
        let g = group_by_expert(3, &routes);
        assert_eq!(g[0], vec![(0, 1, 0.4), (1, 0, 0.7)]);
        assert_eq!(g[1], vec![(1, 1, 0.3)]);
        assert_eq!(g[2], vec![(0, 0, 0.6)]);
    }
}
