// debug-dump: run one batch through a checkpoint and write everything needed to compare the
// engine with Hugging Face transformers, in the layout of the reference fixtures
// (tests/data/FIXTURES.md). A user runs it to check that a checkpoint loads and trains right.
#pragma once

#include <string>

#include "xtuner/core/status.h"

namespace xt {

// Reads `input_ids` [B, S] and `labels` [B, S] (integer or float tensors; labels optional) and,
// when present, `packed.input_ids` [1, N] and `packed.cu_seqlens` [docs + 1] from batch_path;
// loads the model from model_dir; writes to out_path (atomically) as F32:
//   logits [B, S, V], ce_loss [1], aux_loss [1] (MoE), loss [1], grad.<hub name> for every
//   parameter, hidden_states.<i> [B, S, H], router_logits.<layer> [B*S, E] (MoE layers),
//   packed.logits [1, N, V] (when packed inputs were given).
// Losses follow the fixtures: ce = mean CE over non-ignored labels after the causal shift;
// loss = ce + router_aux_loss_coef * aux. Prints a one-line summary to stdout.
// With `adapter` (a PEFT LoRA adapter directory) the model runs with it and the gradients are
// those of the adapter's tensors only, grad.<name> with PEFT's name less "base_model.model."
// (every base weight is frozen, as in PEFT).
Status DebugDump(const std::string& model_dir, const std::string& batch_path,
                 const std::string& out_path, const std::string& adapter = "");

}  // namespace xt
