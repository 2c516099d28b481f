// CUDA packed causal GQA attention (cuda::AttentionForward / AttentionBackward) against its CPU
// twin (ops::attention_forward / attention_backward) on awkward packings (a 1-token document,
// lengths not multiples of 64, empty documents, a 1000-token document, many short documents),
// MHA / GQA / MQA, D = 33, 40, 64, 128, 256, and peaked softmaxes (and GPT-OSS's sinks and
// sliding windows, below); each GPU op run twice (the
// second time on a stream of its own) must give identical bits. Argument checks and T = 0 need
// no GPU; the rest is skipped (label `cuda`) where no GPU is present.
//
// Tolerances, norm-wise: ||got - want|| / max(||want||, floor * sqrt(n)).
//  - out, lse: 1e-5. Both sides are fp32 with different summation orders (oneDNN sgemm blocks
//    vs the GPU's sequential fmaf over D and over 32-key tiles), different online-softmax tile
//    boundaries (64 vs 32 keys: other rescalings) and different exps (the CPU's polynomial Exp,
//    ~2e-7 relative, vs CUDA's expf, <= 2 ulp): each an O(1e-7) relative error per term, growing
//    like sqrt(terms) in the sums (D <= 256, keys <= 1000), so ~1e-6 expected, 10x margin.
//    lse is compared with floor 1 (an absolute error): it enters the backward only as
//    exp(s - lse), where its absolute error is p's relative error, and a one-token document's
//    lse (one score) may sit near 0.
//  - dq, dk, dv: 1e-4. ds = p (dp - delta) subtracts two O(|dout| |v|) numbers whose difference
//    is smaller (delta is dp averaged under p), which amplifies the same rounding differences by
//    that cancellation ratio (10 or so here); floor 1e-2 (the inputs are O(1), so the gradients'
//    elements are O(0.01 .. 1) unless they cancel exactly, as dq and dk of a one-token document,
//    which are rounding noise on both sides).
// The GPU backward is fed the CPU's out and lse, so each comparison sees one op's error only.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "cuda/attention_test_util.h"
#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using attntest::Case;
using attntest::CuSeqlens;
using attntest::ExpectNormNear;
using attntest::ManyShortDocs;
using attntest::Normal;
using attntest::Shape;
using cudatest::DeviceVec;
using cudatest::ExpectBitEqual;

class AttentionCuda : public cudatest::CudaTest<Shape> {};

TEST_P(AttentionCuda, MatchesTheCpuTwinBitForBitTwice) {
  const Case c(GetParam());
  const int64_t T = c.T, nd = c.nd, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
  const float scale = c.scale;
  const std::vector<float>&q = c.q, &k = c.k, &v = c.v, &dout = c.dout, &out = c.out, &lse = c.lse,
        &dq = c.dq, &dk = c.dk, &dv = c.dv;
  const std::vector<int32_t>& cu = c.cu;

  // GPU, outputs prefilled with NaN (they are assigned: nothing of it may leak out).
  const std::vector<float> nan_out(out.size(), NAN), nan_lse(lse.size(), NAN), nan_q(q.size(), NAN),
      nan_kv(k.size(), NAN);
  DeviceVec<float> gq(q), gk(k), gv(v), gdout(dout), gout_cpu(out), glse_cpu(lse);
  DeviceVec<float> gout1(nan_out), glse1(nan_lse), gout2(nan_out), glse2(nan_lse);
  DeviceVec<float> gdq1(nan_q), gdk1(nan_kv), gdv1(nan_kv), gdq2(nan_q), gdk2(nan_kv), gdv2(nan_kv);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);

  Status st = cuda::AttentionForward(gout1.p, glse1.p, gq.p, gk.p, gv.p, cu.data(), nd, T, Hq, Hkv,
                                     D, scale);
  ASSERT_TRUE(st.ok()) << st.message();
  st = cuda::AttentionForward(gout2.p, glse2.p, gq.p, gk.p, gv.p, cu.data(), nd, T, Hq, Hkv, D,
                              scale, stream);
  ASSERT_TRUE(st.ok()) << st.message();
  st = cuda::AttentionBackward(gdq1.p, gdk1.p, gdv1.p, gdout.p, gout_cpu.p, glse_cpu.p, gq.p, gk.p,
                               gv.p, cu.data(), nd, T, Hq, Hkv, D, scale);
  ASSERT_TRUE(st.ok()) << st.message();
  st = cuda::AttentionBackward(gdq2.p, gdk2.p, gdv2.p, gdout.p, gout_cpu.p, glse_cpu.p, gq.p, gk.p,
                               gv.p, cu.data(), nd, T, Hq, Hkv, D, scale, stream);
  ASSERT_TRUE(st.ok()) << st.message();
  cudatest::Sync();
  ASSERT_EQ(cudaStreamDestroy(stream), cudaSuccess);

  const std::vector<float> o1 = gout1.Host(), l1 = glse1.Host(), dq1 = gdq1.Host(),
                           dk1 = gdk1.Host(), dv1 = gdv1.Host();
  ExpectNormNear(o1, out, D, Hq, 1e-5, 0.0, "out");
  ExpectNormNear(l1, lse, 1, Hq, 1e-5, 1.0, "lse");
  ExpectNormNear(dq1, dq, D, Hq, 1e-4, 1e-2, "dq");
  ExpectNormNear(dk1, dk, D, Hkv, 1e-4, 1e-2, "dk");
  ExpectNormNear(dv1, dv, D, Hkv, 1e-4, 1e-2, "dv");

  ExpectBitEqual(gout2.Host(), o1, "out (second run)");
  ExpectBitEqual(glse2.Host(), l1, "lse (second run)");
  ExpectBitEqual(gdq2.Host(), dq1, "dq (second run)");
  ExpectBitEqual(gdk2.Host(), dk1, "dk (second run)");
  ExpectBitEqual(gdv2.Host(), dv1, "dv (second run)");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionCuda,
    ::testing::Values(
        Shape{"OneTokenMqaD64", {1}, 4, 1, 64}, Shape{"OneTokenMhaD128", {1}, 2, 2, 128},
        Shape{"RaggedMhaD64", {1, 63, 65, 200}, 4, 4, 64},
        Shape{"RaggedGqaD128", {1, 63, 65, 200}, 8, 2, 128},
        Shape{"RaggedMqaD40", {65, 1, 200, 63}, 4, 1, 40},
        Shape{"BlockMultiplesWithEmptyDocsD64", {0, 64, 128, 0, 64, 0}, 2, 1, 64},
        Shape{"LongDocGqaD128", {1000}, 4, 1, 128}, Shape{"LongDocMhaD40", {1000}, 2, 2, 40},
        Shape{"ManyShortDocsGqaD64", ManyShortDocs(), 4, 2, 64},
        Shape{"ManyShortDocsMqaD128", ManyShortDocs(), 4, 1, 128},
        Shape{"OddD33Group3", {97, 31, 1}, 3, 1, 33}, Shape{"D256Gqa", {100, 300}, 4, 2, 256},
        Shape{"D1", {70, 5}, 2, 1, 1}, Shape{"PeakedD64", {300, 77}, 4, 2, 64, 4.0f},
        Shape{"PeakedD128", {129}, 2, 1, 128, 3.0f}),
    [](const ::testing::TestParamInfo<Shape>& info) { return info.param.name; });

// GPT-OSS's extras (ops::AttentionExtras): sinks in every softmax's denominator and their
// gradient, and sliding windows (of 1 key, inside a tile, a tile, a held block, longer than a
// document), against the CPU twin with the same tolerances as above (dsinks: a sum over tokens
// of a sink's probability times delta, 1e-4 with floor 1e-2). The GPU backward gets the CPU's
// out and lse, and adds to dsinks (both start at 0.5). Each GPU op runs twice: the second
// forward gives the same bits, and the second backward, with the sinks frozen (no dsinks), the
// same dq, dk and dv bits.
struct ExtrasShape {
  Shape shape;
  int64_t window;
  bool sinks;
};
void PrintTo(const ExtrasShape& e, std::ostream* os) {
  PrintTo(e.shape, os);
  *os << ", window " << e.window << (e.sinks ? ", sinks" : "");
}

class AttentionExtrasCuda : public cudatest::CudaTest<ExtrasShape> {};

TEST_P(AttentionExtrasCuda, MatchesTheCpuTwin) {
  const ExtrasShape& e = GetParam();
  const std::vector<int32_t> cu = CuSeqlens(e.shape.lens);
  const int64_t T = cu.back(), nd = int64_t(e.shape.lens.size());
  const int64_t Hq = e.shape.Hq, Hkv = e.shape.Hkv, D = e.shape.D;
  const float scale = float(1.0 / std::sqrt(double(D)));
  std::mt19937 rng(unsigned(T * 31 + e.window * 7 + Hq));
  const std::vector<float> q = Normal(T * Hq * D, 1, rng), k = Normal(T * Hkv * D, 1, rng),
                           v = Normal(T * Hkv * D, 1, rng), dout = Normal(T * Hq * D, 1, rng),
                           sinks = Normal(Hq, 2, rng);
  const ops::AttentionExtras cpu_x{e.sinks ? sinks.data() : nullptr, e.window};
  std::vector<float> out(T * Hq * D), lse(T * Hq), dq(q.size()), dk(k.size()), dv(v.size());
  std::vector<float> dsinks(Hq, 0.5f);
  ops::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), cu.data(), nd, T, Hq,
                         Hkv, D, scale, cpu_x);
  ops::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(),
                          q.data(), k.data(), v.data(), cu.data(), nd, T, Hq, Hkv, D, scale, cpu_x,
                          dsinks.data());

  DeviceVec<float> gq(q), gk(k), gv(v), gdout(dout), gsinks(sinks), gout_cpu(out), glse_cpu(lse);
  DeviceVec<float> gout(std::vector<float>(out.size(), NAN)), glse(std::vector<float>(Hq * T, NAN));
  DeviceVec<float> gdq(std::vector<float>(q.size(), NAN)), gdk(std::vector<float>(k.size(), NAN)),
      gdv(std::vector<float>(v.size(), NAN)), gdsinks(std::vector<float>(Hq, 0.5f));
  const ops::AttentionExtras gpu_x{e.sinks ? gsinks.p : nullptr, e.window};
  Status st = cuda::AttentionForward(gout.p, glse.p, gq.p, gk.p, gv.p, cu.data(), nd, T, Hq, Hkv, D,
                                     scale, nullptr, gpu_x);
  ASSERT_TRUE(st.ok()) << st.message();
  st =
      cuda::AttentionBackward(gdq.p, gdk.p, gdv.p, gdout.p, gout_cpu.p, glse_cpu.p, gq.p, gk.p,
                              gv.p, cu.data(), nd, T, Hq, Hkv, D, scale, nullptr, gpu_x, gdsinks.p);
  ASSERT_TRUE(st.ok()) << st.message();
  cudatest::Sync();
  ExpectNormNear(gout.Host(), out, D, Hq, 1e-5, 0.0, "out");
  ExpectNormNear(glse.Host(), lse, 1, Hq, 1e-5, 1.0, "lse");
  ExpectNormNear(gdq.Host(), dq, D, Hq, 1e-4, 1e-2, "dq");
  ExpectNormNear(gdk.Host(), dk, D, Hkv, 1e-4, 1e-2, "dk");
  ExpectNormNear(gdv.Host(), dv, D, Hkv, 1e-4, 1e-2, "dv");
  ExpectNormNear(gdsinks.Host(), dsinks, 1, 1, 1e-4, 1e-2, "dsinks");
  if (!e.sinks) {  // no sinks: dsinks untouched
    for (float x : gdsinks.Host()) EXPECT_EQ(x, 0.5f);
  }

  DeviceVec<float> gout2(std::vector<float>(out.size(), NAN)),
      glse2(std::vector<float>(Hq * T, NAN)), gdq2(std::vector<float>(q.size(), NAN)),
      gdk2(std::vector<float>(k.size(), NAN)), gdv2(std::vector<float>(v.size(), NAN));
  st = cuda::AttentionForward(gout2.p, glse2.p, gq.p, gk.p, gv.p, cu.data(), nd, T, Hq, Hkv, D,
                              scale, nullptr, gpu_x);
  ASSERT_TRUE(st.ok()) << st.message();
  st = cuda::AttentionBackward(gdq2.p, gdk2.p, gdv2.p, gdout.p, gout_cpu.p, glse_cpu.p, gq.p, gk.p,
                               gv.p, cu.data(), nd, T, Hq, Hkv, D, scale, nullptr, gpu_x, nullptr);
  ASSERT_TRUE(st.ok()) << st.message();
  cudatest::Sync();
  ExpectBitEqual(gout2.Host(), gout.Host(), "out (second run)");
  ExpectBitEqual(glse2.Host(), glse.Host(), "lse (second run)");
  ExpectBitEqual(gdq2.Host(), gdq.Host(), "dq (second run, frozen sinks)");
  ExpectBitEqual(gdk2.Host(), gdk.Host(), "dk (second run, frozen sinks)");
  ExpectBitEqual(gdv2.Host(), gdv.Host(), "dv (second run, frozen sinks)");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionExtrasCuda,
    ::testing::Values(ExtrasShape{{"RaggedGqaD64", {1, 63, 65, 200}, 4, 2, 64}, 0, true},
                      ExtrasShape{{"RaggedGqaD64", {1, 63, 65, 200}, 4, 2, 64}, 1, true},
                      ExtrasShape{{"RaggedMqaD40", {65, 1, 200, 63}, 4, 1, 40}, 8, false},
                      ExtrasShape{{"RaggedGqaD64", {1, 63, 65, 200}, 4, 2, 64}, 32, true},
                      ExtrasShape{{"RaggedMhaD33", {130, 3, 97}, 2, 2, 33}, 64, true},
                      ExtrasShape{{"LongDocGqaD64", {300}, 8, 2, 64, 3.0f}, 100, true},
                      ExtrasShape{{"LongDocMqaD64", {300}, 4, 1, 64}, 0, true},
                      ExtrasShape{{"ManyShortDocsGqaD64", ManyShortDocs(), 4, 2, 64}, 5, true},
                      ExtrasShape{{"ShortDocsD128", {20, 7}, 2, 1, 128}, 1000, true}),
    [](const ::testing::TestParamInfo<ExtrasShape>& info) {
      return info.param.shape.name + "Window" + std::to_string(info.param.window) +
             (info.param.sinks ? "Sinks" : "");
    });

// T = 0 launches nothing (and so needs no GPU, nor valid device pointers).
TEST(AttentionCudaArgs, ZeroTokensIsANoOp) {
  for (const std::vector<int32_t>& lens : {std::vector<int32_t>{}, std::vector<int32_t>{0, 0}}) {
    const std::vector<int32_t> cu = CuSeqlens(lens);
    const int64_t nd = int64_t(lens.size());
    EXPECT_TRUE(cuda::AttentionForward(nullptr, nullptr, nullptr, nullptr, nullptr, cu.data(), nd,
                                       0, 4, 2, 64, 0.125f)
                    .ok());
    EXPECT_TRUE(cuda::AttentionBackward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                        nullptr, nullptr, nullptr, cu.data(), nd, 0, 4, 2, 64,
                                        0.125f)
                    .ok());
  }
}

// Bad arguments are errors, found before any CUDA call (no GPU needed).
TEST(AttentionCudaArgs, RejectsBadArguments) {
  const std::vector<int32_t> cu{0, 3, 5};
  auto fwd = [](const int32_t* c, int64_t nd, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
    return cuda::AttentionForward(nullptr, nullptr, nullptr, nullptr, nullptr, c, nd, T, Hq, Hkv, D,
                                  1.0f);
  };
  auto bwd = [](const int32_t* c, int64_t nd, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
    return cuda::AttentionBackward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                   nullptr, nullptr, c, nd, T, Hq, Hkv, D, 1.0f);
  };
  for (auto op : {+fwd, +bwd}) {
    EXPECT_FALSE(op(cu.data(), 2, 5, 4, 2, 257).ok()) << "D > 256";
    EXPECT_FALSE(op(cu.data(), 2, 5, 4, 2, 0).ok()) << "D = 0";
    attntest::ExpectRejectsBadShapes(op);
  }
  const ops::AttentionExtras negative{nullptr, -1};
  const Status f = cuda::AttentionForward(nullptr, nullptr, nullptr, nullptr, nullptr, cu.data(), 2,
                                          5, 4, 2, 64, 1.0f, nullptr, negative);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.message().find("window must be >= 0, got -1"), std::string::npos) << f.message();
  EXPECT_FALSE(cuda::AttentionBackward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                       nullptr, nullptr, nullptr, cu.data(), 2, 5, 4, 2, 64, 1.0f,
                                       nullptr, negative)
                   .ok());
}

}  // namespace
}  // namespace xt
