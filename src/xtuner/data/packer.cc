#include "xtuner/data/packer.h"

#include <algorithm>
#include <random>
#include <string>

namespace xt {

namespace {

// Uniform in [0, bound] (bound < 2^63), by rejection: draws at or above the largest multiple of
// (bound + 1) that fits in 2^64 are discarded, so every value is exactly equally likely.
uint64_t UniformUpTo(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t range = bound + 1;
  const uint64_t rem = (UINT64_MAX % range + 1) % range;  // 2^64 mod range
  const uint64_t accept_max = UINT64_MAX - rem;           // [0, accept_max] is k * range values
  for (;;) {
    const uint64_t x = rng();
    if (x <= accept_max) return x % range;
  }
}

// Free space of rows, as a max-tree: leftmost row with at least `need` free in O(log rows).
// Rows not yet opened have max_length free, so "leftmost that fits" opens rows in order.
class FreeSpaceTree {
 public:
  explicit FreeSpaceTree(int64_t max_length) : max_length_(max_length) { Grow(1024); }

  // The leftmost row with free >= need (1 <= need <= max_length); grows as needed.
  int64_t FirstFit(int64_t need) {
    if (tree_[1] < need) Grow(2 * leaves_);
    int64_t node = 1;
    while (node < leaves_) node = tree_[2 * node] >= need ? 2 * node : 2 * node + 1;
    return node - leaves_;
  }
  void Take(int64_t row, int64_t amount) {
    int64_t node = row + leaves_;
    tree_[node] -= amount;
    for (node /= 2; node >= 1; node /= 2) {
      tree_[node] = std::max(tree_[2 * node], tree_[2 * node + 1]);
    }
  }

 private:
  void Grow(int64_t leaves) {
    std::vector<int64_t> old(tree_.begin() + std::min<int64_t>(leaves_, tree_.size()), tree_.end());
    leaves_ = leaves;
    tree_.assign(size_t(2 * leaves_), max_length_);
    std::copy(old.begin(), old.end(), tree_.begin() + leaves_);
    for (int64_t node = leaves_ - 1; node >= 1; --node) {
      tree_[node] = std::max(tree_[2 * node], tree_[2 * node + 1]);
    }
  }

  int64_t max_length_;
  int64_t leaves_ = 0;
  std::vector<int64_t> tree_;  // (2 * leaves): node k has children 2k, 2k + 1; leaves at [L, 2L)
};

template <class GetSample>
PackedRow BuildRowImpl(const PackPlan& plan, int64_t r, int64_t num_samples, GetSample get) {
  XT_CHECK(r >= 0 && r < plan.num_rows(), "BuildRow: row " + std::to_string(r) +
                                              " out of range [0, " +
                                              std::to_string(plan.num_rows()) + ")");
  PackedRow row;
  const int64_t cap = plan.options.pad ? plan.options.max_length : 0;
  row.input_ids.reserve(size_t(cap));
  row.labels.reserve(size_t(cap));
  row.position_ids.reserve(size_t(cap));
  row.cu_seqlens.push_back(0);
  for (const PackPiece& piece : plan.row(r)) {
    XT_CHECK(piece.sample >= 0 && piece.sample < num_samples,
             "BuildRow: the plan names sample " + std::to_string(piece.sample) + " of " +
                 std::to_string(num_samples) + " (a plan for other samples?)");
    const SampleView s = get(piece.sample);
    XT_CHECK(s.size() >= piece.length && s.labels.size() == s.input_ids.size(),
             "BuildRow: sample " + std::to_string(piece.sample) + " is shorter than planned");
    const size_t n = size_t(piece.length);
    row.input_ids.insert(row.input_ids.end(), s.input_ids.begin(), s.input_ids.begin() + n);
    row.labels.insert(row.labels.end(), s.labels.begin(), s.labels.begin() + n);
    for (int64_t t = 0; t < piece.length; ++t) row.position_ids.push_back(int32_t(t));
    row.cu_seqlens.push_back(int64_t(row.input_ids.size()));
    row.sample_index.push_back(piece.sample);
  }
  const int64_t pad = cap - int64_t(row.input_ids.size());
  if (pad > 0) {
    row.input_ids.insert(row.input_ids.end(), size_t(pad), plan.options.pad_id);
    row.labels.insert(row.labels.end(), size_t(pad), kIgnoredLabel);
    for (int64_t t = 0; t < pad; ++t) row.position_ids.push_back(int32_t(t));
    row.cu_seqlens.push_back(cap);
    row.sample_index.push_back(-1);
  }
  return row;
}

}  // namespace

std::vector<int64_t> SeededPermutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> order(size_t(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = int64_t(UniformUpTo(rng, uint64_t(i)));
    std::swap(order[i], order[j]);
  }
  return order;
}

double PackStats::waste() const {
  const int64_t capacity = tokens + padding;
  return capacity == 0 ? 0.0 : double(padding) / double(capacity);
}

std::span<const PackPiece> PackPlan::row(int64_t r) const {
  XT_CHECK(r >= 0 && r < num_rows(), "PackPlan::row: row " + std::to_string(r) +
                                         " out of range [0, " + std::to_string(num_rows()) + ")");
  return std::span<const PackPiece>(pieces).subspan(size_t(row_begin[r]),
                                                    size_t(row_begin[r + 1] - row_begin[r]));
}

Result<PackPlan> PlanPacking(const std::vector<int64_t>& lengths, const PackOptions& options) {
  const int64_t L = options.max_length;
  if (L < 1) return Status::Error("packing: max_length must be >= 1, got " + std::to_string(L));
  if (L > INT32_MAX) {
    return Status::Error("packing: max_length " + std::to_string(L) + " exceeds int32 positions");
  }
  if (options.pad && options.pad_id < 0) {
    return Status::Error("packing: pad_id must be a token id (>= 0), got " +
                         std::to_string(options.pad_id));
  }
  const int64_t n = int64_t(lengths.size());
  for (int64_t i = 0; i < n; ++i) {
    if (lengths[i] < 0) {
      return Status::Error("packing: sample " + std::to_string(i) + " has negative length " +
                           std::to_string(lengths[i]));
    }
  }

  PackPlan plan;
  plan.options = options;
  PackStats& st = plan.stats;
  // Place each sample, in the seeded order, into the first row with room.
  std::vector<int64_t> row_of;  // parallel to `placed`
  std::vector<PackPiece> placed;
  FreeSpaceTree free(L);
  int64_t rows = 0;
  for (int64_t i : SeededPermutation(n, options.seed)) {
    int64_t len = lengths[i];
    if (len == 0) {
      ++st.dropped;
      continue;
    }
    if (len > L) {
      if (options.overlong == Overlong::kDrop) {
        ++st.dropped;
        st.tokens_lost += len;
        continue;
      }
      ++st.truncated;
      st.tokens_lost += len - L;
      len = L;
    }
    const int64_t r = free.FirstFit(len);
    free.Take(r, len);
    rows = std::max(rows, r + 1);
    row_of.push_back(r);
    placed.push_back({i, len});
    ++st.samples;
    st.tokens += len;
  }

  // Group the pieces by row, keeping their placement order (a stable counting sort).
  plan.row_begin.assign(size_t(rows + 1), 0);
  for (int64_t r : row_of) ++plan.row_begin[r + 1];
  for (int64_t r = 0; r < rows; ++r) plan.row_begin[r + 1] += plan.row_begin[r];
  std::vector<int64_t> next(plan.row_begin.begin(), plan.row_begin.end() - 1);
  plan.pieces.resize(placed.size());
  for (size_t k = 0; k < placed.size(); ++k) plan.pieces[next[row_of[k]]++] = placed[k];

  st.rows = rows;
  st.padding = rows * L - st.tokens;
  return plan;
}

PackedRow BuildRow(const PackPlan& plan, int64_t r, const TokenCache& samples) {
  return BuildRowImpl(plan, r, samples.num_samples(), [&](int64_t i) { return samples.sample(i); });
}

PackedRow BuildRow(const PackPlan& plan, int64_t r, const std::vector<Sample>& samples) {
  return BuildRowImpl(plan, r, int64_t(samples.size()), [&](int64_t i) {
    const Sample& s = samples[size_t(i)];
    return SampleView{s.input_ids, s.labels};
  });
}

Result<Batch> RowToBatch(const PackedRow& row) {
  std::vector<int64_t> ids(row.input_ids.begin(), row.input_ids.end());
  std::vector<int64_t> labels(row.labels.begin(), row.labels.end());
  return Batch::Packed(ids, labels, row.cu_seqlens);
}

}  // namespace xt
