// Filling and collecting a rank's shard (dist/sharded_params.h) of the whole model's slab,
// without building the whole slab anywhere except where asked to.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/dist/comm.h"
#include "xtuner/dist/mesh.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/config.h"
#include "xtuner/model/transformer.h"

namespace xt {

// Calls copy(shard_offset, global_offset, n) for each overlap of the global range
// [begin, begin + n) with `owned`.
template <typename F>
void ForEachOverlap(const std::vector<OwnedRange>& owned, int64_t begin, int64_t n, F copy) {
  for (const OwnedRange& r : owned) {
    const int64_t lo = std::max(begin, r.global), hi = std::min(begin + n, r.global + r.size);
    if (lo < hi) copy(r.shard + (lo - r.global), lo, hi - lo);
  }
}

// shard = the owned parts of what InitRandom(std, seed) gives the whole model (adapters_only:
// of its LoRA adapters only, the rest untouched).
void InitShardRandom(const ModelConfig& cfg, const std::vector<OwnedRange>& owned, float* shard,
                     double std, uint64_t seed, bool adapters_only = false);

// shard = the owned parts of the LoRA adapters of the PEFT adapter at `path` (checked as
// ReadLoraAdapter), the rest untouched.
Status LoadLoraShard(const std::string& path, const ModelConfig& cfg,
                     const std::vector<OwnedRange>& owned, float* shard);

// shard = the owned parts of the Hugging Face checkpoint at `path` (checked as LoadHfWeights).
Status LoadHfShard(const std::string& path, const ModelConfig& cfg,
                   const std::vector<OwnedRange>& owned, float* shard);

// A collective over `world` (mesh.world ranks): on rank 0, a whole model (it holds its slabs)
// whose parameters are assembled from every rank's shard; null on the others. The shards travel
// in rounds of bounded size, so any model size fits MPI's int counts, straight into the model.
std::unique_ptr<Transformer> GatherWholeModel(Comm& world, const ModelConfig& cfg, const Mesh& mesh,
                                              const float* shard, int64_t shard_size);

// Gives back the pages (ReleasePages) of unit `unit` of `layout` in `slab` (the whole model's, of
// zero pages), but for what trains in it where keep_trainable (a LoRA run's adapters).
void ReleaseUnitPages(float* slab, const ParamLayout& layout, int64_t unit, bool keep_trainable);

// A model sharded over `world` (this rank's `shard`, as ShardedParams lays it out), exported by
// rank 0 a unit at a time (SaveHfModelFrom): rank 0's Load(u) gathers unit u from every rank
// into a slab of zero pages (model/params.h offsets), and gives back the pages of the unit it
// loaded before, all but a LoRA run's adapters (the adapter's export reads them after). So rank
// 0 holds one unit of the model, not the model. Every other rank calls Serve, which takes part
// in each gather rank 0 asks for, until rank 0 calls Done (also on destruction). One rank: the
// slab is the shard, holding every unit.
class ShardedExportParams : public ExportParams {
 public:
  ShardedExportParams(Comm& world, const ModelConfig& cfg, const Mesh& mesh, const float* shard,
                      int64_t shard_size);
  ~ShardedExportParams() override;
  ShardedExportParams(const ShardedExportParams&) = delete;
  ShardedExportParams& operator=(const ShardedExportParams&) = delete;

  const float* slab() const override { return slab_; }
  Status Load(int64_t unit) override;  // rank 0
  bool holds_all() const override { return world_.size() == 1; }
  void Serve();  // every rank but 0
  void Done();   // rank 0

 private:
  void Gather(int64_t unit);

  Comm& world_;
  const bool keep_adapters_;  // (a LoRA run)
  const ParamLayout layout_;
  const std::vector<std::vector<OwnedRange>> ranges_;  // every rank's
  const float* shard_;
  std::shared_ptr<float> pages_;  // rank 0's slab, where it gathers
  const float* slab_ = nullptr;
  int64_t loaded_ = -1;
  bool done_ = false;
};

}  // namespace xt
