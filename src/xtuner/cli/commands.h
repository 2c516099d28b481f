// Subcommand registration. Each Add* adds one subcommand whose callback runs the command and
// records its exit code (0 on success; 1 with a message on stderr on failure).
#pragma once

#include <CLI/CLI.hpp>

#include "xtuner/core/status.h"

namespace xt::cli {

void AddDebugDump(CLI::App& app);
void AddTokenizer(CLI::App& app);
void AddTrain(CLI::App& app);
void AddSft(CLI::App& app);
void AddGenerate(CLI::App& app);
void AddTokenize(CLI::App& app);
void AddConvert(CLI::App& app);
void AddPlan(CLI::App& app);

// Records the outcome of the command that ran: prints "xtuner: error: <message>" on failure.
void Finish(const Status& status);
int ExitCode();

}  // namespace xt::cli
