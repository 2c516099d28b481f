// A tiny training job for the trainer's tests: a 2-layer Qwen3-MoE (hidden 32, 4 experts top-2,
// tied embeddings) on the first 300 samples of the bundled demo, in a fresh directory.
#pragma once

#include <string>
#include <vector>

#include "xtuner/train/config.h"

namespace xt::testing {

// 6 steps of 4 rows of 64 tokens in micro-batches of 2, lr 3e-3, TensorBoard on, no export.
TrainConfig TinyRun(const std::string& tag);

// The base model of the LoRA tests: two steps of TinyRun, exported in fp32 (made once per
// process); its directory.
const std::string& LoraBaseModel();
// TinyRun adapting LoraBaseModel(): rank 4, alpha 8 on q_proj, k_proj, v_proj, o_proj, lr 1e-2,
// fp32 exports.
TrainConfig LoraRun(const std::string& tag);

// Makes `to` a work dir holding only the step-`step` checkpoint and the tokenized cache of the
// run in work dir `from`: a run there with resume "auto" continues from that step.
void SeedResumeDir(const std::string& from, int64_t step, const std::string& to);
// `run` resumed from its step-`step` checkpoint in a work dir of its own (run.work_dir +
// "-resumed", seeded by SeedResumeDir, resume "auto"): the config to run.
TrainConfig ResumedRun(const TrainConfig& run, int64_t step);

// The config.json of a tiny DeepSeek-V3 for the demo's tokenizer (vocab 3008): hidden 32, 2
// layers (the first dense), 2 MLA heads, 6 experts in 3 groups keeping 2, top-2, a shared expert,
// tied embeddings.
std::string TinyDeepseekV3Config();
// The correction bias of a run's first MoE layer that its steps' router bias updates add up to
// (RouterBiasDeltas of each step's tokens_per_expert in metrics.jsonl, at `speed`), from zero;
// *steps: the steps counted.
std::vector<float> BiasFromMetrics(const std::string& work_dir, double speed, int* steps);
// A tiny GPT-OSS (4 experts, top-2, a sliding window of 8 keys on its first layer, sinks,
// biases, YaRN) for the demo's tokenizer, as config.json text.
std::string TinyGptOssConfig();

}  // namespace xt::testing
