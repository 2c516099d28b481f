// deepseek-v3: DeepSeek-V3's format with its full-width special tokens.
//
// Source: the `chat_template` of deepseek-ai/DeepSeek-V3-0324 (the one with `is_last_user`),
// in tests/data/tokenizers/chat_templates/deepseek-ai-DeepSeek-V3-0324.jinja. What it renders:
//   - "<｜begin▁of▁sentence｜>" + every system message's content joined by "\n\n", up front;
//   - user: "<｜User｜>" + content + "<｜Assistant｜>" (the assistant marker ends the user turn);
//   - assistant: content + "<｜end▁of▁sentence｜>"; after tool results it is preceded by
//     "<｜tool▁outputs▁end｜>";
//   - assistant with tool calls: ["<｜tool▁outputs▁end｜>" after tool results] + content +
//     "<｜tool▁calls▁begin｜>" + per call
//     "<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n"
//     + ARGS + "\n```<｜tool▁call▁end｜>" (calls after the first are preceded by "\n") +
//     "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>";
//   - tool: "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>" + content + "<｜tool▁output▁end｜>"
//     for the first result after a tool-calling turn, "\n<｜tool▁output▁begin｜>" + content +
//     "<｜tool▁output▁end｜>" for the next ones; "<｜tool▁outputs▁end｜>" closes them before the
//     next assistant turn or at the very end.
// Trainable: the assistant's content, tool calls and <｜end▁of▁sentence｜>; the
// "<｜tool▁outputs▁end｜>" that closes the results belongs to the prompt.
// Deliberate differences: `thinking` is an error (the V3 template has no place for it); tool
// definitions are dropped, as the template drops them; arguments are pasted as given (the
// template concatenates a string; the dataset reader turns an object into its JSON text).
#include "xtuner/data/chat_template_internal.h"

namespace xt {

namespace {

const char kBeginOfSentence[] = "<｜begin▁of▁sentence｜>";
const char kEos[] = "<｜end▁of▁sentence｜>";
const char kUser[] = "<｜User｜>";
const char kAssistant[] = "<｜Assistant｜>";
const char kOutputsEnd[] = "<｜tool▁outputs▁end｜>";

std::string Call(const ToolCall& c) {
  return "<｜tool▁call▁begin｜>function<｜tool▁sep｜>" + c.name + "\n```json\n" + c.arguments_json +
         "\n```<｜tool▁call▁end｜>";
}

Status RenderDeepseekV3(const Conversation& conv, const std::vector<bool>& trained,
                        const ChatTemplateOptions& /*options*/, SegmentWriter* out) {
  const std::string kName = "deepseek-v3";
  const auto& ms = conv.messages;
  std::string system;
  bool first_system = true;
  for (const Message& m : ms) {
    if (m.role != "system") continue;
    if (!first_system) system += "\n\n";
    system += m.content;
    first_system = false;
  }
  out->Prompt(kBeginOfSentence);
  out->Prompt(system);

  bool is_tool = false, is_output_first = true;
  for (size_t i = 0; i < ms.size(); ++i) {
    const Message& m = ms[i];
    const bool train = trained[i];
    if (m.role == "user") {
      is_tool = false;
      out->Prompt(kUser);
      out->Prompt(m.content);
      out->Prompt(kAssistant);
    } else if (m.role == "assistant") {
      if (!m.thinking.empty()) {
        return MessageError(kName, i, m, "the DeepSeek-V3 template has no place for thinking");
      }
      if (is_tool) out->Prompt(kOutputsEnd);
      is_tool = false;
      out->Add(m.content, train);
      if (!m.tool_calls.empty()) {
        is_output_first = true;
        out->Add("<｜tool▁calls▁begin｜>", train);
        for (size_t k = 0; k < m.tool_calls.size(); ++k) {
          if (k > 0) out->Add("\n", train);
          out->Add(Call(m.tool_calls[k]), train);
        }
        out->Add("<｜tool▁calls▁end｜>", train);
      }
      out->Add(kEos, train);
    } else if (m.role == "tool") {
      is_tool = true;
      out->Prompt(is_output_first ? "<｜tool▁outputs▁begin｜>" : "\n");
      out->Prompt("<｜tool▁output▁begin｜>");
      out->Prompt(m.content);
      out->Prompt("<｜tool▁output▁end｜>");
      is_output_first = false;
    }
  }
  if (is_tool) out->Prompt(kOutputsEnd);
  return Status::OK();
}

}  // namespace

const ChatTemplateSpec& DeepseekV3Spec() {
  static const ChatTemplateSpec spec{
      "deepseek-v3",
      RenderDeepseekV3,
      {kBeginOfSentence, kEos, kUser, kAssistant},
      {"<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
       "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>",
       "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"},
      {"<｜User｜>", "<｜Assistant｜>", "<｜tool▁outputs▁end｜>", "is_last_user", "is_output_first",
       "'<｜User｜>' + message['content'] + '<｜Assistant｜>'"},
      {"</think>", "<think>", "thinking"},
  };
  return spec;
}

}  // namespace xt
