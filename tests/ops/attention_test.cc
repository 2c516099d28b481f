// Packed causal attention (GQA): forward and backward against a naive double-precision reference
// (full score matrix per document), backward against finite differences, packing independence
// and bitwise determinism across runs and thread counts; the same with GPT-OSS's extras (sinks,
// sliding window), which also must vanish when they cannot matter, and the KV-cache forward
// against the packed one.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "util/testing.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using testing::Dot;
using testing::GradCheck;
using testing::RandomVector;
using testing::RelError;

struct Config {
  std::vector<int32_t> lens;  // document lengths (may include 0)
  int64_t Hq, Hkv, D;
  float range;         // inputs uniform in [-range, range)
  int64_t window = 0;  // AttentionExtras::window
  bool sinks = false;  // random sinks (Hq) in [-2, 2)
};

std::vector<int32_t> CuSeqlens(const std::vector<int32_t>& lens) {
  std::vector<int32_t> cu{0};
  for (int32_t n : lens) cu.push_back(cu.back() + n);
  return cu;
}

// Inputs and outputs of one attention call.
struct Case {
  Config c;
  std::vector<int32_t> cu;
  int64_t T, nd;
  float scale;
  std::vector<float> q, k, v, dout;
  std::vector<float> sinks;  // (Hq), or empty
  Case(const Config& cfg, uint64_t seed) : c(cfg), cu(CuSeqlens(cfg.lens)) {
    T = cu.back();
    nd = int64_t(cfg.lens.size());
    scale = 1.0f / std::sqrt(float(cfg.D));
    q = RandomVector(T * c.Hq * c.D, seed, c.range);
    k = RandomVector(T * c.Hkv * c.D, seed + 1, c.range);
    v = RandomVector(T * c.Hkv * c.D, seed + 2, 1.0f);
    dout = RandomVector(T * c.Hq * c.D, seed + 3, 1.0f);
    if (c.sinks) sinks = RandomVector(c.Hq, seed + 4, 2.0f);
  }
  ops::AttentionExtras Extras() const { return {sinks.empty() ? nullptr : sinks.data(), c.window}; }
  void Forward(std::vector<float>& out, std::vector<float>& lse) const {
    out.assign(T * c.Hq * c.D, 0.0f);
    lse.assign(T * c.Hq, 0.0f);
    ops::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), cu.data(), nd, T,
                           c.Hq, c.Hkv, c.D, scale, Extras());
  }
  // dsinks (Hq) starts at kDsinks0 (the op accumulates); left empty without sinks.
  static constexpr float kDsinks0 = 0.25f;
  void Backward(std::vector<float>& dq, std::vector<float>& dk, std::vector<float>& dv,
                const std::vector<float>& out, const std::vector<float>& lse,
                std::vector<float>* dsinks = nullptr) const {
    dq.assign(q.size(), NAN);  // assigned by the op: garbage in must not leak out
    dk.assign(k.size(), NAN);
    dv.assign(v.size(), NAN);
    if (dsinks) dsinks->assign(sinks.size(), kDsinks0);
    ops::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(),
                            q.data(), k.data(), v.data(), cu.data(), nd, T, c.Hq, c.Hkv, c.D, scale,
                            Extras(), dsinks && !sinks.empty() ? dsinks->data() : nullptr);
  }
};

// Naive reference in double: out, lse and (from dout) dq, dk, dv, dsinks, with the case's sinks
// and window. Query t of a document starting at b sees keys max(b, t - window + 1) .. t; the sink
// (a logit with no value) joins the max and the denominator.
struct Reference {
  std::vector<double> out, lse, dq, dk, dv, dsinks;
  explicit Reference(const Case& x) {
    const int64_t Hq = x.c.Hq, Hkv = x.c.Hkv, D = x.c.D, T = x.T;
    out.assign(T * Hq * D, 0);
    lse.assign(T * Hq, 0);
    dq.assign(T * Hq * D, 0);
    dk.assign(T * Hkv * D, 0);
    dv.assign(T * Hkv * D, 0);
    dsinks.assign(x.sinks.size(), 0);
    for (int64_t doc = 0; doc < x.nd; ++doc) {
      const int64_t e = x.cu[doc + 1];
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t g = h / (Hq / Hkv);
        const double sink = x.sinks.empty() ? -INFINITY : x.sinks[h];
        auto Q = [&](int64_t t) { return &x.q[(t * Hq + h) * D]; };
        auto K = [&](int64_t t) { return &x.k[(t * Hkv + g) * D]; };
        auto V = [&](int64_t t) { return &x.v[(t * Hkv + g) * D]; };
        auto dO = [&](int64_t t) { return &x.dout[(t * Hq + h) * D]; };
        for (int64_t t = x.cu[doc]; t < e; ++t) {
          const int64_t b = x.c.window > 0 ? std::max<int64_t>(x.cu[doc], t - x.c.window + 1)
                                           : x.cu[doc];  // first visible key
          std::vector<double> p(t - b + 1), dp(t - b + 1);
          double mx = sink, sum = 0, delta = 0;
          for (int64_t u = b; u <= t; ++u) {
            double s = 0;
            for (int64_t d = 0; d < D; ++d) s += double(Q(t)[d]) * K(u)[d];
            p[u - b] = s * x.scale;
            mx = std::max(mx, p[u - b]);
          }
          for (auto& pi : p) sum += (pi = std::exp(pi - mx));
          sum += std::exp(sink - mx);
          for (auto& pi : p) pi /= sum;
          lse[t * Hq + h] = mx + std::log(sum);
          for (int64_t u = b; u <= t; ++u) {
            for (int64_t d = 0; d < D; ++d) {
              out[(t * Hq + h) * D + d] += p[u - b] * V(u)[d];
              dv[(u * Hkv + g) * D + d] += p[u - b] * dO(t)[d];
              dp[u - b] += double(dO(t)[d]) * V(u)[d];
            }
            delta += p[u - b] * dp[u - b];
          }
          // The sink's probability, times (its dp = 0) - delta.
          if (!x.sinks.empty()) dsinks[h] -= std::exp(sink - lse[t * Hq + h]) * delta;
          for (int64_t u = b; u <= t; ++u) {
            double ds = p[u - b] * (dp[u - b] - delta) * x.scale;
            for (int64_t d = 0; d < D; ++d) {
              dq[(t * Hq + h) * D + d] += ds * K(u)[d];
              dk[(u * Hkv + g) * D + d] += ds * Q(t)[d];
            }
          }
        }
      }
    }
  }
};

// RelError, or the largest magnitude when the reference is exactly zero (e.g. dq of one token).
double Error(const std::vector<float>& a, const std::vector<double>& ref) {
  double ref_norm = 0, max_abs = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ref_norm += ref[i] * ref[i];
    max_abs = std::max(max_abs, double(std::fabs(a[i])));
  }
  return ref_norm > 0 ? RelError(a.data(), ref.data(), int64_t(a.size())) : max_abs;
}

const std::vector<Config>& Configs() {
  static const std::vector<Config> configs = {
      {{1}, 2, 1, 8, 1.0f},                      // a single token
      {{130}, 4, 2, 12, 1.0f},                   // T not a block multiple, D not a multiple of 8
      {{1, 65, 3, 64, 128, 7}, 4, 4, 16, 2.0f},  // many documents, Hkv == Hq
      {{100, 29}, 6, 1, 64, 3.0f},               // Hkv == 1, peaked softmax
      {{0, 5, 0, 70, 0}, 2, 2, 5, 1.0f},         // empty documents
      {{200}, 2, 1, 128, 1.5f},                  // D = 128, several key blocks
  };
  return configs;
}

TEST(Attention, ForwardMatchesNaive) {
  uint64_t seed = 10;
  for (const Config& cfg : Configs()) {
    Case x(cfg, seed += 10);
    Reference ref(x);
    std::vector<float> out, lse;
    x.Forward(out, lse);
    EXPECT_LT(Error(out, ref.out), 1e-5) << x.T << " " << cfg.D;
    EXPECT_LT(Error(lse, ref.lse), 1e-6) << x.T << " " << cfg.D;
  }
}

TEST(Attention, BackwardMatchesNaive) {
  uint64_t seed = 100;
  for (const Config& cfg : Configs()) {
    Case x(cfg, seed += 10);
    Reference ref(x);
    std::vector<float> out, lse, dq, dk, dv;
    x.Forward(out, lse);
    x.Backward(dq, dk, dv, out, lse);
    EXPECT_LT(Error(dq, ref.dq), 1e-4) << x.T << " " << cfg.D;
    EXPECT_LT(Error(dk, ref.dk), 1e-4) << x.T << " " << cfg.D;
    EXPECT_LT(Error(dv, ref.dv), 1e-4) << x.T << " " << cfg.D;
  }
}

TEST(Attention, BackwardMatchesFiniteDifferences) {
  const std::vector<Config> configs = {
      {{5}, 2, 2, 4, 1.0f},
      {{3, 1, 6}, 4, 2, 5, 1.0f},  // GQA, several documents
      {{70}, 2, 1, 3, 1.0f},       // crosses a block boundary, Hkv == 1
  };
  uint64_t seed = 200;
  for (const Config& cfg : configs) {
    Case x(cfg, seed += 10);
    std::vector<float> out, lse, dq, dk, dv;
    x.Forward(out, lse);
    x.Backward(dq, dk, dv, out, lse);  // dout = the loss weights
    auto loss = [&] {
      x.Forward(out, lse);
      return Dot(out.data(), x.dout);
    };
    EXPECT_LT(GradCheck(x.q, dq, loss), 1e-3) << x.T;
    EXPECT_LT(GradCheck(x.k, dk, loss), 1e-3) << x.T;
    EXPECT_LT(GradCheck(x.v, dv, loss), 1e-3) << x.T;
  }
}

// A packed batch gives, bit for bit, what each document gives alone (dsinks aside: its sum over
// the tokens of the batch is rounded differently).
void ExpectPackedEqualsDocumentsAlone(const Case& packed) {
  std::vector<float> out, lse, dq, dk, dv;
  packed.Forward(out, lse);
  packed.Backward(dq, dk, dv, out, lse);
  const int64_t Hq = packed.c.Hq, Hkv = packed.c.Hkv, D = packed.c.D;
  for (size_t doc = 0; doc < packed.c.lens.size(); ++doc) {
    const int64_t b = packed.cu[doc], n = packed.c.lens[doc];
    Case alone({{int32_t(n)}, Hq, Hkv, D, 1.0f, packed.c.window}, 0);
    alone.sinks = packed.sinks;
    auto slice = [&](const std::vector<float>& x, int64_t row) {
      return std::vector<float>(x.begin() + b * row, x.begin() + (b + n) * row);
    };
    alone.q = slice(packed.q, Hq * D);
    alone.k = slice(packed.k, Hkv * D);
    alone.v = slice(packed.v, Hkv * D);
    alone.dout = slice(packed.dout, Hq * D);
    std::vector<float> out1, lse1, dq1, dk1, dv1;
    alone.Forward(out1, lse1);
    alone.Backward(dq1, dk1, dv1, out1, lse1);
    EXPECT_EQ(out1, slice(out, Hq * D)) << doc;
    EXPECT_EQ(lse1, slice(lse, Hq)) << doc;
    EXPECT_EQ(dq1, slice(dq, Hq * D)) << doc;
    EXPECT_EQ(dk1, slice(dk, Hkv * D)) << doc;
    EXPECT_EQ(dv1, slice(dv, Hkv * D)) << doc;
  }
}

TEST(Attention, PackedEqualsDocumentsAlone) {
  ExpectPackedEqualsDocumentsAlone(Case({{70, 1, 130, 64}, 4, 2, 12, 2.0f}, 300));
}

// Same inputs: identical bits across runs and for 1, 2 and 3 threads.
void ExpectDeterministic(const Case& x) {
  const int saved = omp_get_max_threads();
  std::vector<std::vector<float>> first;
  for (int threads : {2, 2, 1, 3}) {
    omp_set_num_threads(threads);
    std::vector<float> out, lse, dq, dk, dv, dsinks;
    x.Forward(out, lse);
    x.Backward(dq, dk, dv, out, lse, &dsinks);
    std::vector<std::vector<float>> got{out, lse, dq, dk, dv, dsinks};
    if (first.empty()) first = got;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].size(), first[i].size());
      EXPECT_EQ(std::memcmp(got[i].data(), first[i].data(), got[i].size() * sizeof(float)), 0)
          << "tensor " << i << " threads " << threads;
    }
  }
  omp_set_num_threads(saved);
}

TEST(Attention, DeterministicAcrossRunsAndThreadCounts) {
  ExpectDeterministic(Case({{300, 1, 77, 150}, 4, 2, 24, 2.0f}, 400));
}

// ---------------------------------------------------------------- sinks and sliding window

// Awkward shapes: empty documents, one token, documents shorter than the window and longer than
// several 64-token blocks; windows of one token, below, at and just over a block, and between
// blocks; every combination of a window and sinks.
std::vector<Config> ExtrasConfigs() {
  std::vector<Config> configs;
  for (int64_t window : {0, 1, 3, 64, 65, 100}) {
    for (bool sinks : {false, true}) {
      if (window == 0 && !sinks) continue;  // the plain case: tested above
      configs.push_back({{0, 1, 5, 70, 200}, 4, 2, 8, 1.5f, window, sinks});
      configs.push_back({{64, 0, 129, 1, 65}, 4, 2, 12, 2.0f, window, sinks});
    }
  }
  return configs;
}

// a - offset, elementwise (dsinks accumulates onto Case::kDsinks0).
std::vector<float> Minus(const std::vector<float>& a, float offset) {
  std::vector<float> r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = a[i] - offset;
  return r;
}

TEST(Attention, ExtrasForwardMatchesNaive) {
  uint64_t seed = 500;
  for (const Config& cfg : ExtrasConfigs()) {
    Case x(cfg, seed += 10);
    Reference ref(x);
    std::vector<float> out, lse;
    x.Forward(out, lse);
    EXPECT_LT(Error(out, ref.out), 1e-5) << cfg.D << " window " << cfg.window << " " << cfg.sinks;
    EXPECT_LT(Error(lse, ref.lse), 1e-6) << cfg.D << " window " << cfg.window << " " << cfg.sinks;
  }
}

TEST(Attention, ExtrasBackwardMatchesNaive) {
  uint64_t seed = 600;
  for (const Config& cfg : ExtrasConfigs()) {
    Case x(cfg, seed += 10);
    Reference ref(x);
    std::vector<float> out, lse, dq, dk, dv, dsinks;
    x.Forward(out, lse);
    x.Backward(dq, dk, dv, out, lse, &dsinks);
    EXPECT_LT(Error(dq, ref.dq), 1e-4) << cfg.D << " window " << cfg.window << " " << cfg.sinks;
    EXPECT_LT(Error(dk, ref.dk), 1e-4) << cfg.D << " window " << cfg.window << " " << cfg.sinks;
    EXPECT_LT(Error(dv, ref.dv), 1e-4) << cfg.D << " window " << cfg.window << " " << cfg.sinks;
    ASSERT_EQ(dsinks.size(), ref.dsinks.size());
    if (cfg.sinks) {
      EXPECT_LT(Error(Minus(dsinks, Case::kDsinks0), ref.dsinks), 1e-4) << cfg.window;
    }
  }
}

TEST(Attention, ExtrasBackwardMatchesFiniteDifferences) {
  const std::vector<Config> configs = {
      {{5}, 2, 2, 4, 1.0f, 2, true},
      {{3, 1, 6}, 4, 2, 5, 1.0f, 3, true},  // GQA, several documents
      {{70}, 2, 1, 3, 1.0f, 65, true},      // the window crosses a block boundary
      {{70}, 2, 1, 3, 1.0f, 4, false},      // rows that see nothing of the first block
  };
  uint64_t seed = 700;
  for (const Config& cfg : configs) {
    Case x(cfg, seed += 10);
    std::vector<float> out, lse, dq, dk, dv, dsinks;
    x.Forward(out, lse);
    x.Backward(dq, dk, dv, out, lse, &dsinks);  // dout = the loss weights
    auto loss = [&] {
      x.Forward(out, lse);
      return Dot(out.data(), x.dout);
    };
    EXPECT_LT(GradCheck(x.q, dq, loss), 1e-3) << x.T << " window " << cfg.window;
    EXPECT_LT(GradCheck(x.k, dk, loss), 1e-3) << x.T << " window " << cfg.window;
    EXPECT_LT(GradCheck(x.v, dv, loss), 1e-3) << x.T << " window " << cfg.window;
    if (cfg.sinks) {
      EXPECT_LT(GradCheck(x.sinks, Minus(dsinks, Case::kDsinks0), loss), 1e-3) << x.T;
    }
  }
}

// A window no shorter than any document, and sinks of -1e30 (exp underflows to exactly 0), change
// no bit of any output; such sinks get a zero gradient.
TEST(Attention, ExtrasThatCannotMatterChangeNothing) {
  for (bool sinks : {false, true}) {
    const Case base({{0, 1, 5, 70, 200}, 4, 2, 12, 1.5f, 0, sinks}, 800);
    std::vector<float> out, lse, dq, dk, dv, dsinks;
    base.Forward(out, lse);
    base.Backward(dq, dk, dv, out, lse, &dsinks);
    for (int64_t window : {200, 201, 1000}) {
      Case x = base;
      x.c.window = window;
      std::vector<float> out1, lse1, dq1, dk1, dv1, dsinks1;
      x.Forward(out1, lse1);
      x.Backward(dq1, dk1, dv1, out1, lse1, &dsinks1);
      EXPECT_EQ(out1, out) << window;
      EXPECT_EQ(lse1, lse) << window;
      EXPECT_EQ(dq1, dq) << window;
      EXPECT_EQ(dk1, dk) << window;
      EXPECT_EQ(dv1, dv) << window;
      EXPECT_EQ(dsinks1, dsinks) << window;
    }
  }
  for (int64_t window : {0, 3, 65}) {
    const Case base({{0, 1, 5, 70, 200}, 4, 2, 12, 1.5f, window, false}, 900);
    std::vector<float> out, lse, dq, dk, dv;
    base.Forward(out, lse);
    base.Backward(dq, dk, dv, out, lse);
    Case x = base;
    x.sinks.assign(x.c.Hq, -1e30f);
    std::vector<float> out1, lse1, dq1, dk1, dv1, dsinks1;
    x.Forward(out1, lse1);
    x.Backward(dq1, dk1, dv1, out1, lse1, &dsinks1);
    EXPECT_EQ(out1, out) << window;
    EXPECT_EQ(lse1, lse) << window;
    EXPECT_EQ(dq1, dq) << window;
    EXPECT_EQ(dk1, dk) << window;
    EXPECT_EQ(dv1, dv) << window;
    EXPECT_EQ(dsinks1, std::vector<float>(x.c.Hq, Case::kDsinks0)) << window;
  }
}

TEST(Attention, ExtrasPackedEqualsDocumentsAlone) {
  ExpectPackedEqualsDocumentsAlone(Case({{70, 1, 130, 64}, 4, 2, 12, 2.0f, 65, true}, 1000));
  ExpectPackedEqualsDocumentsAlone(Case({{70, 1, 130, 64}, 4, 2, 12, 2.0f, 3, true}, 1010));
}

TEST(Attention, ExtrasDeterministicAcrossRunsAndThreadCounts) {
  ExpectDeterministic(Case({{300, 1, 77, 150}, 4, 2, 24, 2.0f, 100, true}, 1100));
}

// Generation over a KV cache (a prefill of `prefill` tokens, then one token at a time) gives the
// packed forward of the whole sequence, with sinks and windows.
TEST(Attention, CachedForwardMatchesPacked) {
  for (int64_t window : {0, 1, 3, 65}) {
    for (bool sinks : {false, true}) {
      for (int64_t prefill : {1, 10}) {  // 1: token by token from past = 0
        const Case x({{150}, 4, 2, 8, 1.5f, window, sinks}, 1200);
        std::vector<float> out, lse;
        x.Forward(out, lse);
        const int64_t Hq = x.c.Hq, Hkv = x.c.Hkv, D = x.c.D, row = Hq * D;
        std::vector<float> gen(out.size(), NAN);
        ops::attention_cached_forward(gen.data(), x.q.data(), x.k.data(), x.v.data(), 0, prefill,
                                      Hq, Hkv, D, x.scale, x.Extras());
        for (int64_t past = prefill; past < x.T; ++past)
          ops::attention_cached_forward(gen.data() + past * row, x.q.data() + past * row,
                                        x.k.data(), x.v.data(), past, 1, Hq, Hkv, D, x.scale,
                                        x.Extras());
        EXPECT_LT(RelError(gen.data(), out.data(), int64_t(out.size())), 1e-6)
            << "window " << window << " sinks " << sinks << " prefill " << prefill;
      }
    }
  }
}

}  // namespace
}  // namespace xt
