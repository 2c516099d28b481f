#include "xtuner/model/batch.h"

#include <string>

#include "xtuner/core/rng.h"
#include "xtuner/loss/cross_entropy.h"

namespace xt {

int64_t Batch::num_loss_tokens() const {
  int64_t n = 0;
  for (int32_t t : targets) n += t != kIgnoreIndex;
  return n;
}

Result<Batch> Batch::FromRows(const std::vector<int64_t>& ids, const std::vector<int64_t>& labels,
                              int64_t B, int64_t S) {
  if (B <= 0 || S <= 0 || int64_t(ids.size()) != B * S)
    return Status::Error("batch: " + std::to_string(ids.size()) + " ids do not form " +
                         std::to_string(B) + " rows of " + std::to_string(S));
  std::vector<int64_t> cu(B + 1);
  for (int64_t b = 0; b <= B; ++b) cu[b] = b * S;
  return Packed(ids, labels, cu);
}

Result<Batch> Batch::Packed(const std::vector<int64_t>& ids, const std::vector<int64_t>& labels,
                            const std::vector<int64_t>& cu_seqlens) {
  const int64_t T = int64_t(ids.size());
  if (!labels.empty() && int64_t(labels.size()) != T)
    return Status::Error("batch: " + std::to_string(labels.size()) + " labels for " +
                         std::to_string(T) + " ids");
  if (cu_seqlens.size() < 2 || cu_seqlens.front() != 0 || cu_seqlens.back() != T)
    return Status::Error("batch: cu_seqlens must start at 0 and end at the token count " +
                         std::to_string(T));
  Batch b;
  b.ids.resize(T);
  b.positions.resize(T);
  b.targets.assign(T, kIgnoreIndex);
  for (size_t d = 0; d + 1 < cu_seqlens.size(); ++d) {
    const int64_t s = cu_seqlens[d], e = cu_seqlens[d + 1];
    if (e <= s)
      return Status::Error("batch: cu_seqlens must increase strictly (document " +
                           std::to_string(d) + " is empty or reversed)");
    for (int64_t t = s; t < e; ++t) {
      b.positions[t] = int32_t(t - s);
      if (!labels.empty() && t + 1 < e) b.targets[t] = int32_t(labels[t + 1]);
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    if (ids[t] < 0 || ids[t] > INT32_MAX)
      return Status::Error("batch: token id " + std::to_string(ids[t]) + " at position " +
                           std::to_string(t) + " is out of range");
    b.ids[t] = int32_t(ids[t]);
  }
  b.cu_seqlens.assign(cu_seqlens.begin(), cu_seqlens.end());
  return b;
}

Batch Batch::Empty() {
  Batch b;
  b.cu_seqlens = {0};
  return b;
}

void Batch::AppendNoise(uint64_t row_key, int64_t n, std::vector<uint64_t>* noise) {
  for (int64_t t = 0; t < n; ++t) {
    uint64_t state = row_key + uint64_t(t) * 0xd1342543de82ef95ull;
    noise->push_back(SplitMix64(&state));
  }
}

Status Batch::Validate(int64_t vocab_size) const {
  const int64_t T = num_tokens();
  if (T == 0 && cu_seqlens.size() == 1 && cu_seqlens[0] == 0 && targets.empty() &&
      positions.empty())
    return Status::OK();  // Batch::Empty()
  if (T == 0) return Status::Error("batch: no tokens");
  if (int64_t(targets.size()) != T || int64_t(positions.size()) != T)
    return Status::Error("batch: ids, positions and targets differ in length");
  if (!noise.empty() && int64_t(noise.size()) != T)
    return Status::Error("batch: " + std::to_string(noise.size()) + " noise keys for " +
                         std::to_string(T) + " tokens");
  if (cu_seqlens.size() < 2 || cu_seqlens.front() != 0 || cu_seqlens.back() != T)
    return Status::Error("batch: cu_seqlens must start at 0 and end at " + std::to_string(T));
  for (size_t d = 0; d + 1 < cu_seqlens.size(); ++d)
    if (cu_seqlens[d + 1] <= cu_seqlens[d])
      return Status::Error("batch: cu_seqlens must increase strictly");
  for (int64_t t = 0; t < T; ++t) {
    if (ids[t] < 0 || ids[t] >= vocab_size)
      return Status::Error("batch: token id " + std::to_string(ids[t]) + " at position " +
                           std::to_string(t) + " is outside the vocabulary [0, " +
                           std::to_string(vocab_size) + ")");
    if (targets[t] != kIgnoreIndex && (targets[t] < 0 || targets[t] >= vocab_size))
      return Status::Error("batch: label " + std::to_string(targets[t]) + " at position " +
                           std::to_string(t + 1) + " is outside the vocabulary [0, " +
                           std::to_string(vocab_size) + ") and is not -100");
  }
  return Status::OK();
}

}  // namespace xt
