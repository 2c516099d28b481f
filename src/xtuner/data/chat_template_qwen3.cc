// qwen3: ChatML with Qwen3's thinking and tool calling.
//
// Source: the `chat_template` of Qwen/Qwen3-0.6B (shared by the Qwen3 hybrid-thinking models,
// Qwen3-30B-A3B and Qwen3-235B-A22B included), as copied in llama.cpp's
// models/templates/Qwen-Qwen3-0.6B.jinja (tests/data/tokenizers/chat_templates/). What it renders:
//   - system: with tools, "<|im_start|>system\n" + (the first system message + "\n\n" if any) +
//     the "# Tools" block (each tool as json.dumps) + "<|im_end|>\n"; without, the first system
//     message as a ChatML turn. Later system messages are ordinary turns.
//   - user: "<|im_start|>user\n" + content + "<|im_end|>\n".
//   - assistant: reasoning = `reasoning_content` (our `thinking`), or else the text before
//     "</think>" in the content (the content keeps what follows). Turns after the last real user
//     query (a user message that is not just a <tool_response>) render
//     "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n") when they are
//     the last message or have reasoning; every other turn renders the content alone, so the
//     reasoning of turns before the last query is dropped. Tool calls follow as
//     "<tool_call>\n{"name": "..", "arguments": ..}\n</tool_call>", newline-separated (and after
//     a newline when there is content); then "<|im_end|>\n".
//   - tool: consecutive tool messages share one user turn: "<|im_start|>user" +
//     "\n<tool_response>\n" + content + "\n</tool_response>" per message + "<|im_end|>\n".
// Deliberate differences: none in the text. An empty `thinking` counts as absent (the template
// then looks for "</think>" in the content); tool-call arguments are pasted as given (a string),
// and the dataset reader turns an arguments object into the string `tojson` would write.
#include "xtuner/data/chat_template_internal.h"

namespace xt {

namespace {

// Index of the last user message that is a real query (not only a tool response), scanning
// from the end as the template does; the last index when there is none.
size_t LastQueryIndex(const std::vector<Message>& ms) {
  for (size_t k = ms.size(); k-- > 0;) {
    const Message& m = ms[k];
    if (m.role == "user" &&
        !(m.content.starts_with("<tool_response>") && m.content.ends_with("</tool_response>"))) {
      return k;
    }
  }
  return ms.size() - 1;
}

Status RenderQwen3(const Conversation& conv, const std::vector<bool>& trained,
                   const ChatTemplateOptions& /*options*/, SegmentWriter* out) {
  const std::string kName = "qwen3";
  const auto& ms = conv.messages;
  XT_ASSIGN_OR_RETURN(auto tools, ParseTools(kName, conv.tools_json));
  const bool first_is_system = ms[0].role == "system";
  if (tools && !tools->empty()) {
    out->Prompt("<|im_start|>system\n");
    if (first_is_system) out->Prompt(ms[0].content + "\n\n");
    out->Prompt(QwenToolsBlock(*tools) + "<|im_end|>\n");
  } else if (first_is_system) {
    out->Prompt("<|im_start|>system\n" + ms[0].content + "<|im_end|>\n");
  }

  const size_t last_query = LastQueryIndex(ms);
  for (size_t i = 0; i < ms.size(); ++i) {
    const Message& m = ms[i];
    if (m.role == "system") {
      if (i > 0) out->Prompt("<|im_start|>system\n" + m.content + "<|im_end|>\n");
    } else if (m.role == "user") {
      out->Prompt("<|im_start|>user\n" + m.content + "<|im_end|>\n");
    } else if (m.role == "assistant") {
      std::string_view content = m.content;
      std::string_view reasoning = m.thinking;
      if (m.thinking.empty()) {
        size_t end = content.find("</think>");
        if (end != std::string_view::npos) {
          std::string_view before = RStripChars(content.substr(0, end), "\n");
          size_t open = before.rfind("<think>");
          if (open != std::string_view::npos) before = before.substr(open + 7);
          reasoning = LStripChars(before, "\n");
          content = LStripChars(content.substr(content.rfind("</think>") + 8), "\n");
        }
      }
      out->Prompt("<|im_start|>assistant\n");
      const bool train = trained[i];
      if (i > last_query && (i + 1 == ms.size() || !reasoning.empty())) {
        out->Add("<think>\n" + std::string(StripChars(reasoning, "\n")) + "\n</think>\n\n" +
                     std::string(LStripChars(content, "\n")),
                 train);
      } else {
        out->Add(content, train);
      }
      for (size_t k = 0; k < m.tool_calls.size(); ++k) {
        if (k > 0 || !content.empty()) out->Add("\n", train);
        out->Add(QwenToolCall(m.tool_calls[k]), train);
      }
      out->Add("<|im_end|>", train);
      out->Prompt("\n");
    } else if (m.role == "tool") {
      if (i == 0 || ms[i - 1].role != "tool") out->Prompt("<|im_start|>user");
      out->Prompt("\n<tool_response>\n" + m.content + "\n</tool_response>");
      if (i + 1 == ms.size() || ms[i + 1].role != "tool") out->Prompt("<|im_end|>\n");
    }
  }
  return Status::OK();
}

}  // namespace

const ChatTemplateSpec& Qwen3Spec() {
  static const ChatTemplateSpec spec{
      "qwen3",
      RenderQwen3,
      {"<|im_start|>", "<|im_end|>"},
      {"<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"},
      {"<|im_start|>", "<|im_end|>", "last_query_index", "reasoning_content", "<think>", "</think>",
       "(not loop.last and reasoning_content)", "<tool_response>", "<tool_call>\\n{\"name\": \""},
      {"<function=", "<|vision_start|>", "You are Qwen"},
  };
  return spec;
}

}  // namespace xt
