#include "cli/commands.h"

#include <cstdio>

namespace xt::cli {

namespace {
int g_exit_code = 0;
}

void Finish(const Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "xtuner: error: %s\n", status.message().c_str());
    g_exit_code = 1;
  }
}

int ExitCode() { return g_exit_code; }

}  // namespace xt::cli
