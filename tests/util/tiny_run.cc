#include "util/tiny_run.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "util/testing.h"
#include "xtuner/core/json.h"
#include "xtuner/train/router_bias.h"
#include "xtuner/train/trainer.h"

namespace xt::testing {

TrainConfig TinyRun(const std::string& tag) {
  const std::string demo = DataPath("../../examples/demo");
  const std::string dir = TempDir(tag);
  nlohmann::json mc = {{"model_type", "qwen3_moe"},
                       {"vocab_size", 3008},
                       {"hidden_size", 32},
                       {"num_hidden_layers", 2},
                       {"num_attention_heads", 2},
                       {"num_key_value_heads", 1},
                       {"head_dim", 16},
                       {"moe_intermediate_size", 16},
                       {"num_experts", 4},
                       {"num_experts_per_tok", 2},
                       {"norm_topk_prob", true},
                       {"router_aux_loss_coef", 0.01},
                       {"rope_theta", 10000.0},
                       {"tie_word_embeddings", true}};
  std::ofstream(dir + "/config.json") << DumpJson(mc);
  std::ifstream in(demo + "/train.jsonl");
  std::ofstream out(dir + "/train.jsonl");
  std::string line;
  for (int i = 0; i < 300 && std::getline(in, line); ++i) out << line << "\n";
  TrainConfig c;
  c.work_dir = dir + "/work";
  c.model_config = dir + "/config.json";
  c.tokenizer = demo + "/tokenizer.json";
  c.chat_template = "chatml";
  c.datasets = {{dir + "/train.jsonl", 1.0, "chat"}};
  c.max_length = 64;
  c.steps = 6;
  c.global_batch_size = 4;
  c.micro_batch_size = 2;
  c.lr = 3e-3;
  c.warmup_steps = 1;
  c.tensorboard = true;
  c.export_at_end = false;
  return c;
}

const std::string& LoraBaseModel() {
  static const std::string dir = [] {
    TrainConfig c = TinyRun("lora_base");
    c.steps = 2;
    c.export_at_end = true;
    c.export_dtype = "fp32";
    auto r = RunTraining(c, nullptr);
    XT_CHECK(r.ok(), r.status().message());
    return r->export_dir;
  }();
  return dir;
}

TrainConfig LoraRun(const std::string& tag) {
  TrainConfig c = TinyRun(tag);
  c.model_config.clear();
  c.load_from = LoraBaseModel();
  c.lora_rank = 4;
  c.lora_alpha = 8;
  c.lora_target_modules = "q_proj, k_proj,v_proj,o_proj";
  c.lr = 1e-2;
  c.export_dtype = "fp32";
  return c;
}

void SeedResumeDir(const std::string& from, int64_t step, const std::string& to) {
  namespace fs = std::filesystem;
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", (long long)step);
  fs::create_directories(to + "/checkpoints");
  fs::copy(from + "/checkpoints/" + name, to + "/checkpoints/" + name, fs::copy_options::recursive);
  fs::copy(from + "/cache", to + "/cache", fs::copy_options::recursive);
}

TrainConfig ResumedRun(const TrainConfig& run, int64_t step) {
  TrainConfig resumed = run;
  resumed.work_dir = run.work_dir + "-resumed";
  resumed.resume = "auto";
  SeedResumeDir(run.work_dir, step, resumed.work_dir);
  return resumed;
}

std::string TinyDeepseekV3Config() {
  const nlohmann::json mc = {{"model_type", "deepseek_v3"},
                             {"vocab_size", 3008},
                             {"hidden_size", 32},
                             {"num_hidden_layers", 2},
                             {"num_attention_heads", 2},
                             {"num_key_value_heads", 2},
                             {"q_lora_rank", 16},
                             {"kv_lora_rank", 16},
                             {"qk_nope_head_dim", 8},
                             {"qk_rope_head_dim", 8},
                             {"v_head_dim", 8},
                             {"intermediate_size", 48},
                             {"moe_intermediate_size", 16},
                             {"n_routed_experts", 6},
                             {"num_experts_per_tok", 2},
                             {"n_shared_experts", 1},
                             {"n_group", 3},
                             {"topk_group", 2},
                             {"first_k_dense_replace", 1},
                             {"routed_scaling_factor", 2.5},
                             {"rope_theta", 10000.0},
                             {"tie_word_embeddings", true}};
  return DumpJson(mc);
}

std::string TinyGptOssConfig() {
  const nlohmann::json mc = {{"model_type", "gpt_oss"},
                             {"vocab_size", 3008},
                             {"hidden_size", 32},
                             {"num_hidden_layers", 2},
                             {"num_attention_heads", 4},
                             {"num_key_value_heads", 2},
                             {"head_dim", 8},
                             {"intermediate_size", 16},
                             {"num_local_experts", 4},
                             {"num_experts_per_tok", 2},
                             {"sliding_window", 8},
                             {"router_aux_loss_coef", 0.02},
                             {"tie_word_embeddings", false}};
  return DumpJson(mc);
}

std::vector<float> BiasFromMetrics(const std::string& work_dir, double speed, int* steps) {
  std::vector<float> bias;
  *steps = 0;
  std::ifstream in(work_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json j = Json(line);
    if (!j.contains("tokens_per_expert")) continue;
    const std::vector<float> d =
        RouterBiasDeltas(j["tokens_per_expert"][0].get<std::vector<int64_t>>(), speed);
    bias.resize(d.size(), 0.0f);
    for (size_t e = 0; e < d.size(); ++e) bias[e] += d[e];
    ++*steps;
  }
  return bias;
}

}  // namespace xt::testing
