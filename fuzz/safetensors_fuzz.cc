// libFuzzer target for the safetensors reader: any byte string given to
// SafetensorsFile::FromBuffer (the parser behind SafetensorsFile::Open) must yield either a valid
// file, every tensor of which can be read within the input's bounds, or an error Status; never a
// crash, a sanitizer report or an abort. Every tensor is also read as a model weight
// (ReadWeightF32: FP8 dequantization, with its scales, under a few block sizes), which must give
// a tensor of the stored shape or an error; and every expert parameter of a small GPT-OSS with
// MXFP4 experts is read from the file's stacked tensors (ReadGptOssExpert: the hub's [E, H, 2I]
// interleaved layout, or MXFP4 blocks and scales), which must give the parameter's shape or an
// error. See fuzz/README.md.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "xtuner/core/safetensors.h"
#include "xtuner/model/fp8_weights.h"
#include "xtuner/model/gpt_oss_experts.h"

namespace {

// One layer, 2 experts, hidden 32, experts of 32 (one MXFP4 group per row).
const xt::ModelConfig& GptOss() {
  static const xt::ModelConfig cfg = [] {
    xt::ModelConfig c;
    c.model_type = "gpt_oss";
    c.arch = xt::Arch::kGptOss;
    c.vocab_size = 8;
    c.hidden_size = 32;
    c.num_layers = 1;
    c.num_heads = c.num_kv_heads = 1;
    c.head_dim = 8;
    c.intermediate_size = c.moe_intermediate_size = 32;
    c.num_experts = 2;
    c.top_k = 1;
    c.layer_is_moe = {true};
    c.router_logit_bias = c.expert_bias = c.attention_bias = c.attention_sinks = true;
    c.expert_act = xt::ExpertActivation::kGptOssGlu;
    c.mxfp4_experts = true;
    return c;
  }();
  return cfg;
}

// Reads every byte so that AddressSanitizer sees any access outside the input.
uint8_t Touch(const void* p, size_t n) {
  uint8_t acc = 0;
  for (size_t i = 0; i < n; ++i) acc ^= static_cast<const uint8_t*>(p)[i];
  return acc;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = xt::SafetensorsFile::FromBuffer("fuzz-input", data, size, nullptr);
  if (!file.ok()) {
    if (file.status().message().empty()) __builtin_trap();
    return 0;
  }
  volatile uint8_t sink = 0;
  for (const auto& name : file->names()) {
    if (!file->contains(name)) __builtin_trap();
    auto info = file->Info(name);
    if (!info.ok()) __builtin_trap();
    sink = sink ^ Touch(info->data, info->nbytes);
    if (auto t = file->Get(name); t.ok()) {
      if (t->nbytes() != info->nbytes || t->shape() != info->shape) __builtin_trap();
      sink = sink ^ Touch(t->data(), t->nbytes());
    }
    if (auto f = file->GetF32(name, info->shape); f.ok()) {
      sink = sink ^ Touch(f->data(), f->nbytes());
    }
    if (auto d = file->GetF64(name, info->shape); d.ok()) {
      sink = sink ^ Touch(d->data(), d->size() * sizeof(double));
    }
  }
  for (const auto& [k, v] : file->metadata()) sink = sink ^ Touch(v.data(), v.size());

  const auto ckpt = xt::SafetensorsCheckpoint::FromFile(*file);
  xt::ModelConfig cfg;
  cfg.fp8_weights = true;
  const int64_t blocks[][2] = {{1, 1}, {2, 3}, {128, 128}};
  for (const auto& name : ckpt.names()) {
    sink = sink ^ uint8_t(xt::IsFp8Companion(ckpt, name));
    const xt::Shape shape = ckpt.Info(name)->shape;
    for (const auto& b : blocks) {
      cfg.fp8_block[0] = b[0];
      cfg.fp8_block[1] = b[1];
      if (auto w = xt::ReadWeightF32(ckpt, name, shape, cfg); w.ok()) {
        if (w->shape() != shape || w->dtype() != xt::DType::F32) __builtin_trap();
        sink = sink ^ Touch(w->data(), w->nbytes());
      } else if (w.status().message().empty()) {
        __builtin_trap();
      }
    }
  }
  const xt::ModelConfig& oss = GptOss();
  const xt::ParamLayout layout(oss);
  for (const xt::ParamInfo& p : layout.params()) {
    const auto slice = xt::GptOssExpertOf(oss, p.name);
    if (!slice) continue;
    if (auto w = xt::ReadGptOssExpert(ckpt, oss, *slice, p); w.ok()) {
      if (w->shape() != p.shape || w->dtype() != xt::DType::F32) __builtin_trap();
      sink = sink ^ Touch(w->data(), w->nbytes());
    } else if (w.status().message().empty()) {
      __builtin_trap();
    }
  }
  return 0;
}
