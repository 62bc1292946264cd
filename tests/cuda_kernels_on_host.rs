//! The CUDA decode GEMVs' per-type arithmetic, checked on the host (no GPU):
//! the block-type structs of `kernels/gemv_types.cu` are compiled by the
//! system C++ compiler with stand-ins for `dp4a` and the half conversion
//! (`tests/cuda_host/harness.cpp`, which runs a warp lane by lane), and every
//! item's dot product, the 1-3 bit i-quants' element decoder, and the whole kernel for 1 and 4 tokens, over random
//! quantized rows, the Q4_K/Q5_K prefill conversions to f16 and the
//! persistent GEMVs' superblock arithmetic (Q4_K, Q5_K and the lane formats
//! of the 32-element types and IQ4_XS), are
//! compared with the dequantized weights (src/quant,
//! itself bit-exact with gguf-py) times the 8-bit activations. Skipped,
//! saying so, where no C++ compiler is installed.

use std::path::Path;
use std::process::Command;

use ferry::quant::{self, GgmlType};

const KERNELS: &str = "src/backend/cuda/kernels";

/// The definition of `name` (a function from its signature line to the first
/// line that is only `}`, or its one line where that ends with `}`) in `src`.
fn function(src: &str, signature: &str) -> String {
    let start = src
        .find(signature)
        .unwrap_or_else(|| panic!("{signature} not found"));
    let line_end = src[start..].find('\n').expect("line end") + start;
    if src[start..line_end].trim_end().ends_with('}') {
        return src[start..=line_end].to_string();
    }
    let end = src[start..].find("\n}\n").expect("function end") + start + 3;
    src[start..end].to_string()
}

#[test]
fn typed_gemv_block_math_matches_the_dequantized_weights() {
    let compiler = ["g++", "clang++", "c++"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok());
    let Some(compiler) = compiler else {
        eprintln!("no C++ compiler here; the kernels' block math is not checked on the host");
        return;
    };
    let dir = std::env::temp_dir().join(format!("ferry-cuda-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The kernel files as NVRTC sees them: one source, in `KERNELS`' order.
    let ferry_cu: String = [
        "ferry.cu",
        "attention_prompt.cu",
        "gemv_kquants.cu",
        "gemv_persistent.cu",
        "convert.cu",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(Path::new(KERNELS).join(f)).unwrap())
    .collect();
    let types_cu = std::fs::read_to_string(Path::new(KERNELS).join("gemv_types.cu")).unwrap();
    // Everything up to the kernels' entry points (the macros after the template).
    let types_part = &types_cu[..types_cu.find("#define GEMV_TYPED").expect("entry macros")];
    // The type ids, grid tables, E8M0 scale and the element decoder
    // `dequant` (prefill conversions, embeddings, the float GEMV).
    let decoders = {
        let start = ferry_cu.find("// GGUF type ids.").expect("type ids");
        let tail = function(&ferry_cu[start..], "__device__ float dequant(int type");
        let end = ferry_cu[start..].find(&tail).unwrap() + tail.len();
        ferry_cu[start..start + end].to_string()
    };
    let parts = [
        ferry::quant::grids_c_source("static"),
        decoders,
        function(&ferry_cu, "__device__ __forceinline__ void scale_min_hdr"),
        types_part.to_string(),
        function(
            &ferry_cu,
            "template <bool Q5>\n__device__ __forceinline__ void dequant_k4_f16",
        ),
        function(&ferry_cu, "__device__ __forceinline__ int xq_slot"),
        function(&ferry_cu, "__device__ __forceinline__ int xq_at"),
        function(&ferry_cu, "__device__ __forceinline__ int dp4a_32"),
        function(
            &ferry_cu,
            "template <int NT>\n__device__ __forceinline__ void lane_dot_smem",
        ),
        function(
            &ferry_cu,
            "template <int NT>\n__device__ __forceinline__ void k4_dot4_smem",
        ),
        function(
            &ferry_cu,
            "template <int NT>\n__device__ __forceinline__ void q4k_dot4_smem",
        ),
        function(
            &ferry_cu,
            "template <int NT>\n__device__ __forceinline__ void q5k_dot4_smem",
        ),
        // The lane formats, whole.
        {
            let start = ferry_cu
                .find("// The 32-element block types (and IQ4_XS) in the persistent GEMVs.")
                .expect("lane formats");
            let end = ferry_cu[start..]
                .find("// Q6_K, four lanes per superblock")
                .expect("lane formats end")
                + start;
            ferry_cu[start..end].to_string()
        },
    ]
    .join("\n");
    std::fs::write(dir.join("kernel_parts.h"), parts).unwrap();
    // Random rows of each type, and what they dequantize to.
    let (rows, cols) = (48usize, 512usize);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for (ty, name) in [
        (GgmlType::Q4_0, "q4_0"),
        (GgmlType::Q4_1, "q4_1"),
        (GgmlType::Q5_0, "q5_0"),
        (GgmlType::Q5_1, "q5_1"),
        (GgmlType::Q8_0, "q8_0"),
        (GgmlType::Q2_K, "q2_k"),
        (GgmlType::Q3_K, "q3_k"),
        (GgmlType::Q5_K, "q5_k"),
        (GgmlType::IQ4_NL, "iq4_nl"),
        (GgmlType::IQ4_XS, "iq4_xs"),
        (GgmlType::MXFP4, "mxfp4"),
        (GgmlType::Q4_K, "q4_k"),
        (GgmlType::IQ2_XXS, "iq2_xxs"),
        (GgmlType::IQ2_XS, "iq2_xs"),
        (GgmlType::IQ2_S, "iq2_s"),
        (GgmlType::IQ3_XXS, "iq3_xxs"),
        (GgmlType::IQ3_S, "iq3_s"),
        (GgmlType::IQ1_S, "iq1_s"),
        (GgmlType::IQ1_M, "iq1_m"),
    ] {
        let (mut raw, mut deq) = (Vec::new(), Vec::new());
        for _ in 0..rows {
            let x: Vec<f32> = (0..cols)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
                })
                .collect();
            let q = quant::quantize(ty, &x).unwrap();
            deq.extend(quant::dequantize_to_vec(ty, &q).unwrap());
            raw.extend(q);
        }
        std::fs::write(dir.join(format!("{name}.raw")), &raw).unwrap();
        let f: Vec<u8> = deq.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.join(format!("{name}.f32")), f).unwrap();
        std::fs::write(dir.join(format!("{name}.shape")), format!("{rows} {cols}")).unwrap();
    }
    let exe = dir.join("harness");
    let out = Command::new(compiler)
        .args(["-O1", "-std=c++17", "-I"])
        .arg(&dir)
        .arg(format!("-DDATA_DIR=\"{}\"", dir.display()))
        .arg("tests/cuda_host/harness.cpp")
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the kernels' block math does not compile on the host:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(run.status.success(), "{report}");
    // 7 i-quant element decoders, 18 typed GEMVs, 2 prefill conversions,
    // 2 persistent-GEMV superblock dots, 6 lane formats.
    assert_eq!(report.matches(" ok").count(), 35, "{report}");
}
