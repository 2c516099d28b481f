// The dropless MoE half of one decoder layer in CudaModel's step (cuda/model_cuda.cc): the router
// in fp32 and its top-k, the routing plan on the host (the layer's one wait: the rows each expert
// gets), the permute, the experts' grouped products with SwiGLU between them (under expert
// parallelism the rows travel to the ranks of their experts and back), and the weighted
// combine, plus the shared experts' dense SwiGLU MLP where the model has them (GPT-OSS: the
// router's logit bias, the experts' biases and its clamped GLU); forward and
// backward, and what it keeps from one to the other. The router is a softmax, or DeepSeek-V3's
// sigmoid with its group-limited choice over scores + e_score_correction_bias. Every buffer is
// allocated and freed on the step's stream in the order plan/cuda_step.cc walks
// (tests/cuda/plan_cuda_test.cc holds the two together).
//
// rows16 (bf16 mode, plan/cuda_step.h's PlansRows16: under expert parallelism only with an even
// hidden size, the rows travelling as float pairs; not GPT-OSS's experts): the experts' input rows,
// SwiGLU's output and both products' output gradients are held in bf16 as the products round them,
// and SwiGLU's input and the experts' outputs are kept for the backward in bf16 (the forward uses
// them in fp32). The input rows are not kept: the backward permutes them again from h2 (under
// expert parallelism the received rows are kept).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/cuda/device_array.h"
#include "xtuner/cuda/grad_writes.h"
#include "xtuner/cuda/step_products.h"
#include "xtuner/dist/comm.h"
#include "xtuner/dist/expert_parallel.h"
#include "xtuner/model/config.h"
#include "xtuner/model/param_source.h"
#include "xtuner/model/params.h"

namespace xt::cuda {

// One MoE layer's buffers from its forward to its backward (A = T k routed rows; R the rows this
// rank's experts run: A, or what the exchange brought under expert parallelism).
struct MoeActs {
  DeviceArray<float> router_logits, probs, topk_w;  // (T, E), (T, E), (T, k)
  DeviceArray<int32_t> topk_idx, sorted, slot_of;   // (T, k), (A), (A)
  std::vector<int32_t> offsets;  // (E + 1) on the host: the grouped products' row ranges
  // The experts' input rows (A, H) in expert order (xs, or xs16 in bf16), their SwiGLU input
  // (R, 2I: gu, or gu16 kept in bf16) and output (R, I: act or act16), their outputs (A, H: ys,
  // or ys16 kept in bf16).
  DeviceArray<float> xs, gu, act, ys;
  DeviceArray<uint16_t> xs16, gu16, act16, ys16;
  // Expert parallelism: the exchange (host), its row maps (device) and the received rows (R, H)
  // by local expert (xr, or xr16), which the experts ran.
  EpExchange ep;
  DeviceArray<int32_t> received_of_grouped, grouped_of_received;
  DeviceArray<float> xr;
  DeviceArray<uint16_t> xr16;
  // The shared experts' SwiGLU input (T, 2 Is) and output (T, Is), fp32 (DeepSeek-V3).
  DeviceArray<float> shared_gu, shared_act;
  int64_t Bytes() const;
};

class MoeBlock {
 public:
  // Marks the start of a profile phase (StepProfile), or does nothing.
  using Mark = std::function<Status(const char*)>;

  // One step's MoE layers over T tokens. ep: the expert-parallel group (null: this rank runs every
  // expert). The references and pointers outlive the object; work is queued on `stream`.
  // experts: those this rank runs (the layout's expert_count). rows16 needs SwiGLU experts
  // without biases (GPT-OSS's bias gradients read fp32 rows).
  MoeBlock(const ModelConfig& cfg, StepProducts& mm, GradWrites& writes, Comm* ep, int64_t experts,
           bool rows16, int64_t T, void* stream);
  MoeBlock(const MoeBlock&) = delete;
  MoeBlock& operator=(const MoeBlock&) = delete;

  // Layer o's experts on its normed input h2 (T, H): y (T, H) assigned the top-k outputs,
  // combined by their weights (no residual). count, prob_sum (E doubles on the device): the
  // balancing statistics, added to; null for a layer recomputed in the backward (counted once).
  // before_wait (may be empty): called once they are queued, right before the layer's wait.
  // per_expert (may be null): the rows each expert got (E, host). P: the layer's unit.
  Status Forward(MoeActs* a, float* y, const float* h2, const UnitParams& P, const LayerOffsets& o,
                 double* count, double* prob_sum, const std::function<Status()>& before_wait,
                 std::vector<int64_t>* per_expert, const Mark& part);

  // The step's MoE gradients, allocated once (at the backward's start): the top-k weights' and
  // the router logits', and, where the balancing loss has a gradient (dprob_row, E on the device;
  // null: none), that row for every token.
  Status AllocGrads(const float* dprob_row);

  // dh2 (T, H) assigned d loss / d h2 from dy (T, H) = d loss / d y, the forward's a and h2; the
  // experts' and the router's weight gradients into G. a's buffers are freed as they are used.
  Status Backward(DeviceArray<float>* dh2, const float* dy, MoeActs* a, const float* h2,
                  const UnitParams& P, const UnitGrads& G, const LayerOffsets& o, const Mark& mark);

 private:
  // a's input rows (A, H) again: h2's rows in expert order (a->sorted), into xs or xs16.
  Status PermuteRows(MoeActs* a, const float* h2);
  // db (experts, n; null: no bias) += each expert's column sums of its rows of dout.
  Status ExpertBiasGrad(float* db, const float* dout, const int32_t* offsets, int64_t n);
  // The routed experts' adapters (LayerOffsets::gate_up_lora_a, ...), as the CPU model's: over
  // the R rows x (R, in) (x16: in bf16, x then unread), out (R, O) += scale * (x A_e^T) B_e^T,
  // A (experts, r, in), B (experts, O, r) stacked.
  Status ExpertLoraForward(float* out, const float* x, const uint16_t* x16, const float* A,
                           const float* B, const int32_t* offsets, int64_t R, int64_t in,
                           int64_t O);
  // Its backward, dout (R, O) the output's gradient (dout16: in bf16, dout then unread): dA, dB
  // take their gradients, dx (R, in) += dz A with dz = scale * dout B_e.
  Status ExpertLoraBackward(float* dx, float* dA, float* dB, const float* dout,
                            const uint16_t* dout16, const float* x, const uint16_t* x16,
                            const float* A, const float* B, const int32_t* offsets, int64_t R,
                            int64_t in, int64_t O);

  const ModelConfig& cfg_;
  StepProducts& mm_;
  GradWrites& writes_;
  Comm* const ep_;
  const bool rows16_;
  const bool glu_;         // GPT-OSS's clamped GLU in place of SwiGLU
  const int64_t experts_;  // the experts this rank runs
  const int64_t T_;
  void* const stream_;
  DeviceArray<float> dtopk_w_, dlogits_, dprobs_;
};

}  // namespace xt::cuda
