#include "xtuner/cuda/moe_block.h"

#include <cuda_runtime.h>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/expert_parallel_cuda.h"
#include "xtuner/cuda/loss_cuda.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/ops.h"

namespace xt::cuda {

using F = DeviceArray<float>;
using F16 = DeviceArray<uint16_t>;

int64_t MoeActs::Bytes() const {
  int64_t n = 0;
  for (const F* f :
       {&router_logits, &probs, &topk_w, &xs, &gu, &act, &ys, &xr, &shared_gu, &shared_act})
    n += f->size() * int64_t(sizeof(float));
  for (const DeviceArray<int32_t>* i :
       {&topk_idx, &sorted, &slot_of, &received_of_grouped, &grouped_of_received})
    n += i->size() * int64_t(sizeof(int32_t));
  for (const F16* h : {&xs16, &gu16, &act16, &ys16, &xr16})
    n += h->size() * int64_t(sizeof(uint16_t));
  return n;
}

MoeBlock::MoeBlock(const ModelConfig& cfg, StepProducts& mm, GradWrites& writes, Comm* ep,
                   int64_t experts, bool rows16, int64_t T, void* stream)
    : cfg_(cfg),
      mm_(mm),
      writes_(writes),
      ep_(ep),
      rows16_(rows16),
      glu_(cfg.expert_act == ExpertActivation::kGptOssGlu),
      experts_(experts),
      T_(T),
      stream_(stream) {
  XT_CHECK(!rows16 || (!glu_ && !cfg.expert_bias),
           "MoeBlock: bf16 rows with GPT-OSS's experts (their bias gradients need fp32 rows)");
}

Status MoeBlock::ExpertBiasGrad(float* db, const float* dout, const int32_t* offsets, int64_t n) {
  if (!db) return Status::OK();
  XT_RETURN_IF_ERROR(writes_.Prepare(db, experts_ * n, stream_));
  return GroupedBiasBackward(db, dout, offsets, experts_, n, stream_);
}

Status MoeBlock::ExpertLoraForward(float* out, const float* x, const uint16_t* x16, const float* A,
                                   const float* B, const int32_t* offsets, int64_t R, int64_t in,
                                   int64_t O) {
  const int64_t r = cfg_.lora.rank;
  F z, y;
  XT_RETURN_IF_ERROR(z.Alloc(R * r, stream_));
  XT_RETURN_IF_ERROR(y.Alloc(R * O, stream_));
  XT_RETURN_IF_ERROR(mm_.GroupedForward(z.get(), x, A, offsets, R, in, r, x16));
  XT_RETURN_IF_ERROR(mm_.GroupedForward(y.get(), z.get(), B, offsets, R, r, O));
  return ScaleColumns(out, O, 0, y.get(), O, 0, R, O, float(cfg_.lora.scale()), /*add=*/true,
                      stream_);
}

Status MoeBlock::ExpertLoraBackward(float* dx, float* dA, float* dB, const float* dout,
                                    const uint16_t* dout16, const float* x, const uint16_t* x16,
                                    const float* A, const float* B, const int32_t* offsets,
                                    int64_t R, int64_t in, int64_t O) {
  const int64_t r = cfg_.lora.rank;
  const float scale = float(cfg_.lora.scale());
  F z, dy, dz, dxa;
  XT_RETURN_IF_ERROR(z.Alloc(R * r, stream_));
  XT_RETURN_IF_ERROR(mm_.GroupedForward(z.get(), x, A, offsets, R, in, r, x16));
  XT_RETURN_IF_ERROR(dy.Alloc(R * O, stream_));
  XT_RETURN_IF_ERROR(dout16
                         ? ScaleColumns(dy.get(), O, 0, dout16, O, 0, R, O, scale, false, stream_)
                         : ScaleColumns(dy.get(), O, 0, dout, O, 0, R, O, scale, false, stream_));
  XT_RETURN_IF_ERROR(dz.Alloc(R * r, stream_));
  XT_RETURN_IF_ERROR(mm_.GroupedBackward(dz.get(), dB, dy.get(), z.get(), B, offsets, R, r, O));
  dy = F();
  z = F();
  XT_RETURN_IF_ERROR(dxa.Alloc(R * in, stream_));
  XT_RETURN_IF_ERROR(
      mm_.GroupedBackward(dxa.get(), dA, dz.get(), x, A, offsets, R, in, r, nullptr, x16));
  return AddInPlace(dx, dxa.get(), R * in, stream_);
}

Status MoeBlock::PermuteRows(MoeActs* a, const float* h2) {
  const int64_t A = T_ * cfg_.top_k, H = cfg_.hidden_size;
  if (rows16_) {
    XT_RETURN_IF_ERROR(a->xs16.Alloc(A * H, stream_));
    return MoePermute(a->xs16.get(), h2, a->sorted.get(), A, cfg_.top_k, H, stream_);
  }
  XT_RETURN_IF_ERROR(a->xs.Alloc(A * H, stream_));
  return MoePermute(a->xs.get(), h2, a->sorted.get(), A, cfg_.top_k, H, stream_);
}

Status MoeBlock::Forward(MoeActs* a, float* y, const float* h2, const UnitParams& P,
                         const LayerOffsets& o, double* count, double* prob_sum,
                         const std::function<Status()>& before_wait,
                         std::vector<int64_t>* per_expert, const Mark& part) {
  const int64_t T = T_, H = cfg_.hidden_size, E = cfg_.num_experts, k = cfg_.top_k;
  const int64_t Im = cfg_.moe_intermediate_size, A = T * k;
  void* s = stream_;
  StepProducts& mm = mm_;
  // Includes the wait for the host's plan (the layer's one sync).
  XT_RETURN_IF_ERROR(part("router_and_plan"));
  XT_RETURN_IF_ERROR(a->router_logits.Alloc(T * E, s));
  XT_RETURN_IF_ERROR(a->probs.Alloc(T * E, s));
  XT_RETURN_IF_ERROR(a->topk_w.Alloc(T * k, s));
  XT_RETURN_IF_ERROR(a->topk_idx.Alloc(T * k, s));
  XT_RETURN_IF_ERROR(mm.Linear(a->router_logits.get(), h2, P(o.router), T, H, E, /*fp32=*/true));
  if (o.router_logit_bias >= 0)  // GPT-OSS
    XT_RETURN_IF_ERROR(BiasForward(a->router_logits.get(), P(o.router_logit_bias), T, E, s));
  if (cfg_.router == RouterKind::kSigmoidGroup) {  // probs: the sigmoid scores
    XT_RETURN_IF_ERROR(RouterSigmoidForward(a->topk_idx.get(), a->topk_w.get(), a->probs.get(),
                                            a->router_logits.get(), P(o.router_bias), T, E, k,
                                            cfg_.n_group, cfg_.topk_group, cfg_.norm_topk_prob,
                                            float(cfg_.routed_scaling_factor), s));
  } else {
    XT_RETURN_IF_ERROR(RouterForward(a->topk_idx.get(), a->topk_w.get(), a->probs.get(),
                                     a->router_logits.get(), T, E, k, cfg_.norm_topk_prob, s));
  }
  if (count)
    XT_RETURN_IF_ERROR(
        MoeBalanceStats(count, prob_sum, a->probs.get(), a->topk_idx.get(), T, E, k, s));
  if (before_wait) XT_RETURN_IF_ERROR(before_wait());
  // The one host sync of the layer: the rows each expert gets.
  std::vector<int32_t> topk_idx(T * k);
  XT_RETURN_IF_ERROR(Check(cudaMemcpyAsync(topk_idx.data(), a->topk_idx.get(), T * k * 4,
                                           cudaMemcpyDeviceToHost, cudaStream_t(s)),
                           "top-k indices"));
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(cudaStream_t(s)), "top-k indices"));
  std::vector<int32_t> sorted(A), slot_of(A);
  a->offsets.resize(E + 1);
  ops::moe_plan(a->offsets.data(), sorted.data(), slot_of.data(), topk_idx.data(), T, E, k);
  if (per_expert) {
    per_expert->assign(E, 0);
    for (int32_t e : topk_idx) ++(*per_expert)[e];
  }
  XT_RETURN_IF_ERROR(a->sorted.Upload(sorted.data(), A, s));
  XT_RETURN_IF_ERROR(a->slot_of.Upload(slot_of.data(), A, s));
  XT_RETURN_IF_ERROR(a->ys.Alloc(A * H, s));
  XT_RETURN_IF_ERROR(part("moe_permute"));
  XT_RETURN_IF_ERROR(PermuteRows(a, h2));
  // The rows this rank's experts run (R of them): its own sorted ones, or under expert
  // parallelism what the group sends it for its experts (the counts travel first).
  int64_t R = A;
  const float* rows = a->xs.get();
  const int32_t* offsets = a->offsets.data();
  if (ep_) {
    a->ep = PlanExpertExchange(*ep_, a->offsets.data(), E);
    R = a->ep.num_received();
    offsets = a->ep.local_offsets.data();
    XT_ASSIGN_OR_RETURN(const EpRowMaps maps, MakeEpRowMaps(a->ep));
    XT_RETURN_IF_ERROR(a->received_of_grouped.Upload(maps.received_of_grouped.data(), R, s));
    XT_RETURN_IF_ERROR(a->grouped_of_received.Upload(maps.grouped_of_received.data(), R, s));
    XT_RETURN_IF_ERROR(part("expert_all_to_all"));
    if (rows16_) {
      XT_RETURN_IF_ERROR(a->xr16.Alloc(R * H, s));
      XT_RETURN_IF_ERROR(ExpertDispatchCuda(*ep_, a->ep, a->received_of_grouped.get(),
                                            a->xs16.get(), H, a->xr16.get(), s));
    } else {
      XT_RETURN_IF_ERROR(a->xr.Alloc(R * H, s));
      XT_RETURN_IF_ERROR(ExpertDispatchCuda(*ep_, a->ep, a->received_of_grouped.get(), a->xs.get(),
                                            H, a->xr.get(), s));
    }
    a->xs = F();  // the backward needs only the received rows
    a->xs16 = F16();
    rows = a->xr.get();
  }
  const uint16_t* rows_16 = ep_ ? a->xr16.get() : a->xs16.get();  // rows16: the rows
  XT_RETURN_IF_ERROR(a->gu.Alloc(R * 2 * Im, s));
  XT_RETURN_IF_ERROR(rows16_ ? a->act16.Alloc(R * Im, s) : a->act.Alloc(R * Im, s));
  XT_RETURN_IF_ERROR(part("experts_gemm"));
  XT_RETURN_IF_ERROR(
      mm.GroupedForward(a->gu.get(), rows, P(o.gate_up), offsets, R, H, 2 * Im, rows_16));
  if (o.gate_up_bias >= 0)  // GPT-OSS (rows16 is off: the bias gradients need fp32 rows)
    XT_RETURN_IF_ERROR(
        GroupedBiasForward(a->gu.get(), P(o.gate_up_bias), offsets, experts_, 2 * Im, s));
  if (o.gate_up_lora_a >= 0)
    XT_RETURN_IF_ERROR(ExpertLoraForward(a->gu.get(), rows, rows_16, P(o.gate_up_lora_a),
                                         P(o.gate_up_lora_b), offsets, R, H, 2 * Im));
  // The rows are permuted again in the backward (from h2, which the router's backward keeps
  // anyway: the same bits) instead of kept: every layer keeps one (A, H) buffer less, 4 GiB a
  // layer at 128k tokens of the benchmark's model in bf16, for one more gather (A rows of H)
  // in the backward. Under expert parallelism the received rows are kept: only another
  // exchange could bring them back.
  if (!ep_) {
    a->xs = F();
    a->xs16 = F16();
  }
  XT_RETURN_IF_ERROR(part("swiglu"));
  if (rows16_) {  // SwiGLU's output in bf16 (it feeds only bf16 products), its input kept so
    XT_RETURN_IF_ERROR(a->gu16.Alloc(R * 2 * Im, s));
    XT_RETURN_IF_ERROR(SwigluForward(a->act16.get(), a->gu16.get(), a->gu.get(), R, Im, s));
    a->gu = F();
  } else if (glu_) {
    XT_RETURN_IF_ERROR(GptOssGluForward(a->act.get(), a->gu.get(), R, Im, float(cfg_.glu_alpha),
                                        float(cfg_.glu_limit), s));
  } else {
    XT_RETURN_IF_ERROR(SwigluForward(a->act.get(), a->gu.get(), R, Im, s));
  }
  XT_RETURN_IF_ERROR(part("experts_gemm"));
  F yr;  // expert parallelism: the results of the received rows, before they go back
  if (ep_) XT_RETURN_IF_ERROR(yr.Alloc(R * H, s));
  XT_RETURN_IF_ERROR(mm.GroupedForward(ep_ ? yr.get() : a->ys.get(), a->act.get(), P(o.down),
                                       offsets, R, Im, H, a->act16.get()));
  if (o.down_bias >= 0)
    XT_RETURN_IF_ERROR(
        GroupedBiasForward(ep_ ? yr.get() : a->ys.get(), P(o.down_bias), offsets, experts_, H, s));
  if (o.down_lora_a >= 0)
    XT_RETURN_IF_ERROR(ExpertLoraForward(ep_ ? yr.get() : a->ys.get(), a->act.get(), a->act16.get(),
                                         P(o.down_lora_a), P(o.down_lora_b), offsets, R, Im, H));
  if (ep_) {
    XT_RETURN_IF_ERROR(part("expert_all_to_all"));
    XT_RETURN_IF_ERROR(
        ExpertCombineCuda(*ep_, a->ep, a->grouped_of_received.get(), yr.get(), H, a->ys.get(), s));
  }
  XT_RETURN_IF_ERROR(part("moe_combine"));
  if (rows16_) {
    XT_RETURN_IF_ERROR(a->ys16.Alloc(A * H, s));
    XT_RETURN_IF_ERROR(MoeCombineForward(y, a->ys16.get(), a->ys.get(), a->topk_w.get(),
                                         a->slot_of.get(), T, k, H, s));
    a->ys = F();
  } else {
    XT_RETURN_IF_ERROR(
        MoeCombineForward(y, a->ys.get(), a->topk_w.get(), a->slot_of.get(), T, k, H, s));
  }
  if (o.shared_gate_up < 0) return Status::OK();
  // y += the shared experts' SwiGLU MLP of h2 (as the CPU: its output, then the sum).
  const int64_t Is = cfg_.n_shared_experts * Im;
  XT_RETURN_IF_ERROR(part("shared_experts"));
  XT_RETURN_IF_ERROR(a->shared_gu.Alloc(T * 2 * Is, s));
  XT_RETURN_IF_ERROR(a->shared_act.Alloc(T * Is, s));
  XT_RETURN_IF_ERROR(mm.Linear(a->shared_gu.get(), h2, P(o.shared_gate_up), T, H, 2 * Is));
  XT_RETURN_IF_ERROR(SwigluForward(a->shared_act.get(), a->shared_gu.get(), T, Is, s));
  F ysh;
  XT_RETURN_IF_ERROR(ysh.Alloc(T * H, s));
  XT_RETURN_IF_ERROR(mm.Linear(ysh.get(), a->shared_act.get(), P(o.shared_down), T, Is, H));
  return AddInPlace(y, ysh.get(), T * H, s);
}

Status MoeBlock::AllocGrads(const float* dprob_row) {
  const int64_t T = T_, E = cfg_.num_experts;
  XT_RETURN_IF_ERROR(dtopk_w_.Alloc(T * cfg_.top_k, stream_));
  XT_RETURN_IF_ERROR(dlogits_.Alloc(T * E, stream_));
  if (!dprob_row) return Status::OK();
  XT_RETURN_IF_ERROR(dprobs_.Alloc(T * E, stream_));
  return BroadcastRow(dprobs_.get(), dprob_row, T, E, stream_);
}

Status MoeBlock::Backward(DeviceArray<float>* dh2, const float* dy, MoeActs* a, const float* h2,
                          const UnitParams& P, const UnitGrads& G, const LayerOffsets& o,
                          const Mark& mark) {
  const int64_t T = T_, H = cfg_.hidden_size, E = cfg_.num_experts, k = cfg_.top_k;
  const int64_t Im = cfg_.moe_intermediate_size, A = T * k;
  void* s = stream_;
  StepProducts& mm = mm_;
  // Each (A, .) buffer is freed right after its last use (stream-ordered, so the pool hands
  // the memory to the next allocation without a sync): at most three of them at once besides
  // the layer's activations (dgu, the permuted rows again and dxs at the gate/up product's
  // backward; at 128k tokens of the benchmark's model an (A, H) fp32 buffer is 8 GiB).
  // Under expert parallelism the output gradients travel to the rows' experts first and the
  // input gradients back after, as the rows did in the forward (R received rows).
  const int64_t R = ep_ ? a->ep.num_received() : A;
  const int32_t* offsets = ep_ ? a->ep.local_offsets.data() : a->offsets.data();
  F dys, dyr, dact, dgu, dxs;
  F16 dys16, dgu16;  // rows16: dys and dgu in bf16
  XT_RETURN_IF_ERROR(mark("moe_combine_bwd"));
  if (rows16_) {
    XT_RETURN_IF_ERROR(dys16.Alloc(A * H, s));
    XT_RETURN_IF_ERROR(MoeCombineBackward(dys16.get(), dtopk_w_.get(), dy, a->ys16.get(),
                                          a->topk_w.get(), a->slot_of.get(), T, k, H, s));
  } else {
    XT_RETURN_IF_ERROR(dys.Alloc(A * H, s));
    XT_RETURN_IF_ERROR(MoeCombineBackward(dys.get(), dtopk_w_.get(), dy, a->ys.get(),
                                          a->topk_w.get(), a->slot_of.get(), T, k, H, s));
  }
  a->ys = F();
  a->ys16 = F16();
  if (ep_ && rows16_) {
    F16 dyr16;
    XT_RETURN_IF_ERROR(dyr16.Alloc(R * H, s));
    XT_RETURN_IF_ERROR(mark("expert_all_to_all"));
    XT_RETURN_IF_ERROR(ExpertDispatchCuda(*ep_, a->ep, a->received_of_grouped.get(), dys16.get(), H,
                                          dyr16.get(), s));
    dys16 = std::move(dyr16);  // a swap: the sorted (A, H) gradients are in dyr16 now
  } else if (ep_) {
    XT_RETURN_IF_ERROR(dyr.Alloc(R * H, s));
    XT_RETURN_IF_ERROR(mark("expert_all_to_all"));
    XT_RETURN_IF_ERROR(
        ExpertDispatchCuda(*ep_, a->ep, a->received_of_grouped.get(), dys.get(), H, dyr.get(), s));
    dys = std::move(dyr);  // a swap: the sorted (A, H) gradients are in dyr now
    dyr = F();
  }
  XT_RETURN_IF_ERROR(dact.Alloc(R * Im, s));
  XT_RETURN_IF_ERROR(mark("experts_gemm_bwd"));
  XT_RETURN_IF_ERROR(mm.GroupedBackward(dact.get(), G(o.down), dys.get(), a->act.get(), P(o.down),
                                        offsets, R, Im, H, dys16.get(), a->act16.get()));
  XT_RETURN_IF_ERROR(ExpertBiasGrad(G(o.down_bias), dys.get(), offsets, H));
  if (o.down_lora_a >= 0)
    XT_RETURN_IF_ERROR(ExpertLoraBackward(dact.get(), G(o.down_lora_a), G(o.down_lora_b), dys.get(),
                                          dys16.get(), a->act.get(), a->act16.get(),
                                          P(o.down_lora_a), P(o.down_lora_b), offsets, R, Im, H));
  dys = F();
  dys16 = F16();
  a->act = F();
  a->act16 = F16();
  XT_RETURN_IF_ERROR(mark("swiglu_bwd"));
  if (rows16_) {
    XT_RETURN_IF_ERROR(dgu16.Alloc(R * 2 * Im, s));
    XT_RETURN_IF_ERROR(SwigluBackward(dgu16.get(), dact.get(), a->gu16.get(), R, Im, s));
  } else if (glu_) {
    XT_RETURN_IF_ERROR(dgu.Alloc(R * 2 * Im, s));
    XT_RETURN_IF_ERROR(GptOssGluBackward(dgu.get(), dact.get(), a->gu.get(), R, Im,
                                         float(cfg_.glu_alpha), float(cfg_.glu_limit), s));
  } else {
    XT_RETURN_IF_ERROR(dgu.Alloc(R * 2 * Im, s));
    XT_RETURN_IF_ERROR(SwigluBackward(dgu.get(), dact.get(), a->gu.get(), R, Im, s));
  }
  dact = F();
  a->gu = F();
  a->gu16 = F16();
  XT_RETURN_IF_ERROR(ExpertBiasGrad(G(o.gate_up_bias), dgu.get(), offsets, 2 * Im));
  if (!ep_) {  // dropped after the forward's product
    XT_RETURN_IF_ERROR(mark("moe_permute"));
    XT_RETURN_IF_ERROR(PermuteRows(a, h2));
  }
  XT_RETURN_IF_ERROR(dxs.Alloc(R * H, s));
  XT_RETURN_IF_ERROR(mark("experts_gemm_bwd"));
  XT_RETURN_IF_ERROR(mm.GroupedBackward(
      dxs.get(), G(o.gate_up), dgu.get(), ep_ ? a->xr.get() : a->xs.get(), P(o.gate_up), offsets, R,
      H, 2 * Im, dgu16.get(), ep_ ? a->xr16.get() : a->xs16.get()));
  if (o.gate_up_lora_a >= 0)
    XT_RETURN_IF_ERROR(ExpertLoraBackward(dxs.get(), G(o.gate_up_lora_a), G(o.gate_up_lora_b),
                                          dgu.get(), dgu16.get(), ep_ ? a->xr.get() : a->xs.get(),
                                          ep_ ? a->xr16.get() : a->xs16.get(), P(o.gate_up_lora_a),
                                          P(o.gate_up_lora_b), offsets, R, H, 2 * Im));
  dgu = F();
  dgu16 = F16();
  a->xs = F();
  a->xs16 = F16();
  a->xr = F();
  a->xr16 = F16();
  if (ep_) {  // the input gradients back to the ranks the rows came from: (A, H) sorted
    F dxr = std::move(dxs);
    XT_RETURN_IF_ERROR(dxs.Alloc(A * H, s));
    XT_RETURN_IF_ERROR(mark("expert_all_to_all"));
    XT_RETURN_IF_ERROR(
        ExpertCombineCuda(*ep_, a->ep, a->grouped_of_received.get(), dxr.get(), H, dxs.get(), s));
  }
  XT_RETURN_IF_ERROR(mark("moe_permute_bwd"));
  XT_RETURN_IF_ERROR(dh2->Zero(s));  // the permute's backward adds into it
  XT_RETURN_IF_ERROR(MoePermuteBackward(dh2->get(), dxs.get(), a->slot_of.get(), T, k, H, s));
  if (o.shared_gate_up >= 0) {  // dh2 += the shared experts' input gradient
    const int64_t Is = cfg_.n_shared_experts * Im;
    XT_RETURN_IF_ERROR(mark("shared_experts_bwd"));
    F dsh_act, dsh_gu;
    XT_RETURN_IF_ERROR(dsh_act.Alloc(T * Is, s));
    XT_RETURN_IF_ERROR(mm.LinearBackward(dsh_act.get(), G(o.shared_down), dy, a->shared_act.get(),
                                         P(o.shared_down), T, Is, H, false));
    a->shared_act = F();
    XT_RETURN_IF_ERROR(dsh_gu.Alloc(T * 2 * Is, s));
    XT_RETURN_IF_ERROR(SwigluBackward(dsh_gu.get(), dsh_act.get(), a->shared_gu.get(), T, Is, s));
    dsh_act = F();
    a->shared_gu = F();
    XT_RETURN_IF_ERROR(mm.LinearBackward(dh2->get(), G(o.shared_gate_up), dsh_gu.get(), h2,
                                         P(o.shared_gate_up), T, H, 2 * Is, true));
  }
  XT_RETURN_IF_ERROR(mark("router_bwd"));
  if (cfg_.router == RouterKind::kSigmoidGroup) {
    if (dprobs_.get())
      return Status::Error("the sigmoid router has no balancing loss to differentiate");
    XT_RETURN_IF_ERROR(RouterSigmoidBackward(dlogits_.get(), dtopk_w_.get(), a->probs.get(),
                                             a->topk_idx.get(), T, E, k, cfg_.norm_topk_prob,
                                             float(cfg_.routed_scaling_factor), s));
  } else {
    XT_RETURN_IF_ERROR(RouterBackward(dlogits_.get(), dtopk_w_.get(), dprobs_.get(), a->probs.get(),
                                      a->topk_idx.get(), T, E, k, cfg_.norm_topk_prob, s));
  }
  if (float* db = G(o.router_logit_bias)) {  // GPT-OSS
    XT_RETURN_IF_ERROR(writes_.Prepare(db, E, s));
    XT_RETURN_IF_ERROR(BiasBackward(db, dlogits_.get(), T, E, s));
  }
  return mm.LinearBackward(dh2->get(), G(o.router), dlogits_.get(), h2, P(o.router), T, H, E, true,
                           /*fp32=*/true);
}

}  // namespace xt::cuda
