// The demo job under mpirun, as tests/dist/train_mpi_test.cc and train_mpi_failures_test.cc run
// it: `xtuner train examples/demo.toml` from the repository's root with a few keys set.
#pragma once

#include <string>

#include "util/cli.h"
#include "util/testing.h"

namespace xt::testing {

// The repository's root (where examples/demo.toml is).
inline const std::string& DemoRoot() {
  static const std::string root = DataPath("../..");
  return root;
}

// `steps` steps of 4 rows of 64 tokens, one row per micro-batch (the balancing loss is the global
// batch's, so how the rows are cut into micro-batches does not change the loss either), into
// `work_dir`, then `extra` arguments.
inline std::string DemoArgs(const std::string& work_dir, int steps, const std::string& extra = "") {
  return "train examples/demo.toml --set work_dir=" + work_dir +
         " --set train.steps=" + std::to_string(steps) +
         " --set schedule.warmup_steps=2 --set data.max_length=64"
         " --set train.global_batch_size=4 --set train.micro_batch_size=1 --set log.every=5"
         " --set eval.file= --set export.at_end=false " +
         extra;
}

// `mpirun -np np xtuner ARGS` from the root; `timeout`: a hung job fails the test instead of
// hanging it.
inline CliRun DemoMpi(int np, const std::string& args) {
  return RunMpi(np, std::string("timeout -k 5 120 ") + XT_XTUNER_BIN, args, DemoRoot());
}

}  // namespace xt::testing
