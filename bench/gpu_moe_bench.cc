// One training step (forward + backward + AdamW) of a Qwen3-30B-A3B-shaped MoE cut to 4 layers
// (hidden 2048, 32 query / 4 kv heads of 128, 128 experts top-8, moe_intermediate 768, vocab
// 151936, untied) on one GPU through cuda::CudaModel, on one packed row of each length asked
// for, in bf16 matmuls (default; fp32 weights, gradients, AdamW) or fp32. Random weights (uniform
// with std 0.02, norms 1), random tokens, one document per row. Prints one line per length:
//   tokens=T step_s=S tokens_per_s=X tflops=F mfu=M peak_gib=P model_peak_gib=P plan_gib=P
//   recompute=R (the fraction of layers) loss=L experts_gemm=E
// or tokens=T error=... (out of memory included; a non-finite loss is an error too, so a broken
// kernel cannot pass as a fast one). MFU: model FLOPs (train/metrics_flops.h, the
// CPU trainer's convention) over --peak-tflops (989: an H100/H200's dense bf16 rate). Peak
// memory: the device's used bytes (cudaMemGetInfo) sampled every millisecond during the timed
// steps, so it includes the CUDA context, library workspaces and what the memory pool keeps
// (trimmed between lengths, so each length's peak is its own). model_peak_gib is what the model
// itself has allocated at its peak over the same steps, xtuner plan's figure: the memory pool's
// used high-water mark (activations, scratch, bf16 copies: every stream-ordered allocation) plus
// the slabs and AdamW moments allocated outside the pool (16 B a parameter); without the context,
// the libraries' workspaces and what the pool keeps unused.
//
// --layers, --experts and --vocab shrink the model (the activations per token do not depend on
// the expert count or the vocabulary: the cross-entropy is chunked), so that its memory per token
// can be measured where the whole model does not fit (the CUDA emulator); --recompute none|all
// fixes the recompute (default auto: the fewest recomputed layers whose step, as `xtuner plan
// --device cuda` plans it (plan/cuda_step.h), fits the device's free memory with a margin; all
// of them, one more layer at a time, should that run out of memory). plan_gib is that plan's
// figure for model_peak_gib.
//
// --profile N: for each length up to N tokens, one more step with the model's phases timed
// (cuda/step_profile.h), one line each: profile tokens=T step_ms=S <phase>=<ms> ... adamw=<ms>
// other=<ms> (adamw: the update of every parameter, 28 bytes of memory traffic each; other: the
// step less its phases, launch gaps and host work).
//
// --loss-chunk-rows N: loss rows per chunk of the fused lm_head + cross-entropy (default: the
// engine's, about 256 Mi logits, 1766 rows of this vocabulary), to try other chunks on a GPU
// without rebuilding.
//
// --experts-gemm cublas-grouped|xtuner-grouped|per-expert: how the experts' products run
// (cuda/gemm_cuda.h; default auto: cuBLAS's grouped GEMM, and where cuBLAS refuses bf16 inputs
// with fp32 outputs, xtuner's grouped kernel); the experts_gemm field says which ran.
//
// --attention-kernels wmma|mma|auto: the bf16 attention's kernel family (attention_bf16.h).
// auto (default): first both families alone on the model's attention shape at each length up to
// 16k, one line each:
//   attention_kernels tokens=T wmma_fwd_ms= wmma_bwd_ms= mma_fwd_ms= mma_bwd_ms= max_rel_diff=
// then the model runs on mma if the families agree (norm-wise within 2e-2 everywhere) and mma is
// faster at the longest of those lengths, else on wmma; the params line names the choice.
// time: only that timing (before the model is made), then attention_choice=wmma|mma, and exit:
// gpu_moe.sh runs it in a process of its own, so a kernel that faults cannot take the model's
// run down with it.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "xtuner/core/rng.h"
#include "xtuner/cuda/attention_bf16.h"
#include "xtuner/cuda/device.h"
#include "xtuner/cuda/model_cuda.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/cuda/step_profile.h"
#include "xtuner/model/config.h"
#include "xtuner/optim/adamw.h"
#include "xtuner/optim/adamw_scalars.h"
#include "xtuner/plan/cuda_step.h"
#include "xtuner/train/metrics_flops.h"

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// 64 random bits from a counter (core/rng.h's SplitMix64 seeded with it): the slab fills in
// parallel and reproducibly.
uint64_t Mix(uint64_t counter) { return xt::SplitMix64(&counter); }

// The current device's memory pool (where CudaModel's stream-ordered allocations come from), or
// null.
cudaMemPool_t DefaultPool() {
  int device = 0;
  cudaMemPool_t pool = nullptr;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess)
    return nullptr;
  return pool;
}

// Hands the memory the device's pool keeps (CudaModel asks it to keep freed blocks) back.
void TrimPool(cudaStream_t stream) {
  cudaStreamSynchronize(stream);
  if (cudaMemPool_t pool = DefaultPool()) cudaMemPoolTrimTo(pool, 0);
  cudaGetLastError();
}

// Device used bytes, sampled until stopped; the maximum seen.
class MemorySampler {
 public:
  void Start() {
    stop_ = false;
    peak_ = 0;
    thread_ = std::thread([this] {
      while (!stop_) {
        size_t free = 0, total = 0;
        if (cudaMemGetInfo(&free, &total) == cudaSuccess)
          peak_ = std::max<int64_t>(peak_, int64_t(total - free));
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  int64_t Stop() {
    stop_ = true;
    thread_.join();
    return peak_;
  }

 private:
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> peak_{0};
};

// The bf16 attention's kernel families (attention_bf16.h) on the model's attention shape, one
// document of T tokens: each family's forward and backward (the backward on its own forward's
// out and lse), timed by events after a warm-up (median of 3), and the largest norm-wise
// relative difference between the families' out, dq, dk and dv.
struct AttentionTimes {
  double fwd_ms[2] = {0, 0}, bwd_ms[2] = {0, 0};  // [wmma, mma]
  double max_rel_diff = 0;
};
xt::Status TimeAttentionKernels(int64_t T, int64_t Hq, int64_t Hkv, int64_t D, cudaStream_t st,
                                AttentionTimes* times) {
  using xt::cuda::AttentionBf16Kernels;
  const int64_t nq = T * Hq * D, nkv = T * Hkv * D;
  std::vector<float*> bufs;
  auto alloc = [&](int64_t n) -> float* {
    float* p = nullptr;
    if (cudaMalloc(&p, size_t(n) * sizeof(float)) != cudaSuccess) return nullptr;
    bufs.push_back(p);
    return p;
  };
  auto free_all = [&] {
    for (float* p : bufs) cudaFree(p);
    cudaGetLastError();
  };
  // q, k, v, dout random in [-1, 1); per family out, lse, dq, dk, dv.
  float* in[4] = {alloc(nq), alloc(nkv), alloc(nkv), alloc(nq)};
  float* res[2][5];
  for (auto& r : res) {
    r[0] = alloc(nq), r[1] = alloc(T * Hq), r[2] = alloc(nq), r[3] = alloc(nkv), r[4] = alloc(nkv);
  }
  for (float* p : bufs)
    if (!p) {
      free_all();
      return xt::Status::Error("attention kernels: out of memory");
    }
  for (int i = 0; i < 4; ++i) {
    const int64_t n = i == 0 || i == 3 ? nq : nkv;
    std::vector<float> h(n);
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n; ++j)
      h[j] = float(double(Mix(uint64_t(i) << 40 | uint64_t(j)) >> 11) * 0x1.0p-52 - 1.0);
    cudaMemcpy(in[i], h.data(), size_t(n) * sizeof(float), cudaMemcpyHostToDevice);
  }
  const int32_t cu[2] = {0, int32_t(T)};
  const float scale = 1.0f / std::sqrt(float(D));
  cudaEvent_t e[3];
  for (auto& ev : e) cudaEventCreate(&ev);
  xt::Status status;
  for (int f = 0; f < 2 && status.ok(); ++f) {
    const AttentionBf16Kernels kernels =
        f ? AttentionBf16Kernels::kMma : AttentionBf16Kernels::kWmma;
    float* const* r = res[f];
    std::vector<double> fwd, bwd;
    for (int rep = 0; rep < 4 && status.ok(); ++rep) {  // rep 0: warm-up
      cudaEventRecord(e[0], st);
      status = xt::cuda::AttentionForwardBf16(r[0], r[1], in[0], in[1], in[2], cu, 1, T, Hq, Hkv, D,
                                              scale, st, kernels);
      cudaEventRecord(e[1], st);
      if (status.ok())
        status = xt::cuda::AttentionBackwardBf16(r[2], r[3], r[4], in[3], r[0], r[1], in[0], in[1],
                                                 in[2], cu, 1, T, Hq, Hkv, D, scale, st, kernels);
      cudaEventRecord(e[2], st);
      if (status.ok()) status = xt::cuda::Check(cudaEventSynchronize(e[2]), "attention kernels");
      float a = 0, b = 0;
      cudaEventElapsedTime(&a, e[0], e[1]);
      cudaEventElapsedTime(&b, e[1], e[2]);
      if (rep > 0) fwd.push_back(a), bwd.push_back(b);
    }
    if (!status.ok()) break;
    std::sort(fwd.begin(), fwd.end());
    std::sort(bwd.begin(), bwd.end());
    times->fwd_ms[f] = fwd[1];
    times->bwd_ms[f] = bwd[1];
  }
  if (status.ok()) {  // the families' results against each other
    times->max_rel_diff = 0;
    for (int i : {0, 2, 3, 4}) {
      const int64_t n = i == 3 || i == 4 ? nkv : nq;
      std::vector<float> a(n), b(n);
      cudaMemcpy(a.data(), res[1][i], size_t(n) * sizeof(float), cudaMemcpyDeviceToHost);
      cudaMemcpy(b.data(), res[0][i], size_t(n) * sizeof(float), cudaMemcpyDeviceToHost);
      double num = 0, den = 0;
      for (int64_t j = 0; j < n; ++j) {
        num += (double(a[j]) - b[j]) * (double(a[j]) - b[j]);
        den += double(b[j]) * b[j];
      }
      const double rel = std::sqrt(num / std::max(den, 1e-30));
      times->max_rel_diff = std::isfinite(rel) ? std::max(times->max_rel_diff, rel) : INFINITY;
    }
  }
  for (auto& ev : e) cudaEventDestroy(ev);
  free_all();
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> lengths = {4096, 16384, 65536, 131072};
  int64_t steps = 3;
  double peak_tflops = 989.0;
  bool bf16 = true;
  bool bf16_attention = true;  // with bf16: attention on the tensor cores (attention_bf16.cu)
  int64_t layers = 4, experts = 128, vocab = 151936;
  std::vector<double> recompute_tries;     // empty: auto (planned)
  int64_t profile_up_to = 0;               // --profile N: the lengths up to N tokens
  int64_t loss_chunk_rows = 0;             // --loss-chunk-rows N (0: the engine's)
  std::string attention_kernels = "auto";  // --attention-kernels wmma|mma|auto|time
  std::string experts_gemm = "auto";       // --experts-gemm auto|<an ExpertsPath>
  // The bf16 attention's kernels (as named by --attention-kernels, else chosen below) and the
  // experts' path (as named by --experts-gemm).
  xt::cuda::AttentionBf16Kernels kernels = xt::cuda::AttentionBf16Kernels::kWmma;
  xt::cuda::Blas::ExpertsPath experts_path = xt::cuda::Blas::ExpertsPath::kCublasGrouped;
  for (int i = 1; i < argc; i += 2) {
    if (i + 1 == argc) {
      std::fprintf(stderr, "gpu_moe_bench: %s needs a value\n", argv[i]);
      return 2;
    }
    if (!std::strcmp(argv[i], "--profile")) {
      profile_up_to = std::atoll(argv[i + 1]);
    } else if (!std::strcmp(argv[i], "--attention-kernels") &&
               (!std::strcmp(argv[i + 1], "auto") || !std::strcmp(argv[i + 1], "time") ||
                xt::cuda::ParseAttentionBf16Kernels(argv[i + 1], &kernels))) {
      attention_kernels = argv[i + 1];
    } else if (!std::strcmp(argv[i], "--experts-gemm") &&
               (!std::strcmp(argv[i + 1], "auto") ||
                xt::cuda::Blas::ParseExpertsPath(argv[i + 1], &experts_path))) {
      experts_gemm = argv[i + 1];
    } else if (!std::strcmp(argv[i], "--loss-chunk-rows")) {
      loss_chunk_rows = std::atoll(argv[i + 1]);
    } else if (!std::strcmp(argv[i], "--lengths")) {
      lengths.clear();
      std::stringstream ss(argv[i + 1]);
      for (std::string item; std::getline(ss, item, ',');)
        lengths.push_back(std::atoll(item.c_str()));
    } else if (!std::strcmp(argv[i], "--steps")) {
      steps = std::atoll(argv[i + 1]);
    } else if (!std::strcmp(argv[i], "--precision") &&
               (!std::strcmp(argv[i + 1], "bf16") || !std::strcmp(argv[i + 1], "fp32"))) {
      bf16 = !std::strcmp(argv[i + 1], "bf16");
    } else if (!std::strcmp(argv[i], "--attention") &&
               (!std::strcmp(argv[i + 1], "bf16") || !std::strcmp(argv[i + 1], "fp32"))) {
      bf16_attention = !std::strcmp(argv[i + 1], "bf16");
    } else if (!std::strcmp(argv[i], "--peak-tflops")) {
      peak_tflops = std::atof(argv[i + 1]);
    } else if (!std::strcmp(argv[i], "--layers")) {
      layers = std::atoll(argv[i + 1]);
    } else if (!std::strcmp(argv[i], "--experts")) {
      experts = std::atoll(argv[i + 1]);
    } else if (!std::strcmp(argv[i], "--vocab")) {
      vocab = std::atoll(argv[i + 1]);
    } else if (!std::strcmp(argv[i], "--recompute") &&
               (!std::strcmp(argv[i + 1], "auto") || !std::strcmp(argv[i + 1], "none") ||
                !std::strcmp(argv[i + 1], "all"))) {
      recompute_tries.clear();
      if (!std::strcmp(argv[i + 1], "none")) recompute_tries = {0.0};
      if (!std::strcmp(argv[i + 1], "all")) recompute_tries = {1.0};
    } else {
      std::fprintf(stderr,
                   "usage: gpu_moe_bench [--lengths 4096,16384,...] [--steps N] "
                   "[--precision bf16|fp32] [--attention bf16|fp32] [--peak-tflops F] "
                   "[--layers 4] [--experts 128] [--vocab 151936] [--recompute auto|none|all] "
                   "[--profile MAX_TOKENS] [--loss-chunk-rows N] "
                   "[--attention-kernels wmma|mma|auto|time] "
                   "[--experts-gemm auto|cublas-grouped|xtuner-grouped|per-expert]\n");
      return 2;
    }
  }
  if (steps < 1 || lengths.empty()) {
    std::fprintf(stderr, "gpu_moe_bench: need steps >= 1 and at least one length\n");
    return 2;
  }
  if (layers < 1 || experts < 8 || vocab < 2) {  // top-8 routing needs 8 experts
    std::fprintf(stderr, "gpu_moe_bench: need layers >= 1, experts >= 8 and vocab >= 2\n");
    return 2;
  }
  const nlohmann::json cj = {{"model_type", "qwen3_moe"},
                             {"vocab_size", vocab},
                             {"hidden_size", 2048},
                             {"num_hidden_layers", layers},
                             {"num_attention_heads", 32},
                             {"num_key_value_heads", 4},
                             {"head_dim", 128},
                             {"intermediate_size", 6144},
                             {"moe_intermediate_size", 768},
                             {"num_experts", experts},
                             {"num_experts_per_tok", 8},
                             {"decoder_sparse_step", 1},
                             {"mlp_only_layers", nlohmann::json::array()},
                             {"norm_topk_prob", true},
                             {"router_aux_loss_coef", 0.001},
                             {"tie_word_embeddings", false},
                             {"rms_norm_eps", 1e-6},
                             {"rope_theta", 1000000.0},
                             {"max_position_embeddings", 262144},
                             {"hidden_act", "silu"},
                             {"attention_bias", false},
                             {"use_sliding_window", false}};
  auto cfg_or = xt::ModelConfig::FromJson(cj, "gpu_moe_bench");
  if (!cfg_or.ok()) {
    std::fprintf(stderr, "gpu_moe_bench: %s\n", cfg_or.status().message().c_str());
    return 1;
  }
  const xt::ModelConfig cfg = *cfg_or;
  const xt::ParamLayout layout(cfg);
  const int64_t total = layout.total();

  cudaStream_t stream = nullptr;
  if (cudaStreamCreate(&stream) != cudaSuccess) {
    std::fprintf(stderr, "gpu_moe_bench: no CUDA stream (is there a GPU?)\n");
    return 1;
  }
  const bool tensor_core_attention = bf16 && bf16_attention &&
                                     xt::cuda::AttentionBf16Supports(cfg.head_dim) &&
                                     xt::cuda::AttentionBf16Device().ok();
  // The bf16 attention's kernels: as asked, or (auto) the mma family where it agrees with the
  // WMMA one (both are tested against the CPU; between them only fp32 summation order and the
  // exponential's rounding differ) and is faster, timed at the lengths up to 16k.
  if ((attention_kernels == "auto" || attention_kernels == "time") && tensor_core_attention) {
    bool agree = true, faster = false;
    for (int64_t T : lengths) {
      if (T > 16384) continue;
      AttentionTimes at;
      const xt::Status s =
          TimeAttentionKernels(T, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, stream, &at);
      if (!s.ok()) {
        std::printf("attention_kernels tokens=%lld error=%s\n", (long long)T, s.message().c_str());
        agree = false;
        cudaGetLastError();
        continue;
      }
      std::printf(
          "attention_kernels tokens=%lld wmma_fwd_ms=%.3f wmma_bwd_ms=%.3f mma_fwd_ms=%.3f "
          "mma_bwd_ms=%.3f max_rel_diff=%.2e\n",
          (long long)T, at.fwd_ms[0], at.bwd_ms[0], at.fwd_ms[1], at.bwd_ms[1], at.max_rel_diff);
      agree = agree && at.max_rel_diff < 2e-2;
      faster = at.fwd_ms[1] + at.bwd_ms[1] < at.fwd_ms[0] + at.bwd_ms[0];  // the longest decides
    }
    if (agree && faster) kernels = xt::cuda::AttentionBf16Kernels::kMma;
    std::fflush(stdout);
  }
  if (attention_kernels == "time") {  // the kernels alone, in a process of their own
    std::printf("attention_choice=%s\n", xt::cuda::AttentionBf16KernelsName(kernels));
    return 0;
  }
  // Host slab: norms 1, everything else uniform with std 0.02.
  std::vector<float> host(total);
  const float a = 0.02f * std::sqrt(3.0f);
  for (const xt::ParamInfo& p : layout.params()) {
    const int64_t n = xt::NumElements(p.shape);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const double u = double(Mix(uint64_t(p.offset + i)) >> 11) * 0x1.0p-53;  // [0, 1)
      host[p.offset + i] = p.is_norm ? 1.0f : float((2.0 * u - 1.0) * a);
    }
  }
  auto model_or = xt::cuda::CudaModel::Create(cfg, host.data(), stream);
  if (!model_or.ok()) {
    std::fprintf(stderr, "gpu_moe_bench: %s\n", model_or.status().message().c_str());
    return 1;
  }
  xt::cuda::CudaModel& model = **model_or;
  model.SetPrecision(bf16 ? xt::cuda::GemmInput::kBf16 : xt::cuda::GemmInput::kF32);
  model.SetBf16Attention(bf16_attention);
  model.SetLossChunkRows(loss_chunk_rows);
  std::vector<float>().swap(host);
  float *m = nullptr, *v = nullptr;
  if (cudaMalloc(&m, size_t(total) * 4) != cudaSuccess ||
      cudaMalloc(&v, size_t(total) * 4) != cudaSuccess ||
      cudaMemset(m, 0, size_t(total) * 4) != cudaSuccess ||
      cudaMemset(v, 0, size_t(total) * 4) != cudaSuccess) {
    std::fprintf(stderr, "gpu_moe_bench: no room for the AdamW state\n");
    return 1;
  }
  auto runs_or = xt::DecayRuns(xt::DefaultDecayRanges(layout), total, 0, total);
  if (!runs_or.ok()) {
    std::fprintf(stderr, "gpu_moe_bench: %s\n", runs_or.status().message().c_str());
    return 1;
  }
  const std::vector<xt::DecayRun> runs = std::move(*runs_or);  // AdamW's, as the trainer's
  const xt::AdamWConfig ac;
  int64_t adam_step = 0;

  const int64_t per_expert = cfg.params_per_expert();
  const int64_t active =
      xt::MoeActiveParams(total, cfg.num_moe_layers(), cfg.num_experts, cfg.top_k, per_expert);
  const int64_t matmul_params = active - cfg.vocab_size * cfg.hidden_size;
  model.SetAttentionBf16Kernels(kernels);
  if (experts_gemm != "auto")
    model.SetExpertsPath(bf16 ? xt::cuda::GemmInput::kBf16 : xt::cuda::GemmInput::kF32,
                         experts_path);
  std::printf(
      "params=%lld active_params=%lld matmul_params=%lld layers=%lld steps=%lld "
      "loss_chunk_rows=%lld precision=%s attention=%s\n",
      (long long)total, (long long)active, (long long)matmul_params, (long long)layers,
      (long long)steps, (long long)loss_chunk_rows, bf16 ? "bf16" : "fp32",
      tensor_core_attention
          ? (std::string("bf16_") + xt::cuda::AttentionBf16KernelsName(kernels)).c_str()
          : "fp32");

  for (int64_t T : lengths) {
    std::vector<int64_t> ids(T);
    for (int64_t t = 0; t < T; ++t) ids[t] = int64_t(Mix(uint64_t(T * 7919 + t)) % cfg.vocab_size);
    auto batch = xt::Batch::Packed(ids, ids, {0, T});
    if (!batch.ok()) {
      std::printf("tokens=%lld error=%s\n", (long long)T, batch.status().message().c_str());
      continue;
    }
    double loss = 0;
    // adamw_events: when given, the AdamW update is timed between them (the profiled step).
    auto step = [&](cudaEvent_t* adamw_events = nullptr) -> xt::Status {
      XT_RETURN_IF_ERROR(model.ZeroGrads());  // lazy: the step writes the gradients
      XT_ASSIGN_OR_RETURN(xt::LossInfo info, model.ForwardBackward(*batch));
      if (!std::isfinite(info.loss))  // a broken kernel must not pass as a fast one
        return xt::Status::Error("non-finite loss " + std::to_string(info.loss));
      loss = info.loss;
      ++adam_step;
      if (adamw_events)
        XT_RETURN_IF_ERROR(xt::cuda::Check(cudaEventRecord(adamw_events[0], stream), "event"));
      // The update also writes the weights' bf16 copies (bf16 mode), as the trainer's does.
      const xt::cuda::Bf16Mirror mirror = model.bf16_mirror();
      float* const params = model.params();
      const float* const grads = model.grads();
      for (const xt::DecayRun& r : runs) {
        const xt::AdamWStepScalars s = xt::MakeAdamWStepScalars(
            ac.beta1, ac.beta2, ac.eps, ac.weight_decay, adam_step, 1e-5, 1.0f, r.decay);
        XT_RETURN_IF_ERROR(xt::cuda::AdamWStepRange(
            params, grads + r.begin, m + r.begin, v + r.begin, r.begin, r.end, s, mirror, stream));
      }
      model.ParamsChanged(mirror.data != nullptr);
      if (adamw_events)
        XT_RETURN_IF_ERROR(xt::cuda::Check(cudaEventRecord(adamw_events[1], stream), "event"));
      return xt::cuda::Check(cudaStreamSynchronize(stream), "step");
    };
    // What xtuner plan --device cuda says the step allocates (plan/cuda_step.h) with k layers
    // recomputed, and the bf16 copies of the weights (made at the first bf16 step, then kept).
    auto planned_step = [&](int64_t k) {
      xt::CudaStepInputs in;
      in.model = cfg;
      in.tokens = T;
      in.recompute_layers = k;
      in.bf16 = bf16;
      in.bf16_attention = tensor_core_attention;  // as the model decides
      in.loss_chunk_rows = loss_chunk_rows;
      return xt::PlanCudaStep(in).peak_bytes;
    };
    const int64_t copies = bf16 ? 2 * (total - layout.units()[1].begin) : 0;
    // auto: the fewest recomputed layers whose planned step fits the device's free memory less
    // a margin for the pool's fragmentation (3 GiB and 5%); every layer recomputed should that
    // run out of memory all the same.
    std::vector<double> tries = recompute_tries;
    if (tries.empty()) {
      size_t free_bytes = 0, device_bytes = 0;
      if (cudaMemGetInfo(&free_bytes, &device_bytes) != cudaSuccess) free_bytes = 0;
      const int64_t due = model.bf16_mirror().data ? 0 : copies;
      int64_t k = 0;
      for (; k < cfg.num_layers; ++k) {
        const int64_t need = planned_step(k) + due;
        if (need + need / 20 + (int64_t(3) << 30) <= int64_t(free_bytes)) break;
      }
      // Then one more recomputed layer at a time, should a step run out all the same.
      for (int64_t j = k; j <= cfg.num_layers; ++j)
        tries.push_back(double(j) / double(cfg.num_layers));
    }
    xt::Status st;
    double recompute = 0;
    for (double fraction : tries) {
      recompute = fraction;
      model.SetRecompute(fraction);
      st = step();  // warm-up
      if (st.ok() || st.message().find("out of memory") == std::string::npos) break;
      cudaGetLastError();  // clear the failed allocation before the retry's launch checks
      TrimPool(stream);    // the retry starts from an empty pool, not a fragmented one
    }
    std::vector<double> times;
    MemorySampler sampler;
    cudaMemPool_t pool = DefaultPool();
    uint64_t pool_peak = 0;
    if (pool &&
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &pool_peak) != cudaSuccess)
      pool = nullptr;  // model_peak_gib then reads -1
    sampler.Start();
    for (int64_t i = 0; i < steps && st.ok(); ++i) {
      const double t0 = Now();
      st = step();
      times.push_back(Now() - t0);
    }
    const int64_t peak = sampler.Stop();
    if (pool &&
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &pool_peak) != cudaSuccess)
      pool = nullptr;
    // Parameters and gradients (CudaModel::Create) and AdamW's m and v: cudaMalloc, not the pool.
    const double model_peak = pool ? double(pool_peak) + 16.0 * double(total) : -double(1ull << 30);
    const double plan_peak =
        double(planned_step(model.recompute_layers()) + copies) + 16.0 * double(total);
    if (!st.ok()) {
      std::printf("tokens=%lld error=%s\n", (long long)T, st.message().c_str());
      std::fflush(stdout);
      cudaGetLastError();
      TrimPool(stream);
      continue;
    }
    std::sort(times.begin(), times.end());
    const double s = times[times.size() / 2];
    const double flops = xt::TrainingStepFlops(matmul_params, T, cfg.num_layers,
                                               cfg.attention_flops_dim(), double(T) * double(T));
    std::printf(
        "tokens=%lld step_s=%.4f tokens_per_s=%.1f tflops=%.2f mfu=%.4f peak_gib=%.2f "
        "model_peak_gib=%.3f plan_gib=%.3f recompute=%g loss=%.4f experts_gemm=%s\n",
        (long long)T, s, double(T) / s, flops / s / 1e12, flops / s / (peak_tflops * 1e12),
        double(peak) / double(1ull << 30), model_peak / double(1ull << 30),
        plan_peak / double(1ull << 30), recompute, loss,
        xt::cuda::Blas::ExpertsPathName(model.blas().experts_path(
            bf16 ? xt::cuda::GemmInput::kBf16 : xt::cuda::GemmInput::kF32)));
    std::fflush(stdout);
    if (T <= profile_up_to) {  // one more step, its phases timed
      xt::cuda::StepProfile phases;
      model.SetProfile(&phases);
      cudaEvent_t adamw[2] = {nullptr, nullptr};
      st = xt::cuda::Check(cudaEventCreate(&adamw[0]), "event");
      if (st.ok()) st = xt::cuda::Check(cudaEventCreate(&adamw[1]), "event");
      const double t0 = Now();
      if (st.ok()) st = step(adamw);
      const double ms = (Now() - t0) * 1e3;
      float adamw_ms = 0;
      if (st.ok())
        st = xt::cuda::Check(cudaEventElapsedTime(&adamw_ms, adamw[0], adamw[1]), "event");
      for (cudaEvent_t e : adamw)
        if (e) cudaEventDestroy(e);
      model.SetProfile(nullptr);
      if (!st.ok()) {
        std::printf("profile tokens=%lld error=%s\n", (long long)T, st.message().c_str());
      } else {
        std::printf("profile tokens=%lld step_ms=%.3f", (long long)T, ms);
        double sum = adamw_ms;
        for (const auto& [name, phase_ms] : phases.totals()) {
          std::printf(" %s=%.3f", name.c_str(), phase_ms);
          sum += phase_ms;
        }
        std::printf(" adamw=%.3f other=%.3f\n", adamw_ms, ms - sum);
      }
      std::fflush(stdout);
    }
    TrimPool(stream);  // the next length's peak is its own
  }
  cudaFree(m);
  cudaFree(v);
  return 0;
}
