// The CUDA emulator's device side (builds with -DXTUNER_CUDA_EMU=ON only): the engine's .cu
// files compile as plain C++ with this header included first, and their kernels run on the CPU.
//
// What it is for: running the CUDA backend's code (kernels, launch bounds, the model, training,
// ZeRO-3 and expert parallelism over the staged communicator) and its tests on a machine without
// a GPU, so index arithmetic, barriers, shared-memory layouts, launch limits and host logic are
// exercised against the CPU twins before a GPU is ever lent. What it is not: a GPU. It says
// nothing about speed, the memory model between threads that are not synchronised, warp
// scheduling, or tensor-core rounding; host code that dereferences a device pointer works here
// (device memory is host memory) and would crash on a GPU.
//
// How a kernel runs (emu/simt.cc): the blocks of a grid one after another; the threads of a block
// as fibers on one OS thread, each run until it reaches __syncthreads, __syncwarp or a shuffle,
// which wait for the whole block or warp (threads that returned count as arrived). A barrier that
// can never be reached by every live thread (one that part of a block or warp skips) is reported
// as a deadlock and aborts. __shared__ variables are function statics in their own section: one
// copy, shared by the block that runs, refilled with a NaN pattern before each block. Launch limits
// (block size, grid size, dynamic shared memory above 48 KiB without cudaFuncSetAttribute) fail the
// launch as on the device.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// Device qualifiers. __global__, __device__, __host__ and __forceinline__ keep the host meanings
// cuda_runtime.h gives them outside nvcc (nothing, or inline); __shared__ becomes one static copy,
// placed in the section xt_emu_shared, which simt.cc refills with a NaN pattern before each block
// (the device's shared memory holds nothing a block can rely on when it starts).
#undef __shared__
#define __shared__ static __attribute__((section("xt_emu_shared")))
#undef __launch_bounds__
#define __launch_bounds__(...)

// The built-in coordinates of the thread that runs (set by the scheduler before it resumes one).
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

namespace xt::emu {

// The thread that runs waits until every live thread of its block (its warp) arrives.
void SyncThreads();
void SyncWarp();
// Warp exchange: every live lane of the warp offers `bytes` (at most 16) from `mine` and receives
// lane `src`'s offer (its own where `src` is not a live lane of the warp).
void Exchange(const void* mine, void* out, size_t bytes, int src);
// Warp gather: every lane of the warp offers `bytes` (at most 32) from `mine`; returns where
// lane 0's offer lies, lane l's kGatherStride * l bytes further. For the warp-wide instructions
// (mma, ldmatrix): all 32 lanes must take part, else it traps. The offers stay there until this
// lane's next warp exchange or gather.
constexpr size_t kGatherStride = 64;
const unsigned char* Gather(const void* mine, size_t bytes);
// Whether [p, p + bytes) lies in the running block's dynamic shared memory.
bool InShared(const void* p, size_t bytes);
// cp.async (mma_sm80.h): copies src_bytes (<= bytes) from device memory src to shared memory dst
// and zeroes the rest of its `bytes`, in the running thread's open group. The copy lands at the
// AsyncWait that covers its group, never earlier (the latest the device allows), so a read before
// that wait sees the shared memory's NaN fill (XT_CUDA_EMU_ASYNC=early: the copy lands at once,
// the earliest the device allows, so a buffer refilled while others still read it shows). Traps on
// addresses that are not aligned to `bytes`, on a dst outside the dynamic shared memory, on a src
// outside device memory.
void AsyncCopy(void* dst, const void* src, size_t bytes, size_t src_bytes);
// Closes the running thread's open group of copies (cp.async.commit_group).
void AsyncCommit();
// Lands the running thread's copies of every committed group but the newest `pending`
// (cp.async.wait_group pending).
void AsyncWait(int pending);
// The running kernel's dynamic shared memory (the launch's third argument, bytes).
void* DynamicShared();
// Aborts the process, naming the kernel's block and thread.
[[noreturn]] void Trap(const char* what);
// The lane (0 .. 31) of the running thread.
int Lane();

// Runs `body` (one thread's work) for every thread of the grid, in stream order (the emulator
// runs everything synchronously). Returns the launch error, which cudaGetLastError also reports.
cudaError_t RunGrid(const void* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                    const std::function<void()>& body);

// kernel<<<grid, block, smem, stream>>>(args...) as XT_LAUNCH(kernel, grid, block, smem,
// stream)(args...): the arguments are converted to the kernel's parameter types once, as the
// device copies them, and every thread calls the kernel with its own copy.
template <class... P>
struct Launcher {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  template <class... A>
  void operator()(A&&... args) const {
    const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    RunGrid(reinterpret_cast<const void*>(kernel), grid, block, smem, stream,
            [&] { std::apply(kernel, params); });
  }
};
template <class... P>
Launcher<P...> Launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                      cudaStream_t stream) {
  return Launcher<P...>{kernel, grid, block, smem, stream};
}

}  // namespace xt::emu

#define XT_LAUNCH(kernel, grid, block, smem, stream) \
  ::xt::emu::Launch(kernel, grid, block, smem, stream)
#define XT_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::xt::emu::DynamicShared())

// The kernel-pointer overload cuda_runtime.h declares for nvcc only.
template <class... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// ---- device built-ins the kernels use.
inline void __syncthreads() { xt::emu::SyncThreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { xt::emu::SyncWarp(); }
[[noreturn]] inline void __trap() { xt::emu::Trap("__trap()"); }

template <class T>
T __shfl_sync(unsigned, T v, int src, int width = warpSize) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16, "shuffle of a small value");
  const int lane = xt::emu::Lane();
  T out;
  xt::emu::Exchange(&v, &out, sizeof(T), (lane / width) * width + src % width);
  return out;
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = warpSize) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16, "shuffle of a small value");
  const int lane = xt::emu::Lane();
  const int src = lane ^ mask;
  T out;
  // A source outside the lane's width segment returns the lane's own value, as on the device.
  xt::emu::Exchange(&v, &out, sizeof(T), src / width == lane / width ? src : lane);
  return out;
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = warpSize) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16, "shuffle of a small value");
  const int lane = xt::emu::Lane();
  const int src = lane + int(delta);
  T out;
  xt::emu::Exchange(&v, &out, sizeof(T), src / width == lane / width ? src : lane);
  return out;
}

// IEEE round-to-nearest arithmetic, which is what the host does (the emulator is built without
// contraction into FMAs, so a * b + c rounds twice, as these intrinsics ask).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
using std::max;
using std::min;

// ---- WMMA (mma.h) on 16 x 16 x 16 tiles. An A or B fragment holds its whole tile in every lane
// (num_elements 256); an accumulator holds 8 elements per lane in the layout of the sm80 mma
// instructions (Elem below), which spreads a lane's elements over two rows and four column
// pairs. The kernels must read the layout back at run time (it is unspecified on the device), so
// a kernel that assumes another one fails here. Products are summed in fp32 in k order.
namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment;

// A lane's A and B fragments hold only what its accumulator elements need: two rows of A,
// FragRow(lane, r), and four columns of B, FragCol(lane, j), each along k, widened to fp32 (every
// bf16 is a float). Kernels touch A and B fragments only through fill, load and mma (their layout
// on the device is unspecified).
inline int FragRow(int lane, int r) { return lane / 4 + 8 * r; }                      // r < 2
inline int FragCol(int lane, int j) { return 2 * (lane % 4) + j % 2 + 8 * (j / 2); }  // j < 4
// Element i (0 .. 7) of a lane's accumulator fragment is the product of A's row (i / 2) % 2 and
// B's column i % 2 + 2 * (i / 4) of its fragments: tile row ElemRow(lane, i), column ElemCol.
inline int ElemR(int i) { return (i / 2) % 2; }
inline int ElemJ(int i) { return i % 2 + 2 * (i / 4); }
inline int ElemRow(int lane, int i) { return FragRow(lane, ElemR(i)); }
inline int ElemCol(int lane, int i) { return FragCol(lane, ElemJ(i)); }
template <class Layout>
struct fragment<matrix_a, 16, 16, 16, __nv_bfloat16, Layout> {
  static constexpr int num_elements = 32;
  float x[2][16];  // [r][k]: row FragRow(lane, r)
};
template <class Layout>
struct fragment<matrix_b, 16, 16, 16, __nv_bfloat16, Layout> {
  static constexpr int num_elements = 64;
  float x[4][16];  // [j][k]: column FragCol(lane, j)
};
template <>
struct fragment<accumulator, 16, 16, 16, float, void> {
  static constexpr int num_elements = 8;
  float x[8];
};

template <class Use, class Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f, __nv_bfloat16 v) {
  for (auto& row : f.x)
    for (float& e : row) e = __bfloat162float(v);
}
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float v) {
  for (float& e : f.x) e = v;
}

// A: element (m, k); B: element (k, n); ldm in elements.
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major>& f,
                             const __nv_bfloat16* p, unsigned ldm) {
  const int lane = xt::emu::Lane();
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 16; ++k) f.x[r][k] = __bfloat162float(p[FragRow(lane, r) * ldm + k]);
}
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, __nv_bfloat16, col_major>& f,
                             const __nv_bfloat16* p, unsigned ldm) {
  const int lane = xt::emu::Lane();
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 16; ++k) f.x[r][k] = __bfloat162float(p[k * ldm + FragRow(lane, r)]);
}
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __nv_bfloat16, row_major>& f,
                             const __nv_bfloat16* p, unsigned ldm) {
  const int lane = xt::emu::Lane();
  for (int j = 0; j < 4; ++j)
    for (int k = 0; k < 16; ++k) f.x[j][k] = __bfloat162float(p[k * ldm + FragCol(lane, j)]);
}
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __nv_bfloat16, col_major>& f,
                             const __nv_bfloat16* p, unsigned ldm) {
  const int lane = xt::emu::Lane();
  for (int j = 0; j < 4; ++j)
    for (int k = 0; k < 16; ++k) f.x[j][k] = __bfloat162float(p[FragCol(lane, j) * ldm + k]);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
  const int lane = xt::emu::Lane();
  for (int i = 0; i < 8; ++i) {
    const int r = ElemRow(lane, i), c = ElemCol(lane, i);
    f.x[i] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  }
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  const int lane = xt::emu::Lane();
  for (int i = 0; i < 8; ++i) {
    const int r = ElemRow(lane, i), c = ElemCol(lane, i);
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[i];
  }
}

// Element i of the accumulator: A's fragment row ElemR(i) times B's column ElemJ(i), products
// summed in fp32 in k order.
template <class LayoutA, class LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[8];
  for (int i = 0; i < 8; ++i) {
    const float* x = a.x[ElemR(i)];
    const float* y = b.x[ElemJ(i)];
    float s = c.x[i];
    for (int k = 0; k < 16; ++k) s += x[k] * y[k];
    out[i] = s;
  }
  for (int i = 0; i < 8; ++i) d.x[i] = out[i];
}

}  // namespace nvcuda::wmma
