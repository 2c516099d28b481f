// JSON text to nlohmann values and back. nlohmann's parser and serializer are large templates:
// every file that instantiated them took seconds more to build, so they are instantiated once,
// in json.cc, and every other file parses and dumps through these functions. The rest of
// nlohmann (building values, accessors, iteration) is used directly.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "xtuner/core/status.h"

namespace xt {

// Nesting deeper than any JSON of ours or Hugging Face's (a tenth of it is already absurd), and
// shallow enough that code walking a value recursively (nlohmann's copy and dump included)
// cannot run out of stack: the default limit of every parse.
inline constexpr int kJsonMaxDepth = 1000;

// What a parse refuses beyond JSON's syntax.
struct JsonLimits {
  // > 0: arrays and objects nested deeper than this are an error (checked by a scan of the text
  // before anything is built); 0: no limit.
  int max_depth = kJsonMaxDepth;
  bool unique_keys = false;  // a key repeated within one object is an error (nlohmann keeps the
                             // last one silently)
  std::string top_level_key = "key";  // what a repeated top-level key is called in the error
};

// One JSON value from `text`. The error says what is wrong and where, not which source it came
// from (callers add that with Status::With): "not valid JSON: parse error at line 2, column 5:
// syntax error while parsing object key - unexpected '}'; expected string literal".
Result<nlohmann::json> ParseJson(std::string_view text, const JsonLimits& limits = {});
// The same, keeping the objects' keys in their order, with JsonLimits::max_depth's meaning.
Result<nlohmann::ordered_json> ParseOrderedJson(std::string_view text,
                                                int max_depth = kJsonMaxDepth);

// The file at `path` parsed; errors start with the path ("<path>: cannot open: ...", "<path>: not
// valid JSON: ...").
Result<nlohmann::json> ReadJsonFile(const std::string& path, const JsonLimits& limits = {});

// nlohmann's dump(indent): on one line for indent < 0, non-ASCII characters as they are, and
// invalid UTF-8 in a string as U+FFFD instead of an exception.
std::string DumpJson(const nlohmann::json& j, int indent = -1);
std::string DumpJson(const nlohmann::ordered_json& j, int indent = -1);

}  // namespace xt
