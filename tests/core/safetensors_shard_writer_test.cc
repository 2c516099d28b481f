// core/safetensors.h: SafetensorsShardWriter, the sharded checkpoint given a tensor at a time
// (an export that never holds the whole model): it holds only the shard being filled, writes
// what WriteSafetensorsSharded writes, and leaves an earlier save alone until Finish (and, when
// Finish fails part-way, no index over a mix of saves).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "util/testing.h"
#include "xtuner/core/file_util.h"
#include "xtuner/core/safetensors.h"

namespace xt {
namespace {

namespace fs = std::filesystem;

// n floats valued v, over memory `owner` keeps (its use count says who holds the tensor).
Tensor Owned(std::shared_ptr<std::vector<float>>* owner, int64_t n, float v) {
  *owner = std::make_shared<std::vector<float>>(size_t(n), v);
  return Tensor::Wrap(DType::F32, {n}, (*owner)->data(), *owner);
}

std::vector<std::string> Files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// 40 floats (160 B) per tensor, 300 B a shard: one tensor a shard. The first shard is on disk,
// and the writer lets go of its tensor, as soon as the second tensor comes.
TEST(SafetensorsShardWriter, HoldsOnlyTheShardBeingFilled) {
  const std::string dir = testing::TempDir("st_writer") + "/out";
  std::shared_ptr<std::vector<float>> a, b, c;
  SafetensorsShardWriter writer(dir, 300);
  ASSERT_TRUE(writer.Add("a", Owned(&a, 40, 1)).ok());
  EXPECT_EQ(a.use_count(), 2);  // (here and in the writer)
  ASSERT_TRUE(writer.Add("b", Owned(&b, 40, 2)).ok());
  EXPECT_EQ(a.use_count(), 1);
  EXPECT_EQ(b.use_count(), 2);
  EXPECT_EQ(Files(dir), std::vector<std::string>{"model-00001.partial.safetensors"});
  ASSERT_TRUE(writer.Add("c", Owned(&c, 40, 3)).ok());
  ASSERT_TRUE(writer.Finish().ok());
  EXPECT_EQ(Files(dir), (std::vector<std::string>{
                            "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                            "model-00003-of-00003.safetensors", "model.safetensors.index.json"}));
  // Each shard is the file WriteSafetensors writes of its tensor, byte for byte.
  const std::string again = testing::TempDir("st_writer_again");
  int i = 1;
  for (const auto& [name, owner] : {std::pair{"a", a}, {"b", b}, {"c", c}}) {
    const std::string f = "model-0000" + std::to_string(i++) + "-of-00003.safetensors";
    ASSERT_TRUE(WriteSafetensors(again + "/" + f,
                                 {{name, Tensor::Wrap(DType::F32, {40}, owner->data(), owner)}})
                    .ok());
    auto x = ReadFileToString(dir + "/" + f), y = ReadFileToString(again + "/" + f);
    ASSERT_TRUE(x.ok() && y.ok()) << f;
    EXPECT_EQ(*x, *y) << f;
  }
  auto ck = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status().message();
  auto got = ck->Get("b");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->f32()[39], 2.0f);
}

// A writer that stops before Finish (an error part-way, say) removes its partial shards and
// leaves the earlier save whole; Finish then replaces it.
TEST(SafetensorsShardWriter, AnEarlierSaveStandsUntilFinish) {
  const std::string dir = testing::TempDir("st_writer_earlier");
  std::shared_ptr<std::vector<float>> x, y, z;
  ASSERT_TRUE(WriteSafetensorsSharded(dir, {{"old", Owned(&x, 4, 7)}}, 300).ok());
  const auto before = ReadFileToString(dir + "/model.safetensors");
  ASSERT_TRUE(before.ok());
  {
    SafetensorsShardWriter writer(dir, 300);
    ASSERT_TRUE(writer.Add("a", Owned(&y, 40, 1)).ok());
    ASSERT_TRUE(writer.Add("b", Owned(&z, 40, 2)).ok());
    EXPECT_EQ(Files(dir),
              (std::vector<std::string>{"model-00001.partial.safetensors", "model.safetensors"}));
    // The same name again, in another shard: refused, naming it.
    const Status twice = writer.Add("a", Owned(&y, 4, 1));
    EXPECT_NE(twice.message().find("tensor name 'a' given twice"), std::string::npos)
        << twice.message();
    const Status empty = writer.Add("none", Tensor());
    EXPECT_NE(empty.message().find("tensor 'none' has no data"), std::string::npos)
        << empty.message();
  }
  EXPECT_EQ(Files(dir), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(*ReadFileToString(dir + "/model.safetensors"), *before);
  // A partial shard a killed writer left (no destructor ran) goes with the next save.
  ASSERT_TRUE(
      WriteSafetensors(dir + "/model-00007.partial.safetensors", {{"k", Owned(&x, 4, 7)}}).ok());
  SafetensorsShardWriter writer(dir, 300);
  ASSERT_TRUE(writer.Add("a", Owned(&y, 40, 1)).ok());
  ASSERT_TRUE(writer.Add("b", Owned(&z, 40, 2)).ok());
  ASSERT_TRUE(writer.Finish().ok());
  EXPECT_EQ(Files(dir), (std::vector<std::string>{"model-00001-of-00002.safetensors",
                                                  "model-00002-of-00002.safetensors",
                                                  "model.safetensors.index.json"}));
}

// A Finish whose rename fails part-way (here a directory stands where a shard goes): an earlier
// save none of whose files it renamed over still loads; one it renamed over has no index left,
// so loading it fails instead of reading a mix of old and new shards.
TEST(SafetensorsShardWriter, AFinishFailingPartWayLeavesNoIndexOverAMix) {
  std::shared_ptr<std::vector<float>> x, y, z, w;
  auto three_shards = [&](SafetensorsShardWriter* writer) {
    for (const char* name : {"a", "b", "c"}) ASSERT_TRUE(writer->Add(name, Owned(&y, 40, 1)).ok());
  };
  // An earlier save in two shards; the new one's second shard blocked.
  const std::string dir = testing::TempDir("st_writer_blocked");
  ASSERT_TRUE(
      WriteSafetensorsSharded(dir, {{"old1", Owned(&x, 40, 7)}, {"old2", Owned(&w, 40, 8)}}, 300)
          .ok());
  fs::create_directories(dir + "/model-00002-of-00003.safetensors/in");
  {
    SafetensorsShardWriter writer(dir, 300);
    three_shards(&writer);
    const Status st = writer.Finish();
    EXPECT_NE(st.message().find("cannot rename"), std::string::npos) << st.message();
  }
  auto ck = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status().message();
  ASSERT_TRUE(ck->Get("old2").ok());
  EXPECT_EQ(ck->Get("old2")->f32()[0], 8.0f);
  // An earlier save in three shards, its second blocked: the new first shard replaces the old.
  const std::string over = testing::TempDir("st_writer_over");
  ASSERT_TRUE(
      WriteSafetensorsSharded(
          over,
          {{"old1", Owned(&x, 40, 7)}, {"old2", Owned(&w, 40, 8)}, {"old3", Owned(&z, 40, 9)}}, 300)
          .ok());
  ASSERT_TRUE(fs::exists(over + "/model.safetensors.index.json"));
  fs::remove(over + "/model-00002-of-00003.safetensors");
  fs::create_directories(over + "/model-00002-of-00003.safetensors/in");
  {
    SafetensorsShardWriter writer(over, 300);
    three_shards(&writer);
    EXPECT_FALSE(writer.Finish().ok());
  }
  EXPECT_FALSE(fs::exists(over + "/model.safetensors.index.json"));
  EXPECT_FALSE(SafetensorsCheckpoint::Open(over).ok());
}

}  // namespace
}  // namespace xt
