#include "xtuner/train/train_checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "xtuner/core/file_util.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/model/checkpoint.h"

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
    if (e.is_directory() && name.rfind(kPrefix, 0) == 0 && name.find('.') == std::string::npos &&
        fs::exists(e.path() / "trainer_state.json"))
      out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The step of a checkpoint directory name "step-<n>".
int64_t StepOf(const fs::path& dir) {
  return std::stoll(dir.filename().string().substr(std::strlen(kPrefix)));
}

}  // namespace

Status SaveTrainCheckpoint(const std::string& work_dir, const Transformer& model,
                           const AdamW& optim, const TrainState& state, int64_t keep_last,
                           std::string* saved) {
  const fs::path root = fs::path(work_dir) / "checkpoints";
  const fs::path final_dir = root / StepDirName(state.step);
  const fs::path tmp = root / (StepDirName(state.step) + ".tmp");
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return Status::Error(tmp.string() + ": cannot create: " + ec.message());
  auto fail = [&](const Status& st) {
    fs::remove_all(tmp, ec);
    return st.With("saving checkpoint " + final_dir.string() +
                   " failed (earlier checkpoints are intact)");
  };
  Status st = SaveHfModel(model, (tmp / "model").string(), /*bf16=*/false);
  if (!st.ok()) return fail(st);
  st = WriteSafetensors((tmp / "optimizer.safetensors").string(),
                        {{"exp_avg", optim.exp_avg()}, {"exp_avg_sq", optim.exp_avg_sq()}},
                        {{"optimizer_step", std::to_string(optim.step())}});
  if (!st.ok()) return fail(st);
  nlohmann::json j = {{"step", state.step},
                      {"optimizer_step", optim.step()},
                      {"sampler", state.sampler.ToJson()},
                      {"nonfinite_consecutive", state.nonfinite_consecutive},
                      {"nonfinite_total", state.nonfinite_total},
                      {"data_key", state.data_key}};
  st = WriteFileAtomically((tmp / "trainer_state.json").string(), j.dump(2) + "\n");
  if (!st.ok()) return fail(st);
  fs::remove_all(final_dir, ec);  // a checkpoint of the same step from an earlier, longer run
  fs::rename(tmp, final_dir, ec);
  if (ec) return fail(Status::Error("rename: " + ec.message()));
  SyncDirectory(root.string());
  if (saved) *saved = final_dir.string();
  // Checkpoints of later steps belong to a history this run has left (it resumed from an earlier
  // one): remove them, so that --resume auto continues this run. Then keep the newest keep_last.
  std::vector<fs::path> kept;
  for (const fs::path& p : ListCheckpoints(work_dir)) {
    if (StepOf(p) > state.step) {
      fs::remove_all(p, ec);
    } else {
      kept.push_back(p);
    }
  }
  for (size_t i = 0; i + size_t(keep_last) < kept.size(); ++i) fs::remove_all(kept[i], ec);
  return Status::OK();
}

std::string FindLatestCheckpoint(const std::string& work_dir) {
  std::vector<fs::path> all = ListCheckpoints(work_dir);
  return all.empty() ? "" : all.back().string();
}

Status LoadTrainCheckpoint(const std::string& dir, Transformer* model, AdamW* optim,
                           TrainState* state) {
  const fs::path d(dir);
  std::ifstream in(d / "trainer_state.json");
  if (!in) return Status::Error(dir + ": not a training checkpoint (no trainer_state.json)");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  const std::string src = (d / "trainer_state.json").string();
  if (j.is_discarded() || !j.is_object()) return Status::Error(src + ": not valid JSON");
  for (const char* k : {"step", "optimizer_step", "sampler", "data_key"})
    if (!j.contains(k)) return Status::Error(src + ": missing \"" + std::string(k) + "\"");
  XT_RETURN_IF_ERROR(LoadHfWeights(model, (d / "model").string()));
  XT_ASSIGN_OR_RETURN(SafetensorsFile opt,
                      SafetensorsFile::Open((d / "optimizer.safetensors").string()));
  const Shape shape = {optim->numel()};
  XT_ASSIGN_OR_RETURN(Tensor m, opt.GetF32("exp_avg", shape));
  XT_ASSIGN_OR_RETURN(Tensor v, opt.GetF32("exp_avg_sq", shape));
  XT_RETURN_IF_ERROR(optim->Restore(m, v, j["optimizer_step"].get<int64_t>()));
  state->step = j["step"].get<int64_t>();
  XT_ASSIGN_OR_RETURN(state->sampler, SamplerState::FromJson(j["sampler"], src));
  state->nonfinite_consecutive = j.value("nonfinite_consecutive", 0);
  state->nonfinite_total = j.value("nonfinite_total", int64_t(0));
  state->data_key = j["data_key"].get<std::string>();
  return Status::OK();
}

}  // namespace xt
