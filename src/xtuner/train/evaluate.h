// Evaluation on held-out prompts: each line of a JSONL file is {"prompt": ..., "answer": ...};
// the model answers the prompt (as a user turn of the chat template, greedy decoding until the
// end-of-turn token) and the answer counts as right when it equals "answer" after trimming
// surrounding whitespace.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/data/chat_template.h"
#include "xtuner/data/tokenizer.h"
#include "xtuner/dist/comm.h"
#include "xtuner/model/generate.h"
#include "xtuner/model/transformer.h"

namespace xt {

struct EvalReport {
  int64_t total = 0, correct = 0;
  double accuracy() const { return total ? double(correct) / double(total) : 0.0; }
};

// An eval file read and checked (before training, so that a bad one fails at once): its items'
// prompts through the chat template, and the decoding options.
struct EvalItem {
  std::string prompt, answer;
  std::vector<int32_t> ids;  // the prompt as a user turn, through the chat template
};
struct EvalSet {
  std::string path;
  std::vector<EvalItem> items;
  GenerateOptions options;  // greedy, max_new_tokens, the template's stop tokens
};

// Errors: the file missing, a line that is not {"prompt": string, "answer": string} or whose
// prompt has a token outside the model's vocabulary (named "path:line: ..."), a tokenizer
// without the template's end-of-turn token, max_new_tokens < 0.
Result<EvalSet> ReadEvalSet(const std::string& path, const Tokenizer& tokenizer,
                            const ChatTemplate& chat_template, int64_t max_new_tokens,
                            int64_t vocab_size);

// How many prompts a rank decodes together: kEvalBatch, fewer where their KV caches (fp32 keys
// and values of the longest prompt and its answer, every layer) would pass kEvalCacheBytes, and
// at least one.
inline constexpr int64_t kEvalBatch = 16;
inline constexpr double kEvalCacheBytes = 2.0 * (1 << 30);
int64_t EvalBatchSize(const ModelConfig& cfg, const EvalSet& set);

// Answers every item and prints a few examples and the accuracy to `log` (may be null).
// Collective over `world`, whose ranks all call it with the same set: the prompts are answered
// by GenerateMany (model/generate.h), EvalBatchSize at a time on each rank, so a model sharded
// over the ranks is never gathered whole. Every rank returns the same report.
Result<EvalReport> Evaluate(Transformer& model, Comm& world, const EvalSet& set,
                            const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                            std::FILE* log);

}  // namespace xt
