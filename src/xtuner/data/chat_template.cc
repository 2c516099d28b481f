// ChatTemplate: lookup by name, recognition of a tokenizer_config.json's template, and the
// render -> tokenize path shared by all templates.
#include "xtuner/data/chat_template.h"

#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "xtuner/core/file_util.h"
#include "xtuner/core/json.h"
#include "xtuner/data/chat_template_internal.h"

namespace xt {

namespace {

namespace fs = std::filesystem;

const std::vector<const ChatTemplateSpec*>& AllSpecs() {
  static const std::vector<const ChatTemplateSpec*> specs = {&ChatmlSpec(),     &Qwen3Spec(),
                                                             &Llama3Spec(),     &Llama31Spec(),
                                                             &DeepseekV3Spec(), &HarmonySpec()};
  return specs;
}

std::string NameList() {
  std::string s;
  for (const auto* spec : AllSpecs()) s += (s.empty() ? "" : ", ") + spec->name;
  return s;
}

// Collapses every run of whitespace to one space, so fingerprints ignore the template's layout.
std::string CollapseSpace(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool in_space = false;
  for (char c : s) {
    bool space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
    if (space) {
      if (!in_space) out.push_back(' ');
    } else {
      out.push_back(c);
    }
    in_space = space;
  }
  return out;
}

bool Matches(const ChatTemplateSpec& spec, const std::string& text) {
  for (const auto& m : spec.must) {
    if (text.find(m) == std::string::npos) return false;
  }
  for (const auto& m : spec.must_not) {
    if (text.find(m) != std::string::npos) return false;
  }
  return true;
}

Status MissingToken(const std::string& tmpl, const std::string& token, const Tokenizer& tok) {
  return Status::Error("tokenizer " + tok.source() + " has no token \"" + token + "\", which the " +
                       tmpl + " chat template needs");
}

bool IsDigits(std::string_view s) {
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return !s.empty();
}

// YYYY-MM-DD of a real day (the proleptic Gregorian calendar, years 1-9999).
bool IsIsoDate(const std::string& d) {
  if (d.size() != 10 || d[4] != '-' || d[7] != '-' || !IsDigits(d.substr(0, 4)) ||
      !IsDigits(d.substr(5, 2)) || !IsDigits(d.substr(8, 2)))
    return false;
  const int y = std::stoi(d.substr(0, 4)), m = std::stoi(d.substr(5, 2)),
            day = std::stoi(d.substr(8, 2));
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  const int days[] = {31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return y >= 1 && m >= 1 && m <= 12 && day >= 1 && day <= days[m - 1];
}

std::string TodayLocal() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
  return buf;
}

}  // namespace

Status ChatTemplateOptions::Check(const std::string& prefix) const {
  const std::string& e = reasoning_effort;
  if (!e.empty() && e != "low" && e != "medium" && e != "high")
    return Status::Error(prefix + "reasoning_effort \"" + e + "\" is not low, medium or high");
  if (!current_date.empty() && !IsIsoDate(current_date))
    return Status::Error(prefix + "current_date \"" + current_date +
                         "\" is not a date written YYYY-MM-DD");
  return Status::OK();
}

Status ChatTemplateOptions::CheckTakenBy(const std::string& template_name,
                                         const std::string& prefix) const {
  if (template_name == HarmonySpec().name) return Status::OK();
  for (const auto& [key, value] :
       {std::pair<const char*, const std::string&>{"reasoning_effort", reasoning_effort},
        {"model_identity", model_identity},
        {"current_date", current_date}}) {
    if (!value.empty())
      return Status::Error(prefix + key + " (\"" + value +
                           "\") is an option of the harmony chat template; the chat template "
                           "is " +
                           template_name);
  }
  return Status::OK();
}

namespace {

// The options with harmony's defaults filled in, or an error naming the bad one.
Result<ChatTemplateOptions> CompleteOptions(const ChatTemplateSpec& spec, ChatTemplateOptions o) {
  XT_RETURN_IF_ERROR(o.CheckTakenBy(spec.name, ""));
  if (!spec.harmony) return o;
  XT_RETURN_IF_ERROR(o.Check("harmony chat template: "));
  if (o.reasoning_effort.empty()) o.reasoning_effort = "medium";
  if (o.model_identity.empty())
    o.model_identity = "You are ChatGPT, a large language model trained by OpenAI.";
  if (o.current_date.empty()) o.current_date = TodayLocal();
  return o;
}

}  // namespace

Result<ChatTemplate> ChatTemplate::ByName(const std::string& name,
                                          const ChatTemplateOptions& options) {
  for (const auto* spec : AllSpecs()) {
    if (spec->name != name) continue;
    XT_ASSIGN_OR_RETURN(ChatTemplateOptions complete, CompleteOptions(*spec, options));
    return ChatTemplate(spec, std::move(complete));
  }
  return Status::Error("unknown chat template \"" + name +
                       "\"; the built-in ones are: " + NameList());
}

std::vector<std::string> ChatTemplate::Names() {
  std::vector<std::string> names;
  for (const auto* spec : AllSpecs()) names.push_back(spec->name);
  return names;
}

Result<std::string> ChatTemplate::DetectNameFromJinja(std::string_view jinja,
                                                      const std::string& source) {
  const std::string text = CollapseSpace(jinja);
  for (const auto* spec : AllSpecs()) {
    if (Matches(*spec, text)) return spec->name;
  }
  if (text.find("<|channel|>") != std::string::npos)
    return Status::Error(source +
                         ": the chat template is a harmony format (<|start|>, <|channel|>, "
                         "<|message|>) that renders differently from openai/gpt-oss's, which "
                         "the built-in \"harmony\" template reproduces; name it only if the "
                         "model was trained with GPT-OSS's own template");
  return Status::Error(source + ": the chat template is not one of the built-in templates (" +
                       NameList() +
                       "); they render differently, so name the template only if the model "
                       "was trained with one of them");
}

Result<std::string> ChatTemplate::DetectName(const std::string& tokenizer_config_path) {
  fs::path path = tokenizer_config_path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) path /= "tokenizer_config.json";
  XT_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path.string()));
  Result<nlohmann::json> parsed = ParseJson(text);
  if (!parsed.ok()) return parsed.status().With(path.string());
  const nlohmann::json& config = *parsed;
  if (!config.is_object()) return Status::Error(path.string() + ": not a JSON object");
  const std::string source = path.string();
  if (config.contains("chat_template") && !config["chat_template"].is_null()) {
    const auto& t = config["chat_template"];
    if (t.is_string()) return DetectNameFromJinja(t.get<std::string>(), source);
    if (t.is_array()) {
      // [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
      for (const auto& entry : t) {
        if (entry.is_object() && entry.value("name", "") == "default" &&
            entry.contains("template") && entry["template"].is_string()) {
          return DetectNameFromJinja(entry["template"].get<std::string>(),
                                     source + " (chat_template \"default\")");
        }
      }
      return Status::Error(source + ": chat_template is a list without a \"default\" entry");
    }
    return Status::Error(source + ": chat_template must be a string or a list of templates");
  }
  const fs::path jinja = path.parent_path() / "chat_template.jinja";
  if (fs::exists(jinja, ec)) {
    XT_ASSIGN_OR_RETURN(std::string t, ReadFileToString(jinja.string()));
    return DetectNameFromJinja(t, jinja.string());
  }
  return Status::Error(source +
                       ": no chat_template (nor a chat_template.jinja beside it); name "
                       "one of the built-in templates: " +
                       NameList());
}

const std::string& ChatTemplate::name() const { return spec_->name; }

Result<std::vector<Segment>> ChatTemplate::Render(const Conversation& conversation,
                                                  bool train_last_turn_only) const {
  const auto& ms = conversation.messages;
  if (ms.empty()) return Status::Error(spec_->name + " chat template: no messages");
  size_t last_assistant = ms.size();
  for (size_t i = 0; i < ms.size(); ++i) {
    const Message& m = ms[i];
    if (m.role == "assistant") {
      last_assistant = i;
    } else if (m.role == "developer" && !spec_->harmony) {
      return MessageError(spec_->name, i, m,
                          "the developer role is harmony's (GPT-OSS); the " + spec_->name +
                              " template has none: make it a system message");
    } else if (m.role == "system" || m.role == "user" || m.role == "tool" ||
               m.role == "developer") {
      if (!m.thinking.empty() || !m.tool_calls.empty()) {
        return MessageError(spec_->name, i, m,
                            "only assistant messages have thinking or tool calls");
      }
    } else {
      return MessageError(spec_->name, i, m,
                          "unknown role (expected system, developer, user, assistant or tool)");
    }
  }
  std::vector<bool> trained(ms.size(), false);
  for (size_t i = 0; i < ms.size(); ++i) {
    trained[i] = ms[i].role == "assistant" && (!train_last_turn_only || i == last_assistant);
  }
  SegmentWriter out;
  XT_RETURN_IF_ERROR(spec_->render(conversation, trained, options_, &out));
  return out.Take();
}

Status ChatTemplate::CheckTokenizer(const Tokenizer& tokenizer) const {
  for (const auto& token : spec_->required_tokens) {
    if (!tokenizer.TokenToId(token)) return MissingToken(spec_->name, token, tokenizer);
  }
  return Status::OK();
}

Result<Sample> ChatTemplate::Encode(const Conversation& conversation, const Tokenizer& tokenizer,
                                    bool train_last_turn_only) const {
  XT_RETURN_IF_ERROR(CheckTokenizer(tokenizer));
  XT_ASSIGN_OR_RETURN(std::vector<Segment> segments, Render(conversation, train_last_turn_only));
  for (const auto& token : spec_->optional_tokens) {
    bool used = false;
    for (const auto& s : segments) used = used || s.text.find(token) != std::string::npos;
    if (used && !tokenizer.TokenToId(token)) return MissingToken(spec_->name, token, tokenizer);
  }
  Sample sample;
  for (const auto& s : segments) {
    XT_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(s.text, false));
    sample.input_ids.insert(sample.input_ids.end(), ids.begin(), ids.end());
    if (s.trainable) {
      sample.labels.insert(sample.labels.end(), ids.begin(), ids.end());
    } else {
      sample.labels.insert(sample.labels.end(), ids.size(), -100);
    }
  }
  return sample;
}

}  // namespace xt
