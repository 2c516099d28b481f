// Zero-filled buffers that cost memory only where written: fresh anonymous pages, which the
// kernel commits one page at a time on the first write (a read of an unwritten page reads the
// shared zero page). For state that is mostly never touched, e.g. the AdamW moments and
// gradients of the frozen weights of a LoRA run.
#pragma once

#include <cstdint>
#include <memory>

namespace xt {

// n floats of zeros (n >= 0); freed when the last owner goes. An allocation failure ends the job
// with a message naming `what`.
std::shared_ptr<float> AllocZeroPages(int64_t n, const char* what);

// dst (n) = src (n), where dst holds zeros: pages of src that are all zero are not copied, so
// dst's pages there stay uncommitted.
void CopyIntoZeros(float* dst, const float* src, int64_t n);

// The whole pages inside [p, p + n) of a buffer of AllocZeroPages go back to the kernel: they
// read zeros again and take no memory until written. The partial pages at the ends are kept.
void ReleasePages(float* p, int64_t n);

}  // namespace xt
