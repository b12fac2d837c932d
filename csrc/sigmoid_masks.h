// The sigmoids of the masks, sig_i(t) = sigmoid(s (x_i - t)) over the pixels of one image's
// schedule x, shared by threshold_masks (threshold_masks.cpp) and masked_images
// (masked_images.cpp). With c the mid-range of x,
//   sig_i(t) = 1 / (1 + e_i exp(s (t - c))),  e_i = exp(-s (x_i - c)),
// used when |s| (max x - min x) < 1200 (then |s (x_i - c)| < 600: e_i neither overflows nor
// vanishes) and |s (t - c)| < 700 (exp(s (t - c)) finite): e_i is computed once per pixel and
// shared by every t, so each value costs a division (vectorised by the callers), not an exp.
// Otherwise sig_i(t) is evaluated directly.
#pragma once

#include "common.h"

namespace sas_fast {

template <typename T>
class MidRangeSigmoid {
 public:
  // x: the image's schedule, lo / hi: its min and max.
  MidRangeSigmoid(const T* x, double s, double lo, double hi)
      : x_(x), s_(s), c_(0.5 * (lo + hi)), factored_(std::abs(s) * (hi - lo) < 1200) {}

  bool factored() const { return factored_; }

  // e[i] = e_{i0 + i}, i < len (factored() only).
  void scales(int64_t i0, int64_t len, double* e) const {
    for (int64_t i = 0; i < len; ++i) e[i] = std::exp(-s_ * (static_cast<double>(x_[i0 + i]) - c_));
  }

  // True, with *et = exp(s (t - c)), where the factored form holds at t.
  bool factored_at(double t, double* et) const {
    const double z = s_ * (t - c_);
    if (!factored_ || !(std::abs(z) < 700)) return false;
    *et = std::exp(z);
    return true;
  }

  // sig_i(t) evaluated directly.
  double direct(int64_t i, double t) const {
    return 1.0 / (1.0 + std::exp(-s_ * (static_cast<double>(x_[i]) - t)));
  }

 private:
  const T* x_;
  double s_, c_;
  bool factored_;
};

}  // namespace sas_fast
