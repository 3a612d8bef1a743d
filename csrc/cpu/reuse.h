// Per-thread reuse of an op's large [B, ·] buffer between calls. A training step calls an op with the same
// shapes every time, and a fresh buffer of a size that glibc serves with mmap, or after trimming the heap
// (other ops free large blocks in between), costs a page fault per 4 KiB: at B = 256 and 1010 classes about
// as much time as the class-balancing kernels. A slot is handed out again only when nothing else holds it
// (no tensor, view, saved variable or gradient shares its storage). Only mid-sized buffers: small ones come
// from malloc's free lists anyway, and a large one is not worth keeping alive between calls.
#pragma once

#include <ATen/ATen.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <c10/util/accumulate.h>

namespace cbgan_ext {

constexpr int64_t kReuseMinBytes = 64 << 10, kReuseMaxBytes = 16 << 20;

inline bool sole_handle(const at::Tensor& t) {
  return t.defined() && t.use_count() == 1 && t.storage().use_count() == 1;
}

// A contiguous [sizes] tensor of opts: the slot's buffer when it is free and fits, else a new one (kept in the
// slot when mid-sized).
inline at::Tensor reuse_or_empty(at::Tensor& slot, at::IntArrayRef sizes, const at::TensorOptions& opts) {
  const int64_t bytes = c10::multiply_integers(sizes) *
                        static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(opts.dtype())));
  if (bytes < kReuseMinBytes || bytes > kReuseMaxBytes) return at::empty(sizes, opts);
  if (sole_handle(slot) && slot.sizes() == sizes && slot.dtype() == opts.dtype() && slot.device() == opts.device())
    return slot;
  slot = at::empty(sizes, opts);
  return slot;
}

inline bool in_slot(const at::Tensor& t, const at::Tensor& slot) {
  return t.defined() && slot.defined() && slot.unsafeGetTensorImpl() == t.unsafeGetTensorImpl();
}

// Whether t (contiguous, on the CPU) may be overwritten: its storage has one tensor, and that tensor has no
// handles but the other_refs its caller knows of and the slot's own.
// Never for a tensor subclass (FakeTensor, a functional wrapper: torch.compile's tracing), whose data is not
// there to write.
inline bool writable(const at::Tensor& t, const at::Tensor& slot, int64_t other_refs) {
  if (!t.defined() || at::isTensorSubclassLike(t) || !t.is_cpu() || t.layout() != at::kStrided || !t.has_storage() ||
      !t.is_contiguous() || t.storage().use_count() != 1)
    return false;
  return static_cast<int64_t>(t.use_count()) == other_refs + (in_slot(t, slot) ? 1 : 0);
}

}  // namespace cbgan_ext
