#include "xtuner/dist/sharded_params.h"

#include <algorithm>
#include <cstring>

#include "xtuner/core/status.h"

namespace xt {

namespace {

struct PiecePlan {
  int64_t work, global, size;
  bool over_dp;
};

// The pieces of every unit of the working layout of `mesh.rank`.
std::vector<std::vector<PiecePlan>> PlanPieces(const ModelConfig& cfg, const Mesh& mesh,
                                               const ParamLayout& work) {
  const ParamLayout global(cfg);
  std::vector<std::vector<PiecePlan>> units(work.units().size());
  size_t u = 0;
  for (const ParamInfo& p : work.params()) {
    while (p.offset >= work.units()[u].end) ++u;
    const ParamInfo* g = global.Find(p.name);
    XT_CHECK(g != nullptr, "ShardedParams: " + p.name + " is not in the global layout");
    const int64_t begin = p.offset - work.units()[u].begin, n = NumElements(p.shape);
    const bool over_dp = mesh.ep > 1 && p.name.find(".experts.") != std::string::npos;
    std::vector<PiecePlan>& ps = units[u];
    if (!ps.empty() && ps.back().over_dp == over_dp && ps.back().work + ps.back().size == begin &&
        ps.back().global + ps.back().size == g->offset) {
      ps.back().size += n;
    } else {
      ps.push_back({begin, g->offset, n, over_dp});
    }
  }
  return units;
}

// Chunks of n over g ranks.
std::vector<int64_t> Chunks(int64_t n, int g) {
  const int64_t c = (n + g - 1) / g;
  std::vector<int64_t> counts(g);
  for (int i = 0; i < g; ++i) counts[i] = std::clamp<int64_t>(n - i * c, 0, c);
  return counts;
}

// The parts of the working layout's [w0, w1) (a rank's chunk) inside `ranges` (sorted): (offset
// from w0, n).
std::vector<std::pair<int64_t, int64_t>> PartsIn(
    int64_t w0, int64_t w1, const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& [at, n] : ranges) {
    const int64_t a = std::max(at, w0), b = std::min(at + n, w1);
    if (a < b) out.push_back({a - w0, b - a});
  }
  return out;
}

}  // namespace

std::vector<std::pair<int64_t, int64_t>> ShardBf16Ranges(
    const ModelConfig& cfg, const Mesh& mesh,
    const std::vector<std::pair<int64_t, int64_t>>& bf16_only, int64_t* shard_size) {
  const ParamLayout work(cfg, mesh.first_expert(cfg),
                         cfg.is_moe() ? mesh.experts_per_rank(cfg) : -1);
  std::vector<std::pair<int64_t, int64_t>> out;
  int64_t shard = 0;
  const std::vector<std::vector<PiecePlan>> plans = PlanPieces(cfg, mesh, work);
  for (size_t u = 0; u < plans.size(); ++u)
    for (const PiecePlan& p : plans[u]) {
      const int g = p.over_dp ? mesh.dp : mesh.world, i = p.over_dp ? mesh.dp_rank : mesh.rank;
      const std::vector<int64_t> counts = Chunks(p.size, g);
      const int64_t w0 = work.units()[u].begin + p.work + int64_t(i) * counts[0];
      for (const auto& [at, n] : PartsIn(w0, w0 + counts[i], bf16_only))
        out.push_back({shard + at, n});
      shard += counts[i];
    }
  if (shard_size) *shard_size = shard;
  return out;
}

std::vector<OwnedRange> OwnedRanges(const ModelConfig& cfg, const Mesh& mesh) {
  const ParamLayout work(cfg, mesh.first_expert(cfg),
                         cfg.is_moe() ? mesh.experts_per_rank(cfg) : -1);
  std::vector<OwnedRange> out;
  int64_t shard = 0;
  for (const auto& unit : PlanPieces(cfg, mesh, work))
    for (const PiecePlan& p : unit) {
      const int g = p.over_dp ? mesh.dp : mesh.world, i = p.over_dp ? mesh.dp_rank : mesh.rank;
      const std::vector<int64_t> counts = Chunks(p.size, g);
      const int64_t c = counts[0];
      if (counts[i] > 0) {
        const OwnedRange r{p.global + i * c, counts[i], shard};
        if (!out.empty() && out.back().global + out.back().size == r.global &&
            out.back().shard + out.back().size == r.shard) {
          out.back().size += r.size;  // adjacent in both: one range
        } else {
          out.push_back(r);
        }
      }
      shard += counts[i];
    }
  return out;
}

std::vector<std::vector<OwnedRange>> OwnedRangesOfEveryRank(const ModelConfig& cfg,
                                                            const Mesh& mesh) {
  std::vector<std::vector<OwnedRange>> out;
  for (int r = 0; r < mesh.world; ++r) {
    Result<Mesh> m = MakeMesh(mesh.world, r, mesh.ep, cfg);
    XT_CHECK(m.ok(), "OwnedRangesOfEveryRank: the mesh is not valid");
    out.push_back(OwnedRanges(cfg, *m));
  }
  return out;
}

ShardedParams::ShardedParams(const ModelConfig& cfg, const Mesh& mesh, Comm* world, Comm* dp,
                             ShardMemory* memory,
                             const std::vector<std::pair<int64_t, int64_t>>& bf16_only)
    : layout_(cfg, mesh.first_expert(cfg), cfg.is_moe() ? mesh.experts_per_rank(cfg) : -1),
      world_(world),
      dp_(dp),
      memory_(memory) {
  XT_CHECK(world->size() == mesh.world && world->rank() == mesh.rank && dp->size() == mesh.dp &&
               dp->rank() == mesh.dp_rank,
           "ShardedParams: the groups do not match the mesh");
  int64_t shard = 0, held16 = 0;
  if (!bf16_only.empty()) bf16_ranges_ = ShardBf16Ranges(cfg, mesh, bf16_only);
  const std::vector<std::vector<PiecePlan>> plans = PlanPieces(cfg, mesh, layout_);
  for (size_t u = 0; u < plans.size(); ++u) {
    // What trains, in the unit's coordinates.
    const int64_t unit_begin = layout_.units()[u].begin;
    const int64_t t0 = layout_.trainable(int64_t(u)).begin - unit_begin;
    const int64_t t1 = layout_.trainable(int64_t(u)).end - unit_begin;
    std::vector<Piece> pieces;
    for (const PiecePlan& pp : plans[u]) {
      Piece p;
      p.work = pp.work;
      p.global = pp.global;
      p.size = pp.size;
      p.over_dp = pp.over_dp;
      const int g = p.over_dp ? mesh.dp : mesh.world, i = p.over_dp ? mesh.dp_rank : mesh.rank;
      p.counts = Chunks(p.size, g);
      p.shard = shard;
      // [a, b): what trains, in the piece; rank j's chunk is [j * c, j * c + counts[j]).
      const int64_t a = std::clamp(t0 - p.work, int64_t(0), p.size);
      const int64_t b = std::clamp(t1 - p.work, int64_t(0), p.size), c = p.counts[0];
      p.trains = a < b;
      p.train_begin = a;
      p.train_counts.assign(g, 0);
      for (int j = 0; j < g; ++j)
        p.train_counts[j] =
            std::max<int64_t>(0, std::min(b, j * c + p.counts[j]) - std::max(a, int64_t(j) * c));
      if (p.train_counts[i] > 0) {
        p.train_lo = std::max(a, int64_t(i) * c) - int64_t(i) * c;
        trainable_.push_back({shard + p.train_lo, p.train_counts[i]});
      }
      p.grad_at = shard + p.train_lo;  // (compact: set below)
      // This rank's chunk's parts held in bf16 only, in params16_ in shard order.
      for (const auto& [at, n] : PartsIn(shard, shard + p.counts[i], bf16_ranges_)) {
        p.bf16.push_back({at, n, held16});
        held16 += n;
      }
      shard += p.counts[i];
      pieces.push_back(std::move(p));
    }
    units_.push_back(std::move(pieces));
  }
  owned_ = OwnedRanges(cfg, mesh);
  shard_size_ = shard;
  // Gradients for what trains only, where zeros cost memory: the pieces' trainable parts one
  // after another, in shard order (the order of trainable_).
  const int64_t trains = trainable_floats();
  compact_grads_ = trains < shard && !memory_->zeros_are_free();
  if (compact_grads_) {
    int64_t at = 0;
    for (std::vector<Piece>& pieces : units_)
      for (Piece& p : pieces) {
        p.grad_at = at;
        at += p.train_counts[GroupOf(p).rank()];
      }
  }
  all_held_ = true;
  for (int64_t u = 0; u < int64_t(units_.size()); ++u) all_held_ = all_held_ && Held(u);
  // The fp32 parameters: all, or all but those held in bf16 only (a rank that gathers holds
  // those in bf16 beside them).
  int64_t at = 0;
  for (const auto& [begin, n] : bf16_ranges_) {
    if (begin > at) fp32_ranges_.push_back({at, begin - at});
    at = begin + n;
  }
  if (shard > at) fp32_ranges_.push_back({at, shard - at});
  if (bf16_ranges_.empty()) {
    params_ = memory_->AllocZeros(shard, "the parameters' shard");
  } else {
    params_ = memory_->AllocHeld(shard, fp32_ranges_, "the parameters' shard (in part)");
    for (const auto& [begin, n] : fp32_ranges_) memory_->Zero(params_ + begin, n);
    if (!all_held_) {  // (a held unit's parameters go to the model as they are: none here)
      for (int64_t u = 0; u < int64_t(units_.size()); ++u)
        XT_CHECK(!Held(u) || units_[u][0].bf16.empty(),
                 "ShardedParams: bf16-only weights in a unit held whole on a rank that gathers");
      params16_ = memory_->AllocBf16(held16, "the parameters' shard held in bf16");
    }
  }
  grads_ = memory_->AllocZeros(compact_grads_ ? trains : shard, "the gradients' shard");
  blank_.assign(units_.size(), 0);
}

ShardedParams::~ShardedParams() {
  for (auto& [unit, buf] : gathered_) memory_->Free(buf.data);
  for (auto& [unit, buf] : grad_bufs_) memory_->Free(buf.data);
  memory_->Free(params_);
  memory_->Free(grads_);
  memory_->FreeBf16(params16_);
}

void ShardedParams::ZeroGrads() {
  if (all_held_)
    std::fill(blank_.begin(), blank_.end(), 1);
  else if (compact_grads_)
    memory_->Zero(grads_, trainable_floats());
  else
    for (const auto& [at, n] : trainable_) memory_->Zero(grads_ + at, n);
}

float* ShardedParams::grads() {
  for (int64_t u = 0; u < int64_t(units_.size()); ++u)
    if (blank_[u]) Grads(u);  // zeroes it
  return grads_;
}

int64_t ShardedParams::trainable_floats() const {
  int64_t n = 0;
  for (const auto& [at, k] : trainable_) n += k;
  return n;
}

bool ShardedParams::Held(int64_t unit) const {
  const std::vector<Piece>& ps = units_[unit];
  return ps.size() == 1 && ps[0].counts.size() == 1;
}

ShardedParams::Buffer ShardedParams::NewBuffer(int64_t n, const char* what) {
  working_ += n;
  peak_working_ = std::max(peak_working_, working_);
  return {memory_->Alloc(n, what), n};
}

void ShardedParams::FreeBuffer(std::map<int64_t, Buffer>& bufs, int64_t unit) {
  auto it = bufs.find(unit);
  working_ -= it->second.size;
  memory_->Free(it->second.data);
  bufs.erase(it);
}

const float* ShardedParams::Acquire(int64_t unit) {
  if (Held(unit)) return params_ + units_[unit][0].shard;
  auto it = gathered_.find(unit);
  if (it != gathered_.end()) return it->second.data;
  const Buffer buf = NewBuffer(layout_.units()[unit].size(), "a gathered unit of parameters");
  gathered_[unit] = buf;
  for (const Piece& p : units_[unit]) {
    const float* send = params_ + p.shard;
    if (!p.bf16.empty()) {
      // This rank's chunk, its parts held in bf16 only widened, written where the gather puts
      // it (the blocks before it are whole chunks); the gather then leaves it in place.
      const int me = GroupOf(p).rank();
      const int64_t mine = p.counts[me];
      float* chunk = buf.data + p.work + int64_t(me) * p.counts[0];
      int64_t at = 0;
      auto copy = [&](int64_t to) {  // the fp32 parameters [at, to) of the chunk, as they are
        if (to > at) memory_->Copy(chunk + at, send + at, to - at);
      };
      for (const Piece::Bf16Part& part : p.bf16) {
        copy(part.at);
        memory_->WidenBf16(chunk + part.at, params16_ + part.at16, part.n);
        at = part.at + part.n;
      }
      copy(mine);
      send = chunk;
    }
    GroupOf(p).AllGather(buf.data + p.work, send, p.counts);
  }
  return buf.data;
}

void ShardedParams::Release(int64_t unit) {
  if (gathered_.count(unit)) FreeBuffer(gathered_, unit);
}

float* ShardedParams::Grads(int64_t unit) {
  // Nothing of the unit trains (a LoRA run's embedding and head): no gradients to hand out.
  const ParamUnit& t = layout_.trainable(unit);
  if (t.size() == 0) {
    blank_[unit] = 0;
    return nullptr;
  }
  if (Held(unit)) {
    float* g = grads_ + units_[unit][0].grad_at;
    if (blank_[unit]) memory_->Zero(g, t.size());
    blank_[unit] = 0;
    return g;
  }
  auto it = grad_bufs_.find(unit);
  if (it != grad_bufs_.end()) return it->second.data;
  const Buffer buf = NewBuffer(t.size(), "a unit's gradients");
  memory_->Zero(buf.data, t.size());
  grad_bufs_[unit] = buf;
  return buf.data;
}

float* ShardedParams::GradsToWrite(int64_t unit, bool* blank) {
  const ParamUnit& t = layout_.trainable(unit);
  if (t.size() == 0) {
    *blank = false;
    return nullptr;
  }
  if (Held(unit)) {
    *blank = blank_[unit] != 0;  // until GradsDone: a step that fails midway leaves it blank
    return grads_ + units_[unit][0].grad_at;
  }
  auto it = grad_bufs_.find(unit);
  *blank = it == grad_bufs_.end();
  if (!*blank) return it->second.data;
  const Buffer buf = NewBuffer(t.size(), "a unit's gradients");
  grad_bufs_[unit] = buf;
  return buf.data;
}

void ShardedParams::GradsDone(int64_t unit) {
  blank_[unit] = 0;  // written whole (GradsToWrite) or zeroed (Grads)
  auto it = grad_bufs_.find(unit);
  if (it == grad_bufs_.end()) return;
  // Each piece's reduced chunk lands in scratch, then adds into the stored gradients.
  // (Only what trains: the rest of a piece is frozen, its gradients zero everywhere. The buffer
  // holds the unit's trainable part, which starts at t0 in the unit.)
  const int64_t t0 = layout_.trainable(unit).begin - layout_.units()[unit].begin;
  int64_t most = 0;
  for (const Piece& p : units_[unit]) most = std::max(most, p.train_counts[GroupOf(p).rank()]);
  float* part = memory_->Alloc(most, "a reduced gradient chunk");
  for (const Piece& p : units_[unit]) {
    if (!p.trains) continue;
    Comm& g = GroupOf(p);
    g.ReduceScatterSum(part, it->second.data + (p.work + p.train_begin - t0), p.train_counts);
    memory_->Add(grads_ + p.grad_at, part, p.train_counts[g.rank()]);
  }
  memory_->Free(part);
  FreeBuffer(grad_bufs_, unit);
}

}  // namespace xt
