// A reference checkpoint's files, for tests that load a fixture with tensors edited, added or
// removed.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "xtuner/core/tensor.h"

namespace xt::testing {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// The tensors of tests/data/<fixture>/model.safetensors, in name order (views of the file).
NamedTensors FixtureTensors(const std::string& fixture);

// A fresh directory holding the fixture's config.json and `tensors` as model.safetensors.
std::string WriteFixtureCopy(const std::string& fixture, const NamedTensors& tensors);

}  // namespace xt::testing
