// xtuner generate --model DIR [--adapter DIR] --prompt TEXT [--chat-template NAME] [...]
#include "xtuner/model/generate.h"

#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "xtuner/data/chat_prompt.h"
#include "xtuner/model/checkpoint.h"

namespace xt::cli {

namespace {

struct GenerateArgs {
  std::string model, adapter, prompt, chat_template, tokenizer;
  ChatTemplateOptions harmony;  // --reasoning-effort, --model-identity, --current-date
  GenerateOptions gen;
};

Status RunGenerate(const GenerateArgs& o) {
  XT_ASSIGN_OR_RETURN(std::unique_ptr<Transformer> model, LoadHfModel(o.model, o.adapter));
  const std::string tok_path = o.tokenizer.empty()
                                   ? (std::filesystem::path(o.model) / "tokenizer.json").string()
                                   : o.tokenizer;
  XT_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::FromFile(tok_path));
  GenerateOptions gen = o.gen;
  std::vector<int32_t> prompt;
  bool harmony = false;
  if (o.chat_template.empty() || o.chat_template == "none") {
    if (!o.harmony.reasoning_effort.empty() || !o.harmony.model_identity.empty() ||
        !o.harmony.current_date.empty())
      return Status::Error(
          "--reasoning-effort, --model-identity and --current-date need the harmony chat "
          "template");
    XT_ASSIGN_OR_RETURN(prompt, tok.Encode(o.prompt, /*add_special_tokens=*/true));
  } else {
    std::string name = o.chat_template;
    if (name == "auto") {
      XT_ASSIGN_OR_RETURN(
          name,
          ChatTemplate::DetectName(
              (std::filesystem::path(tok_path).parent_path() / "tokenizer_config.json").string()));
    }
    XT_ASSIGN_OR_RETURN(ChatTemplate tmpl, ChatTemplate::ByName(name, o.harmony));
    harmony = tmpl.name() == "harmony";
    Conversation c;
    Message user;
    user.role = "user";
    user.content = o.prompt;
    c.messages.push_back(user);
    XT_ASSIGN_OR_RETURN(prompt, EncodeGenerationPrompt(tmpl, tok, c));
    for (const std::string& stop : StopTokens(name))
      if (auto id = tok.TokenToId(stop)) gen.stop_ids.push_back(*id);
  }
  for (const char* eos : {"<|endoftext|>", "<|end_of_text|>", "</s>"})
    if (auto id = tok.TokenToId(eos)) gen.stop_ids.push_back(*id);
  // And the model's own: config.json's eos_token_id, and generation_config.json's (GPT-OSS:
  // <|return|> and <|call|>), as transformers' generate stops on them.
  for (int64_t id : model->config().eos_token_ids) gen.stop_ids.push_back(int32_t(id));
  XT_ASSIGN_OR_RETURN(
      std::vector<int64_t> more,
      GenerationEosIds((std::filesystem::path(o.model) / "generation_config.json").string()));
  for (int64_t id : more) gen.stop_ids.push_back(int32_t(id));
  XT_ASSIGN_OR_RETURN(std::vector<int32_t> out, Generate(*model, prompt, gen));
  // Harmony's turns keep their markers, so that the analysis and the final answer can be told
  // apart.
  XT_ASSIGN_OR_RETURN(std::string text, tok.Decode(out, /*skip_special_tokens=*/!harmony));
  std::printf("%s\n", text.c_str());
  return Status::OK();
}

}  // namespace

void AddGenerate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate text with a model (KV cache decoding)");
  static GenerateArgs o;
  cmd->add_option("--model", o.model, "Hugging Face model directory")->required();
  cmd->add_option("--adapter", o.adapter, "a PEFT LoRA adapter directory to run the model with");
  cmd->add_option("--prompt", o.prompt, "the prompt (a user message with a chat template)")
      ->required();
  cmd->add_option("--chat-template", o.chat_template,
                  "chatml|qwen3|llama3|llama3.1|deepseek-v3|harmony|auto; none: raw text");
  cmd->add_option("--reasoning-effort", o.harmony.reasoning_effort,
                  "harmony (GPT-OSS): low|medium|high (default medium)");
  cmd->add_option("--model-identity", o.harmony.model_identity,
                  "harmony: the system message's first line (default: the template's)");
  cmd->add_option("--current-date", o.harmony.current_date,
                  "harmony: the system message's date, YYYY-MM-DD (default: today)");
  cmd->add_option("--tokenizer", o.tokenizer, "tokenizer.json (default: MODEL/tokenizer.json)");
  cmd->add_option("--max-new-tokens", o.gen.max_new_tokens, "tokens to generate")
      ->capture_default_str();
  cmd->add_option("--temperature", o.gen.temperature, "0: greedy")->capture_default_str();
  cmd->add_option("--top-p", o.gen.top_p, "nucleus sampling")->capture_default_str();
  cmd->add_option("--top-k", o.gen.top_k, "keep the k most likely tokens (0: all)");
  cmd->add_option("--seed", o.gen.seed, "sampling seed");
  cmd->callback([] { Finish(RunGenerate(o)); });
}

}  // namespace xt::cli
