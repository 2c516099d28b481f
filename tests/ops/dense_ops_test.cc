// Forward against plain references and backward against finite differences for the dense ops:
// gemm/linear, embedding, RMSNorm, RoPE, SwiGLU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "util/testing.h"
#include "xtuner/ops/cpu/fast_exp.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using testing::Dot;
using testing::GradCheck;
using testing::RandomVector;
using testing::RelError;

TEST(Gemm, AllTransposesAgainstNaive) {
  for (auto [M, N, K] : {std::tuple{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {4, 0, 3}}) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        auto a = RandomVector(M * K, 1), b = RandomVector(K * N, 2), c = RandomVector(M * N, 3);
        std::vector<double> ref(M * N);
        for (int i = 0; i < M; ++i)
          for (int j = 0; j < N; ++j) {
            double s = c[i * N + j];  // beta = 1
            for (int p = 0; p < K; ++p)
              s += double(ta ? a[p * M + i] : a[i * K + p]) * (tb ? b[j * K + p] : b[p * N + j]);
            ref[i * N + j] = s;
          }
        ops::gemm(c.data(), a.data(), b.data(), M, N, K, ta, tb, 1.0f);
        EXPECT_LT(RelError(c.data(), ref.data(), M * N), 1e-6) << M << N << K << ta << tb;
      }
    }
  }
}

TEST(Linear, BackwardMatchesFiniteDifferences) {
  const int T = 5, I = 7, O = 3;
  auto x = RandomVector(T * I, 4), w = RandomVector(O * I, 5), r = RandomVector(T * O, 6);
  std::vector<float> out(T * O), dx(T * I), dw(O * I, 0.0f);
  auto loss = [&] {
    ops::linear_forward(out.data(), x.data(), w.data(), T, I, O);
    return Dot(out.data(), r);
  };
  ops::linear_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), T, I, O);
  EXPECT_LT(GradCheck(x, dx, loss), 1e-3);
  EXPECT_LT(GradCheck(w, dw, loss), 1e-3);
  // dw accumulates, din assigns (or accumulates on request).
  std::vector<float> dw2 = dw, dx2 = dx;
  ops::linear_backward(dx2.data(), dw2.data(), r.data(), x.data(), w.data(), T, I, O, true);
  for (int i = 0; i < O * I; ++i) EXPECT_FLOAT_EQ(dw2[i], 2 * dw[i]);
  for (int i = 0; i < T * I; ++i) EXPECT_FLOAT_EQ(dx2[i], 2 * dx[i]);
}

TEST(Embedding, LookupAndScatterWithRepeatedIds) {
  const int V = 6, H = 4, T = 7;
  std::vector<int32_t> ids = {3, 0, 3, 5, 3, 0, 1};
  auto table = RandomVector(V * H, 7);
  std::vector<float> out(T * H), dtable(V * H, 0.0f);
  ops::embedding_forward(out.data(), ids.data(), table.data(), T, H);
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h) EXPECT_EQ(out[t * H + h], table[ids[t] * H + h]);
  auto dout = RandomVector(T * H, 8);
  ops::embedding_backward(dtable.data(), dout.data(), ids.data(), T, V, H);
  for (int v = 0; v < V; ++v)
    for (int h = 0; h < H; ++h) {
      float s = 0;
      for (int t = 0; t < T; ++t)
        if (ids[t] == v) s += dout[t * H + h];
      EXPECT_FLOAT_EQ(dtable[v * H + h], s);
    }
  auto loss = [&] {
    ops::embedding_forward(out.data(), ids.data(), table.data(), T, H);
    return Dot(out.data(), dout);
  };
  EXPECT_LT(GradCheck(table, dtable, loss), 1e-3);
}

TEST(RmsNorm, ForwardAndBackward) {
  for (auto [N, C] : {std::pair{3, 8}, {5, 33}, {1, 3}}) {
    auto x = RandomVector(N * C, 9, 2.0f), w = RandomVector(C, 10), r = RandomVector(N * C, 11);
    std::vector<float> out(N * C), rstd(N), dx(N * C), dw(C, 0.0f);
    const float eps = 1e-6f;
    ops::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    for (int n = 0; n < N; ++n) {
      double ss = 0;
      for (int c = 0; c < C; ++c) ss += double(x[n * C + c]) * x[n * C + c];
      double rr = 1 / std::sqrt(ss / C + eps);
      for (int c = 0; c < C; ++c) EXPECT_NEAR(out[n * C + c], x[n * C + c] * rr * w[c], 1e-5);
    }
    auto loss = [&] {
      ops::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
      return Dot(out.data(), r);
    };
    ops::rmsnorm_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), N, C);
    EXPECT_LT(GradCheck(x, dx, loss, 1e-3), 2e-3) << N << "x" << C;
    EXPECT_LT(GradCheck(w, dw, loss, 1e-3), 2e-3) << N << "x" << C;
  }
}

TEST(Rope, RotationMatchesRotateHalfAndBackwardIsTranspose) {
  const int T = 3, Hn = 2, D = 8, half = D / 2;
  auto x = RandomVector(T * Hn * D, 12), cs = RandomVector(T * half, 13),
       sn = RandomVector(T * half, 14), r = RandomVector(T * Hn * D, 15);
  std::vector<float> y = x;
  ops::rope_forward(y.data(), cs.data(), sn.data(), T, Hn, D);
  // HF: q * cos + rotate_half(q) * sin with cos, sin repeated over both halves.
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < Hn; ++h)
      for (int i = 0; i < D; ++i) {
        const float* v = &x[(t * Hn + h) * D];
        float c = cs[t * half + i % half], s = sn[t * half + i % half];
        float rot = i < half ? -v[i + half] : v[i - half];
        EXPECT_NEAR(y[(t * Hn + h) * D + i], v[i] * c + rot * s, 1e-6);
      }
  auto loss = [&] {
    std::vector<float> z = x;
    ops::rope_forward(z.data(), cs.data(), sn.data(), T, Hn, D);
    return Dot(z.data(), r);
  };
  std::vector<float> dx = r;
  ops::rope_backward(dx.data(), cs.data(), sn.data(), T, Hn, D);
  EXPECT_LT(GradCheck(x, dx, loss), 1e-3);
}

TEST(FastExp, MatchesStdExpAndSaturatesSafely) {
  for (float x = -87.0f; x <= 88.0f; x += 0.013f)
    ASSERT_NEAR(ops::Exp(x), std::exp(x), 5e-7f * std::exp(x)) << x;
  EXPECT_EQ(ops::Exp(-100.0f), 0.0f);
  EXPECT_EQ(ops::Exp(-INFINITY), 0.0f);
  for (float x : {88.5f, 100.0f, 1000.0f, INFINITY}) {
    EXPECT_GT(ops::Exp(x), 1e38f) << x;  // large and positive, never a wrapped exponent
    EXPECT_TRUE(std::isfinite(ops::Exp(x))) << x;
  }
}

TEST(SwiGlu, SaturatesForLargeGates) {
  // One row, I = 4: gates then ups.
  std::vector<float> h = {-100.0f, 100.0f, -1000.0f, 0.5f, 2.0f, 3.0f, 4.0f, 5.0f};
  std::vector<float> out(4), dh(8), dout = {1, 1, 1, 1};
  ops::swiglu_forward(out.data(), h.data(), 1, 4);
  EXPECT_NEAR(out[0], 0.0f, 1e-30f);    // silu(-100) * 2
  EXPECT_FLOAT_EQ(out[1], 100.0f * 3);  // silu(100) * 3
  EXPECT_NEAR(out[2], 0.0f, 1e-30f);
  ops::swiglu_backward(dh.data(), dout.data(), h.data(), 1, 4);
  for (float g : dh) EXPECT_TRUE(std::isfinite(g));
  EXPECT_NEAR(dh[0], 0.0f, 1e-30f);
  EXPECT_FLOAT_EQ(dh[1], 3.0f);  // d silu / dg at 100 is 1, times up
}

TEST(SwiGlu, ForwardAndBackward) {
  const int N = 4, I = 5;
  auto h = RandomVector(N * 2 * I, 16, 3.0f), r = RandomVector(N * I, 17);
  std::vector<float> out(N * I), dh(N * 2 * I);
  ops::swiglu_forward(out.data(), h.data(), N, I);
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < I; ++i) {
      double g = h[n * 2 * I + i], u = h[n * 2 * I + I + i];
      EXPECT_NEAR(out[n * I + i], g / (1 + std::exp(-g)) * u, 1e-5);
    }
  auto loss = [&] {
    ops::swiglu_forward(out.data(), h.data(), N, I);
    return Dot(out.data(), r);
  };
  ops::swiglu_backward(dh.data(), r.data(), h.data(), N, I);
  EXPECT_LT(GradCheck(h, dh, loss, 1e-3), 1e-3);
}

// GPT-OSS's clamped GLU against its formula in double, and its backward against finite
// differences on inputs spread over [-12, 12): about a third of them held by the clamp (limit 7),
// where the gradient must be exactly zero. No input lies within the step of a clamp's kink.
TEST(GptOssGlu, ForwardAndBackward) {
  const int N = 6, I = 7;
  const float alpha = 1.702f, limit = 7.0f;
  auto h = RandomVector(N * 2 * I, 18, 12.0f), r = RandomVector(N * I, 19);
  for (float& x : h)
    if (std::fabs(std::fabs(x) - limit) < 0.05f) x += 0.1f;
  std::vector<float> out(N * I), dh(N * 2 * I);
  ops::gpt_oss_glu_forward(out.data(), h.data(), N, I, alpha, limit);
  int clamped = 0;
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < I; ++i) {
      const double gate = h[n * 2 * I + i], up = h[n * 2 * I + I + i];
      const double g = std::min(gate, 7.0), u = std::clamp(up, -7.0, 7.0);
      clamped += (gate > 7) + (std::fabs(up) > 7);
      EXPECT_NEAR(out[n * I + i], (u + 1) * g / (1 + std::exp(-1.702 * g)),
                  1e-5 * (1 + std::fabs((u + 1) * g)));
    }
  EXPECT_GT(clamped, N * I / 4);
  auto loss = [&] {
    ops::gpt_oss_glu_forward(out.data(), h.data(), N, I, alpha, limit);
    return Dot(out.data(), r);
  };
  ops::gpt_oss_glu_backward(dh.data(), r.data(), h.data(), N, I, alpha, limit);
  EXPECT_LT(GradCheck(h, dh, loss, 1e-3, 1000), 1e-3);
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < I; ++i) {
      if (h[n * 2 * I + i] > limit) {
        EXPECT_EQ(dh[n * 2 * I + i], 0.0f);
      }
      if (std::fabs(h[n * 2 * I + I + i]) > limit) {
        EXPECT_EQ(dh[n * 2 * I + I + i], 0.0f);
      }
    }
}

TEST(Bias, RowsAndExpertsForwardAndBackward) {
  const int64_t O = 70;                                  // more than one strip of columns
  const std::vector<int32_t> offsets = {0, 3, 3, 8, 9};  // expert 1 has no rows
  const int64_t E = 4, A = offsets.back();
  auto b = RandomVector(E * O, 20), dout = RandomVector(A * O, 21);
  std::vector<float> out(A * O, 1.0f);
  ops::grouped_bias_forward(out.data(), b.data(), offsets.data(), E, O);
  std::vector<float> db(E * O, 0.5f);  // accumulates
  ops::grouped_bias_backward(db.data(), dout.data(), offsets.data(), E, O);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t o = 0; o < O; ++o) {
      double sum = 0.5;
      for (int64_t a = offsets[e]; a < offsets[e + 1]; ++a) {
        EXPECT_EQ(out[a * O + o], 1.0f + b[e * O + o]);
        sum += dout[a * O + o];
      }
      EXPECT_NEAR(db[e * O + o], sum, 1e-5) << e << " " << o;
    }
  // One bias for every row.
  std::vector<float> plain(A * O, 0.0f), dplain(O, 0.0f);
  ops::bias_forward(plain.data(), b.data(), A, O);
  ops::bias_backward(dplain.data(), dout.data(), A, O);
  for (int64_t o = 0; o < O; ++o) {
    double sum = 0;
    for (int64_t a = 0; a < A; ++a) {
      EXPECT_EQ(plain[a * O + o], b[o]);
      sum += dout[a * O + o];
    }
    EXPECT_NEAR(dplain[o], sum, 1e-5);
  }
}

}  // namespace
}  // namespace xt
