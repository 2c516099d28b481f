// Causal attention over packed documents, FlashAttention-2 style, fp32 on the CPU.
//
// Each document is cut into blocks of kBlock tokens counted from its first token, used both as
// query blocks and as key blocks, so query block b sees key blocks doc_begin .. b (the last one,
// the diagonal, masked). With a sliding window (extras.window > 0) query block b sees only the key
// blocks from the one holding key b.begin - window + 1 (its first row's first key) to b, masked
// per entry; a row may see no key at all of a given block, and is then left out of it. A work item
// is (block, head); it owns its outputs, reads keys/values one block at a time and keeps O(kBlock *
// D) scratch. Every output element is reduced in a fixed order inside one work item: results are
// bit-identical for any thread count. No atomics. The tile products run on oneDNN's sgemm, one
// thread per call (inside the OpenMP work items), on the strided rows of q, k, v in place.
//
//   forward:   s = q k^T * scale, online softmax (running max m, sum l), then the sink (a logit
//              in the denominator only, -inf without sinks): lse = log(l e^m + e^sink),
//              out = acc e^m / (l e^m + e^sink)   (= acc / l and m + log(l) without a sink).
//   backward:  p = exp(s - lse), delta_i = <dout_i, out_i>, dp = dout v^T, ds = p (dp - delta),
//              dv = p^T dout, dk = ds^T q * scale   (items: key block x kv head, all its q heads)
//              dq = ds k * scale                    (items: query block x q head)
//              dsink_h = -sum_i exp(sink_h - lse_ih) delta_ih   (items: q head, tokens in order)
#include <dnnl.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/ops/cpu/fast_exp.h"
#include "xtuner/ops/ops.h"

namespace xt::ops {
namespace {

constexpr int64_t kBlock = 64;

// Tokens [begin, begin + n) of the document [doc_begin, doc_end); n = min(kBlock, doc_end - begin).
struct Block {
  int64_t doc_begin, doc_end, begin, n;
};

std::vector<Block> MakeBlocks(const int32_t* cu, int64_t num_docs, int64_t T) {
  XT_CHECK(cu[0] == 0 && cu[num_docs] == T, "attention: cu_seqlens must run from 0 to T");
  std::vector<Block> blocks;
  for (int64_t d = 0; d < num_docs; ++d) {
    int64_t b0 = cu[d], b1 = cu[d + 1];
    XT_CHECK(b0 <= b1, "attention: cu_seqlens must be non-decreasing");
    for (int64_t b = b0; b < b1; b += kBlock)
      blocks.push_back({b0, b1, b, std::min(kBlock, b1 - b)});
  }
  return blocks;
}

// c (M, N; row stride ldc) = alpha * op(a) @ op(b) + beta * c, row-major with row strides lda,
// ldb (oneDNN's sgemm; inside a work item it runs on the calling thread).
void Tile(char ta, char tb, int64_t M, int64_t N, int64_t K, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (M == 0 || N == 0 || K == 0) {
    XT_CHECK(beta == 1.0f, "attention: empty tile product must accumulate");
    return;
  }
  const dnnl_status_t st = dnnl_sgemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
  XT_CHECK(st == dnnl_success, "attention: dnnl_sgemm failed");
}

// Max and sum of x (kBlock), reduced in kLanes interleaved partial results then across them: a
// fixed order that vectorizes without -ffast-math.
constexpr int64_t kLanes = 16;
float RowMax(const float* x) {
  float lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lanes[l] = x[l];
  for (int64_t j = kLanes; j < kBlock; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = std::max(lanes[l], x[j + l]);
  return *std::max_element(lanes, lanes + kLanes);
}
float RowSum(const float* x) {
  float lanes[kLanes] = {};
  for (int64_t j = 0; j < kBlock; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += x[j + l];
  float sum = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

// Key block starting at kb0 of the document of block b.
Block KeyBlock(const Block& b, int64_t kb0) {
  return {b.doc_begin, b.doc_end, kb0, std::min(kBlock, b.doc_end - kb0)};
}

// First key block that some row of query block qb sees: the document's first without a window,
// else the one holding key qb.begin - window + 1 (the first key of qb's first row; later rows
// start later). Every block from there to the diagonal is seen by that first row.
int64_t FirstKeyBlock(const Block& qb, int64_t window) {
  if (window == 0) return qb.doc_begin;
  const int64_t lo = std::max(qb.doc_begin, qb.begin - window + 1);
  return qb.doc_begin + (lo - qb.doc_begin) / kBlock * kBlock;
}

// Columns [lo, hi) of key block kb that query token t sees: j <= t and t - j < window (when
// window > 0). Empty (lo == hi) when the window ends before the block.
struct Span {
  int64_t lo, hi;
};
Span Visible(int64_t t, const Block& kb, int64_t window) {
  const int64_t hi = std::min(kb.n, t - kb.begin + 1);  // >= 1: kb.begin <= t
  const int64_t lo = window > 0 ? std::clamp<int64_t>(t - window + 1 - kb.begin, 0, hi) : 0;
  return {lo, hi};
}

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                       int64_t Hkv, int64_t D, float scale, const AttentionExtras& extras) {
  XT_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention: Hq must be a multiple of Hkv");
  XT_CHECK(extras.window >= 0, "attention: window must be >= 0");
  const int64_t window = extras.window;
  const int64_t group = Hq / Hkv;
  const std::vector<Block> blocks = MakeBlocks(cu_seqlens, num_docs, T);
  const int64_t items = int64_t(blocks.size()) * Hq;
#pragma omp parallel
  {
    // Per-thread scratch: s (kBlock, kBlock), acc (kBlock, D).
    std::vector<float> s(kBlock * kBlock), acc(kBlock * D);
    float m[kBlock], l[kBlock];  // running max and sum of exp per query row
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const Block& qb = blocks[blocks.size() - 1 - it / Hq];  // late (costly) blocks first
      const int64_t h = it % Hq, g = h / group;
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(m, m + kBlock, -std::numeric_limits<float>::infinity());
      std::fill(l, l + kBlock, 0.0f);
      for (int64_t kb0 = FirstKeyBlock(qb, window); kb0 <= qb.begin; kb0 += kBlock) {
        const Block kb = KeyBlock(qb, kb0);
        const float* kh = k + (kb0 * Hkv + g) * D;  // key row j at kh + j * Hkv * D
        Tile('N', 'T', qb.n, kb.n, D, scale, q + (qb.begin * Hq + h) * D, Hq * D, kh, Hkv * D, 0.0f,
             s.data(), kBlock);
        for (int64_t i = 0; i < qb.n; ++i) {
          const Span c = Visible(qb.begin + i, kb, window);
          float* p = s.data() + i * kBlock;  // (kBlock) scores -> exp(score - max)
          if (c.lo == c.hi) {
            // The window ends before this block: the row keeps m, l, acc as they are (an all -inf
            // row would give exp(-inf - -inf) = NaN) and adds nothing to acc below.
            std::fill(p, p + kBlock, 0.0f);
            continue;
          }
          std::fill(p, p + c.lo, -std::numeric_limits<float>::infinity());  // masked: window
          std::fill(p + c.hi, p + kBlock, -std::numeric_limits<float>::infinity());  // causal
          const float mx = std::max(m[i], RowMax(p));
          for (int64_t j = 0; j < kBlock; ++j) p[j] = Exp(p[j] - mx);
          const float sum = RowSum(p);
          const float corr = Exp(m[i] - mx);  // rescales the old sum and accumulator; 0 at first
          l[i] = l[i] * corr + sum;
          m[i] = mx;
          float* a = acc.data() + i * D;  // (D)
          for (int64_t d = 0; d < D; ++d) a[d] *= corr;
        }
        // acc (qb.n, D) += p (qb.n, kb.n) @ v block (kb.n, D); masked p are 0.
        Tile('N', 'N', qb.n, D, kb.n, 1.0f, s.data(), kBlock, v + (kb0 * Hkv + g) * D, Hkv * D,
             1.0f, acc.data(), D);
      }
      // Every row saw at least itself (m finite, l >= 1). The sink joins the denominator
      // l e^m + e^sink, computed relative to M = max(m, sink) so that neither term overflows; with
      // no sink (-inf) M = m, e^(m - M) = 1 and this is exactly acc / l, lse = m + log(l).
      const float sink = extras.sinks ? extras.sinks[h] : -std::numeric_limits<float>::infinity();
      for (int64_t i = 0; i < qb.n; ++i) {
        const int64_t r = (qb.begin + i) * Hq + h;
        const float big = std::max(m[i], sink);
        const float em = std::exp(m[i] - big);
        const float denom = l[i] * em + std::exp(sink - big);  // >= 1: one term is l or 1
        const float inv = em / denom;
        for (int64_t d = 0; d < D; ++d) out[r * D + d] = acc[i * D + d] * inv;
        lse[r] = big + std::log(denom);
      }
    }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                        const float* lse, const float* q, const float* k, const float* v,
                        const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                        int64_t Hkv, int64_t D, float scale, const AttentionExtras& extras,
                        float* dsinks) {
  XT_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention: Hq must be a multiple of Hkv");
  XT_CHECK(extras.window >= 0, "attention: window must be >= 0");
  const int64_t window = extras.window;
  const int64_t group = Hq / Hkv;
  const std::vector<Block> blocks = MakeBlocks(cu_seqlens, num_docs, T);

  // delta (T, Hq) = rowsum(dout * out).
  std::vector<float> delta(T * Hq);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < T * Hq; ++r) {
    float sum = 0.0f;
    for (int64_t d = 0; d < D; ++d) sum += dout[r * D + d] * out[r * D + d];
    delta[r] = sum;
  }

  // dsinks (Hq) += -sum_t exp(sink - lse) delta: the sink's probability times its dp (0, it has
  // no value) minus delta. One head per item, tokens in order, in double.
  if (extras.sinks && dsinks) {
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < Hq; ++h) {
      double sum = 0;
      for (int64_t t = 0; t < T; ++t)
        sum += std::exp(double(extras.sinks[h]) - lse[t * Hq + h]) * delta[t * Hq + h];
      dsinks[h] -= float(sum);
    }
  }

  // Tile of query block qb (head h) x key block kb (kv head g): p (kBlock, kBlock) =
  // exp(s - lse), ds (kBlock, kBlock) = p * (dout v^T - delta), both 0 outside the visible
  // entries (Visible: causal, and within the window) of the first kb.n columns.
  auto tile = [&](float* p, float* ds, const Block& qb, int64_t h, const Block& kb, int64_t g) {
    const float* kh = k + (kb.begin * Hkv + g) * D;
    const float* vh = v + (kb.begin * Hkv + g) * D;
    Tile('N', 'T', qb.n, kb.n, D, scale, q + (qb.begin * Hq + h) * D, Hq * D, kh, Hkv * D, 0.0f, p,
         kBlock);
    Tile('N', 'T', qb.n, kb.n, D, 1.0f, dout + (qb.begin * Hq + h) * D, Hq * D, vh, Hkv * D, 0.0f,
         ds, kBlock);  // dp
    for (int64_t i = 0; i < qb.n; ++i) {
      const int64_t r = (qb.begin + i) * Hq + h;
      const Span c = Visible(qb.begin + i, kb, window);  // may be empty (window)
      float *pi = p + i * kBlock, *dsi = ds + i * kBlock;
      for (int64_t j = c.lo; j < c.hi; ++j) pi[j] = Exp(pi[j] - lse[r]);
      for (int64_t j = c.lo; j < c.hi; ++j) dsi[j] = pi[j] * (dsi[j] - delta[r]);
      for (int64_t j = 0; j < c.lo; ++j) pi[j] = dsi[j] = 0.0f;
      for (int64_t j = c.hi; j < kb.n; ++j) pi[j] = dsi[j] = 0.0f;
    }
  };

  // dk, dv: one item per (key block, kv head); it walks the group's q heads, then the causal
  // query blocks, in order, up to the last one whose first row (the one that reaches furthest
  // back) still sees the block's last key within the window.
  const int64_t kv_items = int64_t(blocks.size()) * Hkv;
#pragma omp parallel
  {
    std::vector<float> p(kBlock * kBlock), ds(kBlock * kBlock);
    std::vector<float> dk_acc(kBlock * D), dv_acc(kBlock * D);  // (kBlock, D)
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < kv_items; ++it) {
      const Block& kb = blocks[it / Hkv];
      const int64_t g = it % Hkv;
      std::fill(dk_acc.begin(), dk_acc.end(), 0.0f);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.0f);
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const int64_t kb_last = kb.begin + kb.n - 1;
        for (int64_t qb0 = kb.begin; qb0 < kb.doc_end && (window == 0 || qb0 - kb_last < window);
             qb0 += kBlock) {
          const Block qb = KeyBlock(kb, qb0);
          tile(p.data(), ds.data(), qb, h, kb, g);
          // dv (kb.n, D) += p^T @ dout block; dk (kb.n, D) += ds^T @ q block.
          Tile('T', 'N', kb.n, D, qb.n, 1.0f, p.data(), kBlock, dout + (qb0 * Hq + h) * D, Hq * D,
               1.0f, dv_acc.data(), D);
          Tile('T', 'N', kb.n, D, qb.n, 1.0f, ds.data(), kBlock, q + (qb0 * Hq + h) * D, Hq * D,
               1.0f, dk_acc.data(), D);
        }
      }
      for (int64_t j = 0; j < kb.n; ++j) {
        const int64_t r = (kb.begin + j) * Hkv + g;
        for (int64_t d = 0; d < D; ++d) {
          dk[r * D + d] = dk_acc[j * D + d] * scale;
          dv[r * D + d] = dv_acc[j * D + d];
        }
      }
    }
  }

  // dq: one item per (query block, q head); it walks its causal key blocks (from the window's
  // first) in order.
  const int64_t q_items = int64_t(blocks.size()) * Hq;
#pragma omp parallel
  {
    std::vector<float> p(kBlock * kBlock), ds(kBlock * kBlock);
    std::vector<float> dq_acc(kBlock * D);  // (kBlock, D)
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < q_items; ++it) {
      const Block& qb = blocks[blocks.size() - 1 - it / Hq];  // late (costly) blocks first
      const int64_t h = it % Hq, g = h / group;
      std::fill(dq_acc.begin(), dq_acc.end(), 0.0f);
      for (int64_t kb0 = FirstKeyBlock(qb, window); kb0 <= qb.begin; kb0 += kBlock) {
        const Block kb = KeyBlock(qb, kb0);
        tile(p.data(), ds.data(), qb, h, kb, g);
        // dq (qb.n, D) += ds @ k block (kb.n, D).
        Tile('N', 'N', qb.n, D, kb.n, 1.0f, ds.data(), kBlock, k + (kb0 * Hkv + g) * D, Hkv * D,
             1.0f, dq_acc.data(), D);
      }
      for (int64_t i = 0; i < qb.n; ++i) {
        const int64_t r = (qb.begin + i) * Hq + h;
        for (int64_t d = 0; d < D; ++d) dq[r * D + d] = dq_acc[i * D + d] * scale;
      }
    }
  }
}

}  // namespace xt::ops
