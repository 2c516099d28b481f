// Running the xtuner binary from tests, as a user would from a shell.
#pragma once

#include <string>

namespace xt::testing {

struct CliRun {
  int code;            // exit status (-1 if it did not exit normally)
  std::string output;  // stdout and stderr together
};

// Runs `command` through /bin/sh (stderr not captured unless it redirects it), in `cwd` when given.
CliRun RunShell(const std::string& command, const std::string& cwd = "");

// Runs `xtuner ARGS` through /bin/sh (so ARGS may quote and redirect), in `cwd` when given.
CliRun RunXtuner(const std::string& args, const std::string& cwd = "");

// Runs `mpirun -np N PROGRAM ARGS` (oversubscribed: more ranks than cores is fine; allowed as
// root), through /bin/sh, in `cwd` when given. PROGRAM is a path to a binary. `btl`: Open MPI's
// transports between the ranks (self,tcp avoids the shared-memory files that self,vader makes).
// `omp_threads`: each rank's OMP_NUM_THREADS; 0 leaves it unset, as a user who never set it.
CliRun RunMpi(int np, const std::string& program, const std::string& args,
              const std::string& cwd = "", const std::string& btl = "self,vader",
              int omp_threads = 1);

}  // namespace xt::testing
