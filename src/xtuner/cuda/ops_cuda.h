// CUDA twins of ops/ops.h: the same contracts, on device pointers, queued on `stream` (a
// cudaStream_t; null: the default stream). Each returns the launch's error, if any.
#pragma once

#include <cstdint>

#include "xtuner/core/status.h"
#include "xtuner/ops/ops.h"
#include "xtuner/optim/adamw_scalars.h"

namespace xt::cuda {

// out (N, C) = in * rstd * w, rstd (N) = 1 / sqrt(mean(in^2) + eps): ops::rmsnorm_forward.
// One warp per row; the sum of squares in double, as the CPU twin's, in another order: they
// agree to about 1e-6 relative. The uint16_t overload writes out rounded to bf16 (nearest even,
// what ToBf16 makes of the fp32 out), for an output that only feeds bf16 products.
Status RmsnormForward(float* out, float* rstd, const float* in, const float* w, int64_t N,
                      int64_t C, float eps, void* stream = nullptr);
Status RmsnormForward(uint16_t* out, float* rstd, const float* in, const float* w, int64_t N,
                      int64_t C, float eps, void* stream = nullptr);

// Every op below keeps the contract of its ops:: twin (ops/ops.h) on device pointers. Sizes are
// checked (negative: error); zero sizes launch nothing and return OK. Ops that need scratch
// memory take it from the stream-ordered allocator (cudaMallocAsync on `stream`) and free it
// the same way. No atomics anywhere: every result is a function of the inputs alone.

// ---------------------------------------------------------------- RMSNorm backward
// ops::rmsnorm_backward: din (N, C) assigned (or added when accumulate_din), dw (C) +=.
// din: one block per row, the row's dot in double. dw: per column, the rows summed in double in
// fixed row chunks (their number depends on N and C only), then the chunks summed in order by a
// second kernel, and float(sum) added to dw: deterministic, no atomics. N == 0 leaves dw as is;
// dw null (a frozen weight): din only.
Status RmsnormBackward(float* din, float* dw, const float* dout, const float* in, const float* w,
                       const float* rstd, int64_t N, int64_t C, bool accumulate_din = false,
                       void* stream = nullptr);

// ---------------------------------------------------------------- SwiGLU
// ops::swiglu_forward: h (N, 2I) = [gate | up] -> out (N, I) = silu(gate) * up. exp in double,
// its argument clamped at 88 as the CPU's Exp saturates; the CPU's Exp is a polynomial, so the
// two agree to about 1e-6 relative, not bit for bit.
Status SwigluForward(float* out, const float* h, int64_t N, int64_t I, void* stream = nullptr);
// The same values rounded to bf16 (uint16_t bits of __nv_bfloat16, nearest even: what ToBf16
// makes of the fp32 output), for an output that only feeds bf16 products. So for the uint16_t
// overloads of SwigluBackward, MoePermute and MoeCombineBackward below.
Status SwigluForward(uint16_t* out, const float* h, int64_t N, int64_t I, void* stream = nullptr);
// ops::swiglu_backward: dh (N, 2I) assigned from dout (N, I).
Status SwigluBackward(float* dh, const float* dout, const float* h, int64_t N, int64_t I,
                      void* stream = nullptr);
Status SwigluBackward(uint16_t* dh, const float* dout, const float* h, int64_t N, int64_t I,
                      void* stream = nullptr);
// bf16 mode's kept activations: the forward also writes its input h rounded to bf16 (h16,
// (N, 2I)), and the backward reads that instead of h (which the model then frees after the
// forward: half the memory, for a gradient computed at the rounded gate and up values).
Status SwigluForward(uint16_t* out, uint16_t* h16, const float* h, int64_t N, int64_t I,
                     void* stream = nullptr);
Status SwigluBackward(uint16_t* dh, const float* dout, const uint16_t* h16, int64_t N, int64_t I,
                      void* stream = nullptr);

// ---------------------------------------------------------------- RoPE (HF rotate_half)
// ops::rope_forward: in place on x (T, Hn, D), cos/sin (T, D/2); one thread per pair (i, i+D/2).
// An odd D leaves the last element of each head as is (as the CPU does).
Status RopeForward(float* x, const float* cos, const float* sin, int64_t T, int64_t Hn, int64_t D,
                   void* stream = nullptr);
// The same rotation of x into out16 (T, Hn, D) rounded to bf16 (nearest even: what ToBf16 makes
// of the in-place forward's result; an odd D's last element rounded as is), for an input of bf16
// products only (the bf16 attention's q and k). x is left as it was.
Status RopeForward(uint16_t* out16, const float* x, const float* cos, const float* sin, int64_t T,
                   int64_t Hn, int64_t D, void* stream = nullptr);
// ops::rope_backward: in place on dx (T, Hn, D), the transposed rotation.
Status RopeBackward(float* dx, const float* cos, const float* sin, int64_t T, int64_t Hn, int64_t D,
                    void* stream = nullptr);

// ---------------------------------------------------------------- GPT-OSS's clamped GLU
// ops::gpt_oss_glu_forward / backward (exp as SwigluForward's: agreement to ~1e-6 relative).
// The bf16 overloads are SwiGLU's: out rounded, h16 the input kept rounded; the backward reads
// it and writes dh rounded (its clamp tests the rounded input).
Status GptOssGluForward(float* out, const float* h, int64_t N, int64_t I, float alpha, float limit,
                        void* stream = nullptr);
Status GptOssGluForward(uint16_t* out, uint16_t* h16, const float* h, int64_t N, int64_t I,
                        float alpha, float limit, void* stream = nullptr);
Status GptOssGluBackward(float* dh, const float* dout, const float* h, int64_t N, int64_t I,
                         float alpha, float limit, void* stream = nullptr);
Status GptOssGluBackward(uint16_t* dh, const float* dout, const uint16_t* h16, int64_t N, int64_t I,
                         float alpha, float limit, void* stream = nullptr);

// ---------------------------------------------------------------- biases
// ops::bias_forward / bias_backward and their grouped forms. The forward bit-identical (one
// thread per element). The backward bit-identical up to 1024 rows (one thread per column adding
// the rows in order into db); more rows are summed in chunks of 1024 whose sums are added in
// order (deterministic, ~1e-7 relative from the CPU's order; scratch: a float per chunk and
// column, cudaMallocAsync on `stream`). The grouped forms take the experts' row offsets (E + 1)
// on the HOST, as the grouped GEMMs do, copy them (or the backward's per-expert row chunks) to
// scratch, and run every expert in one launch (the backward: two), with the bits of one call
// per expert.
Status BiasForward(float* out, const float* b, int64_t N, int64_t O, void* stream = nullptr);
Status BiasBackward(float* db, const float* dout, int64_t N, int64_t O, void* stream = nullptr);
Status GroupedBiasForward(float* out, const float* b, const int32_t* offsets, int64_t E, int64_t O,
                          void* stream = nullptr);
Status GroupedBiasBackward(float* db, const float* dout, const int32_t* offsets, int64_t E,
                           int64_t O, void* stream = nullptr);

// ---------------------------------------------------------------- column moves (MLA, LoRA)
// ops::copy_columns and ops::sum_head_columns, bit-identical (copies; the sum over heads in the
// CPU's order, one thread per output element). Error unless width is even for a pair order and
// repeat >= 1.
Status CopyColumns(float* out, int64_t out_stride, int64_t out_at, const float* in,
                   int64_t in_stride, int64_t in_at, int64_t N, int64_t width,
                   ops::ColumnOrder order, int64_t repeat = 1, void* stream = nullptr);
Status SumHeadColumns(float* out, const float* in, int64_t in_stride, int64_t at, int64_t T,
                      int64_t Hn, int64_t width, void* stream = nullptr);
// ops::scale_columns, bit for bit; the second form reads a bf16 input (uint16_t bits, as
// ToBf16 writes them) exactly as fp32.
Status ScaleColumns(float* out, int64_t out_stride, int64_t out_at, const float* in,
                    int64_t in_stride, int64_t in_at, int64_t N, int64_t width, float scale,
                    bool add, void* stream = nullptr);
Status ScaleColumns(float* out, int64_t out_stride, int64_t out_at, const uint16_t* in,
                    int64_t in_stride, int64_t in_at, int64_t N, int64_t width, float scale,
                    bool add, void* stream = nullptr);

// ---------------------------------------------------------------- dropout masks (LoRA)
// ops::dropout_mask, bit for bit: out (T, C) = in masked (add: out += that), keys (T) on the
// device. The second form masks bf16 values (uint16_t bits), assigned: a dropped element is +0.
Status DropoutMask(float* out, const float* in, int64_t T, int64_t C, const uint64_t* keys,
                   uint64_t salt, uint32_t threshold, bool add, void* stream = nullptr);
Status DropoutMask(uint16_t* out, const uint16_t* in, int64_t T, int64_t C, const uint64_t* keys,
                   uint64_t salt, uint32_t threshold, void* stream = nullptr);

// ---------------------------------------------------------------- embedding
// ops::embedding_forward: out (T, H) = table (V, H)[ids (T)]; ids in [0, V) (not checked).
Status EmbeddingForward(float* out, const int32_t* ids, const float* table, int64_t T, int64_t H,
                        void* stream = nullptr);
// ops::embedding_backward: dtable (V, H) += dout (T, H) scattered by ids (T), ids in [0, V).
// Deterministic and bit-identical to the CPU: a stable radix sort of (id, token) pairs (CUB),
// then one block per run of equal ids adds that row's tokens in token order. T must fit int32.
Status EmbeddingBackward(float* dtable, const float* dout, const int32_t* ids, int64_t T, int64_t V,
                         int64_t H, void* stream = nullptr);

// ---------------------------------------------------------------- MoE dispatch (dropless)
// The plan (ops::moe_plan: offsets, sorted, slot_of) stays on the host for now: compute it
// there and copy it over.
// ops::moe_permute: xs (A, H): xs[p] = x (T, H)[sorted (A)[p] / k].
Status MoePermute(float* xs, const float* x, const int32_t* sorted, int64_t A, int64_t k, int64_t H,
                  void* stream = nullptr);
Status MoePermute(uint16_t* xs, const float* x, const int32_t* sorted, int64_t A, int64_t k,
                  int64_t H, void* stream = nullptr);
// The same gather of rows already in bf16 (each element copied, bit for bit).
Status MoePermute(uint16_t* xs, const uint16_t* x, const int32_t* sorted, int64_t A, int64_t k,
                  int64_t H, void* stream = nullptr);
// ops::moe_permute_backward: dx (T, H) += sum_j dxs (A, H)[slot_of (T*k)[t*k + j]], j in order.
Status MoePermuteBackward(float* dx, const float* dxs, const int32_t* slot_of, int64_t T, int64_t k,
                          int64_t H, void* stream = nullptr);
// ops::moe_combine_forward: y (T, H) = sum_j topk_w (T, k)[t, j] * ys (A, H)[slot_of[t*k + j]],
// j in order, assigned.
Status MoeCombineForward(float* y, const float* ys, const float* topk_w, const int32_t* slot_of,
                         int64_t T, int64_t k, int64_t H, void* stream = nullptr);
// The same y (the fp32 ys summed), and ys rounded to bf16 into ys16 (A, H): bf16 mode keeps that
// for the backward's dtopk_w (the overload of MoeCombineBackward below) instead of ys.
Status MoeCombineForward(float* y, uint16_t* ys16, const float* ys, const float* topk_w,
                         const int32_t* slot_of, int64_t T, int64_t k, int64_t H,
                         void* stream = nullptr);
// ops::moe_combine_backward: dys (A, H) assigned; dtopk_w (T, k) assigned = <dy[t], ys[slot]>,
// summed in double by one block per assignment.
Status MoeCombineBackward(float* dys, float* dtopk_w, const float* dy, const float* ys,
                          const float* topk_w, const int32_t* slot_of, int64_t T, int64_t k,
                          int64_t H, void* stream = nullptr);
Status MoeCombineBackward(uint16_t* dys, float* dtopk_w, const float* dy, const float* ys,
                          const float* topk_w, const int32_t* slot_of, int64_t T, int64_t k,
                          int64_t H, void* stream = nullptr);
Status MoeCombineBackward(uint16_t* dys, float* dtopk_w, const float* dy, const uint16_t* ys16,
                          const float* topk_w, const int32_t* slot_of, int64_t T, int64_t k,
                          int64_t H, void* stream = nullptr);

// ---------------------------------------------------------------- MoE router
// ops::router_forward: probs (T, E) = softmax(logits) in fp32, topk_idx/topk_w (T, k) descending,
// ties to the lower expert index, normalised when norm_topk. One thread per token with the CPU's
// loops and order (only exp differs: double, rounded, vs glibc's expf). Error unless 1 <= k <= E.
Status RouterForward(int32_t* topk_idx, float* topk_w, float* probs, const float* logits, int64_t T,
                     int64_t E, int64_t k, bool norm_topk, void* stream = nullptr);
// ops::router_backward: dlogits (T, E) assigned from dtopk_w (T, k) and optional dprobs (T, E)
// (null when absent). One thread per token, the CPU's double sums in the CPU's order.
Status RouterBackward(float* dlogits, const float* dtopk_w, const float* dprobs, const float* probs,
                      const int32_t* topk_idx, int64_t T, int64_t E, int64_t k, bool norm_topk,
                      void* stream = nullptr);

// ops::router_sigmoid_forward (DeepSeek-V3): scores (T, E) = sigmoid(logits), topk_idx/topk_w
// (T, k) the group-limited choice over scores + bias (E; null: zeros), weights renormalised when
// norm_topk, times scale. One thread per token with the CPU's row function (router_row.h; exp as
// in RouterForward). Error unless router_sigmoid_sizes_ok.
Status RouterSigmoidForward(int32_t* topk_idx, float* topk_w, float* scores, const float* logits,
                            const float* bias, int64_t T, int64_t E, int64_t k, int64_t n_group,
                            int64_t topk_group, bool norm_topk, float scale,
                            void* stream = nullptr);
// ops::router_sigmoid_backward: dlogits (T, E) assigned from dtopk_w (T, k).
Status RouterSigmoidBackward(float* dlogits, const float* dtopk_w, const float* scores,
                             const int32_t* topk_idx, int64_t T, int64_t E, int64_t k,
                             bool norm_topk, float scale, void* stream = nullptr);

// ---------------------------------------------------------------- AdamW
// One AdamW step on n elements of one run: params, m, v (n) updated in place from grads (n),
// with exactly UpdateChunk's float operations and order (no fused multiply-adds): bit-identical
// to AdamW::Step on the same run. params_bf16 (n __nv_bfloat16; null: none): also the new
// parameters rounded to bf16 (nearest even, as ToBf16), a bf16 copy made in the same pass
// instead of a second read of the parameters.
Status AdamWStep(float* params, const float* grads, float* m, float* v, int64_t n,
                 const AdamWStepScalars& s, void* stream = nullptr, void* params_bf16 = nullptr);

// A bf16 copy of elements [begin, end) of a slab: data[i - begin] mirrors element i (e.g.
// CudaModel::bf16_mirror()). data null: none.
struct Bf16Mirror {
  uint16_t* data = nullptr;
  int64_t begin = 0, end = 0;
};
// AdamWStep on elements [begin, end) of the slab params (a pointer to its element 0), whose
// gradients and moments are grads, m and v (end - begin each: grads[0] is element begin's, so
// that they can be held apart from the slab's coordinates, e.g. only those of what trains),
// writing the new bf16 value of every element the mirror covers into it.
Status AdamWStepRange(float* params, const float* grads, float* m, float* v, int64_t begin,
                      int64_t end, const AdamWStepScalars& s, const Bf16Mirror& mirror,
                      void* stream = nullptr);

// ---------------------------------------------------------------- attention (packed, causal)
// ops::attention_forward / attention_backward on device q, k, v, out, lse, dout, dq, dk, dv
// (same shapes, scale passed as there), but cu_seqlens (num_docs + 1) is a HOST array: the
// block list (64-token blocks counted from each document's start, as on the CPU) is made on the
// host and copied to the device, stream-ordered (the host array may be reused on return).
// Validated before any CUDA call: Hq a positive multiple of Hkv, 1 <= D <= 256 (larger D is an
// error), cu_seqlens from 0 to T and non-decreasing; T == 0 launches nothing.
// forward: one CUDA block per (64-token query block, q head), K/V streamed in 32-key tiles, fp32
// online softmax with expf; lse (T, Hq) saved. backward: delta = <dout, out> per row, then one
// CUDA block per (key block, kv head) for dk, dv (its q heads and query tiles in order) and one
// per (query block, q head) for dq. No atomics: bit-identical across runs. Against the CPU twin
// (other summation orders, its polynomial Exp) expected to agree to ~1e-6 relative for out and
// lse, ~1e-5 for the gradients; its test demands 1e-5 and 1e-4 norm-wise. Scratch: the block
// list and delta (T * Hq floats), cudaMallocAsync on `stream`.
// extras (ops::AttentionExtras, GPT-OSS): sinks, a DEVICE array (Hq), join every softmax's
// denominator as on the CPU; a window > 0 limits each query to its last `window` keys (key tiles
// wholly outside it are skipped); a negative window is an error.
Status AttentionForward(float* out, float* lse, const float* q, const float* k, const float* v,
                        const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                        int64_t Hkv, int64_t D, float scale, void* stream = nullptr,
                        const ops::AttentionExtras& extras = {});
// dq (T, Hq, D), dk, dv (T, Hkv, D) assigned. With sinks, dsinks (Hq, device; null: none) +=
// -sum_t exp(sink - lse) delta, summed in double by one CUDA block per head (a fixed tree).
Status AttentionBackward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                         const float* lse, const float* q, const float* k, const float* v,
                         const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                         int64_t Hkv, int64_t D, float scale, void* stream = nullptr,
                         const ops::AttentionExtras& extras = {}, float* dsinks = nullptr);

}  // namespace xt::cuda
