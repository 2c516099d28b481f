// The op layer: every compute kernel the models use, as plain forward/backward functions over
// contiguous fp32 buffers (llm.c style: outputs first, then inputs, then sizes; the shape of each
// buffer is written beside it). model/ calls only these; the CPU implementations live in cpu/,
// a CUDA backend will provide the same contracts over device memory.
//
// Conventions:
//  - Parameter gradients ACCUMULATE (+=); activation gradients ASSIGN (=), unless a flag says so.
//  - Results are deterministic for a fixed thread count: no atomics, no order-dependent sums.
//  - Token-major layouts: T tokens, H hidden, Hq/Hkv heads of D, E experts, k experts per token.
//  - Sizes are int64_t; ids and offsets are int32_t.
#pragma once

#include <cstdint>

namespace xt::ops {

// ---------------------------------------------------------------- GEMM (oneDNN sgemm)
// c (M, N) = op(a) @ op(b) + beta * c. a is (M, K), or (K, M) when ta; b is (K, N), or (N, K)
// when tb. beta = 0 assigns, 1 accumulates. Row-major, tightly packed.
// In MatmulPrecision::kBf16, a and b are rounded to bf16 first (see gemm_bf16).
void gemm(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool ta,
          bool tb, float beta);
// The same in fp32 whatever the MatmulPrecision (oneDNN's sgemm).
void gemm_f32(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool ta,
              bool tb, float beta);

// The precision of every gemm (and so of every linear, grouped and lm_head product) in this
// process: fp32 (default), or bf16 inputs with fp32 accumulation and output, as torch's
// autocast to bf16 does on the CPU. Parameters, gradients and optimizer state stay fp32.
enum class MatmulPrecision { kFp32, kBf16 };
void SetMatmulPrecision(MatmulPrecision p);
MatmulPrecision GetMatmulPrecision();
// fp32 matmuls while it lives (the MoE router keeps fp32 logits in bf16 mode, as Megatron
// does: a rounded logit flips top-k choices). Not for use inside OpenMP regions.
struct Fp32MatmulScope {
  MatmulPrecision saved = GetMatmulPrecision();
  Fp32MatmulScope() { SetMatmulPrecision(MatmulPrecision::kFp32); }
  ~Fp32MatmulScope() { SetMatmulPrecision(saved); }
};

// The bf16 product: c = round_bf16(op(a)) @ round_bf16(op(b)) + beta * c, summed in fp32 (beta
// 0 or 1). Thread-safe; inside an OpenMP region it runs on the calling thread.
void gemm_bf16(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool ta,
               bool tb, float beta);
// Whether gemm_bf16 runs on oneDNN's bf16 matmul on this CPU; false: on sgemm over the operands
// rounded and widened back to fp32 (the same products; oneDNN 2.x has no bf16 matmul without
// AVX-512).
bool gemm_bf16_native();

// ---------------------------------------------------------------- linear (no bias)
// out (T, O) = in (T, I) @ w^T, w (O, I).
void linear_forward(float* out, const float* in, const float* w, int64_t T, int64_t I, int64_t O);
// din (T, I) = dout @ w (assigned, or added when accumulate_din; skipped when din is null);
// dw (O, I) += dout^T @ in (skipped when dw is null: a frozen weight).
void linear_backward(float* din, float* dw, const float* dout, const float* in, const float* w,
                     int64_t T, int64_t I, int64_t O, bool accumulate_din = false);

// ---------------------------------------------------------------- biases
// out (N, O) += b (O) on every row.
void bias_forward(float* out, const float* b, int64_t N, int64_t O);
// db (O) += the column sums of dout (N, O), rows summed in order.
void bias_backward(float* db, const float* dout, int64_t N, int64_t O);
// Per expert (rows [offsets[e], offsets[e+1]) of out (A, O)): out += b (E, O)[e]; and its
// backward, db (E, O) += the column sums of each expert's rows of dout.
void grouped_bias_forward(float* out, const float* b, const int32_t* offsets, int64_t E, int64_t O);
void grouped_bias_backward(float* db, const float* dout, const int32_t* offsets, int64_t E,
                           int64_t O);

// ---------------------------------------------------------------- embedding
// out (T, H) = table (V, H)[ids (T)]. Ids must be in [0, V) (checked by the caller).
void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t T, int64_t H);
// dtable (V, H) += scatter of dout (T, H) by ids; deterministic (tokens summed in order).
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t T, int64_t V,
                        int64_t H);

// ---------------------------------------------------------------- RMSNorm over the last dim
// out (N, C) = in / sqrt(mean(in^2) + eps) * w (C); rstd (N) saved for backward.
// Used for the layer norms (N = T, C = H) and per-head q/k norms (N = T * heads, C = D).
void rmsnorm_forward(float* out, float* rstd, const float* in, const float* w, int64_t N, int64_t C,
                     float eps);
// din (N, C) assigned (or added when accumulate_din); dw (C) += (skipped when dw is null).
void rmsnorm_backward(float* din, float* dw, const float* dout, const float* in, const float* w,
                      const float* rstd, int64_t N, int64_t C, bool accumulate_din = false);

// ---------------------------------------------------------------- RoPE (HF rotate_half layout)
// In place on x (T, Hn, D): for i < D/2, with c = cos (T, D/2), s = sin (T, D/2):
//   x[i]' = x[i] c[i] - x[i + D/2] s[i];   x[i + D/2]' = x[i + D/2] c[i] + x[i] s[i].
void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t Hn, int64_t D);
// In place on dx (T, Hn, D): the transpose of the rotation above.
void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t Hn, int64_t D);

// ---------------------------------------------------------------- column moves (MLA, LoRA)
// How copy_columns orders the `width` columns it copies. kDeinterleave takes interleaved RoPE
// pairs (x0 y0 x1 y1 ...) to the order RoPE rotates them (x0 x1 ... y0 y1 ...), as transformers'
// apply_rotary_pos_emb_interleave does; kInterleave undoes it. width even for both.
enum class ColumnOrder { kSame, kDeinterleave, kInterleave };
// For each of N output rows n: `width` columns of input row n / repeat (rows of in_stride
// floats, from column in_at) to output row n (rows of out_stride, from column out_at). repeat
// > 1 copies each input row to `repeat` consecutive output rows (e.g. one key part to every
// head). Other output columns are left as they are.
void copy_columns(float* out, int64_t out_stride, int64_t out_at, const float* in,
                  int64_t in_stride, int64_t in_at, int64_t N, int64_t width, ColumnOrder order,
                  int64_t repeat = 1);
// out (T, width) assigned: out[t, i] = sum over h in [0, Hn), in order, of in[t * Hn + h, at + i]
// (rows of in_stride floats), in fp32 from zero: the gradient of copy_columns' repeat.
void sum_head_columns(float* out, const float* in, int64_t in_stride, int64_t at, int64_t T,
                      int64_t Hn, int64_t width);
// For each row n < N: out[n, out_at + i] = scale * in[n, in_at + i] (add: +=) for i < width
// (rows of out_stride and in_stride floats), each term the float product scale * in rounded
// before it is added: a LoRA adapter's output added to its weight's columns, and its gradient.
void scale_columns(float* out, int64_t out_stride, int64_t out_at, const float* in,
                   int64_t in_stride, int64_t in_at, int64_t N, int64_t width, float scale,
                   bool add);

// ---------------------------------------------------------------- dropout masks (LoRA)
// out (T, C) = in (T, C) with the elements a dropout mask drops set to zero, or with add
// out += that: element (t, c) is kept where
// dropout_keep(dropout_row_key(keys[t], salt), c, threshold) (ops/dropout_mask.h). The scale
// 1 / (1 - p) of the kept elements is the caller's. out may be in (not with add).
void dropout_mask(float* out, const float* in, int64_t T, int64_t C, const uint64_t* keys,
                  uint64_t salt, uint32_t threshold, bool add);

// ---------------------------------------------------------------- attention (packed, causal)
// GPT-OSS's two variations on causal attention, both off by default:
//  - sinks (Hq): a learned logit per query head that joins the denominator of every softmax of
//    that head and carries no value: p_ij = exp(s_ij) / (sum_j' exp(s_ij') + exp(sinks[h])), so a
//    query's weights sum to less than 1 (transformers' eager_attention_forward with s_aux);
//  - window > 0: query i attends only to keys j with i - window < j <= i (a sliding window of
//    `window` keys, itself included; transformers' sliding_window).
struct AttentionExtras {
  const float* sinks = nullptr;  // (Hq), or null: no sink
  int64_t window = 0;            // 0: the whole causal prefix
};

// cu_seqlens (num_docs + 1): document d holds tokens [cu[d], cu[d+1]); cu[0] = 0, cu[num_docs] = T.
// Each query attends causally to keys of its own document only. GQA: query head h reads kv head
// h / (Hq / Hkv). q (T, Hq, D), k (T, Hkv, D), v (T, Hkv, D) -> out (T, Hq, D),
// lse (T, Hq) = log-sum-exp of the scaled scores of each query, the sink included (saved for
// backward). Blocked with an online softmax: extra memory is O(block * D) per thread, never
// O(T^2); with a window, key blocks wholly outside it are skipped.
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                       int64_t Hkv, int64_t D, float scale, const AttentionExtras& extras = {});
// dq (T, Hq, D), dk (T, Hkv, D), dv (T, Hkv, D) assigned. Recomputes the probabilities from lse.
// With sinks, dsinks (Hq) += d loss / d sinks = -sum_i exp(sinks[h] - lse_ih) <dout_i, out_i>
// (skipped when dsinks is null: a frozen sink), summed in token order.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                        const float* lse, const float* q, const float* k, const float* v,
                        const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                        int64_t Hkv, int64_t D, float scale, const AttentionExtras& extras = {},
                        float* dsinks = nullptr);

// Generation: Tq new queries at positions [past, past + Tq) of one sequence over cached keys and
// values of positions [0, past + Tq) (the new ones already appended); causal, GQA, with the
// sinks and window of `extras`. q (Tq, Hq, D), k_cache (>= past + Tq, Hkv, D), v_cache (same)
// -> out (Tq, Hq, D). No backward.
void attention_cached_forward(float* out, const float* q, const float* k_cache,
                              const float* v_cache, int64_t past, int64_t Tq, int64_t Hq,
                              int64_t Hkv, int64_t D, float scale,
                              const AttentionExtras& extras = {});

// ---------------------------------------------------------------- SwiGLU
// h (N, 2I) holds [gate | up] per row -> out (N, I) = silu(gate) * up.
void swiglu_forward(float* out, const float* h, int64_t N, int64_t I);
// dh (N, 2I) assigned.
void swiglu_backward(float* dh, const float* dout, const float* h, int64_t N, int64_t I);

// GPT-OSS's clamped GLU on h (N, 2I) = [gate | up] per row -> out (N, I):
//   g = min(gate, limit), u = clamp(up, -limit, limit), out = (u + 1) * g * sigmoid(alpha * g).
void gpt_oss_glu_forward(float* out, const float* h, int64_t N, int64_t I, float alpha,
                         float limit);
// dh (N, 2I) assigned; zero where the clamp held the input (torch's clamp passes the gradient
// where min <= x <= max).
void gpt_oss_glu_backward(float* dh, const float* dout, const float* h, int64_t N, int64_t I,
                          float alpha, float limit);

// ---------------------------------------------------------------- MoE router
// probs (T, E) = softmax(logits (T, E)) in fp32; topk_idx (T, k) the k largest probabilities in
// descending order (ties: lower expert index first); topk_w (T, k) their probabilities, divided by
// their sum when norm_topk.
void router_forward(int32_t* topk_idx, float* topk_w, float* probs, const float* logits, int64_t T,
                    int64_t E, int64_t k, bool norm_topk);
// dlogits (T, E) assigned, from dtopk_w (T, k) and an optional extra gradient on the
// probabilities dprobs (T, E) (the balancing loss; null when absent).
void router_backward(float* dlogits, const float* dtopk_w, const float* dprobs, const float* probs,
                     const int32_t* topk_idx, int64_t T, int64_t E, int64_t k, bool norm_topk);

// DeepSeek-V3's router (router_row.h): scores (T, E) = sigmoid(logits (T, E)); topk_idx (T, k)
// the group-limited choice over scores + bias (E; null: zeros); topk_w (T, k) the chosen scores,
// renormalised when norm_topk, times scale. Deterministic.
void router_sigmoid_forward(int32_t* topk_idx, float* topk_w, float* scores, const float* logits,
                            const float* bias, int64_t T, int64_t E, int64_t k, int64_t n_group,
                            int64_t topk_group, bool norm_topk, float scale);
// dlogits (T, E) assigned from dtopk_w (T, k); no gradient reaches the bias.
void router_sigmoid_backward(float* dlogits, const float* dtopk_w, const float* scores,
                             const int32_t* topk_idx, int64_t T, int64_t E, int64_t k,
                             bool norm_topk, float scale);

// ---------------------------------------------------------------- MoE dispatch (dropless)
// Assignments a = t * k + j (token t, slot j), A = T * k of them. The plan sorts them by expert,
// stably (by a within an expert): expert e owns sorted rows [offsets[e], offsets[e+1]).
// offsets (E + 1); sorted (A): sorted row p -> assignment a; slot_of (A): assignment a -> row p.
// No capacity: every assignment gets a row.
void moe_plan(int32_t* offsets, int32_t* sorted, int32_t* slot_of, const int32_t* topk_idx,
              int64_t T, int64_t E, int64_t k);
// xs (A, H): xs[p] = x (T, H)[sorted[p] / k].
void moe_permute(float* xs, const float* x, const int32_t* sorted, int64_t A, int64_t k, int64_t H);
// dx (T, H) += sum over slots j of dxs[slot_of[t * k + j]] (slots summed in order j = 0..k-1).
void moe_permute_backward(float* dx, const float* dxs, const int32_t* slot_of, int64_t T, int64_t k,
                          int64_t H);
// Grouped GEMM: for each expert e, rows [offsets[e], offsets[e+1]) of in (A, I) times w[e]^T,
// w (E, O, I) -> out (A, O). An expert with no rows is skipped.
void grouped_linear_forward(float* out, const float* in, const float* w, const int32_t* offsets,
                            int64_t E, int64_t I, int64_t O);
// din (A, I) assigned; dw (E, O, I) += (skipped when dw is null).
void grouped_linear_backward(float* din, float* dw, const float* dout, const float* in,
                             const float* w, const int32_t* offsets, int64_t E, int64_t I,
                             int64_t O);
// Weighted un-permute: y (T, H) = sum_j topk_w (T, k)[t, j] * ys (A, H)[slot_of[t * k + j]],
// summed in order j = 0..k-1 (fp32). Assigns y.
void moe_combine_forward(float* y, const float* ys, const float* topk_w, const int32_t* slot_of,
                         int64_t T, int64_t k, int64_t H);
// dys (A, H) assigned; dtopk_w (T, k) assigned: dtopk_w[t, j] = <dy[t], ys[slot_of[t*k+j]]>.
void moe_combine_backward(float* dys, float* dtopk_w, const float* dy, const float* ys,
                          const float* topk_w, const int32_t* slot_of, int64_t T, int64_t k,
                          int64_t H);

// ---------------------------------------------------------------- load-balancing statistics
// For transformers' load_balancing_loss_func (see loss/balance.h), per MoE layer:
// count (E) += number of times expert e appears in topk_idx (T, k);
// prob_sum (E) += sum over tokens of probs (T, E)[t, e]. Accumulated in double, in token order.
void moe_balance_stats(double* count, double* prob_sum, const float* probs, const int32_t* topk_idx,
                       int64_t T, int64_t E, int64_t k);

}  // namespace xt::ops
