use super::*;

#[test]
fn kernel_argument_struct_matches_the_cuda_layout() {
    // GemvSeg: five 8-byte pointers, four ints; GemvSegs: three of them, two ints.
    assert_eq!(std::mem::size_of::<GemvSeg>(), 56);
    assert_eq!(std::mem::size_of::<GemvSegs>(), 3 * 56 + 8);
    assert_eq!(std::mem::align_of::<GemvSegs>(), 8);
}

#[test]
fn warps_per_row_keep_the_gpu_busy_without_starving_lane_groups() {
    // H200, 2 resident blocks of 8 warps per SM (the 116-register kernel).
    let warps = 132 * 2 * 8;
    // 32B gate/up (27648 rows of 20 superblocks): rows enough, one warp each.
    assert_eq!(gemv_warps_per_row(27648, 20, warps), 1);
    // 32B q+k+v (7168 rows) and down (5120 rows): at least two rows per warp.
    assert_eq!(gemv_warps_per_row(7168, 20, warps), 1);
    assert_eq!(gemv_warps_per_row(5120, 108, warps), 1);
    // 7B down (3584 rows of 74): two warps share a row; with 4 resident
    // blocks per SM (twice the warps), four.
    assert_eq!(gemv_warps_per_row(3584, 74, warps), 2);
    assert_eq!(gemv_warps_per_row(3584, 74, 2 * warps), 4);
    // Few rows (7B k, v: 512): split while every lane group keeps a superblock.
    assert_eq!(gemv_warps_per_row(512, 14, warps), 2);
    assert_eq!(gemv_warps_per_row(512, 74, warps), 8);
    // A row of one superblock is never split.
    assert_eq!(gemv_warps_per_row(16, 1, warps), 1);
    // Covering a row in one round: 20 superblocks, 16 per warp: 2 warps.
    assert_eq!(gemv_warps_per_row_cover(20, 16), 2);
    assert_eq!(gemv_warps_per_row_cover(108, 16), 8);
    assert_eq!(gemv_warps_per_row_cover(20, 8), 4);
}

#[test]
fn balanced_warps_per_row_fill_the_last_round() {
    // H200 at 3 resident blocks per SM: 396 blocks.
    let blocks = 132 * 3;
    // 32B down (5120 rows of 108): 2 warps per row leave the last of 3.23
    // rounds 23 % full (81 % busy overall), 4 warps 92 %.
    assert_eq!(gemv_warps_per_row_balanced(&[5120], 108, blocks), 4);
    // 32B gate/up: 8.7 rounds of one warp per row are 97 % busy already.
    assert_eq!(gemv_warps_per_row_balanced(&[27648], 20, blocks), 1);
    // 32B q, k, v (5120 + 1024 + 1024 rows of 20): a piece of 10 would
    // not fill a round.
    assert_eq!(
        gemv_warps_per_row_balanced(&[5120, 1024, 1024], 20, blocks),
        1
    );
    // 7B down (3584 rows of 74): 57 % busy with one warp per row.
    assert_eq!(gemv_warps_per_row_balanced(&[3584], 74, blocks), 4);
    // Pieces never drop below 16 superblocks.
    assert_eq!(gemv_warps_per_row_balanced(&[512], 14, blocks), 1);
}

#[test]
fn two_tokens_of_the_widest_rows_fit_the_shared_memory() {
    // The 32B down projection's input (27648 wide) for one and two tokens.
    assert!(gemv_smem_bytes(1, 27648) < GEMV_SMEM_MAX / 2);
    assert!(gemv_smem_bytes(2, 27648) <= GEMV_SMEM_MAX);
    // 8-bit values, scales and half sums, and the partial sums of 8 warps.
    assert_eq!(gemv_smem_bytes(1, 256), 256 + 4 * 3 * 8 + 8 * 2 * 4);
}
