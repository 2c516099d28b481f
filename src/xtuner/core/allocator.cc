#include "xtuner/core/allocator.h"

#include <malloc.h>

namespace xt {

void ConfigureAllocatorForTraining() {
  mallopt(M_MMAP_MAX, 0);              // large blocks from the heap, not fresh mappings
  mallopt(M_TRIM_THRESHOLD, 1 << 30);  // and keep up to 1 GiB of freed heap for the next step
}

}  // namespace xt
