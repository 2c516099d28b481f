// A reference checkpoint's files, for tests that load a fixture with tensors edited, added or
// removed.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "xtuner/core/tensor.h"

namespace xt::testing {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// The tensors of tests/data/<fixture>/model.safetensors, in name order (views of the file).
NamedTensors FixtureTensors(const std::string& fixture);

// The fixture's [2, 16] batch (reference.safetensors' input_ids and labels) as int64 rows.
void ReferenceBatch(const std::string& fixture, std::vector<int64_t>* ids,
                    std::vector<int64_t>* labels);

// A fresh directory holding the fixture's config.json and `tensors` as model.safetensors.
std::string WriteFixtureCopy(const std::string& fixture, const NamedTensors& tensors);

}  // namespace xt::testing
