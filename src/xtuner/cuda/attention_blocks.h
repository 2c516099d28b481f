// The work list shared by the attention kernels (attention.cu, fp32 SIMT; attention_bf16.cu,
// tensor cores; internal to them): each document is cut into blocks of kBlockTokens tokens
// counted from its first token (as on the CPU), listed on the host from the host's cu_seqlens
// and uploaded; one CUDA block per (block, head) work item.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"

namespace xt::cuda::detail {

constexpr int kBlockTokens = 64;  // the CPU's kBlock

// Tokens [begin, begin + n) of the document [doc_begin, doc_end) (int32: T fits cu_seqlens).
struct Block {
  int32_t doc_begin, doc_end, begin, n;
};

// Checks the arguments (no CUDA call; the head dim D only for sizes: each kernel family checks
// the dims it supports itself) and makes the block list, twice: by_q ordered by decreasing
// number of key tiles (forward, dQ), by_kv by decreasing number of query tiles (dK, dV), so
// that the costly items start first. Both are functions of cu_seqlens alone.
Status PlanBlocks(const char* op, const int32_t* cu, int64_t num_docs, int64_t T, int64_t Hq,
                  int64_t Hkv, int64_t D, std::vector<Block>* by_q, std::vector<Block>* by_kv);

// *blocks = a device copy of by_q then by_kv (by_q.size() each), in `scratch`. cudaMemcpyAsync
// from pageable memory returns once the source is staged, so the host vectors may die right
// after.
Status UploadBlocks(Scratch& scratch, const std::vector<Block>& by_q,
                    const std::vector<Block>& by_kv, const Block** blocks, cudaStream_t st,
                    const char* what);

}  // namespace xt::cuda::detail
