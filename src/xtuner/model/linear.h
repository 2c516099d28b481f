// A linear layer as the model runs it: out = in @ W^T (+ its bias, GPT-OSS's attention), plus
// the LoRA adapters of W (ModelConfig::lora) when it has any. Private to model/.
#pragma once

#include <cstdint>
#include <vector>

namespace xt {

// One adapter, resolved to pointers: A (rank, in), B (rows, rank) adding scale * (x A^T) B^T to
// output columns [row0, row0 + rows), x its input; da and db (same shapes) take its gradients
// (+=), or are null in a forward-only pass. With LoRA's dropout (noise set: the batch's keys,
// (T)) x is the input masked by ops::dropout_mask with salt and threshold, and scale is
// LoraSpec::dropout_scale(); the input's gradient is masked alike.
struct LoraRef {
  const float* a = nullptr;
  const float* b = nullptr;
  float* da = nullptr;
  float* db = nullptr;
  int64_t row0 = 0, rows = 0, rank = 0;
  float scale = 1;
  const uint64_t* noise = nullptr;
  uint64_t salt = 0;
  uint32_t threshold = 0;
};

// W (O, I), its gradient dw (+=; null: frozen, or no backward), its bias b (O) or null, whose
// gradient db (+=) may be null likewise, and its adapters.
struct Linear {
  const float* w = nullptr;
  float* dw = nullptr;
  const float* b = nullptr;
  float* db = nullptr;
  std::vector<LoraRef> lora;
};

// out (T, O) = in (T, I) @ W^T + b + the adapters' terms; assigned.
void LinearForward(float* out, const float* in, const Linear& l, int64_t T, int64_t I, int64_t O);
// din (T, I) = dout @ W + the adapters' terms: assigned, or added when accumulate_din (skipped
// when din is null); dw, db and each adapter's da, db +=.
void LinearBackward(float* din, const float* dout, const float* in, const Linear& l, int64_t T,
                    int64_t I, int64_t O, bool accumulate_din = false);

}  // namespace xt
