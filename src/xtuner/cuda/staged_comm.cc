#include "xtuner/cuda/staged_comm.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <numeric>

namespace xt::cuda {
namespace {

int64_t Sum(const std::vector<int64_t>& counts) {
  return std::accumulate(counts.begin(), counts.end(), int64_t(0));
}

class StagedComm : public Comm {
 public:
  StagedComm(Comm* host, void* stream, std::unique_ptr<Comm> owned)
      : host_(host), owned_(std::move(owned)), stream_(cudaStream_t(stream)) {}

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }

  void AllReduceSum(double* data, int64_t n) override { host_->AllReduceSum(data, n); }
  void AllReduceMax(double* data, int64_t n) override { host_->AllReduceMax(data, n); }
  void AllReduceSum(float* data, int64_t n) override {
    std::vector<float> h = Down(data, n, "all-reduce");
    host_->AllReduceSum(h.data(), n);
    Up(data, h, "all-reduce");
  }
  void AllGather(float* recv, const float* send, const std::vector<int64_t>& counts) override {
    std::vector<float> s = Down(send, counts[rank()], "all-gather");
    std::vector<float> r(Sum(counts));
    host_->AllGather(r.data(), s.data(), counts);
    Up(recv, r, "all-gather");
  }
  void Gather(float* recv, const float* send, const std::vector<int64_t>& counts,
              int root) override {
    std::vector<float> s = Down(send, counts[rank()], "gather");
    std::vector<float> r(rank() == root ? Sum(counts) : 0);
    host_->Gather(r.data(), s.data(), counts, root);
    if (rank() == root) Up(recv, r, "gather");
  }
  void ReduceScatterSum(float* recv, const float* send,
                        const std::vector<int64_t>& counts) override {
    std::vector<float> s = Down(send, Sum(counts), "reduce-scatter");
    std::vector<float> r(counts[rank()]);
    host_->ReduceScatterSum(r.data(), s.data(), counts);
    Up(recv, r, "reduce-scatter");
  }
  void AllToAll(float* recv, const std::vector<int64_t>& recv_counts, const float* send,
                const std::vector<int64_t>& send_counts) override {
    std::vector<float> s = Down(send, Sum(send_counts), "all-to-all");
    std::vector<float> r(Sum(recv_counts));
    host_->AllToAll(r.data(), recv_counts, s.data(), send_counts);
    Up(recv, r, "all-to-all");
  }
  void AllToAllCounts(int64_t* recv, const int64_t* send, int64_t n) override {
    host_->AllToAllCounts(recv, send, n);
  }
  void Broadcast(void* data, int64_t bytes, int root) override {
    host_->Broadcast(data, bytes, root);
  }
  void Barrier() override {
    Must(cudaStreamSynchronize(stream_), "barrier");
    host_->Barrier();
  }
  std::unique_ptr<Comm> Split(int color, int key) override {
    std::unique_ptr<Comm> sub = host_->Split(color, key);
    Comm* sub_host = sub.get();
    return MakeStagedComm(sub_host, stream_, std::move(sub));
  }
  [[noreturn]] void Abort(const std::string& message) override {
    host_->Abort(message);
    std::abort();  // not reached: g++ does not carry [[noreturn]] through the virtual call
  }

 private:
  void Must(cudaError_t err, const char* what) {
    if (err != cudaSuccess)
      host_->Abort(std::string("CUDA: ") + what +
                   " (staged through the host): " + cudaGetErrorString(err));
  }
  // n floats of device memory at p, once the work queued before is done.
  std::vector<float> Down(const float* p, int64_t n, const char* what) {
    Must(cudaStreamSynchronize(stream_), what);
    std::vector<float> h(n);
    if (n > 0)
      Must(cudaMemcpy(h.data(), p, size_t(n) * sizeof(float), cudaMemcpyDeviceToHost), what);
    return h;
  }
  void Up(float* p, const std::vector<float>& h, const char* what) {
    if (h.empty()) return;
    Must(cudaMemcpyAsync(p, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice, stream_),
         what);
    Must(cudaStreamSynchronize(stream_), what);  // h is freed on return
  }

  Comm* host_;
  std::unique_ptr<Comm> owned_;
  cudaStream_t stream_;
};

}  // namespace

std::unique_ptr<Comm> MakeStagedComm(Comm* host, void* stream, std::unique_ptr<Comm> owned_host) {
  return std::make_unique<StagedComm>(host, stream, std::move(owned_host));
}

}  // namespace xt::cuda
