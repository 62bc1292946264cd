//! Prints the CPU rates `ferry calibrate` measures (Q4_K matrix-vector GB/s,
//! matrix-matrix GFLOP/s) for 1 and all threads: a quick check of the CPU
//! kernels without a GPU.
use ferry::backend::Backend;
use ferry::backend::cpu::CpuBackend;

fn main() {
    for threads in [1, 0] {
        let cpu = CpuBackend::new(threads);
        let p = cpu
            .run(|| ferry::plan::calibrate::measure_cpu(&cpu))
            .expect("measuring");
        println!(
            "{} threads: Q4_K matrix-vector {:.1} GB/s, matrix-matrix {:.0} GFLOP/s",
            cpu.threads(),
            p.gemv_gbps,
            p.gemm_gflops
        );
    }
}
