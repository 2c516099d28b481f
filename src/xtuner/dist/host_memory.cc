#include "xtuner/dist/host_memory.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <vector>

namespace xt {

int64_t AvailableHostMemory() {
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return -1;
  char line[256];
  int64_t kib = -1;
  while (std::fgets(line, sizeof line, f)) {
    long long v = 0;
    if (std::sscanf(line, "MemAvailable: %lld kB", &v) == 1) {
      kib = v;
      break;
    }
  }
  std::fclose(f);
  return kib < 0 ? -1 : kib * 1024;
}

int RanksOnThisHost(Comm& group) {
  char name[256] = {0};
  gethostname(name, sizeof name - 1);
  // FNV-1a of the host name cut to 52 bits: exact in a double, summed over the ranks.
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < std::strlen(name); ++i) h = (h ^ uint8_t(name[i])) * 1099511628211ull;
  std::vector<double> ids(size_t(group.size()), 0.0);
  ids[size_t(group.rank())] = double(h >> 12);
  group.AllReduceSum(ids.data(), int64_t(ids.size()));
  int n = 0;
  for (double id : ids) n += id == ids[size_t(group.rank())];
  return n;
}

}  // namespace xt
