#include "xtuner/dist/shard_io.h"

#include <algorithm>
#include <cstring>

#include "xtuner/model/checkpoint.h"
#include "xtuner/model/init.h"

namespace xt {

void InitShardRandom(const ModelConfig& cfg, const std::vector<OwnedRange>& owned, float* shard,
                     double std, uint64_t seed) {
  const ParamLayout whole(cfg);
  std::vector<float> t;
  for (const ParamInfo& p : whole.params()) {
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

Status LoadHfShard(const std::string& path, const ModelConfig& cfg,
                   const std::vector<OwnedRange>& owned, float* shard) {
  const ParamLayout whole(cfg);
  return ReadHfWeights(path, cfg, whole, [&](const ParamInfo& p, const float* data) {
    ForEachOverlap(owned, p.offset, NumElements(p.shape), [&](int64_t s, int64_t g, int64_t k) {
      std::memcpy(shard + s, data + (g - p.offset), size_t(k) * sizeof(float));
    });
  });
}

std::vector<float> GatherWholeSlab(Comm& world, const ModelConfig& cfg, const Mesh& mesh,
                                   const float* shard, int64_t shard_size) {
  std::vector<int64_t> counts(mesh.world);
  std::vector<std::vector<OwnedRange>> ranges(mesh.world);
  int64_t total = 0;
  for (int r = 0; r < mesh.world; ++r) {
    Result<Mesh> m = MakeMesh(mesh.world, r, mesh.ep, cfg);
    XT_CHECK(m.ok(), "GatherWholeSlab: bad mesh");
    ranges[r] = OwnedRanges(cfg, *m);
    for (const OwnedRange& o : ranges[r]) counts[r] += o.size;
    total += counts[r];
  }
  XT_CHECK(counts[mesh.rank] == shard_size, "GatherWholeSlab: shard size mismatch");
  std::vector<float> all(world.rank() == 0 ? total : 0), whole;
  world.Gather(all.data(), shard, counts, 0);
  if (world.rank() != 0) return whole;
  whole.assign(ParamLayout(cfg).total(), 0.0f);
  int64_t at = 0;
  for (int r = 0; r < mesh.world; ++r) {
    for (const OwnedRange& o : ranges[r])
      std::memcpy(whole.data() + o.global, all.data() + at + o.shard, size_t(o.size) * 4);
    at += counts[r];
  }
  return whole;
}

}  // namespace xt
