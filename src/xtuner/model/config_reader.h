// ModelConfig::FromJson's helpers shared by config.cc and config_arch.cc (model/ only): the
// typed key reader, and the readers of the keys only some architectures have.
#pragma once

#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "xtuner/core/json.h"
#include "xtuner/core/status.h"
#include "xtuner/model/config.h"

namespace xt::config_internal {

using nlohmann::json;

// Reads a key with the given JSON type; absent or null leaves `out` unchanged unless required.
class Reader {
 public:
  Reader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  bool Contains(const char* key) const { return j_.contains(key); }  // null included
  // An error when the key is present but null (where transformers would read null as false).
  Status NotNull(const char* key) const {
    return Contains(key) && j_[key].is_null()
               ? Error(std::string("key \"") + key + "\" must be true or false, found null")
               : Status::OK();
  }

  Status Int(const char* key, int64_t* out, bool required) const {
    if (!has(key)) return Missing(key, required);
    const json& v = j_[key];
    // 4.0 is an integer. No key of a config needs more than 31 bits, and the bound keeps every
    // sum and product of two of them inside int64 (and 1e300 from an undefined conversion).
    constexpr double kMost = 2147483647.0;
    const bool whole = (v.is_number_integer() || v.is_number_float()) &&
                       std::fabs(v.get<double>()) <= kMost &&
                       v.get<double>() == std::trunc(v.get<double>());
    if (!whole) return Bad(key, "an integer of at most 2^31 - 1 in size", v);
    *out = int64_t(v.get<double>());
    return Status::OK();
  }
  Status Double(const char* key, double* out, bool required) const {
    if (!has(key)) return Missing(key, required);
    const json& v = j_[key];
    if (!v.is_number()) return Bad(key, "a number", v);
    *out = v.get<double>();
    return Status::OK();
  }
  Status Bool(const char* key, bool* out, bool required) const {
    if (!has(key)) return Missing(key, required);
    const json& v = j_[key];
    if (!v.is_boolean()) return Bad(key, "true or false", v);
    *out = v.get<bool>();
    return Status::OK();
  }
  Status Error(const std::string& msg) const { return Status::Error(source_ + ": " + msg); }

 private:
  Status Missing(const char* key, bool required) const {
    return required ? Error(std::string("missing required key \"") + key + "\"") : Status::OK();
  }
  Status Bad(const char* key, const char* want, const json& v) const {
    return Error(std::string("key \"") + key + "\" must be " + want + ", found " + DumpJson(v));
  }
  const json& j_;
  std::string source_;
};

// An error naming `name` unless v > 0.
Status Positive(const Reader& r, const char* name, int64_t v);

// config_arch.cc. Each reads its keys of `j` into `c`; errors name the key.
Status ReadQuantization(const json& j, const Reader& r, ModelConfig* c);  // FP8 blocks (DeepSeek)
Status ReadMla(const Reader& r, ModelConfig* c);                          // DeepSeek-V3 attention
Status ReadDeepseekMoe(const json& j, const Reader& r, ModelConfig* c);   // DeepSeek-V3 experts
json GptOssRopeDefaults(const json& j);  // GPT-OSS's YaRN defaults where the config has none
Status ReadGptOss(const json& j, const Reader& r, ModelConfig* c);

}  // namespace xt::config_internal
