// HF checkpoints in and out: save/load round trips (fp32, BF16, sharded) and a clear error for
// each way a checkpoint can disagree with its config.json.
#include "xtuner/model/checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "util/fixture_files.h"
#include "util/testing.h"
#include "xtuner/core/safetensors.h"

namespace xt {
namespace {

namespace fs = std::filesystem;

std::unique_ptr<Transformer> LoadFixture(const std::string& name) {
  auto m = LoadHfModel(testing::DataPath(name));
  EXPECT_TRUE(m.ok()) << m.status().message();
  return m.ok() ? std::move(m).value() : nullptr;
}

using testing::FixtureTensors;
using testing::WriteFixtureCopy;

std::string LoadError(const std::string& dir) {
  auto m = LoadHfModel(dir);
  return m.ok() ? "" : m.status().message();
}

TEST(Checkpoint, SaveLoadRoundTripIsExactInFp32AndSharded) {
  auto a = LoadFixture("qwen3_moe_tiny");
  ASSERT_TRUE(a);
  std::string dir = testing::TempDir("save");
  ASSERT_TRUE(SaveHfModel(*a, dir, ExportDType::kF32, 64 << 10).ok());  // 64 KiB shards
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(dir + "/config.json"));
  auto b = LoadHfModel(dir);
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ(std::memcmp(a->params().data(), (*b)->params().data(), a->params().nbytes()), 0);
  EXPECT_EQ((*b)->config().layer_is_moe, a->config().layer_is_moe);
}

TEST(Checkpoint, Bf16SaveRoundsEveryWeightOnce) {
  auto a = LoadFixture("mixtral_tiny");
  ASSERT_TRUE(a);
  std::string dir = testing::TempDir("bf16");
  ASSERT_TRUE(SaveHfModel(*a, dir, ExportDType::kBf16).ok());
  auto b = LoadHfModel(dir);
  ASSERT_TRUE(b.ok()) << b.status().message();
  const float* pa = a->params().f32();
  const float* pb = (*b)->params().f32();
  for (int64_t i = 0; i < a->layout().total(); ++i)
    ASSERT_EQ(pb[i], Bf16ToF32(F32ToBf16(pa[i]))) << i;
}

TEST(Checkpoint, TiedModelIgnoresAStrayLmHeadLikeTransformers) {
  auto tensors = FixtureTensors("variants/qwen3_moe_v4");
  Tensor embed;
  for (auto& [n, t] : tensors)
    if (n == "model.embed_tokens.weight") embed = t;
  tensors.emplace_back("lm_head.weight", embed.Clone());
  std::string dir = WriteFixtureCopy("variants/qwen3_moe_v4", tensors);
  EXPECT_EQ(LoadError(dir), "");
}

TEST(Checkpoint, MissingTensorIsNamed) {
  auto tensors = FixtureTensors("qwen3_moe_tiny");
  std::erase_if(tensors,
                [](auto& p) { return p.first == "model.layers.1.mlp.experts.3.up_proj.weight"; });
  std::string err = LoadError(WriteFixtureCopy("qwen3_moe_tiny", tensors));
  EXPECT_NE(err.find("no tensor \"model.layers.1.mlp.experts.3.up_proj.weight\" (shape [32, 64])"),
            std::string::npos)
      << err;
}

TEST(Checkpoint, WrongShapeIsNamedWithBothShapes) {
  auto tensors = FixtureTensors("qwen3_dense_tiny");
  for (auto& [n, t] : tensors)
    if (n == "model.layers.0.self_attn.k_proj.weight") t = Tensor::Zeros(DType::F32, {16, 64});
  std::string err = LoadError(WriteFixtureCopy("qwen3_dense_tiny", tensors));
  EXPECT_NE(err.find("model.layers.0.self_attn.k_proj.weight"), std::string::npos) << err;
  EXPECT_NE(err.find("[32, 64]"), std::string::npos) << err;
  EXPECT_NE(err.find("[16, 64]"), std::string::npos) << err;
}

TEST(Checkpoint, UnexpectedTensorIsNamed) {
  auto tensors = FixtureTensors("mixtral_tiny");
  tensors.emplace_back("model.layers.0.block_sparse_moe.experts.4.w1.weight",
                       Tensor::Zeros(DType::F32, {48, 64}));
  std::string err = LoadError(WriteFixtureCopy("mixtral_tiny", tensors));
  EXPECT_NE(err.find("unexpected tensor \"model.layers.0.block_sparse_moe.experts.4.w1.weight\""),
            std::string::npos)
      << err;
}

TEST(Checkpoint, IntegerWeightsAreRefused) {
  auto tensors = FixtureTensors("qwen3_dense_tiny");
  for (auto& [n, t] : tensors)
    if (n == "model.norm.weight") t = Tensor::Zeros(DType::I32, {64});
  std::string err = LoadError(WriteFixtureCopy("qwen3_dense_tiny", tensors));
  EXPECT_NE(err.find("model.norm.weight"), std::string::npos) << err;
}

TEST(Checkpoint, NoWeightsAtAll) {
  std::string dir = testing::TempDir("empty");
  fs::copy_file(testing::DataPath("qwen3_dense_tiny/config.json"), dir + "/config.json");
  std::string err = LoadError(dir);
  EXPECT_NE(err.find(dir), std::string::npos) << err;
}

TEST(Batch, OutOfVocabularyIdsAndLabelsAreErrors) {
  auto b = Batch::FromRows({1, 2, 3, 400}, {-100, 2, 3, 4}, 1, 4);
  ASSERT_TRUE(b.ok());
  EXPECT_NE(b->Validate(320).message().find("token id 400 at position 3"), std::string::npos);
  b = Batch::FromRows({1, 2, 3, 4}, {-100, 2, 999, 4}, 1, 4);
  ASSERT_TRUE(b.ok());
  EXPECT_NE(b->Validate(320).message().find("label 999 at position 2"), std::string::npos);
  EXPECT_FALSE(Batch::Packed({1, 2, 3}, {}, {0, 2, 2, 3}).ok());  // empty document
  EXPECT_FALSE(Batch::Packed({1, 2, 3}, {}, {0, 2}).ok());        // does not cover T
  EXPECT_FALSE(Batch::FromRows({1, 2, 3}, {}, 2, 2).ok());
}

TEST(Batch, TargetsAreShiftedWithinEachDocument) {
  auto b = Batch::Packed({10, 11, 12, 20, 21}, {-100, 11, 12, 20, 21}, {0, 3, 5});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->targets, (std::vector<int32_t>{11, 12, -100, 21, -100}));
  EXPECT_EQ(b->positions, (std::vector<int32_t>{0, 1, 2, 0, 1}));
  EXPECT_EQ(b->num_loss_tokens(), 3);
}

}  // namespace
}  // namespace xt
