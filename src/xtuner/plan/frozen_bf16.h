// The frozen weights a LoRA run on GPUs in bf16 holds in bf16 only (cuda/train_backend_cuda.cc;
// `xtuner plan` counts the same). A bf16 CudaModel reads a matmul's weight only through its bf16
// copy (cuda/step_products.cc), and a frozen weight never changes: its fp32 master would be read
// once, to make that copy. So the fp32 parameters are held only outside these ranges, in whole
// granules of mapped device memory (cuda/sparse_slab.h): on one GPU the model's bf16 copy is
// the only one (a third of the memory for the base model's weights: Qwen3-30B-A3B's 61 GB
// instead of 122 GB + 61 GB); over several the shards keep them in bf16 and widen them to fp32
// as a unit is gathered (dist/sharded_params.h; 2 B a parameter of them instead of 4).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "xtuner/model/params.h"

namespace xt {

// (offset, count) ranges of a slab, in floats (or in bytes where said), sorted and disjoint.
using SlabRanges = std::vector<std::pair<int64_t, int64_t>>;

// Whether a GPU run holds frozen weights in bf16 only: a LoRA run (cfg.lora) in bf16 on any
// number of GPUs (`ranks`), unless train.cuda_frozen_weights = "fp32" (allowed false). One GPU
// keeps them in its model's bf16 copy; several keep them in bf16 in their shards and widen a
// chunk to fp32 as they gather it (dist/sharded_params.h).
bool HoldsFrozenInBf16Only(const ModelConfig& cfg, bool bf16, int64_t ranks, bool allowed);

// The frozen parameters of `layout` that enter only bf16 matmuls in a bf16 CudaModel: the
// attention's projections (MLA's too), a dense MLP's and the shared experts' gate_up and down,
// the routed experts' stacks, and an untied lm_head; merged where adjacent. Not among them:
// norms, routers and their biases, biases, sinks, the embedding (its lookup reads fp32, and so a
// tied lm_head stays fp32) and the adapters (they train). Empty without LoRA.
SlabRanges Bf16OnlyRanges(const ParamLayout& layout);

// What of a slab of n floats holds fp32 parameters: [0, n) less `bf16_only`.
SlabRanges Fp32Ranges(int64_t n, const SlabRanges& bf16_only);

// The byte ranges of device memory that hold the floats `held` of a slab of n floats, each
// widened to whole granules of `granularity` bytes (the slab starting on one) and merged.
SlabRanges GranuleMappings(int64_t n, const SlabRanges& held, int64_t granularity);
// The sum of their sizes (bytes, or floats).
int64_t MappedBytes(const SlabRanges& mappings);

// A GPU's granularity of mapped memory (cuMemGetAllocationGranularity on an H100 or H200).
constexpr int64_t kGpuGranularity = int64_t(2) << 20;

}  // namespace xt
