// FP8 block-quantized checkpoints: the 8-bit float decodings, the dequantization of a weight
// (partial blocks, every scale dtype), a clear error for each way an FP8 checkpoint can be wrong,
// and quantization_config's parsing. fixture_parity_test holds whole FP8 checkpoints to
// transformers' own FP8 load.
#include "xtuner/model/fp8_weights.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "util/fixture_files.h"
#include "util/testing.h"
#include "xtuner/core/dtype.h"
#include "xtuner/core/json.h"
#include "xtuner/model/checkpoint.h"

namespace xt {
namespace {

using nlohmann::json;

// A tensor of any safetensors dtype, as raw little-endian bytes.
struct Raw {
  std::string name, dtype;
  Shape shape;
  std::string bytes;
};

template <typename T>
std::string Bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

void WriteRaw(const std::string& path, const std::vector<Raw>& tensors) {
  json header = json::object();
  std::string data;
  for (const Raw& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  std::string h = DumpJson(header);
  uint64_t n = h.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << h << data;
}

ModelConfig Fp8Config(int64_t bm, int64_t bn) {
  ModelConfig c;
  c.fp8_weights = true;
  c.fp8_block[0] = bm;
  c.fp8_block[1] = bn;
  return c;
}

Result<Tensor> Read(const std::vector<Raw>& tensors, const std::string& name, const Shape& shape,
                    const ModelConfig& cfg) {
  const std::string path = testing::TempDir("fp8") + "/model.safetensors";
  WriteRaw(path, tensors);
  auto ckpt = SafetensorsCheckpoint::Open(path);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status().message();
  if (!ckpt.ok()) return ckpt.status();
  return ReadWeightF32(*ckpt, name, shape, cfg);
}

void ExpectError(const Result<Tensor>& r, std::initializer_list<const char*> parts) {
  ASSERT_FALSE(r.ok()) << "expected an error mentioning " << *parts.begin();
  for (const char* p : parts)
    EXPECT_NE(r.status().message().find(p), std::string::npos)
        << "message lacks \"" << p << "\": " << r.status().message();
}

TEST(Fp8, E4m3DecodesTheFormatsLandmarks) {
  EXPECT_EQ(Fp8E4m3ToF32(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(Fp8E4m3ToF32(0x80)));
  EXPECT_EQ(Fp8E4m3ToF32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(Fp8E4m3ToF32(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(Fp8E4m3ToF32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(Fp8E4m3ToF32(0x38), 1.0f);
  EXPECT_EQ(Fp8E4m3ToF32(0x3c), 1.5f);
  EXPECT_EQ(Fp8E4m3ToF32(0x40), 2.0f);
  EXPECT_EQ(Fp8E4m3ToF32(0x78), 256.0f);  // exponent 15 is a normal exponent (no infinities)
  EXPECT_EQ(Fp8E4m3ToF32(0x7e), 448.0f);  // the largest
  EXPECT_EQ(Fp8E4m3ToF32(0xfe), -448.0f);
  EXPECT_EQ(Fp8E4m3ToF32(0xb8), -1.0f);
  EXPECT_TRUE(std::isnan(Fp8E4m3ToF32(0x7f)));
  EXPECT_TRUE(std::isnan(Fp8E4m3ToF32(0xff)));
  // Codes 0..0x7e are the non-negative values in increasing order, and the sign bit negates.
  for (int b = 1; b < 0x7f; ++b) {
    EXPECT_LT(Fp8E4m3ToF32(uint8_t(b - 1)), Fp8E4m3ToF32(uint8_t(b))) << b;
    EXPECT_EQ(Fp8E4m3ToF32(uint8_t(b | 0x80)), -Fp8E4m3ToF32(uint8_t(b))) << b;
  }
}

TEST(Fp8, E8m0IsAPowerOfTwo) {
  EXPECT_EQ(Fp8E8m0ToF32(127), 1.0f);
  EXPECT_EQ(Fp8E8m0ToF32(128), 2.0f);
  EXPECT_EQ(Fp8E8m0ToF32(120), 1.0f / 128);
  EXPECT_EQ(Fp8E8m0ToF32(0), std::ldexp(1.0f, -127));
  EXPECT_EQ(Fp8E8m0ToF32(254), std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isnan(Fp8E8m0ToF32(255)));
}

// A [5, 7] weight in blocks of 2 x 3: a 3 x 3 grid whose last row and column are partial.
// Every scale is distinct, so a code multiplied by the wrong block's scale shows.
struct Partial {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  Partial() {
    for (int i = 0; i < 35; ++i)
      codes.push_back(uint8_t((i * 37 + 11) % 0x7f) | (i % 3 ? 0 : 0x80));
    for (int i = 0; i < 9; ++i) scales.push_back(std::ldexp(1.0f + i / 16.0f, i - 4));
  }
  float Want(int r, int c) const {
    return Fp8E4m3ToF32(codes[r * 7 + c]) * scales[(r / 2) * 3 + c / 3];
  }
};

TEST(Fp8, DequantizesPartialBlocksWithTheirOwnScale) {
  Partial p;
  auto w = Read({{"w.weight", "F8_E4M3", {5, 7}, Bytes(p.codes)},
                 {"w.weight_scale_inv", "F32", {3, 3}, Bytes(p.scales)}},
                "w.weight", {5, 7}, Fp8Config(2, 3));
  ASSERT_TRUE(w.ok()) << w.status().message();
  for (int r = 0; r < 5; ++r)
    for (int c = 0; c < 7; ++c) EXPECT_EQ(w->f32()[r * 7 + c], p.Want(r, c)) << r << "," << c;
  // Spot checks written out: the corner element is in the last, partial block (scale 8 of 9).
  EXPECT_EQ(w->f32()[4 * 7 + 6], Fp8E4m3ToF32(p.codes[34]) * p.scales[8]);
  EXPECT_EQ(w->f32()[1 * 7 + 3], Fp8E4m3ToF32(p.codes[10]) * p.scales[1]);
}

// deepseek-ai/DeepSeek-V3's kv_a_proj_with_mqa.weight is [576, 7168] F8_E4M3 with a [5, 56]
// weight_scale_inv: 576 rows in blocks of 128, the fifth block 64 rows. Its shape here, narrowed
// to 256 columns.
TEST(Fp8, TheHubsKvAProjectionHasAHalfBlock) {
  std::vector<uint8_t> codes(576 * 256);
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = uint8_t(0x30 + i % 16);  // 0.5 .. 0.94
  std::vector<float> scales(5 * 2);
  for (int i = 0; i < 10; ++i) scales[i] = 1.0f + i;
  auto w = Read({{"kv.weight", "F8_E4M3", {576, 256}, Bytes(codes)},
                 {"kv.weight_scale_inv", "F32", {5, 2}, Bytes(scales)}},
                "kv.weight", {576, 256}, Fp8Config(128, 128));
  ASSERT_TRUE(w.ok()) << w.status().message();
  for (int r : {0, 127, 128, 511, 512, 575})
    for (int c : {0, 127, 128, 255})
      EXPECT_EQ(w->f32()[r * 256 + c],
                Fp8E4m3ToF32(codes[r * 256 + c]) * scales[(r / 128) * 2 + c / 128])
          << r << "," << c;
  // The floor-sized grid (4 x 2, one scale per 144 rows, as a loader that derives the block from
  // the grid would use) is refused.
  auto floor = Read({{"kv.weight", "F8_E4M3", {576, 256}, Bytes(codes)},
                     {"kv.weight_scale_inv", "F32", {4, 2}, Bytes(scales).substr(0, 32)}},
                    "kv.weight", {576, 256}, Fp8Config(128, 128));
  ExpectError(floor, {"shape [4, 2], expected [5, 2]"});
}

TEST(Fp8, ReadsEveryScaleDtype) {
  Partial p;
  // Powers of two, so that every dtype holds them exactly: 2^(e - 127) from E8M0 bytes.
  std::vector<uint8_t> e8 = {120, 127, 130, 125, 126, 128, 131, 119, 127};
  std::vector<uint16_t> bf16;
  for (uint8_t e : e8) bf16.push_back(F32ToBf16(Fp8E8m0ToF32(e)));
  for (const char* dtype : {"F8_E8M0", "U8", "BF16"}) {
    const std::string bytes = std::string(dtype) == "BF16" ? Bytes(bf16) : Bytes(e8);
    auto w = Read({{"w.weight", "F8_E4M3", {5, 7}, Bytes(p.codes)},
                   {"w.weight_scale_inv", dtype, {3, 3}, bytes}},
                  "w.weight", {5, 7}, Fp8Config(2, 3));
    ASSERT_TRUE(w.ok()) << dtype << ": " << w.status().message();
    for (int r = 0; r < 5; ++r)
      for (int c = 0; c < 7; ++c)
        EXPECT_EQ(w->f32()[r * 7 + c],
                  Fp8E4m3ToF32(p.codes[r * 7 + c]) * Fp8E8m0ToF32(e8[(r / 2) * 3 + c / 3]))
            << dtype << " " << r << "," << c;
  }
}

// Scales of any float dtype, not powers of two: F16 and F64 as well.
TEST(Fp8, ReadsFloatScalesOfEveryWidth) {
  Partial p;
  std::vector<uint16_t> f16;
  std::vector<double> f64;
  for (float s : p.scales) f16.push_back(F32ToF16(s * 3.0f));
  for (float s : p.scales) f64.push_back(double(s) * 3.0);
  for (const char* dtype : {"F16", "F64"}) {
    const bool half = std::string(dtype) == "F16";
    auto w = Read({{"w.weight", "F8_E4M3", {5, 7}, Bytes(p.codes)},
                   {"w.weight_scale_inv", dtype, {3, 3}, half ? Bytes(f16) : Bytes(f64)}},
                  "w.weight", {5, 7}, Fp8Config(2, 3));
    ASSERT_TRUE(w.ok()) << dtype << ": " << w.status().message();
    for (int r = 0; r < 5; ++r)
      for (int c = 0; c < 7; ++c) {
        const int b = (r / 2) * 3 + c / 3;
        const float scale = half ? F16ToF32(f16[b]) : float(f64[b]);
        EXPECT_EQ(w->f32()[r * 7 + c], Fp8E4m3ToF32(p.codes[r * 7 + c]) * scale)
            << dtype << " " << r << "," << c;
      }
  }
}

// An export refuses weights that are not finite (they would make NaN codes or scales that no
// loader takes) and copes with blocks too small for torch's arithmetic.
TEST(Fp8, QuantizationRefusesWhatItCannotWrite) {
  std::vector<float> w(16 * 32, 0.5f);
  std::vector<uint8_t> codes(w.size());
  std::vector<float> scale(1);
  w[3 * 32 + 5] = NAN;
  Status st = QuantizeFp8("layer.weight", w.data(), 16, 32, 16, 32, codes.data(), scale.data());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("cannot quantize \"layer.weight\" to FP8: it holds nan at [3, 5]"),
            std::string::npos)
      << st.message();
  w[3 * 32 + 5] = -INFINITY;
  EXPECT_FALSE(QuantizeFp8("l", w.data(), 16, 32, 16, 32, codes.data(), scale.data()).ok());
  // amax 1e-39: 448 / amax overflows a float; the scale is the largest float instead, and the
  // block dequantizes back to its values (within E4M3's precision).
  std::fill(w.begin(), w.end(), 1e-39f);
  w[7] = -2e-40f;
  ASSERT_TRUE(QuantizeFp8("l", w.data(), 16, 32, 16, 32, codes.data(), scale.data()).ok());
  EXPECT_TRUE(std::isfinite(scale[0]));
  EXPECT_GT(scale[0], 0.0f);
  for (size_t i = 0; i < w.size(); ++i)
    EXPECT_NEAR(Fp8E4m3ToF32(codes[i]) * scale[0], w[i], 1e-40) << i;
}

TEST(Fp8, OtherDtypesReadAsBefore) {
  std::vector<float> v = {1.5f, -2.0f, 0.25f, 3.0f};
  auto w = Read({{"n.weight", "F32", {4}, Bytes(v)}}, "n.weight", {4}, Fp8Config(128, 128));
  ASSERT_TRUE(w.ok()) << w.status().message();
  EXPECT_EQ(std::memcmp(w->f32(), v.data(), 16), 0);
}

TEST(Fp8, EachWrongCheckpointIsNamed) {
  Partial p;
  const Raw weight = {"w.weight", "F8_E4M3", {5, 7}, Bytes(p.codes)};
  const Raw scale = {"w.weight_scale_inv", "F32", {3, 3}, Bytes(p.scales)};
  ExpectError(Read({weight, scale}, "w.weight", {5, 7}, ModelConfig{}),
              {"\"w.weight\"", "F8_E4M3", "no FP8 quantization_config"});
  ExpectError(Read({weight}, "w.weight", {5, 7}, Fp8Config(2, 3)),
              {"\"w.weight\"", "no scale tensor \"w.weight_scale_inv\""});
  std::vector<float> one = {0.5f};  // AutoFP8's per-tensor scale
  ExpectError(Read({weight, {"w.weight_scale", "F32", {}, Bytes(one)}}, "w.weight", {5, 7},
                   Fp8Config(2, 3)),
              {"\"w.weight\"", "per-tensor scale \"w.weight_scale\"", "not implemented"});
  // The grid of floor-sized blocks, or of another block size.
  ExpectError(Read({weight, {"w.weight_scale_inv", "F32", {2, 2}, Bytes(p.scales).substr(0, 16)}},
                   "w.weight", {5, 7}, Fp8Config(2, 3)),
              {"\"w.weight_scale_inv\"", "shape [2, 2], expected [3, 3]", "weight_block_size"});
  ExpectError(Read({weight, scale}, "w.weight", {5, 7}, Fp8Config(128, 128)),
              {"\"w.weight_scale_inv\"", "expected [1, 1]"});
  ExpectError(Read({weight, scale}, "w.weight", {7, 5}, Fp8Config(2, 3)),
              {"\"w.weight\"", "shape [5, 7], expected [7, 5]"});
  ExpectError(Read({weight, {"w.weight_scale_inv", "I32", {3, 3}, Bytes(p.scales)}}, "w.weight",
                   {5, 7}, Fp8Config(2, 3)),
              {"\"w.weight_scale_inv\"", "dtype I32"});
  std::vector<float> bad = p.scales;
  bad[4] = INFINITY;
  ExpectError(Read({weight, {"w.weight_scale_inv", "F32", {3, 3}, Bytes(bad)}}, "w.weight", {5, 7},
                   Fp8Config(2, 3)),
              {"\"w.weight_scale_inv\"", "not finite", "block [1, 1]"});
  std::vector<uint8_t> nan_scale(9, 127);
  nan_scale[2] = 0xff;
  ExpectError(Read({weight, {"w.weight_scale_inv", "F8_E8M0", {3, 3}, Bytes(nan_scale)}},
                   "w.weight", {5, 7}, Fp8Config(2, 3)),
              {"not finite", "block [0, 2]"});
  std::vector<uint8_t> nan_codes = p.codes;
  nan_codes[2 * 7 + 5] = 0xff;
  ExpectError(Read({{"w.weight", "F8_E4M3", {5, 7}, Bytes(nan_codes)}, scale}, "w.weight", {5, 7},
                   Fp8Config(2, 3)),
              {"\"w.weight\"", "NaN code (0xff) at [2, 5]"});
  ExpectError(
      Read({{"v.weight", "F8_E4M3", {35}, Bytes(p.codes)}}, "v.weight", {35}, Fp8Config(2, 3)),
      {"\"v.weight\"", "only 2-D weights"});
  ExpectError(
      Read({{"v.weight", "F8_E5M2", {5, 7}, Bytes(p.codes)}}, "v.weight", {5, 7}, Fp8Config(2, 3)),
      {"'v.weight'", "dtype F8_E5M2"});
}

TEST(Fp8, EncodingRoundsToTheNearestCodeTiesToEven) {
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;  // NaN
    EXPECT_EQ(F32ToFp8E4m3(Fp8E4m3ToF32(uint8_t(b))), b) << b;
  }
  // Half-way between two codes: the even one (mantissa ending in 0).
  EXPECT_EQ(F32ToFp8E4m3(1.0625f), 0x38);  // 1.0 (0x38) | 1.125 (0x39)
  EXPECT_EQ(F32ToFp8E4m3(1.1875f), 0x3a);  // 1.125 (0x39) | 1.25 (0x3a)
  EXPECT_EQ(F32ToFp8E4m3(-1.1875f), 0xba);
  EXPECT_EQ(F32ToFp8E4m3(std::ldexp(1.0f, -10)), 0x00);      // 0 | 2^-9
  EXPECT_EQ(F32ToFp8E4m3(3 * std::ldexp(1.0f, -10)), 0x02);  // 2^-9 | 2^-8
  EXPECT_EQ(F32ToFp8E4m3(1.0626f), 0x39);                    // past half-way
  EXPECT_EQ(F32ToFp8E4m3(1e-30f), 0x00);
  EXPECT_EQ(F32ToFp8E4m3(-1e-30f), 0x80);
  EXPECT_EQ(F32ToFp8E4m3(440.0f), 0x7e);  // 416 | 448: half-way, 448 is even
  EXPECT_EQ(F32ToFp8E4m3(1e9f), 0x7e);    // saturates
  EXPECT_EQ(F32ToFp8E4m3(-INFINITY), 0xfe);
  EXPECT_EQ(F32ToFp8E4m3(NAN), 0x7f);
}

// transformers' Fp8Quantize on a weight of 4 x 3 blocks of every magnitude, a zero block and a
// block of ties (tools/reference/make_fp8_quantize_reference.py): the same codes and scales.
TEST(Fp8, QuantizationIsTransformersBitForBit) {
  auto f = SafetensorsFile::Open(testing::DataPath("fp8/quantize.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().message();
  auto w = f->GetF32("w", {64, 96});
  auto want_codes = f->Get("codes");
  auto want_scales = f->GetF32("scale_inv", {4, 3});
  ASSERT_TRUE(w.ok() && want_codes.ok() && want_scales.ok());
  ASSERT_EQ(want_codes->dtype(), DType::F8E4M3);
  std::vector<uint8_t> codes(64 * 96);
  std::vector<float> scales(12);
  ASSERT_TRUE(QuantizeFp8("w", w->f32(), 64, 96, 16, 32, codes.data(), scales.data()).ok());
  const auto* want = static_cast<const uint8_t*>(want_codes->data());
  int mismatches = 0;
  for (int i = 0; i < 64 * 96; ++i) mismatches += codes[i] != want[i];
  EXPECT_EQ(mismatches, 0);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(scales[i], want_scales->f32()[i]) << "block " << i;
  EXPECT_EQ(scales[4], 1.0f);  // the zero block
}

// ---------------------------------------------------------------- whole checkpoints

// The qwen3_moe_fp8 fixture copied into a fresh directory, its tensors edited by `edit`.
std::string EditedFp8Fixture(const std::function<void(testing::NamedTensors*)>& edit) {
  testing::NamedTensors t = testing::FixtureTensors("variants/qwen3_moe_fp8");
  edit(&t);
  return testing::WriteFixtureCopy("variants/qwen3_moe_fp8", t);
}

std::string LoadError(const std::string& dir) {
  auto m = LoadHfModel(dir);
  return m.ok() ? "" : m.status().message();
}

TEST(Fp8Checkpoint, LoadsDequantizedAndExportsAPlainCheckpoint) {
  const std::string src = testing::DataPath("variants/qwen3_moe_fp8");
  auto m = LoadHfModel(src);
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_TRUE((*m)->config().fp8_weights);
  EXPECT_EQ((*m)->config().fp8_block[0], 16);
  EXPECT_EQ((*m)->config().fp8_block[1], 32);
  // One weight by hand: q_proj of layer 0, [64, 64] in blocks of 16 x 32.
  auto f = SafetensorsFile::Open(src + "/model.safetensors");
  ASSERT_TRUE(f.ok());
  const std::string name = "model.layers.0.self_attn.q_proj.weight";
  SafetensorsInfo codes = f->Info(name).value();
  ASSERT_EQ(codes.dtype, "F8_E4M3");
  auto scales = f->GetF32(name + "_scale_inv", {4, 2});
  ASSERT_TRUE(scales.ok()) << scales.status().message();
  const ParamInfo* p = (*m)->layout().Find(name);
  ASSERT_NE(p, nullptr);
  const float* w = (*m)->params().f32() + p->offset;
  const auto* q = static_cast<const uint8_t*>(codes.data);
  int nonzero = 0;
  for (int r = 0; r < 64; ++r)
    for (int c = 0; c < 64; ++c) {
      ASSERT_EQ(w[r * 64 + c], Fp8E4m3ToF32(q[r * 64 + c]) * scales->f32()[(r / 16) * 2 + c / 32]);
      nonzero += w[r * 64 + c] != 0;
    }
  EXPECT_GT(nonzero, 64 * 60);

  // Export: fp32, no quantization_config, no scales; it loads back bit for bit.
  const std::string out = testing::TempDir("fp8_export");
  ASSERT_TRUE(SaveHfModel(**m, out).ok());
  std::ifstream cfg(out + "/config.json");
  json j = testing::Json(cfg);
  EXPECT_FALSE(j.contains("quantization_config"));
  auto g = SafetensorsCheckpoint::Open(out);
  ASSERT_TRUE(g.ok());
  for (const std::string& n : g->names()) {
    EXPECT_EQ(n.find("scale_inv"), std::string::npos) << n;
    EXPECT_EQ(g->Info(n)->dtype, "F32") << n;
  }
  auto back = LoadHfModel(out);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_FALSE((*back)->config().fp8_weights);
  EXPECT_EQ(std::memcmp((*back)->params().data(), (*m)->params().data(), (*m)->params().nbytes()),
            0);
}

// An FP8 export of the FP8 fixture: the codes transformers' quantization wrote (from the same
// values, to the rounding of 448 * scale), scales within an ulp or two, the rest BF16, and a
// quantization_config that both loaders read back.
TEST(Fp8Checkpoint, AnFp8ExportQuantizesAsTheHubDoes) {
  const std::string src = testing::DataPath("variants/qwen3_moe_fp8");
  auto m = LoadHfModel(src);
  ASSERT_TRUE(m.ok()) << m.status().message();
  const std::string out = testing::TempDir("fp8_export");
  ASSERT_TRUE(SaveHfModel(**m, out, ExportDType::kFp8).ok());
  std::ifstream cfg_in(out + "/config.json");
  json cfg = testing::Json(cfg_in);
  ASSERT_TRUE(cfg.contains("quantization_config"));
  EXPECT_EQ(cfg["quantization_config"]["quant_method"], "fp8");
  EXPECT_EQ(cfg["quantization_config"]["weight_block_size"], json({16, 32}));
  EXPECT_EQ(cfg["quantization_config"]["modules_to_not_convert"], json({"lm_head"}));
  EXPECT_EQ(cfg["dtype"], "bfloat16");

  auto a = SafetensorsCheckpoint::Open(src);
  auto b = SafetensorsCheckpoint::Open(out);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->names(), b->names());  // the same tensors, scales included
  int fp8 = 0;
  for (const std::string& n : a->names()) {
    SafetensorsInfo x = a->Info(n).value(), y = b->Info(n).value();
    ASSERT_EQ(x.dtype, y.dtype) << n;
    ASSERT_EQ(x.shape, y.shape) << n;
    if (x.dtype == "F8_E4M3") {
      ++fp8;
      EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes), 0) << n;
    } else if (n.find("_scale_inv") != std::string::npos) {
      Tensor s = a->GetF32(n, x.shape).value();
      Tensor t = b->GetF32(n, y.shape).value();
      for (int64_t i = 0; i < t.numel(); ++i)
        EXPECT_NEAR(t.f32()[i], s.f32()[i], 3e-7 * s.f32()[i]) << n;
    } else {
      EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes), 0) << n;  // BF16, as it was
    }
  }
  EXPECT_EQ(fp8, 23);
  auto back = LoadHfModel(out);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_LE(
      testing::RelError((*back)->params().f32(), (*m)->params().f32(), (*m)->params().numel()),
      1e-7);
}

// A model none of whose linear weights is whole 128 x 128 blocks (the tiny fixture, not FP8)
// exports as BF16 without a quantization_config; a linear layer of odd shape among quantized
// ones is named in modules_to_not_convert, which transformers reads to leave it BF16.
TEST(Fp8Checkpoint, ShapesThatAreNotWholeBlocksStayBf16AndAreNamed) {
  auto m = LoadHfModel(testing::DataPath("qwen3_moe_tiny"));
  ASSERT_TRUE(m.ok()) << m.status().message();
  const std::string out = testing::TempDir("fp8_export");
  ASSERT_TRUE(SaveHfModel(**m, out, ExportDType::kFp8).ok());
  std::ifstream cfg_in(out + "/config.json");
  EXPECT_FALSE(testing::Json(cfg_in).contains("quantization_config"));
  auto b = SafetensorsCheckpoint::Open(out);
  ASSERT_TRUE(b.ok());
  for (const std::string& n : b->names()) EXPECT_EQ(b->Info(n)->dtype, "BF16") << n;
  auto back = LoadHfModel(out);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_FALSE((*back)->config().fp8_weights);

  // Blocks of 16 x 16 on the same model (hidden 64, 4 heads and 2 KV heads of 16, experts 32):
  // everything is whole blocks.
  Fp8ExportPlan all16 = PlanFp8Export((*m)->layout(), 16, 16);
  EXPECT_EQ(all16.not_converted, std::vector<std::string>{"lm_head"});
  // 64-row blocks: k_proj and v_proj [32, 64] are not, and are named one by one.
  Fp8ExportPlan rows64 = PlanFp8Export((*m)->layout(), 64, 16);
  const auto& skip = rows64.not_converted;
  EXPECT_NE(std::find(skip.begin(), skip.end(), "model.layers.0.self_attn.k_proj"), skip.end());
  EXPECT_NE(std::find(skip.begin(), skip.end(), "model.layers.1.self_attn.v_proj"), skip.end());
  EXPECT_EQ(std::find(skip.begin(), skip.end(), "model.layers.0.self_attn.q_proj"), skip.end());
  EXPECT_EQ(std::find(skip.begin(), skip.end(), "model.layers.0.mlp.gate"), skip.end());
}

// Blocks of 32 x 64 on the FP8 fixture: the experts' down_proj [64, 32] is not whole blocks, so
// layer 0's experts stay BF16, all of them, named as the one module transformers loads them as;
// its attention and layer 1's dense MLP are quantized.
TEST(Fp8Checkpoint, ALayersExpertsAreQuantizedAllOrNone) {
  auto m = LoadHfModel(testing::DataPath("variants/qwen3_moe_fp8"));
  ASSERT_TRUE(m.ok()) << m.status().message();
  ModelConfig cfg = (*m)->config();
  cfg.fp8_block[0] = 32;
  cfg.fp8_block[1] = 64;
  Transformer t(cfg);
  std::memcpy(t.params().data(), (*m)->params().data(), (*m)->params().nbytes());
  Fp8ExportPlan plan = PlanFp8Export(t.layout(), 32, 64);
  EXPECT_TRUE(plan.any);
  EXPECT_EQ(plan.not_converted,
            (std::vector<std::string>{"lm_head", "model.layers.0.mlp.experts"}));
  const std::string out = testing::TempDir("fp8_export");
  ASSERT_TRUE(SaveHfModel(t, out, ExportDType::kFp8).ok());
  auto b = SafetensorsCheckpoint::Open(out);
  ASSERT_TRUE(b.ok());
  for (const std::string& n : b->names()) {
    const std::string dtype = b->Info(n)->dtype;
    if (n.find(".experts.") != std::string::npos) {
      EXPECT_EQ(dtype, "BF16") << n;
    } else if (n.find("proj.weight") != std::string::npos && n.find("scale") == std::string::npos) {
      EXPECT_EQ(dtype, "F8_E4M3") << n;
    }
  }
  json q = testing::JsonFile(out + "/config.json")["quantization_config"];
  EXPECT_EQ(q["modules_to_not_convert"], json({"lm_head", "model.layers.0.mlp.experts"}));
  auto back = LoadHfModel(out);
  ASSERT_TRUE(back.ok()) << back.status().message();
}

// DeepSeek-V3 (two MoE layers; routed experts and shared expert both [24, 64] / [64, 24]) in
// blocks of 16: each layer's routed experts are one module left in BF16, the shared expert's
// projections are plain linear layers named one by one, kv_a_proj_with_mqa [24, 64] is named,
// q_a_proj [32, 64] is quantized. Mixtral (experts w1/w3 [48, 64]) in blocks of 32: its hub
// names, which transformers renames to mlp.experts.
TEST(Fp8Checkpoint, ExpertModulesAreGroupedPerLayerAndSharedExpertsAreNot) {
  auto ds = ModelConfig::Load(testing::DataPath("deepseek_v3_tiny"));
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  const ParamLayout ds_layout(*ds);
  Fp8ExportPlan plan = PlanFp8Export(ds_layout, 16, 16);
  const auto& skip = plan.not_converted;
  for (const char* name : {"model.layers.1.mlp.experts", "model.layers.2.mlp.experts",
                           "model.layers.1.mlp.shared_experts.gate_proj",
                           "model.layers.2.mlp.shared_experts.down_proj",
                           "model.layers.0.self_attn.kv_a_proj_with_mqa"})
    EXPECT_NE(std::find(skip.begin(), skip.end(), name), skip.end()) << name;
  for (const char* name : {"model.layers.1.mlp.shared_experts", "model.layers.0.mlp.experts",
                           "model.layers.0.self_attn.q_a_proj", "model.layers.1.mlp.gate"})
    EXPECT_EQ(std::find(skip.begin(), skip.end(), name), skip.end()) << name;
  for (size_t i = 0; i < ds_layout.params().size(); ++i) {
    const std::string& n = ds_layout.params()[i].name;
    if (n.find(".experts.") != std::string::npos) {
      EXPECT_FALSE(plan.quantize[i]) << n;
    } else if (n.find("q_a_proj") != std::string::npos || n.find("q_b_proj") != std::string::npos) {
      EXPECT_TRUE(plan.quantize[i]) << n;
    } else if (n.find("e_score_correction_bias") != std::string::npos) {
      EXPECT_FALSE(plan.quantize[i]) << n;
    }
  }

  auto mix = ModelConfig::Load(testing::DataPath("mixtral_tiny"));
  ASSERT_TRUE(mix.ok()) << mix.status().message();
  const ParamLayout mix_layout(*mix);
  plan = PlanFp8Export(mix_layout, 32, 32);
  EXPECT_EQ(plan.not_converted,
            (std::vector<std::string>{"lm_head", "model.layers.0.block_sparse_moe.experts",
                                      "model.layers.1.block_sparse_moe.experts"}));
  int quantized = 0;
  for (size_t i = 0; i < mix_layout.params().size(); ++i) {
    const std::string& n = mix_layout.params()[i].name;
    quantized += plan.quantize[i];
    EXPECT_EQ(plan.quantize[i], n.find("self_attn.") != std::string::npos &&
                                    n.find("proj.weight") != std::string::npos)
        << n;
  }
  EXPECT_EQ(quantized, 8);  // q, k, v, o of both layers
}

TEST(Fp8Checkpoint, ActivationScalesOfAStaticSchemeAreIgnored) {
  const std::string dir = EditedFp8Fixture([](testing::NamedTensors* t) {
    t->emplace_back("model.layers.0.self_attn.q_proj.activation_scale",
                    Tensor::Zeros(DType::F32, {}));
    t->emplace_back("model.layers.0.self_attn.k_proj.input_scale", Tensor::Zeros(DType::F32, {1}));
  });
  EXPECT_EQ(LoadError(dir), "");
}

TEST(Fp8Checkpoint, ScalesWithoutAnFp8WeightAreUnexpected) {
  // The router is not quantized: a scale beside it is a tensor the model has no place for.
  const std::string dir = EditedFp8Fixture([](testing::NamedTensors* t) {
    t->emplace_back("model.layers.0.mlp.gate.weight_scale_inv", Tensor::Zeros(DType::F32, {1, 1}));
  });
  const std::string err = LoadError(dir);
  EXPECT_NE(err.find("unexpected tensor \"model.layers.0.mlp.gate.weight_scale_inv\""),
            std::string::npos)
      << err;
}

TEST(Fp8Checkpoint, AMissingScaleIsNamed) {
  const std::string gone = "model.layers.1.mlp.down_proj.weight_scale_inv";
  const std::string dir = EditedFp8Fixture([&](testing::NamedTensors* t) {
    std::erase_if(*t, [&](const auto& r) { return r.first == gone; });
  });
  const std::string err = LoadError(dir);
  EXPECT_NE(err.find("\"model.layers.1.mlp.down_proj.weight\" is F8_E4M3 but the checkpoint has "
                     "no scale tensor \"" +
                     gone + "\""),
            std::string::npos)
      << err;
}

TEST(Fp8Checkpoint, Fp8WeightsWithoutQuantizationConfigAreRefused) {
  const std::string dir = EditedFp8Fixture([](testing::NamedTensors*) {});
  std::ifstream in(dir + "/config.json");
  json j = testing::Json(in);
  in.close();
  j.erase("quantization_config");
  std::ofstream(dir + "/config.json") << DumpJson(j);
  const std::string err = LoadError(dir);
  EXPECT_NE(err.find("is F8_E4M3, but config.json has no FP8 quantization_config"),
            std::string::npos)
      << err;
}

// ---------------------------------------------------------------- quantization_config

Result<ModelConfig> WithQuantization(const json& q) {
  std::ifstream in(testing::DataPath("variants/qwen3_moe_fp8/config.json"));
  json j = testing::Json(in);
  j["quantization_config"] = q;
  return ModelConfig::FromJson(j, "config.json");
}

TEST(Fp8Config, ReadsTheHubsSpellings) {
  // deepseek-ai/DeepSeek-V3 and Qwen/Qwen3-30B-A3B-FP8.
  auto a = WithQuantization({{"activation_scheme", "dynamic"},
                             {"fmt", "e4m3"},
                             {"quant_method", "fp8"},
                             {"weight_block_size", {128, 128}}});
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_TRUE(a->fp8_weights);
  EXPECT_EQ(a->fp8_block[0], 128);
  EXPECT_EQ(a->fp8_block[1], 128);
  auto b = WithQuantization({{"quant_method", "fp8"},
                             {"weight_block_size", {64, 32}},
                             {"modules_to_not_convert", {"lm_head", "model.layers.0.mlp.gate"}},
                             {"activation_scheme", "static"},
                             {"scale_fmt", "ue8m0"}});
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ(b->fp8_block[0], 64);
  EXPECT_EQ(b->fp8_block[1], 32);
  auto c = WithQuantization({{"quant_method", "fp8"}});  // transformers' default block
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->fp8_block[0], 128);
  EXPECT_EQ(c->fp8_block[1], 128);
  auto none = WithQuantization(nullptr);
  ASSERT_TRUE(none.ok()) << none.status().message();
  EXPECT_FALSE(none->fp8_weights);
}

TEST(Fp8Config, WhatIsNotImplementedIsNamed) {
  struct Case {
    json q;
    const char* says;
  };
  const Case cases[] = {
      {json{{"quant_method", "bitsandbytes"}, {"load_in_4bit", true}},
       "quant_method \"bitsandbytes\" is not supported"},
      {json{{"quant_method", "mxfp4"}}, "\"mxfp4\" is implemented for gpt_oss's experts only"},
      {json{{"quant_method", "compressed-tensors"}}, "\"compressed-tensors\" is not supported"},
      {json::object(), "quant_method null is not supported"},
      {json{{"quant_method", "fp8"}, {"fmt", "e5m2"}}, "fmt \"e5m2\" is not supported"},
      {json{{"quant_method", "fp8"}, {"weight_block_size", nullptr}},
       "per-tensor FP8 scales are not implemented"},
      {json{{"quant_method", "fp8"}, {"weight_block_size", {128}}}, "weight_block_size [128]"},
      {json{{"quant_method", "fp8"}, {"weight_block_size", {0, 128}}}, "two positive integers"},
      {json{{"quant_method", "fp8"}, {"weight_block_size", {128.5, 128}}}, "two positive integers"},
      {json{{"quant_method", "fp8"}, {"scale_fmt", "e4m3"}}, "scale_fmt \"e4m3\""},
      {json{{"quant_method", "fp8"}, {"activation_scheme", "per_token"}},
       "activation_scheme \"per_token\" is not supported"},
      {json("fp8"), "\"quantization_config\" must be an object"},
  };
  for (const Case& c : cases) {
    auto r = WithQuantization(c.q);
    ASSERT_FALSE(r.ok()) << DumpJson(c.q);
    EXPECT_NE(r.status().message().find(c.says), std::string::npos)
        << DumpJson(c.q) << ": " << r.status().message();
    EXPECT_NE(r.status().message().find("config.json: "), std::string::npos);
  }
}

}  // namespace
}  // namespace xt
