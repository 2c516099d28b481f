#include "xtuner/core/safetensors.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "util/testing.h"

namespace xt {
namespace {

namespace fs = std::filesystem;
using Tensors = std::vector<std::pair<std::string, Tensor>>;

// Fills a tensor of any dtype with distinct values derived from `seed`.
Tensor Filled(DType dtype, Shape shape, uint64_t seed) {
  Tensor t = Tensor::Empty(dtype, std::move(shape));
  std::vector<float> v = testing::RandomVector(t.numel(), seed, 4.0f);
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (dtype) {
      case DType::F32:
        t.f32()[i] = v[i];
        break;
      case DType::BF16:
        static_cast<uint16_t*>(t.data())[i] = F32ToBf16(v[i]);
        break;
      case DType::F16:
        static_cast<uint16_t*>(t.data())[i] = F32ToF16(v[i]);
        break;
      case DType::I32:
        t.i32()[i] = int32_t(v[i] * 1000);
        break;
      case DType::I64:
        t.i64()[i] = int64_t(v[i] * 1000) * (int64_t(1) << 40);
        break;
      case DType::F8E4M3:
        static_cast<uint8_t*>(t.data())[i] = F32ToFp8E4m3(v[i]);
        break;
      case DType::U8:
        static_cast<uint8_t*>(t.data())[i] = uint8_t(int(v[i] * 30) & 0xff);
        break;
    }
  }
  return t;
}

void ExpectSameTensor(const Tensor& a, const Tensor& b, const std::string& name) {
  ASSERT_EQ(a.dtype(), b.dtype()) << name;
  ASSERT_EQ(a.shape(), b.shape()) << name;
  ASSERT_EQ(a.nbytes(), b.nbytes()) << name;
  if (a.nbytes()) {
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0) << name;
  }
}

// Expects an error whose message contains every one of `parts`.
template <class R>
void ExpectError(const R& r, const std::vector<std::string>& parts) {
  Status st;
  if constexpr (std::is_same_v<R, Status>) {
    st = r;
  } else {
    st = r.status();
  }
  ASSERT_FALSE(st.ok()) << "expected an error mentioning " << parts.front();
  // XT_PRINT_ERRORS=1 ./safetensors_test shows every message, to review their wording.
  if (std::getenv("XT_PRINT_ERRORS")) std::printf("  error: %s\n", st.message().c_str());
  for (const auto& p : parts) {
    EXPECT_NE(st.message().find(p), std::string::npos)
        << "message lacks \"" << p << "\": " << st.message();
  }
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// A file with the given header text and data bytes; the length field is header.size() unless
// `length` is given.
std::string RawFile(const std::string& header, const std::string& data,
                    std::optional<uint64_t> length = std::nullopt) {
  uint64_t n = length.value_or(header.size());
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s + header + data;
}

// Writes RawFile(...) as `name` in a fresh directory and opens it.
class Malformed : public ::testing::Test {
 protected:
  Result<SafetensorsFile> OpenRaw(const std::string& header, const std::string& data,
                                  std::optional<uint64_t> length = std::nullopt) {
    path_ = dir_ + "/bad.safetensors";
    WriteAll(path_, RawFile(header, data, length));
    return SafetensorsFile::Open(path_);
  }
  std::string dir_ = testing::TempDir("st_malformed");
  std::string path_;
};

// ------------------------------------------------------------------------------- round trips

TEST(Safetensors, RoundTripEveryDtypeScalarAndEmpty) {
  std::string path = testing::TempDir("st_rt") + "/all.safetensors";
  Tensors in = {
      {"f32", Filled(DType::F32, {3, 5}, 1)},
      {"bf16", Filled(DType::BF16, {7}, 2)},
      {"f16", Filled(DType::F16, {2, 3, 3}, 3)},
      {"i32", Filled(DType::I32, {5}, 4)},
      {"i64", Filled(DType::I64, {3, 1}, 5)},
      {"scalar_f32", Filled(DType::F32, {}, 6)},
      {"scalar_i64", Filled(DType::I64, {}, 7)},
      {"scalar_bf16", Filled(DType::BF16, {}, 8)},
      {"f8_e4m3", Filled(DType::F8E4M3, {3, 3}, 9)},
      {"u8", Filled(DType::U8, {2, 5}, 10)},
      {"empty_f32", Tensor::Empty(DType::F32, {0, 4})},
      {"empty_f16", Tensor::Empty(DType::F16, {4, 0})},
      {"empty_i64", Tensor::Empty(DType::I64, {0})},
  };
  ASSERT_TRUE(WriteSafetensors(path, in).ok());
  EXPECT_TRUE(testing::TempFilesIn(fs::path(path).parent_path().string()).empty());

  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  std::vector<std::string> expected_names;
  for (const auto& kv : in) expected_names.push_back(kv.first);
  std::sort(expected_names.begin(), expected_names.end());
  EXPECT_EQ(f->names(), expected_names);
  EXPECT_EQ(f->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(f->path(), path);
  for (const auto& [name, t] : in) {
    ASSERT_TRUE(f->contains(name));
    auto got = f->Get(name);
    ASSERT_TRUE(got.ok()) << got.status().message();
    ExpectSameTensor(*got, t, name);
    EXPECT_TRUE(got->defined()) << name;
    // Aligned to the element size, so typed access through the view is valid.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got->data()) % DTypeSize(t.dtype()), 0u) << name;
  }
  EXPECT_FALSE(f->contains("nope"));
  // Zero copy: two Gets see the same bytes.
  EXPECT_EQ(f->Get("f32")->data(), f->Get("f32")->data());
}

TEST(Safetensors, LayoutMatchesTheReferenceWriter) {
  std::string path = testing::TempDir("st_layout") + "/l.safetensors";
  Tensors in = {{"b_bf16", Filled(DType::BF16, {3}, 1)},
                {"z_f32", Filled(DType::F32, {3}, 2)},
                {"c_i64", Filled(DType::I64, {1}, 3)},
                {"a_f16", Filled(DType::F16, {1}, 4)},
                {"a_i32", Filled(DType::I32, {1}, 5)}};
  ASSERT_TRUE(WriteSafetensors(path, in, {{"step", "7"}}).ok());
  std::string bytes = ReadAll(path);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  // What safetensors' serialize() writes: metadata first, then data order (dtype I64 > F32 >
  // I32 > BF16 > F16, then name), contiguous; padded with spaces; the buffer ends the file.
  std::string want = R"({"__metadata__":{"format":"pt","step":"7"},)"
                     R"("c_i64":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
                     R"("z_f32":{"dtype":"F32","shape":[3],"data_offsets":[8,20]},)"
                     R"("a_i32":{"dtype":"I32","shape":[1],"data_offsets":[20,24]},)"
                     R"("b_bf16":{"dtype":"BF16","shape":[3],"data_offsets":[24,30]},)"
                     R"("a_f16":{"dtype":"F16","shape":[1],"data_offsets":[30,32]}})";
  want.append((8 - want.size() % 8) % 8, ' ');
  EXPECT_EQ(bytes.substr(8, n), want);
  EXPECT_EQ(bytes.size(), 8 + n + 32);
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + n, in[2].second.data(), 8), 0);  // c_i64 first
}

// Reading a file transformers wrote and writing its tensors back gives the same bytes.
TEST(Safetensors, RewritingTransformersFilesIsByteIdentical) {
  std::string dir = testing::TempDir("st_ident");
  for (const char* rel :
       {"qwen3_moe_tiny/model.safetensors", "variants/qwen3_moe_bf16_kE/model.safetensors",
        "variants/qwen3_dense_gqa4_tied/model-00002-of-00003.safetensors",
        "variants/deepseek_v3_fp8/model.safetensors",
        "variants/gpt_oss_mxfp4/model.safetensors"}) {  // F32, BF16, F8_E4M3 and U8
    std::string src = testing::DataPath(rel);
    auto f = SafetensorsFile::Open(src);
    ASSERT_TRUE(f.ok()) << f.status().message();
    Tensors all;
    for (const auto& name : f->names()) all.emplace_back(name, f->Get(name).value());
    std::string out = dir + "/copy.safetensors";
    ASSERT_TRUE(WriteSafetensors(out, all, f->metadata()).ok());
    EXPECT_TRUE(ReadAll(out) == ReadAll(src)) << rel;
  }
}

TEST(Safetensors, CustomMetadataAndFormatKept) {
  std::string path = testing::TempDir("st_meta") + "/m.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {}, {{"format", "mlx"}, {"k", "v"}}).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_TRUE(f->names().empty());
  EXPECT_EQ(f->metadata(), (std::map<std::string, std::string>{{"format", "mlx"}, {"k", "v"}}));
}

TEST(Safetensors, TensorsOutliveTheFileObject) {
  std::string path = testing::TempDir("st_keep") + "/k.safetensors";
  Tensor t = Filled(DType::F32, {4, 4}, 9);
  ASSERT_TRUE(WriteSafetensors(path, {{"w", t}}).ok());
  Tensor view;
  {
    auto f = SafetensorsFile::Open(path);
    ASSERT_TRUE(f.ok());
    view = f->Get("w").value();
  }
  fs::remove(path);  // the mapping survives the unlink too
  ExpectSameTensor(view, t, "w");
}

TEST(Safetensors, FromBufferAndMisalignedData) {
  // An F32 tensor at offset 2 of the buffer: legal for the format, misaligned in memory.
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  float vals[2] = {1.5f, -2.25f};
  std::string data(2, 'z');
  data.append(reinterpret_cast<const char*>(vals), 8);
  std::string file = RawFile(header, data);
  auto f = SafetensorsFile::FromBuffer("mem", file.data(), file.size(), nullptr);
  ASSERT_TRUE(f.ok()) << f.status().message();
  auto t = f->Get("x");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data()) % 4, 0u);  // an aligned copy
  EXPECT_EQ(t->f32()[0], 1.5f);
  EXPECT_EQ(t->f32()[1], -2.25f);
  auto info = f->Info("x");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->dtype, "F32");
  EXPECT_EQ(info->nbytes, 8u);
  EXPECT_EQ(info->data, file.data() + 8 + header.size() + 2);
}

TEST(Safetensors, ForeignDtypesOpenButGetSaysWhy) {
  std::string header = R"({"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},)"
                       R"("u":{"dtype":"I8","shape":[3],"data_offsets":[16,19]}})";
  double d[2] = {0.1, -3.0};
  std::string data(reinterpret_cast<const char*>(d), 16);
  data += "abc";
  std::string path = testing::TempDir("st_foreign") + "/f.safetensors";
  WriteAll(path, RawFile(header, data));
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  ExpectError(f->Get("d"), {path, "'d'", "F64"});
  ExpectError(f->Get("u"), {path, "'u'", "I8"});
  auto info = f->Info("u");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(std::string(static_cast<const char*>(info->data), 3), "abc");
  auto dd = f->GetF64("d", {2});
  ASSERT_TRUE(dd.ok());
  EXPECT_EQ(dd.value(), (std::vector<double>{0.1, -3.0}));
  auto df = f->GetF32("d", {2});
  ASSERT_TRUE(df.ok());
  EXPECT_EQ(df->f32()[0], 0.1f);
  ExpectError(f->GetF32("u", {3}), {path, "'u'", "I8", "float"});
  ExpectError(f->GetF64("u", {3}), {path, "'u'", "I8"});
}

TEST(Safetensors, GetF32UpcastsAndChecksShape) {
  std::string path = testing::TempDir("st_f32") + "/u.safetensors";
  Tensor f32 = Filled(DType::F32, {2, 3}, 1);
  Tensor bf16 = f32.To(DType::BF16), f16 = f32.To(DType::F16);
  Tensor ids = Filled(DType::I32, {4}, 2);
  ASSERT_TRUE(WriteSafetensors(path, {{"a", f32}, {"b", bf16}, {"h", f16}, {"ids", ids}}).ok());
  auto ck = SafetensorsCheckpoint::Open(path);
  ASSERT_TRUE(ck.ok()) << ck.status().message();
  for (const auto& [name, src] : Tensors{{"a", f32}, {"b", bf16}, {"h", f16}}) {
    auto got = ck->GetF32(name, {2, 3});
    ASSERT_TRUE(got.ok()) << got.status().message();
    Tensor want = src.ToF32();
    ExpectSameTensor(*got, want, name);
    got->f32()[0] = 42.0f;  // owned and writable, whatever the source dtype
  }
  ExpectError(ck->GetF32("b", {3, 2}), {path, "'b'", "[2, 3]", "[3, 2]"});
  ExpectError(ck->GetF32("ids", {4}), {path, "'ids'", "I32"});
  ExpectError(ck->GetF32("missing", {4}), {path, "'missing'"});
  ExpectError(ck->Get("missing"), {path, "'missing'"});
  auto d = ck->GetF64("ids", {4});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d.value()[3], double(ids.i32()[3]));
  EXPECT_EQ(ck->FileOf("a"), path);
  EXPECT_EQ(ck->FileOf("missing"), "");
}

// ------------------------------------------------------------------------- the real fixture

TEST(Safetensors, ReadsTheTransformersFixture) {
  std::string path = testing::DataPath("qwen3_moe_tiny/model.safetensors");
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ(f->names().size(), 69u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  for (const auto& name : f->names()) {
    auto t = f->Get(name);
    ASSERT_TRUE(t.ok()) << t.status().message();
    EXPECT_EQ(t->dtype(), DType::F32);
    for (int64_t i = 0; i < t->numel(); ++i) ASSERT_TRUE(std::isfinite(t->f32()[i])) << name;
  }
  EXPECT_EQ(f->Get("model.embed_tokens.weight")->shape(), (Shape{320, 64}));
  EXPECT_EQ(f->Get("model.layers.1.mlp.experts.7.down_proj.weight")->shape(), (Shape{64, 32}));

  auto ck = SafetensorsCheckpoint::Open(testing::DataPath("qwen3_moe_tiny"));
  ASSERT_TRUE(ck.ok()) << ck.status().message();
  EXPECT_EQ(ck->names(), f->names());
  EXPECT_TRUE(ck->GetF32("lm_head.weight", {320, 64}).ok());

  // The float64 reference dump.
  auto ref = SafetensorsCheckpoint::Open(testing::DataPath("qwen3_moe_tiny/reference.safetensors"));
  ASSERT_TRUE(ref.ok()) << ref.status().message();
  auto ids = ref->Get("input_ids");
  ASSERT_TRUE(ids.ok()) << ids.status().message();
  ASSERT_EQ(ids->shape(), (Shape{2, 16}));
  for (int64_t i = 0; i < ids->numel(); ++i) EXPECT_TRUE(ids->i64()[i] >= 0 && ids->i64()[i] < 320);
  auto logits = ref->GetF64("logits", {2, 16, 320});
  ASSERT_TRUE(logits.ok()) << logits.status().message();
  for (double v : logits.value()) ASSERT_TRUE(std::isfinite(v));
}

TEST(Safetensors, ReadsATransformersShardedCheckpoint) {
  std::string dir = testing::DataPath("variants/qwen3_dense_gqa4_tied");
  auto ck = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status().message();
  auto index = testing::Json(ReadAll(dir + "/model.safetensors.index.json"));
  std::vector<std::string> names;
  size_t total = 0;
  for (const auto& [name, file] : index["weight_map"].items()) {
    names.push_back(name);
    EXPECT_EQ(ck->FileOf(name), dir + "/" + file.get<std::string>());
    auto t = ck->Get(name);
    ASSERT_TRUE(t.ok()) << t.status().message();
    total += t->nbytes();
  }
  EXPECT_EQ(ck->names(), names);
  EXPECT_EQ(total, index["metadata"]["total_size"].get<size_t>());

  // Written back sharded and read again: the same tensors.
  Tensors all;
  for (const auto& name : names) all.emplace_back(name, ck->Get(name).value());
  std::string out = testing::TempDir("st_hfshard");
  ASSERT_TRUE(WriteSafetensorsSharded(out, all, 100 * 1000).ok());
  auto again = SafetensorsCheckpoint::Open(out);
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_GT(again->FileOf(names.back()), again->FileOf(names.front()));  // several shards
  for (const auto& [name, t] : all) ExpectSameTensor(again->Get(name).value(), t, name);
}

// ------------------------------------------------------------------------- malformed files

TEST_F(Malformed, ShorterThan8Bytes) {
  path_ = dir_ + "/short.safetensors";
  WriteAll(path_, "abc");
  ExpectError(SafetensorsFile::Open(path_), {path_, "3 bytes", "shorter than"});
  WriteAll(path_, "");
  ExpectError(SafetensorsFile::Open(path_), {path_, "0 bytes"});
}

TEST_F(Malformed, HeaderLengthPastEndOfFile) {
  ExpectError(OpenRaw("{}", "", 1000), {"bad.safetensors", "header length 1000", "10-byte file"});
}

TEST_F(Malformed, HeaderLengthAbsurd) {
  ExpectError(OpenRaw("{}", "", uint64_t(1) << 62), {"bad.safetensors", "limit"});
  ExpectError(OpenRaw("{}", "", 100'000'001), {"bad.safetensors", "100000001", "limit"});
}

TEST_F(Malformed, HeaderNotJson) {
  ExpectError(OpenRaw("{\"a\": ", ""), {"bad.safetensors", "not valid JSON"});
  ExpectError(OpenRaw("\xff\xfe", ""), {"bad.safetensors", "not valid JSON"});
  ExpectError(OpenRaw("{\"\xc3\x28\": 1}", ""), {"bad.safetensors", "not valid JSON"});
}

TEST_F(Malformed, HeaderNotAnObject) {
  ExpectError(OpenRaw("[1, 2]", ""), {"bad.safetensors", "not a JSON object", "array"});
}

TEST_F(Malformed, EntryNotAnObject) {
  ExpectError(OpenRaw(R"({"w": 3})", ""), {"bad.safetensors", "'w'", "not a JSON object"});
}

TEST_F(Malformed, MissingKeys) {
  ExpectError(OpenRaw(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", "abcd"),
              {"bad.safetensors", "'w'", "dtype"});
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", "abcd"),
              {"bad.safetensors", "'w'", "shape"});
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [1]}})", "abcd"),
              {"bad.safetensors", "'w'", "data_offsets"});
}

TEST_F(Malformed, UnknownDtype) {
  ExpectError(OpenRaw(R"({"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}})", "abcd"),
              {"bad.safetensors", "'w'", "unknown dtype 'F33'", "F32", "BF16", "I64"});
}

TEST_F(Malformed, BadShape) {
  for (const char* shape : {"3", "[-1]", "[1.5]", "[\"2\"]", "[[2]]", "[9223372036854775808]"}) {
    std::string h = std::string(R"({"w": {"dtype": "F32", "shape": )") + shape +
                    R"(, "data_offsets": [0, 4]}})";
    ExpectError(OpenRaw(h, "abcd"), {"bad.safetensors", "'w'", "shape"});
  }
  // numel * 4 overflows 64 bits: rejected before any arithmetic can wrap.
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 0],)"
                      R"( "data_offsets": [0, 0]}})",
                      ""),
              {"bad.safetensors", "'w'", "impossibly large"});
}

TEST_F(Malformed, BadDataOffsets) {
  for (const char* off : {"[0]", "[0, 4, 8]", "[-4, 0]", "[0, 4.0]", "{}", "[\"0\", 4]"}) {
    std::string h =
        std::string(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": )") + off + "}}";
    ExpectError(OpenRaw(h, "abcd"), {"bad.safetensors", "'w'", "data_offsets"});
  }
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}})", "abcd"),
              {"bad.safetensors", "'w'", "begin > end"});
}

TEST_F(Malformed, TruncatedFile) {
  // A valid file cut short: the last tensor's end lies past the data buffer.
  std::string good = dir_ + "/good.safetensors";
  ASSERT_TRUE(WriteSafetensors(good, {{"w", Filled(DType::F32, {16}, 1)}}).ok());
  std::string bytes = ReadAll(good);
  path_ = dir_ + "/cut.safetensors";
  WriteAll(path_, bytes.substr(0, bytes.size() - 10));
  ExpectError(SafetensorsFile::Open(path_),
              {path_, "'w'", "truncated", "[0, 64]", "holds 54 bytes"});
}

TEST_F(Malformed, SizeDisagreesWithShape) {
  ExpectError(OpenRaw(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", "abcd"),
              {"bad.safetensors", "'w'", "span 4 bytes", "need 8"});
}

TEST_F(Malformed, OverlappingTensors) {
  ExpectError(OpenRaw(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                      R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                      std::string(12, 'x')),
              {"bad.safetensors", "'a'", "'b'", "overlap"});
  // Empty tensors overlap nothing; a gap between tensors is tolerated.
  EXPECT_TRUE(OpenRaw(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                      R"( "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},)"
                      R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}})",
                      std::string(16, 'x'))
                  .ok());
}

TEST_F(Malformed, DuplicateNames) {
  ExpectError(OpenRaw(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                      R"( "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                      std::string(8, 'x')),
              {"bad.safetensors", "duplicate tensor name 'a'"});
  ExpectError(OpenRaw(R"({"a": {"dtype": "F32", "dtype": "F16", "shape": [1],)"
                      R"( "data_offsets": [0, 4]}})",
                      std::string(4, 'x')),
              {"bad.safetensors", "duplicate key 'dtype'"});
}

TEST_F(Malformed, NonStringMetadata) {
  ExpectError(OpenRaw(R"({"__metadata__": {"step": 7}})", ""),
              {"bad.safetensors", "__metadata__", "'step'", "not a string"});
  ExpectError(OpenRaw(R"({"__metadata__": ["x"]})", ""), {"bad.safetensors", "__metadata__"});
}

TEST_F(Malformed, DeepNesting) {
  std::string h = R"({"__metadata__": )" + std::string(100, '[') + std::string(100, ']') + "}";
  ExpectError(OpenRaw(h, ""), {"bad.safetensors", "nested"});
}

TEST_F(Malformed, NotAFile) {
  ExpectError(SafetensorsFile::Open(dir_ + "/absent.safetensors"),
              {"absent.safetensors", "No such file"});
  ExpectError(SafetensorsFile::Open(dir_), {dir_, "directory"});
}

// ------------------------------------------------------------------------------- checkpoints

Tensors SomeTensors() {
  return {{"model.embed.weight", Filled(DType::BF16, {10, 8}, 1)},  // 160 bytes
          {"model.layers.0.w", Filled(DType::F32, {8, 8}, 2)},      // 256
          {"model.layers.0.norm", Filled(DType::F32, {8}, 3)},      // 32
          {"model.layers.1.w", Filled(DType::F32, {8, 8}, 4)},      // 256
          {"model.scalar", Filled(DType::I64, {}, 5)},              // 8
          {"model.empty", Tensor::Empty(DType::F16, {0, 8})}};      // 0
}

void ExpectCheckpointHolds(const SafetensorsCheckpoint& ck, const Tensors& want) {
  std::vector<std::string> names;
  for (const auto& [name, t] : want) {
    names.push_back(name);
    auto got = ck.Get(name);
    ASSERT_TRUE(got.ok()) << got.status().message();
    ExpectSameTensor(*got, t, name);
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(ck.names(), names);
}

TEST(SafetensorsCheckpoint, ShardedRoundTrip) {
  std::string dir = testing::TempDir("st_shard") + "/ckpt";  // created by the writer
  Tensors in = SomeTensors();
  ASSERT_TRUE(WriteSafetensorsSharded(dir, in, 300).ok());
  // In order: [embed 160] [layers.0.w 256, norm 32] [layers.1.w 256, scalar 8, empty 0].
  for (const char* f : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                        "model-00003-of-00003.safetensors", "model.safetensors.index.json"}) {
    EXPECT_TRUE(fs::exists(dir + "/" + f)) << f;
  }
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  EXPECT_TRUE(testing::TempFilesIn(dir).empty());
  auto index = testing::Json(ReadAll(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 160 + 256 + 32 + 256 + 8);
  EXPECT_EQ(index["weight_map"]["model.layers.0.norm"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"].size(), in.size());

  for (const std::string& p : {dir, dir + "/model.safetensors.index.json"}) {
    auto ck = SafetensorsCheckpoint::Open(p);
    ASSERT_TRUE(ck.ok()) << ck.status().message();
    ExpectCheckpointHolds(*ck, in);
    EXPECT_EQ(ck->FileOf("model.scalar"), dir + "/model-00003-of-00003.safetensors");
    EXPECT_EQ(ck->path(), p);
  }

  // Saving again in one file replaces the sharded set.
  ASSERT_TRUE(WriteSafetensorsSharded(dir, in, 1 << 20).ok());
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path().filename());
  EXPECT_EQ(files, std::vector<std::string>{"model.safetensors"});
  auto ck = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status().message();
  ExpectCheckpointHolds(*ck, in);

  // And sharded again: the single file goes.
  ASSERT_TRUE(WriteSafetensorsSharded(dir, in, 0).ok());  // one tensor per shard
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/model-00006-of-00006.safetensors"));
  ck = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status().message();
  ExpectCheckpointHolds(*ck, in);
}

class BadCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(
        WriteSafetensors(dir_ + "/s1.safetensors", {{"a", Filled(DType::F32, {2}, 1)}}).ok());
    ASSERT_TRUE(WriteSafetensors(dir_ + "/s2.safetensors", {{"b", Filled(DType::F32, {2}, 2)},
                                                            {"c", Filled(DType::F32, {2}, 3)}})
                    .ok());
  }
  Result<SafetensorsCheckpoint> OpenWithIndex(const std::string& index_text) {
    WriteAll(index_, index_text);
    return SafetensorsCheckpoint::Open(dir_);
  }
  std::string dir_ = testing::TempDir("st_badckpt");
  std::string index_ = dir_ + "/model.safetensors.index.json";
};

TEST_F(BadCheckpoint, GoodIndexOpens) {
  auto ck = OpenWithIndex(
      R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"}})");
  ASSERT_TRUE(ck.ok()) << ck.status().message();
  EXPECT_EQ(ck->names(), (std::vector<std::string>{"a", "b", "c"}));
}

TEST_F(BadCheckpoint, IndexNotJson) {
  ExpectError(OpenWithIndex("{\"weight_map\": "), {index_, "not valid JSON"});
}

TEST_F(BadCheckpoint, IndexWithoutWeightMap) {
  ExpectError(OpenWithIndex(R"({"metadata": {}})"), {index_, "weight_map"});
  ExpectError(OpenWithIndex(R"({"weight_map": []})"), {index_, "weight_map"});
  ExpectError(OpenWithIndex(R"({"weight_map": {"a": 1}})"), {index_, "'a'", "not a file name"});
}

TEST_F(BadCheckpoint, ShardMissing) {
  ExpectError(OpenWithIndex(R"({"weight_map": {"a": "s1.safetensors", "b": "gone.safetensors"}})"),
              {index_, "gone.safetensors", "'b'", "No such file"});
}

TEST_F(BadCheckpoint, ShardInvalid) {
  WriteAll(dir_ + "/s1.safetensors", "abc");
  ExpectError(
      OpenWithIndex(
          R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"}})"),
      {index_, "s1.safetensors", "shorter than"});
}

TEST_F(BadCheckpoint, TensorListedButAbsentFromShard) {
  ExpectError(OpenWithIndex(R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors",)"
                            R"( "c": "s2.safetensors", "d": "s2.safetensors"}})"),
              {index_, "'d'", "s2.safetensors", "does not contain"});
}

TEST_F(BadCheckpoint, TensorInShardButNotInIndex) {
  ExpectError(OpenWithIndex(R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})"),
              {index_, "'c'", "s2.safetensors", "not listed"});
}

TEST_F(BadCheckpoint, TensorMappedToAnotherShard) {
  ASSERT_TRUE(WriteSafetensors(dir_ + "/s1.safetensors", {{"a", Filled(DType::F32, {2}, 1)},
                                                          {"b", Filled(DType::F32, {2}, 2)}})
                  .ok());
  ExpectError(
      OpenWithIndex(
          R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"}})"),
      {index_, "'b'", "s1.safetensors", "another shard"});
}

TEST_F(BadCheckpoint, EmptyDirectory) {
  std::string empty = testing::TempDir("st_empty");
  ExpectError(SafetensorsCheckpoint::Open(empty), {empty, "model.safetensors"});
  ExpectError(SafetensorsCheckpoint::Open(empty + "/nothing.safetensors"),
              {"nothing.safetensors", "No such file"});
}

// ---------------------------------------------------------------------------- atomic writing

TEST(SafetensorsWrite, RejectsBadInput) {
  std::string dir = testing::TempDir("st_wbad");
  Tensor t = Filled(DType::F32, {2}, 1);
  ExpectError(WriteSafetensors(dir + "/x.safetensors", {{"a", t}, {"a", t}}),
              {"x.safetensors", "'a'", "twice"});
  ExpectError(WriteSafetensors(dir + "/x.safetensors", {{"__metadata__", t}}),
              {"x.safetensors", "__metadata__"});
  ExpectError(WriteSafetensors(dir + "/x.safetensors", {{"u", Tensor()}}),
              {"x.safetensors", "'u'", "no data"});
  ExpectError(WriteSafetensors(dir + "/x.safetensors", {{"bad\xff", t}}),
              {"x.safetensors", "'bad\xff'", "not UTF-8"});
  ExpectError(WriteSafetensors(dir + "/x.safetensors", {{"a", t}}, {{"k", "\xff"}}),
              {"x.safetensors", "metadata 'k'", "not UTF-8"});
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(SafetensorsWrite, TargetIsADirectory) {
  std::string dir = testing::TempDir("st_wdir");
  fs::create_directories(dir + "/target/inner");
  ExpectError(WriteSafetensors(dir + "/target", {{"a", Filled(DType::F32, {2}, 1)}}),
              {dir + "/target", "rename"});
  EXPECT_TRUE(fs::is_directory(dir + "/target/inner"));
  EXPECT_TRUE(testing::TempFilesIn(dir).empty());
}

TEST(SafetensorsWrite, MissingDirectory) {
  std::string dir = testing::TempDir("st_wmiss");
  ExpectError(WriteSafetensors(dir + "/no/such/x.safetensors", {}),
              {dir + "/no/such/x.safetensors", "No such file"});
}

// A full disk, simulated with a file-size limit: the write fails, the old file survives and no
// temporary file is left behind.
TEST(SafetensorsWrite, FailedWriteKeepsTheExistingFile) {
  std::string dir = testing::TempDir("st_wfull");
  std::string path = dir + "/model.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"old", Filled(DType::F32, {4}, 1)}}).ok());
  std::string before = ReadAll(path);

  struct rlimit saved;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit low = saved;
  low.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &low), 0);
  Status st = WriteSafetensors(path, {{"new", Filled(DType::F32, {100000}, 2)}});
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, old_handler);

  ExpectError(st, {path, "cannot write"});
  EXPECT_EQ(ReadAll(path), before);
  EXPECT_TRUE(testing::TempFilesIn(dir).empty());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->contains("old"));
}

TEST(SafetensorsWrite, ReplacingAFileKeepsOldViewsValid) {
  std::string path = testing::TempDir("st_wrepl") + "/m.safetensors";
  Tensor a = Filled(DType::F32, {64}, 1);
  ASSERT_TRUE(WriteSafetensors(path, {{"w", a}}).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  Tensor view = f->Get("w").value();
  ASSERT_TRUE(WriteSafetensors(path, {{"w", Filled(DType::F32, {64}, 2)}}).ok());
  ExpectSameTensor(view, a, "w");  // the old inode stays mapped
}

}  // namespace
}  // namespace xt
