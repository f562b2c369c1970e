// Hopper (sm_90a) warpgroup primitives: wgmma.mma_async with operands in shared
// memory (128- or 64-byte swizzle) or A in registers, its fences, and the shared-memory
// tile layouts the descriptors describe.
//
// Tile layout ("swizzled rows", SwzRows<S>, S = 128 or 64): a tile of R rows x C·H
// 16-bit columns (C = S / 2: 64 or 32) is stored as H column blocks of C columns (S
// bytes per row); block h starts at h·R·S bytes, row r of a block at r·S, and its
// 16-byte chunk c at chunk position c ^ ((r·S / 128) % (S / 16)): c ^ (r % 8) for
// S = 128, c ^ ((r / 2) % 4) for S = 64. Every block starts aligned to its swizzle
// pattern (8·S bytes). These are the canonical 128- and 64-byte-swizzle layouts of the
// PTX ISA's wgmma matrix descriptors (sec. "Matrix Descriptor Format"; the same
// patterns as the tensor maps' CU_TENSOR_MAP_SWIZZLE_128B / _64B), so one tile serves
//   - as a K-major operand (rows = M or N, columns = K): 8-row groups 8·S bytes apart
//     (stride byte offset), one k16 step = 32 bytes along the row;
//   - as an MN-major operand (rows = K, columns = M or N; imm-trans = 1): column blocks
//     R·S bytes apart (leading byte offset), 8-row groups 8·S bytes apart. An MN-major
//     operand spans whole column blocks (N a multiple of C), as the canonical layouts
//     ((C, m), (8, k)) require.
// Head dims that are multiples of 64 use S = 128; D = 96 uses S = 64 (three blocks of 32
// columns): with S = 128 its P·V product (N = 96) would end inside a column block.
//
// Accumulator layout of m64nNk16 (f32), per warp w of the warpgroup (g = lane / 4,
// t = lane % 4): d[4j + e] holds row 16w + g + 8·(e / 2), column 8j + 2t + (e % 2), the
// layout of mma.sync's C fragments, n8 block after n8 block. An A operand in registers
// follows mma.sync's A fragment (mma.cuh), so softmax(S) feeds P·V from registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LVX_SM90A 1
#endif

namespace lvx::cuda {

// wgmma matrix descriptor; layout type `mode` (1: 128-byte swizzle, 2: 64-byte), base
// offset 0 (blocks aligned to their swizzle pattern).
__device__ __forceinline__ uint64_t wg_desc(uint32_t smem_byte_addr, uint32_t lbo, uint32_t sbo,
                                            uint64_t mode = 1) {
  return (uint64_t)((smem_byte_addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) |
         ((uint64_t)((sbo >> 4) & 0x3FFF) << 32) | (mode << 62);
}
// The descriptor of the operand at base + byte_off from the descriptor at base: the start
// address field is bits 0-13 (address / 16), so for 16-byte aligned offsets that keep the
// address below 2^18 (all of shared memory) it is the base's plus byte_off / 16, with no
// carry into the fields above. One add per wgmma (a uniform 64-bit add where base is
// warp-uniform) instead of the descriptor formed again from each address.
__device__ __forceinline__ uint64_t wg_desc_plus(uint64_t base, uint32_t byte_off) { return base + (byte_off >> 4); }

// The swizzled-rows layout with S-byte block rows (above).
template <int S>
struct SwzRows {
  static_assert(S == 128 || S == 64, "128- or 64-byte swizzle");
  static constexpr int kBytes = S;                     // bytes per row of a column block
  static constexpr int kCols = S / 2;                  // 16-bit columns per column block
  static constexpr int kChunks = S / 16;               // 16-byte chunks per row of a block
  static constexpr int kK16 = S / 32;                  // k16 steps per column block
  static constexpr uint32_t kGroup = 8 * S;            // bytes of an 8-row group
  static constexpr uint64_t kMode = S == 128 ? 1 : 2;  // descriptor layout type
  // Byte offset of (row, 16-byte chunk c) in a tile of `rows` rows (c counts across blocks).
  __host__ __device__ static constexpr uint32_t offset(int rows, int row, int c) {
    return (uint32_t)((c / kChunks) * rows * S + row * S + (((c % kChunks) ^ ((row * S / 128) % kChunks)) * 16));
  }
  // K-major operand: rows row0 .. of a tile of `rows` rows, k16 step kk along the columns.
  // kPlus: from the tile's descriptor plus the offset (wg_desc_plus), which lets the compiler
  // form the tile's descriptor once; it then keeps it live, so kernels choose per call site.
  template <bool kPlus = false>
  static __device__ __forceinline__ uint64_t kmajor(uint32_t tile, int rows, int row0, int kk) {
    const uint32_t off = (kk / kK16) * rows * S + row0 * S + (kk % kK16) * 32;
    if constexpr (kPlus) return wg_desc_plus(wg_desc(tile, 16, kGroup, kMode), off);
    return wg_desc(tile + off, 16, kGroup, kMode);
  }
  // MN-major operand: tile rows 16·kk .. 16·kk + 15 (K), columns from column block cb on.
  template <bool kPlus = false>
  static __device__ __forceinline__ uint64_t mnmajor(uint32_t tile, int rows, int cb, int kk) {
    const uint32_t off = cb * rows * S + kk * 16 * S;
    if constexpr (kPlus) return wg_desc_plus(wg_desc(tile, rows * S, kGroup, kMode), off);
    return wg_desc(tile + off, rows * S, kGroup, kMode);
  }
};
using Swz128 = SwzRows<128>;

// Byte offset of (row, 16-byte chunk) in a 128-byte-swizzle tile of `rows` rows.
__host__ __device__ constexpr uint32_t swz_offset(int rows, int row, int chunk) {
  return Swz128::offset(rows, row, chunk);
}

#ifdef LVX_SM90A
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Four 8x8 16-bit matrices from the warp's registers (thread lane holds row lane / 4,
// columns 2·(lane % 4), +1 of matrix i in r[i], the mma fragment layout) to shared memory:
// lane 8i + j gives the byte address of row j of matrix i (16 contiguous bytes).
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}
// Generic-proxy writes to shared memory (st.shared, cp.async) made visible to the async
// proxy that wgmma reads through; each writing thread, before the barrier.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
#else
__device__ __forceinline__ void wg_fence() {}
__device__ __forceinline__ void wg_commit() {}
template <int N> __device__ __forceinline__ void wg_wait() {}
__device__ __forceinline__ void fence_proxy_async() {}
__device__ __forceinline__ void stmatrix_x4(uint32_t, uint32_t, uint32_t, uint32_t, uint32_t) {}
#endif

// The value, unknown to the compiler: shared-memory addresses taken inside a loop this
// way are recomputed there, instead of hoisted descriptors holding registers throughout.
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("mov.b32 %0, %0;\n" : "+r"(x));
  return x;
}

// Keeps the compiler from moving accumulator reads or writes across the async region.
// Accumulators after a wait; A fragments in registers likewise, so that they stay
// allocated (and unchanged) until the wgmma reading them is known to be complete.
template <int N>
__device__ __forceinline__ void wg_fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
__device__ __forceinline__ void wg_fence_regs(uint32_t (&a)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(a[i][j])::"memory");
}

#define LVX_WG_REGS16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define LVX_WG_REGS32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define LVX_WG_REGS48 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}"
#define LVX_WG_REGS64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define LVX_WG_REGS80 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79}"
#define LVX_WG_REGS96 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95}"
#define LVX_WG_ACC16 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define LVX_WG_ACC32 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define LVX_WG_ACC48 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
#define LVX_WG_ACC64 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define LVX_WG_ACC80 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79])
#define LVX_WG_ACC96 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])

// D (+)= A·B for one k16 step of m64nNk16 (N = 32, 64, 96, 128; ss also 160, 192). ss: A and B by
// descriptor; rs: A from registers. scale_d = 0 overwrites D. TA / TB = 1: the operand
// is MN-major (16-bit types only).
template <typename T> struct Wgmma;
#ifdef LVX_SM90A
#define LVX_WGMMA_OPS(T_, TY)                                                                                        \
  template <> struct Wgmma<T_> {                                                                                    \
    template <int N, int TA, int TB>                                                                                \
    static __device__ __forceinline__ void ss(float (&d)[N / 2], uint64_t a, uint64_t b, int scale_d) {             \
      static_assert(N == 32 || N == 64 || N == 96 || N == 128 || N == 160 || N == 192, "wgmma N");                                 \
      if constexpr (N == 32)                                                                                        \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"                                                   \
                     "wgmma.mma_async.sync.aligned.m64n32k16.f32." TY "." TY " " LVX_WG_REGS16                      \
                     ", %16, %17, p, 1, 1, %19, %20;\n}\n"                                                          \
                     : LVX_WG_ACC16 : "l"(a), "l"(b), "r"(scale_d), "n"(TA), "n"(TB));                              \
      else if constexpr (N == 64)                                                                                   \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                   \
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " LVX_WG_REGS32                      \
                     ", %32, %33, p, 1, 1, %35, %36;\n}\n"                                                          \
                     : LVX_WG_ACC32 : "l"(a), "l"(b), "r"(scale_d), "n"(TA), "n"(TB));                              \
      else if constexpr (N == 96)                                                                                   \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"                                                   \
                     "wgmma.mma_async.sync.aligned.m64n96k16.f32." TY "." TY " " LVX_WG_REGS48                      \
                     ", %48, %49, p, 1, 1, %51, %52;\n}\n"                                                          \
                     : LVX_WG_ACC48 : "l"(a), "l"(b), "r"(scale_d), "n"(TA), "n"(TB));                              \
      else if constexpr (N == 128)                                                                                  \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                   \
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " LVX_WG_REGS64                     \
                     ", %64, %65, p, 1, 1, %67, %68;\n}\n"                                                          \
                     : LVX_WG_ACC64 : "l"(a), "l"(b), "r"(scale_d), "n"(TA), "n"(TB));                              \
      else if constexpr (N == 160)                                                                                  \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %82, 0;\n"                                                   \
                     "wgmma.mma_async.sync.aligned.m64n160k16.f32." TY "." TY " " LVX_WG_REGS80                     \
                     ", %80, %81, p, 1, 1, %83, %84;\n}\n"                                                          \
                     : LVX_WG_ACC80 : "l"(a), "l"(b), "r"(scale_d), "n"(TA), "n"(TB));                              \
      else if constexpr (N == 192)                                                                                  \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"                                                   \
                     "wgmma.mma_async.sync.aligned.m64n192k16.f32." TY "." TY " " LVX_WG_REGS96                     \
                     ", %96, %97, p, 1, 1, %99, %100;\n}\n"                                                          \
                     : LVX_WG_ACC96 : "l"(a), "l"(b), "r"(scale_d), "n"(TA), "n"(TB));                              \
    }                                                                                                               \
    template <int N, int TB>                                                                                        \
    static __device__ __forceinline__ void rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b, int scale_d) { \
      static_assert(N == 32 || N == 64 || N == 96 || N == 128, "wgmma N");                                          \
      if constexpr (N == 32)                                                                                        \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"                                                   \
                     "wgmma.mma_async.sync.aligned.m64n32k16.f32." TY "." TY " " LVX_WG_REGS16                      \
                     ", {%16, %17, %18, %19}, %20, p, 1, 1, %22;\n}\n"                                              \
                     : LVX_WG_ACC16                                                                                 \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d), "n"(TB));                  \
      else if constexpr (N == 64)                                                                                   \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                   \
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " LVX_WG_REGS32                      \
                     ", {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"                                              \
                     : LVX_WG_ACC32                                                                                 \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d), "n"(TB));                  \
      else if constexpr (N == 96)                                                                                   \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %53, 0;\n"                                                   \
                     "wgmma.mma_async.sync.aligned.m64n96k16.f32." TY "." TY " " LVX_WG_REGS48                      \
                     ", {%48, %49, %50, %51}, %52, p, 1, 1, %54;\n}\n"                                              \
                     : LVX_WG_ACC48                                                                                 \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d), "n"(TB));                  \
      else if constexpr (N == 128)                                                                                  \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                   \
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " LVX_WG_REGS64                     \
                     ", {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"                                              \
                     : LVX_WG_ACC64                                                                                 \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d), "n"(TB));                  \
    }                                                                                                               \
  };
LVX_WGMMA_OPS(__nv_bfloat16, "bf16")
LVX_WGMMA_OPS(__half, "f16")
#undef LVX_WGMMA_OPS
#else
// Other targets never launch the sm_90a kernels; the bodies only have to compile.
template <typename T> struct Wgmma {
  template <int N, int TA, int TB> static __device__ void ss(float (&)[N / 2], uint64_t, uint64_t, int) {}
  template <int N, int TB> static __device__ void rs(float (&)[N / 2], const uint32_t (&)[4], uint64_t, int) {}
};
#endif

}  // namespace lvx::cuda

namespace lvx::cuda {

// 16-byte global -> shared copy to a shared-memory byte address; zero-filled when !valid.
__device__ __forceinline__ void cp_async_16_to(uint32_t smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(valid ? 16 : 0));
}

// Copies rows [row0, row0 + ROWS) of a row-major [*, COLS] 16-bit matrix with row stride
// `stride` (elements) into a swizzled-rows tile at `dst`; rows at or past `row_end`
// are zero-filled. All NT threads of the block take part.
template <int ROWS, int COLS, int NT, typename T>
__device__ __forceinline__ void load_swizzled(uint32_t dst, const T* src, size_t stride, int row0, int row_end) {
  constexpr int kChunks = COLS / 8;
#pragma unroll 4
  for (int c = threadIdx.x; c < ROWS * kChunks; c += NT) {
    const int r = c / kChunks, ch = c % kChunks;
    const bool ok = row0 + r < row_end;
    cp_async_16_to(dst + swz_offset(ROWS, r, ch), src + (size_t)(ok ? row0 + r : 0) * stride + ch * 8, ok);
  }
}

}  // namespace lvx::cuda
