// xtuner debug-dump --model DIR --batch FILE --out FILE [--adapter DIR]
#include "xtuner/model/debug_dump.h"

#include "cli/commands.h"

namespace xt::cli {

void AddDebugDump(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "debug-dump",
      "Run one batch through a Hugging Face checkpoint and write logits, losses, every gradient "
      "and hidden states to a safetensors file, to compare with transformers");
  static std::string model, batch, out, adapter;
  cmd->add_option("--model", model, "model directory (config.json + safetensors)")->required();
  cmd->add_option("--batch", batch,
                  "safetensors file with input_ids [B,S], labels [B,S] and "
                  "optionally packed.input_ids [1,N], packed.cu_seqlens")
      ->required();
  cmd->add_option("--out", out, "output safetensors file")->required();
  cmd->add_option("--adapter", adapter,
                  "a PEFT LoRA adapter directory: run with it; the gradients are the adapter's");
  cmd->callback([] { Finish(DebugDump(model, batch, out, adapter)); });
}

}  // namespace xt::cli
