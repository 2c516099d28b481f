// Decoders of tokenizer.json: ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace,
// BPEDecoder and Sequence of them. As HF, each one maps the list of token strings to a new list
// (decode_chain) and the text is their concatenation.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "xtuner/core/status.h"

namespace xt::tok {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Rewrites the list of tokens (HF's decode_chain). Thread-safe.
  virtual void DecodeChain(std::vector<std::string>* tokens) const = 0;
};

// The decoder that the JSON value `j` describes (null gives nullptr).
Result<std::unique_ptr<Decoder>> ParseDecoder(const nlohmann::json& j);

}  // namespace xt::tok
