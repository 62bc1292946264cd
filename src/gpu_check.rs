//! The CUDA backend checked against the CPU backend on real and synthetic
//! models (`ferry gpu-check`): the table `BENCHMARKS.md` cites.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::engine::Session;
use crate::gguf::Gguf;
use crate::model::Model;

/// Decode with its activations kept from step to step (`Workspace`, as it
/// runs) against fresh ones each step: one sequence and then two decoded
/// together, the same tokens both ways; true when every logit is
/// bit-identical (no kernel may depend on what a buffer held before).
fn workspace_identity(
    cuda: &crate::backend::cuda::CudaBackend,
    model: &Model<crate::backend::cuda::CudaBackend>,
    tokens: &[u32],
) -> Result<bool> {
    let run = |reuse: bool| -> Result<Vec<f32>> {
        let mut s = Session::new(cuda, model, 256, 2)?;
        s.reuse_buffers = reuse;
        let mut logits = s.prefill(0, &tokens[..96])?;
        logits.extend(s.prefill(1, &tokens[96..])?);
        // Several steps of each batch size (the workspace is remade when
        // the size changes).
        for &t in &tokens[..4] {
            logits.extend(s.decode(&[0], &[t])?);
        }
        for (i, &t) in tokens[..4].iter().enumerate() {
            logits.extend(s.decode(&[0, 1], &[t, tokens[i + 8]])?);
        }
        cuda.check()?;
        Ok(logits)
    };
    let runs = [run(true)?, run(false)?];
    Ok(runs[0].len() == runs[1].len()
        && runs[0]
            .iter()
            .zip(&runs[1])
            .all(|(a, b)| a.to_bits() == b.to_bits()))
}

/// Logits of a prefill with streamed layers equal those with every layer
/// resident, bit for bit.
fn stream_identity(
    cuda: &crate::backend::cuda::CudaBackend,
    g: &Gguf,
    resident_model: &Model<crate::backend::cuda::CudaBackend>,
    tokens: &[u32],
) -> Result<bool> {
    use crate::engine::stream::StreamedModel;
    let n_layers = resident_model.config.n_layers;
    let span = crate::backend::SequenceSpan::new(0, 0, tokens.len());
    let batch = span.batch(tokens);
    let rows: Vec<usize> = (0..tokens.len()).collect();
    let kv = |m: &Model<crate::backend::cuda::CudaBackend>| -> Result<Vec<_>, _> {
        (0..n_layers)
            .map(|_| cuda.kv_cache(&m.config, 256, 1))
            .collect()
    };
    let mut kv_r = kv(resident_model)?;
    let want = resident_model.forward(cuda, &mut kv_r, &batch, &rows)?;
    cuda.check()?;
    for resident in [
        vec![false; n_layers],
        (0..n_layers).map(|i| i % 2 == 0).collect(),
    ] {
        let mut sm = StreamedModel::load(cuda, g, &resident, 2, true, |_| {})?;
        let mut kv_s = kv(&sm.model)?;
        let got = sm.forward(cuda, &mut kv_s, &batch, tokens.len(), &rows)?;
        if got
            .iter()
            .zip(&want)
            .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `ferry gpu-check`: the attention kernels against the reference kernel,
/// then every model on CUDA against the CPU backend (prefill, decode, two
/// sequences, hybrid GPU + CPU, streamed = resident, kept buffers = fresh,
/// a parked layer), as a pass/fail table on stdout; an error when any check
/// is beyond its tolerance.
pub fn run(mut models: Vec<PathBuf>, synthetic: Option<PathBuf>, tolerance: f32) -> Result<()> {
    use crate::backend::cuda::CudaBackend;
    use crate::engine::argmax;
    use crate::quant::GgmlType;
    let cuda = CudaBackend::new(0)?;
    let cpu = CpuBackend::new(0);
    eprintln!(
        "device: {} (kernels {})",
        cuda.name(),
        if cuda.kernels_from_cache {
            "from the disk cache"
        } else {
            "compiled by NVRTC"
        }
    );
    if let Some(dir) = &synthetic {
        std::fs::create_dir_all(dir)?;
        for ty in GgmlType::WEIGHT_TYPES {
            let p = dir.join(format!("synthetic-{}.gguf", ty.name().to_lowercase()));
            crate::synth::write_random_llama(&p, &crate::synth::TinySpec::new(ty))?;
            models.push(p);
        }
        // Two layers of the 32B shape, Q4_K_M-like (layer 0's v and down
        // projections Q4_K, layer 1's Q6_K): rows as long as the real model's,
        // so the decode GEMVs run with several rounds per row and the warps
        // sharing a row that the tiny models never reach.
        // The same in Q5_K_M (the seed's quantization) and in every type the
        // persistent GEMVs read through a lane format (rows of whole
        // 256-element superblocks; the tiny models' rows are shorter).
        for (name, mix) in [
            ("q4_k_m", crate::synth::QuantMix::Q4KM),
            ("q5_k_m", crate::synth::QuantMix::Q5KM),
            ("q4_0", crate::synth::QuantMix::Uniform(GgmlType::Q4_0)),
            ("q4_1", crate::synth::QuantMix::Uniform(GgmlType::Q4_1)),
            ("q5_0", crate::synth::QuantMix::Uniform(GgmlType::Q5_0)),
            ("q8_0", crate::synth::QuantMix::Uniform(GgmlType::Q8_0)),
            ("iq4_nl", crate::synth::QuantMix::Uniform(GgmlType::IQ4_NL)),
            ("iq4_xs", crate::synth::QuantMix::Uniform(GgmlType::IQ4_XS)),
            ("ud-iq2_xxs", crate::synth::QuantMix::UdIq2Xxs),
            ("iq-every", crate::synth::QuantMix::IqEvery),
        ] {
            let p = dir.join(format!("synthetic-32b-2-layers-{name}.gguf"));
            let mut spec = crate::synth::TinySpec::preset("qwen2.5-32b", GgmlType::Q4_K)
                .context("the qwen2.5-32b preset")?;
            spec.mix = Some(mix);
            spec.n_layers = 2;
            spec.n_vocab = 512;
            crate::synth::write_random_llama(&p, &spec)?;
            models.push(p);
        }
        // The other architectures in their real shapes, a few layers each;
        // gemma3's window cut to 64 so that the 160-token prompt and the
        // decode steps after it attend over a window (the prompt kernel then
        // gives way to the windowed ones), at head sizes 256 (1B) and 128 (27B).
        for (preset, layers, window, mix) in [
            ("qwen3-32b", 2, None, crate::synth::QuantMix::Q4KM),
            ("gemma3-1b", 7, Some(64), crate::synth::QuantMix::Q4KM),
            ("gemma3-27b", 2, Some(64), crate::synth::QuantMix::Q4KM),
            (
                "llama3.1-8b",
                2,
                None,
                crate::synth::QuantMix::Uniform(GgmlType::Q8_0),
            ),
            // Mixtures of experts: the 30B-A3B shape (128 experts, 8 per
            // token, f32 router) and Mixtral's small one (8 choose 2).
            ("qwen3-30b-a3b", 2, None, crate::synth::QuantMix::Q4KM),
            (
                "mixtral-mini",
                3,
                None,
                crate::synth::QuantMix::Uniform(GgmlType::Q8_0),
            ),
        ] {
            let mut spec = crate::synth::TinySpec::preset(preset, GgmlType::Q4_K)
                .with_context(|| format!("the {preset} preset"))?;
            spec.mix = Some(mix);
            spec.n_layers = layers;
            spec.n_vocab = 512;
            if window.is_some() {
                spec.window = window;
            }
            let p = dir.join(format!("synthetic-{preset}-{layers}-layers.gguf"));
            crate::synth::write_random_llama(&p, &spec)?;
            models.push(p);
        }
    }
    let rel = |a: &[f32], b: &[f32]| {
        let max = b.iter().fold(f32::MIN, |m, &v| m.max(v));
        let min = b.iter().fold(f32::MAX, |m, &v| m.min(v));
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        if a.iter().all(|v| v.is_finite()) {
            d / (max - min).max(1e-6)
        } else {
            f32::INFINITY
        }
    };
    // Prompt attention on tensor cores against the reference kernel, on the
    // head shapes of the presets, whole prompts and chunks after a cached past.
    use crate::backend::cuda::AttentionKernel;
    println!("| attention kernel | heads (q, kv, dim) | cached | chunk | rel. diff | result |");
    println!("| --- | --- | ---: | ---: | ---: | --- |");
    let mut failed = 0;
    let mut checks = 0;
    // Where the warpgroup-MMA kernel takes 128-dim heads, the mma.sync one
    // (64-dim heads, other cards) is checked on them too.
    let wgmma = cuda.flash_wgmma();
    for heads in [(14, 2, 64), (28, 4, 128), (40, 8, 128)] {
        let mma_too = wgmma && heads.2 == 128;
        let mut cases = vec![
            (AttentionKernel::Flash, 0, 37),
            (AttentionKernel::Flash, 0, 1000),
            (AttentionKernel::Flash, 300, 517),
            (AttentionKernel::Flash, 1, 64),
            (AttentionKernel::Flash, 0, 4099),
            // Decode steps (and a small batch) with keys in tiles.
            (AttentionKernel::Tiled, 0, 1),
            (AttentionKernel::Tiled, 5000, 1),
            (AttentionKernel::Tiled, 300, 7),
            // A batch of decode tokens whose reference holds nearly the most
            // scores the one-block kernel keeps in shared memory (44 KiB).
            (AttentionKernel::Tiled, 11200, 16),
            // Decode steps with keys split over blocks (long contexts).
            (AttentionKernel::Split, 300, 1),
            (AttentionKernel::Split, 5000, 1),
            (AttentionKernel::Split, 3000, 2),
        ];
        if mma_too {
            cases.extend([
                (AttentionKernel::FlashMma, 0, 1000),
                (AttentionKernel::FlashMma, 300, 517),
            ]);
        }
        for (kernel, done, n) in cases {
            let d = cuda.attention_check(kernel, heads, done, n)?;
            let ok = d <= 5e-3;
            failed += !ok as usize;
            checks += 1;
            let name = match kernel {
                AttentionKernel::Flash if wgmma && heads.2 == 128 => {
                    "Flash (warpgroup MMAs)".into()
                }
                _ => format!("{kernel:?}"),
            };
            println!(
                "| {name} | {heads:?} | {done} | {n} | {d:.2e} | {} |",
                if ok { "pass" } else { "FAIL" }
            );
        }
    }
    // Mixtures of experts: the routed products of layer 0 on both backends
    // with the same routing (random choices), so that a kernel error cannot
    // hide behind a routing decision the two backends' rounding may flip.
    let moe_models: Vec<&PathBuf> = models
        .iter()
        .filter(|p| {
            Gguf::open(p)
                .ok()
                .and_then(|g| crate::model::Config::from_gguf(&g).ok())
                .is_some_and(|c| c.moe.is_some())
        })
        .collect();
    if !moe_models.is_empty() {
        println!();
        println!("| experts of layer 0 | tokens | rel. diff | result |");
        println!("| --- | ---: | ---: | --- |");
    }
    for path in moe_models {
        let g = Gguf::open(path)?;
        let mc = Model::load(&cpu, &g, |_, _| {})?;
        let mg = Model::load(&cuda, &g, |_, _| {})?;
        let (cfg, spec) = (&mc.config, &mc.config.layers[0]);
        let moe = spec.moe.context("layer 0 has experts")?;
        let d = cfg.d_model;
        let (Some(wc), Some(wg)) = (mc.layers[0].ffn.experts(), mg.layers[0].ffn.experts()) else {
            continue;
        };
        for n in [1usize, 3, 8, 40, 300] {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ n as u64;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let x: Vec<f32> = (0..n * d)
                .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
                .collect();
            let routes: Vec<crate::model::moe::Route> = (0..n)
                .map(|_| {
                    let mut chosen: Vec<usize> = Vec::new();
                    while chosen.len() < moe.n_used {
                        let e = (next() % moe.n_expert as u64) as usize;
                        if !chosen.contains(&e) {
                            chosen.push(e);
                        }
                    }
                    let raw: Vec<f32> = chosen
                        .iter()
                        .map(|_| 0.1 + (next() % 1000) as f32 / 1000.0)
                        .collect();
                    let sum: f32 = raw.iter().sum();
                    crate::model::moe::Route {
                        experts: chosen,
                        weights: raw.iter().map(|w| w / sum).collect(),
                    }
                })
                .collect();
            let xc = crate::backend::cpu::CpuAct {
                n,
                width: d,
                data: x.clone(),
            };
            let mut oc = cpu.act(n, d)?;
            cpu.run(|| {
                crate::model::moe::run_experts(
                    &cpu,
                    &moe,
                    spec.activation,
                    wc,
                    &xc,
                    &routes,
                    d,
                    &mut oc,
                )
            })?;
            let xg = cuda.act_from_host(n, d, &x)?;
            let mut og = cuda.act(n, d)?;
            crate::model::moe::run_experts(
                &cuda,
                &moe,
                spec.activation,
                wg,
                &xg,
                &routes,
                d,
                &mut og,
            )?;
            cuda.check()?;
            let mut results = vec![("given routes", rel(&cuda.to_host(&og)?, &cpu.to_host(&oc)?))];
            // The whole block, the router's choice included (on the device
            // for decode-sized batches): the same experts unless two of a
            // token's probabilities are within rounding of each other.
            if let (
                crate::model::Ffn::Moe { router: rc, .. },
                crate::model::Ffn::Moe { router: rg, .. },
            ) = (&mc.layers[0].ffn, &mg.layers[0].ffn)
            {
                cpu.run(|| {
                    crate::model::moe::forward(
                        &cpu,
                        &moe,
                        spec.activation,
                        rc,
                        wc,
                        &xc,
                        n,
                        d,
                        &mut oc,
                    )
                })?;
                crate::model::moe::forward(
                    &cuda,
                    &moe,
                    spec.activation,
                    rg,
                    wg,
                    &xg,
                    n,
                    d,
                    &mut og,
                )?;
                cuda.check()?;
                results.push(("routed", rel(&cuda.to_host(&og)?, &cpu.to_host(&oc)?)));
            }
            for (what, diff) in results {
                let ok = diff <= 1e-2;
                failed += !ok as usize;
                checks += 1;
                println!(
                    "| {} ({what}) | {n} | {diff:.2e} | {} |",
                    path.file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    if ok { "pass" } else { "FAIL" }
                );
            }
        }
    }
    println!();
    println!(
        "| model | types | prefill rel. diff | decode max rel. diff | two-sequence decode max rel. diff | hybrid GPU+CPU max rel. diff | top-1 agree | streamed = resident | kept buffers = fresh | parked for decode | result |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | --- |");
    for path in &models {
        let g = Gguf::open(path)?;
        let mc = Model::load(&cpu, &g, |_, _| {})?;
        let mg = Model::load(&cuda, &g, |_, _| {})?;
        let n_vocab = mc.config.n_vocab;
        let tokens: Vec<u32> = (0..160u32)
            .map(|i| (n_vocab as u32 / 20 + i * 7919) % (n_vocab as u32 / 2).max(1))
            .collect();
        let mut sc = Session::new(&cpu, &mc, 256, 1)?;
        let mut sg = Session::new(&cuda, &mg, 256, 1)?;
        let mut lc = cpu.run(|| sc.prefill(0, &tokens))?;
        let mut lg = sg.prefill(0, &tokens)?;
        cuda.check()?;
        let prefill = rel(&lg, &lc);
        let mut agree = (argmax(&lc) == argmax(&lg)) as usize;
        // Hybrid execution: every other layer streamed; prefill on the GPU, then
        // decode steps alternating between the CPU placement (the KV rows the
        // prefill wrote move to the host) and the plan's placement (layers still
        // in a slot on the GPU, the others copied ahead or on the CPU).
        let n_layers = mc.config.n_layers;
        let resident: Vec<bool> = (0..n_layers).map(|i| i % 2 == 0).collect();
        let sm = crate::engine::stream::StreamedModel::load(&cuda, &g, &resident, 2, true, |_| {})?;
        // Decode placement of the streamed (odd) layers: alternately streamed
        // (copied ahead into a slot) and on the CPU.
        let place = (0..n_layers)
            .map(|i| match i % 4 {
                1 => crate::plan::DecodePlace::Streamed,
                _ => crate::plan::DecodePlace::Cpu,
            })
            .collect();
        let mut hm = crate::engine::hybrid::HybridModel::new(sm, &cpu, &g, place)?;
        let mut kvh = hm.kv(&cuda, &cpu, 256, 1)?;
        let span = crate::backend::SequenceSpan::new(0, 0, tokens.len());
        let whole = span.batch(&tokens);
        let lh = hm.prefill(&cuda, &mut kvh, &whole, 16, &[tokens.len() - 1])?;
        let mut hybrid = rel(&lh, &lc);
        // Memory handover: a budget with room for a streamed layer beyond
        // what decode needs parks one or two (small layers), which decode then
        // runs from device memory of their own.
        let shape = crate::plan::ModelShape::from_gguf(&g)?;
        cuda.release_workspace()?;
        let one_layer = hm.gpu.streamed_len(1).unwrap_or(0) as u64;
        cuda.set_budget(Some(
            cuda.memory_in_use()?
                + crate::plan::decode_reserve_bytes(&shape, 1)
                + one_layer
                + (one_layer / 2).max(4 << 20),
        ));
        let parked = hm.hand_over(&cuda, 1)?;
        let mut decode = 0f32;
        for step in 0..8 {
            let t = argmax(&lc);
            lc = cpu.run(|| sc.decode(&[0], &[t]))?;
            lg = sg.decode(&[0], &[t])?;
            cuda.check()?;
            decode = decode.max(rel(&lg, &lc));
            agree += (argmax(&lc) == argmax(&lg)) as usize;
            let runs = match step % 3 {
                0 => hm.static_runs(),
                1 => hm.planned_runs(),
                _ => hm.decode_runs(1),
            };
            let (lh, _) = hm.decode_step(&cuda, &cpu, &mut kvh, t, tokens.len() + step, &runs)?;
            hybrid = hybrid.max(rel(&lh, &lc));
        }
        cuda.set_budget(None);
        drop(hm);
        // Two sequences decoded together (the decode GEMVs' two-token
        // kernels), from prompts of different lengths.
        let mut pair = 0f32;
        {
            let mut sc2 = Session::new(&cpu, &mc, 256, 2)?;
            let mut sg2 = Session::new(&cuda, &mg, 256, 2)?;
            let mut next = [0u32; 2];
            for (seq, part) in [&tokens[..96], &tokens[96..]].into_iter().enumerate() {
                let l = cpu.run(|| sc2.prefill(seq, part))?;
                sg2.prefill(seq, part)?;
                next[seq] = argmax(&l);
            }
            for _ in 0..4 {
                let l2c = cpu.run(|| sc2.decode(&[0, 1], &next))?;
                let l2g = sg2.decode(&[0, 1], &next)?;
                cuda.check()?;
                pair = pair.max(rel(&l2g, &l2c));
                let v = l2c.len() / 2;
                next = [argmax(&l2c[..v]), argmax(&l2c[v..])];
            }
            // A forked sequence (the choices of one request share a prefill
            // by copying its KV cache) decodes as the one it copies.
            use crate::engine::Engine;
            if sg2.fork(0, 1)? {
                let l = sg2.decode(&[0, 1], &[next[0], next[0]])?;
                cuda.check()?;
                let v = l.len() / 2;
                pair = pair.max(rel(&l[v..], &l[..v]));
            }
        }
        let mut types: Vec<&str> = g
            .tensors()
            .iter()
            .filter(|t| t.shape.len() > 1)
            .map(|t| t.ty.name())
            .collect();
        types.sort();
        types.dedup();
        // Streaming must not change results: every layer streamed (2 slots), and
        // every other layer streamed, against all resident.
        let identical = stream_identity(&cuda, &g, &mg, &tokens)?;
        let kept_identical = workspace_identity(&cuda, &mg, &tokens)?;
        // A mixture's routing amplifies rounding: where the two backends'
        // router logits order two experts differently, the token runs
        // another expert and its logits move by much more than the products'
        // error (the products themselves are checked above with one
        // routing). Its decode steps are shown, not held to the tolerance.
        let routed = mc.config.moe.is_some();
        let ok = prefill <= tolerance
            && (routed || (decode <= tolerance && pair <= tolerance && hybrid <= tolerance))
            && identical
            && kept_identical
            && parked >= 1;
        failed += !ok as usize;
        println!(
            "| {} | {} | {:.2e} | {:.2e} | {:.2e} | {:.2e} | {}/9 | {} | {} | {parked} | {} |",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            types.join(" "),
            prefill,
            decode,
            pair,
            hybrid,
            agree,
            if identical {
                "bit-identical"
            } else {
                "DIFFERENT"
            },
            if kept_identical {
                "bit-identical"
            } else {
                "DIFFERENT"
            },
            if ok { "pass" } else { "FAIL" }
        );
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} checks (of {} models and {checks} attention cases) differ beyond their tolerance",
            models.len()
        );
    }
    Ok(())
}
