#include "xtuner/data/chat_prompt.h"

namespace xt {

Result<std::string> GenerationHeader(const std::string& name) {
  if (name == "chatml" || name == "qwen3") return std::string("<|im_start|>assistant\n");
  if (name == "llama3" || name == "llama3.1")
    return std::string("<|start_header_id|>assistant<|end_header_id|>\n\n");
  // DeepSeek-V3 closes every user and tool turn with <｜Assistant｜> already.
  if (name == "deepseek-v3") return std::string();
  if (name == "harmony") return std::string("<|start|>assistant");
  return Status::Error("chat template \"" + name + "\" has no generation header");
}

std::vector<std::string> StopTokens(const std::string& name) {
  if (name == "harmony") return {"<|return|>", "<|call|>", "<|endoftext|>"};
  Result<std::string> eot = EndOfTurnToken(name);
  return eot.ok() ? std::vector<std::string>{*eot} : std::vector<std::string>{};
}

Result<std::string> EndOfTurnToken(const std::string& name) {
  if (name == "chatml" || name == "qwen3") return std::string("<|im_end|>");
  if (name == "llama3" || name == "llama3.1") return std::string("<|eot_id|>");
  if (name == "deepseek-v3") return std::string("<｜end▁of▁sentence｜>");
  if (name == "harmony") return std::string("<|return|>");
  return Status::Error("chat template \"" + name + "\" has no end-of-turn token");
}

Result<std::vector<int32_t>> EncodeGenerationPrompt(const ChatTemplate& chat_template,
                                                    const Tokenizer& tokenizer,
                                                    const Conversation& conversation) {
  if (!conversation.messages.empty() && conversation.messages.back().role == "assistant")
    return Status::Error("a generation prompt must not end with an assistant message");
  XT_ASSIGN_OR_RETURN(std::vector<Segment> segments, chat_template.Render(conversation, false));
  XT_ASSIGN_OR_RETURN(std::string header, GenerationHeader(chat_template.name()));
  std::string text;
  for (const Segment& s : segments) text += s.text;
  text += header;
  return tokenizer.Encode(text, /*add_special_tokens=*/false);
}

Result<std::string> DecodeAnswer(const ChatTemplate& chat_template, const Tokenizer& tokenizer,
                                 const std::vector<int32_t>& generated) {
  if (chat_template.name() != "harmony")
    return tokenizer.Decode(generated, /*skip_special_tokens=*/true);
  XT_ASSIGN_OR_RETURN(std::string text, tokenizer.Decode(generated, false));
  // The turn's first final channel, unless the turn called a tool before it; what the model
  // wrote past the answer's end (a turn it made up) is not the answer.
  const std::string final_channel = "<|channel|>final<|message|>";
  const size_t at = text.find(final_channel);
  if (at == std::string::npos || text.find("<|call|>") < at) return std::string();
  text = text.substr(at + final_channel.size());
  for (const char* end : {"<|return|>", "<|end|>", "<|call|>", "<|endoftext|>", "<|start|>"})
    if (size_t e = text.find(end); e != std::string::npos) text.resize(e);
  return text;
}

}  // namespace xt
