// Evaluation on held-out prompts: each line of a JSONL file is {"prompt": ..., "answer": ...};
// the model answers the prompt (as a user turn of the chat template, greedy decoding until the
// end-of-turn token) and the answer counts as right when it equals "answer" after trimming
// surrounding whitespace.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "xtuner/core/status.h"
#include "xtuner/data/chat_template.h"
#include "xtuner/data/tokenizer.h"
#include "xtuner/model/transformer.h"

namespace xt {

struct EvalReport {
  int64_t total = 0, correct = 0;
  double accuracy() const { return total ? double(correct) / double(total) : 0.0; }
};

// Prints a few examples and the accuracy to `log`. Errors: the file missing or a line that is
// not {"prompt": string, "answer": string} (named "path:line: ...").
Result<EvalReport> Evaluate(Transformer& model, const Tokenizer& tokenizer,
                            const ChatTemplate& chat_template, const std::string& path,
                            int64_t max_new_tokens, std::FILE* log);

}  // namespace xt
