#include "xtuner/data/tokenizer_postprocessor.h"

#include <nlohmann/json.hpp>

#include "xtuner/core/json.h"
#include "xtuner/data/tokenizer_json.h"

namespace xt::tok {

namespace {

constexpr const char* kSupportedPostProcessors =
    "TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence";

// The id of a [token, id] pair ("cls", "sep" of Bert/RobertaProcessing).
Result<int32_t> PairId(const nlohmann::json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer()) {
    return Status::Error(where + ": \"" + key + "\" must be [token, id]");
  }
  return (*it)[1].get<int32_t>();
}

Status ParseTemplate(const nlohmann::json& j, PostProcessor* p, const std::string& where) {
  auto single = j.find("single");
  if (single == j.end() || !single->is_array())
    return Status::Error(where + ": missing \"single\"");
  const auto& specials = j.value("special_tokens", nlohmann::json::object());
  bool seen_sequence = false;
  for (const auto& piece : *single) {
    if (piece.contains("Sequence")) {
      const std::string id = piece["Sequence"].value("id", "A");
      if (id != "A" || seen_sequence) {
        return Status::Error(where + ": the single template must hold sequence A once");
      }
      seen_sequence = true;
    } else if (piece.contains("SpecialToken")) {
      const auto& tok = piece["SpecialToken"];
      const std::string name = tok.value("id", "");
      auto sp = specials.find(name);
      if (sp == specials.end() || !sp->contains("ids") || !(*sp)["ids"].is_array()) {
        return Status::Error(where + ": special token \"" + name +
                             "\" is not in \"special_tokens\"");
      }
      for (const auto& id : (*sp)["ids"]) {
        if (!id.is_number_integer()) return Status::Error(where + ": bad ids of \"" + name + "\"");
        (seen_sequence ? p->suffix : p->prefix).push_back(id.get<int32_t>());
      }
    } else {
      return Status::Error(where + ": unknown template piece " + DumpJson(piece).substr(0, 200));
    }
  }
  if (!seen_sequence) return Status::Error(where + ": the single template has no sequence A");
  return Status::OK();
}

}  // namespace

Result<PostProcessor> PostProcessor::Parse(const nlohmann::json& j) {
  PostProcessor p;
  if (j.is_null()) return p;
  if (!j.is_object()) return NotImplemented("post_processor", j, kSupportedPostProcessors);
  const std::string type = TypeOf(j);
  const std::string where = "post_processor " + type;
  if (type == "ByteLevel") return p;
  if (type == "TemplateProcessing") {
    XT_RETURN_IF_ERROR(ParseTemplate(j, &p, where));
    return p;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    XT_ASSIGN_OR_RETURN(int32_t cls, PairId(j, "cls", where));
    XT_ASSIGN_OR_RETURN(int32_t sep, PairId(j, "sep", where));
    p.prefix = {cls};
    p.suffix = {sep};
    return p;
  }
  if (type == "Sequence") {
    auto it = j.find("processors");
    if (it == j.end() || !it->is_array()) return Status::Error(where + ": missing \"processors\"");
    for (const auto& sub : *it) {
      XT_ASSIGN_OR_RETURN(PostProcessor q, Parse(sub));
      // Each processor wraps what the previous ones produced.
      q.prefix.insert(q.prefix.end(), p.prefix.begin(), p.prefix.end());
      q.suffix.insert(q.suffix.begin(), p.suffix.begin(), p.suffix.end());
      p = std::move(q);
    }
    return p;
  }
  return NotImplemented("post_processor", j, kSupportedPostProcessors);
}

}  // namespace xt::tok
