// bf16 tensor-core packed causal GQA attention (cuda::AttentionForwardBf16 / BackwardBf16)
// against the CPU fp32 twin (ops::attention_forward / attention_backward) on awkward packings
// (a 1-token document, lengths not multiples of 64, empty documents, a 1000-token document, many
// short documents), MHA / GQA / MQA, D = 16, 64, 80, 128 and a peaked softmax; each GPU op run
// twice (the second time on a stream of its own) must give identical bits, and its result must
// differ from the fp32 GPU kernels' (it rounds to bf16: it is not them). Argument checks and
// T = 0 need no GPU; the rest is skipped (label `cuda`) where no GPU is present.
//
// Tolerances, norm-wise: ||got - want|| / max(||want||, floor * sqrt(n)). bf16 keeps 8
// significant bits: rounding to nearest has unit roundoff u = 2^-8 = 3.9e-3 (about u / sqrt(3) =
// 2.3e-3 rms on random data) on each of q, k, v, dout, p and ds; the products accumulate in fp32
// (negligible beside that). The expected errors quoted below were measured with a CPU emulation
// of the kernels' arithmetic (the same tiles, masks and bf16 roundings of the same inputs, sums
// in double) against the CPU twin on exactly these shapes and seeds: the GPU should reproduce
// them up to fp32 summation order. The bounds keep a margin of 2.2x or more over them and stay
// far below what an indexing or masking bug gives (O(1)).
//  - out: 1.5e-2 (floor 0). A score s = scale <q, k> = O(q_std) gets an absolute error of about
//    sqrt(2) 2.3e-3 |s|, which is p's relative error; p and v are rounded once more: a few 1e-3
//    per term. Emulated: 1.5e-3 .. 2.9e-3; 4.5e-3 for the peaked softmax (q_std 3: 3x the
//    scores).
//  - lse: 1e-2, floor 1 (an absolute error, as in the fp32 test): the score error averaged under
//    p. Emulated: <= 2.2e-3 (one-token documents, where lse is one rounded score).
//  - dq, dk: 4e-2, floor 0.2; dv: 4e-2, floor 1e-2. ds = p (dp - delta) subtracts two
//    O(|dout| |v|) numbers whose difference is smaller: dp's bf16 error is amplified by that
//    cancellation, then ds and q or k are rounded again. Emulated: 2.2e-3 .. 5e-3; 9.5e-3 when
//    peaked. The floor 0.2 for dq and dk: a one-token document's dq and dk are 0 in exact
//    arithmetic (p = 1, dp = delta) and rounding noise on the CPU, while here dp = <bf16(dout),
//    bf16(v)> and delta = <bf16(dout), out> (the CPU's out = v) differ by v's rounding: dq gets
//    an absolute noise of ~2.3e-3 scale sqrt(D) = 2.3e-3 rms per element, dk sqrt(group) times
//    that (emulated for OneTokenMqaD64: 1.1e-2 (dq) and 1.8e-2 (dk) of the floor, the tightest
//    case). Real gradient rows are O(0.1 .. 1) (rms 0.11 .. 1.3 here) and an element's terms are
//    O(scale sqrt(D)) = O(1), so the floor does not hide a wrong row. dv's elements are
//    O(p |dout|): never noise.
// The GPU backward is fed the CPU's out and lse, so each comparison sees one op's error only;
// a chained GPU run (the backward on the bf16 forward's own out and lse, as training runs it) is
// checked against the same bounds (emulated: <= 6e-3; 1e-6 for dq, dk of one-token documents,
// where the forward's out is bf16(v) and delta matches dp).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/attention_test_util.h"
#include "cuda/cuda_test_util.h"
#include "xtuner/core/dtype.h"
#include "xtuner/cuda/attention_bf16.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace cuda {
// gtest's name for a kernel family (in failure messages).
void PrintTo(AttentionBf16Kernels k, std::ostream* os) { *os << AttentionBf16KernelsName(k); }
}  // namespace cuda
namespace {

using attntest::Case;
using attntest::CuSeqlens;
using attntest::ExpectNormNear;
using attntest::ManyShortDocs;
using attntest::Shape;
using cudatest::DeviceVec;
using cudatest::ExpectBitEqual;

constexpr double kOutTol = 1.5e-2, kLseTol = 1e-2, kGradTol = 4e-2;
constexpr double kQkFloor = 0.2, kVFloor = 1e-2;

using Param = std::tuple<Shape, cuda::AttentionBf16Kernels>;
// Against the CPU: every shape on both kernel families.
class AttentionBf16Cuda : public cudatest::CudaTest<Param> {};
// The properties of the launchers' shared host path (bf16 copies, argument handling): every shape
// on the wmma kernels, the shapes but the long documents on the mma ones (the emulator runs
// mma.sync slowly: a warp barrier an instruction).
class AttentionBf16CudaPaths : public cudatest::CudaTest<Param> {};
// The FromBf16 functions (inputs already in bf16): a few shapes on both families.
class AttentionBf16CudaInputs : public cudatest::CudaTest<Param> {};

TEST_P(AttentionBf16Cuda, MatchesTheCpuTwinWithinBf16RoundingAndRepeatsBitForBit) {
  const Case c(std::get<0>(GetParam()));
  const cuda::AttentionBf16Kernels kernels = std::get<1>(GetParam());
  const int64_t T = c.T, nd = c.nd, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
  const int32_t* cu = c.cu.data();

  // Outputs prefilled with NaN (they are assigned: nothing of it may leak out).
  const std::vector<float> nan_out(c.out.size(), NAN), nan_lse(c.lse.size(), NAN),
      nan_q(c.q.size(), NAN), nan_kv(c.k.size(), NAN);
  DeviceVec<float> gq(c.q), gk(c.k), gv(c.v), gdout(c.dout), gout_cpu(c.out), glse_cpu(c.lse);
  DeviceVec<float> gout1(nan_out), glse1(nan_lse), gout2(nan_out), glse2(nan_lse);
  DeviceVec<float> gdq1(nan_q), gdk1(nan_kv), gdv1(nan_kv), gdq2(nan_q), gdk2(nan_kv), gdv2(nan_kv);
  DeviceVec<float> gdq3(nan_q), gdk3(nan_kv), gdv3(nan_kv);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);

  Status st = cuda::AttentionForwardBf16(gout1.p, glse1.p, gq.p, gk.p, gv.p, cu, nd, T, Hq, Hkv, D,
                                         c.scale, nullptr, kernels);
  ASSERT_TRUE(st.ok()) << st.message();
  st = cuda::AttentionForwardBf16(gout2.p, glse2.p, gq.p, gk.p, gv.p, cu, nd, T, Hq, Hkv, D,
                                  c.scale, stream, kernels);
  ASSERT_TRUE(st.ok()) << st.message();
  st = cuda::AttentionBackwardBf16(gdq1.p, gdk1.p, gdv1.p, gdout.p, gout_cpu.p, glse_cpu.p, gq.p,
                                   gk.p, gv.p, cu, nd, T, Hq, Hkv, D, c.scale, nullptr, kernels);
  ASSERT_TRUE(st.ok()) << st.message();
  st = cuda::AttentionBackwardBf16(gdq2.p, gdk2.p, gdv2.p, gdout.p, gout_cpu.p, glse_cpu.p, gq.p,
                                   gk.p, gv.p, cu, nd, T, Hq, Hkv, D, c.scale, stream, kernels);
  ASSERT_TRUE(st.ok()) << st.message();
  // Chained: the backward on the bf16 forward's own out and lse (on the default stream, after
  // the forward that wrote them).
  st = cuda::AttentionBackwardBf16(gdq3.p, gdk3.p, gdv3.p, gdout.p, gout1.p, glse1.p, gq.p, gk.p,
                                   gv.p, cu, nd, T, Hq, Hkv, D, c.scale, nullptr, kernels);
  ASSERT_TRUE(st.ok()) << st.message();
  cudatest::Sync();
  ASSERT_EQ(cudaStreamDestroy(stream), cudaSuccess);

  const std::vector<float> o1 = gout1.Host(), l1 = glse1.Host(), dq1 = gdq1.Host(),
                           dk1 = gdk1.Host(), dv1 = gdv1.Host();
  ExpectNormNear(o1, c.out, D, Hq, kOutTol, 0.0, "out");
  ExpectNormNear(l1, c.lse, 1, Hq, kLseTol, 1.0, "lse");
  ExpectNormNear(dq1, c.dq, D, Hq, kGradTol, kQkFloor, "dq");
  ExpectNormNear(dk1, c.dk, D, Hkv, kGradTol, kQkFloor, "dk");
  ExpectNormNear(dv1, c.dv, D, Hkv, kGradTol, kVFloor, "dv");
  ExpectNormNear(gdq3.Host(), c.dq, D, Hq, kGradTol, kQkFloor, "dq (chained)");
  ExpectNormNear(gdk3.Host(), c.dk, D, Hkv, kGradTol, kQkFloor, "dk (chained)");
  ExpectNormNear(gdv3.Host(), c.dv, D, Hkv, kGradTol, kVFloor, "dv (chained)");

  ExpectBitEqual(gout2.Host(), o1, "out (second run)");
  ExpectBitEqual(glse2.Host(), l1, "lse (second run)");
  ExpectBitEqual(gdq2.Host(), dq1, "dq (second run)");
  ExpectBitEqual(gdk2.Host(), dk1, "dk (second run)");
  ExpectBitEqual(gdv2.Host(), dv1, "dv (second run)");
}

// The bf16 kernels round their inputs: their results must differ from the fp32 GPU kernels'
// by about bf16's rounding (norm-wise 1e-3 or more here), far more than the fp32 kernels'
// own error (~1e-6): they do not secretly run the fp32 kernels.
TEST_P(AttentionBf16CudaPaths, DiffersFromTheFp32GpuKernels) {
  const Case c(std::get<0>(GetParam()));
  const cuda::AttentionBf16Kernels kernels = std::get<1>(GetParam());
  const int64_t T = c.T, nd = c.nd, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
  const int32_t* cu = c.cu.data();
  if (T == 0) GTEST_SKIP() << "no tokens";
  DeviceVec<float> gq(c.q), gk(c.k), gv(c.v), gdout(c.dout), gout_cpu(c.out), glse_cpu(c.lse);
  DeviceVec<float> gout_a(c.out), glse_a(c.lse), gout_b(c.out), glse_b(c.lse);
  DeviceVec<float> gdq_a(c.q), gdk_a(c.k), gdv_a(c.v), gdq_b(c.q), gdk_b(c.k), gdv_b(c.v);
  ASSERT_TRUE(cuda::AttentionForwardBf16(gout_a.p, glse_a.p, gq.p, gk.p, gv.p, cu, nd, T, Hq, Hkv,
                                         D, c.scale, nullptr, kernels)
                  .ok());
  ASSERT_TRUE(
      cuda::AttentionForward(gout_b.p, glse_b.p, gq.p, gk.p, gv.p, cu, nd, T, Hq, Hkv, D, c.scale)
          .ok());
  ASSERT_TRUE(cuda::AttentionBackwardBf16(gdq_a.p, gdk_a.p, gdv_a.p, gdout.p, gout_cpu.p,
                                          glse_cpu.p, gq.p, gk.p, gv.p, cu, nd, T, Hq, Hkv, D,
                                          c.scale, nullptr, kernels)
                  .ok());
  ASSERT_TRUE(cuda::AttentionBackward(gdq_b.p, gdk_b.p, gdv_b.p, gdout.p, gout_cpu.p, glse_cpu.p,
                                      gq.p, gk.p, gv.p, cu, nd, T, Hq, Hkv, D, c.scale)
                  .ok());
  cudatest::Sync();
  // out and dv (both O(1) wherever there are tokens; dq and dk of one-token documents are
  // rounding noise, so they are not used here).
  const double out_diff = cudatest::RelErr(gout_a.Host(), gout_b.Host());
  const double dv_diff = cudatest::RelErr(gdv_a.Host(), gdv_b.Host());
  EXPECT_GT(out_diff, 1e-4) << "out of the bf16 kernel equals the fp32 kernel's";
  EXPECT_GT(dv_diff, 1e-4) << "dv of the bf16 kernel equals the fp32 kernel's";
  EXPECT_LT(out_diff, kOutTol);
  EXPECT_LT(dv_diff, kGradTol);
}

// Inputs that are not 16-byte aligned: rounded into the same (aligned) bf16 copies, so the same
// bits.
TEST_P(AttentionBf16CudaPaths, UnalignedInputsGiveTheSameBits) {
  const Case c(std::get<0>(GetParam()));
  const cuda::AttentionBf16Kernels kernels = std::get<1>(GetParam());
  const int64_t T = c.T, nd = c.nd, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
  const int32_t* cu = c.cu.data();
  if (T == 0) GTEST_SKIP() << "no tokens";
  auto shifted = [](const std::vector<float>& v) {  // one float in front: 4-byte aligned only
    std::vector<float> s(v.size() + 1, 0.0f);
    std::copy(v.begin(), v.end(), s.begin() + 1);
    return s;
  };
  DeviceVec<float> gq(c.q), gk(c.k), gv(c.v), gdout(c.dout);
  DeviceVec<float> sq(shifted(c.q)), sk(shifted(c.k)), sv(shifted(c.v)), sdout(shifted(c.dout));
  DeviceVec<float> out_a(c.out), lse_a(c.lse), out_b(c.out), lse_b(c.lse);
  DeviceVec<float> dq_a(c.q), dk_a(c.k), dv_a(c.v), dq_b(c.q), dk_b(c.k), dv_b(c.v);
  ASSERT_TRUE(cuda::AttentionForwardBf16(out_a.p, lse_a.p, gq.p, gk.p, gv.p, cu, nd, T, Hq, Hkv, D,
                                         c.scale, nullptr, kernels)
                  .ok());
  ASSERT_TRUE(cuda::AttentionForwardBf16(out_b.p, lse_b.p, sq.p + 1, sk.p + 1, sv.p + 1, cu, nd, T,
                                         Hq, Hkv, D, c.scale, nullptr, kernels)
                  .ok());
  ASSERT_TRUE(cuda::AttentionBackwardBf16(dq_a.p, dk_a.p, dv_a.p, gdout.p, out_a.p, lse_a.p, gq.p,
                                          gk.p, gv.p, cu, nd, T, Hq, Hkv, D, c.scale, nullptr,
                                          kernels)
                  .ok());
  ASSERT_TRUE(cuda::AttentionBackwardBf16(dq_b.p, dk_b.p, dv_b.p, sdout.p + 1, out_a.p, lse_a.p,
                                          sq.p + 1, sk.p + 1, sv.p + 1, cu, nd, T, Hq, Hkv, D,
                                          c.scale, nullptr, kernels)
                  .ok());
  cudatest::Sync();
  ExpectBitEqual(out_b.Host(), out_a.Host(), "out (unaligned inputs)");
  ExpectBitEqual(lse_b.Host(), lse_a.Host(), "lse (unaligned inputs)");
  ExpectBitEqual(dq_b.Host(), dq_a.Host(), "dq (unaligned inputs)");
  ExpectBitEqual(dk_b.Host(), dk_a.Host(), "dk (unaligned inputs)");
  ExpectBitEqual(dv_b.Host(), dv_a.Host(), "dv (unaligned inputs)");
}

// Inputs already in bf16 (the model keeps q, k, v and the attention's output rounded): the
// FromBf16 functions give the bits the fp32 ones give on the values they round to (out: on its
// rounded value, which is what the bf16 one reads), with no copies of their own; inputs that are
// not 16-byte aligned (2 bytes off) give the same bits too.
TEST_P(AttentionBf16CudaInputs, Bf16InputsGiveTheBitsOfTheirValues) {
  const Case c(std::get<0>(GetParam()));
  const cuda::AttentionBf16Kernels kernels = std::get<1>(GetParam());
  const int64_t T = c.T, nd = c.nd, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
  const int32_t* cu = c.cu.data();
  auto round = [](const std::vector<float>& v) {
    std::vector<uint16_t> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[i] = F32ToBf16(v[i]);
    return r;
  };
  auto shifted = [](std::vector<uint16_t> v) {  // one element in front: 2-byte aligned only
    v.insert(v.begin(), uint16_t(0));
    return v;
  };
  DeviceVec<float> gq(c.q), gk(c.k), gv(c.v), gdout(c.dout);
  DeviceVec<uint16_t> gq16(round(c.q)), gk16(round(c.k)), gv16(round(c.v));
  DeviceVec<uint16_t> sq16(shifted(round(c.q))), sk16(shifted(round(c.k))),
      sv16(shifted(round(c.v)));
  DeviceVec<float> out_a(c.out), lse_a(c.lse), out_b(c.out), lse_b(c.lse), out_c(c.out),
      lse_c(c.lse);
  DeviceVec<float> dq_a(c.q), dk_a(c.k), dv_a(c.v), dq_b(c.q), dk_b(c.k), dv_b(c.v);
  DeviceVec<float> dq_c(c.q), dk_c(c.k), dv_c(c.v);
  ASSERT_TRUE(cuda::AttentionForwardBf16(out_a.p, lse_a.p, gq.p, gk.p, gv.p, cu, nd, T, Hq, Hkv, D,
                                         c.scale, nullptr, kernels)
                  .ok());
  ASSERT_TRUE(cuda::AttentionForwardFromBf16(out_b.p, lse_b.p, gq16.p, gk16.p, gv16.p, cu, nd, T,
                                             Hq, Hkv, D, c.scale, nullptr, kernels)
                  .ok());
  ASSERT_TRUE(cuda::AttentionForwardFromBf16(out_c.p, lse_c.p, sq16.p + 1, sk16.p + 1, sv16.p + 1,
                                             cu, nd, T, Hq, Hkv, D, c.scale, nullptr, kernels)
                  .ok());
  cudatest::Sync();
  const std::vector<float> out = out_a.Host();
  ExpectBitEqual(out_b.Host(), out, "out (bf16 inputs)");
  ExpectBitEqual(lse_b.Host(), lse_a.Host(), "lse (bf16 inputs)");
  ExpectBitEqual(out_c.Host(), out, "out (unaligned bf16 inputs)");
  ExpectBitEqual(lse_c.Host(), lse_a.Host(), "lse (unaligned bf16 inputs)");
  const std::vector<uint16_t> out16 = round(out);
  std::vector<float> out_widened(out16.size());
  for (size_t i = 0; i < out16.size(); ++i) out_widened[i] = Bf16ToF32(out16[i]);
  DeviceVec<uint16_t> gout16(out16);
  DeviceVec<float> gout(out_widened);
  ASSERT_TRUE(cuda::AttentionBackwardBf16(dq_a.p, dk_a.p, dv_a.p, gdout.p, gout.p, lse_a.p, gq.p,
                                          gk.p, gv.p, cu, nd, T, Hq, Hkv, D, c.scale, nullptr,
                                          kernels)
                  .ok());
  ASSERT_TRUE(cuda::AttentionBackwardFromBf16(dq_b.p, dk_b.p, dv_b.p, gdout.p, gout16.p, lse_a.p,
                                              gq16.p, gk16.p, gv16.p, cu, nd, T, Hq, Hkv, D,
                                              c.scale, nullptr, kernels)
                  .ok());
  ASSERT_TRUE(cuda::AttentionBackwardFromBf16(dq_c.p, dk_c.p, dv_c.p, gdout.p, gout16.p, lse_a.p,
                                              sq16.p + 1, sk16.p + 1, sv16.p + 1, cu, nd, T, Hq,
                                              Hkv, D, c.scale, nullptr, kernels)
                  .ok());
  cudatest::Sync();
  ExpectBitEqual(dq_c.Host(), dq_a.Host(), "dq (unaligned bf16 inputs)");
  ExpectBitEqual(dk_c.Host(), dk_a.Host(), "dk (unaligned bf16 inputs)");
  ExpectBitEqual(dv_c.Host(), dv_a.Host(), "dv (unaligned bf16 inputs)");
  ExpectBitEqual(dq_b.Host(), dq_a.Host(), "dq (bf16 inputs)");
  ExpectBitEqual(dk_b.Host(), dk_a.Host(), "dk (bf16 inputs)");
  ExpectBitEqual(dv_b.Host(), dv_a.Host(), "dv (bf16 inputs)");
}

const std::vector<Shape> kShapes = {
    Shape{"OneTokenMqaD64", {1}, 4, 1, 64},
    Shape{"OneTokenMhaD128", {1}, 2, 2, 128},
    Shape{"Cu0_1_65_200GqaD64", {1, 64, 135}, 4, 2, 64},
    Shape{"RaggedMhaD64", {1, 63, 65, 200}, 4, 4, 64},
    Shape{"RaggedGqaD128", {1, 63, 65, 200}, 8, 2, 128},
    Shape{"RaggedMqaD128", {65, 1, 200, 63}, 8, 1, 128},
    Shape{"BlockMultiplesWithEmptyDocsD64", {0, 64, 128, 0, 64, 0}, 2, 1, 64},
    Shape{"ManyShortDocsGqaD64", ManyShortDocs(), 4, 2, 64},
    Shape{"ManyShortDocsMqaD128", ManyShortDocs(), 8, 1, 128},
    Shape{"D80Group3", {97, 31, 1}, 3, 1, 80},
    Shape{"D16", {70, 5}, 2, 1, 16},
    Shape{"PeakedD64", {300, 77}, 4, 2, 64, 3.0f},
    Shape{"PeakedD128", {129}, 2, 1, 128, 3.0f}};
const std::vector<Shape> kLongShapes = {Shape{"LongDocGqaD128", {1000}, 4, 1, 128},
                                        Shape{"LongDocMhaD64", {1000}, 2, 2, 64}};
std::vector<Shape> AllShapes() {
  std::vector<Shape> all = kShapes;
  all.insert(all.end(), kLongShapes.begin(), kLongShapes.end());
  return all;
}
std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return std::get<0>(info.param).name + "_" +
         cuda::AttentionBf16KernelsName(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionBf16Cuda,
                         ::testing::Combine(::testing::ValuesIn(AllShapes()),
                                            ::testing::Values(cuda::AttentionBf16Kernels::kWmma,
                                                              cuda::AttentionBf16Kernels::kMma)),
                         ParamName);
INSTANTIATE_TEST_SUITE_P(Wmma, AttentionBf16CudaPaths,
                         ::testing::Combine(::testing::ValuesIn(AllShapes()),
                                            ::testing::Values(cuda::AttentionBf16Kernels::kWmma)),
                         ParamName);
INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionBf16CudaInputs,
    ::testing::Combine(
        ::testing::Values(Shape{"Cu0_1_65_200GqaD64", {1, 64, 135}, 4, 2, 64},
                          Shape{"RaggedMqaD128", {65, 1, 200, 63}, 8, 1, 128},
                          Shape{"D80Group3", {97, 31, 1}, 3, 1, 80}, Shape{"Empty", {0}, 2, 1, 64}),
        ::testing::Values(cuda::AttentionBf16Kernels::kWmma, cuda::AttentionBf16Kernels::kMma)),
    ParamName);
INSTANTIATE_TEST_SUITE_P(Mma, AttentionBf16CudaPaths,
                         ::testing::Combine(::testing::ValuesIn(kShapes),
                                            ::testing::Values(cuda::AttentionBf16Kernels::kMma)),
                         ParamName);

TEST(AttentionBf16CudaArgs, SupportsMultiplesOf16UpTo128) {
  for (int64_t D : {16, 32, 64, 80, 96, 128}) EXPECT_TRUE(cuda::AttentionBf16Supports(D)) << D;
  for (int64_t D : {-16, 0, 1, 8, 40, 72, 144, 256}) EXPECT_FALSE(cuda::AttentionBf16Supports(D));
}

// T = 0 launches nothing (and so needs no GPU, nor valid device pointers).
TEST(AttentionBf16CudaArgs, ZeroTokensIsANoOp) {
  for (const std::vector<int32_t>& lens : {std::vector<int32_t>{}, std::vector<int32_t>{0, 0}}) {
    const std::vector<int32_t> cu = CuSeqlens(lens);
    const int64_t nd = int64_t(lens.size());
    Status st = cuda::AttentionForwardBf16(nullptr, nullptr, nullptr, nullptr, nullptr, cu.data(),
                                           nd, 0, 4, 2, 64, 0.125f);
    EXPECT_TRUE(st.ok()) << st.message();
    st = cuda::AttentionBackwardBf16(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                     nullptr, nullptr, cu.data(), nd, 0, 4, 2, 128, 0.125f);
    EXPECT_TRUE(st.ok()) << st.message();
  }
}

// Bad arguments are errors, found before any CUDA call (no GPU needed).
TEST(AttentionBf16CudaArgs, RejectsBadArguments) {
  const std::vector<int32_t> cu{0, 3, 5};
  auto fwd = [](const int32_t* c, int64_t nd, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
    return cuda::AttentionForwardBf16(nullptr, nullptr, nullptr, nullptr, nullptr, c, nd, T, Hq,
                                      Hkv, D, 1.0f);
  };
  auto bwd = [](const int32_t* c, int64_t nd, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
    return cuda::AttentionBackwardBf16(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                       nullptr, nullptr, nullptr, c, nd, T, Hq, Hkv, D, 1.0f);
  };
  for (auto op : {+fwd, +bwd}) {
    EXPECT_FALSE(op(cu.data(), 2, 5, 4, 2, 144).ok()) << "D > 128";
    EXPECT_FALSE(op(cu.data(), 2, 5, 4, 2, 256).ok()) << "D = 256";
    EXPECT_FALSE(op(cu.data(), 2, 5, 4, 2, 40).ok()) << "D not a multiple of 16";
    EXPECT_FALSE(op(cu.data(), 2, 5, 4, 2, 8).ok()) << "D = 8";
    EXPECT_FALSE(op(cu.data(), 2, 5, 4, 2, 0).ok()) << "D = 0";
    EXPECT_FALSE(op(cu.data(), 2, 5, 4, 2, -64).ok()) << "negative D";
    attntest::ExpectRejectsBadShapes(op);
  }
}

}  // namespace
}  // namespace xt
