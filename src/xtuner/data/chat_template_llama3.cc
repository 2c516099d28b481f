// llama3 and llama3.1: the Llama 3 header format,
//   <|begin_of_text|><|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>...
//
// llama3. Source: the `chat_template` of meta-llama/Meta-Llama-3-8B-Instruct (Llama 3.0), as
// copied in llama-cpp-python's llama_chat_format.py (LLAMA3_INSTRUCT_CHAT_TEMPLATE):
//   BOS once, then per message "<|start_header_id|>" + role + "<|end_header_id|>\n\n" +
//   (content | trim) + "<|eot_id|>", whatever the role.
// Deliberate differences: tool calls and `thinking` are errors (Llama 3.0 has no format for them
// and would drop them from the trained text; use llama3.1 for tools). Tool definitions are
// dropped, as the template drops them.
//
// llama3.1. Source: the `chat_template` of meta-llama/Llama-3.1-8B-Instruct (identical in
// Llama-3.3-70B-Instruct), as copied in llama.cpp's models/templates. Defaults as transformers
// calls it: no builtin_tools, tools_in_user_message = true, date_string "26 Jul 2024":
//   - BOS + a system turn that always exists: ["Environment: ipython\n" with tools] +
//     "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" + (first system
//     message | trim) + "<|eot_id|>";
//   - with tools, the first remaining message becomes a user turn that lists them (each
//     json.dumps(tool, indent=4) + "\n\n") before its trimmed content;
//   - other messages as in llama3; an assistant tool call is the whole turn:
//     {"name": "NAME", "parameters": ARGS} (ARGS = tojson of the arguments), one call only;
//   - tool results: "<|start_header_id|>ipython<|end_header_id|>\n\n" + (content | tojson) +
//     "<|eot_id|>". The template tests `content is iterable`, which a string is in Jinja, so a
//     string result is rendered as a quoted JSON string; we render exactly that.
// Deliberate differences: content beside a tool call is an error (the template drops it);
// `thinking` is an error; the first message after the system one must be a user message when
// there are tools; tool-call arguments given as a string are parsed and re-serialised like an
// object (transformers would quote the string). Llama-3.2's template, which prints today's date
// when transformers provides strftime_now, is recognised as llama3.1 with the fixed date.
#include "xtuner/core/json.h"
#include "xtuner/data/chat_template_internal.h"

namespace xt {

namespace {

const char kBeginOfText[] = "<|begin_of_text|>";
const char kEot[] = "<|eot_id|>";

std::string Header(const std::string& role) {
  return "<|start_header_id|>" + role + "<|end_header_id|>\n\n";
}

// A plain turn: header, then the trimmed content and <|eot_id|> (trainable when trained).
void PlainTurn(const Message& m, bool trained, SegmentWriter* out) {
  out->Prompt(Header(m.role));
  out->Add(PyStrip(m.content), trained);
  out->Add(kEot, trained);
}

Status RenderLlama3(const Conversation& conv, const std::vector<bool>& trained,
                    const ChatTemplateOptions& /*options*/, SegmentWriter* out) {
  const std::string kName = "llama3";
  out->Prompt(kBeginOfText);
  for (size_t i = 0; i < conv.messages.size(); ++i) {
    const Message& m = conv.messages[i];
    if (!m.thinking.empty()) {
      return MessageError(kName, i, m, "Llama 3 has no place for thinking");
    }
    if (!m.tool_calls.empty()) {
      return MessageError(kName, i, m,
                          "the Llama 3.0 template has no tool-call format (use llama3.1)");
    }
    PlainTurn(m, trained[i], out);
  }
  return Status::OK();
}

Status RenderLlama31(const Conversation& conv, const std::vector<bool>& trained,
                     const ChatTemplateOptions& /*options*/, SegmentWriter* out) {
  const std::string kName = "llama3.1";
  const auto& ms = conv.messages;
  XT_ASSIGN_OR_RETURN(auto tools, ParseTools(kName, conv.tools_json));
  size_t i = 0;
  std::string system_message;
  if (ms[0].role == "system") {
    system_message = std::string(PyStrip(ms[0].content));
    i = 1;
  }
  out->Prompt(std::string(kBeginOfText) + Header("system"));
  if (tools) out->Prompt("Environment: ipython\n");
  out->Prompt("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n");
  out->Prompt(system_message + kEot);

  if (tools) {
    if (i == ms.size()) {
      return Status::Error(kName + " chat template: tools need a first user message to go in");
    }
    if (ms[i].role != "user") {
      return MessageError(kName, i, ms[i],
                          "with tools, the first message after the system one must be a user "
                          "message (the template puts the tool list in it)");
    }
    std::string s = Header("user");
    s += "Given the following functions, please respond with a JSON for a function call ";
    s += "with its proper arguments that best answers the given prompt.\n\n";
    s += "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument "
         "name and its value}.";
    s += "Do not use variables.\n\n";
    for (const auto& tool : *tools) s += PyJsonDumps(tool, 4) + "\n\n";
    s += std::string(PyStrip(ms[i].content)) + kEot;
    out->Prompt(s);
    ++i;
  }

  for (; i < ms.size(); ++i) {
    const Message& m = ms[i];
    if (!m.thinking.empty()) {
      return MessageError(kName, i, m, "Llama 3.1 has no place for thinking");
    }
    if (m.role == "tool") {
      nlohmann::ordered_json content = m.content;
      out->Prompt(Header("ipython") + PyJsonDumps(content) + kEot);
    } else if (!m.tool_calls.empty()) {
      if (m.tool_calls.size() != 1) {
        return MessageError(kName, i, m,
                            std::string("Llama 3.1 supports a single tool call per message, got ") +
                                std::to_string(m.tool_calls.size()));
      }
      if (!PyStrip(m.content).empty()) {
        return MessageError(kName, i, m,
                            "Llama 3.1 renders a tool call as the whole turn: its content would "
                            "be dropped");
      }
      const ToolCall& call = m.tool_calls[0];
      Result<nlohmann::ordered_json> args = ParseOrderedJson(call.arguments_json);
      if (!args.ok())
        return args.status().With(kName + " chat template: message " + std::to_string(i) +
                                  ": tool call arguments");
      out->Prompt(Header("assistant"));
      out->Add(
          "{\"name\": \"" + call.name + "\", \"parameters\": " + PyJsonDumps(*args) + "}" + kEot,
          trained[i]);
    } else {
      PlainTurn(m, trained[i], out);
    }
  }
  return Status::OK();
}

}  // namespace

const ChatTemplateSpec& Llama3Spec() {
  static const ChatTemplateSpec spec{
      "llama3",
      RenderLlama3,
      {kBeginOfText, "<|start_header_id|>", "<|end_header_id|>", kEot},
      {},
      {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "bos_token",
       "message['content'] | trim"},
      {"Cutting Knowledge", "tool", "system", "date", "<|image|>"},
  };
  return spec;
}

const ChatTemplateSpec& Llama31Spec() {
  static const ChatTemplateSpec spec{
      "llama3.1",
      RenderLlama31,
      {kBeginOfText, "<|start_header_id|>", "<|end_header_id|>", kEot},
      {},
      {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "bos_token",
       "Cutting Knowledge Date: December 2023", "26 Jul 2024", "tools_in_user_message",
       "\"parameters\": ", "ipython", "message.content is mapping or message.content is iterable"},
      {"<|image|>"},
  };
  return spec;
}

}  // namespace xt
