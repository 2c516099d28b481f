#include "util/cli.h"

#include <sys/wait.h>

#include <cstdio>

namespace xt::testing {

namespace {

CliRun Run(std::string cmd, const std::string& cwd) {
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

}  // namespace

CliRun RunShell(const std::string& command, const std::string& cwd) { return Run(command, cwd); }

CliRun RunXtuner(const std::string& args, const std::string& cwd) {
  return Run(std::string(XT_XTUNER_BIN) + " " + args + " 2>&1", cwd);
}

CliRun RunMpi(int np, const std::string& program, const std::string& args, const std::string& cwd,
              const std::string& btl, int omp_threads) {
  // One OpenMP thread per rank by default (the ranks share the machine's cores); local transports
  // only, so no network probing in containers.
  const std::string threads =
      omp_threads > 0 ? "-x OMP_NUM_THREADS=" + std::to_string(omp_threads) : std::string();
  return Run(std::string(omp_threads > 0 ? "" : "env -u OMP_NUM_THREADS ") +
                 "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=" + btl +
                 " mpirun --oversubscribe " + threads + " -x OMP_WAIT_POLICY=PASSIVE -np " +
                 std::to_string(np) + " " + program + " " + args + " 2>&1",
             cwd);
}

}  // namespace xt::testing
