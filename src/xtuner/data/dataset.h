// Datasets: JSONL files read into tokenized samples, and mixtures of several by ratio.
//
// One sample per line, two kinds:
//   chat  {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": ...}, ...],
//          "tools": [...]}                       (OpenAI chat format; "tools" optional)
//         content: a string, null, or a list of {"type": "text", "text": ...} parts (joined);
//         assistant messages may have "thinking" or "reasoning_content" (a string) and
//         "tool_calls": [{"type": "function", "function": {"name": .., "arguments": ..}}] with
//         arguments a JSON string or an object (written as transformers' `tojson` would);
//         other keys ("name", "tool_call_id", ...) are read ("name") or ignored. A chat sample
//         needs at least one assistant message. Rendered and masked by a ChatTemplate.
//   text  {"text": "..."} or {"content": "..."}: pre-training text, every token trained, with
//         the EOS token appended.
// With kind auto, the first sample of the file decides (a "messages" key: chat; else text) and
// every other line must be of that kind.
//
// A bad line (not JSON, invalid UTF-8, empty, wrong types, unknown role, no assistant turn, empty
// text, a conversation the template cannot render) is an error "PATH:LINE: what is wrong", or,
// with OnBadSample::kSkip, is skipped and counted in the LoadReport. I/O errors and a tokenizer
// that lacks the template's tokens are always errors.
//
// Reading is one pass over the file in blocks of lines; the lines of a block are parsed and
// tokenized on every core (OpenMP), and their outcomes are taken in line order, so the samples,
// the report and the first error are those of a serial pass. Memory: the samples plus a block.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/data/chat_template.h"
#include "xtuner/data/sample.h"
#include "xtuner/data/tokenizer.h"

namespace xt {

enum class DatasetKind { kAuto, kChat, kText };
enum class OnBadSample { kError, kSkip };

// "auto" | "chat" | "text"; "error" | "skip". Unknown names are errors that list the choices.
Result<DatasetKind> ParseDatasetKind(const std::string& s);
Result<OnBadSample> ParseOnBadSample(const std::string& s);

struct DatasetSpec {
  std::string path;
  // 0.5 takes a (seeded) half of the samples, 2.0 takes them all twice, 1.5 all once and a
  // half once more. Must be finite and >= 0.
  double ratio = 1.0;
  DatasetKind kind = DatasetKind::kAuto;
};

struct LoadOptions {
  OnBadSample on_bad_sample = OnBadSample::kError;
  bool train_last_turn_only = false;  // chat: train on the last assistant message only
  // Text samples: the token appended to each. "" = DefaultEosToken(tokenizer).
  std::string eos_token;
  // Called after each block of lines with the bytes of the file read so far and its size (for a
  // progress bar); may be empty.
  std::function<void(int64_t bytes_done, int64_t bytes_total)> progress;
};

// Why a line was rejected.
enum class BadSample {
  kNotJson,
  kInvalidUtf8,
  kEmptyLine,
  kEmptyObject,
  kNotObject,
  kMissingField,  // no "messages" / "text" / "content", or the other kind than the file's
  kWrongType,     // a field of the wrong JSON type or shape
  kUnknownRole,
  kNoAssistant,
  kEmptyText,
  kRender,  // the chat template or the tokenizer rejected it
  kCount
};
const char* BadSampleName(BadSample reason);  // "not JSON", "invalid UTF-8", ...

struct LoadReport {
  struct Reason {
    int64_t count = 0;
    std::vector<int64_t> first_lines;  // line numbers (1-based) of the first few
    std::string first_message;         // the message of the first one
  };
  static constexpr int kLinesKept = 5;

  std::string path;
  int64_t lines = 0;    // lines read
  int64_t samples = 0;  // samples produced
  int64_t skipped = 0;  // lines rejected (only with kSkip)
  std::array<Reason, static_cast<size_t>(BadSample::kCount)> reasons;

  // "PATH: 12 lines, 9 samples, 3 skipped: 2 not JSON (lines 3, 7), 1 no assistant turn (line 9)"
  std::string Summary() const;
};

// Lines, and tool calls' arguments strings, nested deeper than this are refused (not JSON that
// a sample holds): the templates walk them recursively.
inline constexpr int kMaxSampleDepth = 100;

// Parsing one line's JSON into a Conversation or a text; errors carry the reason and a message
// without the PATH:LINE: prefix. Exposed for tests and tools.
struct SampleError {
  BadSample reason;
  std::string message;
};
// `j` is a non-empty JSON object parsed with its key order kept (tools and tool-call arguments
// are rendered in that order, as transformers does).
bool ParseChatSample(const nlohmann::ordered_json& j, Conversation* out, SampleError* error);
bool ParseTextSample(const nlohmann::ordered_json& j, std::string* out, SampleError* error);

// The first of "<|endoftext|>", "<|end_of_text|>", "<｜end▁of▁sentence｜>", "</s>" that the
// tokenizer has; an error if none (then set LoadOptions::eos_token).
Result<std::string> DefaultEosToken(const Tokenizer& tokenizer);
// The "eos_token" of a tokenizer_config.json (a string or {"content": ...}).
Result<std::string> EosTokenFromConfig(const std::string& tokenizer_config_path);

// Reads one JSONL file (spec.ratio is not applied here). `report` may be null.
Result<std::vector<Sample>> LoadJsonl(const DatasetSpec& spec, const Tokenizer& tokenizer,
                                      const ChatTemplate& chat_template, const LoadOptions& options,
                                      LoadReport* report);

// Which samples a mixture takes, as (dataset, index) pairs: for each dataset of size n and
// ratio r, floor(r) copies of every sample plus round(frac(r) * n) distinct samples chosen at
// random, then all of them shuffled together. Deterministic for a seed and independent of the
// platform (its own generator; each dataset's choice depends only on the seed and its position).
struct MixEntry {
  int32_t dataset;
  int64_t index;
};
Result<std::vector<MixEntry>> PlanMixture(const std::vector<int64_t>& sizes,
                                          const std::vector<double>& ratios, uint64_t seed);

// Applies PlanMixture to loaded datasets (moving their samples out).
Result<std::vector<Sample>> MixDatasets(std::vector<std::vector<Sample>> datasets,
                                        const std::vector<double>& ratios, uint64_t seed);

// LoadJsonl for each spec, then MixDatasets with the specs' ratios. `reports` (may be null)
// receives one report per spec.
Result<std::vector<Sample>> LoadMixture(const std::vector<DatasetSpec>& specs,
                                        const Tokenizer& tokenizer,
                                        const ChatTemplate& chat_template,
                                        const LoadOptions& options, uint64_t seed,
                                        std::vector<LoadReport>* reports);

}  // namespace xt
