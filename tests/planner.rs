//! The planner and cost model (no GPU needed): plans fit their budget, a larger
//! budget never predicts slower, a budget too small names the smallest that
//! works, and the decode placement follows the machine's numbers, not a fixed
//! batch threshold.

mod common;

use ferry::plan::{
    CostModel, CpuProfile, DecodePlace, DecodePlacer, GEMV_MAX_BATCH, MachineProfile, PlanError,
    PlanRequest, TypedBytes, decode_reserve_bytes, handover_layers, parse_size, plan, preset_shape,
    preset_shape_mix, spread_resident,
};
use ferry::quant::GgmlType;
use ferry::synth::QuantMix;

fn h100() -> CostModel {
    CostModel::new(MachineProfile::load("h100").unwrap())
}

fn req(budget: u64, n_ctx: usize) -> PlanRequest {
    PlanRequest {
        budget,
        n_ctx,
        ubatch: 512,
        n_parallel: 1,
        host_embeddings: true,
    }
}

#[test]
fn plans_fit_and_more_budget_never_predicts_slower() {
    let shape = preset_shape("qwen2.5-32b", GgmlType::Q4_K).unwrap();
    let cost = h100();
    for n_ctx in [1024usize, 4096, 16384] {
        let mut last = (0.0f64, 0.0f64);
        let mut planned = 0;
        for gib_tenths in (10..=250).step_by(5) {
            let budget = gib_tenths as u64 * (1u64 << 30) / 10;
            match plan(&shape, &req(budget, n_ctx), &cost) {
                Ok(p) => {
                    planned += 1;
                    assert!(
                        p.memory.total() <= budget,
                        "ctx {n_ctx}: {} > {budget}",
                        p.memory.total()
                    );
                    assert!(p.n_slots >= 2 || p.resident_layers() == shape.n_layers);
                    assert!(
                        p.predicted_pp_tps >= last.0 * 0.999,
                        "ctx {n_ctx}, budget {budget}: prefill {} < {}",
                        p.predicted_pp_tps,
                        last.0
                    );
                    assert!(
                        p.predicted_tg_tps >= last.1 * 0.999,
                        "ctx {n_ctx}: decode got slower"
                    );
                    last = (p.predicted_pp_tps, p.predicted_tg_tps);
                }
                Err(PlanError::BudgetTooSmall { .. }) => {
                    assert_eq!(planned, 0, "a larger budget failed")
                }
                Err(e @ PlanError::Cards(_)) => panic!("one card: {e}"),
            }
        }
        assert!(planned > 10);
    }
}

#[test]
fn too_small_a_budget_names_the_smallest_that_works() {
    let shape = preset_shape("qwen2.5-7b", GgmlType::Q4_K).unwrap();
    let cost = h100();
    let err = plan(&shape, &req(256 << 20, 4096), &cost)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("too small") && err.contains("--vram-budget"),
        "{err}"
    );
    // The budget it names works.
    let needed = err
        .split("needs at least ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let needed = parse_size(needed).unwrap() + (1 << 20);
    assert!(plan(&shape, &req(needed, 4096), &cost).is_ok(), "{needed}");
}

#[test]
fn everything_resident_when_it_fits() {
    let shape = preset_shape("qwen2.5-7b", GgmlType::Q4_K).unwrap();
    let p = plan(&shape, &req(40 << 30, 4096), &h100()).unwrap();
    assert_eq!(p.resident_layers(), shape.n_layers);
    assert_eq!(p.n_slots, 0);
    assert!(p.output_on_gpu);
    assert!(p.decode.iter().all(|&d| d == DecodePlace::Gpu));
}

#[test]
fn decode_placement_follows_the_cost_model() {
    let shape = preset_shape("qwen2.5-32b", GgmlType::Q4_K).unwrap();
    let (bytes, macs) = (&shape.layer_types[0], shape.layer_macs[0]);
    let mut cost = h100();
    // One sequence: reading the layer from host memory beats copying it.
    assert_eq!(cost.decode_place(bytes, macs, 1), DecodePlace::Cpu);
    // Many sequences: the CPU's arithmetic becomes the limit, streaming wins.
    assert_eq!(cost.decode_place(bytes, macs, 512), DecodePlace::Streamed);
    // The crossover depends on the machine: a CPU ten times faster keeps the
    // layer at 512 too, and a slow PCIe link keeps it on the CPU longer.
    let switch = |c: &CostModel| {
        (1..=4096).find(|&b| c.decode_place(bytes, macs, b) == DecodePlace::Streamed)
    };
    let base = switch(&cost).unwrap();
    cost.profile.cpu = CpuProfile {
        name: "fast".into(),
        gemv_gbps: 80.0,
        gemv_gbps_by_type: Default::default(),
        gemm_gflops: 15000.0,
        host_read_gbps: 0.0,
    };
    assert!(switch(&cost).unwrap_or(usize::MAX) > base);
}

#[test]
fn resident_layers_are_spread_evenly() {
    let r = spread_resident(64, 16);
    assert_eq!(r.iter().filter(|&&x| x).count(), 16);
    let idx: Vec<usize> = (0..64).filter(|&i| r[i]).collect();
    for w in idx.windows(2) {
        assert_eq!(w[1] - w[0], 4);
    }
    assert_eq!(spread_resident(10, 10), vec![true; 10]);
    assert_eq!(spread_resident(10, 0), vec![false; 10]);
}

#[test]
fn sizes_parse_with_units() {
    assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
    assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
    assert_eq!(parse_size("24GB").unwrap(), 24_000_000_000);
    assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
    assert!(parse_size("lots").is_err());
    assert!(parse_size("8XB").is_err());
}

#[test]
fn profiles_load_by_name_or_file() {
    assert!(MachineProfile::load("h200").is_ok());
    let err = MachineProfile::load("no-such-gpu").unwrap_err();
    assert!(err.contains("h100"), "{err}");
    let dir = std::env::temp_dir().join(format!("ferry-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("machine.json");
    let m = MachineProfile::load("l4").unwrap();
    std::fs::write(&p, serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(MachineProfile::load(p.to_str().unwrap()).unwrap(), m);
}

/// A calibrated decode GEMV rate prices GPU layers at what ferry's kernels
/// measured, not at an assumed fraction of the memory bandwidth; profiles
/// written before the rate existed still load (and keep the assumption).
#[test]
fn gpu_gemv_time_uses_the_calibrated_rate() {
    let mut profile = MachineProfile::load("h200").unwrap();
    let bytes = 1_000_000_000u64;
    let w = TypedBytes::of(GgmlType::Q4_K, bytes);
    let assumed = CostModel::new(profile.clone()).gpu_gemv(&w);
    let expected = bytes as f64 / (profile.gpu.hbm_gbps * 1e9 * 0.7);
    assert!(
        (assumed - expected).abs() < 1e-12 * expected,
        "{assumed} {expected}"
    );
    profile.gpu.gemv_gbps = 2000.0;
    let measured = CostModel::new(profile.clone()).gpu_gemv(&w);
    assert!((measured - 0.5e-3).abs() < 1e-12, "{measured}");
    assert!(profile.describe().contains("decode GEMV 2000 GB/s"));

    let mut json: serde_json::Value = serde_json::to_value(&profile).unwrap();
    json["gpu"].as_object_mut().unwrap().remove("gemv_gbps");
    let old: MachineProfile = serde_json::from_value(json).unwrap();
    assert_eq!(old.gpu.gemv_gbps, 0.0);
}

/// Each type reads at its own calibrated rate (a type not measured at the
/// Q4_K rate), on the GPU and on the CPU, and a layer of several types costs
/// the sum of its parts; a Q5_K_M model's decode prediction follows.
#[test]
fn gemv_time_is_priced_per_weight_type() {
    let mut profile = MachineProfile::load("h100").unwrap();
    profile.gpu.gemv_gbps = 2000.0;
    profile.gpu.gemv_gbps_by_type.insert("Q5_K".into(), 1000.0);
    profile.cpu.gemv_gbps = 50.0;
    profile.cpu.gemv_gbps_by_type.insert("Q5_K".into(), 25.0);
    let cost = CostModel::new(profile.clone());
    let gb = 1_000_000_000u64;
    let q4 = cost.gpu_gemv(&TypedBytes::of(GgmlType::Q4_K, gb));
    let q5 = cost.gpu_gemv(&TypedBytes::of(GgmlType::Q5_K, gb));
    let q6 = cost.gpu_gemv(&TypedBytes::of(GgmlType::Q6_K, gb));
    assert!(
        (q4 - 0.5e-3).abs() < 1e-12 && (q5 - 1e-3).abs() < 1e-12,
        "{q4} {q5}"
    );
    assert_eq!(q6, q4, "an unmeasured type takes the Q4_K rate");
    let mut mixed = TypedBytes::of(GgmlType::Q4_K, gb);
    mixed.add(GgmlType::Q5_K, gb);
    assert!((cost.gpu_gemv(&mixed) - 1.5e-3).abs() < 1e-12);
    let cpu = cost.cpu_layer(&TypedBytes::of(GgmlType::Q5_K, gb), 1, 1);
    assert!((cpu - 0.04).abs() < 1e-9, "{cpu}");

    // A Q5_K_M model's layers are mostly Q5_K: halving that type's rate
    // (nearly) halves the predicted decode step.
    let shape = preset_shape_mix("qwen2.5-32b", QuantMix::Q5KM).unwrap();
    assert_eq!(
        shape.layer_types[0].total(),
        shape.layer_bytes[0],
        "the typed bytes add up to the layer"
    );
    let step = |p: &MachineProfile| {
        let place = vec![DecodePlace::Gpu; shape.n_layers];
        CostModel::new(p.clone()).decode_time(&shape, &place, 1, true, 0)
    };
    let fast = step(&profile);
    profile.gpu.gemv_gbps_by_type.insert("Q5_K".into(), 500.0);
    let slow = step(&profile);
    assert!(slow > 1.5 * fast, "{fast} {slow}");
    // `ferry plan` shows the types and the rate each is priced at.
    let cost = CostModel::new(profile.clone());
    let p = plan(&shape, &req(22 << 30, 4096), &cost).unwrap();
    let text = p.describe(&shape, &profile);
    let line = text.lines().find(|l| l.starts_with("weights")).unwrap();
    assert!(
        line.contains("Q5_K") && line.contains("GPU 500 GB/s,"),
        "{line}"
    );
    assert!(line.contains("Q6_K") && line.contains("assumed"), "{line}");
}

/// The plan reserves what the allocator takes beyond the bytes asked for:
/// 2 MiB granules per large allocation and a fixed reserve. Measured on the
/// device: without it a plan at 60 % of a 32B model overran its budget.
#[test]
fn plans_reserve_allocator_granularity() {
    use ferry::plan::allocator_reserve;
    let shape = preset_shape("qwen2.5-32b", GgmlType::Q4_K).unwrap();
    let budget = (shape.layer_bytes.iter().sum::<u64>() as f64 * 0.6) as u64;
    let p = plan(&shape, &req(budget, 1024), &h100()).unwrap();
    let r = p.resident_layers();
    assert_eq!(
        p.memory.allocator,
        allocator_reserve(r, shape.n_layers, p.n_slots)
    );
    // The 2 MiB per matrix of every resident layer, two KV buffers per layer,
    // and the fixed part.
    assert!(p.memory.allocator >= (256 << 20) + (2 << 20) * (7 * r + 2 * shape.n_layers) as u64);
    assert!(p.memory.total() <= budget);
    assert!(
        p.describe(&shape, &h100().profile)
            .contains("allocator reserve")
    );
}

/// `--gpu-profile auto` (the default) plans with this machine's calibration
/// when `ferry calibrate` wrote one, else with the H100 profile.
#[test]
fn plan_uses_the_calibration_when_there_is_one() {
    let cache = std::env::temp_dir().join(format!("ferry-cal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let plan = || {
        let (ok, stdout, stderr) = common::ferry_env(
            &["plan", "--preset", "qwen2.5-7b", "--vram-budget", "3GiB"],
            &[("XDG_CACHE_HOME", &cache)],
        );
        assert!(ok, "{stderr}");
        stdout
    };
    assert!(plan().contains("machine     h100 "), "{}", plan());
    let mut calibrated = MachineProfile::load("l4").unwrap();
    calibrated.gpu.name = "test card (calibrated)".into();
    std::fs::create_dir_all(cache.join("ferry")).unwrap();
    std::fs::write(
        cache.join("ferry").join("machine.json"),
        serde_json::to_string(&calibrated).unwrap(),
    )
    .unwrap();
    assert!(
        plan().contains("machine     test card (calibrated)"),
        "{}",
        plan()
    );
}

#[test]
fn decode_splits_layers_between_the_cpu_and_overlapped_copies() {
    // The H200 machine's calibration: CPU kernels read 49 GB/s, pinned copies 55 GB/s.
    let shape = preset_shape("qwen2.5-32b", GgmlType::Q4_K).unwrap();
    let mut cost = h100();
    cost.profile.cpu.gemv_gbps = 49.0;
    cost.profile.gpu.h2d_gbps = 55.0;
    let resident = spread_resident(shape.n_layers, 12);
    let uniform = |p: DecodePlace| -> Vec<DecodePlace> {
        resident
            .iter()
            .map(|&r| if r { DecodePlace::Gpu } else { p })
            .collect()
    };
    let time =
        |c: &CostModel, place: &[DecodePlace], batch| c.decode_time(&shape, place, batch, true, 3);
    let place = cost.decode_placement(&shape, &resident, 1, true, 3);
    let count = |p: DecodePlace| place.iter().filter(|&&d| d == p).count();
    // Both sides work: copies run while the CPU computes the layers between.
    assert!(
        count(DecodePlace::Streamed) > 10 && count(DecodePlace::Cpu) > 10,
        "{place:?}"
    );
    let mixed = time(&cost, &place, 1);
    let all_cpu = time(&cost, &uniform(DecodePlace::Cpu), 1);
    let all_streamed = time(&cost, &uniform(DecodePlace::Streamed), 1);
    assert!(
        mixed < 0.7 * all_cpu.min(all_streamed),
        "{mixed} vs {all_cpu} / {all_streamed}"
    );
    // A link so slow that one layer's copy outlasts the whole step on the CPU
    // streams only what the slots hold from one step to the next (copied
    // once, not every step), the rest on the CPU; a large batch streams
    // everything.
    let mut slow = cost.clone();
    slow.profile.gpu.h2d_gbps = 0.2;
    let p = slow.decode_placement(&shape, &resident, 1, true, 3);
    let streamed = p.iter().filter(|&&d| d == DecodePlace::Streamed).count();
    assert!(streamed <= 3, "{p:?}");
    assert!(p.contains(&DecodePlace::Cpu));
    let p = cost.decode_placement(&shape, &resident, 512, true, 3);
    assert!(!p.contains(&DecodePlace::Cpu));
}

#[test]
fn embeddings_take_device_memory_only_when_they_cannot_stay_on_the_host() {
    let shape = preset_shape("qwen2.5-32b", GgmlType::Q4_K).unwrap();
    let cost = h100();
    let budget = 5u64 << 30;
    let pinned = plan(&shape, &req(budget, 4096), &cost).unwrap();
    assert_eq!(pinned.memory.embeddings, 0);
    let pageable = plan(
        &shape,
        &PlanRequest {
            host_embeddings: false,
            ..req(budget, 4096)
        },
        &cost,
    )
    .unwrap();
    assert_eq!(pageable.memory.embeddings, shape.embd_bytes);
    assert!(pageable.memory.total() <= budget);
    assert!(pageable.resident_layers() < pinned.resident_layers());
    // Tied embeddings are the output projection, counted once, on the device.
    let tied = preset_shape("qwen2.5-0.5b", GgmlType::Q8_0).unwrap();
    assert!(tied.tied);
    let p = plan(&tied, &req(700 << 20, 1024), &cost).unwrap();
    assert_eq!(p.memory.embeddings, 0);
    assert!(p.output_on_gpu && p.memory.output >= tied.embd_bytes);
}

#[test]
fn cpu_layers_and_copies_share_the_host_memory_bandwidth() {
    let shape = preset_shape("qwen2.5-32b", GgmlType::Q4_K).unwrap();
    let mut cost = h100();
    cost.profile.cpu.gemv_gbps = 49.0;
    cost.profile.gpu.h2d_gbps = 55.0;
    let resident = spread_resident(shape.n_layers, 12);
    let place = cost.decode_placement(&shape, &resident, 1, true, 3);
    let free = cost.decode_time(&shape, &place, 1, true, 3);
    // The H200 host reads ~95 GB/s: less than the CPU's 49 plus the copies' 55.
    cost.profile.cpu.host_read_gbps = 95.0;
    let shared = cost.decode_time(&shape, &place, 1, true, 3);
    let host_bytes: u64 = (0..shape.n_layers)
        .filter(|&i| place[i] != DecodePlace::Gpu)
        .map(|i| shape.layer_bytes[i])
        .sum();
    assert!(shared >= host_bytes as f64 / 95e9, "{shared}");
    assert!(shared > free, "{shared} vs {free}");
    // A host fast enough for both changes nothing.
    cost.profile.cpu.host_read_gbps = 1000.0;
    assert!((cost.decode_time(&shape, &place, 1, true, 3) - free).abs() < 1e-12);
}

#[test]
fn preset_shapes_take_quantization_recipes() {
    use ferry::synth::QuantMix;
    let shape = ferry::plan::preset_shape_mix("qwen2.5-32b", QuantMix::Q4KM).unwrap();
    let total: u64 = shape.layer_bytes.iter().sum::<u64>() + shape.embd_bytes + shape.output_bytes;
    // The file `ferry synth --preset qwen2.5-32b --quant q4_k_m` writes holds 18.48 GiB of tensors.
    let gib = total as f64 / (1u64 << 30) as f64;
    assert!((gib - 18.48).abs() < 0.05, "{gib:.3} GiB");
    // Q4_K_M gives some layers Q6_K matrices: layers differ in size.
    let (min, max) = (
        shape.layer_bytes.iter().min().unwrap(),
        shape.layer_bytes.iter().max().unwrap(),
    );
    assert!(max > min);
    // A uniform type through either entry point is the same shape.
    let a = ferry::plan::preset_shape("qwen2.5-7b", GgmlType::Q4_K).unwrap();
    let b = ferry::plan::preset_shape_mix("qwen2.5-7b", QuantMix::Uniform(GgmlType::Q4_K)).unwrap();
    assert_eq!(a.layer_bytes, b.layer_bytes);
    assert_eq!(
        (a.embd_bytes, a.output_bytes),
        (b.embd_bytes, b.output_bytes)
    );
}

#[test]
fn decode_placement_follows_the_batch_a_step_has() {
    let shape = preset_shape("qwen2.5-32b", GgmlType::Q4_K).unwrap();
    let mut cost = h100();
    cost.profile.cpu.gemv_gbps = 49.0;
    cost.profile.gpu.h2d_gbps = 55.0;
    let resident = spread_resident(shape.n_layers, 12);
    let mut placer =
        ferry::plan::DecodePlacer::new(cost.clone(), shape.clone(), resident.clone(), 3, true);
    let one = placer.for_batch(1).to_vec();
    assert_eq!(one, cost.decode_placement(&shape, &resident, 1, true, 3));
    assert!(one.contains(&DecodePlace::Cpu) && one.contains(&DecodePlace::Streamed));
    // Many sequences at once: the CPU's arithmetic is the limit, everything streams.
    let many = placer.for_batch(256).to_vec();
    assert!(!many.contains(&DecodePlace::Cpu), "{many:?}");
    // Resident layers stay resident whatever the batch; asking again gives the same.
    for (i, &r) in resident.iter().enumerate() {
        assert_eq!(r, many[i] == DecodePlace::Gpu);
    }
    assert_eq!(placer.for_batch(1), &one[..]);
}

#[test]
fn pageable_host_memory_is_priced_at_the_pageable_copy_rate() {
    // The H200 machine's calibration: 55 GB/s pinned, 7.9 GB/s pageable, CPU
    // kernels 49 GB/s. `--no-pin` runs copy at the pageable rate, so decode
    // must stream far fewer layers than a pinned run would (the device run
    // that priced pageable copies at the pinned rate streamed 27 layers and
    // decoded at 17 % of its bound).
    let shape = preset_shape("qwen2.5-32b", GgmlType::Q4_K).unwrap();
    let mut profile = MachineProfile::load("h200").unwrap();
    profile.cpu.gemv_gbps = 49.0;
    profile.gpu.h2d_gbps = 55.0;
    profile.gpu.h2d_pageable_gbps = 7.9;
    let resident = spread_resident(shape.n_layers, 8);
    let streamed = |p: &MachineProfile| {
        CostModel::new(p.clone())
            .decode_placement(&shape, &resident, 1, true, 2)
            .iter()
            .filter(|&&d| d == DecodePlace::Streamed)
            .count()
    };
    let pinned = streamed(&profile.clone().for_host_memory(true));
    let pageable_profile = profile.clone().for_host_memory(false);
    assert_eq!(pageable_profile.gpu.h2d_gbps, 7.9);
    let pageable = streamed(&pageable_profile);
    assert!(pinned > 10, "{pinned}");
    assert!(
        pageable * 3 < pinned,
        "pageable {pageable} vs pinned {pinned}"
    );
    // A pageable copy holds the host thread (the driver stages it), so it
    // overlaps nothing: at 7.9 GB/s a layer's copy outlasts its CPU run,
    // and only what the two slots hold between steps is streamed. (The
    // device run that let such copies overlap the CPU on paper decoded at
    // 1.96 t/s against 2.59 all on the CPU.)
    assert!(pageable_profile.gpu.copies_block_host);
    assert!(pageable <= 2, "{pageable}");
    // Without a measured pageable rate, the estimate is still far below pinned.
    profile.gpu.h2d_pageable_gbps = 0.0;
    let estimated = profile.for_host_memory(false).gpu.h2d_gbps;
    assert!(estimated > 5.0 && estimated < 10.0, "{estimated}");
}

#[test]
fn memory_handover_parks_what_fits_spread_evenly_and_decode_gains() {
    let shape = preset_shape("qwen2.5-32b", GgmlType::Q4_K).unwrap();
    let layer = shape.max_layer_bytes();
    let resident = spread_resident(shape.n_layers, 8);
    let bytes: Vec<Option<u64>> = (0..shape.n_layers)
        .map(|i| (!resident[i]).then_some(shape.layer_bytes[i]))
        .collect();
    // No room, no parking; room for 3.5 layers parks 3, never a resident one.
    assert!(handover_layers(&bytes, layer - 1).is_empty());
    let parked = handover_layers(&bytes, layer * 7 / 2);
    assert_eq!(parked.len(), 3);
    assert!(parked.iter().all(|&i| !resident[i]));
    let total: u64 = parked.iter().map(|&i| shape.layer_bytes[i]).sum();
    assert!(total <= layer * 7 / 2);
    // Spread: the parked layers split the non-resident ones into even runs.
    let off: Vec<usize> = (0..shape.n_layers).filter(|&i| !resident[i]).collect();
    let pos: Vec<usize> = parked
        .iter()
        .map(|i| off.iter().position(|j| j == i).unwrap())
        .collect();
    let gaps: Vec<usize> = pos.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().max().unwrap() - gaps.iter().min().unwrap() <= 1,
        "{pos:?}"
    );
    // Room for everything parks everything.
    assert_eq!(handover_layers(&bytes, u64::MAX).len(), off.len());

    // Decode with the parked layers on the device is predicted faster, and the
    // placer places again when the set changes.
    let mut cost = h100();
    cost.profile.cpu.gemv_gbps = 49.0;
    let mut placer = DecodePlacer::new(cost.clone(), shape.clone(), resident.clone(), 2, true);
    let before = placer.for_batch(1).to_vec();
    let mut on_device = resident.clone();
    for &i in &parked {
        on_device[i] = true;
    }
    placer.set_on_device(on_device.clone());
    let after = placer.for_batch(1).to_vec();
    assert!(parked.iter().all(|&i| after[i] == DecodePlace::Gpu));
    let t = |p: &[DecodePlace]| cost.decode_time(&shape, p, 1, true, 2);
    assert!(t(&after) < t(&before), "{} vs {}", t(&after), t(&before));
}

#[test]
fn decode_reserve_covers_the_workspace_only_past_the_gemv_batch() {
    let shape = preset_shape("qwen2.5-32b", GgmlType::Q4_K).unwrap();
    let small = decode_reserve_bytes(&shape, GEMV_MAX_BATCH);
    let large = decode_reserve_bytes(&shape, GEMV_MAX_BATCH + 1);
    // Past the matrix-vector kernels' batch, a step dequantizes the largest
    // matrix (d_model x d_ff) into f16.
    assert!(large - small >= (shape.d_model * shape.d_ff * 2) as u64);
    assert!(small < 256 << 20, "{small}");
}

#[test]
fn plans_count_the_layers_the_handover_parks_for_decode() {
    let shape = preset_shape("qwen2.5-32b", GgmlType::Q4_K).unwrap();
    let cost = h100();
    let budget = shape.layer_bytes.iter().sum::<u64>() / 4;
    let p = plan(&shape, &req(budget, 2048), &cost).unwrap();
    assert!(!p.parked.is_empty());
    let resident: Vec<bool> = p
        .prefill
        .iter()
        .map(|&x| x == ferry::plan::PrefillPlace::Resident)
        .collect();
    for &i in &p.parked {
        assert!(!resident[i]);
        assert_eq!(p.decode[i], DecodePlace::Gpu);
    }
    // They fit in what prefill alone needed plus what the plan left unused,
    // less what decode needs.
    let parked: u64 = p.parked.iter().map(|&i| shape.layer_bytes[i]).sum();
    let room = budget
        - (p.memory.total() - p.memory.workspace - p.memory.activations - p.memory.allocator)
        - decode_reserve_bytes(&shape, 1);
    assert!(parked <= room, "{parked} > {room}");
    // And decode is predicted faster than without them.
    let without = cost.decode_placement(&shape, &resident, 1, true, p.n_slots);
    let t_without = cost.decode_time(&shape, &without, 1, true, p.n_slots);
    assert!(
        1.0 / t_without < p.predicted_tg_tps,
        "{} vs {}",
        1.0 / t_without,
        p.predicted_tg_tps
    );
}

#[test]
fn plan_no_pin_prints_the_pageable_plan() {
    let plan = |extra: &[&str]| {
        let mut args = vec![
            "plan",
            "--preset",
            "qwen2.5-32b",
            "--vram-budget",
            "25%",
            "-c",
            "2048",
            "--gpu-profile",
            "h200",
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = common::ferry(&args);
        assert!(ok, "{stderr}");
        stdout
    };
    let pinned = plan(&[]);
    assert!(pinned.contains("handover    after each prompt"), "{pinned}");
    assert!(!pinned.contains("streamed 0 layers"), "{pinned}");
    let pageable = plan(&["--no-pin"]);
    assert!(pageable.contains("(pageable host memory)"), "{pageable}");
    // Copies that hold the host overlap nothing: decode streams only what
    // its two slots hold from one step to the next.
    let streamed = |text: &str| -> usize {
        let line = text
            .lines()
            .find(|l| l.starts_with("decode"))
            .expect("a decode line");
        let at = line.find("streamed ").expect("streamed layers") + "streamed ".len();
        line[at..].split(' ').next().unwrap().parse().unwrap()
    };
    assert!(streamed(&pageable) <= 2, "{pageable}");
    assert!(
        streamed(&pageable) < streamed(&pinned),
        "{pageable}\n{pinned}"
    );
}

/// A mixture of experts within a budget: the expert plan fits, keeps more
/// layers' experts resident as the budget grows and never predicts a slower
/// decode; a decode step is priced by the experts its batch chooses.
#[test]
fn expert_plans_fit_and_grow_with_the_budget() {
    let shape = preset_shape_mix("qwen3-30b-a3b", QuantMix::Q4KM).unwrap();
    let cost = h100();
    let gib = 1u64 << 30;
    assert!(
        ferry::plan::expert_plan(&shape, &req(gib, 1024), &cost).is_none(),
        "1 GiB cannot hold every layer's attention, the output and the KV cache"
    );
    let mut last: Option<(usize, f64)> = None;
    for b in [4, 6, 8, 12, 16, 24] {
        let budget = b * gib;
        let ep = ferry::plan::expert_plan(&shape, &req(budget, 1024), &cost)
            .unwrap_or_else(|| panic!("{b} GiB: no expert plan"));
        assert!(
            ep.memory.total() <= budget,
            "{b} GiB: {}",
            ep.memory.total()
        );
        let resident = ep.host_experts.iter().filter(|&&h| !h).count();
        if let Some((r, tg)) = last {
            assert!(resident >= r, "{b} GiB: {resident} < {r} resident");
            assert!(
                ep.predicted_tg_tps >= tg * (1.0 - 1e-9),
                "{b} GiB: slower decode"
            );
        }
        last = Some((resident, ep.predicted_tg_tps));
    }
    assert_eq!(last.unwrap().0, shape.n_layers, "24 GiB holds every expert");
    // One token reads 8 of 128 experts; a batch of 64 reads most of them.
    let one = shape.decode_types(0, 1).total();
    let many = shape.decode_types(0, 64).total();
    let all = shape.layer_bytes[0];
    assert!(one * 5 < all, "one token: {one} of {all}");
    assert!(many > one * 5 && many <= all, "64 tokens: {many}");
}

/// Several cards (issue #26), simulated: the profile composes, each card's
/// share fits its own budget, every layer has one card, and two links
/// predict a faster streamed prefill than one card with the same total
/// budget.
#[test]
fn plans_across_cards_fit_each_budget_and_use_both_links() {
    use ferry::plan::{CardsProfile, plan_cards};
    let two = CardsProfile::load("2x h100").unwrap();
    assert_eq!(two.cards.len(), 2);
    let mixed = CardsProfile::load("rtx4090+rtx3090").unwrap();
    assert_eq!(mixed.cards.len(), 2);
    assert_ne!(mixed.cards[0].name, mixed.cards[1].name);
    assert!(CardsProfile::load("0x h100").is_err());
    assert!(CardsProfile::load("2x nosuchcard").is_err());

    let shape = preset_shape_mix("qwen2.5-32b", QuantMix::Q4KM).unwrap();
    let model: u64 = shape.layer_bytes.iter().sum();
    let quarter = model / 4;
    let r = req(2 * quarter, 2048);
    let cp = plan_cards(&shape, &r, &[quarter, quarter], &two).unwrap();
    assert_eq!(cp.card_of_layer.len(), shape.n_layers);
    for c in 0..2 {
        assert!(cp.memory[c].total() <= quarter, "card {c} over its budget");
        assert!(cp.card_of_layer.contains(&c), "card {c} runs no layer");
    }
    let single = plan(&shape, &req(2 * quarter, 2048), &h100()).unwrap();
    assert!(
        cp.predicted_pp_tps > 1.3 * single.predicted_pp_tps,
        "two links: {:.0} t/s against one card's {:.0}",
        cp.predicted_pp_tps,
        single.predicted_pp_tps
    );
    // A larger budget on one card keeps more of its layers there.
    let uneven = plan_cards(&shape, &r, &[quarter / 2, quarter + quarter / 2], &two).unwrap();
    let resident_on = |p: &ferry::plan::CardPlan, c: usize| {
        (0..shape.n_layers)
            .filter(|&i| p.card_of_layer[i] == c && p.resident[i])
            .count()
    };
    assert!(resident_on(&uneven, 1) > resident_on(&uneven, 0));
    // Too small for one card: the error names it and what it needs.
    let err = plan_cards(&shape, &r, &[1 << 28, quarter], &two).unwrap_err();
    assert!(err.to_string().contains("card 0"), "{err}");
}
