// The derived numbers of a step's metrics: active parameters, model FLOPs, MFU and the expert
// load-balance violation. Plain numbers in, plain numbers out: nothing here knows the model
// config, so the trainer (or a benchmark) decides what to pass.
//
// FLOPs convention (model FLOPs, as PaLM defines MFU, and as Megatron-LM's
// num_floating_point_operations counts them):
//
//   step FLOPs = 6 * N * tokens  +  12 * L * d_attn * sum_i (n_i^2) * c
//
// - 6 * N per token: every weight of a matmul costs 2 FLOPs (multiply-add) in the forward and 4
//   in the backward (input and weight gradients). N = the matmul parameters a token passes
//   through: the active parameters (MoeActiveParams) including the lm_head and the router, minus
//   the input-embedding table when it is not tied to the lm_head (a lookup multiplies nothing).
// - Attention: each (query, key) pair costs 2 * d_attn FLOPs for Q K^T and 2 * d_attn for P V in
//   the forward, three times that forward + backward: 12 * d_attn per pair per layer, with
//   d_attn = num_attention_heads * head_dim (query heads: GQA shares K/V but not this work; for
//   MLA pass heads * (qk_head_dim + v_head_dim) / 2). Packed documents never attend to each
//   other, so the pairs are summed per document: a document of n_i tokens has n_i^2 pairs
//   without a mask. Causal attention (ours) visits half of them: c = 1/2, as Megatron-LM counts
//   it ("causal mask: only half of the mask is non-zero") and FlashAttention's benchmarks do;
//   the exact n(n+1)/2 differs by n/2, which is negligible. c = 1 gives PaLM's 6N + 12 L d S per
//   token for a single sequence of length S.
// - A sliding window of w keys (GPT-OSS's sliding layers) leaves a document of n > w tokens
//   about (n^2 - (n - w)^2) / 2 causal pairs: such layers count WindowedLenSq(n, w) in place of
//   n^2.
// - Not counted: recomputation (activation checkpointing makes the hardware do about 8N per
//   token; MFU ignores it by definition, HFU would count it), norms, softmax, the optimizer.
#pragma once

#include <cstdint>
#include <vector>

namespace xt {

// Parameters a token passes through in an MoE model: the total minus, in every MoE layer, the
// routed experts it is not sent to:
//   active = total - num_moe_layers * (num_experts - top_k) * params_per_expert
// params_per_expert counts one routed expert (gate, up and down: 3 * hidden * moe_intermediate
// for SwiGLU). Shared experts, the router, attention, norms and embeddings are always active:
// leave them in the total. A dense model (num_moe_layers = 0) gives the total. Example:
// Qwen3-30B-A3B, 30.53B total, 48 layers x (128 - 8) experts x 4.72M = 3.35B active.
// Requires 0 <= top_k <= num_experts and non-negative inputs (XT_CHECK).
int64_t MoeActiveParams(int64_t total_params, int64_t num_moe_layers, int64_t num_experts,
                        int64_t top_k, int64_t params_per_expert);

// Model FLOPs of one training step (forward + backward) over `tokens` tokens whose documents have
// lengths n_i with sum_i n_i^2 = sum_doc_len_sq (packed rows: one entry per document, all ranks
// and micro-batches of the step). causal = true halves the attention term (see above).
// windowed_layers of the num_layers attend within a sliding window: their attention term takes
// sum_windowed_len_sq (the sum of WindowedLenSq over the documents) in place of sum_doc_len_sq.
double TrainingStepFlops(int64_t matmul_params, int64_t tokens, int64_t num_layers,
                         int64_t attn_dim, double sum_doc_len_sq, bool causal = true,
                         int64_t windowed_layers = 0, double sum_windowed_len_sq = 0);

// The squared length a document of n tokens counts for under a sliding window of `window` keys:
// n^2 - (n - window)^2 when n > window > 0, else n^2.
double WindowedLenSq(int64_t n, int64_t window);

// The same for one document of seq_len tokens, per token:
//   6 * N + 12 * L * d_attn * seq_len * (causal ? 1/2 : 1).
double TrainingFlopsPerToken(int64_t matmul_params, int64_t num_layers, int64_t attn_dim,
                             int64_t seq_len, bool causal = true, int64_t windowed_layers = 0,
                             int64_t window = 0);

// Achieved FLOP/s per device: flops / seconds / num_devices. NaN when seconds <= 0 or
// num_devices < 1.
double AchievedFlopsPerDevice(double flops, double seconds, int64_t num_devices);

// Model FLOPs utilisation: achieved FLOP/s per device / peak FLOP/s of one device (e.g. 989.5e12
// for an H100/H200 SXM in dense bf16). A fraction, usually in [0, 1]. NaN when the peak is
// unknown (<= 0) or the achieved rate is NaN.
double Mfu(double achieved_flops_per_s_per_device, double peak_flops_per_s_per_device);

// Expert load-balance violation of one MoE layer, from the number of tokens routed to each of
// its experts in one step (summed over ranks and micro-batches):
//   vio = max_e count_e / mean_e count_e - 1   (= (max - mean) / mean)
// 0 when perfectly balanced, E - 1 when every token goes to one expert (top-1). A layer that
// received no token has violation 0. Requires at least one expert (XT_CHECK).
double ExpertViolation(const std::vector<int64_t>& tokens_per_expert);

// XTuner v1's "maxvio", the number in StepMetrics::max_expert_violation: the MEAN over MoE layers
// of ExpertViolation(layer) (XTuner computes maxvio_all_layers = (max - mean) / mean per layer
// and logs maxvio_all_layers.mean()). 0 for no layers.
double MaxExpertViolation(const std::vector<std::vector<int64_t>>& tokens_per_expert);

// The worst layer instead: max over MoE layers of ExpertViolation(layer). 0 for no layers.
double WorstLayerExpertViolation(const std::vector<std::vector<int64_t>>& tokens_per_expert);

}  // namespace xt
