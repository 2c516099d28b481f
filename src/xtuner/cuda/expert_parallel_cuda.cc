#include "xtuner/cuda/expert_parallel_cuda.h"

#include <limits>
#include <string>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/device_array.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {

Result<EpRowMaps> MakeEpRowMaps(const EpExchange& x) {
  const int64_t R = x.num_received();
  if (R > std::numeric_limits<int32_t>::max())
    return Status::Error("expert parallelism: " + std::to_string(R) +
                         " received rows do not fit the GPU's int32 row maps");
  EpRowMaps m;
  m.grouped_of_received.resize(R);
  m.received_of_grouped.assign(R, -1);
  for (int64_t i = 0; i < R; ++i) {
    const int64_t j = x.to_grouped[i];
    if (j < 0 || j >= R || m.received_of_grouped[j] != -1)
      return Status::Error(
          "expert parallelism: the exchange plan's regrouping is not a "
          "permutation (row " +
          std::to_string(i) + ")");
    m.grouped_of_received[i] = int32_t(j);
    m.received_of_grouped[j] = int32_t(i);
  }
  return m;
}

Status ExpertDispatchCuda(Comm& ep, const EpExchange& x, const int32_t* received_of_grouped,
                          const float* xs, int64_t H, float* xr, void* stream) {
  const int64_t R = x.num_received();
  DeviceArray<float> by_source;  // (R, H), by source rank
  XT_RETURN_IF_ERROR(by_source.Alloc(R * H, stream));
  ep.AllToAll(by_source.get(), RowElements(x.recv_rows, H), xs, RowElements(x.send_rows, H));
  if (R == 0) return Status::OK();
  // xr[j] = by_source[received_of_grouped[j]]: a row gather (moe_permute with k = 1).
  return MoePermute(xr, by_source.get(), received_of_grouped, R, 1, H, stream);
}

Status ExpertDispatchCuda(Comm& ep, const EpExchange& x, const int32_t* received_of_grouped,
                          const uint16_t* xs, int64_t H, uint16_t* xr, void* stream) {
  if (H % 2 != 0)
    return Status::Error("expert parallelism: bf16 rows of odd width " + std::to_string(H) +
                         " cannot travel as float pairs");
  const int64_t R = x.num_received();
  DeviceArray<uint16_t> by_source;  // (R, H), by source rank
  XT_RETURN_IF_ERROR(by_source.Alloc(R * H, stream));
  // The float collective moves bits: a row of H bf16 is H / 2 floats.
  ep.AllToAll(reinterpret_cast<float*>(by_source.get()), RowElements(x.recv_rows, H / 2),
              reinterpret_cast<const float*>(xs), RowElements(x.send_rows, H / 2));
  if (R == 0) return Status::OK();
  return MoePermute(xr, by_source.get(), received_of_grouped, R, 1, H, stream);
}

Status ExpertCombineCuda(Comm& ep, const EpExchange& x, const int32_t* grouped_of_received,
                         const float* yr, int64_t H, float* ys, void* stream) {
  const int64_t R = x.num_received();
  DeviceArray<float> by_source;  // (R, H), by source rank
  XT_RETURN_IF_ERROR(by_source.Alloc(R * H, stream));
  if (R > 0)
    XT_RETURN_IF_ERROR(MoePermute(by_source.get(), yr, grouped_of_received, R, 1, H, stream));
  ep.AllToAll(ys, RowElements(x.send_rows, H), by_source.get(), RowElements(x.recv_rows, H));
  return Status::OK();
}

}  // namespace xt::cuda
