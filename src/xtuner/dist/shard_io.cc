#include "xtuner/dist/shard_io.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "xtuner/core/zero_pages.h"
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

namespace {

// Rank 0: every rank r's shard elements [from[r], to[r]) (a run of its shard; ranges: every
// rank's OwnedRanges) at their global offsets in `slab`. In rounds: round k carries elements
// [k * chunk, (k + 1) * chunk) of every rank's run, and all counts of a round together stay
// below 2^26 (so any size fits MPI's int counts, and rank 0's receive buffer stays 256 MiB).
void GatherIntoSlab(Comm& world, const std::vector<std::vector<OwnedRange>>& ranges,
                    const std::vector<int64_t>& from, const std::vector<int64_t>& to,
                    const float* shard, float* slab) {
  const int n = world.size(), me = world.rank();
  int64_t largest = 0;
  for (int r = 0; r < n; ++r) largest = std::max(largest, to[r] - from[r]);
  const int64_t chunk = std::max<int64_t>(1, std::min(largest, (int64_t(1) << 26) / n));
  const bool root = me == 0;
  std::vector<float> got(root ? chunk * n : 0);
  std::vector<int64_t> counts(n);
  for (int64_t k = 0; k < largest; k += chunk) {
    for (int r = 0; r < n; ++r) counts[r] = std::clamp<int64_t>(to[r] - from[r] - k, 0, chunk);
    world.Gather(got.data(), shard + std::min(from[me] + k, to[me]), counts, 0);
    if (!root) continue;
    int64_t at = 0;
    for (int r = 0; r < n; ++r) {
      // Shard elements [lo, lo + counts[r]) of rank r, to their places in the slab.
      const int64_t lo = from[r] + k;
      for (const OwnedRange& o : ranges[r]) {
        const int64_t a = std::max(lo, o.shard), b = std::min(lo + counts[r], o.shard + o.size);
        if (a < b)
          std::memcpy(slab + o.global + (a - o.shard), got.data() + at + (a - lo),
                      size_t(b - a) * sizeof(float));
      }
      at += counts[r];
    }
  }
}

}  // namespace

std::unique_ptr<Transformer> GatherWholeModel(Comm& world, const ModelConfig& cfg, const Mesh& mesh,
                                              const float* shard, int64_t shard_size) {
  const std::vector<std::vector<OwnedRange>> ranges = OwnedRangesOfEveryRank(cfg, mesh);
  std::vector<int64_t> from(mesh.world, 0), to(mesh.world, 0);
  for (int r = 0; r < mesh.world; ++r)
    for (const OwnedRange& o : ranges[r]) to[r] += o.size;
  XT_CHECK(to[mesh.rank] == shard_size, "GatherWholeModel: shard size mismatch");
  std::unique_ptr<Transformer> model =
      world.rank() == 0 ? std::make_unique<Transformer>(cfg) : nullptr;
  GatherIntoSlab(world, ranges, from, to, shard, model ? model->params().f32() : nullptr);
  return model;
}

void ReleaseUnitPages(float* slab, const ParamLayout& layout, int64_t unit, bool keep_trainable) {
  const ParamUnit& u = layout.units()[unit];
  const ParamUnit keep = keep_trainable ? layout.trainable(unit) : ParamUnit{u.end, u.end};
  ReleasePages(slab + u.begin, keep.begin - u.begin);
  ReleasePages(slab + keep.end, u.end - keep.end);
}

ShardedExportParams::ShardedExportParams(Comm& world, const ModelConfig& cfg, const Mesh& mesh,
                                         const float* shard, int64_t shard_size)
    : world_(world),
      keep_adapters_(cfg.lora.enabled()),
      layout_(cfg),
      ranges_(OwnedRangesOfEveryRank(cfg, mesh)),
      shard_(shard) {
  int64_t mine = 0;
  for (const OwnedRange& o : ranges_[world.rank()]) mine += o.size;
  XT_CHECK(mine == shard_size, "ShardedExportParams: shard size mismatch");
  if (world.size() == 1) {
    slab_ = shard;  // (one rank: the shard is the slab)
  } else if (world.rank() == 0) {
    pages_ = AllocZeroPages(layout_.total(), "the export's slab");
    slab_ = pages_.get();
  }
}

ShardedExportParams::~ShardedExportParams() { Done(); }

void ShardedExportParams::Done() {
  if (done_ || world_.size() == 1 || world_.rank() != 0) return;
  done_ = true;
  int64_t stop = -1;
  world_.Broadcast(&stop, sizeof stop, 0);
}

Status ShardedExportParams::Load(int64_t unit) {
  XT_CHECK(world_.rank() == 0 && !done_, "ShardedExportParams::Load: rank 0's, before Done");
  if (world_.size() == 1) return Status::OK();
  if (loaded_ >= 0) ReleaseUnitPages(pages_.get(), layout_, loaded_, keep_adapters_);
  world_.Broadcast(&unit, sizeof unit, 0);
  Gather(unit);
  loaded_ = unit;
  return Status::OK();
}

void ShardedExportParams::Serve() {
  XT_CHECK(world_.rank() != 0, "ShardedExportParams::Serve: not rank 0's");
  for (;;) {
    int64_t unit = -1;
    world_.Broadcast(&unit, sizeof unit, 0);
    if (unit < 0) return;
    Gather(unit);
  }
}

void ShardedExportParams::Gather(int64_t unit) {
  // Each rank's part of the unit is one run of its shard (a unit's pieces follow each other).
  const ParamUnit& u = layout_.units()[unit];
  const int n = world_.size();
  std::vector<int64_t> from(n), to(n);
  for (int r = 0; r < n; ++r) {
    int64_t lo = -1, hi = -1, sum = 0;
    ForEachOverlap(ranges_[r], u.begin, u.end - u.begin, [&](int64_t at, int64_t, int64_t k) {
      if (lo < 0) lo = at;
      hi = at + k;
      sum += k;
    });
    XT_CHECK(sum == std::max<int64_t>(0, hi - lo),
             "ShardedExportParams: a unit's part is not one run");
    from[r] = lo < 0 ? 0 : lo;
    to[r] = lo < 0 ? 0 : hi;
  }
  GatherIntoSlab(world_, ranges_, from, to, shard_, pages_.get());
}

}  // namespace xt
