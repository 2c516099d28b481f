#include <algorithm>

#include "xtuner/cuda/attention_blocks.h"
#include "xtuner/cuda/launch.h"

namespace xt::cuda::detail {

Status PlanBlocks(const char* op, const int32_t* cu, int64_t num_docs, int64_t T, int64_t Hq,
                  int64_t Hkv, int64_t D, std::vector<Block>* by_q, std::vector<Block>* by_kv) {
  XT_RETURN_IF_ERROR(CheckSizes(op, {num_docs, T, Hq, Hkv, D}));
  if (Hkv < 1 || Hq < Hkv || Hq % Hkv != 0)
    return Status::Error(std::string(op) + ": Hq (" + std::to_string(Hq) +
                         ") must be a positive multiple of Hkv (" + std::to_string(Hkv) + ")");
  if (cu == nullptr) return Status::Error(std::string(op) + ": null cu_seqlens");
  if (cu[0] != 0 || cu[num_docs] != T)
    return Status::Error(std::string(op) +
                         ": cu_seqlens must run from 0 to T = " + std::to_string(T));
  by_q->clear();
  for (int64_t d = 0; d < num_docs; ++d) {
    const int32_t b0 = cu[d], b1 = cu[d + 1];
    if (b1 < b0)
      return Status::Error(std::string(op) + ": cu_seqlens decreases at document " +
                           std::to_string(d));
    for (int32_t s = b0; s < b1; s += std::min<int32_t>(kBlockTokens, b1 - s))
      by_q->push_back({b0, b1, s, std::min<int32_t>(kBlockTokens, b1 - s)});
  }
  if (int64_t(by_q->size()) * Hq > int64_t(INT32_MAX))
    return Status::Error(std::string(op) + ": too many (block, head) items for one grid");
  *by_kv = *by_q;
  std::stable_sort(by_q->begin(), by_q->end(), [](const Block& a, const Block& b) {
    return a.begin - a.doc_begin > b.begin - b.doc_begin;
  });
  std::stable_sort(by_kv->begin(), by_kv->end(), [](const Block& a, const Block& b) {
    return a.doc_end - a.begin > b.doc_end - b.begin;
  });
  return Status::OK();
}

Status UploadBlocks(Scratch& scratch, const std::vector<Block>& by_q,
                    const std::vector<Block>& by_kv, const Block** blocks, cudaStream_t st,
                    const char* what) {
  const size_t nb = by_q.size();
  Block* d = nullptr;
  XT_RETURN_IF_ERROR(scratch.Alloc(&d, int64_t(2 * nb), what));
  *blocks = d;
  XT_RETURN_IF_ERROR(
      Check(cudaMemcpyAsync(d, by_q.data(), nb * sizeof(Block), cudaMemcpyHostToDevice, st), what));
  return Check(
      cudaMemcpyAsync(d + nb, by_kv.data(), nb * sizeof(Block), cudaMemcpyHostToDevice, st), what);
}

}  // namespace xt::cuda::detail
