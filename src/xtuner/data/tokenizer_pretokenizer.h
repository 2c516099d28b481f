// Pre-tokenizers of tokenizer.json: Split (regex or string; Removed, Isolated,
// MergedWithPrevious, MergedWithNext, Contiguous; invert), ByteLevel (with or without its GPT-2
// regex, add_prefix_space), Digits, Metaspace, Whitespace, WhitespaceSplit, Punctuation,
// BertPreTokenizer and Sequence of them.
//
// HF applies each pre-tokenizer to every piece the previous one produced, independently, so the
// chain runs depth first here: a piece goes through all stages before the next one starts, with
// no list of pieces in between. A ByteLevel stage that ends the chain hands the BPE model raw
// bytes (raw_bytes()); the model maps them to GPT-2's alphabet itself, which saves a copy.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/data/tokenizer_regex.h"

namespace xt::tok {

// A non-owning reference to a callable, for callbacks that must not allocate.
template <class Sig>
class FunctionRef;
template <class R, class... A>
class FunctionRef<R(A...)> {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, FunctionRef>>>
  FunctionRef(F&& f)  // NOLINT: implicit on purpose
      : obj_(const_cast<void*>(static_cast<const void*>(&f))), call_([](void* o, A... a) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<A>(a)...);
        }) {}
  R operator()(A... a) const { return call_(obj_, std::forward<A>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, A...);
};

// Receives a piece and whether it starts at offset 0 of the input text (Metaspace's
// prepend_scheme "first" asks).
using PieceSink = FunctionRef<void(std::string_view, bool)>;

class Stage;

// Per-call scratch space (one per thread and tokenizer): reused buffers, no allocation once warm.
struct PreTokenizerScratch {
  struct PerStage {
    std::string buf, buf2;
    std::vector<Span> spans;
    std::vector<std::pair<size_t, size_t>> ranges;
  };
  std::vector<PerStage> stages;
};

class PreTokenizer {
 public:
  PreTokenizer();
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // The pre-tokenizer that the JSON value `j` describes (null: none, the text is one piece).
  static Result<PreTokenizer> Parse(const nlohmann::json& j);

  // Calls sink(piece, at_origin) for each non-empty piece of `text` (valid UTF-8), in order.
  // `at_origin`: `text` starts at offset 0 of the input.
  void Run(std::string_view text, bool at_origin, PreTokenizerScratch* scratch,
           PieceSink sink) const;

  // True when the pieces are raw bytes still to be written in GPT-2's byte-level alphabet.
  bool raw_bytes() const { return raw_bytes_; }
  size_t num_stages() const { return stages_.size(); }

 private:
  void RunFrom(size_t i, std::string_view text, bool at_origin, PreTokenizerScratch* scratch,
               PieceSink sink) const;
  std::vector<std::unique_ptr<Stage>> stages_;
  bool raw_bytes_ = false;
};

// How a split keeps the delimiters it found (HF's SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// HF's NormalizedString::split: turns matches and gaps (covering the text) into the ranges that
// remain, possibly empty, in order.
void ApplySplitBehavior(const std::vector<Span>& spans, SplitBehavior behavior,
                        std::vector<std::pair<size_t, size_t>>* ranges);

}  // namespace xt::tok
