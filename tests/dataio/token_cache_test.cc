#include "xtuner/data/token_cache.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "util/testing.h"

namespace xt {
namespace {

namespace fs = std::filesystem;

std::vector<Sample> RandomSamples(int count, int max_len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Sample> out(count);
  for (auto& s : out) {
    const int n = 1 + int(rng() % uint64_t(max_len));
    for (int t = 0; t < n; ++t) {
      const int32_t id = int32_t(rng() % 50000);
      s.input_ids.push_back(id);
      s.labels.push_back(rng() % 3 == 0 ? -100 : id);
    }
  }
  return out;
}

CacheKey KeyOf(const std::string& text) {
  CacheKeyBuilder b;
  b.AddBytes("data", text);
  return b.Finish();
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

void ExpectSameSamples(const TokenCache& c, const std::vector<Sample>& samples) {
  ASSERT_EQ(c.num_samples(), int64_t(samples.size()));
  int64_t tokens = 0, masked = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    SampleView v = c.sample(int64_t(i));
    ASSERT_EQ(std::vector<int32_t>(v.input_ids.begin(), v.input_ids.end()), samples[i].input_ids);
    ASSERT_EQ(std::vector<int32_t>(v.labels.begin(), v.labels.end()), samples[i].labels);
    tokens += int64_t(samples[i].input_ids.size());
    for (int32_t l : samples[i].labels) masked += l == -100;
  }
  EXPECT_EQ(c.num_tokens(), tokens);
  EXPECT_EQ(c.num_masked_tokens(), masked);
}

TEST(CacheKey, FramesPartsAndHashesFiles) {
  auto key = [](std::vector<std::pair<std::string, std::string>> parts) {
    CacheKeyBuilder b;
    for (auto& [n, v] : parts) b.AddBytes(n, v);
    return b.Finish();
  };
  EXPECT_EQ(key({{"a", "xyz"}}), key({{"a", "xyz"}}));
  EXPECT_NE(key({{"a", "xyz"}}), key({{"a", "xy"}}));
  EXPECT_NE(key({{"a", "ab"}, {"b", "c"}}), key({{"a", "a"}, {"b", "bc"}}));
  EXPECT_NE(key({{"a", "1"}, {"b", "2"}}), key({{"b", "2"}, {"a", "1"}}));
  EXPECT_NE(key({{"a", "1"}}), key({{"b", "1"}}));
  EXPECT_NE(key({}), key({{"", ""}}));
  EXPECT_EQ(key({}).Hex().size(), 32u);

  const std::string dir = testing::TempDir("cache_key");
  const std::string file = dir + "/data.jsonl";
  std::string big(3 << 20, 'x');  // more than one read buffer
  big[12345] = 'y';
  WriteBytes(file, big);
  CacheKeyBuilder b;
  ASSERT_TRUE(b.AddFile("data", file).ok());
  EXPECT_EQ(b.Finish(), key({{"data", big}}));

  CacheKeyBuilder missing;
  Status s = missing.AddFile("data", dir + "/nope.jsonl");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("nope.jsonl"), std::string::npos) << s.message();
  CacheKeyBuilder directory;
  EXPECT_FALSE(directory.AddFile("data", dir).ok());
}

TEST(TokenCache, RoundTrip) {
  const std::string dir = testing::TempDir("token_cache");
  const std::string path = dir + "/train.xtc";
  const auto samples = RandomSamples(200, 300, 1);
  const CacheKey key = KeyOf("v1");
  ASSERT_TRUE(WriteTokenCache(path, key, samples).ok());
  CacheProblem p = CacheProblem::kCorrupt;
  auto c = OpenTokenCache(path, key, &p);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(p, CacheProblem::kNone);
  ExpectSameSamples(*c, samples);
  EXPECT_EQ(c->key(), key);
  EXPECT_EQ(c->path(), path);
  std::vector<int64_t> lengths = c->lengths();
  for (size_t i = 0; i < samples.size(); ++i) {
    EXPECT_EQ(lengths[i], int64_t(samples[i].input_ids.size()));
    EXPECT_EQ(c->length(int64_t(i)), lengths[i]);
  }
  Sample copy = c->Copy(7);
  EXPECT_EQ(copy.input_ids, samples[7].input_ids);
  EXPECT_EQ(copy.labels, samples[7].labels);
  EXPECT_TRUE(testing::TempFilesIn(dir).empty());

  // Zero-copy: the views point into one mapping, aligned for their types.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c->sample(3).input_ids.data()) % 4, 0u);
  // Copies share the mapping and outlive the original.
  TokenCache copy_of_cache = *c;
  c = Status::Error("dropped");
  EXPECT_EQ(copy_of_cache.sample(5).input_ids[0], samples[5].input_ids[0]);
}

TEST(TokenCache, EmptyCacheAndLargeStreamingWrite) {
  const std::string dir = testing::TempDir("token_cache");
  ASSERT_TRUE(WriteTokenCache(dir + "/empty", KeyOf("e"), {}).ok());
  auto empty = OpenTokenCache(dir + "/empty", KeyOf("e"));
  ASSERT_TRUE(empty.ok()) << empty.status().message();
  EXPECT_EQ(empty->num_samples(), 0);
  EXPECT_EQ(empty->num_tokens(), 0);

  // Several flushes of the 1 MiB buffer.
  auto w = TokenCacheWriter::Create(dir + "/big", KeyOf("b"));
  ASSERT_TRUE(w.ok());
  std::vector<Sample> samples = RandomSamples(400, 2000, 2);
  for (const Sample& s : samples) ASSERT_TRUE(w->Add(s).ok());
  EXPECT_EQ(w->num_samples(), 400);
  ASSERT_TRUE(w->Commit().ok());
  EXPECT_FALSE(w->Add(samples[0]).ok());  // finished
  EXPECT_FALSE(w->Commit().ok());
  auto big = OpenTokenCache(dir + "/big", KeyOf("b"));
  ASSERT_TRUE(big.ok()) << big.status().message();
  ExpectSameSamples(*big, samples);
}

TEST(TokenCache, WriterRejectsBadSamples) {
  const std::string dir = testing::TempDir("token_cache");
  auto w = TokenCacheWriter::Create(dir + "/c", KeyOf("k"));
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(w->Add(Sample{{1, 2}, {-100, 2}}).ok());
  Status s = w->Add(Sample{{1, 2}, {1}});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("sample 1 has 2 input_ids but 1 labels"), std::string::npos)
      << s.message();
  EXPECT_FALSE(w->Add(Sample{{}, {}}).ok());
  EXPECT_FALSE(w->Add(Sample{{1, -3}, {1, 1}}).ok());
  s = w->Add(Sample{{1, 3}, {1, -5}});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("label -5 at position 1"), std::string::npos) << s.message();
  // Rejected samples leave the writer usable and unchanged.
  ASSERT_TRUE(w->Add(Sample{{4}, {4}}).ok());
  ASSERT_TRUE(w->Commit().ok());
  auto c = OpenTokenCache(dir + "/c", KeyOf("k"));
  ASSERT_TRUE(c.ok());
  ExpectSameSamples(*c, {Sample{{1, 2}, {-100, 2}}, Sample{{4}, {4}}});

  auto bad_dir = TokenCacheWriter::Create(dir + "/no/such/dir/c", KeyOf("k"));
  ASSERT_FALSE(bad_dir.ok());
  EXPECT_NE(bad_dir.status().message().find("no/such/dir/c"), std::string::npos);
}

// A builder that writes `samples` and counts its calls.
struct CountingBuilder {
  std::vector<Sample> samples;
  int calls = 0;
  TokenCacheBuildFn fn() {
    return [this](TokenCacheWriter& w) {
      ++calls;
      for (const Sample& s : samples) XT_RETURN_IF_ERROR(w.Add(s));
      return Status::OK();
    };
  }
};

TEST(TokenCache, LoadOrBuildReusesAndRebuildsWhenDataChanges) {
  const std::string dir = testing::TempDir("token_cache");
  const std::string data = dir + "/data.jsonl", path = dir + "/data.xtc";
  WriteBytes(data, "{\"text\": \"one\"}\n");
  auto key_of_data = [&] {
    CacheKeyBuilder b;
    EXPECT_TRUE(b.AddFile("data", data).ok());
    b.AddBytes("chat_template", "qwen3");
    b.AddBytes("options", "max_length=64");
    return b.Finish();
  };
  CountingBuilder v1{RandomSamples(10, 20, 3)};
  CacheReport r;
  auto c = LoadOrBuildTokenCache(path, key_of_data(), v1.fn(), &r);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(r.problem, CacheProblem::kMissing);
  EXPECT_TRUE(r.rebuilt());
  EXPECT_EQ(v1.calls, 1);
  ExpectSameSamples(*c, v1.samples);

  c = LoadOrBuildTokenCache(path, key_of_data(), v1.fn(), &r);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(r.problem, CacheProblem::kNone);
  EXPECT_FALSE(r.rebuilt());
  EXPECT_EQ(v1.calls, 1);  // reused

  WriteBytes(data, "{\"text\": \"two\"}\n");
  CountingBuilder v2{RandomSamples(12, 20, 4)};
  c = LoadOrBuildTokenCache(path, key_of_data(), v2.fn(), &r);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(r.problem, CacheProblem::kKeyMismatch) << r.detail;
  EXPECT_NE(r.detail.find(path), std::string::npos) << r.detail;
  EXPECT_EQ(v2.calls, 1);
  ExpectSameSamples(*c, v2.samples);
  EXPECT_TRUE(testing::TempFilesIn(dir).empty());
}

TEST(TokenCache, TruncatedAtEveryByteIsRebuilt) {
  const std::string dir = testing::TempDir("token_cache");
  const std::string path = dir + "/c.xtc";
  CountingBuilder b{RandomSamples(3, 6, 5)};
  const CacheKey key = KeyOf("t");
  ASSERT_TRUE(WriteTokenCache(path, key, b.samples).ok());
  const std::string full = ReadBytes(path);
  ASSERT_GT(full.size(), 144u);
  for (size_t len = 0; len < full.size(); ++len) {
    WriteBytes(path, full.substr(0, len));
    CacheProblem p;
    auto opened = OpenTokenCache(path, key, &p);
    ASSERT_FALSE(opened.ok()) << "truncated to " << len;
    ASSERT_EQ(p, CacheProblem::kTruncated) << len << ": " << opened.status().message();
    CacheReport r;
    auto c = LoadOrBuildTokenCache(path, key, b.fn(), &r);
    ASSERT_TRUE(c.ok()) << c.status().message();
    ASSERT_EQ(r.problem, CacheProblem::kTruncated);
    ExpectSameSamples(*c, b.samples);
    ASSERT_EQ(ReadBytes(path), full);  // the rebuild is byte-identical
  }
  EXPECT_EQ(b.calls, int(full.size()));
}

TEST(TokenCache, EveryFlippedByteIsDetected) {
  const std::string dir = testing::TempDir("token_cache");
  const std::string path = dir + "/c.xtc";
  const CacheKey key = KeyOf("f");
  CountingBuilder b{RandomSamples(3, 6, 6)};
  ASSERT_TRUE(WriteTokenCache(path, key, b.samples).ok());
  const std::string full = ReadBytes(path);
  for (size_t i = 0; i < full.size(); ++i) {
    std::string bad = full;
    bad[i] ^= 0x10;
    WriteBytes(path, bad);
    CacheProblem p;
    auto opened = OpenTokenCache(path, key, &p);
    ASSERT_FALSE(opened.ok()) << "byte " << i;
    ASSERT_NE(p, CacheProblem::kNone);
    if (i >= 128 && i < full.size() - 16) {
      ASSERT_EQ(p, CacheProblem::kCorrupt) << i << ": " << opened.status().message();
    }
  }
  // A flipped payload byte: rebuilt, and the message says why.
  std::string bad = full;
  bad[130] ^= 1;
  WriteBytes(path, bad);
  CacheReport r;
  auto c = LoadOrBuildTokenCache(path, key, b.fn(), &r);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(r.problem, CacheProblem::kCorrupt);
  EXPECT_NE(r.detail.find("payload checksum mismatch"), std::string::npos) << r.detail;
  ExpectSameSamples(*c, b.samples);
}

TEST(TokenCache, OtherKeyVersionOrJunkIsRebuilt) {
  const std::string dir = testing::TempDir("token_cache");
  const std::string path = dir + "/c.xtc";
  CountingBuilder b{RandomSamples(5, 8, 7)};
  ASSERT_TRUE(WriteTokenCache(path, KeyOf("old"), b.samples).ok());
  const std::string full = ReadBytes(path);

  CacheProblem p;
  auto opened = OpenTokenCache(path, KeyOf("new"), &p);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(p, CacheProblem::kKeyMismatch);
  EXPECT_NE(opened.status().message().find(KeyOf("new").Hex()), std::string::npos);

  auto expect_rebuilt = [&](const std::string& bytes, CacheProblem want) {
    WriteBytes(path, bytes);
    CacheReport r;
    auto c = LoadOrBuildTokenCache(path, KeyOf("old"), b.fn(), &r);
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_EQ(r.problem, want) << CacheProblemName(r.problem) << ": " << r.detail;
    ExpectSameSamples(*c, b.samples);
  };
  std::string v2 = full;
  v2[8] = 2;  // format version 2
  expect_rebuilt(v2, CacheProblem::kVersionMismatch);
  expect_rebuilt(std::string(1000, 'j'), CacheProblem::kNotACache);
  expect_rebuilt("junk", CacheProblem::kNotACache);
  expect_rebuilt(full + "x", CacheProblem::kCorrupt);  // trailing bytes

  // A directory in the way: unreadable, and the rebuild's rename fails with a clear error.
  fs::remove(path);
  fs::create_directory(path);
  ASSERT_FALSE(OpenTokenCache(path, KeyOf("old"), &p).ok());
  EXPECT_EQ(p, CacheProblem::kUnreadable);
  auto c = LoadOrBuildTokenCache(path, KeyOf("old"), b.fn());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(path), std::string::npos) << c.status().message();
  EXPECT_TRUE(testing::TempFilesIn(dir).empty());
}

TEST(TokenCache, FailedBuildLeavesOldCache) {
  const std::string dir = testing::TempDir("token_cache");
  const std::string path = dir + "/c.xtc";
  const auto old_samples = RandomSamples(4, 8, 8);
  ASSERT_TRUE(WriteTokenCache(path, KeyOf("old"), old_samples).ok());
  auto c = LoadOrBuildTokenCache(path, KeyOf("new"), [](TokenCacheWriter& w) {
    XT_RETURN_IF_ERROR(w.Add(Sample{{1}, {1}}));
    return Status::Error("data.jsonl:3: not JSON");
  });
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("data.jsonl:3: not JSON"), std::string::npos);
  auto old = OpenTokenCache(path, KeyOf("old"));
  ASSERT_TRUE(old.ok());
  ExpectSameSamples(*old, old_samples);
  EXPECT_TRUE(testing::TempFilesIn(dir).empty());

  // An abandoned writer removes its temporary file.
  {
    auto w = TokenCacheWriter::Create(path, KeyOf("new"));
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->Add(Sample{{1}, {1}}).ok());
    EXPECT_TRUE(fs::exists(w->temp_path()));
  }
  EXPECT_TRUE(testing::TempFilesIn(dir).empty());
  auto still = OpenTokenCache(path, KeyOf("old"));
  ASSERT_TRUE(still.ok());
  ExpectSameSamples(*still, old_samples);
}

// A process killed while writing: its partial temporary file stays behind, the real path keeps
// its old content (or stays absent), and the next LoadOrBuild builds a valid cache.
TEST(TokenCache, KillMidWrite) {
  const std::string dir = testing::TempDir("token_cache");
  const auto samples = RandomSamples(300, 2000, 9);  // > 1 MiB: the child's writes reach disk
  auto killed_writer = [&](const std::string& path) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto w = TokenCacheWriter::Create(path, KeyOf("new"));
      if (!w.ok()) ::_exit(2);
      for (const Sample& s : samples) {
        if (!w->Add(s).ok()) ::_exit(3);
      }
      ::_exit(0);  // "killed": no Commit, no destructors
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    std::vector<std::string> tmp = testing::TempFilesIn(dir);
    ASSERT_EQ(tmp.size(), 1u);
    EXPECT_GT(fs::file_size(tmp[0]), 1u << 20);
    // Even under the real name the partial file would not pass as a cache.
    CacheProblem p;
    EXPECT_FALSE(OpenTokenCache(tmp[0], KeyOf("new"), &p).ok());
    EXPECT_EQ(p, CacheProblem::kNotACache);
    fs::remove(tmp[0]);
  };

  // No cache before: none after.
  const std::string fresh = dir + "/fresh.xtc";
  killed_writer(fresh);
  EXPECT_FALSE(fs::exists(fresh));

  // An old cache before: still there and valid after.
  const std::string path = dir + "/c.xtc";
  const auto old_samples = RandomSamples(4, 8, 10);
  ASSERT_TRUE(WriteTokenCache(path, KeyOf("old"), old_samples).ok());
  killed_writer(path);
  auto old = OpenTokenCache(path, KeyOf("old"));
  ASSERT_TRUE(old.ok()) << old.status().message();
  ExpectSameSamples(*old, old_samples);
  CountingBuilder b{samples};
  CacheReport r;
  auto c = LoadOrBuildTokenCache(path, KeyOf("new"), b.fn(), &r);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(r.problem, CacheProblem::kKeyMismatch);
  ExpectSameSamples(*c, samples);
  // The old mapping stays readable after the rename replaced the file.
  ExpectSameSamples(*old, old_samples);
}

}  // namespace
}  // namespace xt
