// Token embedding lookup and its scatter-add backward.
#include <cstring>
#include <vector>

#include "xtuner/ops/ops.h"

namespace xt::ops {

void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t T, int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) std::memcpy(out + t * H, table + int64_t(ids[t]) * H, H * 4);
}

void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t T, int64_t V,
                        int64_t H) {
  // Bucket the tokens by id (counting sort, token order kept), then each thread owns whole rows
  // of dtable: no races, and every row sums its tokens in token order.
  std::vector<int64_t> start(V + 1, 0), order(T);
  for (int64_t t = 0; t < T; ++t) ++start[ids[t] + 1];
  for (int64_t v = 0; v < V; ++v) start[v + 1] += start[v];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t t = 0; t < T; ++t) order[fill[ids[t]]++] = t;
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t v = 0; v < V; ++v) {
    float* row = dtable + v * H;
    for (int64_t p = start[v]; p < start[v + 1]; ++p) {
      const float* g = dout + order[p] * H;
      for (int64_t h = 0; h < H; ++h) row[h] += g[h];
    }
  }
}

}  // namespace xt::ops
