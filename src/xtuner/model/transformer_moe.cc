// The dropless MoE block of a decoder layer: router (softmax, or DeepSeek-V3's sigmoid with
// group-limited choice), top-k, permute, grouped SwiGLU experts (GPT-OSS: with biases and its
// clamped GLU), weighted un-permute, plus the
// shared experts' dense SwiGLU where the model has them; under expert parallelism the permuted rows
// visit the ranks that hold their experts (dist/expert_parallel.h) between the permute and the
// un-permute.
#include <algorithm>

#include "xtuner/model/swiglu_mlp.h"
#include "xtuner/model/transformer.h"
#include "xtuner/model/transformer_acts.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

// The routed experts' adapters (LayerOffsets::gate_up_lora_a, ...): for the R rows x (R, in) of
// `experts` experts (offsets), out (R, O) += scale * (x A_e^T) B_e^T, A (experts, r, in) and
// B (experts, O, r) stacked; z (R, r) = x A_e^T is recomputed in the backward.
void ExpertLoraForward(float* out, const float* x, const float* A, const float* B,
                       const int32_t* offsets, int64_t experts, int64_t in, int64_t O, int64_t r,
                       float scale) {
  const int64_t R = offsets[experts];
  vector<float> z(R * r), y(R * O);
  ops::grouped_linear_forward(z.data(), x, A, offsets, experts, in, r);
  ops::grouped_linear_forward(y.data(), z.data(), B, offsets, experts, r, O);
  ops::scale_columns(out, O, 0, y.data(), O, 0, R, O, scale, /*add=*/true);
}

// Its backward, dout (R, O) the output's gradient: dB += s dout^T z, dz = s dout B, dA += dz^T x,
// dx (R, in) += dz A.
void ExpertLoraBackward(float* dx, float* dA, float* dB, const float* dout, const float* x,
                        const float* A, const float* B, const int32_t* offsets, int64_t experts,
                        int64_t in, int64_t O, int64_t r, float scale) {
  const int64_t R = offsets[experts];
  vector<float> z(R * r), dy(R * O), dz(R * r), dxa(R * in);
  ops::grouped_linear_forward(z.data(), x, A, offsets, experts, in, r);
  ops::scale_columns(dy.data(), O, 0, dout, O, 0, R, O, scale, /*add=*/false);
  ops::grouped_linear_backward(dz.data(), dB, dy.data(), z.data(), B, offsets, experts, r, O);
  ops::grouped_linear_backward(dxa.data(), dA, dz.data(), x, A, offsets, experts, in, r);
  for (int64_t i = 0; i < R * in; ++i) dx[i] += dxa[i];
}

}  // namespace

void Transformer::MoeForward(int64_t l, const UnitParams& P, int64_t T, float* y, LayerActs* a) {
  const LayerOffsets& o = layout_.layers[l];
  const int64_t H = cfg_.hidden_size, E = cfg_.num_experts, k = cfg_.top_k;
  const int64_t I = cfg_.moe_intermediate_size, A = T * k;
  a->router_logits.resize(T * E);
  a->probs.resize(T * E);
  a->topk_w.resize(T * k);
  a->topk_idx.resize(T * k);
  {
    ops::Fp32MatmulScope fp32;  // the router in fp32 in every mode
    ops::linear_forward(a->router_logits.data(), a->h2.data(), P(o.router), T, H, E);
  }
  if (o.router_logit_bias >= 0)
    ops::bias_forward(a->router_logits.data(), P(o.router_logit_bias), T, E);
  if (cfg_.router == RouterKind::kSigmoidGroup) {  // probs: the sigmoid scores
    ops::router_sigmoid_forward(a->topk_idx.data(), a->topk_w.data(), a->probs.data(),
                                a->router_logits.data(), P(o.router_bias), T, E, k, cfg_.n_group,
                                cfg_.topk_group, cfg_.norm_topk_prob,
                                float(cfg_.routed_scaling_factor));
  } else {
    ops::router_forward(a->topk_idx.data(), a->topk_w.data(), a->probs.data(),
                        a->router_logits.data(), T, E, k, cfg_.norm_topk_prob);
  }
  a->offsets.resize(E + 1);
  a->sorted.resize(A);
  a->slot_of.resize(A);
  ops::moe_plan(a->offsets.data(), a->sorted.data(), a->slot_of.data(), a->topk_idx.data(), T, E,
                k);
  a->xs.resize(A * H);
  a->ys.resize(A * H);
  ops::moe_permute(a->xs.data(), a->h2.data(), a->sorted.data(), A, k, H);

  // The rows this rank's experts run: its own (sorted), or what the ep group sent it.
  const float* rows = a->xs.data();
  const int32_t* offsets = a->offsets.data();
  int64_t R = A, experts = E;
  vector<float> yr;
  if (ep_) {
    a->ep = PlanExpertExchange(*ep_, a->offsets.data(), E);
    R = a->ep.num_received();
    experts = layout_.expert_count;
    a->xr.resize(R * H);
    ExpertDispatch(*ep_, a->ep, a->xs.data(), H, a->xr.data());
    vector<float>().swap(a->xs);  // the backward needs only the received rows
    rows = a->xr.data();
    offsets = a->ep.local_offsets.data();
    yr.resize(R * H);
  }
  a->gu.resize(R * 2 * I);
  a->act.resize(R * I);
  float* out = ep_ ? yr.data() : a->ys.data();
  ops::grouped_linear_forward(a->gu.data(), rows, P(o.gate_up), offsets, experts, H, 2 * I);
  if (o.gate_up_bias >= 0)
    ops::grouped_bias_forward(a->gu.data(), P(o.gate_up_bias), offsets, experts, 2 * I);
  const int64_t r = cfg_.lora.rank;
  const float s = float(cfg_.lora.scale());
  if (o.gate_up_lora_a >= 0)
    ExpertLoraForward(a->gu.data(), rows, P(o.gate_up_lora_a), P(o.gate_up_lora_b), offsets,
                      experts, H, 2 * I, r, s);
  if (cfg_.expert_act == ExpertActivation::kGptOssGlu) {
    ops::gpt_oss_glu_forward(a->act.data(), a->gu.data(), R, I, float(cfg_.glu_alpha),
                             float(cfg_.glu_limit));
  } else {
    ops::swiglu_forward(a->act.data(), a->gu.data(), R, I);
  }
  ops::grouped_linear_forward(out, a->act.data(), P(o.down), offsets, experts, I, H);
  if (o.down_bias >= 0) ops::grouped_bias_forward(out, P(o.down_bias), offsets, experts, H);
  if (o.down_lora_a >= 0)
    ExpertLoraForward(out, a->act.data(), P(o.down_lora_a), P(o.down_lora_b), offsets, experts, I,
                      H, r, s);
  if (ep_) ExpertCombine(*ep_, a->ep, yr.data(), H, a->ys.data());
  ops::moe_combine_forward(y, a->ys.data(), a->topk_w.data(), a->slot_of.data(), T, k, H);
  if (o.shared_gate_up >= 0) {  // y += the shared experts' SwiGLU MLP of h2
    vector<float> ysh(T * H);
    SwigluMlpForward(ysh.data(), &a->shared_gu, &a->shared_act, a->h2.data(),
                     Lin(l, P, nullptr, o.shared_gate_up), Lin(l, P, nullptr, o.shared_down), T, H,
                     cfg_.n_shared_experts * I);
    for (int64_t i = 0; i < T * H; ++i) y[i] += ysh[i];
  }
}

void Transformer::MoeBackward(int64_t l, const UnitParams& P, const UnitGrads& G, int64_t T,
                              const float* dy, float* dh2, LayerActs* a, const double* dprob_e) {
  const LayerOffsets& o = layout_.layers[l];
  const int64_t H = cfg_.hidden_size, E = cfg_.num_experts, k = cfg_.top_k;
  const int64_t I = cfg_.moe_intermediate_size, A = T * k;
  vector<float> dys(A * H), dtopk_w(T * k);
  ops::moe_combine_backward(dys.data(), dtopk_w.data(), dy, a->ys.data(), a->topk_w.data(),
                            a->slot_of.data(), T, k, H);
  const float* rows = a->xs.data();
  const int32_t* offsets = a->offsets.data();
  int64_t R = A, experts = E;
  vector<float> dyr;  // expert parallelism: the output gradients of the rows this rank ran
  if (ep_) {
    R = a->ep.num_received();
    experts = layout_.expert_count;
    rows = a->xr.data();
    offsets = a->ep.local_offsets.data();
    dyr.resize(R * H);
    ExpertDispatch(*ep_, a->ep, dys.data(), H, dyr.data());
  }
  vector<float> dact(R * I), dgu(R * 2 * I), dxr(R * H);
  const float* dout = ep_ ? dyr.data() : dys.data();
  ops::grouped_linear_backward(dact.data(), G(o.down), dout, a->act.data(), P(o.down), offsets,
                               experts, I, H);
  if (float* db = G(o.down_bias)) ops::grouped_bias_backward(db, dout, offsets, experts, H);
  const int64_t r = cfg_.lora.rank;
  const float s = float(cfg_.lora.scale());
  if (o.down_lora_a >= 0)
    ExpertLoraBackward(dact.data(), G(o.down_lora_a), G(o.down_lora_b), dout, a->act.data(),
                       P(o.down_lora_a), P(o.down_lora_b), offsets, experts, I, H, r, s);
  if (cfg_.expert_act == ExpertActivation::kGptOssGlu) {
    ops::gpt_oss_glu_backward(dgu.data(), dact.data(), a->gu.data(), R, I, float(cfg_.glu_alpha),
                              float(cfg_.glu_limit));
  } else {
    ops::swiglu_backward(dgu.data(), dact.data(), a->gu.data(), R, I);
  }
  if (float* db = G(o.gate_up_bias))
    ops::grouped_bias_backward(db, dgu.data(), offsets, experts, 2 * I);
  ops::grouped_linear_backward(dxr.data(), G(o.gate_up), dgu.data(), rows, P(o.gate_up), offsets,
                               experts, H, 2 * I);
  if (o.gate_up_lora_a >= 0)
    ExpertLoraBackward(dxr.data(), G(o.gate_up_lora_a), G(o.gate_up_lora_b), dgu.data(), rows,
                       P(o.gate_up_lora_a), P(o.gate_up_lora_b), offsets, experts, H, 2 * I, r, s);
  vector<float> dxs_ep;
  const float* dxs = dxr.data();
  if (ep_) {
    dxs_ep.resize(A * H);
    ExpertCombine(*ep_, a->ep, dxr.data(), H, dxs_ep.data());
    dxs = dxs_ep.data();
  }
  ops::moe_permute_backward(dh2, dxs, a->slot_of.data(), T, k, H);  // dh2 += ...
  if (o.shared_gate_up >= 0)
    SwigluMlpBackward(dh2, dy, a->h2.data(), a->shared_gu, a->shared_act,
                      Lin(l, P, &G, o.shared_gate_up), Lin(l, P, &G, o.shared_down), T, H,
                      cfg_.n_shared_experts * I, /*accumulate_dx=*/true);
  vector<float> dprobs, dlogits(T * E);
  if (dprob_e) {
    dprobs.resize(T * E);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e) dprobs[t * E + e] = float(dprob_e[e]);
  }
  if (cfg_.router == RouterKind::kSigmoidGroup) {
    XT_CHECK(dprob_e == nullptr, "the sigmoid router has no balancing loss to differentiate");
    ops::router_sigmoid_backward(dlogits.data(), dtopk_w.data(), a->probs.data(),
                                 a->topk_idx.data(), T, E, k, cfg_.norm_topk_prob,
                                 float(cfg_.routed_scaling_factor));
  } else {
    ops::router_backward(dlogits.data(), dtopk_w.data(), dprob_e ? dprobs.data() : nullptr,
                         a->probs.data(), a->topk_idx.data(), T, E, k, cfg_.norm_topk_prob);
  }
  if (float* db = G(o.router_logit_bias)) ops::bias_backward(db, dlogits.data(), T, E);
  ops::Fp32MatmulScope fp32;
  ops::linear_backward(dh2, G(o.router), dlogits.data(), a->h2.data(), P(o.router), T, H, E,
                       /*accumulate_din=*/true);
}

}  // namespace xt
