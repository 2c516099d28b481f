// The one instantiation of nlohmann's parser and serializer (json.h).
#include "xtuner/core/json.h"

#include <set>
#include <vector>

#include "xtuner/core/file_util.h"

namespace xt {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// A limit of JsonLimits broken, thrown out of the parser's callback.
struct LimitBroken {
  std::string message;
};

// "not valid JSON: <nlohmann's message without its exception tag>". nlohmann's what() reads
// "[json.exception.parse_error.101] parse error at line 1, column 3: ...".
Status NotJson(const nlohmann::detail::exception& e) {
  std::string what = e.what();
  const size_t close = what.find("] ");
  if (what.rfind("[json.exception.", 0) == 0 && close != std::string::npos) {
    what = what.substr(close + 2);
  }
  return Status::Error("not valid JSON: " + what);
}

// The deepest nesting of arrays and objects in `text`, outside strings, past `limit` or not:
// an error when it is, before anything is built.
Status CheckDepth(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit)
        return Status::Error("JSON nested more than " + std::to_string(limit) + " levels deep");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return Status::OK();
}

}  // namespace

Result<json> ParseJson(std::string_view text, const JsonLimits& limits) {
  if (limits.max_depth > 0) XT_RETURN_IF_ERROR(CheckDepth(text, limits.max_depth));
  try {
    if (!limits.unique_keys) return json::parse(text);
    // The keys seen so far in each object being read, innermost last.
    std::vector<std::set<std::string>> open_objects;
    auto check = [&](int /*depth*/, json::parse_event_t event, json& parsed) -> bool {
      switch (event) {
        case json::parse_event_t::object_start:
          open_objects.emplace_back();
          break;
        case json::parse_event_t::key:
          if (!open_objects.back().insert(parsed.get_ref<const std::string&>()).second) {
            throw LimitBroken{"duplicate " +
                              (open_objects.size() == 1 ? limits.top_level_key : "key") + " '" +
                              parsed.get_ref<const std::string&>() + "'"};
          }
          break;
        case json::parse_event_t::object_end:
          open_objects.pop_back();
          break;
        default:
          break;
      }
      return true;
    };
    return json::parse(text, check);
  } catch (const LimitBroken& e) {
    return Status::Error(e.message);
  } catch (const json::exception& e) {
    return NotJson(e);
  }
}

Result<ordered_json> ParseOrderedJson(std::string_view text, int max_depth) {
  if (max_depth > 0) XT_RETURN_IF_ERROR(CheckDepth(text, max_depth));
  try {
    return ordered_json::parse(text);
  } catch (const ordered_json::exception& e) {
    return NotJson(e);
  }
}

Result<json> ReadJsonFile(const std::string& path, const JsonLimits& limits) {
  XT_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  Result<json> j = ParseJson(text, limits);
  if (!j.ok()) return j.status().With(path);
  return j;
}

std::string DumpJson(const json& j, int indent) {
  return j.dump(indent, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

std::string DumpJson(const ordered_json& j, int indent) {
  return j.dump(indent, ' ', /*ensure_ascii=*/false, ordered_json::error_handler_t::replace);
}

}  // namespace xt
