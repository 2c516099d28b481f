// cpu_train_bench: speed of one fp32 training step of a small Qwen3-MoE on the CPU (all cores),
// the engine side of bench/cpu_train.sh (the PyTorch side is cpu_train_peer.py).
//
//   cpu_train_bench [--steps 5] [--tokens 2048] [--docs 4] [--recompute 0] [--model qwen3_moe]
//                   [--lora RANK] [--lora-dropout P] [--lora-experts 0|1]
//
// Model: Qwen3-MoE, hidden 512, 4 layers, 8 query / 2 kv heads (head_dim 64), 32 experts, top-4,
// moe_intermediate 256, vocab 8192, untied; InitRandom(std 0.02). --model deepseek_v3: the same
// sizes as a DeepSeek-V3 (8 MLA heads: q_lora 256, kv_lora 128, nope 64, rope 32, v 64; first
// layer dense; 32 experts in 4 groups keeping 2, top-4, one shared expert). --model gpt_oss: the
// same sizes as a GPT-OSS (biases, attention sinks, a 128-token sliding window on every other
// layer, YaRN, the clamped GLU; 32 experts of 256, top-4). Input: one packed row of --tokens
// random ids in --docs equal documents, labels = ids. A step is ZeroGrads +
// ForwardBackward + clip_grad_norm(1.0) + AdamW.Step (DefaultDecayRanges, lr 1e-4); one warm-up
// step, then --steps timed steps. --lora RANK: LoRA adapters of that rank (alpha 2 x rank) on the
// attention projections (lora target "auto"), every other weight frozen; --lora-dropout P: their
// dropout (the batch's noise keys fixed over the steps); --lora-experts 1: adapters on the routed
// experts' gate_up and down weights too (lora.target_parameters). Also measures ops::gemm
// 2048^3 (best of 3) as the machine's sgemm rate. Prints key=value lines:
//   threads tokens steps step_s_median tokens_per_s total_params active_params matmul_params
//   step_flops model_flops_per_s sgemm_flops_per_s sgemm_fraction peak_rss_mib activation_mib
//   recompute_layers loss
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "xtuner/core/allocator.h"
#include "xtuner/dist/comm.h"
#include "xtuner/dist/mesh.h"
#include "xtuner/dist/shard_io.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/model/batch.h"
#include "xtuner/model/config.h"
#include "xtuner/model/init.h"
#include "xtuner/model/lora.h"
#include "xtuner/model/transformer.h"
#include "xtuner/ops/ops.h"
#include "xtuner/optim/adamw.h"
#include "xtuner/optim/clip.h"
#include "xtuner/train/metrics_flops.h"

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// VmHWM of /proc/self/status in MiB (-1 when unavailable).
double PeakRssMib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;  // kB
  }
  return -1;
}

template <typename T>
T Check(xt::Result<T> r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "cpu_train_bench: %s: %s\n", what, r.status().message().c_str());
    std::exit(1);
  }
  return std::move(r).value();
}

}  // namespace

int main(int argc, char** argv) {
  xt::ConfigureAllocatorForTraining();
  int64_t steps = 5, tokens = 2048, docs = 4;
  double recompute = 0;
  bool bf16 = false;
  std::string model_type = "qwen3_moe";
  int64_t lora_rank = 0;
  double lora_dropout = 0;
  bool lora_experts = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--steps"))
      steps = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokens"))
      tokens = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--docs"))
      docs = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--recompute"))
      recompute = std::atof(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--model") &&
             (!std::strcmp(argv[i + 1], "qwen3_moe") || !std::strcmp(argv[i + 1], "deepseek_v3") ||
              !std::strcmp(argv[i + 1], "gpt_oss")))
      model_type = argv[i + 1];
    else if (!std::strcmp(argv[i], "--precision") && !std::strcmp(argv[i + 1], "bf16"))
      bf16 = true;
    else if (!std::strcmp(argv[i], "--precision") && !std::strcmp(argv[i + 1], "fp32"))
      bf16 = false;
    else if (!std::strcmp(argv[i], "--lora"))
      lora_rank = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--lora-dropout"))
      lora_dropout = std::atof(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--lora-experts"))
      lora_experts = std::atoi(argv[i + 1]) != 0;
    else {
      std::fprintf(stderr,
                   "usage: cpu_train_bench [--steps N] [--tokens T] [--docs D] [--recompute F] "
                   "[--precision fp32|bf16] [--model qwen3_moe|deepseek_v3|gpt_oss] [--lora RANK] "
                   "[--lora-dropout P] [--lora-experts 0|1]\n");
      return 2;
    }
  }
  if (steps < 1 || docs < 1 || tokens % docs != 0 || !(recompute >= 0 && recompute <= 1)) {
    std::fprintf(stderr,
                 "cpu_train_bench: need steps >= 1, tokens divisible by docs, recompute in "
                 "[0, 1]\n");
    return 2;
  }

  nlohmann::json cj = {{"model_type", "qwen3_moe"},
                       {"architectures", {"Qwen3MoeForCausalLM"}},
                       {"vocab_size", 8192},
                       {"hidden_size", 512},
                       {"num_hidden_layers", 4},
                       {"num_attention_heads", 8},
                       {"num_key_value_heads", 2},
                       {"head_dim", 64},
                       {"intermediate_size", 1024},
                       {"moe_intermediate_size", 256},
                       {"num_experts", 32},
                       {"num_experts_per_tok", 4},
                       {"decoder_sparse_step", 1},
                       {"mlp_only_layers", nlohmann::json::array()},
                       {"norm_topk_prob", true},
                       {"router_aux_loss_coef", 0.01},
                       {"output_router_logits", true},
                       {"tie_word_embeddings", false},
                       {"rms_norm_eps", 1e-6},
                       {"rope_theta", 1000000.0},
                       {"max_position_embeddings", 4096},
                       {"hidden_act", "silu"},
                       {"attention_bias", false},
                       {"use_sliding_window", false},
                       {"torch_dtype", "float32"}};
  if (model_type == "deepseek_v3")  // the same sizes with DeepSeek-V3's attention and router
    cj = {{"model_type", "deepseek_v3"},
          {"vocab_size", 8192},
          {"hidden_size", 512},
          {"num_hidden_layers", 4},
          {"num_attention_heads", 8},
          {"num_key_value_heads", 8},
          {"q_lora_rank", 256},
          {"kv_lora_rank", 128},
          {"qk_nope_head_dim", 64},
          {"qk_rope_head_dim", 32},
          {"v_head_dim", 64},
          {"intermediate_size", 1024},
          {"moe_intermediate_size", 256},
          {"n_routed_experts", 32},
          {"num_experts_per_tok", 4},
          {"n_group", 4},
          {"topk_group", 2},
          {"n_shared_experts", 1},
          {"first_k_dense_replace", 1},
          {"routed_scaling_factor", 2.5},
          {"tie_word_embeddings", false},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 10000.0},
          {"max_position_embeddings", 4096}};
  if (model_type == "gpt_oss")  // the same sizes with GPT-OSS's attention and experts
    cj = {{"model_type", "gpt_oss"},
          {"vocab_size", 8192},
          {"hidden_size", 512},
          {"num_hidden_layers", 4},
          {"num_attention_heads", 8},
          {"num_key_value_heads", 2},
          {"head_dim", 64},
          {"intermediate_size", 256},
          {"num_local_experts", 32},
          {"num_experts_per_tok", 4},
          {"sliding_window", 128},
          {"router_aux_loss_coef", 0.01},
          {"tie_word_embeddings", false},
          {"rms_norm_eps", 1e-5},
          {"max_position_embeddings", 4096}};
  xt::ModelConfig cfg = Check(xt::ModelConfig::FromJson(cj, "cpu_train_bench"), "config");
  if (lora_rank > 0) {
    xt::LoraSpec spec;
    spec.rank = lora_rank;
    spec.alpha = 2.0 * double(lora_rank);
    spec.dropout = lora_dropout;
    spec.targets = {"auto"};
    if (lora_experts) spec.expert_targets = {"gate_up_proj", "down_proj"};
    cfg.lora = Check(xt::ResolveLora(spec, cfg, "--lora"), "lora");
  }

  // As the trainer holds a run's state on one rank: a ShardedParams (the whole model, its
  // gradients' pages committed only where written) and AdamW over it.
  std::unique_ptr<xt::Comm> world = xt::MakeSingleComm();
  std::unique_ptr<xt::Comm> dp = world->Split(0, 0);
  const xt::Mesh mesh = Check(xt::MakeMesh(1, 0, 1, cfg), "mesh");
  xt::ShardedParams store(cfg, mesh, world.get(), dp.get());
  xt::InitShardRandom(cfg, store.owned(), store.params(), 0.02, 0);
  xt::Transformer model(cfg, &store, 0, cfg.is_moe() ? mesh.experts_per_rank(cfg) : -1, nullptr);
  model.SetRecompute(recompute);
  const int64_t total = model.layout().total();

  std::mt19937_64 rng(1234);
  std::uniform_int_distribution<int64_t> id(0, cfg.vocab_size - 1);
  std::vector<int64_t> ids(tokens), cu;
  for (auto& x : ids) x = id(rng);
  for (int64_t d = 0; d <= docs; ++d) cu.push_back(d * (tokens / docs));
  xt::Batch batch = Check(xt::Batch::Packed(ids, ids, cu), "batch");
  if (cfg.lora.dropout > 0) xt::Batch::AppendNoise(7, tokens, &batch.noise);

  xt::AdamW opt = Check(
      xt::AdamW::Create(xt::AdamWConfig{}, xt::DefaultDecayRanges(model.layout()), total), "adamw");

  xt::ops::SetMatmulPrecision(bf16 ? xt::ops::MatmulPrecision::kBf16
                                   : xt::ops::MatmulPrecision::kFp32);
  double loss = 0;
  int64_t activation_bytes = 0;
  auto step = [&] {
    store.ZeroGrads();
    xt::LossInfo li = Check(model.ForwardBackward(batch), "forward_backward");
    loss = li.loss;
    activation_bytes = li.activation_bytes;
    // As the trainer: the clipping coefficient is applied as AdamW reads the gradients.
    const double norm = xt::grad_norm(store.grads(), total);
    opt.Step(store.params(), store.grads(), 1e-4, float(xt::clip_coef(norm, 1.0)));
  };
  step();  // warm-up
  std::vector<double> times;
  for (int64_t s = 0; s < steps; ++s) {
    double t0 = Now();
    step();
    times.push_back(Now() - t0);
  }
  std::sort(times.begin(), times.end());
  const double median =
      steps % 2 ? times[steps / 2] : 0.5 * (times[steps / 2 - 1] + times[steps / 2]);

  const int64_t per_expert = cfg.params_per_expert();
  const int64_t active =
      xt::MoeActiveParams(total, cfg.num_moe_layers(), cfg.num_experts, cfg.top_k, per_expert);
  const int64_t matmul = active - (cfg.tie_word_embeddings ? 0 : cfg.vocab_size * cfg.hidden_size);
  double sum_sq = 0, sum_windowed = 0;
  for (int64_t d = 0; d < docs; ++d) {
    sum_sq += double(cu[d + 1] - cu[d]) * (cu[d + 1] - cu[d]);
    sum_windowed += xt::WindowedLenSq(cu[d + 1] - cu[d], cfg.sliding_window);
  }
  const double flops =
      xt::TrainingStepFlops(matmul, tokens, cfg.num_layers, cfg.attention_flops_dim(), sum_sq, true,
                            cfg.num_sliding_layers(), sum_windowed);
  const double model_rate = flops / median;
  const double rss = PeakRssMib();  // before the sgemm buffers (48 MiB) are allocated

  // The machine's sgemm rate through the same oneDNN path: 2048^3, best of 3 after a warm-up
  // (in fp32: the reference of sgemm_fraction), then the bf16 rate likewise.
  const int64_t n = 2048;
  std::vector<float> a(n * n), b(n * n), c(n * n);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& x : a) x = u(rng);
  for (auto& x : b) x = u(rng);
  auto gemm_rate = [&](xt::ops::MatmulPrecision p) {
    xt::ops::SetMatmulPrecision(p);
    xt::ops::gemm(c.data(), a.data(), b.data(), n, n, n, false, false, 0.f);
    double best = 1e30;
    for (int r = 0; r < 3; ++r) {
      double t0 = Now();
      xt::ops::gemm(c.data(), a.data(), b.data(), n, n, n, false, false, 0.f);
      best = std::min(best, Now() - t0);
    }
    return 2.0 * n * n * n / best;
  };
  const double sgemm_rate = gemm_rate(xt::ops::MatmulPrecision::kFp32);
  const double bf16_rate = gemm_rate(xt::ops::MatmulPrecision::kBf16);

  std::printf("threads=%d\n", omp_get_max_threads());
  std::printf("tokens=%lld\nsteps=%lld\n", (long long)tokens, (long long)steps);
  std::printf("step_s_median=%.6f\n", median);
  std::printf("tokens_per_s=%.3f\n", tokens / median);
  std::printf("total_params=%lld\nactive_params=%lld\nmatmul_params=%lld\n", (long long)total,
              (long long)active, (long long)matmul);
  std::printf("step_flops=%.6e\n", flops);
  std::printf("model_flops_per_s=%.6e\n", model_rate);
  std::printf("sgemm_flops_per_s=%.6e\n", sgemm_rate);
  std::printf("sgemm_fraction=%.4f\n", model_rate / sgemm_rate);
  std::printf("bf16_gemm_flops_per_s=%.6e\n", bf16_rate);
  std::printf("precision=%s\n", bf16 ? "bf16" : "fp32");
  std::printf("peak_rss_mib=%.1f\n", rss);
  std::printf("activation_mib=%.1f\n", double(activation_bytes) / (1 << 20));
  std::printf("recompute_layers=%lld\n", (long long)model.recompute_layers());
  std::printf("loss=%.6f\n", loss);
  int64_t trainable = 0;
  for (const xt::ParamInfo& p : model.layout().params())
    if (!p.frozen) trainable += xt::NumElements(p.shape);
  std::printf("trainable_params=%lld\n", (long long)trainable);
  return 0;
}
