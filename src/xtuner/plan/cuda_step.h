// The device memory of one cuda::CudaModel::ForwardBackward, on paper: the buffers its Run
// (cuda/model_cuda.cc, its attention and MoE halves in cuda/attention_block.cc and
// cuda/moe_block.cc, its products' scratch in cuda/step_products.cc) allocates and frees, walked
// in the same order, with the high-water mark of everything live at once. `xtuner plan --device
// cuda` adds the parameter state, the bf16 copies of the weights and the GEMM workspace around
// it.
//
// What the GPU holds differs from the CPU's buffers (plan.cc): activations stay fp32 except, in
// bf16 mode, the q/k/v projections' input, a dense layer's MLP input, SwiGLU's input and output,
// and the experts' rows and outputs (under expert parallelism too, where the hidden size is even:
// the rows travel as bf16 pairs), and with the bf16 attention kernels their q, k, v and output;
// the backward's per-layer gradients are allocated once for the step; the bf16 operands of
// products whose inputs are fp32 are rounded into two scratch buffers that grow to the largest
// operand; the bf16 loss groups 4 chunks per lm_head gradient product.
// Routing is taken as balanced (T*k rows, and R = T*k received under expert parallelism);
// every token carries a loss. Tiny items (attention's block lists, the grouped GEMM's tile list,
// the embedding backward's sort) are not counted. tests/cuda/plan_cuda_test.cc compares the
// result with the CUDA emulator's count of every allocation.
#pragma once

#include <cstdint>
#include <string>

#include "xtuner/model/config.h"

namespace xt {

struct CudaStepInputs {
  ModelConfig model;
  int64_t tokens = 0;            // T: the micro-batch's tokens
  int64_t recompute_layers = 0;  // the first this many layers are recomputed
  bool bf16 = false;             // bf16 matmuls (train.precision = "bf16")
  bool bf16_attention = true;    // with bf16: attention on the bf16 kernels where D allows
  bool expert_parallel = false;  // parallel.ep > 1: rows travel to their experts and back
  int64_t loss_chunk_rows = 0;   // the fused lm_head + loss chunk (<= 0: the GPU's default)
};

struct CudaStepMemory {
  // What the backward starts from, as the engine's LossInfo::activation_bytes: the residual
  // stream's L + 1 (T, H) buffers, the layers kept, and the largest recomputed layer's buffers.
  int64_t activation_bytes = 0;
  // The step's allocations at their peak: the pool's high-water mark over one ForwardBackward
  // (not counting the weights' bf16 copies, the state, or the GEMM workspace).
  int64_t peak_bytes = 0;
  int64_t peak_activation_bytes = 0;  // of which activations: the layers' and the stream's
  std::string peak_at;          // where the peak falls: "the head", "the backward of layer 3"...
  int64_t loss_bytes = 0;       // the chunked lm_head + cross-entropy's scratch
  int64_t operand_bytes = 0;    // bf16 mode: the two operand scratch buffers at their largest
  int64_t loss_chunk_rows = 0;  // the chunk used
};

// Whether the step runs attention on the bf16 kernels, as cuda::CudaModel decides: bf16 mode,
// kernels allowed (bf16_attention: a GPU with bf16 tensor cores), and a head dim they take
// (cuda::AttentionBf16Supports: a multiple of 16 up to 128), and neither multi-head latent
// attention nor sinks or sliding windows (those stay on the fp32 kernels).
bool PlansBf16Attention(const ModelConfig& c, bool bf16, bool bf16_attention);
// Whether the experts' rows are held in bf16 (bf16 mode), as cuda::CudaModel decides: under
// expert parallelism only with an even hidden size (they travel as float pairs), and not for
// GPT-OSS's experts (their biases' gradients read the rows in fp32).
bool PlansRows16(const ModelConfig& c, bool bf16, bool expert_parallel);

// Requires a loaded config (layer_is_moe set) and T > 0.
CudaStepMemory PlanCudaStep(const CudaStepInputs& in);

}  // namespace xt
