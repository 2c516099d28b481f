// Process-wide allocator settings for training. A step allocates and frees the same large
// activation buffers again and again; glibc hands buffers over 32 MiB to mmap and back to the
// kernel on free, so every step page-faults them in anew (10% of a CPU step, measured). This
// keeps freed memory in the heap for reuse instead. Call once, first thing in main().
#pragma once

namespace xt {

void ConfigureAllocatorForTraining();

}  // namespace xt
