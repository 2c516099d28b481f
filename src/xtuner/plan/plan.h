// The memory and FLOPs planner behind `xtuner plan`: what one rank of a training run holds, on
// paper, before buying the machines. Every figure follows what the engine allocates:
//   - state: the global fp32 slab of parameters (model/params.h), a gradient slab of the same
//     layout and two fp32 AdamW moments: 16 B per parameter, each element owned by one rank.
//     world = dp x ep; non-expert parameters are sharded over all `world` ranks; a rank holds
//     E/ep experts of every MoE layer, sharded over its dp group. Chunks are ceil-divided per
//     unit (the embedding, each layer's non-expert part, each layer's local experts, the head).
//   - working buffers: per layer, the gathered weights of one unit (its non-expert part and its
//     E/ep local experts) plus a gradient buffer of the same size; 2 x the largest unit. A tied
//     embedding stays gathered the whole step. None on one rank in fp32 (the slab is used in
//     place).
//   - expert all-to-all: two (T*k, H) buffers of exchanged rows for the MoE layer in flight.
//   - activations: Transformer::LayerActs (model/transformer_acts.h) per layer (recomputed layers
//   keep only their input),
//     peak over the backward of (bytes kept by the layers below + all of layer l), exactly as
//     LossInfo::activation_bytes measures it; routing is assumed balanced (T*k rows per rank).
//   - the residual stream and its gradient, the final norm, RoPE tables; the larger of the
//     chunked cross-entropy's chunk (loss/cross_entropy.h) and one layer's backward scratch.
// Not counted: the CUDA context, allocator fragmentation, NCCL's own buffers, routing imbalance.
// The CPU engine keeps every buffer in fp32 at either precision (bf16 only rounds the matmuls'
// inputs, in scratch). Device kCuda plans cuda::CudaModel instead (plan/cuda_step.h): its step's
// buffers walked in the order it allocates them, the bf16 copies of the weights in bf16 mode
// (on one GPU, of every unit that enters matmuls, kept between steps; over several, of the
// unit in use) and the GEMM workspace; the state and the gathered units as above.
#pragma once

#include <cstdint>
#include <string>

#include "xtuner/core/status.h"
#include "xtuner/model/config.h"

namespace xt {

enum class Precision { kFp32, kBf16 };
enum class Device { kCpu, kCuda };

// "fp32" | "bf16"; an error names the accepted values.
Result<Precision> ParsePrecision(const std::string& name);
const char* PrecisionName(Precision p);
// "cpu" | "cuda" (train.device); an error names the accepted values.
Result<Device> ParseDevice(const std::string& name);
const char* DeviceName(Device d);

struct PlanInputs {
  ModelConfig model;
  std::string model_name;        // shown in the report (e.g. the config path)
  int64_t seq = 0;               // tokens per packed row
  int64_t micro_batch_size = 1;  // rows per micro-batch: T = micro_batch_size * seq per rank
  int64_t world = 1;             // ranks; world = dp * ep
  int64_t ep = 1;                // expert-parallel group size; divides world and num_experts
  double recompute = 0;          // fraction of layers recomputed, as Transformer::SetRecompute
  Precision precision = Precision::kFp32;
  Device device = Device::kCpu;
  // cuda, bf16: attention on the bf16 tensor-core kernels where the head dim allows (a GPU of
  // compute capability 8.0 or newer); false: the fp32 kernels, which keep q, k, v and the output
  // in fp32.
  bool bf16_attention = true;
  // cuda, bf16, LoRA: the frozen weights that enter matmuls only held in bf16 only
  // (train.cuda_frozen_weights = "auto", plan/frozen_bf16.h); false: in fp32 too ("fp32").
  bool frozen_bf16_only = true;
  double gpu_memory_gib = 0;  // memory per rank in GiB (2^30 B); <= 0: no verdict
};

struct PlanReport {
  // Parameter counts (elements).
  int64_t total_params = 0;         // ParamLayout::total()
  int64_t expert_params = 0;        // routed experts of every MoE layer (and their adapters)
  int64_t active_params = 0;        // MoeActiveParams: what one token passes through
  int64_t matmul_params = 0;        // active less the input-embedding lookup (when untied)
  int64_t local_params = 0;         // elements of the global slab this rank owns (the largest rank)
  int64_t local_expert_params = 0;  // of which routed experts
  int64_t trainable_params = 0;     // what gets gradients and AdamW moments: all, or the LoRA
                                    // adapters (model.lora)
  int64_t local_trainable = 0;      // of which this rank owns

  // The mesh and the micro-batch.
  int64_t dp = 1, experts_per_rank = 0, tokens = 0, recompute_layers = 0, num_layers = 0;

  // Bytes per rank.
  int64_t weight_bytes = 0;  // fp32 parameters (master weights)
  // Of this rank's parameters, those held in bf16 only (frozen_bf16_only; elements: in the
  // bf16 copy on one GPU, in the shard on several; weight_bytes counts the latter).
  int64_t bf16_only_params = 0;
  int64_t grad_bytes = 0;       // fp32 gradients
  int64_t optimizer_bytes = 0;  // AdamW m and v, fp32
  int64_t largest_unit = 0;     // elements of the largest layer unit gathered at once
  int64_t working_bytes = 0;    // gathered weights + gradient buffer (+ resident tied embedding)
  int64_t copy_bytes = 0;       // kCuda, bf16: the weights' bf16 copies
  int64_t workspace_bytes = 0;  // kCuda: cuBLASLt's workspace
  int64_t all_to_all_bytes = 0;
  int64_t activation_bytes = 0;                // at the requested recompute
  int64_t activation_bytes_no_recompute = 0;   // recompute 0
  int64_t activation_bytes_all_recompute = 0;  // recompute 1
  int64_t stream_bytes = 0;                    // residual stream, final norm, RoPE, batch
  int64_t loss_chunk_rows = 0, loss_chunk_bytes = 0;
  int64_t backward_scratch_bytes = 0;  // one layer's activation gradients
  // kCuda: the step's buffers at their peak (activations included; stream, loss and backward
  // scratch are inside it, and stream_bytes and backward_scratch_bytes stay 0), and where.
  int64_t step_peak_bytes = 0, step_peak_activation_bytes = 0;
  std::string step_peak_at;
  int64_t total_bytes = 0;
  // kCuda: the host memory per rank beside the GPU: the fp32 parameters' shard it uploads and
  // syncs back, and AdamW's moments of what trains (their pages written at a sync only).
  int64_t host_bytes = 0;

  // Model FLOPs per token (metrics_flops.h): 6 * matmul_params, and with the causal attention
  // term for one document of `seq` tokens.
  double flops_per_token_6n = 0, flops_per_token = 0;

  bool has_verdict = false, fits = false;
  int64_t gpu_bytes = 0;
  // Where it does not fit: the least --recompute fraction that does (0: none does), with the
  // layers it recomputes and its total.
  double fits_with_recompute = 0;
  int64_t fits_with_recompute_layers = 0, fits_with_recompute_bytes = 0;
};

// Checks the inputs (seq, micro-batch, world, ep against the model) and plans one rank.
Result<PlanReport> Plan(const PlanInputs& in);

// What a run must allocate beyond the state already allocated (weights, gradients, AdamW moments
// and, on a GPU, the GEMM workspace) to run one micro-batch: the CPU's buffers, or the GPU
// step's peak with the bf16 copies of the weights and the gathered units.
int64_t StepBytes(const PlanReport& r);

// The trainer's check before its first step: whether the largest micro-batch (in.seq x
// in.micro_batch_size tokens, in.recompute) fits in `free_bytes` of memory left after the state
// (a GPU's free memory, or the host's available memory per rank). OK (and `summary`, if given,
// says what the plan needs and what is free), or an error that names what it needs and what to
// change: the smallest model.recompute that fits, or, when none does, a shorter data.max_length
// or train.micro_batch_size, or more GPUs or machines.
Status CheckStepFits(const PlanInputs& in, int64_t free_bytes, std::string* summary = nullptr);

// A human-readable report: the assumptions, parameter counts, memory per rank, FLOPs, verdict.
std::string FormatPlan(const PlanInputs& in, const PlanReport& r);
// One Markdown table row (and FormatPlanRowHeader the header) for docs/scaling.md.
std::string FormatPlanRowHeader();
std::string FormatPlanRow(const PlanInputs& in, const PlanReport& r);

}  // namespace xt
