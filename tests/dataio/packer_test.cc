#include "xtuner/data/packer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "util/testing.h"

namespace xt {
namespace {

// Samples whose tokens encode (sample, position), so any misplacement shows.
std::vector<Sample> SamplesOfLengths(const std::vector<int64_t>& lengths) {
  std::vector<Sample> out(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    for (int64_t t = 0; t < lengths[i]; ++t) {
      const int32_t id = int32_t(i * 1000 + size_t(t));
      out[i].input_ids.push_back(id);
      out[i].labels.push_back(t % 4 == 0 ? -100 : id);
    }
  }
  return out;
}

// SFT-like lengths: mostly short, a long tail, some over the row length.
std::vector<int64_t> SftLengths(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::lognormal_distribution<double> dist(5.5, 1.0);  // median ~245 tokens
  std::vector<int64_t> out(n);
  for (auto& l : out) l = 1 + int64_t(dist(rng));
  return out;
}

// First-fit the slow, obvious way, for comparison with the tree.
std::vector<std::vector<PackPiece>> NaiveFirstFit(const std::vector<int64_t>& lengths,
                                                  const PackOptions& o) {
  std::vector<std::vector<PackPiece>> rows;
  std::vector<int64_t> free;
  for (int64_t i : SeededPermutation(int64_t(lengths.size()), o.seed)) {
    int64_t len = lengths[i];
    if (len == 0 || (len > o.max_length && o.overlong == Overlong::kDrop)) continue;
    len = std::min(len, o.max_length);
    size_t r = 0;
    while (r < rows.size() && free[r] < len) ++r;
    if (r == rows.size()) {
      rows.emplace_back();
      free.push_back(o.max_length);
    }
    rows[r].push_back({i, len});
    free[r] -= len;
  }
  return rows;
}

std::vector<std::vector<PackPiece>> RowsOf(const PackPlan& plan) {
  std::vector<std::vector<PackPiece>> rows;
  for (int64_t r = 0; r < plan.num_rows(); ++r) {
    auto row = plan.row(r);
    rows.emplace_back(row.begin(), row.end());
  }
  return rows;
}

TEST(SeededPermutation, IsAPermutationFixedAcrossPlatforms) {
  for (int64_t n : {0, 1, 2, 7, 1000}) {
    std::vector<int64_t> p = SeededPermutation(n, 42);
    std::vector<int64_t> sorted = p;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(sorted[i], i);
  }
  // Pinned: mt19937_64 is fixed by the standard and the rest is ours, so these never change.
  EXPECT_EQ(SeededPermutation(10, 0), (std::vector<int64_t>{7, 2, 0, 8, 3, 9, 6, 1, 5, 4}));
  EXPECT_EQ(SeededPermutation(10, 1234), (std::vector<int64_t>{0, 3, 4, 7, 9, 8, 5, 6, 1, 2}));
  EXPECT_NE(SeededPermutation(1000, 1), SeededPermutation(1000, 2));

  // Roughly uniform: each of 5 values lands first about 1/5 of the time.
  std::vector<int> first(5);
  for (uint64_t seed = 0; seed < 5000; ++seed) ++first[SeededPermutation(5, seed)[0]];
  for (int c : first) EXPECT_NEAR(c, 1000, 150);
}

TEST(Packer, RoundTripsToTheSamples) {
  std::vector<int64_t> lengths = SftLengths(3000, 1);
  lengths[5] = 0;  // an empty sample is dropped
  const std::vector<Sample> samples = SamplesOfLengths(lengths);
  PackOptions o;
  o.max_length = 1024;
  o.seed = 7;
  o.pad_id = 151643;
  auto plan = PlanPacking(lengths, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  const PackStats& st = plan->stats;

  std::vector<int> seen(samples.size());
  int64_t tokens = 0, padding = 0;
  for (int64_t r = 0; r < plan->num_rows(); ++r) {
    PackedRow row = BuildRow(*plan, r, samples);
    ASSERT_EQ(int64_t(row.input_ids.size()), o.max_length);
    ASSERT_EQ(row.labels.size(), row.input_ids.size());
    ASSERT_EQ(row.position_ids.size(), row.input_ids.size());
    ASSERT_EQ(row.cu_seqlens.front(), 0);
    ASSERT_EQ(row.cu_seqlens.back(), o.max_length);
    ASSERT_EQ(row.sample_index.size() + 1, row.cu_seqlens.size());
    for (size_t d = 0; d < row.sample_index.size(); ++d) {
      const int64_t b = row.cu_seqlens[d], e = row.cu_seqlens[d + 1];
      ASSERT_LT(b, e);
      for (int64_t t = b; t < e; ++t) ASSERT_EQ(row.position_ids[t], t - b);
      const int64_t s = row.sample_index[d];
      if (s < 0) {  // padding: last, and without loss
        ASSERT_EQ(d + 1, row.sample_index.size());
        for (int64_t t = b; t < e; ++t) {
          ASSERT_EQ(row.input_ids[t], o.pad_id);
          ASSERT_EQ(row.labels[t], -100);
        }
        padding += e - b;
        continue;
      }
      ++seen[s];
      const Sample& want = samples[s];
      const int64_t n = std::min<int64_t>(int64_t(want.input_ids.size()), o.max_length);
      ASSERT_EQ(e - b, n) << "sample " << s;
      ASSERT_TRUE(std::equal(want.input_ids.begin(), want.input_ids.begin() + n,
                             row.input_ids.begin() + b));
      ASSERT_TRUE(std::equal(want.labels.begin(), want.labels.begin() + n, row.labels.begin() + b));
      tokens += n;
    }
  }
  int64_t truncated = 0, lost = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    EXPECT_EQ(seen[i], lengths[i] == 0 ? 0 : 1) << "sample " << i;
    truncated += lengths[i] > o.max_length;
    lost += std::max<int64_t>(0, lengths[i] - o.max_length);
  }
  ASSERT_GT(truncated, 0);
  EXPECT_EQ(st.rows, plan->num_rows());
  EXPECT_EQ(st.samples, int64_t(samples.size()) - 1);
  EXPECT_EQ(st.tokens, tokens);
  EXPECT_EQ(st.padding, padding);
  EXPECT_EQ(st.truncated, truncated);
  EXPECT_EQ(st.dropped, 1);
  EXPECT_EQ(st.tokens_lost, lost);
  // First-fit on these lengths leaves little room unused (next-fit wastes several times more).
  EXPECT_LT(st.waste(), 0.03) << st.waste();
  std::printf("first-fit: %lld samples -> %lld rows of %lld, waste %.2f%%\n", (long long)st.samples,
              (long long)st.rows, (long long)o.max_length, 100 * st.waste());
}

TEST(Packer, IsFirstFitInTheSeededOrder) {
  const std::vector<int64_t> lengths = SftLengths(2000, 2);
  for (Overlong ol : {Overlong::kTruncate, Overlong::kDrop}) {
    PackOptions o;
    o.max_length = 700;
    o.seed = 3;
    o.overlong = ol;
    auto plan = PlanPacking(lengths, o);
    ASSERT_TRUE(plan.ok());
    EXPECT_EQ(RowsOf(*plan), NaiveFirstFit(lengths, o));
  }
}

TEST(Packer, CountsTruncatedAndDropped) {
  const std::vector<int64_t> lengths = {5, 10, 11, 30, 0, 1};
  PackOptions o;
  o.max_length = 10;
  auto plan = PlanPacking(lengths, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->stats.truncated, 2);
  EXPECT_EQ(plan->stats.dropped, 1);  // the empty one
  EXPECT_EQ(plan->stats.tokens_lost, 1 + 20);
  EXPECT_EQ(plan->stats.samples, 5);
  EXPECT_EQ(plan->stats.tokens, 5 + 10 + 10 + 10 + 1);
  EXPECT_EQ(plan->stats.rows, 4);  // 10 | 10 | 10 | 5 + 1
  EXPECT_EQ(plan->stats.padding, 4);

  o.overlong = Overlong::kDrop;
  plan = PlanPacking(lengths, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->stats.truncated, 0);
  EXPECT_EQ(plan->stats.dropped, 3);
  EXPECT_EQ(plan->stats.tokens_lost, 41);
  EXPECT_EQ(plan->stats.samples, 3);
  EXPECT_EQ(plan->stats.rows, 2);
  for (int64_t r = 0; r < plan->num_rows(); ++r) {
    for (const PackPiece& p : plan->row(r))
      EXPECT_TRUE(p.sample == 0 || p.sample == 1 || p.sample == 5);
  }
}

TEST(Packer, DeterministicBySeed) {
  const std::vector<int64_t> lengths = SftLengths(500, 3);
  PackOptions o;
  o.max_length = 2048;
  o.seed = 11;
  auto a = PlanPacking(lengths, o), b = PlanPacking(lengths, o);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(RowsOf(*a), RowsOf(*b));
  o.seed = 12;
  auto c = PlanPacking(lengths, o);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(RowsOf(*a), RowsOf(*c));
  EXPECT_NE(a->pieces[0].sample, c->pieces[0].sample);
}

TEST(Packer, UnpaddedRowsAndBatches) {
  const std::vector<int64_t> lengths = {3, 4, 2, 6, 1};
  const std::vector<Sample> samples = SamplesOfLengths(lengths);
  PackOptions o;
  o.max_length = 8;
  o.pad = false;
  auto plan = PlanPacking(lengths, o);
  ASSERT_TRUE(plan.ok());
  int64_t total = 0;
  for (int64_t r = 0; r < plan->num_rows(); ++r) {
    PackedRow row = BuildRow(*plan, r, samples);
    ASSERT_LE(int64_t(row.input_ids.size()), o.max_length);
    ASSERT_EQ(row.cu_seqlens.back(), int64_t(row.input_ids.size()));
    for (int64_t s : row.sample_index) ASSERT_GE(s, 0);
    total += int64_t(row.input_ids.size());

    // The model's view: same positions; each document's last token predicts nothing.
    auto batch = RowToBatch(row);
    ASSERT_TRUE(batch.ok()) << batch.status().message();
    EXPECT_EQ(batch->positions, row.position_ids);
    EXPECT_TRUE(batch->Validate(1 << 20).ok());
    for (size_t d = 0; d + 1 < row.cu_seqlens.size(); ++d) {
      const int64_t b = row.cu_seqlens[d], e = row.cu_seqlens[d + 1];
      for (int64_t t = b; t + 1 < e; ++t) EXPECT_EQ(batch->targets[t], row.labels[t + 1]);
      EXPECT_EQ(batch->targets[e - 1], -100);
    }
  }
  EXPECT_EQ(total, 16);
  EXPECT_EQ(plan->stats.padding, plan->num_rows() * 8 - 16);
}

TEST(Packer, RowsFromATokenCacheEqualRowsFromSamples) {
  const std::vector<int64_t> lengths = SftLengths(200, 4);
  const std::vector<Sample> samples = SamplesOfLengths(lengths);
  const std::string path = testing::TempDir("packer") + "/c.xtc";
  CacheKey key{1, 2};
  ASSERT_TRUE(WriteTokenCache(path, key, samples).ok());
  auto cache = OpenTokenCache(path, key);
  ASSERT_TRUE(cache.ok());
  PackOptions o;
  o.max_length = 512;
  auto plan = PlanPacking(cache->lengths(), o);
  ASSERT_TRUE(plan.ok());
  for (int64_t r = 0; r < plan->num_rows(); ++r) {
    PackedRow a = BuildRow(*plan, r, *cache), b = BuildRow(*plan, r, samples);
    ASSERT_EQ(a.input_ids, b.input_ids);
    ASSERT_EQ(a.labels, b.labels);
    ASSERT_EQ(a.cu_seqlens, b.cu_seqlens);
    ASSERT_EQ(a.position_ids, b.position_ids);
    ASSERT_EQ(a.sample_index, b.sample_index);
  }
}

TEST(Packer, Errors) {
  PackOptions o;
  o.max_length = 0;
  auto plan = PlanPacking({1, 2}, o);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("max_length"), std::string::npos);
  o.max_length = 4;
  plan = PlanPacking({1, -2}, o);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("sample 1"), std::string::npos);
  o.pad_id = -1;
  EXPECT_FALSE(PlanPacking({1}, o).ok());
  o.pad_id = 0;
  plan = PlanPacking({}, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->num_rows(), 0);
  EXPECT_EQ(plan->stats.waste(), 0.0);
}

}  // namespace
}  // namespace xt
