// The attention half of one decoder layer in CudaModel's step (cuda/model_cuda.cc): the q/k/v
// projections of the normed input h1, the q/k norms, RoPE, packed causal attention and o_proj,
// forward and backward, and what it keeps from one to the other (or DeepSeek-V3's multi-head
// latent attention in their place). Every buffer is allocated and
// freed on the step's stream in the order plan/cuda_step.cc walks (tests/cuda/plan_cuda_test.cc
// holds the two together).
//
// Precision follows the step: its products go through StepProducts (fp32, or bf16 operands with
// fp32 sums); attention runs on the fp32 kernels or, with bf16_attention, on the tensor-core ones
// (attention_bf16.h), which read q, k, v and the output in bf16: those are then kept in bf16 only
// (q and k rounded after RoPE, v and the output after their producers), as the kernels and the
// o_proj product would round them. A LoRA run's adapters on the projections add their terms
// after each weight's product (and bias) as model/linear.cc does (cuda/lora_terms.h).
#pragma once

#include <cstdint>
#include <functional>

#include "xtuner/core/status.h"
#include "xtuner/cuda/attention_bf16.h"
#include "xtuner/cuda/device_array.h"
#include "xtuner/cuda/grad_writes.h"
#include "xtuner/cuda/lora_terms.h"
#include "xtuner/cuda/step_products.h"
#include "xtuner/model/batch.h"
#include "xtuner/model/config.h"
#include "xtuner/model/param_source.h"
#include "xtuner/model/params.h"

namespace xt::cuda {

// One layer's attention activations, from its forward to its backward. fp32, or with the bf16
// kernels q16, k16, v16 and attn16 in place of q, k, v and attn. q_pre, k_pre, q_rstd, k_rstd:
// the q/k norms' inputs and statistics (models with qk_norm). Multi-head latent attention
// (cuda/mla_block.cc): q, k and v (T, Hq, D) as the attention kernels take them (v padded with
// zeros to D), attn (T, Hq * v_head_dim) without the padding; qa, qa_n, qa_rstd the q_a
// projection, its norm and statistics (q_lora_rank > 0); kv_c, kv_n, kv_rstd likewise the
// latent kv.
struct AttentionActs {
  DeviceArray<float> q_pre, k_pre, q_rstd, k_rstd, q, k, v, attn, lse;
  DeviceArray<uint16_t> q16, k16, v16, attn16;
  DeviceArray<float> qa, qa_n, qa_rstd, kv_c, kv_n, kv_rstd;
  int64_t Bytes() const;
};

class AttentionBlock {
 public:
  // Marks the start of a profile phase (StepProfile), or does nothing.
  using Mark = std::function<Status(const char*)>;

  // One step's attention over `batch` (its cu_seqlens; T tokens); cos, sin: its RoPE tables
  // (T, head_dim / 2) on the device. The references and pointers outlive the object; work is
  // queued on `stream`.
  // noise: the batch's keys on the device where LoRA's dropout drops, else null (LoraTerms).
  AttentionBlock(const ModelConfig& cfg, StepProducts& mm, GradWrites& writes, const Batch& batch,
                 const float* cos, const float* sin, const uint64_t* noise, bool bf16_attention,
                 AttentionBf16Kernels kernels, void* stream);
  AttentionBlock(const AttentionBlock&) = delete;
  AttentionBlock& operator=(const AttentionBlock&) = delete;

  // Layer l's (offsets o) attention of h1 (T, H), or of h1_16 (its bf16 rounding; h1 then null):
  // out (T, H) allocated and assigned the o_proj output (without the residual); a holds what the
  // backward needs. P: the layer's unit, acquired. GPT-OSS: the projections' biases, the
  // layer's sinks and sliding window (on the fp32 kernels).
  Status Forward(AttentionActs* a, DeviceArray<float>* out, const float* h1, const uint16_t* h1_16,
                 const UnitParams& P, int64_t l, const LayerOffsets& o, const Mark& part);

  // The step's gradients of the attention's tensors, allocated once (at the backward's start)
  // and used by every layer's Backward.
  Status AllocGrads();

  // dh1 (T, H) assigned d loss / d h1 from dout (T, H) = d loss / d out and the forward's a, h1,
  // h1_16; the weights' gradients into G (written where blank, added otherwise: GradWrites).
  Status Backward(float* dh1, const float* dout, const AttentionActs& a, const float* h1,
                  const uint16_t* h1_16, const UnitParams& P, const UnitGrads& G, int64_t l,
                  const LayerOffsets& o, const Mark& mark);

 private:
  // out (T, n) += the bias at offset b of P, if the layer has one; its backward: the bias's
  // gradient in G += the column sums of dout.
  Status AddBias(float* out, const UnitParams& P, int64_t b, int64_t n);
  Status BiasGrad(const UnitGrads& G, int64_t b, const float* dout, int64_t n);
  // Layer l's sinks and window (GPT-OSS; none otherwise), the sinks on the device.
  ops::AttentionExtras Extras(const UnitParams& P, int64_t l, const LayerOffsets& o) const;

  // Forward and Backward of multi-head latent attention (DeepSeek-V3; cuda/mla_block.cc), on the
  // fp32 attention kernels: Transformer::MlaForward / MlaBackward step for step.
  Status MlaForward(AttentionActs* a, DeviceArray<float>* out, const float* h1,
                    const uint16_t* h1_16, const UnitParams& P, const LayerOffsets& o,
                    const Mark& part);
  Status MlaBackward(float* dh1, const float* dout, const AttentionActs& a, const float* h1,
                     const uint16_t* h1_16, const UnitParams& P, const UnitGrads& G,
                     const LayerOffsets& o, const Mark& mark);

  const ModelConfig& cfg_;
  StepProducts& mm_;
  GradWrites& writes_;
  const Batch& batch_;
  const float* const cos_;
  const float* const sin_;
  const bool bf16_attention_;
  const AttentionBf16Kernels kernels_;
  void* const stream_;
  LoraTerms lora_;  // the projections' LoRA adapters (none without model.lora)
  DeviceArray<float> dattn_, dq_, dk_, dv_, dq_pre_, dk_pre_;
};

}  // namespace xt::cuda
