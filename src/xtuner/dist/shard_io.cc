#include "xtuner/dist/shard_io.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "xtuner/model/checkpoint.h"
#include "xtuner/model/init.h"
#include "xtuner/model/lora.h"

namespace xt {

void InitShardRandom(const ModelConfig& cfg, const std::vector<OwnedRange>& owned, float* shard,
                     double std, uint64_t seed, bool adapters_only) {
  const ParamLayout whole(cfg);
  std::vector<float> t;
  for (const ParamInfo& p : whole.params()) {
    if (adapters_only && !p.lora) continue;
    const int64_t n = NumElements(p.shape);
    bool mine = false;
    ForEachOverlap(owned, p.offset, n, [&](int64_t, int64_t, int64_t) { mine = true; });
    if (!mine) continue;
    t.resize(n);
    InitTensor(p, std, seed, t.data());
    ForEachOverlap(owned, p.offset, n, [&](int64_t s, int64_t g, int64_t k) {
      std::memcpy(shard + s, t.data() + (g - p.offset), size_t(k) * sizeof(float));
    });
  }
}

namespace {
// A visitor that copies each tensor's owned parts into the shard.
std::function<void(const ParamInfo&, const float*)> IntoShard(const std::vector<OwnedRange>& owned,
                                                              float* shard) {
  return [&owned, shard](const ParamInfo& p, const float* data) {
    ForEachOverlap(owned, p.offset, NumElements(p.shape), [&](int64_t s, int64_t g, int64_t k) {
      std::memcpy(shard + s, data + (g - p.offset), size_t(k) * sizeof(float));
    });
  };
}
}  // namespace

Status LoadHfShard(const std::string& path, const ModelConfig& cfg,
                   const std::vector<OwnedRange>& owned, float* shard) {
  return ReadHfWeights(path, cfg, ParamLayout(cfg), IntoShard(owned, shard));
}

Status LoadLoraShard(const std::string& path, const ModelConfig& cfg,
                     const std::vector<OwnedRange>& owned, float* shard) {
  return ReadLoraAdapter(path, cfg, ParamLayout(cfg), IntoShard(owned, shard));
}

std::unique_ptr<Transformer> GatherWholeModel(Comm& world, const ModelConfig& cfg, const Mesh& mesh,
                                              const float* shard, int64_t shard_size) {
  const std::vector<std::vector<OwnedRange>> ranges = OwnedRangesOfEveryRank(cfg, mesh);
  std::vector<int64_t> sizes(mesh.world, 0);
  int64_t largest = 0;
  for (int r = 0; r < mesh.world; ++r) {
    for (const OwnedRange& o : ranges[r]) sizes[r] += o.size;
    largest = std::max(largest, sizes[r]);
  }
  XT_CHECK(sizes[mesh.rank] == shard_size, "GatherWholeModel: shard size mismatch");
  // Round k carries elements [k * chunk, (k + 1) * chunk) of every shard; all counts of a round
  // together stay below 2^30 (and the receive buffer no larger than the largest shard needs:
  // it is zero-filled, 4 GiB at the cap).
  const int64_t chunk = std::max<int64_t>(1, std::min(largest, (int64_t(1) << 30) / mesh.world));
  const bool root = world.rank() == 0;
  std::unique_ptr<Transformer> model = root ? std::make_unique<Transformer>(cfg) : nullptr;
  float* whole = root ? model->params().f32() : nullptr;
  std::vector<float> got(root ? chunk * mesh.world : 0);
  std::vector<int64_t> counts(mesh.world);
  for (int64_t begin = 0; begin < largest; begin += chunk) {
    for (int r = 0; r < mesh.world; ++r)
      counts[r] = std::clamp<int64_t>(sizes[r] - begin, 0, chunk);
    world.Gather(got.data(), shard + std::min(begin, shard_size), counts, 0);
    if (!root) continue;
    int64_t at = 0;
    for (int r = 0; r < mesh.world; ++r) {
      // Shard elements [begin, begin + counts[r]) of rank r, to their places in the slab.
      for (const OwnedRange& o : ranges[r]) {
        const int64_t lo = std::max(begin, o.shard),
                      hi = std::min(begin + counts[r], o.shard + o.size);
        if (lo < hi)
          std::memcpy(whole + o.global + (lo - o.shard), got.data() + at + (lo - begin),
                      size_t(hi - lo) * sizeof(float));
      }
      at += counts[r];
    }
  }
  return model;
}

}  // namespace xt
