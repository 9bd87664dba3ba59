// Leading batch dimensions of XLA FFI buffers, broadcast numpy-style (host-side helper).
//
// Every operand and result of an nmr_jax custom call is [*batch, *core]. The Python layer pads all
// of them to the same number of batch dimensions; a dimension of size 1 is broadcast, so a mesh
// shared by many cameras, or an operand left unbatched by vmap's "expand_dims", is never copied.
// A result with a size-1 dimension where the others are larger is a reduction (summed gradients).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace nmr {

namespace ffi = xla::ffi;

class Broadcast {
 public:
  // Adds a buffer whose trailing `core_rank` dimensions are per batch element. Returns its id.
  int add(ffi::AnyBuffer::Dimensions dims, int core_rank) {
    std::vector<int64_t> batch(dims.begin(), dims.end() - core_rank);
    operands_.push_back(batch);
    return static_cast<int>(operands_.size()) - 1;
  }

  // Computes the broadcast batch shape; fails when two buffers disagree on a dimension.
  ffi::Error finish() {
    size_t rank = 0;
    for (const auto& op : operands_) rank = op.size() > rank ? op.size() : rank;
    shape_.assign(rank, 1);
    for (const auto& op : operands_) {
      const size_t pad = rank - op.size();
      for (size_t d = 0; d < op.size(); ++d) {
        if (op[d] == 1) continue;
        if (shape_[pad + d] != 1 && shape_[pad + d] != op[d])
          return ffi::Error::InvalidArgument("nmr_jax: batch dimensions do not broadcast");
        shape_[pad + d] = op[d];
      }
    }
    size_ = 1;
    for (int64_t s : shape_) size_ *= s;
    strides_.clear();
    for (const auto& op : operands_) {
      std::vector<int64_t> stride(rank, 0);
      int64_t acc = 1;
      for (size_t d = op.size(); d-- > 0;) {
        stride[rank - op.size() + d] = op[d] == 1 ? 0 : acc;
        acc *= op[d];
      }
      strides_.push_back(stride);
    }
    return ffi::Error::Success();
  }

  // Number of buffers added.
  int operands() const { return static_cast<int>(operands_.size()); }

  // Number of batch elements of the broadcast shape.
  int64_t size() const { return size_; }

  // Batch element of buffer `id` that broadcast element `flat` reads or writes.
  int64_t at(int id, int64_t flat) const {
    int64_t index = 0;
    for (size_t d = shape_.size(); d-- > 0;) {
      index += (flat % shape_[d]) * strides_[id][d];
      flat /= shape_[d];
    }
    return index;
  }

 private:
  std::vector<std::vector<int64_t>> operands_;
  std::vector<std::vector<int64_t>> strides_;
  std::vector<int64_t> shape_;
  int64_t size_ = 0;
};

}  // namespace nmr
