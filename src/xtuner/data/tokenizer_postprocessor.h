// Post-processors of tokenizer.json, for one sequence: the special tokens they put around the
// ids when add_special_tokens is asked (TemplateProcessing's "single" template, RobertaProcessing,
// BertProcessing); ByteLevel only adjusts offsets and adds nothing; Sequence chains them.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <vector>

#include "xtuner/core/status.h"

namespace xt::tok {

struct PostProcessor {
  std::vector<int32_t> prefix, suffix;  // ids before and after the sequence

  // The post-processor that the JSON value `j` describes (null adds nothing).
  static Result<PostProcessor> Parse(const nlohmann::json& j);
};

}  // namespace xt::tok
