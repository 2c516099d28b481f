// Small helpers for reading the components of a tokenizer.json: typed fields with errors that
// name the component and the key, and the {"String": ...} | {"Regex": ...} pattern objects.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "xtuner/core/json.h"
#include "xtuner/core/status.h"
#include "xtuner/data/tokenizer_regex.h"
#include "xtuner/data/tokenizer_unicode.h"

namespace xt::tok {

// The "type" of a component object ("" when absent or not a string).
inline std::string TypeOf(const nlohmann::json& j) {
  auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// "<kind> type \"<type>\" is not implemented (supported: <supported>)".
inline Status NotImplemented(const std::string& kind, const nlohmann::json& j,
                             const std::string& supported) {
  const std::string type = j.is_object() ? TypeOf(j) : std::string();
  if (type.empty())
    return Status::Error(kind + " without a \"type\": " + DumpJson(j).substr(0, 200));
  return Status::Error(kind + " type \"" + type + "\" is not implemented (supported: " + supported +
                       ")");
}

// j[key] as T, `fallback` when absent or null; an error when present with another JSON type.
template <class T>
Result<T> Field(const nlohmann::json& j, const char* key, const std::string& where, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    return Status::Error(where + ": \"" + key +
                         "\" has the wrong type: " + DumpJson(*it).substr(0, 200));
  }
}

// j[key] as T; an error when absent.
template <class T>
Result<T> RequiredField(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) {
    return Status::Error(where + ": missing \"" + std::string(key) + "\"");
  }
  return Field<T>(j, key, where, T());
}

// A single character given as a string (Metaspace "replacement", Strip "content").
inline Result<uint32_t> CharField(const nlohmann::json& j, const char* key,
                                  const std::string& where) {
  // (Read in place: g++ 12 takes a string moved out of a Result for uninitialised.)
  const Result<std::string> field = RequiredField<std::string>(j, key, where);
  if (!field.ok()) return field.status();
  const std::string& s = *field;
  uint32_t cp = 0;
  const int n = s.empty() ? 0 : DecodeUtf8(s.data(), &cp);
  if (n == 0 || static_cast<size_t>(n) != s.size()) {
    return Status::Error(where + ": \"" + key + "\" must be one character, got \"" + s + "\"");
  }
  return cp;
}

// The "pattern" of Split / Replace: {"String": s} (literal) or {"Regex": r}.
inline Result<Regex> PatternField(const nlohmann::json& j, const std::string& where) {
  auto it = j.find("pattern");
  if (it == j.end() || !it->is_object() || it->size() != 1) {
    return Status::Error(where + ": \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
  }
  const bool literal = it->contains("String");
  const auto& v = literal ? (*it)["String"] : it->value("Regex", nlohmann::json());
  if (!v.is_string()) {
    return Status::Error(where + ": \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
  }
  auto r = Regex::Compile(v.get<std::string>(), literal);
  if (!r.ok()) return r.status().With(where);
  return r;
}

}  // namespace xt::tok
