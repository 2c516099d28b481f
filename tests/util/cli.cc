#include "util/cli.h"

#include <sys/wait.h>

#include <cstdio>

namespace xt::testing {

CliRun RunXtuner(const std::string& args, const std::string& cwd) {
  std::string cmd = std::string(XT_XTUNER_BIN) + " " + args + " 2>&1";
  if (!cwd.empty()) cmd = "cd '" + cwd + "' && " + cmd;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed"};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace xt::testing
