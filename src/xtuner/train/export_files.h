// The files beside the weights and config.json that make a Hugging Face export whole for
// transformers: the tokenizer and its settings, the chat template, and the generation settings.
// Both of xtuner's exports write them: a run's (work_dir/hf) and `xtuner convert`'s.
#pragma once

#include <string>

#include "xtuner/core/status.h"

namespace xt {

// Copies into `out_dir` (which exists), replacing files there:
//  - `tokenizer_json` as tokenizer.json, and tokenizer_config.json, special_tokens_map.json and
//    chat_template.jinja from beside it (transformers 5 keeps the chat template in that file);
//  - `base_model`'s generation_config.json (transformers' generate reads its eos_token_id).
// An empty path, or a file that is absent, is skipped; a copy that fails is an error naming the
// file.
Status CopyExportFiles(const std::string& tokenizer_json, const std::string& base_model,
                       const std::string& out_dir);

}  // namespace xt
