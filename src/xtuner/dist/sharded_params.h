// ShardedParams: ZeRO-3. Each rank keeps a shard of the fp32 parameters and gradients (the
// optimizer keeps its state over the same shard) and serves a Transformer the working
// parameters of one unit at a time (model/param_source.h), gathered from every rank's shard,
// and folds the unit's gradients back by reduce-scatter.
//
// What is sharded over whom: the non-expert parameters are used by every rank, so each unit's
// non-expert part is split over all `world` ranks; the experts a rank runs (its ep slice) are
// split over its dp group (the ranks that hold the same experts). So every element of the
// whole model's slab (ParamLayout(cfg), the "global" layout) is owned by exactly one rank, and a
// rank holds about total / world of it. A run of n elements split over g ranks gives rank i the
// chunk [i * c, min(n, (i + 1) * c)), c = ceil(n / g).
//
// Where the floats live: host memory with MPI (the CPU model), or device memory with NCCL (the
// GPU model: cuda/shard_memory_cuda.h), the same bookkeeping over either (dist/shard_memory.h).
// Every float ShardedParams holds comes from its ShardMemory; its collectives from its Comms.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "xtuner/dist/comm.h"
#include "xtuner/dist/mesh.h"
#include "xtuner/dist/shard_memory.h"
#include "xtuner/model/param_source.h"
#include "xtuner/model/params.h"

namespace xt {

// A range of the global slab held in a rank's shard.
struct OwnedRange {
  int64_t global = 0;  // offset into the global slab
  int64_t size = 0;
  int64_t shard = 0;  // offset into the shard
};

// The ranges rank `mesh.rank` owns, in shard order (they tile its shard). Needs no
// communication: any rank can compute any other's.
std::vector<OwnedRange> OwnedRanges(const ModelConfig& cfg, const Mesh& mesh);
// OwnedRanges of every rank of `mesh` (a valid mesh), indexed by rank.
std::vector<std::vector<OwnedRange>> OwnedRangesOfEveryRank(const ModelConfig& cfg,
                                                            const Mesh& mesh);

// The ranges (offset, n) of rank mesh.rank's shard that ShardedParams(cfg, mesh, ..., bf16_only)
// holds in bf16 only, in shard order, and (shard_size, unless null) the shard's size. Needs no
// memory or communication (`xtuner plan` counts a rank's weights with it).
std::vector<std::pair<int64_t, int64_t>> ShardBf16Ranges(
    const ModelConfig& cfg, const Mesh& mesh,
    const std::vector<std::pair<int64_t, int64_t>>& bf16_only, int64_t* shard_size = nullptr);

class ShardedParams : public ParamSource {
 public:
  // world: every rank; dp: this rank's dp group (world->Split(ep_rank, dp_rank)); memory: where
  // the shard and the working buffers live, of the kind the Comms take. All three outlive this
  // object. Parameters and gradients start at zero.
  // bf16_only: ranges (offset, n) of the working layout whose parameters are held in bf16 only
  // (plan/frozen_bf16.h: a LoRA run's frozen matmul weights on GPUs). Their fp32 parameters hold
  // no memory (ShardMemory::AllocHeld): where this rank holds every unit whole (one rank) the
  // model keeps their bf16 copy itself and never reads them here; otherwise the shard keeps
  // them in bf16 (params16(), filled by the caller) and a gather widens this rank's chunk of
  // them into its place in the gathered unit (no other buffer) before the gather, in place.
  // Empty: every parameter in fp32.
  ShardedParams(const ModelConfig& cfg, const Mesh& mesh, Comm* world, Comm* dp,
                ShardMemory* memory = HostShardMemory(),
                const std::vector<std::pair<int64_t, int64_t>>& bf16_only = {});
  ~ShardedParams() override;
  ShardedParams(const ShardedParams&) = delete;
  ShardedParams& operator=(const ShardedParams&) = delete;

  const ParamLayout& layout() const { return layout_; }  // this rank's working layout
  const std::vector<OwnedRange>& owned() const { return owned_; }
  int64_t shard_size() const { return shard_size_; }
  // The shard's parameters (shard_size() floats) and gradients, in the memory's kind. grads()
  // first zeroes what ZeroGrads left blank and no model has written since. The gradients of
  // frozen parameters (outside ParamLayout::trainable: a LoRA run's base weights) stay zero: no
  // model writes them, and ZeroGrads, Grads and GradsDone skip them. The gradients are
  // shard_size() floats at shard offsets (on the host the frozen ones' pages are never
  // committed), or, compact_grads() (a LoRA run over memory whose zeros are not free: a GPU's),
  // only the trainable ranges', trainable_floats() floats, one range after another in shard
  // order.
  float* params() { return params_; }
  // With bf16_only: the shard's ranges (offset, n) whose fp32 parameters hold memory, and those
  // held in bf16 only. Where this rank gathers, params16() holds the latter one after another,
  // in the order of bf16_ranges() (their sum of n, 2 B each); else it is null. Without
  // bf16_only: the whole shard, and none.
  const std::vector<std::pair<int64_t, int64_t>>& fp32_ranges() const { return fp32_ranges_; }
  const std::vector<std::pair<int64_t, int64_t>>& bf16_ranges() const { return bf16_ranges_; }
  uint16_t* params16() { return params16_; }
  float* grads();
  bool compact_grads() const { return compact_grads_; }
  // Sets the gradients to zero. Where this rank holds every unit whole (one rank), lazily: each
  // unit is marked blank, zeroed by Grads (or grads()) when first asked for, or handed blank to
  // a model that writes it whole (GradsToWrite). Otherwise the shard is zeroed now.
  void ZeroGrads();
  // Whether unit `unit` is one piece this rank holds whole (always so on one rank): Acquire and
  // Grads then serve the shard itself, gathering and reducing nothing.
  bool Held(int64_t unit) const override;
  // Floats of the shard that train (their gradients and AdamW moments are the only ones ever
  // written): shard_size(), or a LoRA run's share of the adapters; and where they are, as
  // (shard offset, n).
  int64_t trainable_floats() const;
  const std::vector<std::pair<int64_t, int64_t>>& trainable_ranges() const { return trainable_; }
  // The most floats of gathered parameters and gradient buffers held at once so far.
  int64_t peak_working_floats() const { return peak_working_; }

  const float* Acquire(int64_t unit) override;
  void Release(int64_t unit) override;
  // The gradients of what of the unit trains (param_source.h): a held unit's in the shard, a
  // gathered one's in a buffer of that size; null where nothing of it trains.
  float* Grads(int64_t unit) override;
  // A held unit: blank if ZeroGrads left it so. A gathered one: a new buffer comes blank (not
  // zeroed); the reduce-scatter at GradsDone then adds what the model wrote into the shard.
  float* GradsToWrite(int64_t unit, bool* blank) override;
  void GradsDone(int64_t unit) override;

 private:
  // A run of a unit that is contiguous in the working and the global layout and sharded over
  // one group.
  struct Piece {
    int64_t work = 0, global = 0, size = 0;  // work: offset into the unit
    bool over_dp = false;                    // split over the dp group (else over the world)
    std::vector<int64_t> counts;             // each group rank's chunk
    int64_t shard = 0;                       // this rank's chunk in the shard
    // What trains of the piece (all of it, or a LoRA run's adapters): [train_begin, +sum of
    // train_counts) of it, each group rank's part of that (the part inside its chunk), and where
    // this rank's part starts in its chunk. Only that is zeroed, reduced and stored.
    bool trains = true;
    int64_t train_begin = 0, train_lo = 0;
    std::vector<int64_t> train_counts;
    int64_t grad_at = 0;  // where this rank's part of that is in grads_
    // This rank's chunk's parts held in bf16 only: n floats at `at` in the chunk, at `at16` in
    // params16_.
    struct Bf16Part {
      int64_t at = 0, n = 0, at16 = 0;
    };
    std::vector<Bf16Part> bf16;
  };
  Comm& GroupOf(const Piece& p) { return p.over_dp ? *dp_ : *world_; }
  struct Buffer {
    float* data = nullptr;
    int64_t size = 0;
  };
  Buffer NewBuffer(int64_t n, const char* what);
  void FreeBuffer(std::map<int64_t, Buffer>& bufs, int64_t unit);

  ParamLayout layout_;
  Comm* world_;
  Comm* dp_;
  std::vector<std::vector<Piece>> units_;
  std::vector<OwnedRange> owned_;
  ShardMemory* memory_;
  int64_t shard_size_ = 0;
  float* params_ = nullptr;
  float* grads_ = nullptr;
  uint16_t* params16_ = nullptr;
  std::vector<std::pair<int64_t, int64_t>> fp32_ranges_, bf16_ranges_;
  std::map<int64_t, Buffer> gathered_, grad_bufs_;
  int64_t working_ = 0, peak_working_ = 0;
  bool all_held_ = false;
  bool compact_grads_ = false;
  std::vector<char> blank_;  // per unit (held ones only): gradients logically zero, not written
  // The shard's ranges (offset, n) of parameters that are not frozen: the whole shard, or a LoRA
  // run's adapters.
  std::vector<std::pair<int64_t, int64_t>> trainable_;
};

}  // namespace xt
