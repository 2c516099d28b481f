// xtuner: the command-line front end. One file per subcommand; each registers itself here.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "cli/commands.h"
#include "xtuner/core/allocator.h"
#include "xtuner/dist/node_cpus.h"
#ifdef XTUNER_WITH_CUDA
#include "xtuner/cuda/train_backend_cuda.h"
#endif

int main(int argc, char** argv) {
  xt::ConfigureAllocatorForTraining();
  xt::ChooseCpuThreads();  // one process; under mpirun, `train` chooses once MPI is up
#ifdef XTUNER_WITH_CUDA
  xt::cuda::RegisterCudaTrainBackend();  // train.device = "cuda"
#endif
  CLI::App app{
      "xtuner.cpp: train Mixture-of-Experts language models from Hugging Face checkpoints"};
  app.require_subcommand(1);
  xt::cli::AddDebugDump(app);
  xt::cli::AddTokenizer(app);
  xt::cli::AddTrain(app);
  xt::cli::AddSft(app);
  xt::cli::AddGenerate(app);
  xt::cli::AddTokenize(app);
  xt::cli::AddConvert(app);
  xt::cli::AddPlan(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return xt::cli::ExitCode();
}
