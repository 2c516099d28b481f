// SingleComm: the group of one rank. Collectives copy send to recv.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "xtuner/core/status.h"
#include "xtuner/dist/comm.h"

namespace xt {

namespace {

class SingleComm : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void AllReduceSum(double*, int64_t) override {}
  void AllReduceSum(float*, int64_t) override {}
  void AllReduceMax(double*, int64_t) override {}
  void AllGather(float* recv, const float* send, const std::vector<int64_t>& counts) override {
    XT_CHECK(counts.size() == 1, "AllGather: one count per rank");
    Copy(recv, send, counts[0]);
  }
  void Gather(float* recv, const float* send, const std::vector<int64_t>& counts,
              int root) override {
    XT_CHECK(counts.size() == 1 && root == 0, "Gather: one rank");
    Copy(recv, send, counts[0]);
  }
  void ReduceScatterSum(float* recv, const float* send,
                        const std::vector<int64_t>& counts) override {
    XT_CHECK(counts.size() == 1, "ReduceScatterSum: one count per rank");
    Copy(recv, send, counts[0]);
  }
  void AllToAll(float* recv, const std::vector<int64_t>& recv_counts, const float* send,
                const std::vector<int64_t>& send_counts) override {
    XT_CHECK(recv_counts.size() == 1 && send_counts.size() == 1 && recv_counts[0] == send_counts[0],
             "AllToAll: one rank sends to itself what it receives");
    Copy(recv, send, send_counts[0]);
  }
  void AllToAllCounts(int64_t* recv, const int64_t* send, int64_t n) override {
    if (recv != send) std::memmove(recv, send, size_t(n) * sizeof(int64_t));
  }
  void Broadcast(void*, int64_t, int root) override {
    XT_CHECK(root == 0, "Broadcast: root out of range");
  }
  void Barrier() override {}
  std::unique_ptr<Comm> Split(int, int) override { return std::make_unique<SingleComm>(); }
  [[noreturn]] void Abort(const std::string& message) override {
    std::fprintf(stderr, "rank 0/1: %s\n", message.c_str());
    std::fflush(stderr);
    std::exit(1);
  }

 private:
  static void Copy(float* dst, const float* src, int64_t n) {
    if (dst != src && n > 0) std::memmove(dst, src, size_t(n) * sizeof(float));
  }
};

}  // namespace

std::unique_ptr<Comm> MakeSingleComm() { return std::make_unique<SingleComm>(); }

}  // namespace xt
