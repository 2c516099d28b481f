#include "xtuner/core/zero_pages.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "xtuner/core/status.h"

namespace xt {

std::shared_ptr<float> AllocZeroPages(int64_t n, const char* what) {
  const size_t bytes = std::max<size_t>(size_t(n) * sizeof(float), 1);
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  XT_CHECK(p != MAP_FAILED,
           std::string("out of memory: ") + what + " (" + std::to_string(bytes) + " bytes)");
  return std::shared_ptr<float>(static_cast<float*>(p), [bytes](float* q) { munmap(q, bytes); });
}

void CopyIntoZeros(float* dst, const float* src, int64_t n) {
  constexpr int64_t kBlock = 1024;  // floats: one 4 KiB page when aligned
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t k = std::min(kBlock, n - i);
    bool zero = true;
    for (int64_t j = 0; j < k && zero; ++j) zero = src[i + j] == 0.0f && !std::signbit(src[i + j]);
    if (!zero) std::memcpy(dst + i, src + i, size_t(k) * sizeof(float));
  }
}

void ReleasePages(float* p, int64_t n) {
  if (n <= 0) return;
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(p + n) / page * page;
  if (end > begin)
    XT_CHECK(madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED) == 0,
             "ReleasePages: madvise failed");
}

}  // namespace xt
