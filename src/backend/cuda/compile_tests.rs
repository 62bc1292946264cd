/// Where NVRTC is installed (the device machine, or a developer's machine
/// with `pip install nvidia-cuda-nvrtc`), the kernels must compile.
#[test]
fn kernels_compile_where_nvrtc_exists() {
    match super::compile_kernels_for("sm_90a") {
        Ok(ptx) => {
            // Every kernel `load_kernels` asks for by name is an entry point
            // (the macro-generated ones too).
            let loaded = include_str!("mod.rs")
                .split("f(\"")
                .skip(1)
                .filter_map(|rest| rest.split('"').next())
                .filter(|name| !name.contains(' '))
                .collect::<Vec<_>>();
            assert!(loaded.len() > 30, "{loaded:?}");
            for name in loaded {
                assert!(
                    ptx.contains(&format!(".entry {name}(")),
                    "kernel {name} missing from the PTX"
                );
            }
            // The decode chain's kernels wait on their predecessors
            // (programmatic dependent launch, sm_90).
            for op in ["griddepcontrol.wait", "griddepcontrol.launch_dependents"] {
                assert!(ptx.contains(op), "{op} missing from the PTX");
            }
            // The ring GEMVs' copies and their barriers (sm_90).
            for op in [
                "cp.async.bulk.shared",
                "mbarrier.try_wait.parity",
                "mbarrier.arrive.expect_tx",
            ] {
                assert!(ptx.contains(op), "{op} missing from the PTX");
            }
            // Prompt attention on warpgroup MMAs (sm_90a), every variant.
            for op in [
                "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16",
                "wgmma.fence",
            ] {
                assert!(ptx.contains(op), "{op} missing from the PTX");
            }
            // Other cards compile the same source without them.
            let ampere = super::compile_kernels_for("sm_80").expect("compiles for sm_80");
            assert!(!ampere.contains("wgmma.mma_async"));
            for k in ["gemv_smem", "gemv_swiglu_smem"] {
                for v in ["", "_b3", "_b4"] {
                    for t in [1, 2] {
                        let name = format!("{k}{v}_{t}");
                        assert!(ptx.contains(&format!(".entry {name}(")), "{name}");
                    }
                }
            }
            for (_, ty, _) in super::TYPED_GEMVS {
                for t in [1, 2, 4, 8] {
                    let name = format!("gemv_q8_{ty}_{t}");
                    assert!(ptx.contains(&format!(".entry {name}(")), "{name}");
                }
            }
        }
        Err(e) if e == "NVRTC not found" => {
            eprintln!("NVRTC not installed here; kernel compile not checked")
        }
        Err(e) => panic!("the CUDA kernels do not compile:\n{e}"),
    }
}
