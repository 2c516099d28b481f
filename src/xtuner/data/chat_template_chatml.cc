// chatml: plain ChatML.
//
// Source: the ChatML template of transformers' chat-templating documentation (also the template
// of many ChatML fine-tunes):
//   {% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']
//   + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}...{% endif %}
// Every message, whatever its role ("tool" included), is "<|im_start|>ROLE\nCONTENT<|im_end|>\n".
// Deliberate differences, where the plain template would drop something:
//   - tool calls are appended to the assistant content in the Qwen / Hermes form
//     ("<tool_call>\n{"name": .., "arguments": ..}\n</tool_call>", as qwen3 renders them);
//   - tools (function definitions) go into the system turn as Qwen2.5 and Qwen3 put them: the
//     first system message + "\n\n" + the "# Tools" block, or the block alone.
//   - a `thinking` is an error (ChatML has no place for it; use qwen3).
#include "xtuner/data/chat_template_internal.h"

namespace xt {

namespace {

Status RenderChatml(const Conversation& conv, const std::vector<bool>& trained,
                    const ChatTemplateOptions& /*options*/, SegmentWriter* out) {
  const std::string kName = "chatml";
  const auto& ms = conv.messages;
  XT_ASSIGN_OR_RETURN(auto tools, ParseTools(kName, conv.tools_json));
  size_t start = 0;
  if (tools && !tools->empty()) {
    out->Prompt("<|im_start|>system\n");
    if (ms[0].role == "system") {
      out->Prompt(ms[0].content + "\n\n");
      start = 1;
    }
    out->Prompt(QwenToolsBlock(*tools) + "<|im_end|>\n");
  }
  for (size_t i = start; i < ms.size(); ++i) {
    const Message& m = ms[i];
    if (!m.thinking.empty()) {
      return MessageError(kName, i, m, "ChatML has no place for thinking (use qwen3)");
    }
    out->Prompt("<|im_start|>" + m.role + "\n");
    if (m.role != "assistant") {
      out->Prompt(m.content + "<|im_end|>\n");
      continue;
    }
    const bool train = trained[i];
    out->Add(m.content, train);
    for (size_t k = 0; k < m.tool_calls.size(); ++k) {
      if (k > 0 || !m.content.empty()) out->Add("\n", train);
      out->Add(QwenToolCall(m.tool_calls[k]), train);
    }
    out->Add("<|im_end|>", train);
    out->Prompt("\n");
  }
  return Status::OK();
}

}  // namespace

const ChatTemplateSpec& ChatmlSpec() {
  static const ChatTemplateSpec spec{
      "chatml",
      RenderChatml,
      {"<|im_start|>", "<|im_end|>"},
      {"<tool_call>", "</tool_call>"},
      {"<|im_start|>", "<|im_end|>", "role", "content"},
      {"tool", "think", "system", "You are", "image", "vision", "<|im_sep|>"},
  };
  return spec;
}

}  // namespace xt
