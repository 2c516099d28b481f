// One JSONL line's JSON -> a Conversation (OpenAI chat format) or a pre-training text, with a
// reason and a message for every way a line can be wrong.
#include <nlohmann/json.hpp>

#include "xtuner/core/json.h"
#include "xtuner/data/chat_template_internal.h"
#include "xtuner/data/dataset.h"

namespace xt {

namespace {

using nlohmann::ordered_json;

const char* TypeName(const ordered_json& v) {
  switch (v.type()) {
    case ordered_json::value_t::null:
      return "null";
    case ordered_json::value_t::boolean:
      return "a boolean";
    case ordered_json::value_t::string:
      return "a string";
    case ordered_json::value_t::array:
      return "an array";
    case ordered_json::value_t::object:
      return "an object";
    default:
      return "a number";
  }
}

bool Fail(SampleError* e, BadSample reason, std::string message) {
  e->reason = reason;
  e->message = std::move(message);
  return false;
}

bool WrongType(SampleError* e, const std::string& where, const char* want,
               const ordered_json& got) {
  return Fail(e, BadSample::kWrongType, where + " must be " + want + ", got " + TypeName(got));
}

// A key that is present and not null.
const ordered_json* Get(const ordered_json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

// content: a string, null/absent (""), or a list of {"type": "text", "text": ...} parts.
bool ReadContent(const ordered_json& m, const std::string& where, std::string* out,
                 SampleError* e) {
  const ordered_json* c = Get(m, "content");
  if (!c) return true;
  if (c->is_string()) {
    *out = c->get<std::string>();
    return true;
  }
  if (!c->is_array()) return WrongType(e, where, "a string, null or a list of text parts", *c);
  for (size_t k = 0; k < c->size(); ++k) {
    const ordered_json& part = (*c)[k];
    const std::string pw = where + "[" + std::to_string(k) + "]";
    const ordered_json* type = part.is_object() ? Get(part, "type") : nullptr;
    const ordered_json* text = part.is_object() ? Get(part, "text") : nullptr;
    if (!type || !type->is_string() || type->get<std::string>() != "text" || !text ||
        !text->is_string()) {
      return Fail(e, BadSample::kWrongType,
                  pw + " must be a text part {\"type\": \"text\", \"text\": \"...\"}, got " +
                      DumpJson(part));
    }
    out->append(text->get<std::string>());
  }
  return true;
}

bool ReadToolCall(const ordered_json& tc, const std::string& where, ToolCall* out, SampleError* e) {
  if (!tc.is_object()) return WrongType(e, where, "an object", tc);
  if (const ordered_json* type = Get(tc, "type")) {
    if (!type->is_string() || type->get<std::string>() != "function") {
      return Fail(e, BadSample::kWrongType, where + ".type must be \"function\"");
    }
  }
  const ordered_json* fn = Get(tc, "function");
  if (!fn) return Fail(e, BadSample::kWrongType, where + " has no \"function\"");
  if (!fn->is_object()) return WrongType(e, where + ".function", "an object", *fn);
  const ordered_json* name = Get(*fn, "name");
  if (!name || !name->is_string() || name->get<std::string>().empty()) {
    return Fail(e, BadSample::kWrongType, where + ".function.name must be a non-empty string");
  }
  out->name = name->get<std::string>();
  const ordered_json* args = Get(*fn, "arguments");
  if (!args) {
    out->arguments_json = "{}";
  } else if (args->is_string()) {
    out->arguments_json = args->get<std::string>();
    if (Result<ordered_json> parsed = ParseOrderedJson(out->arguments_json, kMaxSampleDepth);
        !parsed.ok()) {
      return Fail(e, BadSample::kWrongType,
                  where + ".function.arguments is a string that is " + parsed.status().message());
    }
  } else if (args->is_object()) {
    out->arguments_json = PyJsonDumps(*args);
  } else {
    return WrongType(e, where + ".function.arguments", "a JSON string or an object", *args);
  }
  return true;
}

bool ReadMessage(const ordered_json& m, const std::string& where, Message* out, SampleError* e) {
  if (!m.is_object()) return WrongType(e, where, "an object", m);
  const ordered_json* role = Get(m, "role");
  if (!role) return Fail(e, BadSample::kMissingField, where + " has no \"role\"");
  if (!role->is_string()) return WrongType(e, where + ".role", "a string", *role);
  out->role = role->get<std::string>();
  if (out->role != "system" && out->role != "user" && out->role != "assistant" &&
      out->role != "tool" && out->role != "developer") {
    return Fail(e, BadSample::kUnknownRole,
                where + ".role \"" + out->role +
                    "\" is not one of \"system\", \"developer\", \"user\", \"assistant\", "
                    "\"tool\"");
  }
  if (!ReadContent(m, where + ".content", &out->content, e)) return false;
  if (const ordered_json* name = Get(m, "name")) {
    if (!name->is_string()) return WrongType(e, where + ".name", "a string", *name);
    out->name = name->get<std::string>();
  }
  const bool assistant = out->role == "assistant";
  for (const char* key : {"thinking", "reasoning_content"}) {
    const ordered_json* t = Get(m, key);
    if (!t) continue;
    const std::string kw = where + "." + key;
    if (!t->is_string()) return WrongType(e, kw, "a string", *t);
    const std::string value = t->get<std::string>();
    if (value.empty()) continue;
    if (!assistant) return Fail(e, BadSample::kWrongType, kw + ": only assistant messages think");
    if (!out->thinking.empty() && out->thinking != value) {
      return Fail(e, BadSample::kWrongType,
                  where + " has both \"thinking\" and \"reasoning_content\", and they differ");
    }
    out->thinking = value;
  }
  if (const ordered_json* calls = Get(m, "tool_calls")) {
    if (!calls->is_array()) return WrongType(e, where + ".tool_calls", "an array", *calls);
    if (!calls->empty() && !assistant) {
      return Fail(e, BadSample::kWrongType,
                  where + ".tool_calls: only assistant messages call tools");
    }
    out->tool_calls.resize(calls->size());
    for (size_t k = 0; k < calls->size(); ++k) {
      if (!ReadToolCall((*calls)[k], where + ".tool_calls[" + std::to_string(k) + "]",
                        &out->tool_calls[k], e)) {
        return false;
      }
    }
  }
  return true;
}

}  // namespace

bool ParseChatSample(const ordered_json& j, Conversation* out, SampleError* e) {
  *out = Conversation();
  const ordered_json* messages = Get(j, "messages");
  if (!messages) return Fail(e, BadSample::kMissingField, "no \"messages\"");
  if (!messages->is_array()) return WrongType(e, "\"messages\"", "an array", *messages);
  out->messages.resize(messages->size());
  bool has_assistant = false;
  for (size_t i = 0; i < messages->size(); ++i) {
    if (!ReadMessage((*messages)[i], "messages[" + std::to_string(i) + "]", &out->messages[i], e)) {
      return false;
    }
    has_assistant = has_assistant || out->messages[i].role == "assistant";
  }
  if (const ordered_json* tools = Get(j, "tools")) {
    if (!tools->is_array()) return WrongType(e, "\"tools\"", "an array", *tools);
    out->tools_json = DumpJson(*tools);
  }
  if (!has_assistant) {
    return Fail(e, BadSample::kNoAssistant,
                messages->empty() ? "\"messages\" is empty" : "no assistant message to train on");
  }
  return true;
}

bool ParseTextSample(const ordered_json& j, std::string* out, SampleError* e) {
  const char* key = j.contains("text") ? "text" : j.contains("content") ? "content" : nullptr;
  if (!key) return Fail(e, BadSample::kMissingField, "no \"text\" (or \"content\")");
  const ordered_json& v = j[key];
  if (!v.is_string()) return WrongType(e, std::string("\"") + key + "\"", "a string", v);
  *out = v.get<std::string>();
  if (out->empty()) return Fail(e, BadSample::kEmptyText, std::string("\"") + key + "\" is empty");
  return true;
}

}  // namespace xt
