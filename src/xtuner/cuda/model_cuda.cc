// CudaModel: Transformer::Run's forward and backward (model/transformer.cc, transformer_moe.cc)
// step for step on the CUDA ops. Host C++ (compiled by the C++ compiler, not nvcc): it only
// queues kernels and library calls.
#include "xtuner/cuda/model_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "xtuner/cuda/attention_bf16.h"
#include "xtuner/cuda/device.h"
#include "xtuner/cuda/gemm_cuda.h"
#include "xtuner/cuda/loss_cuda.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/loss/balance.h"
#include "xtuner/loss/cross_entropy.h"
#include "xtuner/model/rope_tables.h"
#include "xtuner/ops/ops.h"

namespace xt::cuda {
namespace {

// A device array of n elements of T, freed with the object. Stream-ordered: allocated and freed
// on the stream it was last allocated on (cudaMallocAsync / cudaFreeAsync), from the device's
// memory pool, which CudaModel::Create tells to keep what is freed: after the first step a
// step's buffers come from the pool without a device synchronisation or a new mapping.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(DeviceArray&& o) noexcept : p_(o.p_), n_(o.n_), stream_(o.stream_) {
    o.p_ = nullptr, o.n_ = 0;
  }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    std::swap(stream_, o.stream_);
    return *this;
  }
  ~DeviceArray() { Free(); }
  // Holds n elements (contents undefined), queued on `stream`; never allocates zero bytes.
  Status Alloc(int64_t n, void* stream) {
    Free();
    stream_ = stream;
    n_ = n;
    const Status st = Check(
        cudaMallocAsync(&p_, size_t(std::max<int64_t>(n, 1)) * sizeof(T), cudaStream_t(stream)),
        "device buffer");
    if (!st.ok()) {
      p_ = nullptr, n_ = 0;
      cudaGetLastError();  // a failed allocation is not sticky: clear it for later launch checks
    }
    return st;
  }
  // Holds at least n elements, keeping the buffer when it is large enough.
  Status Reserve(int64_t n, void* stream) {
    return n <= n_ && p_ ? Status::OK() : Alloc(n, stream);
  }
  Status Zero(void* stream) {
    return Check(cudaMemsetAsync(p_, 0, size_t(n_) * sizeof(T), cudaStream_t(stream)), "memset");
  }
  Status Upload(const T* host, int64_t n, void* stream) {
    XT_RETURN_IF_ERROR(Alloc(n, stream));
    if (n == 0) return Status::OK();
    return Check(cudaMemcpyAsync(p_, host, size_t(n) * sizeof(T), cudaMemcpyHostToDevice,
                                 cudaStream_t(stream)),
                 "upload");
  }
  T* get() const { return p_; }
  int64_t size() const { return n_; }

 private:
  void Free() {
    if (p_) cudaFreeAsync(p_, cudaStream_t(stream_));
    p_ = nullptr;
  }
  T* p_ = nullptr;
  int64_t n_ = 0;
  void* stream_ = nullptr;
};

using F = DeviceArray<float>;
using I = DeviceArray<int32_t>;

}  // namespace

// Everything one micro-batch keeps between its forward and its backward.
struct CudaModel::Buffers {
  struct Layer {
    F h1, rstd1, q_pre, k_pre, q_rstd, k_rstd, q, k, v, attn, lse, x_mid, h2, rstd2, gu, act;
    F router_logits, probs, topk_w, xs, ys;
    I topk_idx, sorted, slot_of;
    std::vector<int32_t> offsets;  // (E + 1) on the host: the grouped GEMMs' row ranges
    int64_t Bytes() const {
      int64_t n = 0;
      for (const F* f : {&h1, &rstd1, &q_pre,         &k_pre, &q_rstd, &k_rstd, &q,
                         &k,  &v,     &attn,          &lse,   &x_mid,  &h2,     &rstd2,
                         &gu, &act,   &router_logits, &probs, &topk_w, &xs,     &ys})
        n += f->size() * int64_t(sizeof(float));
      for (const I* i : {&topk_idx, &sorted, &slot_of}) n += i->size() * int64_t(sizeof(int32_t));
      return n;
    }
  };
  F cos, sin;
  I ids;
  std::vector<F> x;  // L + 1: the input of layer l, then the final hidden states before the norm
  std::vector<Layer> layers;
  F h_final, rstd_final;
  DeviceArray<double> count, prob_sum;  // (E): pooled balancing statistics
};

// The bf16 copy of the weights (bf16 mode only).
struct CudaModel::Bf16Weights : DeviceArray<uint16_t> {};

CudaModel::CudaModel(const ModelConfig& cfg)
    : cfg_(cfg), layout_(cfg_), weights_bf16_(std::make_unique<Bf16Weights>()) {}

CudaModel::~CudaModel() {
  if (params_) cudaFree(params_);
  if (grads_) cudaFree(grads_);
}

Result<std::unique_ptr<CudaModel>> CudaModel::Create(const ModelConfig& cfg,
                                                     const float* host_params, void* stream) {
  std::unique_ptr<CudaModel> m(new CudaModel(cfg));
  m->stream_ = stream;
  // The device's pool keeps freed blocks (the default hands them back at every synchronisation):
  // every step allocates the same buffers again, stream-ordered, without a device-wide sync.
  int device = 0, pools = 0;
  XT_RETURN_IF_ERROR(Check(cudaGetDevice(&device), "memory pool"));
  XT_RETURN_IF_ERROR(Check(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device),
                           "memory pool"));
  if (!pools)
    return Status::Error("CUDA device " + std::to_string(device) +
                         " does not support stream-ordered allocation (cudaMallocAsync), which "
                         "the CUDA model needs");
  cudaMemPool_t mem_pool;
  XT_RETURN_IF_ERROR(Check(cudaDeviceGetDefaultMemPool(&mem_pool, device), "memory pool"));
  uint64_t keep = UINT64_MAX;
  XT_RETURN_IF_ERROR(Check(
      cudaMemPoolSetAttribute(mem_pool, cudaMemPoolAttrReleaseThreshold, &keep), "memory pool"));
  XT_ASSIGN_OR_RETURN(m->blas_, Blas::Create(stream));
  const size_t bytes = size_t(m->layout_.total()) * sizeof(float);
  XT_RETURN_IF_ERROR(Check(cudaMalloc(&m->params_, std::max<size_t>(bytes, 4)), "parameters"));
  XT_RETURN_IF_ERROR(Check(cudaMalloc(&m->grads_, std::max<size_t>(bytes, 4)), "gradients"));
  // On the model's stream (which need not be ordered with the default one), then waited for.
  if (host_params) {
    XT_RETURN_IF_ERROR(Check(cudaMemcpyAsync(m->params_, host_params, bytes, cudaMemcpyHostToDevice,
                                             cudaStream_t(stream)),
                             "parameters"));
  } else {
    XT_RETURN_IF_ERROR(
        Check(cudaMemsetAsync(m->params_, 0, bytes, cudaStream_t(stream)), "parameters"));
  }
  XT_RETURN_IF_ERROR(m->ZeroGrads());
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(cudaStream_t(stream)), "parameters"));
  return m;
}

void CudaModel::SetRecompute(double fraction) {
  XT_CHECK(fraction >= 0 && fraction <= 1, "recompute fraction must be in [0, 1]");
  recompute_layers_ = int64_t(std::llround(fraction * double(cfg_.num_layers)));
}

Status CudaModel::ZeroGrads() {
  return Check(
      cudaMemsetAsync(grads_, 0, size_t(layout_.total()) * sizeof(float), cudaStream_t(stream_)),
      "zero gradients");
}

Status CudaModel::CopyParamsToHost(float* out) const {
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(cudaStream_t(stream_)), "copy parameters"));
  return Check(cudaMemcpy(out, params_, size_t(layout_.total()) * 4, cudaMemcpyDeviceToHost),
               "copy parameters");
}

Status CudaModel::CopyGradsToHost(float* out) const {
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(cudaStream_t(stream_)), "copy gradients"));
  return Check(cudaMemcpy(out, grads_, size_t(layout_.total()) * 4, cudaMemcpyDeviceToHost),
               "copy gradients");
}

Result<LossInfo> CudaModel::ForwardBackward(const Batch& b, double ce_weight, double aux_weight,
                                            const BalancePool& pool) {
  return Run(b, ce_weight, aux_weight, pool, /*router_only=*/false);
}

Result<BalanceStats> CudaModel::RouterStats(const Batch& b) {
  XT_ASSIGN_OR_RETURN(LossInfo info, Run(b, -1, -1, {}, /*router_only=*/true));
  return std::move(info.balance);
}

Result<LossInfo> CudaModel::Run(const Batch& b, double ce_weight, double aux_weight,
                                const BalancePool& pool, bool router_only) {
  XT_RETURN_IF_ERROR(b.Validate(cfg_.vocab_size));
  const int64_t T = b.num_tokens(), H = cfg_.hidden_size, V = cfg_.vocab_size;
  const int64_t L = cfg_.num_layers, D = cfg_.head_dim, Hq = cfg_.num_heads;
  const int64_t Hkv = cfg_.num_kv_heads, E = cfg_.num_experts, k = cfg_.top_k;
  const float eps = float(cfg_.rms_norm_eps);
  const float scale = float(1.0 / std::sqrt(double(D)));
  void* s = stream_;
  Blas& blas = *blas_;
  auto P = [&](int64_t offset) { return params_ + offset; };
  auto G = [&](int64_t offset) { return grads_ + offset; };
  // bf16 matmuls (as ops::gemm in MatmulPrecision::kBf16): both operands rounded to bf16, fp32
  // sums and output. Weights come from a bf16 copy of the slab made once per step; activations
  // are rounded into scratch right before their product. The router stays fp32, as on the CPU.
  const bool bf16 = precision_ == GemmInput::kBf16;
  // Attention's products on the tensor cores too in bf16 mode, where the kernels take the head
  // dim (attention_bf16.h); the fp32 kernels otherwise.
  const bool bf16_attention =
      bf16 && bf16_attention_ && AttentionBf16Supports(D) && AttentionBf16Device().ok();
  const int64_t total = layout_.total();
  DeviceArray<uint16_t> scratch_a, scratch_b;
  if (bf16 && (bf16_stale_ || weights_bf16_->size() < total)) {  // once per parameter update
    XT_RETURN_IF_ERROR(weights_bf16_->Reserve(total, s));
    XT_RETURN_IF_ERROR(ToBf16(weights_bf16_->get(), params_, total, s));
    bf16_stale_ = false;
  }
  auto operand = [&](DeviceArray<uint16_t>& scratch, const float* x,
                     int64_t n) -> Result<const void*> {
    if (x >= params_ && x < params_ + total)
      return static_cast<const void*>(weights_bf16_->get() + (x - params_));
    XT_RETURN_IF_ERROR(scratch.Reserve(n, s));
    XT_RETURN_IF_ERROR(ToBf16(scratch.get(), x, n, s));
    return static_cast<const void*>(scratch.get());
  };
  // c (M, N) = op(a) @ op(b) + beta c, a and b holding a_n and b_n elements.
  auto gemm = [&](float* c, const float* a, int64_t a_n, const float* b, int64_t b_n, int64_t M,
                  int64_t N, int64_t K, bool ta, bool tb, float beta, bool fp32) -> Status {
    if (!bf16 || fp32) return blas.Gemm(c, a, b, M, N, K, ta, tb, beta, GemmInput::kF32);
    XT_ASSIGN_OR_RETURN(const void* a16, operand(scratch_a, a, a_n));
    XT_ASSIGN_OR_RETURN(const void* b16, operand(scratch_b, b, b_n));
    return blas.Gemm(c, a16, b16, M, N, K, ta, tb, beta, GemmInput::kBf16);
  };
  // out (T, O) = in (T, In) @ w^T.
  auto linear = [&](float* out, const float* in, const float* w, int64_t rows, int64_t in_dim,
                    int64_t out_dim, bool fp32 = false) {
    return gemm(out, in, rows * in_dim, w, out_dim * in_dim, rows, out_dim, in_dim, false, true,
                0.0f, fp32);
  };
  // din (T, In) = dout @ w (assigned, or added), dw (O, In) += dout^T @ in.
  auto linear_backward = [&](float* din, float* dw, const float* dout, const float* in,
                             const float* w, int64_t rows, int64_t in_dim, int64_t out_dim,
                             bool accumulate, bool fp32 = false) -> Status {
    if (din)
      XT_RETURN_IF_ERROR(gemm(din, dout, rows * out_dim, w, out_dim * in_dim, rows, in_dim, out_dim,
                              false, false, accumulate ? 1.0f : 0.0f, fp32));
    return gemm(dw, dout, rows * out_dim, in, rows * in_dim, out_dim, in_dim, rows, true, false,
                1.0f, fp32);
  };
  // The experts' products, x holding `rows` rows.
  auto grouped_forward = [&](float* y, const float* x, const float* w, const int32_t* offsets,
                             int64_t rows, int64_t in_dim, int64_t out_dim) -> Status {
    if (!bf16) return blas.GroupedForward(y, x, w, offsets, E, in_dim, out_dim, GemmInput::kF32);
    XT_ASSIGN_OR_RETURN(const void* x16, operand(scratch_a, x, rows * in_dim));
    XT_ASSIGN_OR_RETURN(const void* w16, operand(scratch_b, w, 0));
    return blas.GroupedForward(y, x16, w16, offsets, E, in_dim, out_dim, GemmInput::kBf16);
  };
  auto grouped_backward = [&](float* dx, float* dw, const float* dy, const float* x, const float* w,
                              const int32_t* offsets, int64_t rows, int64_t in_dim,
                              int64_t out_dim) -> Status {
    if (!bf16)
      return blas.GroupedBackward(dx, dw, dy, x, w, offsets, E, in_dim, out_dim, GemmInput::kF32);
    XT_ASSIGN_OR_RETURN(const void* dy16, operand(scratch_a, dy, rows * out_dim));
    XT_ASSIGN_OR_RETURN(const void* x16, operand(scratch_b, x, rows * in_dim));
    XT_ASSIGN_OR_RETURN(const void* w16, operand(scratch_b, w, 0));
    return blas.GroupedBackward(dx, dw, dy16, x16, w16, offsets, E, in_dim, out_dim,
                                GemmInput::kBf16);
  };

  Buffers bu;
  {
    std::vector<float> cos, sin;
    ComputeRopeTables(b, D, cfg_.rope_theta, &cos, &sin);
    XT_RETURN_IF_ERROR(bu.cos.Upload(cos.data(), int64_t(cos.size()), s));
    XT_RETURN_IF_ERROR(bu.sin.Upload(sin.data(), int64_t(sin.size()), s));
  }
  XT_RETURN_IF_ERROR(bu.ids.Upload(b.ids.data(), T, s));
  bu.x.resize(L + 1);
  bu.layers.resize(L);
  for (F& x : bu.x) XT_RETURN_IF_ERROR(x.Alloc(T * H, s));
  XT_RETURN_IF_ERROR(EmbeddingForward(bu.x[0].get(), bu.ids.get(), P(layout_.embed), T, H, s));

  LossInfo info;
  const int64_t n_moe = cfg_.num_moe_layers();
  if (n_moe > 0) {
    XT_RETURN_IF_ERROR(bu.count.Alloc(E, s));
    XT_RETURN_IF_ERROR(bu.prob_sum.Alloc(E, s));
    XT_RETURN_IF_ERROR(bu.count.Zero(s));
    XT_RETURN_IF_ERROR(bu.prob_sum.Zero(s));
  }

  // ---- forward. One layer: its activations into bu.layers[l], its output into bu.x[l + 1].
  // `recomputing`: again in the backward (the same inputs give the same activations and routing;
  // the statistics are not counted twice).
  auto layer_forward = [&](int64_t l, bool recomputing) -> Status {
    const LayerOffsets& o = layout_.layers[l];
    Buffers::Layer& a = bu.layers[l];
    const float* x_in = bu.x[l].get();
    float* x_out = bu.x[l + 1].get();
    XT_RETURN_IF_ERROR(a.h1.Alloc(T * H, s));
    XT_RETURN_IF_ERROR(a.rstd1.Alloc(T, s));
    XT_RETURN_IF_ERROR(RmsnormForward(a.h1.get(), a.rstd1.get(), x_in, P(o.ln1), T, H, eps, s));
    XT_RETURN_IF_ERROR(a.q.Alloc(T * Hq * D, s));
    XT_RETURN_IF_ERROR(a.k.Alloc(T * Hkv * D, s));
    XT_RETURN_IF_ERROR(a.v.Alloc(T * Hkv * D, s));
    if (cfg_.qk_norm) {
      XT_RETURN_IF_ERROR(a.q_pre.Alloc(T * Hq * D, s));
      XT_RETURN_IF_ERROR(a.k_pre.Alloc(T * Hkv * D, s));
      XT_RETURN_IF_ERROR(a.q_rstd.Alloc(T * Hq, s));
      XT_RETURN_IF_ERROR(a.k_rstd.Alloc(T * Hkv, s));
      XT_RETURN_IF_ERROR(linear(a.q_pre.get(), a.h1.get(), P(o.wq), T, H, Hq * D));
      XT_RETURN_IF_ERROR(linear(a.k_pre.get(), a.h1.get(), P(o.wk), T, H, Hkv * D));
      XT_RETURN_IF_ERROR(
          RmsnormForward(a.q.get(), a.q_rstd.get(), a.q_pre.get(), P(o.q_norm), T * Hq, D, eps, s));
      XT_RETURN_IF_ERROR(RmsnormForward(a.k.get(), a.k_rstd.get(), a.k_pre.get(), P(o.k_norm),
                                        T * Hkv, D, eps, s));
    } else {
      XT_RETURN_IF_ERROR(linear(a.q.get(), a.h1.get(), P(o.wq), T, H, Hq * D));
      XT_RETURN_IF_ERROR(linear(a.k.get(), a.h1.get(), P(o.wk), T, H, Hkv * D));
    }
    XT_RETURN_IF_ERROR(linear(a.v.get(), a.h1.get(), P(o.wv), T, H, Hkv * D));
    XT_RETURN_IF_ERROR(RopeForward(a.q.get(), bu.cos.get(), bu.sin.get(), T, Hq, D, s));
    XT_RETURN_IF_ERROR(RopeForward(a.k.get(), bu.cos.get(), bu.sin.get(), T, Hkv, D, s));
    XT_RETURN_IF_ERROR(a.attn.Alloc(T * Hq * D, s));
    XT_RETURN_IF_ERROR(a.lse.Alloc(T * Hq, s));
    XT_RETURN_IF_ERROR((bf16_attention ? AttentionForwardBf16 : AttentionForward)(
        a.attn.get(), a.lse.get(), a.q.get(), a.k.get(), a.v.get(), b.cu_seqlens.data(),
        b.num_docs(), T, Hq, Hkv, D, scale, s));
    XT_RETURN_IF_ERROR(a.x_mid.Alloc(T * H, s));
    XT_RETURN_IF_ERROR(linear(a.x_mid.get(), a.attn.get(), P(o.wo), T, Hq * D, H));
    XT_RETURN_IF_ERROR(AddInPlace(a.x_mid.get(), x_in, T * H, s));
    XT_RETURN_IF_ERROR(a.h2.Alloc(T * H, s));
    XT_RETURN_IF_ERROR(a.rstd2.Alloc(T, s));
    XT_RETURN_IF_ERROR(
        RmsnormForward(a.h2.get(), a.rstd2.get(), a.x_mid.get(), P(o.ln2), T, H, eps, s));
    if (o.router < 0) {  // dense SwiGLU MLP
      const int64_t Im = cfg_.intermediate_size;
      XT_RETURN_IF_ERROR(a.gu.Alloc(T * 2 * Im, s));
      XT_RETURN_IF_ERROR(a.act.Alloc(T * Im, s));
      XT_RETURN_IF_ERROR(linear(a.gu.get(), a.h2.get(), P(o.gate_up), T, H, 2 * Im));
      XT_RETURN_IF_ERROR(SwigluForward(a.act.get(), a.gu.get(), T, Im, s));
      XT_RETURN_IF_ERROR(linear(x_out, a.act.get(), P(o.down), T, Im, H));
    } else {  // dropless MoE: router in fp32, top-k, plan on the host, grouped experts
      const int64_t Im = cfg_.moe_intermediate_size, A = T * k;
      XT_RETURN_IF_ERROR(a.router_logits.Alloc(T * E, s));
      XT_RETURN_IF_ERROR(a.probs.Alloc(T * E, s));
      XT_RETURN_IF_ERROR(a.topk_w.Alloc(T * k, s));
      XT_RETURN_IF_ERROR(a.topk_idx.Alloc(T * k, s));
      XT_RETURN_IF_ERROR(
          linear(a.router_logits.get(), a.h2.get(), P(o.router), T, H, E, /*fp32=*/true));
      XT_RETURN_IF_ERROR(RouterForward(a.topk_idx.get(), a.topk_w.get(), a.probs.get(),
                                       a.router_logits.get(), T, E, k, cfg_.norm_topk_prob, s));
      if (!recomputing)
        XT_RETURN_IF_ERROR(MoeBalanceStats(bu.count.get(), bu.prob_sum.get(), a.probs.get(),
                                           a.topk_idx.get(), T, E, k, s));
      // The one host sync of the layer: the rows each expert gets.
      std::vector<int32_t> topk_idx(T * k);
      XT_RETURN_IF_ERROR(Check(cudaMemcpyAsync(topk_idx.data(), a.topk_idx.get(), T * k * 4,
                                               cudaMemcpyDeviceToHost, cudaStream_t(s)),
                               "top-k indices"));
      XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(cudaStream_t(s)), "top-k indices"));
      std::vector<int32_t> sorted(A), slot_of(A);
      a.offsets.resize(E + 1);
      ops::moe_plan(a.offsets.data(), sorted.data(), slot_of.data(), topk_idx.data(), T, E, k);
      std::vector<int64_t> per_expert(E, 0);
      for (int32_t e : topk_idx) ++per_expert[e];
      if (!recomputing) info.tokens_per_expert.push_back(std::move(per_expert));
      XT_RETURN_IF_ERROR(a.sorted.Upload(sorted.data(), A, s));
      XT_RETURN_IF_ERROR(a.slot_of.Upload(slot_of.data(), A, s));
      XT_RETURN_IF_ERROR(a.xs.Alloc(A * H, s));
      XT_RETURN_IF_ERROR(a.ys.Alloc(A * H, s));
      XT_RETURN_IF_ERROR(a.gu.Alloc(A * 2 * Im, s));
      XT_RETURN_IF_ERROR(a.act.Alloc(A * Im, s));
      XT_RETURN_IF_ERROR(MoePermute(a.xs.get(), a.h2.get(), a.sorted.get(), A, k, H, s));
      XT_RETURN_IF_ERROR(
          grouped_forward(a.gu.get(), a.xs.get(), P(o.gate_up), a.offsets.data(), A, H, 2 * Im));
      XT_RETURN_IF_ERROR(SwigluForward(a.act.get(), a.gu.get(), A, Im, s));
      XT_RETURN_IF_ERROR(
          grouped_forward(a.ys.get(), a.act.get(), P(o.down), a.offsets.data(), A, Im, H));
      XT_RETURN_IF_ERROR(
          MoeCombineForward(x_out, a.ys.get(), a.topk_w.get(), a.slot_of.get(), T, k, H, s));
    }
    XT_RETURN_IF_ERROR(AddInPlace(x_out, a.x_mid.get(), T * H, s));
    return Status::OK();
  };
  // The balancing statistics of the layers run so far, to the host.
  auto download_stats = [&]() -> Status {
    BalanceStats& stats = info.balance;
    stats.count.resize(E);
    stats.prob_sum.resize(E);
    stats.rows = n_moe * T;
    XT_RETURN_IF_ERROR(Check(cudaMemcpyAsync(stats.count.data(), bu.count.get(), E * 8,
                                             cudaMemcpyDeviceToHost, cudaStream_t(s)),
                             "balancing statistics"));
    XT_RETURN_IF_ERROR(Check(cudaMemcpyAsync(stats.prob_sum.data(), bu.prob_sum.get(), E * 8,
                                             cudaMemcpyDeviceToHost, cudaStream_t(s)),
                             "balancing statistics"));
    return Check(cudaStreamSynchronize(cudaStream_t(s)), "balancing statistics");
  };
  if (router_only) {  // RouterStats: the layers up to the last MoE one, nothing kept
    for (int64_t l = 0; l <= cfg_.last_moe_layer(); ++l) {
      XT_RETURN_IF_ERROR(layer_forward(l, false));
      bu.layers[l] = Buffers::Layer();
      bu.x[l] = F();
    }
    if (n_moe > 0) XT_RETURN_IF_ERROR(download_stats());
    return info;
  }
  int64_t recomputed_peak = 0;  // the largest recomputed layer's activations
  for (int64_t l = 0; l < L; ++l) {
    XT_RETURN_IF_ERROR(layer_forward(l, false));
    // Recomputed layers keep only their input (bu.x[l]) until the backward.
    if (l < recompute_layers_) {
      recomputed_peak = std::max(recomputed_peak, bu.layers[l].Bytes());
      bu.layers[l] = Buffers::Layer();
    }
  }
  // What the backward starts from (as the CPU's LossInfo::activation_bytes: the kept layers and
  // inputs, plus one recomputed layer's activations while it is differentiated).
  info.activation_bytes = recomputed_peak;
  for (const F& x : bu.x) info.activation_bytes += x.size() * int64_t(sizeof(float));
  for (const Buffers::Layer& a : bu.layers) info.activation_bytes += a.Bytes();

  // ---- head: final norm, lm_head + cross-entropy (chunked), forward and backward
  XT_RETURN_IF_ERROR(bu.h_final.Alloc(T * H, s));
  XT_RETURN_IF_ERROR(bu.rstd_final.Alloc(T, s));
  XT_RETURN_IF_ERROR(RmsnormForward(bu.h_final.get(), bu.rstd_final.get(), bu.x[L].get(),
                                    P(layout_.final_norm), T, H, eps, s));
  info.num_loss_tokens = b.num_loss_tokens();
  if (ce_weight <= 0) ce_weight = info.num_loss_tokens > 0 ? 1.0 / double(info.num_loss_tokens) : 0;
  if (aux_weight < 0) aux_weight = 1.0;
  F dh, dx;
  XT_RETURN_IF_ERROR(dh.Alloc(T * H, s));
  XT_RETURN_IF_ERROR(dx.Alloc(T * H, s));
  XT_ASSIGN_OR_RETURN(
      const double ce_sum,
      ChunkedCrossEntropy(blas, dh.get(), G(layout_.lm_head), bu.h_final.get(), P(layout_.lm_head),
                          b.targets.data(), T, H, V, ce_weight, 0, s, precision_,
                          bf16 ? weights_bf16_->get() + layout_.lm_head : nullptr));
  info.ce_loss = info.num_loss_tokens > 0 ? ce_sum / double(info.num_loss_tokens) : 0;

  // The balancing loss (as Transformer::Run): statistics to the host, loss and its gradient per
  // probability, centred.
  std::vector<double> dprob_e(E, 0.0);
  if (n_moe > 0) {
    XT_RETURN_IF_ERROR(download_stats());
    const BalanceStats& stats = info.balance;
    info.aux_loss = stats.Loss();
    const BalanceStats pooled = pool ? pool(stats) : stats;
    if (int64_t(pooled.count.size()) != E || int64_t(pooled.prob_sum.size()) != E)
      return Status::Error("balance pool returned statistics of a different expert count");
    dprob_e = BalanceGradient(pooled, E, cfg_.router_aux_loss_coef, aux_weight);
  }
  info.loss = info.ce_loss + cfg_.router_aux_loss_coef * info.aux_loss;
  const bool aux_grad = n_moe > 0 && cfg_.router_aux_loss_coef * aux_weight != 0;
  F dprob_row;
  if (aux_grad) {
    std::vector<float> row(E);
    for (int64_t e = 0; e < E; ++e) row[e] = float(dprob_e[e]);
    XT_RETURN_IF_ERROR(dprob_row.Upload(row.data(), E, s));
  }

  XT_RETURN_IF_ERROR(RmsnormBackward(dx.get(), G(layout_.final_norm), dh.get(), bu.x[L].get(),
                                     P(layout_.final_norm), bu.rstd_final.get(), T, H, false, s));

  // ---- backward, top layer first; dx: d loss / d layer output, then / d layer input.
  // Scratch of the same size in every layer, allocated once; the experts' (the largest: A = T k
  // rows each) per layer, freed with the activations they consume as soon as they are used.
  F dh2, dattn, dq, dk, dv, dh1, dq_pre, dk_pre;
  F dense_dact, dense_dgu, dtopk_w, dprobs, dlogits;
  XT_RETURN_IF_ERROR(dh2.Alloc(T * H, s));
  XT_RETURN_IF_ERROR(dattn.Alloc(T * Hq * D, s));
  XT_RETURN_IF_ERROR(dq.Alloc(T * Hq * D, s));
  XT_RETURN_IF_ERROR(dk.Alloc(T * Hkv * D, s));
  XT_RETURN_IF_ERROR(dv.Alloc(T * Hkv * D, s));
  XT_RETURN_IF_ERROR(dh1.Alloc(T * H, s));
  if (cfg_.qk_norm) {
    XT_RETURN_IF_ERROR(dq_pre.Alloc(T * Hq * D, s));
    XT_RETURN_IF_ERROR(dk_pre.Alloc(T * Hkv * D, s));
  }
  if (n_moe < L) {
    XT_RETURN_IF_ERROR(dense_dact.Alloc(T * cfg_.intermediate_size, s));
    XT_RETURN_IF_ERROR(dense_dgu.Alloc(T * 2 * cfg_.intermediate_size, s));
  }
  if (n_moe > 0) {
    XT_RETURN_IF_ERROR(dtopk_w.Alloc(T * k, s));
    XT_RETURN_IF_ERROR(dlogits.Alloc(T * E, s));
    if (aux_grad) {
      XT_RETURN_IF_ERROR(dprobs.Alloc(T * E, s));
      XT_RETURN_IF_ERROR(BroadcastRow(dprobs.get(), dprob_row.get(), T, E, s));
    }
  }
  for (int64_t l = L - 1; l >= 0; --l) {
    const LayerOffsets& o = layout_.layers[l];
    if (l < recompute_layers_) XT_RETURN_IF_ERROR(layer_forward(l, true));
    Buffers::Layer& a = bu.layers[l];
    if (o.router < 0) {
      const int64_t Im = cfg_.intermediate_size;
      XT_RETURN_IF_ERROR(linear_backward(dense_dact.get(), G(o.down), dx.get(), a.act.get(),
                                         P(o.down), T, Im, H, false));
      XT_RETURN_IF_ERROR(SwigluBackward(dense_dgu.get(), dense_dact.get(), a.gu.get(), T, Im, s));
      XT_RETURN_IF_ERROR(linear_backward(dh2.get(), G(o.gate_up), dense_dgu.get(), a.h2.get(),
                                         P(o.gate_up), T, H, 2 * Im, false));
    } else {
      const int64_t Im = cfg_.moe_intermediate_size, A = T * k;
      // Each (A, .) buffer is freed right after its last use (stream-ordered, so the pool hands
      // the memory to the next allocation without a sync): at most about two of them besides
      // the layer's activations, instead of four (at 128k tokens of the benchmark's model, an
      // (A, H) fp32 buffer is 8 GiB).
      F dys, dact, dgu, dxs;
      XT_RETURN_IF_ERROR(dys.Alloc(A * H, s));
      XT_RETURN_IF_ERROR(MoeCombineBackward(dys.get(), dtopk_w.get(), dx.get(), a.ys.get(),
                                            a.topk_w.get(), a.slot_of.get(), T, k, H, s));
      a.ys = F();
      XT_RETURN_IF_ERROR(dact.Alloc(A * Im, s));
      XT_RETURN_IF_ERROR(grouped_backward(dact.get(), G(o.down), dys.get(), a.act.get(), P(o.down),
                                          a.offsets.data(), A, Im, H));
      dys = F();
      a.act = F();
      XT_RETURN_IF_ERROR(dgu.Alloc(A * 2 * Im, s));
      XT_RETURN_IF_ERROR(SwigluBackward(dgu.get(), dact.get(), a.gu.get(), A, Im, s));
      dact = F();
      a.gu = F();
      XT_RETURN_IF_ERROR(dxs.Alloc(A * H, s));
      XT_RETURN_IF_ERROR(grouped_backward(dxs.get(), G(o.gate_up), dgu.get(), a.xs.get(),
                                          P(o.gate_up), a.offsets.data(), A, H, 2 * Im));
      dgu = F();
      a.xs = F();
      XT_RETURN_IF_ERROR(dh2.Zero(s));  // the permute's backward adds into it
      XT_RETURN_IF_ERROR(MoePermuteBackward(dh2.get(), dxs.get(), a.slot_of.get(), T, k, H, s));
      XT_RETURN_IF_ERROR(RouterBackward(dlogits.get(), dtopk_w.get(),
                                        aux_grad ? dprobs.get() : nullptr, a.probs.get(),
                                        a.topk_idx.get(), T, E, k, cfg_.norm_topk_prob, s));
      XT_RETURN_IF_ERROR(linear_backward(dh2.get(), G(o.router), dlogits.get(), a.h2.get(),
                                         P(o.router), T, H, E, true, /*fp32=*/true));
    }
    // dx = d x_mid (the residual plus the norm's backward).
    XT_RETURN_IF_ERROR(RmsnormBackward(dx.get(), G(o.ln2), dh2.get(), a.x_mid.get(), P(o.ln2),
                                       a.rstd2.get(), T, H, true, s));
    XT_RETURN_IF_ERROR(linear_backward(dattn.get(), G(o.wo), dx.get(), a.attn.get(), P(o.wo), T,
                                       Hq * D, H, false));
    XT_RETURN_IF_ERROR((bf16_attention ? AttentionBackwardBf16 : AttentionBackward)(
        dq.get(), dk.get(), dv.get(), dattn.get(), a.attn.get(), a.lse.get(), a.q.get(), a.k.get(),
        a.v.get(), b.cu_seqlens.data(), b.num_docs(), T, Hq, Hkv, D, scale, s));
    XT_RETURN_IF_ERROR(RopeBackward(dq.get(), bu.cos.get(), bu.sin.get(), T, Hq, D, s));
    XT_RETURN_IF_ERROR(RopeBackward(dk.get(), bu.cos.get(), bu.sin.get(), T, Hkv, D, s));
    const float* dq_in = dq.get();
    const float* dk_in = dk.get();
    if (cfg_.qk_norm) {
      XT_RETURN_IF_ERROR(RmsnormBackward(dq_pre.get(), G(o.q_norm), dq.get(), a.q_pre.get(),
                                         P(o.q_norm), a.q_rstd.get(), T * Hq, D, false, s));
      XT_RETURN_IF_ERROR(RmsnormBackward(dk_pre.get(), G(o.k_norm), dk.get(), a.k_pre.get(),
                                         P(o.k_norm), a.k_rstd.get(), T * Hkv, D, false, s));
      dq_in = dq_pre.get();
      dk_in = dk_pre.get();
    }
    XT_RETURN_IF_ERROR(
        linear_backward(dh1.get(), G(o.wq), dq_in, a.h1.get(), P(o.wq), T, H, Hq * D, false));
    XT_RETURN_IF_ERROR(
        linear_backward(dh1.get(), G(o.wk), dk_in, a.h1.get(), P(o.wk), T, H, Hkv * D, true));
    XT_RETURN_IF_ERROR(
        linear_backward(dh1.get(), G(o.wv), dv.get(), a.h1.get(), P(o.wv), T, H, Hkv * D, true));
    XT_RETURN_IF_ERROR(RmsnormBackward(dx.get(), G(o.ln1), dh1.get(), bu.x[l].get(), P(o.ln1),
                                       a.rstd1.get(), T, H, true, s));
    bu.layers[l] = Buffers::Layer();  // free as we go
  }
  XT_RETURN_IF_ERROR(EmbeddingBackward(G(layout_.embed), dx.get(), bu.ids.get(), T, V, H, s));
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(cudaStream_t(s)), "training step"));
  return info;
}

}  // namespace xt::cuda
