#include "xtuner/dist/expert_parallel.h"

#include <cstring>

#include "xtuner/core/status.h"

namespace xt {

EpExchange PlanExpertExchange(Comm& ep, const int32_t* offsets, int64_t E) {
  const int n = ep.size();
  XT_CHECK(E % n == 0, "expert parallelism: experts not divisible by the ep group");
  const int64_t El = E / n;
  // Block p of send = my rows for each of rank p's experts; block s of recv = rank s's rows for
  // each of mine.
  std::vector<int64_t> send(E), recv(E);
  for (int64_t e = 0; e < E; ++e) send[e] = offsets[e + 1] - offsets[e];
  ep.AllToAllCounts(recv.data(), send.data(), El);
  EpExchange x;
  x.send_rows.assign(n, 0);
  x.recv_rows.assign(n, 0);
  for (int p = 0; p < n; ++p)
    for (int64_t j = 0; j < El; ++j) {
      x.send_rows[p] += send[p * El + j];
      x.recv_rows[p] += recv[p * El + j];
    }
  // Received rows come by source rank, each source's by local expert; group them by expert.
  x.local_offsets.assign(El + 1, 0);
  for (int64_t j = 0; j < El; ++j) {
    int64_t rows = 0;
    for (int s = 0; s < n; ++s) rows += recv[s * El + j];
    x.local_offsets[j + 1] = int32_t(x.local_offsets[j] + rows);
  }
  std::vector<int64_t> next(x.local_offsets.begin(), x.local_offsets.end() - 1);
  for (int s = 0; s < n; ++s)
    for (int64_t j = 0; j < El; ++j)
      for (int64_t i = 0; i < recv[s * El + j]; ++i) x.to_grouped.push_back(next[j]++);
  return x;
}

std::vector<int64_t> RowElements(const std::vector<int64_t>& rows, int64_t H) {
  std::vector<int64_t> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = rows[i] * H;
  return out;
}

void ExpertDispatch(Comm& ep, const EpExchange& x, const float* xs, int64_t H, float* xr) {
  const int64_t R = x.num_received();
  std::vector<float> by_source(R * H);
  ep.AllToAll(by_source.data(), RowElements(x.recv_rows, H), xs, RowElements(x.send_rows, H));
  for (int64_t i = 0; i < R; ++i)
    std::memcpy(xr + x.to_grouped[i] * H, by_source.data() + i * H, size_t(H) * sizeof(float));
}

void ExpertCombine(Comm& ep, const EpExchange& x, const float* yr, int64_t H, float* ys) {
  const int64_t R = x.num_received();
  std::vector<float> by_source(R * H);
  for (int64_t i = 0; i < R; ++i)
    std::memcpy(by_source.data() + i * H, yr + x.to_grouped[i] * H, size_t(H) * sizeof(float));
  ep.AllToAll(ys, RowElements(x.send_rows, H), by_source.data(), RowElements(x.recv_rows, H));
}

}  // namespace xt
