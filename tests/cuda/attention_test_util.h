// Helpers of the attention tests (attention_cuda_test.cc, fp32; attention_bf16_cuda_test.cc,
// bf16): the packings and head shapes, random inputs, the CPU twin's results, and a norm-wise
// comparison that names the worst row.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/ops/ops.h"

namespace xt::attntest {

struct Shape {
  std::string name;
  std::vector<int32_t> lens;  // document lengths (0 allowed)
  int64_t Hq, Hkv, D;
  float q_std = 1.0f;  // > 1: peaked softmax
};

// gtest's name for a Shape (in test listings and ctest).
void PrintTo(const Shape& s, std::ostream* os) {
  *os << s.name << " (Hq " << s.Hq << ", Hkv " << s.Hkv << ", D " << s.D << ", " << s.lens.size()
      << " docs)";
}

std::vector<int32_t> CuSeqlens(const std::vector<int32_t>& lens) {
  std::vector<int32_t> cu{0};
  for (int32_t n : lens) cu.push_back(cu.back() + n);
  return cu;
}

std::vector<float> Normal(int64_t n, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// ||got - want|| / max(||want||, floor * sqrt(n)) <= rel, and every row (`row` elements: a
// (token, head); `heads` heads per token) within 10 rel by the same measure: one wrong row
// (a document's end, a partial tile) would hide in the whole's norm (by 1 / sqrt(rows)), not
// in its own. The messages name the worst row.
void ExpectNormNear(const std::vector<float>& got, const std::vector<float>& want, int64_t row,
                    int64_t heads, double rel, double floor, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  if (want.empty()) return;
  double err2 = 0, ref2 = 0, worst = -1;
  int64_t worst_row = 0;
  for (size_t r = 0; r * row < want.size(); ++r) {
    double e2 = 0, w2 = 0;
    for (size_t i = r * row; i < (r + 1) * row; ++i) {
      const double e = double(got[i]) - double(want[i]);
      e2 += e * e;
      w2 += double(want[i]) * double(want[i]);
    }
    err2 += e2;
    ref2 += w2;
    // NaN counts as the worst.
    const double ratio = std::sqrt(e2) / std::max(std::sqrt(w2), floor * std::sqrt(double(row)));
    if (!(ratio <= worst)) {
      worst = std::isnan(ratio) ? std::numeric_limits<double>::infinity() : ratio;
      worst_row = int64_t(r);
    }
  }
  const double denom = std::max(std::sqrt(ref2), floor * std::sqrt(double(want.size())));
  const double got_rel = std::sqrt(err2) / denom;
  EXPECT_TRUE(got_rel <= rel) << what << ": norm-wise relative error " << got_rel << " > " << rel
                              << "; worst row: token " << worst_row / heads << ", head "
                              << worst_row % heads << " (row-wise " << worst << ")";
  EXPECT_TRUE(worst <= 10 * rel) << what << ": row-wise relative error " << worst << " > "
                                 << 10 * rel << " at token " << worst_row / heads << ", head "
                                 << worst_row % heads;
}

// One shape's inputs and the CPU twin's results.
struct Case {
  std::vector<int32_t> cu;
  int64_t T, nd, Hq, Hkv, D;
  float scale;
  std::vector<float> q, k, v, dout, out, lse, dq, dk, dv;

  explicit Case(const Shape& sh)
      : cu(CuSeqlens(sh.lens)),
        T(cu.back()),
        nd(int64_t(sh.lens.size())),
        Hq(sh.Hq),
        Hkv(sh.Hkv),
        D(sh.D),
        scale(float(1.0 / std::sqrt(double(sh.D)))) {  // as model/transformer.cc
    std::mt19937 rng(unsigned(T * 7919 + Hq * 131 + Hkv * 17 + D));
    q = Normal(T * Hq * D, sh.q_std, rng);
    k = Normal(T * Hkv * D, 1, rng);
    v = Normal(T * Hkv * D, 1, rng);
    dout = Normal(T * Hq * D, 1, rng);
    out.resize(T * Hq * D);
    lse.resize(T * Hq);
    dq.resize(q.size());
    dk.resize(k.size());
    dv.resize(v.size());
    ops::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), cu.data(), nd, T,
                           Hq, Hkv, D, scale);
    ops::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(),
                            q.data(), k.data(), v.data(), cu.data(), nd, T, Hq, Hkv, D, scale);
  }
};

std::vector<int32_t> ManyShortDocs() {  // 150 documents of 0 .. 20 tokens, a fixed draw
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int32_t> len(0, 20);
  std::vector<int32_t> lens(150);
  for (int32_t& n : lens) n = len(rng);
  lens[7] = 0;
  lens[8] = 1;
  return lens;
}

// An attention op on (cu_seqlens, num_docs, T, Hq, Hkv, D), the other arguments null.
using AttentionArgsOp = Status (*)(const int32_t* cu, int64_t num_docs, int64_t T, int64_t Hq,
                                   int64_t Hkv, int64_t D);

// The checks of the shared planner (cuda/attention_blocks.h), which every attention op makes
// before any CUDA call: bad head counts, sizes and cu_seqlens are errors (D = 64, valid for all).
inline void ExpectRejectsBadShapes(AttentionArgsOp op) {
  const std::vector<int32_t> cu{0, 3, 5};
  EXPECT_FALSE(op(cu.data(), 2, 5, 6, 4, 64).ok()) << "Hq not a multiple of Hkv";
  EXPECT_FALSE(op(cu.data(), 2, 5, 4, 0, 64).ok()) << "Hkv = 0";
  EXPECT_FALSE(op(cu.data(), 2, 5, 2, 4, 64).ok()) << "Hq < Hkv";
  EXPECT_FALSE(op(cu.data(), 2, -5, 4, 2, 64).ok()) << "negative T";
  EXPECT_FALSE(op(cu.data(), -1, 5, 4, 2, 64).ok()) << "negative num_docs";
  EXPECT_FALSE(op(cu.data(), 2, 6, 4, 2, 64).ok()) << "cu_seqlens not ending at T";
  EXPECT_FALSE(op(nullptr, 2, 5, 4, 2, 64).ok()) << "null cu_seqlens";
  const std::vector<int32_t> off{1, 3, 5}, down{0, 4, 3, 5};
  EXPECT_FALSE(op(off.data(), 2, 5, 4, 2, 64).ok()) << "cu_seqlens not starting at 0";
  EXPECT_FALSE(op(down.data(), 3, 5, 4, 2, 64).ok()) << "decreasing cu_seqlens";
}

}  // namespace xt::attntest
