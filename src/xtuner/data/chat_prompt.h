// Prompts for generation: a conversation rendered by its chat template, followed by the header
// that opens the assistant's turn (what HF's apply_chat_template(add_generation_prompt=True)
// appends), and the token that ends the assistant's turn (where generation stops).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/data/chat_template.h"
#include "xtuner/data/tokenizer.h"

namespace xt {

// The header text that opens an assistant turn in template `name`.
Result<std::string> GenerationHeader(const std::string& template_name);
// The text of the token that ends an assistant turn in template `name`.
Result<std::string> EndOfTurnToken(const std::string& template_name);
// The tokens a generated assistant turn stops at: the end-of-turn token first, then (harmony)
// <|call|> and <|endoftext|>, which a tokenizer may lack.
std::vector<std::string> StopTokens(const std::string& template_name);

// Token ids of the conversation (which must not end with an assistant message) plus the
// generation header.
Result<std::vector<int32_t>> EncodeGenerationPrompt(const ChatTemplate& chat_template,
                                                    const Tokenizer& tokenizer,
                                                    const Conversation& conversation);

// The answer in an assistant turn the model generated after a generation prompt: the decoded
// text without special tokens; for harmony the text of its first final channel only, to the
// channel's end ("" when the turn has none: it stopped in its analysis, or called a tool first).
Result<std::string> DecodeAnswer(const ChatTemplate& chat_template, const Tokenizer& tokenizer,
                                 const std::vector<int32_t>& generated);

}  // namespace xt
