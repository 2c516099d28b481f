// xtuner's grouped bf16 GEMM kernel (cuda::GroupedGemmBf16: the experts' products in one
// launch) against a double-precision product of the same bf16 operands, on awkward groupings
// (experts without rows, one row, rows not a multiple of the 128-row tile, one expert with every
// row) and dims that are multiples of 8 but not of the tile or the 32-wide k step, or an odd
// output width; kWeight adds to what c holds; each run twice gives the same bits. Bad arguments
// are errors before any launch (no GPU needed); the rest is skipped (label `cuda`) where no GPU
// is present.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/grouped_gemm_bf16.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

// Random values rounded to bf16: the bits (for the device) and their values (for the reference).
struct Bf16Matrix {
  std::vector<uint16_t> bits;
  std::vector<float> values;
  Bf16Matrix(int64_t n, unsigned seed) : bits(std::max<int64_t>(n, 1)), values(n) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (int64_t i = 0; i < n; ++i) {
      const __nv_bfloat16 h = __float2bfloat16_rn(dist(rng));
      bits[i] = __bfloat16_as_ushort(h);
      values[i] = __bfloat162float(h);
    }
  }
};

// Norm-wise relative difference.
double RelErr(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

struct Case {
  std::string name;
  std::vector<int32_t> rows;  // per expert
  int64_t M, N, K;            // M: kWeight's; K: kForward's and kData's
};

// gtest's name for a Case (in failure messages).
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name << " (" << c.rows.size() << " experts, M " << c.M << ", N " << c.N << ", K " << c.K
      << ")";
}

std::vector<int32_t> Offsets(const std::vector<int32_t>& rows) {
  std::vector<int32_t> off(rows.size() + 1, 0);
  for (size_t e = 0; e < rows.size(); ++e) off[e + 1] = off[e] + rows[e];
  return off;
}

class GroupedGemmBf16Cuda : public cudatest::CudaTest<Case> {};

TEST_P(GroupedGemmBf16Cuda, MatchesADoubleProductAndRepeatsBitForBit) {
  const Case& c = GetParam();
  const std::vector<int32_t> off = Offsets(c.rows);
  const int64_t E = int64_t(c.rows.size()), R = off[E];
  // kWeight twice: adding into c, and assigning it (c starts as NaN: it must not be read, and
  // experts without rows must come out zero).
  const std::pair<cuda::GroupedOp, bool> variants[] = {{cuda::GroupedOp::kForward, false},
                                                       {cuda::GroupedOp::kData, false},
                                                       {cuda::GroupedOp::kWeight, true},
                                                       {cuda::GroupedOp::kWeight, false}};
  for (const auto& [op, add] : variants) {
    const bool weight = op == cuda::GroupedOp::kWeight;
    if (!cuda::GroupedGemmBf16Supports(op, c.M, c.N, c.K)) {  // only OddN: kForward alone
      EXPECT_EQ(c.N % 2, 1) << c.name;
      continue;
    }
    const std::string what = c.name + (op == cuda::GroupedOp::kForward ? " forward"
                                       : op == cuda::GroupedOp::kData  ? " data"
                                       : add                           ? " weight"
                                                                       : " weight assigned");
    // Shapes: a (R, K) or, for kWeight, (R, M); b (E, N, K), (E, K, N) or (R, N); c (R, N) or
    // (E, M, N).
    const int64_t a_cols = weight ? c.M : c.K;
    const int64_t b_size = weight ? R * c.N : E * c.N * c.K;
    const int64_t c_size = weight ? E * c.M * c.N : R * c.N;
    const Bf16Matrix a(R * a_cols, 1), b(b_size, 2);
    std::vector<float> c0(std::max<int64_t>(c_size, 1), 0.0f);
    std::mt19937 rng(3);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    if (weight)  // kWeight adds to it, or must not read it
      for (int64_t i = 0; i < c_size; ++i) c0[i] = add ? dist(rng) : std::nanf("");
    std::vector<double> want(c_size);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t r0 = off[e], rows = off[e + 1] - off[e];
      if (!weight) {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t n = 0; n < c.N; ++n) {
            double s = 0;
            for (int64_t k = 0; k < c.K; ++k) {
              const double bv = op == cuda::GroupedOp::kForward ? b.values[(e * c.N + n) * c.K + k]
                                                                : b.values[(e * c.K + k) * c.N + n];
              s += double(a.values[(r0 + r) * c.K + k]) * bv;
            }
            want[(r0 + r) * c.N + n] = s;
          }
      } else {
        for (int64_t m = 0; m < c.M; ++m)
          for (int64_t n = 0; n < c.N; ++n) {
            double s = add ? c0[(e * c.M + m) * c.N + n] : 0.0;
            for (int64_t r = 0; r < rows; ++r)
              s += double(a.values[(r0 + r) * c.M + m]) * b.values[(r0 + r) * c.N + n];
            want[(e * c.M + m) * c.N + n] = s;
          }
      }
    }
    DeviceVec<uint16_t> da(a.bits), db(b.bits);
    DeviceVec<float> dc1(c0), dc2(c0);
    for (DeviceVec<float>* out : {&dc1, &dc2}) {
      const Status st =
          cuda::GroupedGemmBf16(op, out->p, da.p, db.p, off.data(), E, c.M, c.N, c.K, nullptr, add);
      ASSERT_TRUE(st.ok()) << what << ": " << st.message();
    }
    cudatest::Sync();
    const std::vector<float> got = dc1.Host();
    // fp32 sums of up to a few hundred exact products of O(1) terms: ~1e-7 sqrt(K) relative.
    EXPECT_LT(RelErr(std::vector<float>(got.begin(), got.begin() + c_size), want), 1e-5) << what;
    cudatest::ExpectBitEqual(dc2.Host(), got, what.c_str());
  }
}

INSTANTIATE_TEST_SUITE_P(
    Groupings, GroupedGemmBf16Cuda,
    ::testing::Values(
        // Experts without rows, one row, 129 (a tile and one), 40; dims below one tile.
        Case{"RaggedSmallDims", {0, 1, 129, 40, 0}, 24, 40, 56},
        // Dims above a tile and not a multiple of it, nor of the 32-wide k step.
        Case{"RaggedOddTiles", {70, 0, 200}, 136, 144, 200},
        // One expert with every row (the others empty).
        Case{"OneExpertHasAll", {0, 300, 0, 0}, 64, 128, 96},
        // No rows at all: c untouched (zeros where kWeight assigns).
        Case{"NoRows", {0, 0}, 16, 16, 16},
        // An odd N (kForward only: its output rows are not 8-byte pairs).
        Case{"OddN", {5, 130}, 16, 37, 24}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// Bad arguments are errors, found before any CUDA call (no GPU needed: null device pointers).
TEST(GroupedGemmBf16CudaArgs, RejectsBadArguments) {
  const std::vector<int32_t> off{0, 3, 5};
  alignas(16) static const uint16_t aligned[8] = {};
  const void* p = aligned;
  auto run = [&](cuda::GroupedOp op, const int32_t* o, int64_t E, int64_t M, int64_t N, int64_t K,
                 const void* a) {
    return cuda::GroupedGemmBf16(op, nullptr, a, p, o, E, M, N, K, nullptr);
  };
  EXPECT_FALSE(run(cuda::GroupedOp::kForward, off.data(), 2, 0, 16, 12, p).ok());  // K % 8
  EXPECT_FALSE(run(cuda::GroupedOp::kData, off.data(), 2, 0, 12, 16, p).ok());     // N % 8
  EXPECT_FALSE(run(cuda::GroupedOp::kWeight, off.data(), 2, 12, 16, 0, p).ok());   // M % 8
  EXPECT_FALSE(run(cuda::GroupedOp::kForward, off.data(), 2, 0, 0, 16, p).ok());   // N = 0
  const std::vector<int32_t> down{0, 3, 2};
  EXPECT_FALSE(run(cuda::GroupedOp::kForward, down.data(), 2, 0, 16, 16, p).ok());
  const std::vector<int32_t> late{1, 3, 5};
  EXPECT_FALSE(run(cuda::GroupedOp::kForward, late.data(), 2, 0, 16, 16, p).ok());
  EXPECT_FALSE(  // a misaligned operand
      run(cuda::GroupedOp::kForward, off.data(), 2, 0, 16, 16, aligned + 1).ok());
  EXPECT_TRUE(cuda::GroupedGemmBf16Supports(cuda::GroupedOp::kForward, 0, 2048, 768));
  EXPECT_TRUE(cuda::GroupedGemmBf16Supports(cuda::GroupedOp::kWeight, 768, 2048, 0));
  EXPECT_FALSE(cuda::GroupedGemmBf16Supports(cuda::GroupedOp::kData, 0, 17, 16));
}

}  // namespace
}  // namespace xt
