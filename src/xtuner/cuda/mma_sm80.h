// Warp-level tensor-core and asynchronous-copy instructions of sm_80 and newer (mma.sync,
// ldmatrix, cp.async) as small device functions whose register layouts are spelled out here, so
// that a kernel can keep its fragments in registers and know which element each lane holds
// (WMMA's layout is unspecified). Under the CPU emulator (emu.h) each is emulated with this same
// layout through a warp gather; tests/cuda/mma_sm80_cuda_test.cc checks the layout against the
// device's instructions wherever a GPU is present.
//
// Lanes: lane = 4 g + t, g = lane / 4 in 0..7, t = lane % 4. A 32-bit register holds two bf16,
// the lower-indexed element in its low half.
//   A (16 x 16, m x k), 4 registers: a[0] = A[g][2t, 2t+1],   a[1] = A[g+8][2t, 2t+1],
//                                    a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9].
//   B (16 x 8,  k x n), 2 registers: b[0] = B[2t, 2t+1][g],   b[1] = B[2t+8, 2t+9][g].
//   C (16 x 8,  m x n), 4 floats:    c[0..1] = C[g][2t, 2t+1], c[2..3] = C[g+8][2t, 2t+1].
// So the C fragments of two n8 tiles side by side (columns 0..7, 8..15), rounded to bf16 in
// pairs, are the A fragment of those 16 columns: {Pack(c0[0], c0[1]), Pack(c0[2], c0[3]),
// Pack(c1[0], c1[1]), Pack(c1[2], c1[3])} (FlashAttention-2's P = softmax(S) in registers).
//
// ldmatrix .x4 loads four 8 x 8 bf16 matrices from shared memory: lane l gives the address of
// row l % 8 of matrix l / 8 (16 bytes, 16-byte aligned); r[i] = matrix i's row g, columns 2t,
// 2t+1; with .trans, rows 2t, 2t+1 of column g. For a row-major tile X (row stride ld):
//   A of rows m0.., columns k0..: lane's row m0 + l % 8 + 8 ((l / 8) % 2), column k0 + 8 (l / 16);
//   B = X^T (X rows are the n index, as K in Q K^T), for the n8 tiles n0.. and n0 + 8..:
//     lane's row n0 + l % 8 + 8 (l / 16), column k0 + 8 ((l / 8) % 2); tile n0: {r0, r1},
//     tile n0 + 8: {r2, r3};
//   B = X (X rows are the k index, as V in P V), .trans, for the n8 tiles n0.. and n0 + 8..:
//     lane's row k0 + l % 8 + 8 ((l / 8) % 2), column n0 + 8 (l / 16); same tiles;
//   A = X^T (X rows are the k index), .trans: lane's row k0 + l % 8 + 8 (l / 16), column
//     m0 + 8 ((l / 8) % 2).
// (LdA, LdAt, LdBt and LdB below take the tile and the offsets and compute these rows.)
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace xt::cuda::mma {

using bf16 = __nv_bfloat16;

// Two floats rounded to bf16 (nearest even), lo in the low half.
__device__ inline uint32_t Pack(float lo, float hi) {
#if defined(__CUDA_ARCH__)
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // one cvt.rn.bf16x2.f32
  return *reinterpret_cast<const uint32_t*>(&v);
#else
  return uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         (uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
#endif
}

#if defined(XTUNER_CUDA_EMU)

namespace emu_detail {
inline float Half(uint32_t r, int hi) {
  const uint32_t bits = hi ? (r & 0xffff0000u) : (r << 16);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint32_t Join(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }
inline uint16_t Bits(const bf16* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  return b;
}
// Lane `lane`'s gathered value of type T, `offset` bytes into its offer.
template <typename T>
inline T Lane(const unsigned char* all, int lane, size_t offset) {
  T v;
  std::memcpy(&v, all + size_t(lane) * xt::emu::kGatherStride + offset, sizeof(T));
  return v;
}
}  // namespace emu_detail

// d += a b (16 x 8 += 16 x 16 times 16 x 8), products summed in fp32 in k order.
inline void Mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  struct Regs {
    uint32_t a[4], b[2];
  };
  const Regs mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  const unsigned char* all = xt::emu::Gather(&mine, sizeof(Regs));
  const auto A = [&](int lane, int i) {
    return emu_detail::Lane<uint32_t>(all, lane, offsetof(Regs, a) + 4 * size_t(i));
  };
  const auto B = [&](int lane, int i) {
    return emu_detail::Lane<uint32_t>(all, lane, offsetof(Regs, b) + 4 * size_t(i));
  };
  const int lane = xt::emu::Lane(), g = lane / 4, t = lane % 4;
  // This lane's rows of a (g, g + 8) and columns of b (2t, 2t + 1), widened once.
  float x[2][16], y[2][16];
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 16; ++k) {
      x[r][k] = emu_detail::Half(A(4 * g + (k % 8) / 2, r + 2 * (k / 8)), k % 2);
      y[r][k] = emu_detail::Half(B(4 * (2 * t + r) + (k % 8) / 2, k / 8), k % 2);
    }
  for (int i = 0; i < 4; ++i) {  // d[i]: row g + 8 (i / 2), column 2t + i % 2
    float s = d[i];
    for (int k = 0; k < 16; ++k) s += x[i / 2][k] * y[i % 2][k];
    d[i] = s;
  }
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16.
inline void LdMatrixX4(uint32_t (&r)[4], const bf16* row, bool trans = false) {
  if (!xt::emu::InShared(row, 16) || reinterpret_cast<uintptr_t>(row) % 16 != 0)
    xt::emu::Trap("ldmatrix from an address that is not 16-byte aligned dynamic shared memory");
  const unsigned char* rows = xt::emu::Gather(&row, sizeof(row));
  const auto m = [&](int i, int j) { return emu_detail::Lane<const bf16*>(rows, 8 * i + j, 0); };
  const int lane = xt::emu::Lane(), g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    r[i] = trans ? emu_detail::Join(emu_detail::Bits(m(i, 2 * t) + g),
                                    emu_detail::Bits(m(i, 2 * t + 1) + g))
                 : emu_detail::Join(emu_detail::Bits(m(i, g) + 2 * t),
                                    emu_detail::Bits(m(i, g) + 2 * t + 1));
  }
}

// cp.async.cg.shared.global: 16 bytes from global src to shared dst, of which the first
// src_bytes (16 or 0) are read and the rest zero-filled.
inline void CpAsync16(void* dst, const void* src, int src_bytes) {
  xt::emu::AsyncCopy(dst, src, 16, size_t(src_bytes));
}
inline void CpAsyncCommit() { xt::emu::AsyncCommit(); }
template <int kPending>
inline void CpAsyncWait() {
  xt::emu::AsyncWait(kPending);
}

#else  // nvcc

__device__ inline void Mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
  __trap();  // never launched there: the host refuses devices without bf16 tensor cores
#endif
}

__device__ inline void LdMatrixX4(uint32_t (&r)[4], const bf16* row, bool trans = false) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if (trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

__device__ inline void CpAsync16(void* dst, const void* src, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src),
               "r"(src_bytes)
               : "memory");
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}
__device__ inline void CpAsyncCommit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ inline void CpAsyncWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

#endif

// dst (rows, cols; row stride ldd) = the window of the row-major matrix src (row stride ld) at
// (r0, c0), where rows below nrows and columns below ncols exist and the rest is zero-filled, by
// cp.async in the caller's open group, 16-byte pieces spread over the block's `threads` threads.
// cols, c0 and ncols are multiples of 8 (a piece lies wholly inside or outside); src and its rows
// 16-byte aligned.
__device__ inline void CopyWindowAsync(bf16* dst, int ldd, const bf16* src, int64_t ld, int64_t r0,
                                       int64_t c0, int rows, int cols, int64_t nrows, int64_t ncols,
                                       int threads) {
  const int pieces = cols / 8;
  for (int idx = int(threadIdx.x); idx < rows * pieces; idx += threads) {
    const int r = idx / pieces, c = idx % pieces * 8;
    const bool ok = r0 + r < nrows && c0 + c < ncols;
    CpAsync16(dst + r * ldd + c, ok ? src + (r0 + r) * ld + c0 + c : src, ok ? 16 : 0);
  }
}

// The A fragment of rows m0 .. m0 + 15, columns k0 .. k0 + 15 of the row-major shared tile x
// (row stride ld elements, a multiple of 8; m0, k0 multiples of 8).
__device__ inline void LdA(uint32_t (&a)[4], const bf16* x, int ld, int m0, int k0, int lane) {
  LdMatrixX4(a, x + (m0 + lane % 8 + 8 * ((lane / 8) % 2)) * ld + k0 + 8 * (lane / 16));
}
// The A fragment of A = x^T: x's rows are A's columns, the k index (a stored K x M, as dy in
// dw += dy^T x); rows m0 .. m0 + 15 of A, columns k0 .. k0 + 15.
__device__ inline void LdAt(uint32_t (&a)[4], const bf16* x, int ld, int m0, int k0, int lane) {
  LdMatrixX4(a, x + (k0 + lane % 8 + 8 * (lane / 16)) * ld + m0 + 8 * ((lane / 8) % 2), true);
}
// The B fragments of the n8 tiles n0 .. n0 + 7 (b[0..1]) and n0 + 8 .. n0 + 15 (b[2..3]), k
// k0 .. k0 + 15, of B = x^T: x's rows are B's columns (K in Q K^T).
__device__ inline void LdBt(uint32_t (&b)[4], const bf16* x, int ld, int n0, int k0, int lane) {
  LdMatrixX4(b, x + (n0 + lane % 8 + 8 * (lane / 16)) * ld + k0 + 8 * ((lane / 8) % 2));
}
// The same two B fragments of B = x: x's rows are B's rows, the k index (V in P V).
__device__ inline void LdB(uint32_t (&b)[4], const bf16* x, int ld, int n0, int k0, int lane) {
  LdMatrixX4(b, x + (k0 + lane % 8 + 8 * ((lane / 8) % 2)) * ld + n0 + 8 * (lane / 16), true);
}
// d += a times the first (half 0) or second (half 1) B fragment of an LdBt / LdB result.
__device__ inline void MmaHalf(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                               int half) {
  const uint32_t bh[2] = {b[2 * half], b[2 * half + 1]};
  Mma(d, a, bh);
}

}  // namespace xt::cuda::mma
