#include "xtuner/train/train_checkpoint.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "xtuner/core/file_util.h"
#include "xtuner/core/json.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/core/zero_pages.h"
#include "xtuner/dist/shard_io.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/fp8_weights.h"
#include "xtuner/model/lora.h"
#include "xtuner/model/params.h"

namespace xt {

namespace fs = std::filesystem;

namespace {

const char* kPrefix = "step-";

std::string StepDirName(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s%08lld", kPrefix, (long long)step);
  return buf;
}

// Complete checkpoints (no ".tmp"), oldest first.
std::vector<fs::path> ListCheckpoints(const std::string& work_dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  const fs::path root = fs::path(work_dir) / "checkpoints";
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    const std::string digits = name.rfind(kPrefix, 0) == 0 ? name.substr(std::strlen(kPrefix)) : "";
    if (e.is_directory() && !digits.empty() && digits.size() <= 18 &&
        digits.find_first_not_of("0123456789") == std::string::npos &&
        fs::exists(e.path() / "trainer_state.json"))
      out.push_back(e.path());
  }
  auto step = [](const fs::path& p) {
    return std::stoll(p.filename().string().substr(std::strlen(kPrefix)));
  };
  std::sort(out.begin(), out.end(),
            [&](const fs::path& a, const fs::path& b) { return step(a) < step(b); });
  return out;
}

// The step of a checkpoint directory name "step-<n>".
int64_t StepOf(const fs::path& dir) {
  return std::stoll(dir.filename().string().substr(std::strlen(kPrefix)));
}

std::string ShardName(int r, int n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard-%05d-of-%05d.safetensors", r, n);
  return buf;
}

Result<nlohmann::json> ReadJson(const fs::path& path) {
  XT_ASSIGN_OR_RETURN(nlohmann::json j, ReadJsonFile(path.string()));
  if (!j.is_object()) return Status::Error(path.string() + ": not a JSON object");
  return j;
}

// A collective: OK when no rank failed, else on every rank the error of the lowest failing
// rank, "rank R: ..." (so whichever rank ends the job first names the cause, and none waits for
// the others).
Status AgreeOnFailure(Comm& world, const Status& st) {
  double pick = st.ok() ? 0 : double(world.size() - world.rank());
  world.AllReduceMax(&pick, 1);
  if (pick == 0) return Status::OK();
  if (world.size() == 1) return st;
  const int root = world.size() - int(pick);
  std::string msg = world.rank() == root ? st.message() : "";
  int64_t len = int64_t(msg.size());
  world.Broadcast(&len, sizeof len, root);
  msg.resize(size_t(len));
  world.Broadcast(msg.data(), len, root);
  return Status::Error("rank " + std::to_string(root) + ": " + msg);
}

// Copies the ranges `owned` of the checkpoint's params (and exp_avg, exp_avg_sq when given)
// into params, m, v (shard order; m and v must hold zeros: their pages the checkpoint holds
// zeros for are left uncommitted, core/zero_pages.h). Every owned element must be found.
Status ReadShards(const fs::path& dir, const ModelConfig& cfg, const std::vector<OwnedRange>& owned,
                  float* params, float* m, float* v) {
  XT_ASSIGN_OR_RETURN(nlohmann::json index, ReadJson(dir / "shards.json"));
  const std::string src = (dir / "shards.json").string();
  const int64_t total = ParamLayout(cfg).total();
  if (!index.contains("total") || !index["total"].is_number_integer())
    return Status::Error(src + ": missing \"total\"");
  if (index["total"].get<int64_t>() != total)
    return Status::Error(src + ": the checkpoint holds " + DumpJson(index["total"]) +
                         " parameters, this model has " + std::to_string(total));
  if (!index.contains("files") || !index["files"].is_array())
    return Status::Error(src + ": missing \"files\"");
  int64_t want = 0;
  for (const OwnedRange& o : owned) want += o.size;
  constexpr uint64_t kMax = uint64_t(1) << 62;      // no sum of two of these overflows
  std::vector<std::pair<int64_t, int64_t>> filled;  // shard offset, n: every element copied
  for (const nlohmann::json& f : index["files"]) {
    if (!f.is_object() || !f.contains("file") || !f["file"].is_string() || !f.contains("ranges") ||
        !f["ranges"].is_array())
      return Status::Error(src + ": a bad entry in \"files\": " + DumpJson(f).substr(0, 80));
    const std::string file = (dir / f["file"].get<std::string>()).string();
    // The ranges of this file that overlap what this rank owns.
    std::vector<std::array<int64_t, 3>> copies;  // file offset, shard offset, n
    for (const nlohmann::json& r : f["ranges"]) {
      if (!r.is_array() || r.size() != 3 || !r[0].is_number_unsigned() ||
          !r[1].is_number_unsigned() || !r[2].is_number_unsigned() ||
          r[0].get<uint64_t>() >= kMax || r[1].get<uint64_t>() >= kMax ||
          r[2].get<uint64_t>() >= kMax || r[0].get<int64_t>() + r[1].get<int64_t>() > total)
        return Status::Error(src + ": a bad range " + DumpJson(r) + " for " + file);
      const int64_t g = r[0].get<int64_t>(), n = r[1].get<int64_t>(), at = r[2].get<int64_t>();
      ForEachOverlap(owned, g, n, [&](int64_t shard_at, int64_t global_at, int64_t k) {
        copies.push_back({at + (global_at - g), shard_at, k});
      });
    }
    if (copies.empty()) continue;
    // Only the slices this rank needs, straight from the mapped file.
    XT_ASSIGN_OR_RETURN(SafetensorsFile sf, SafetensorsFile::Open(file));
    std::vector<std::pair<const char*, float*>> wanted = {{"params", params}};
    if (m) wanted.push_back({"exp_avg", m});
    if (v) wanted.push_back({"exp_avg_sq", v});
    for (const auto& [name, dst] : wanted) {
      XT_ASSIGN_OR_RETURN(Tensor t, sf.Get(name));
      if (t.dtype() != DType::F32 || t.shape().size() != 1)
        return Status::Error(file + ": \"" + name + "\" must be a 1-D F32 tensor");
      for (const auto& c : copies) {
        if (c[0] + c[2] > t.numel())
          return Status::Error(src + ": a range reaches past the " + std::to_string(t.numel()) +
                               " values of \"" + name + "\" in " + file);
        if (dst == params)
          std::memcpy(dst + c[1], t.f32() + c[0], size_t(c[2]) * sizeof(float));
        else
          CopyIntoZeros(dst + c[1], t.f32() + c[0], c[2]);
      }
    }
    for (const auto& c : copies) filled.push_back({c[1], c[2]});
  }
  // Every element exactly once: no overlap, and all of them.
  std::sort(filled.begin(), filled.end());
  int64_t found = 0, end = 0;
  for (const auto& [at, n] : filled) {
    if (at < end) return Status::Error(src + ": the shards' ranges overlap");
    end = at + n;
    found += n;
  }
  if (found != want)
    return Status::Error(src + ": the shards cover " + std::to_string(found) + " of the " +
                         std::to_string(want) + " parameters this rank needs");
  return Status::OK();
}

// The parts of `owned` a checkpoint holds, at their shard offsets: all of them, or for a LoRA
// run those of its adapters (the rest is its base's).
std::vector<OwnedRange> TrainableOwned(const ModelConfig& cfg,
                                       const std::vector<OwnedRange>& owned) {
  if (!cfg.lora.enabled()) return owned;
  std::vector<OwnedRange> out;
  const ParamLayout layout(cfg);
  for (const ParamInfo& p : layout.params())
    if (!p.frozen)
      ForEachOverlap(owned, p.offset, NumElements(p.shape),
                     [&](int64_t shard, int64_t global, int64_t n) {
                       out.push_back({global, n, shard});
                     });
  return out;
}

// Those ranges at their offsets in the shard file: where they are in the shard, or, for a LoRA
// run's, packed one after the other.
// A LoRA checkpoint's base model and the fingerprint of its weights, from its trainer_state.json
// (`j`, read from `src`).
Status ReadLoraBase(const nlohmann::json& j, const std::string& src, std::string* base,
                    std::string* fingerprint) {
  if (!j.contains("lora_base") || !j["lora_base"].is_string() ||
      !j.contains("lora_base_fingerprint") || !j["lora_base_fingerprint"].is_string())
    return Status::Error(src +
                         ": a LoRA checkpoint without \"lora_base\" and "
                         "\"lora_base_fingerprint\" (the base model it adapts): not one this "
                         "version wrote");
  *base = j["lora_base"].get<std::string>();
  *fingerprint = j["lora_base_fingerprint"].get<std::string>();
  return Status::OK();
}

std::vector<OwnedRange> InFile(const ModelConfig& cfg, std::vector<OwnedRange> kept) {
  if (!cfg.lora.enabled()) return kept;
  int64_t at = 0;
  for (OwnedRange& r : kept) {
    r.shard = at;
    at += r.size;
  }
  return kept;
}

}  // namespace

Status SaveTrainCheckpoint(Comm& world, const std::string& work_dir, const ModelConfig& cfg,
                           const Mesh& mesh, const ShardState& shard, const TrainState& state,
                           int64_t keep_last, std::string* saved) {
  const fs::path root = fs::path(work_dir) / "checkpoints";
  const fs::path final_dir = root / StepDirName(state.step);
  const fs::path tmp = root / (StepDirName(state.step) + ".tmp");
  const bool lead = world.rank() == 0;
  std::error_code ec;
  auto failed = [&](const Status& st) {
    if (lead) fs::remove_all(tmp, ec);
    return st.With("saving checkpoint " + final_dir.string() +
                   " failed (earlier checkpoints are intact)");
  };
  Status st;
  if (lead) {
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp, ec);
    if (ec) st = Status::Error(tmp.string() + ": cannot create: " + ec.message());
  }
  st = AgreeOnFailure(world, st);
  if (!st.ok()) return failed(st);

  // Every rank: its shard (a LoRA run: the part of it that trains, packed).
  const AdamW& optim = *shard.optim;
  const int64_t n = optim.numel();
  nlohmann::json ranges = nlohmann::json::array();
  const std::vector<OwnedRange> from = TrainableOwned(cfg, *shard.owned);
  const std::vector<OwnedRange> saved_ranges = InFile(cfg, from);
  for (const OwnedRange& o : saved_ranges) ranges.push_back({o.global, o.size, o.shard});
  Tensor params = Tensor::Wrap(DType::F32, {n}, shard.params, nullptr);
  Tensor m = optim.exp_avg(), v = optim.exp_avg_sq();
  if (cfg.lora.enabled()) {
    int64_t kept = 0;
    for (const OwnedRange& o : from) kept += o.size;
    Tensor pk = Tensor::Empty(DType::F32, {kept}), mk = Tensor::Empty(DType::F32, {kept}),
           vk = Tensor::Empty(DType::F32, {kept});
    for (size_t i = 0; i < from.size(); ++i) {
      const size_t bytes = size_t(from[i].size) * sizeof(float);
      std::memcpy(pk.f32() + saved_ranges[i].shard, shard.params + from[i].shard, bytes);
      std::memcpy(mk.f32() + saved_ranges[i].shard, m.f32() + from[i].shard, bytes);
      std::memcpy(vk.f32() + saved_ranges[i].shard, v.f32() + from[i].shard, bytes);
    }
    params = pk, m = mk, v = vk;
  }
  st = WriteSafetensors(
      (tmp / ShardName(mesh.rank, mesh.world)).string(),
      {{"params", params}, {"exp_avg", m}, {"exp_avg_sq", v}},
      {{"optimizer_step", std::to_string(optim.step())}, {"ranges", DumpJson(ranges)}});
  st = AgreeOnFailure(world, st);
  if (!st.ok()) return failed(st);

  // Rank 0: the index, the configs, then the rename that makes it a checkpoint.
  if (lead) {
    nlohmann::json files = nlohmann::json::array();
    const std::vector<std::vector<OwnedRange>> every = OwnedRangesOfEveryRank(cfg, mesh);
    for (int r = 0; r < mesh.world; ++r) {
      nlohmann::json rr = nlohmann::json::array();
      for (const OwnedRange& o : InFile(cfg, TrainableOwned(cfg, every[r])))
        rr.push_back({o.global, o.size, o.shard});
      files.push_back({{"file", ShardName(r, mesh.world)}, {"ranges", rr}});
    }
    const nlohmann::json index = {{"total", ParamLayout(cfg).total()},
                                  {"world", mesh.world},
                                  {"dp", mesh.dp},
                                  {"ep", mesh.ep},
                                  {"files", files}};
    if (st.ok())
      st = WriteFileAtomically((tmp / "shards.json").string(), DumpJson(index, 1) + "\n");
    // A model loaded from an FP8 checkpoint keeps its blocks, for an FP8 export from here
    // (xtuner convert --dtype fp8); its weights here are fp32 all the same.
    nlohmann::json model_json = cfg.ToJson();
    if (cfg.fp8_weights)
      model_json["quantization_config"] =
          Fp8QuantizationConfig(cfg.fp8_block[0], cfg.fp8_block[1], {});
    // A LoRA run's layout holds its adapters: resume and convert rebuild it from this.
    if (cfg.lora.enabled()) model_json["xtuner_lora"] = LoraSpecToJson(cfg.lora);
    if (st.ok())
      st = WriteFileAtomically((tmp / "config.json").string(), DumpJson(model_json, 2) + "\n");
    nlohmann::json j = {{"step", state.step},
                        {"optimizer_step", optim.step()},
                        {"sampler", state.sampler.ToJson()},
                        {"nonfinite_consecutive", state.nonfinite_consecutive},
                        {"nonfinite_total", state.nonfinite_total},
                        {"data_key", state.data_key},
                        {"world", mesh.world},
                        {"ep", mesh.ep}};
    if (cfg.lora.enabled()) {
      j["lora_base"] = state.lora_base;
      j["lora_base_fingerprint"] = state.lora_base_fingerprint;
      j["lora_dropout"] = cfg.lora.dropout;  // the run's, for convert's adapter_config.json
    }
    if (st.ok())
      st = WriteFileAtomically((tmp / "trainer_state.json").string(), DumpJson(j, 2) + "\n");
    if (st.ok()) {
      fs::remove_all(final_dir, ec);  // a checkpoint of the same step from an earlier, longer run
      fs::rename(tmp, final_dir, ec);
      if (ec) st = Status::Error("rename: " + ec.message());
    }
    if (st.ok()) {
      SyncDirectory(root.string());
      // Checkpoints of later steps belong to a history this run has left (it resumed from an
      // earlier one): remove them, so that --resume auto continues this run. Then keep the
      // newest keep_last.
      std::vector<fs::path> kept;
      for (const fs::path& p : ListCheckpoints(work_dir)) {
        if (StepOf(p) > state.step) {
          fs::remove_all(p, ec);
        } else {
          kept.push_back(p);
        }
      }
      for (size_t i = 0; i + size_t(keep_last) < kept.size(); ++i) fs::remove_all(kept[i], ec);
    }
  }
  st = AgreeOnFailure(world, st);
  if (!st.ok()) return failed(st);
  if (saved) *saved = final_dir.string();
  return Status::OK();
}

std::string FindLatestCheckpoint(const std::string& work_dir) {
  std::vector<fs::path> all = ListCheckpoints(work_dir);
  return all.empty() ? "" : all.back().string();
}

Status LoadTrainCheckpoint(const std::string& dir, const ModelConfig& cfg, const ShardState& shard,
                           TrainState* state) {
  const fs::path d(dir);
  if (!fs::exists(d / "trainer_state.json"))
    return Status::Error(dir + ": not a training checkpoint (no trainer_state.json)");
  XT_ASSIGN_OR_RETURN(nlohmann::json j, ReadJson(d / "trainer_state.json"));
  const std::string src = (d / "trainer_state.json").string();
  for (const char* k : {"step", "optimizer_step", "sampler", "data_key"})
    if (!j.contains(k)) return Status::Error(src + ": missing \"" + std::string(k) + "\"");
  for (const char* k : {"step", "optimizer_step", "nonfinite_consecutive", "nonfinite_total"})
    if (j.contains(k) && !j[k].is_number_integer())
      return Status::Error(src + ": \"" + std::string(k) + "\" must be an integer, not " +
                           DumpJson(j[k]));
  if (!j["data_key"].is_string()) return Status::Error(src + ": \"data_key\" must be a string");
  for (const char* k : {"lora_base", "lora_base_fingerprint"})
    if (j.contains(k) && !j[k].is_string())
      return Status::Error(src + ": \"" + std::string(k) + "\" must be a string");
  XT_ASSIGN_OR_RETURN(const LoraSpec lora, ReadCheckpointLora(dir));
  auto describe = [](const LoraSpec& s) {
    if (!s.enabled()) return std::string("no LoRA (every parameter trains)");
    return "LoRA " + DumpJson(LoraSpecToJson(s));
  };
  if (describe(lora) != describe(cfg.lora))
    return Status::Error(dir + ": this checkpoint was trained with " + describe(lora) +
                         ", this run has " + describe(cfg.lora) + ": resume with the same [lora]");
  // Straight into the optimizer's state (zero first unless fresh: blocks of zeros are skipped).
  Tensor m = shard.optim->exp_avg(), v = shard.optim->exp_avg_sq();
  if (shard.optim->step() != 0) {
    std::memset(m.data(), 0, m.nbytes());
    std::memset(v.data(), 0, v.nbytes());
  }
  if (cfg.lora.enabled())
    XT_RETURN_IF_ERROR(ReadLoraBase(j, src, &state->lora_base, &state->lora_base_fingerprint));
  XT_RETURN_IF_ERROR(
      ReadShards(d, cfg, TrainableOwned(cfg, *shard.owned), shard.params, m.f32(), v.f32()));
  XT_RETURN_IF_ERROR(shard.optim->Restore(m, v, j["optimizer_step"].get<int64_t>()));
  state->step = j["step"].get<int64_t>();
  XT_ASSIGN_OR_RETURN(state->sampler, SamplerState::FromJson(j["sampler"], src));
  state->nonfinite_consecutive = j.value("nonfinite_consecutive", 0);
  state->nonfinite_total = j.value("nonfinite_total", int64_t(0));
  state->data_key = j["data_key"].get<std::string>();
  return Status::OK();
}

Result<LoraSpec> ReadCheckpointLora(const std::string& dir) {
  const fs::path path = fs::path(dir) / "config.json";
  XT_ASSIGN_OR_RETURN(nlohmann::json j, ReadJson(path));
  if (!j.is_object() || !j.contains("xtuner_lora")) return LoraSpec();
  XT_ASSIGN_OR_RETURN(LoraSpec spec, LoraSpecFromJson(j["xtuner_lora"], path.string()));
  // The rate (a training setting: not in the layout's "xtuner_lora"), from trainer_state.json;
  // 0 for checkpoints written before it was kept.
  const fs::path state = fs::path(dir) / "trainer_state.json";
  if (!fs::exists(state)) return spec;
  XT_ASSIGN_OR_RETURN(nlohmann::json t, ReadJson(state));
  if (t.is_object() && t.contains("lora_dropout")) {
    if (!t["lora_dropout"].is_number())
      return Status::Error(state.string() + ": \"lora_dropout\" must be a number");
    spec.dropout = t["lora_dropout"].get<double>();
  }
  return spec;
}

namespace {

// A LoRA checkpoint's base model (base_dir where given, else the one it names), checked by its
// fingerprint.
Result<std::string> CheckedLoraBase(const std::string& dir, const std::string& base_dir) {
  const fs::path state = fs::path(dir) / "trainer_state.json";
  XT_ASSIGN_OR_RETURN(nlohmann::json j, ReadJson(state));
  std::string base, want;
  XT_RETURN_IF_ERROR(ReadLoraBase(j, state.string(), &base, &want));
  if (!base_dir.empty()) base = base_dir;
  Result<std::string> got = HfWeightsFingerprint(base);
  if (!got.ok())
    return got.status().With(dir + ": this LoRA checkpoint holds the adapters only; its base " +
                             "model " + base + " (model.load_from) is needed (one moved " +
                             "elsewhere: xtuner convert --base DIR)");
  if (*got != want)
    return Status::Error(dir + ": the base model " + base + " is not this LoRA run's (" +
                         "fingerprint " + *got + ", the run's " + want + ")");
  return base;
}

}  // namespace

Result<std::vector<float>> ReadCheckpointParams(const std::string& dir, const ModelConfig& cfg,
                                                const std::string& base_dir) {
  const ParamLayout layout(cfg);
  const int64_t total = layout.total();
  std::vector<float> params(total);
  const std::vector<OwnedRange> whole = {{0, total, 0}};
  if (cfg.lora.enabled()) {  // the frozen weights: the base's
    XT_ASSIGN_OR_RETURN(const std::string base, CheckedLoraBase(dir, base_dir));
    XT_RETURN_IF_ERROR(ReadHfWeights(base, cfg, layout, [&](const ParamInfo& p, const float* w) {
      std::memcpy(params.data() + p.offset, w, NumElements(p.shape) * sizeof(float));
    }));
  }
  XT_RETURN_IF_ERROR(
      ReadShards(fs::path(dir), cfg, TrainableOwned(cfg, whole), params.data(), nullptr, nullptr));
  return params;
}

CheckpointExportParams::CheckpointExportParams(std::string dir, std::string base,
                                               const ModelConfig& cfg)
    : dir_(std::move(dir)), base_(std::move(base)), cfg_(cfg), layout_(cfg) {
  slab_ = AllocZeroPages(layout_.total(), "the checkpoint's model");
}

Result<std::unique_ptr<CheckpointExportParams>> CheckpointExportParams::Open(
    const std::string& dir, const ModelConfig& cfg, const std::string& base_dir) {
  std::string base;
  if (cfg.lora.enabled()) {
    XT_ASSIGN_OR_RETURN(base, CheckedLoraBase(dir, base_dir));
  }
  return std::unique_ptr<CheckpointExportParams>(new CheckpointExportParams(dir, base, cfg));
}

Status CheckpointExportParams::Load(int64_t unit) {
  if (loaded_ >= 0) ReleaseUnitPages(slab_.get(), layout_, loaded_, cfg_.lora.enabled());
  loaded_ = -1;
  const ParamUnit& u = layout_.units()[unit];
  float* slab = slab_.get();
  if (cfg_.lora.enabled()) {  // the frozen weights: the base's
    XT_RETURN_IF_ERROR(ReadHfWeights(
        base_, cfg_, layout_,
        [&](const ParamInfo& p, const float* w) {
          std::memcpy(slab + p.offset, w, NumElements(p.shape) * sizeof(float));
        },
        [&](const ParamInfo& p) { return p.offset >= u.begin && p.offset < u.end; }));
  }
  const std::vector<OwnedRange> range = {{u.begin, u.size(), u.begin}};
  XT_RETURN_IF_ERROR(
      ReadShards(fs::path(dir_), cfg_, TrainableOwned(cfg_, range), slab, nullptr, nullptr));
  loaded_ = unit;
  return Status::OK();
}

}  // namespace xt
