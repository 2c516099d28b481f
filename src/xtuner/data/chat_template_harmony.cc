// harmony: GPT-OSS's message format.
//
// Source: the chat_template.jinja of openai/gpt-oss-20b and -120b, as copied in llama.cpp's
// models/templates/openai-gpt-oss-120b.jinja (tests/data/tokenizers/chat_templates/), with its
// kwargs (ChatTemplateOptions). What it renders:
//   - always a system message: "<|start|>system<|message|>" + model_identity + "\n" +
//     "Knowledge cutoff: 2024-06\n" + "Current date: " + date + "\n\n" + "Reasoning: " + effort +
//     "\n\n" + "# Valid channels: analysis, commentary, final. Channel must be included for every
//     message." (+ "\nCalls to these tools must go to the commentary channel: 'functions'." with
//     tools) + "<|end|>".
//   - a developer message when the first message is a system or developer message with content,
//     or there are tools: "<|start|>developer<|message|>" + ("# Instructions\n\n" + content +
//     "\n\n") + ("# Tools\n\n" + the tools as a TypeScript namespace) + "<|end|>". Later system
//     and developer messages are dropped.
//   - user: "<|start|>user<|message|>" + content + "<|end|>".
//   - assistant with a tool call: "<|start|>assistant" + (its content or thinking as
//     "<|channel|>analysis<|message|>" + text + "<|end|><|start|>assistant", unless a later
//     assistant message answers without tools) + " to=functions.NAME<|channel|>commentary json"
//     + "<|message|>" + tojson(arguments) + "<|call|>".
//   - the last message, from the assistant: "<|start|>assistant" + (its thinking as an analysis
//     message) + "<|channel|>final<|message|>" + content + "<|return|>".
//   - any other assistant message: "<|start|>assistant<|channel|>final<|message|>" + content +
//     "<|end|>" (its thinking is dropped, as the source drops every earlier turn's).
//   - tool: "<|start|>functions.NAME to=assistant<|channel|>commentary<|message|>" +
//     tojson(content) + "<|end|>", NAME the latest tool call's.
// Trained: everything an assistant message writes after its first "<|start|>assistant", the
// analysis, the next header and <|return|>, <|call|> or <|end|> included: GPT-OSS writes them
// itself once it is prompted with "<|start|>assistant".
// Refused, as the source refuses them: channel tags in content or thinking, both content and
// thinking beside a tool call, a tool message before any tool call, a tool without a
// "function" or a description. Refused where the source would drop trained text: more than one
// tool call in a message (it renders the first).
// Deliberate differences, all where the dataset reader (dataset_parse.cc) has already made the
// message uniform: arguments are rendered as the JSON they hold (the source's tojson of an
// arguments string writes it as a quoted string; absent or null arguments are {}); integers
// past 64 bits are read as doubles; "reasoning_content" is read as thinking, and an empty or
// null thinking is none; a null content is "" (the source fails on an assistant's and writes a
// tool's as null), and content given as text parts is their text; an empty tool_calls is none
// (the source fails on it); tools' JSON schemas must use strings where the source would print
// Python values (type lists, enums of other values are refused by name), and arrays and objects
// where it would iterate them; the `builtin_tools` kwarg and a call's `content_type` are not
// taken.
#include <optional>

#include "xtuner/core/json.h"
#include "xtuner/data/chat_template_internal.h"

namespace xt {

namespace {

using nlohmann::ordered_json;

const std::string kName = "harmony";

// Python truthiness of a JSON value (absent: false).
bool Truthy(const ordered_json* v) {
  if (!v || v->is_null()) return false;
  if (v->is_boolean()) return v->get<bool>();
  if (v->is_number()) return v->get<double>() != 0;
  if (v->is_string()) return !v->get_ref<const std::string&>().empty();
  return !v->empty();  // arrays, objects
}

// Jinja's `spec.key` on a JSON value: the member, or nullptr (undefined).
const ordered_json* FindMember(const ordered_json& spec, const char* key) {
  if (!spec.is_object()) return nullptr;
  auto it = spec.find(key);
  return it == spec.end() ? nullptr : &*it;
}

bool IsString(const ordered_json* v, const char* s) {
  return v && v->is_string() && v->get_ref<const std::string&>() == s;
}

size_t CodePoints(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// `value` where the source concatenates it to a string: it must be one.
Result<std::string> Text(const ordered_json* v, const std::string& where) {
  if (!v->is_string())
    return Status::Error(kName + " chat template: " + where + " must be a string, got " +
                         DumpJson(*v));
  return v->get<std::string>();
}

// Jinja's `join` of an array the source prints: strings as they are, integers in decimal.
Result<std::string> Join(const ordered_json& list, const std::string& sep,
                         const std::string& where) {
  std::string s;
  for (size_t i = 0; i < list.size(); ++i) {
    const ordered_json& v = list[i];
    if (!v.is_string() && !v.is_number_integer())
      return Status::Error(kName + " chat template: " + where + " holds " + DumpJson(v) +
                           ", which it cannot print (strings and integers only)");
    s += (i ? sep : "") + (v.is_string() ? v.get<std::string>() : DumpJson(v));
  }
  return s;
}

// Whether `name` is in the schema's "required" list.
Result<bool> Required(const ordered_json& spec, const std::string& name, const std::string& where) {
  const ordered_json* req = FindMember(spec, "required");
  if (!Truthy(req)) return false;
  if (!req->is_array())
    return Status::Error(kName + " chat template: " + where + ".required must be an array");
  for (const auto& r : *req)
    if (r.is_string() && r.get_ref<const std::string&>() == name) return true;
  return false;
}

// The schema's "properties" when the source iterates them: nullptr when there are none, an
// error when they are not an object.
Result<const ordered_json*> Properties(const ordered_json& spec, const std::string& where) {
  const ordered_json* props = FindMember(spec, "properties");
  if (!Truthy(props)) return nullptr;
  if (!props->is_object())
    return Status::Error(kName + " chat template: " + where + ".properties must be an object");
  return props;
}

// The source's render_typescript_type macro: a JSON schema as a TypeScript type. `where` names
// the schema in errors.
Result<std::string> TypeScript(const ordered_json& spec, const std::string& where) {
  const ordered_json* type = FindMember(spec, "type");
  const bool nullable = Truthy(FindMember(spec, "nullable"));
  if (IsString(type, "array")) {
    const ordered_json* items = FindMember(spec, "items");
    std::string t = "any[]";
    if (Truthy(items)) {
      const ordered_json* it = FindMember(*items, "type");
      if (IsString(it, "string")) {
        t = "string[]";
      } else if (IsString(it, "number") || IsString(it, "integer")) {
        t = "number[]";
      } else if (IsString(it, "boolean")) {
        t = "boolean[]";
      } else {
        XT_ASSIGN_OR_RETURN(std::string inner, TypeScript(*items, where + ".items"));
        t = inner == "object | object" || CodePoints(inner) > 50 ? "any[]" : inner + "[]";
      }
    }
    return nullable ? t + " | null" : t;
  }
  if (type && type->is_array() && !type->empty()) {  // ["string", "number"]
    if (type->size() == 1) return Join(*type, "", where + ".type");
    return Join(*type, " | ", where + ".type");
  }
  if (const ordered_json* one_of = FindMember(spec, "oneOf"); Truthy(one_of)) {
    if (!one_of->is_array())
      return Status::Error(kName + " chat template: " + where + ".oneOf must be an array");
    // The source means to print "any" for a union with objects, but its flag is set inside a
    // loop, where Jinja scopes it: every union is printed.
    std::string s;
    for (size_t k = 0; k < one_of->size(); ++k) {
      const ordered_json& v = (*one_of)[k];
      const std::string vw = where + ".oneOf[" + std::to_string(k) + "]";
      XT_ASSIGN_OR_RETURN(std::string t, TypeScript(v, vw));
      s += t;
      if (const ordered_json* d = FindMember(v, "description"); Truthy(d)) {
        XT_ASSIGN_OR_RETURN(std::string text, Text(d, vw + ".description"));
        s += "// " + text;
      }
      if (const ordered_json* d = FindMember(v, "default"))
        s += std::string(20, ' ') + "// default: " + PyJsonDumps(*d);
      if (k + 1 < one_of->size()) s += " | \n";
    }
    return s;
  }
  if (IsString(type, "string")) {
    if (const ordered_json* e = FindMember(spec, "enum"); Truthy(e)) {
      if (!e->is_array())
        return Status::Error(kName + " chat template: " + where + ".enum must be an array");
      XT_ASSIGN_OR_RETURN(std::string j, Join(*e, "\" | \"", where + ".enum"));
      return "\"" + j + "\"";
    }
    return std::string(nullable ? "string | null" : "string");
  }
  if (IsString(type, "number") || IsString(type, "integer")) return std::string("number");
  if (IsString(type, "boolean")) return std::string("boolean");
  if (IsString(type, "object")) {
    XT_ASSIGN_OR_RETURN(const ordered_json* props, Properties(spec, where));
    if (!props) return std::string("object");
    // A nested property's type follows a newline and the source's indentation.
    std::string s = "{\n";
    size_t k = 0;
    for (const auto& [name, prop] : props->items()) {
      XT_ASSIGN_OR_RETURN(std::string t, TypeScript(prop, where + ".properties." + name));
      XT_ASSIGN_OR_RETURN(bool required, Required(spec, name, where));
      s += name + (required ? "" : "?") + ": \n" + std::string(16, ' ') + t;
      if (++k < props->size()) s += ", ";
    }
    return s + "}";
  }
  return std::string("any");
}

// The source's render_tool_namespace("functions", tools).
Result<std::string> ToolNamespace(const ordered_json& tools) {
  std::string s = "## functions\n\nnamespace functions {\n\n";
  for (size_t i = 0; i < tools.size(); ++i) {
    const std::string where = "tools[" + std::to_string(i) + "]";
    const ordered_json* fn = FindMember(tools[i], "function");
    if (!fn || !fn->is_object())
      return Status::Error(kName + " chat template: " + where +
                           " has no \"function\" object, which the template reads");
    const ordered_json* desc = FindMember(*fn, "description");
    const ordered_json* name = FindMember(*fn, "name");
    if (!desc || !name)
      return Status::Error(kName + " chat template: " + where + ".function has no " +
                           (name ? "\"description\"" : "\"name\"") +
                           ", which the template renders");
    XT_ASSIGN_OR_RETURN(std::string d, Text(desc, where + ".function.description"));
    XT_ASSIGN_OR_RETURN(std::string n, Text(name, where + ".function.name"));
    s += "// " + d + "\ntype " + n + " = ";
    const ordered_json* params = FindMember(*fn, "parameters");
    const std::string params_where = where + ".function.parameters";
    const ordered_json* props = nullptr;
    if (Truthy(params) && params->is_object()) {
      XT_ASSIGN_OR_RETURN(props, Properties(*params, params_where));
    }
    if (!props) {
      s += "() => any;\n\n";
      continue;
    }
    s += "(_: {\n";
    for (const auto& [pname, spec] : props->items()) {
      const std::string pw = params_where + ".properties." + pname;
      if (const ordered_json* pd = FindMember(spec, "description"); Truthy(pd)) {
        XT_ASSIGN_OR_RETURN(std::string text, Text(pd, pw + ".description"));
        s += "// " + text + "\n";
      }
      XT_ASSIGN_OR_RETURN(std::string t, TypeScript(spec, pw));
      XT_ASSIGN_OR_RETURN(bool required, Required(*params, pname, params_where));
      s += pname + (required ? "" : "?") + ": " + t;
      if (const ordered_json* def = FindMember(spec, "default")) {
        if (Truthy(FindMember(spec, "enum"))) {
          XT_ASSIGN_OR_RETURN(std::string text, Text(def, pw + ".default (of an enum)"));
          s += ", // default: " + text;
        } else if (Truthy(FindMember(spec, "oneOf"))) {
          XT_ASSIGN_OR_RETURN(std::string text, Text(def, pw + ".default (of a oneOf)"));
          s += "// default: " + text;
        } else {
          s += ", // default: " + PyJsonDumps(*def);
        }
      }
      s += ",\n";
    }
    s += "}) => any;\n\n";
  }
  return s + "} // namespace functions";
}

Status RenderHarmony(const Conversation& conv, const std::vector<bool>& trained,
                     const ChatTemplateOptions& options, SegmentWriter* out) {
  const auto& ms = conv.messages;
  XT_ASSIGN_OR_RETURN(auto tools, ParseTools(kName, conv.tools_json));
  const bool has_tools = tools && !tools->empty();
  out->Prompt("<|start|>system<|message|>" + options.model_identity +
              "\nKnowledge cutoff: 2024-06\nCurrent date: " + options.current_date +
              "\n\nReasoning: " + options.reasoning_effort +
              "\n\n# Valid channels: analysis, commentary, final. Channel must be included for "
              "every message.");
  if (has_tools)
    out->Prompt("\nCalls to these tools must go to the commentary channel: 'functions'.");
  out->Prompt("<|end|>");

  const bool first_is_developer = ms[0].role == "system" || ms[0].role == "developer";
  const std::string developer = first_is_developer ? ms[0].content : "";
  if (!developer.empty() || has_tools) {
    out->Prompt("<|start|>developer<|message|>");
    if (!developer.empty()) out->Prompt("# Instructions\n\n" + developer + "\n\n");
    if (has_tools) {
      XT_ASSIGN_OR_RETURN(std::string ns, ToolNamespace(*tools));
      out->Prompt("# Tools\n\n" + ns);
    }
    out->Prompt("<|end|>");
  }

  std::optional<std::string> last_call;  // the name tool messages answer
  for (size_t i = first_is_developer ? 1 : 0; i < ms.size(); ++i) {
    const Message& m = ms[i];
    if (m.role == "user") {
      out->Prompt("<|start|>user<|message|>" + m.content + "<|end|>");
    } else if (m.role == "tool") {
      if (!last_call)
        return MessageError(kName, i, m,
                            "a tool result needs an earlier assistant message with a tool call");
      out->Prompt("<|start|>functions." + *last_call + " to=assistant<|channel|>commentary" +
                  "<|message|>" + PyJsonDumps(ordered_json(m.content)) + "<|end|>");
    } else if (m.role == "assistant") {
      for (const std::string* text : {&m.content, &m.thinking}) {
        if (text->find("<|channel|>analysis<|message|>") != std::string::npos ||
            text->find("<|channel|>final<|message|>") != std::string::npos)
          return MessageError(kName, i, m,
                              std::string("its ") + (text == &m.content ? "content" : "thinking") +
                                  " holds <|channel|> tags: give the analysis as thinking and "
                                  "the final answer as content");
      }
      const bool train = trained[i];
      out->Prompt("<|start|>assistant");
      if (!m.tool_calls.empty()) {
        if (m.tool_calls.size() > 1)
          return MessageError(kName, i, m,
                              "harmony renders one tool call per message (the template drops "
                              "the others): give each call its own assistant message, followed "
                              "by its result");
        if (!m.content.empty() && !m.thinking.empty())
          return MessageError(kName, i, m,
                              "beside a tool call, content and thinking are both the analysis: "
                              "give one of them");
        bool later_final = false;
        for (size_t j = i + 1; j < ms.size(); ++j)
          later_final = later_final || (ms[j].role == "assistant" && ms[j].tool_calls.empty());
        const std::string& analysis = m.content.empty() ? m.thinking : m.content;
        if (!analysis.empty() && !later_final)
          out->Add("<|channel|>analysis<|message|>" + analysis + "<|end|><|start|>assistant",
                   train);
        const ToolCall& call = m.tool_calls[0];
        Result<ordered_json> args = ParseOrderedJson(call.arguments_json);
        if (!args.ok())
          return MessageError(kName, i, m, "tool call arguments: " + args.status().message());
        out->Add(" to=functions." + call.name + "<|channel|>commentary json<|message|>" +
                     PyJsonDumps(*args) + "<|call|>",
                 train);
        last_call = call.name;
      } else if (i + 1 == ms.size()) {
        if (!m.thinking.empty())
          out->Add("<|channel|>analysis<|message|>" + m.thinking + "<|end|><|start|>assistant",
                   train);
        out->Add("<|channel|>final<|message|>" + m.content + "<|return|>", train);
      } else {
        out->Add("<|channel|>final<|message|>" + m.content + "<|end|>", train);
        last_call.reset();
      }
    }
    // Later system and developer messages: dropped, as the source drops them.
  }
  return Status::OK();
}

}  // namespace

const ChatTemplateSpec& HarmonySpec() {
  static const ChatTemplateSpec spec{
      kName,
      RenderHarmony,
      {"<|start|>", "<|message|>", "<|end|>", "<|channel|>"},
      {"<|return|>", "<|call|>"},
      {"<|start|>assistant<|channel|>final<|message|>", "future_final_message",
       "render_typescript_type", "Knowledge cutoff: 2024-06", "strftime_now(\"%Y-%m-%d\")",
       "\" to=assistant<|channel|>commentary<|message|>\" + message.content|tojson",
       "<|start|>assistant to=", "last_tool_call.name"},
      {},
      /*harmony=*/true,
  };
  return spec;
}

}  // namespace xt
