// Mixing datasets by ratio: which samples, how many times, in what order; all from one seed.
#include <cmath>
#include <limits>

#include "xtuner/core/rng.h"
#include "xtuner/data/dataset.h"

namespace xt {

namespace {

// SplitMix64 (core/rng.h) with an unbiased bounded draw.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() { return SplitMix64(&state_); }
  // Uniform in [0, n), n > 0, without modulo bias (Lemire's multiply-and-reject).
  uint64_t Below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;
    for (;;) {
      unsigned __int128 m = static_cast<unsigned __int128>(Next()) * n;
      if (static_cast<uint64_t>(m) >= threshold) return static_cast<uint64_t>(m >> 64);
    }
  }

 private:
  uint64_t state_;
};

// A distinct stream per purpose: the seed mixed with a tag.
uint64_t StreamSeed(uint64_t seed, uint64_t tag) {
  Rng r(seed ^ (0xD1B54A32D192ED03ull * (tag + 1)));
  return r.Next();
}

constexpr int64_t kMaxEntries = int64_t{1} << 40;

}  // namespace

Result<std::vector<MixEntry>> PlanMixture(const std::vector<int64_t>& sizes,
                                          const std::vector<double>& ratios, uint64_t seed) {
  if (sizes.size() != ratios.size()) {
    return Status::Error("PlanMixture: " + std::to_string(sizes.size()) + " datasets but " +
                         std::to_string(ratios.size()) + " ratios");
  }
  // Counts first, so a huge ratio fails before allocating.
  int64_t total = 0;
  std::vector<int64_t> whole(sizes.size()), extra(sizes.size());
  for (size_t d = 0; d < sizes.size(); ++d) {
    const double r = ratios[d];
    if (!std::isfinite(r) || r < 0) {
      return Status::Error("dataset " + std::to_string(d) +
                           ": ratio must be a finite number >= 0, "
                           "got " +
                           std::to_string(r));
    }
    const double copies = std::floor(r);
    const double n = static_cast<double>(sizes[d]);
    if (copies * n + n > static_cast<double>(kMaxEntries)) {
      return Status::Error("dataset " + std::to_string(d) + ": ratio " + std::to_string(r) +
                           " asks for too many samples");
    }
    whole[d] = static_cast<int64_t>(copies);
    extra[d] = std::llround((r - copies) * n);
    total += whole[d] * sizes[d] + extra[d];
  }

  std::vector<MixEntry> plan;
  plan.reserve(static_cast<size_t>(total));
  for (size_t d = 0; d < sizes.size(); ++d) {
    const int64_t n = sizes[d];
    for (int64_t c = 0; c < whole[d]; ++c) {
      for (int64_t i = 0; i < n; ++i) plan.push_back({static_cast<int32_t>(d), i});
    }
    if (extra[d] > 0) {
      // The first extra[d] places of a partial Fisher-Yates shuffle of 0..n-1.
      Rng rng(StreamSeed(seed, d));
      std::vector<int64_t> idx(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) idx[i] = i;
      for (int64_t k = 0; k < extra[d]; ++k) {
        int64_t j = k + static_cast<int64_t>(rng.Below(static_cast<uint64_t>(n - k)));
        std::swap(idx[k], idx[j]);
        plan.push_back({static_cast<int32_t>(d), idx[k]});
      }
    }
  }
  Rng rng(StreamSeed(seed, std::numeric_limits<uint64_t>::max() - 1));
  for (size_t k = plan.size(); k > 1; --k) {
    std::swap(plan[k - 1], plan[rng.Below(k)]);
  }
  return plan;
}

Result<std::vector<Sample>> MixDatasets(std::vector<std::vector<Sample>> datasets,
                                        const std::vector<double>& ratios, uint64_t seed) {
  std::vector<int64_t> sizes;
  for (const auto& d : datasets) sizes.push_back(static_cast<int64_t>(d.size()));
  XT_ASSIGN_OR_RETURN(std::vector<MixEntry> plan, PlanMixture(sizes, ratios, seed));
  // Move each sample at its last use and copy it at the earlier ones.
  std::vector<std::vector<int64_t>> last(datasets.size());
  for (size_t d = 0; d < datasets.size(); ++d) last[d].assign(datasets[d].size(), -1);
  for (size_t k = 0; k < plan.size(); ++k) last[plan[k].dataset][plan[k].index] = int64_t(k);
  std::vector<Sample> out;
  out.reserve(plan.size());
  for (size_t k = 0; k < plan.size(); ++k) {
    Sample& s = datasets[plan[k].dataset][plan[k].index];
    if (last[plan[k].dataset][plan[k].index] == int64_t(k)) {
      out.push_back(std::move(s));
    } else {
      out.push_back(s);
    }
  }
  return out;
}

Result<std::vector<Sample>> LoadMixture(const std::vector<DatasetSpec>& specs,
                                        const Tokenizer& tokenizer,
                                        const ChatTemplate& chat_template,
                                        const LoadOptions& options, uint64_t seed,
                                        std::vector<LoadReport>* reports) {
  std::vector<std::vector<Sample>> datasets;
  std::vector<double> ratios;
  if (reports) reports->clear();
  for (const auto& spec : specs) {
    if (!std::isfinite(spec.ratio) || spec.ratio < 0) {
      return Status::Error(spec.path + ": ratio must be a finite number >= 0, got " +
                           std::to_string(spec.ratio));
    }
  }
  for (const auto& spec : specs) {
    LoadReport report;
    XT_ASSIGN_OR_RETURN(std::vector<Sample> samples,
                        LoadJsonl(spec, tokenizer, chat_template, options, &report));
    datasets.push_back(std::move(samples));
    ratios.push_back(spec.ratio);
    if (reports) reports->push_back(std::move(report));
  }
  return MixDatasets(std::move(datasets), ratios, seed);
}

}  // namespace xt
