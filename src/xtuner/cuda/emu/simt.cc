// The CUDA emulator's kernel scheduler (see emu.h): the blocks of a grid in order, the threads of
// a block as fibers on the calling OS thread, barriers and warp exchanges between them. A fiber
// switch on x86-64 saves the callee-saved registers and swaps stacks (a few instructions). It
// does not save the MXCSR and x87 control words (loading them costs more than the rest of the
// switch): a launch sets the defaults for the whole grid, and no kernel changes them. Elsewhere it
// is ucontext's swapcontext, which also makes a signal-mask system call per switch and runs the
// tests about 20 times slower.
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "xtuner/cuda/emu/emu.h"
#include "xtuner/cuda/emu/state.h"

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

// The ends of the section of static __shared__ variables (emu.h), from the linker; null in a
// program without any.
extern "C" char __start_xt_emu_shared[] __attribute__((weak));
extern "C" char __stop_xt_emu_shared[] __attribute__((weak));

namespace xt::emu {
namespace {

enum class Wait { kRunnable, kBlock, kWarp, kDone };

constexpr size_t kOfferBytes = 32;         // the most a lane offers in one warp exchange or gather
constexpr size_t kStackBytes = 256 << 10;  // per fiber: kernels keep small local arrays
constexpr size_t kSkewBytes = 64 << 10;    // more per fiber, over which stack tops are skewed
constexpr int kMaxThreads = 1024;
constexpr size_t kMaxGridX = (size_t(1) << 31) - 1, kMaxGridYz = 65535;
constexpr size_t kDefaultSharedBytes = 48 << 10, kMaxSharedBytes = 227 << 10;

#if defined(__x86_64__)
// Saves the running context on its stack, stores its stack pointer in *from and resumes the
// context whose stack pointer is `to` (saved by a previous switch, or prepared by Prepare).
extern "C" void xt_emu_switch(void** from, void* to);
asm(R"(
  .text
  .globl xt_emu_switch
  .type xt_emu_switch, @function
xt_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size xt_emu_switch, .-xt_emu_switch
)");

struct Context {
  void* sp = nullptr;
};
void Entry();
[[noreturn]] void Start() {
  Entry();
  std::abort();  // Entry switches back to the scheduler for good
}
// A fresh context on `stack` that starts in Start: the frame xt_emu_switch pops (six registers,
// the return address) below a 64-byte aligned top (so a call's 16-byte alignment at Start, and
// the skew of StackBytes in whole cache lines).
void Prepare(Context* c, char* stack, size_t bytes) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(63);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                              // Start's return address: never used
  *--sp = reinterpret_cast<void*>(&Start);      // popped by ret
  for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp, rbx, r12 .. r15
  c->sp = sp;
}
void Switch(Context* from, Context* to) { xt_emu_switch(&from->sp, to->sp); }
#else
struct Context {
  ucontext_t uc;
};
void Entry();
void Prepare(Context* c, char* stack, size_t bytes) {
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack;
  c->uc.uc_stack.ss_size = bytes;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, Entry, 0);
}
void Switch(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }
#endif

struct Fiber {
  Context ctx;
  char* stack = nullptr;  // kStackBytes + kSkewBytes, from the pool
  Wait wait = Wait::kRunnable;
  uint3 idx;
  unsigned exchanges = 0;  // warp exchanges so far (the slot of the next: see Exchange)
  // Asynchronous copies issued and not yet made (AsyncCopy), each with its commit group's number
  // (`groups` so far: the open group's copies carry `groups`).
  struct Copy {
    void* dst;
    const void* src;
    size_t bytes, src_bytes;
    unsigned group;
  };
  std::vector<Copy> copies;
  unsigned groups = 0;
};

// The bytes of thread t's stack in use, at least kStackBytes: the tops are skewed by a different
// number of cache lines for each thread. With tops kStackBytes apart, every fiber's saved
// registers would fall in the same cache sets, and a barrier that switches through a block's
// threads would miss the cache at each switch.
size_t StackBytes(int t) { return kStackBytes + kSkewBytes - size_t(t * 5 % 1024) * 64; }

// Fiber stacks, kept from launch to launch (never zeroed: only their touched pages cost memory).
char* Stack(size_t i) {
  static std::vector<std::unique_ptr<char[]>> pool;
  while (pool.size() <= i) pool.emplace_back(new char[kStackBytes + kSkewBytes]);
  return pool[i].get();
}

struct Grid {
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  Context scheduler;
  int current = -1;
  int pos = 0;           // the running fiber's place in the pass (see RunBlock)
  bool reverse = false;  // run the threads from the last one (XT_CUDA_EMU_ORDER=reverse)
  // Asynchronous copies land when issued (XT_CUDA_EMU_ASYNC=early), not at their wait: a buffer
  // overwritten by the next copies while another thread still reads it shows then.
  bool async_early = false;
  // Each warp runs alone up to the block barrier, one warp after another
  // (XT_CUDA_EMU_WARPS=ahead): shared memory one warp reads before another has written it, for
  // want of a __syncthreads, shows (warp barriers, mma and ldmatrix otherwise keep the warps of
  // a pass in step). only_warp: the warp the pass runs (-1: all).
  bool warps_ahead = false;
  int only_warp = -1;
  std::unique_ptr<unsigned char[], void (*)(void*)> shared{nullptr, std::free};  // 128-aligned
  size_t shared_bytes = 0;
  // A warp's exchanges: each lane's offers, two slots of kOfferBytes.
  std::vector<unsigned char> offers;
  // Per warp of the block: the highest exchange number n for which every one of its 32 lanes
  // was seen to have made n exchanges (Gather). Counts only grow, so that stays true.
  std::vector<unsigned> whole_warp;
};

std::mutex g_launch_mutex;  // one grid at a time: __shared__ statics are one copy
Grid* g_grid = nullptr;

// Switches from `from` to the next fiber of the pass (after place g.pos) that can run; false when
// none is left.
bool SwitchToNext(Grid& g, Context* from) {
  const int n = int(g.fibers.size());
  while (++g.pos < n) {
    const int t = g.reverse ? n - 1 - g.pos : g.pos;
    Fiber& next = g.fibers[t];
    if (next.wait != Wait::kRunnable || (g.only_warp >= 0 && t / 32 != g.only_warp)) continue;
    g.current = t;
    threadIdx = next.idx;
    Switch(from, &next.ctx);
    return true;
  }
  return false;
}

// Ends the running fiber's turn in this pass over the block: switches straight to the next
// fiber of the pass that can run, else back to the scheduler (one switch per turn, not two).
void Yield(Fiber& f) {
  Grid& g = *g_grid;
  if (SwitchToNext(g, &f.ctx)) return;
  g.current = -1;
  Switch(&f.ctx, &g.scheduler);
}

// A fiber's whole life: the kernel's body, then on to the next fiber for good.
void Entry() {
  Grid& g = *g_grid;
  (*g.body)();
  Fiber& f = g.fibers[g.current];
  f.wait = Wait::kDone;
  Yield(f);
}

// Suspends the running fiber until the scheduler releases it from `wait`.
void Suspend(Wait wait) {
  if (!g_grid || g_grid->current < 0) Trap("a barrier outside a kernel");
  Grid& g = *g_grid;
  Fiber& f = g.fibers[g.current];
  f.wait = wait;
  Yield(f);
}

std::string Where() {
  return "block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
         std::to_string(blockIdx.z) + ") thread (" + std::to_string(threadIdx.x) + ", " +
         std::to_string(threadIdx.y) + ", " + std::to_string(threadIdx.z) + ")";
}

// Runs one block: every fiber until all are done. Aborts on a barrier no schedule can pass.
void RunBlock(Grid& g, int n) {
  std::memset(g.shared.get(), 0xff, g.shared_bytes);
  // Every kernel's static __shared__ variables (emu.h puts them in one section; the linker marks
  // its ends), refilled as the dynamic shared memory is: a block that reads what it did not write
  // sees NaN, not what the previous block left.
  if (__start_xt_emu_shared && __stop_xt_emu_shared)
    std::memset(__start_xt_emu_shared, 0xff, size_t(__stop_xt_emu_shared - __start_xt_emu_shared));
  for (int t = 0; t < n; ++t) {
    Fiber& f = g.fibers[t];
    Prepare(&f.ctx, f.stack, StackBytes(t));
    f.wait = Wait::kRunnable;
    f.exchanges = 0;
    f.copies.clear();  // a block's copies never land in the next block's shared memory
    f.groups = 0;
    f.idx = uint3{unsigned(t % blockDim.x), unsigned(t / blockDim.x % blockDim.y),
                  unsigned(t / (blockDim.x * blockDim.y))};
  }
  std::fill(g.whole_warp.begin(), g.whole_warp.end(), 0u);  // the counts start again
  const int warps = (n + 31) / 32;
  for (;;) {
    // A pass: each fiber that can run, in order, runs to its next barrier or its end (Yield
    // hands on to the next); the scheduler resumes after the last.
    if (g.warps_ahead) {  // the first warp, in the pass's order, with a thread that can run
      g.only_warp = -1;
      for (int p = 0; p < n && g.only_warp < 0; ++p) {
        const int t = g.reverse ? n - 1 - p : p;
        if (g.fibers[t].wait == Wait::kRunnable) g.only_warp = t / 32;
      }
    }
    g.pos = -1;
    SwitchToNext(g, &g.scheduler);
    g.current = -1;
    // Everyone is done or waits. Release the warps whose live lanes all wait at a warp barrier,
    // else the block if all its live threads wait at the block barrier.
    bool released = false, all_done = true, any_block = false, mixed = false;
    for (int w = 0; w < warps; ++w) {
      int live = 0, at_warp = 0;
      for (int t = 32 * w; t < std::min(n, 32 * w + 32); ++t) {
        const Wait s = g.fibers[t].wait;
        if (s == Wait::kDone) continue;
        ++live;
        at_warp += s == Wait::kWarp;
        any_block |= s == Wait::kBlock;
      }
      all_done &= live == 0;
      const int lanes = std::min(n, 32 * w + 32) - 32 * w;
      if (at_warp > 0 && live < lanes) {
        // A full-mask warp barrier or shuffle while lanes of the warp have returned: undefined on
        // the device (it may hang), so an error here.
        std::fprintf(stderr,
                     "xtuner CUDA emulator: warp %d of block (%u, %u, %u) waits at __syncwarp or a "
                     "shuffle after %d of its %d lanes returned\n",
                     w, blockIdx.x, blockIdx.y, blockIdx.z, lanes - live, lanes);
        std::abort();
      }
      if (live > 0 && at_warp == live) {
        for (int t = 32 * w; t < std::min(n, 32 * w + 32); ++t)
          if (g.fibers[t].wait == Wait::kWarp) g.fibers[t].wait = Wait::kRunnable;
        released = true;
      } else if (at_warp > 0) {
        mixed = true;
      }
    }
    if (all_done) return;
    if (released) continue;
    bool runnable = false;  // warps the pass did not run (XT_CUDA_EMU_WARPS=ahead)
    for (int t = 0; t < n && !runnable; ++t) runnable = g.fibers[t].wait == Wait::kRunnable;
    if (runnable) continue;
    if (any_block && !mixed) {
      for (int t = 0; t < n; ++t)
        if (g.fibers[t].wait == Wait::kBlock) g.fibers[t].wait = Wait::kRunnable;
      continue;
    }
    std::string states;
    for (int t = 0; t < n; ++t) {
      const Wait s = g.fibers[t].wait;
      states += s == Wait::kDone ? 'd' : s == Wait::kBlock ? 'B' : s == Wait::kWarp ? 'W' : 'r';
    }
    std::fprintf(stderr,
                 "xtuner CUDA emulator: deadlock in block (%u, %u, %u): part of the block or a "
                 "warp waits at a barrier the others never reach (per thread: d done, B "
                 "__syncthreads, W warp barrier): %s\n",
                 blockIdx.x, blockIdx.y, blockIdx.z, states.c_str());
    std::abort();
  }
}

}  // namespace

void SyncThreads() { Suspend(Wait::kBlock); }
void SyncWarp() { Suspend(Wait::kWarp); }

int Lane() {
  const int t = g_grid ? g_grid->current : -1;
  if (t < 0) Trap("a warp operation outside a kernel");
  return t % 32;
}

// Offers this fiber's `bytes` in the slot of its next exchange, waits for its warp, and returns
// the exchange's number (from 1). Each lane offers into one of two slots, alternating: a lane
// that reads its partner's offer after the barrier has done so before it reaches the next
// exchange's barrier, so the exchange after next (the first to write the same slot again) cannot
// overwrite an offer still unread.
static unsigned Offer(Grid& g, const void* mine, size_t bytes) {
  if (bytes > kOfferBytes) Trap("a warp exchange of more than 32 bytes a lane");
  const int t = g.current;
  const unsigned n = ++g.fibers[t].exchanges;
  std::memcpy(&g.offers[(size_t(t) * 2 + n % 2) * kOfferBytes], mine, bytes);
  SyncWarp();
  return n;
}

void Exchange(const void* mine, void* out, size_t bytes, int src) {
  Grid& g = *g_grid;
  const int t = g.current, lane = t % 32, base = t - lane;
  const unsigned n = Offer(g, mine, bytes);
  // The source lane took part if it offered in this exchange: it may have returned since.
  const int s = base + src;
  const bool live = src >= 0 && src < 32 && s < int(g.fibers.size()) && g.fibers[s].exchanges >= n;
  std::memcpy(out, &g.offers[(size_t(live ? s : t) * 2 + n % 2) * kOfferBytes], bytes);
}

const unsigned char* Gather(const void* mine, size_t bytes) {
  static_assert(kGatherStride == 2 * kOfferBytes, "lane l's slot of an exchange: (l * 2 + n % 2)");
  Grid& g = *g_grid;
  const int t = g.current, base = t - t % 32;
  const unsigned n = Offer(g, mine, bytes);
  // Every lane of the warp must have offered here. The first lane of a gather to wake checks
  // all 32; the others find its check recorded.
  unsigned& whole = g.whole_warp[size_t(base / 32)];
  if (whole < n) {
    if (base + 32 > int(g.fibers.size()))
      Trap("a warp-wide instruction (mma, ldmatrix) without all 32 lanes of the warp");
    for (int lane = 0; lane < 32; ++lane)
      if (g.fibers[base + lane].exchanges < n)
        Trap("a warp-wide instruction (mma, ldmatrix) without all 32 lanes of the warp");
    whole = n;
  }
  return &g.offers[(size_t(base) * 2 + n % 2) * kOfferBytes];
}

bool InShared(const void* p, size_t bytes) {
  const Grid* g = g_grid;
  const auto* b = static_cast<const unsigned char*>(p);
  return g && b >= g->shared.get() && b + bytes <= g->shared.get() + g->shared_bytes;
}

// An asynchronous copy lands: src_bytes from src, then zeros up to `bytes`.
static void Land(void* dst, const void* src, size_t bytes, size_t src_bytes) {
  std::memcpy(dst, src, src_bytes);
  std::memset(static_cast<unsigned char*>(dst) + src_bytes, 0, bytes - src_bytes);
}

void AsyncCopy(void* dst, const void* src, size_t bytes, size_t src_bytes) {
  if (!g_grid || g_grid->current < 0) Trap("an asynchronous copy outside a kernel");
  if (!InShared(dst, bytes) || reinterpret_cast<uintptr_t>(dst) % bytes != 0)
    Trap("an asynchronous copy to an address that is not aligned dynamic shared memory");
  if (reinterpret_cast<uintptr_t>(src) % bytes != 0 || (src_bytes > 0 && !IsDevice(src, src_bytes)))
    Trap("an asynchronous copy from an address that is not aligned device memory");
  if (g_grid->async_early) return Land(dst, src, bytes, src_bytes);
  Fiber& f = g_grid->fibers[g_grid->current];
  f.copies.push_back(Fiber::Copy{dst, src, bytes, src_bytes, f.groups});
}

void AsyncCommit() {
  if (!g_grid || g_grid->current < 0) Trap("an asynchronous copy outside a kernel");
  ++g_grid->fibers[g_grid->current].groups;
}

// The copies land as late as the device allows: at the wait that covers them. A read of their
// destination before that wait sees the NaN fill, not the data. (XT_CUDA_EMU_ASYNC=early: as
// early, at issue; see Grid::async_early.)
void AsyncWait(int pending) {
  if (!g_grid || g_grid->current < 0) Trap("an asynchronous copy outside a kernel");
  Fiber& f = g_grid->fibers[g_grid->current];
  const unsigned done = f.groups > unsigned(pending) ? f.groups - unsigned(pending) : 0;
  size_t kept = 0;
  for (const Fiber::Copy& c : f.copies) {
    if (c.group < done)
      Land(c.dst, c.src, c.bytes, c.src_bytes);
    else
      f.copies[kept++] = c;
  }
  f.copies.resize(kept);
}

void* DynamicShared() { return g_grid ? g_grid->shared.get() : nullptr; }

void Trap(const char* what) {
  std::fprintf(stderr, "xtuner CUDA emulator: %s in %s\n", what, Where().c_str());
  std::abort();
}

cudaError_t RunGrid(const void* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                    const std::function<void()>& body) {
  const size_t threads = size_t(block.x) * block.y * block.z;
  const size_t shared_limit = std::max(kDefaultSharedBytes, MaxDynamicShared(kernel));
  cudaError_t err = cudaSuccess;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > kMaxGridX || grid.y > kMaxGridYz || grid.z > kMaxGridYz)
    err = cudaErrorInvalidConfiguration;
  else if (smem > std::min(shared_limit, kMaxSharedBytes))
    err = cudaErrorInvalidValue;
  else if (!StreamValid(stream))
    err = cudaErrorInvalidResourceHandle;
  if (err != cudaSuccess) {
    SetLastError(err);
    return err;
  }
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  Grid g;
  g.body = &body;
  // The order in which threads run between barriers: a read of shared memory that another thread
  // writes before a barrier that is missing sees the old value in one order or the other.
  const char* order = std::getenv("XT_CUDA_EMU_ORDER");
  g.reverse = order && std::string(order) == "reverse";
  const char* ahead = std::getenv("XT_CUDA_EMU_WARPS");
  g.warps_ahead = ahead && std::string(ahead) == "ahead";
  const char* async = std::getenv("XT_CUDA_EMU_ASYNC");
  g.async_early = async && std::string(async) == "early";
  g.fibers.resize(threads);
  for (size_t t = 0; t < threads; ++t) g.fibers[t].stack = Stack(t);
  // Dynamic shared memory, refilled with a NaN pattern for every block (RunBlock): a read of what
  // no thread of the block wrote shows as NaN rather than as a plausible value.
  g.shared_bytes = (std::max<size_t>(smem, 1) + 127) / 128 * 128;
  g.shared.reset(static_cast<unsigned char*>(std::aligned_alloc(128, g.shared_bytes)));
  g.offers.assign(threads * 2 * kOfferBytes, 0);
  g.whole_warp.assign((threads + 31) / 32, 0);
  g_grid = &g;
  gridDim = grid;
  blockDim = block;
#if defined(__x86_64__)
  // The device's floating-point mode for the grid, whatever the calling thread has set (flush to
  // zero, say): the defaults, round to nearest and no flush. Switches do not save these words.
  uint32_t host_csr = 0;
  uint16_t host_cw = 0;
  const uint32_t csr = 0x1f80;
  const uint16_t cw = 0x037f;
  asm volatile("stmxcsr %0" : "=m"(host_csr));
  asm volatile("fnstcw %0" : "=m"(host_cw));
  asm volatile("ldmxcsr %0" : : "m"(csr));
  asm volatile("fldcw %0" : : "m"(cw));
#endif
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        RunBlock(g, int(threads));
      }
#if defined(__x86_64__)
  asm volatile("ldmxcsr %0" : : "m"(host_csr));
  asm volatile("fldcw %0" : : "m"(host_cw));
#endif
  g_grid = nullptr;
  return cudaSuccess;
}

}  // namespace xt::emu
