// MpiComm: a Comm over an MPI communicator (Open MPI). MPI_COMM_WORLD keeps MPI's default
// fatal error handler, so a dead peer or a broken link ends the job instead of hanging it.
#define OMPI_SKIP_MPICXX 1  // the C API only (no deprecated C++ bindings)
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "xtuner/core/status.h"
#include "xtuner/dist/comm.h"

namespace xt {

namespace {

int Int(int64_t n) {
  XT_CHECK(n >= 0 && n <= INT_MAX, "MPI count out of range: " + std::to_string(n));
  return int(n);
}

// MPI's counts and displacements for blocks of `counts`.
void CountsAndDispls(const std::vector<int64_t>& counts, std::vector<int>* c, std::vector<int>* d) {
  c->resize(counts.size());
  d->resize(counts.size());
  int64_t at = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    (*c)[r] = Int(counts[r]);
    (*d)[r] = Int(at);
    at += counts[r];
  }
}

class MpiComm : public Comm {
 public:
  MpiComm(MPI_Comm comm, bool owns_mpi) : comm_(comm), owns_mpi_(owns_mpi) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiComm() override {
    if (owns_mpi_) {
      MPI_Finalize();
    } else if (comm_ != MPI_COMM_WORLD) {
      MPI_Comm_free(&comm_);
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void AllReduceSum(double* data, int64_t n) override {
    MPI_Allreduce(MPI_IN_PLACE, data, Int(n), MPI_DOUBLE, MPI_SUM, comm_);
  }
  void AllReduceSum(float* data, int64_t n) override {
    MPI_Allreduce(MPI_IN_PLACE, data, Int(n), MPI_FLOAT, MPI_SUM, comm_);
  }
  void AllReduceMax(double* data, int64_t n) override {
    MPI_Allreduce(MPI_IN_PLACE, data, Int(n), MPI_DOUBLE, MPI_MAX, comm_);
  }
  void AllGather(float* recv, const float* send, const std::vector<int64_t>& counts) override {
    XT_CHECK(int(counts.size()) == size_, "AllGather: one count per rank");
    std::vector<int> c, d;
    CountsAndDispls(counts, &c, &d);
    // In place on every rank (MPI wants all ranks or none): the others' blocks copied first.
    if (send != recv + d[rank_] && c[rank_] > 0)
      std::memcpy(recv + d[rank_], send, size_t(c[rank_]) * sizeof(float));
    MPI_Allgatherv(MPI_IN_PLACE, c[rank_], MPI_FLOAT, recv, c.data(), d.data(), MPI_FLOAT, comm_);
  }
  void Gather(float* recv, const float* send, const std::vector<int64_t>& counts,
              int root) override {
    XT_CHECK(int(counts.size()) == size_, "Gather: one count per rank");
    std::vector<int> c, d;
    CountsAndDispls(counts, &c, &d);
    MPI_Gatherv(send, c[rank_], MPI_FLOAT, recv, c.data(), d.data(), MPI_FLOAT, root, comm_);
  }
  void ReduceScatterSum(float* recv, const float* send,
                        const std::vector<int64_t>& counts) override {
    XT_CHECK(int(counts.size()) == size_, "ReduceScatterSum: one count per rank");
    std::vector<int> c, d;
    CountsAndDispls(counts, &c, &d);
    MPI_Reduce_scatter(send, recv, c.data(), MPI_FLOAT, MPI_SUM, comm_);
  }
  void AllToAll(float* recv, const std::vector<int64_t>& recv_counts, const float* send,
                const std::vector<int64_t>& send_counts) override {
    XT_CHECK(int(recv_counts.size()) == size_ && int(send_counts.size()) == size_,
             "AllToAll: one count per rank");
    std::vector<int> rc, rd, sc, sd;
    CountsAndDispls(recv_counts, &rc, &rd);
    CountsAndDispls(send_counts, &sc, &sd);
    MPI_Alltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(), MPI_FLOAT,
                  comm_);
  }
  void AllToAllCounts(int64_t* recv, const int64_t* send, int64_t n) override {
    MPI_Alltoall(send, Int(n), MPI_INT64_T, recv, Int(n), MPI_INT64_T, comm_);
  }
  void Broadcast(void* data, int64_t bytes, int root) override {
    MPI_Bcast(data, Int(bytes), MPI_BYTE, root, comm_);
  }
  void Barrier() override { MPI_Barrier(comm_); }
  std::unique_ptr<Comm> Split(int color, int key) override {
    MPI_Comm sub;
    MPI_Comm_split(comm_, color, key, &sub);
    return std::make_unique<MpiComm>(sub, false);
  }
  [[noreturn]] void Abort(const std::string& message) override {
    int world_rank = 0, world_size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    std::fprintf(stderr, "rank %d/%d: %s\n", world_rank, world_size, message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::exit(1);
  }

 private:
  MPI_Comm comm_;
  bool owns_mpi_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool LaunchedByMpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v)) return true;
  return false;
}

std::unique_ptr<Comm> MakeWorldComm() {
  if (!LaunchedByMpi()) return MakeSingleComm();
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  auto world = std::make_unique<MpiComm>(MPI_COMM_WORLD, true);
  // Only the main thread calls MPI, but the process has other threads (OpenMP, the signal
  // watcher): MPI must allow that.
  if (provided < MPI_THREAD_FUNNELED)
    world->Abort("error: this MPI library provides thread level " + std::to_string(provided) +
                 ", below MPI_THREAD_FUNNELED, which a multi-threaded process needs");
  return world;
}

}  // namespace xt
