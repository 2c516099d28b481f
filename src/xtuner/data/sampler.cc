#include "xtuner/data/sampler.h"

#include <nlohmann/json.hpp>
#include <string>

#include "xtuner/core/json.h"
#include "xtuner/core/rng.h"
#include "xtuner/data/packer.h"

namespace xt {

namespace {

// One SplitMix64 step from state x: a good 64-bit mix of x.
uint64_t Mix(uint64_t x) { return SplitMix64(&x); }

// The shuffle seed of an epoch: a fixed function of (seed, epoch), distinct from the packer's
// use of the bare seed.
uint64_t EpochSeed(uint64_t seed, int64_t epoch) {
  constexpr uint64_t kSamplerDomain = 0x73616d706c657231ull;  // "sampler1"
  return Mix(Mix(seed ^ kSamplerDomain) ^ uint64_t(epoch));
}

Result<int64_t> NonNegative(const nlohmann::json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end()) {
    return Status::Error(source + ": sampler state has no \"" + key + "\"");
  }
  if (it->is_number_unsigned() && it->get<uint64_t>() <= uint64_t(INT64_MAX)) {
    return int64_t(it->get<uint64_t>());
  }
  if (it->is_number_integer() && it->get<int64_t>() >= 0) return it->get<int64_t>();
  return Status::Error(source + ": sampler state \"" + key +
                       "\" must be a non-negative integer, got " + DumpJson(*it));
}

}  // namespace

nlohmann::json SamplerState::ToJson() const {
  return {{"seed", seed},
          {"num_rows", num_rows},
          {"global_batch_rows", global_batch_rows},
          {"epoch", epoch},
          {"position", position}};
}

Result<SamplerState> SamplerState::FromJson(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) {
    return Status::Error(source + ": sampler state must be a JSON object, got " +
                         std::string(j.type_name()));
  }
  SamplerState s;
  auto seed = j.find("seed");
  if (seed == j.end() || !seed->is_number_unsigned()) {
    return Status::Error(source + ": sampler state \"seed\" missing or not an unsigned integer");
  }
  s.seed = seed->get<uint64_t>();
  XT_ASSIGN_OR_RETURN(s.num_rows, NonNegative(j, "num_rows", source));
  XT_ASSIGN_OR_RETURN(s.global_batch_rows, NonNegative(j, "global_batch_rows", source));
  XT_ASSIGN_OR_RETURN(s.epoch, NonNegative(j, "epoch", source));
  XT_ASSIGN_OR_RETURN(s.position, NonNegative(j, "position", source));
  return s;
}

Sampler::Sampler(int64_t num_rows, const SamplerOptions& options)
    : num_rows_(num_rows), options_(options) {}

Result<Sampler> Sampler::Create(int64_t num_rows, const SamplerOptions& o) {
  auto bad = [](const std::string& msg) { return Status::Error("sampler: " + msg); };
  if (num_rows < 1) return bad("no rows to sample (num_rows = " + std::to_string(num_rows) + ")");
  if (o.global_batch_rows < 1) {
    return bad("global_batch_rows must be >= 1, got " + std::to_string(o.global_batch_rows));
  }
  if (o.world_size < 1) return bad("world_size must be >= 1, got " + std::to_string(o.world_size));
  if (o.rank < 0 || o.rank >= o.world_size) {
    return bad("rank " + std::to_string(o.rank) + " outside [0, " + std::to_string(o.world_size) +
               ")");
  }
  if (o.global_batch_rows % o.world_size != 0) {
    return bad("global_batch_rows " + std::to_string(o.global_batch_rows) +
               " is not divisible by the " + std::to_string(o.world_size) + " data-parallel ranks");
  }
  return Sampler(num_rows, o);
}

const std::vector<int64_t>& Sampler::OrderOf(int64_t epoch) {
  if (order_epoch_ != epoch) {
    order_ = SeededPermutation(num_rows_, EpochSeed(options_.seed, epoch));
    order_epoch_ = epoch;
  }
  return order_;
}

std::vector<int64_t> Sampler::Next() {
  const int64_t n = options_.global_batch_rows, R = options_.world_size, r = options_.rank;
  const int64_t begin = r * n / R, end = (r + 1) * n / R;
  std::vector<int64_t> mine;
  mine.reserve(size_t(end - begin));
  // Walk the whole global batch (so the stream advances identically on every rank), keeping
  // this rank's slice.
  for (int64_t k = 0; k < n; ++k) {
    if (k >= begin && k < end) mine.push_back(OrderOf(epoch_)[size_t(position_)]);
    if (++position_ == num_rows_) {
      position_ = 0;
      ++epoch_;
    }
  }
  return mine;
}

int64_t Sampler::step() const {
  return (epoch_ * num_rows_ + position_) / options_.global_batch_rows;
}

SamplerState Sampler::state() const {
  return SamplerState{options_.seed, num_rows_, options_.global_batch_rows, epoch_, position_};
}

Status Sampler::Restore(const SamplerState& s) {
  auto bad = [](const std::string& msg) {
    return Status::Error("sampler: cannot restore: " + msg);
  };
  if (s.seed != options_.seed) {
    return bad("state has seed " + std::to_string(s.seed) + ", this run " +
               std::to_string(options_.seed));
  }
  if (s.num_rows != num_rows_) {
    return bad("state is for " + std::to_string(s.num_rows) + " packed rows, this run has " +
               std::to_string(num_rows_) + " (dataset or packing changed)");
  }
  if (s.global_batch_rows != options_.global_batch_rows) {
    return bad("state has global_batch_rows " + std::to_string(s.global_batch_rows) +
               ", this run " + std::to_string(options_.global_batch_rows));
  }
  if (s.epoch < 0 || s.position < 0 || s.position >= num_rows_) {
    return bad("epoch " + std::to_string(s.epoch) + ", position " + std::to_string(s.position) +
               " outside [0, " + std::to_string(num_rows_) + ")");
  }
  int64_t consumed;
  if (__builtin_mul_overflow(s.epoch, num_rows_, &consumed) ||
      __builtin_add_overflow(consumed, s.position, &consumed)) {
    return bad("epoch " + std::to_string(s.epoch) + " is impossibly large");
  }
  if (consumed % options_.global_batch_rows != 0) {
    return bad("epoch " + std::to_string(s.epoch) + ", position " + std::to_string(s.position) +
               " is not at a batch boundary");
  }
  epoch_ = s.epoch;
  position_ = s.position;
  return Status::OK();
}

}  // namespace xt
