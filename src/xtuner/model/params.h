// The parameter layout: every weight of a model lives in one fp32 slab (and its gradient in a
// second slab of the same layout). Each Hugging Face tensor maps to one contiguous range of the
// slab, so loading and saving are copies, and the layout suits the kernels:
//   - an MLP's gate_proj (I, H) and up_proj (I, H) are adjacent: one fused (2I, H) matrix
//   [gate|up];
//   - an MoE layer's experts are stacked: gate_up (E, 2I, H) and down (E, H, I), expert e's
//     gate_proj, up_proj and down_proj being slices of those.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "xtuner/core/tensor.h"
#include "xtuner/model/config.h"

namespace xt {

struct ParamInfo {
  std::string name;  // the Hugging Face tensor name
  Shape shape;
  int64_t offset = 0;    // in floats, into the slab
  bool is_norm = false;  // a norm weight (no weight decay by default)
};

// Offsets (in floats) of one decoder layer's weights; -1 where the layer has no such weight.
struct LayerOffsets {
  int64_t ln1 = -1, wq = -1, wk = -1, wv = -1, wo = -1, q_norm = -1, k_norm = -1, ln2 = -1;
  int64_t gate_up = -1, down = -1;  // dense: (2I, H), (H, I); MoE: (E, 2I, H), (E, H, I)
  int64_t router = -1;              // MoE: (E, H)
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelConfig& cfg);

  int64_t total() const { return total_; }
  const std::vector<ParamInfo>& params() const { return params_; }
  // The entry for a hub name, or null.
  const ParamInfo* Find(const std::string& name) const;

  int64_t embed = -1, final_norm = -1, lm_head = -1;  // lm_head == embed when tied
  std::vector<LayerOffsets> layers;

 private:
  int64_t Add(const std::string& name, Shape shape, bool is_norm = false);
  int64_t total_ = 0;
  std::vector<ParamInfo> params_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace xt
