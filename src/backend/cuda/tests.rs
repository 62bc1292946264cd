use super::*;

#[test]
fn flash_switch_and_nvrtc_target() {
    use super::flash_wgmma_from;
    assert_eq!(flash_wgmma_from(None), Ok(true));
    assert_eq!(flash_wgmma_from(Some("wgmma")), Ok(true));
    assert_eq!(flash_wgmma_from(Some("mma")), Ok(false));
    let e = flash_wgmma_from(Some("k128")).unwrap_err();
    assert!(
        e.contains("FERRY_FLASH=k128") && e.contains("wgmma or mma"),
        "{e}"
    );
    assert_eq!(super::nvrtc_arch(9, 0), "sm_90a");
    assert_eq!(super::nvrtc_arch(8, 9), "sm_89");
}

#[test]
fn kernel_cache_key_names_source_arch_and_driver() {
    let p = kernel_cache_path("sm_90", 13000);
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.ends_with("-sm_90-13000.ptx"), "{name}");
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
}

/// Decode attention splits a long context so that about four blocks
/// per SM run, never into slices under 256 keys, and not at all where
/// the (token, head) pairs fill the GPU already.
#[test]
fn attention_splits_fill_the_gpu_with_bounded_parts() {
    // One token, 40 heads, 132 SMs: 14 slices at 8K keys (586 each).
    assert_eq!(attention_splits(40, 8192, 132), 14);
    // Short contexts: no slice under 256 keys.
    assert_eq!(attention_splits(40, 301, 132), 2);
    assert_eq!(attention_splits(40, 256, 132), 1);
    // A batch of 64 tokens already gives 2560 blocks.
    assert_eq!(attention_splits(64 * 40, 32768, 132), 1);
    // The partial outputs stay near 4 · SMs parts whatever the context.
    for keys in [1024, 8192, 32768, 131072] {
        let parts = 40 * attention_splits(40, keys, 132);
        assert!(parts <= 4 * 132 + 40, "{keys}: {parts}");
    }
}

/// The ring GEMVs' plans on an H100's shared memory for a 32B model's
/// decode matrices: stages within the block's share, every block busy in
/// the last round but a few percent, long rows one per stage.
#[test]
fn ring_plans_fit_the_card_and_balance_the_blocks() {
    let h100 = SmemLimits {
        sms: 132,
        per_sm: 233_472,
        per_block: 232_448,
        reserved: 1024,
    };
    let check = |rows: &[usize],
                 cols: usize,
                 row_bytes: usize,
                 matrices: usize,
                 consumers: Option<usize>| {
        let choice = RingChoice {
            consumers,
            ring_bytes: 160 << 10,
            min_row_bytes: 0,
        };
        let act = gemv_smem_bytes(1, cols);
        let p = gemv_ring_plan(rows, row_bytes, matrices, act, h100, choice).expect("a plan");
        let per_sm = 16 / p.consumers;
        assert!(consumers.is_none_or(|c| c == p.consumers));
        assert!(p.blocks <= 132 * per_sm);
        assert!(p.smem + h100.reserved <= h100.per_sm / per_sm, "{p:?}");
        assert!(p.ring_at >= act && p.ring_at.is_multiple_of(128));
        assert!(p.stages >= 2, "{p:?}");
        let rows_per_group = p.consumers / p.wpr;
        assert!(p.stage_bytes >= matrices * (rows_per_group * row_bytes + 15));
        let units: usize = rows.iter().map(|r| r.div_ceil(rows_per_group)).sum();
        let busy = units as f64 / (units.div_ceil(p.blocks) * p.blocks) as f64;
        assert!(busy > 0.95, "{p:?}: {busy}");
        p
    };
    for consumers in [None, Some(8), Some(16)] {
        // Down projections, 27648 wide: one row a stage.
        let down = check(&[5120], 27648, 108 * 144, 1, consumers);
        assert_eq!(down.consumers / down.wpr, 1);
        let down6 = check(&[5120], 27648, 108 * 210, 1, consumers);
        assert_eq!(down6.consumers / down6.wpr, 1);
        // q, k, v (v in Q6_K), o and gate+up, 5120 wide.
        check(&[5120, 1024, 1024], 5120, 20 * 210, 1, consumers);
        let o = check(&[5120], 5120, 20 * 144, 1, consumers);
        assert!(o.stage_bytes <= RING_STAGE_MAX);
        check(&[27648], 5120, 20 * 144, 2, consumers);
    }
    // By default two blocks of 8 per SM, as many stages as fit (4).
    let down = check(&[5120], 27648, 108 * 144, 1, None);
    assert_eq!((down.consumers, down.blocks, down.stages), (8, 264, 4));
    let down16 = check(&[5120], 27648, 108 * 144, 1, Some(16));
    assert_eq!((down16.blocks, down16.stages), (132, 10));
    // No room for two stages: none.
    let tiny = SmemLimits {
        per_block: 40 << 10,
        per_sm: 80 << 10,
        ..h100
    };
    let choice = RingChoice {
        consumers: None,
        ring_bytes: 160 << 10,
        min_row_bytes: 0,
    };
    assert_eq!(
        gemv_ring_plan(
            &[5120],
            108 * 210,
            1,
            gemv_smem_bytes(1, 27648),
            tiny,
            choice
        ),
        None
    );
}

#[test]
fn availability_is_an_answer_not_a_panic() {
    // On machines without a GPU (CI) this must say why, in one line.
    if let Err(why) = availability() {
        assert!(!why.contains('\n') && !why.is_empty());
    }
}
