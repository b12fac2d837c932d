// Masks of prescribed areas from a schedule (paper eq. 3-6), forward and implicit-gradient backward.
//
// For each image b and area a_k in (0, 1), the rule of reference.solve_thresholds: a
// Levenberg-Marquardt solve, bracket-safeguarded, of
//   r(t) = A(t) - a_k,  A(t) = mean_i sig_i^2,  sig_i = sigmoid(s (x_i - t)),
//   A'(t) = J = -2 s mean_i sig_i^2 (1 - sig_i),
// as least squares on rho(t) = logit(sqrt A) - logit(sqrt a_k) (same root and sign as r; linear
// in t when all pixels are equal): rho' = J / (2 A (1 - sqrt A)), Newton point
// t_N = t - rho / rho', LM point (Marquardt's scaling) t_LM = t - rho / (rho' (1 + lambda)). The
// damping lambda starts at 0 (undamped: Newton) and follows Marquardt's rule after every LM
// step: lambda / 10 if it reduced |r|, else max(10 lambda, 1). The root stays in a bracket
// [lo, hi] (initially min x - (logit(sqrt a) + 1) / s and max x - (logit(sqrt a) - 1) / s),
// shrunk by every evaluated point. Each step evaluates t_LM if it is defined (0 < A < 1, J < 0)
// and strictly inside the bracket, else the bisection (lo + hi) / 2 (lambda unchanged); flat
// stretches (J = 0) therefore cannot stall it. Start: the (1 - a_k) quantile of x or a warm
// start, clamped into the bracket; stop: |r| < tol or max_iter steps; result: the evaluated
// point of least |r|.
// Masks m_k = sigmoid(s (x - t_k)); a_k = 0 / 1 give exact 0 / 1 masks and t = +inf / -inf.
// Backward (docs/SPEC.md section 3), with G_ki = dL/dm_ki s m_ki (1 - m_ki) and w_ki = m_ki^2 (1 - m_ki):
//   implicit: dL/dx_i = sum_k [G_ki - w_ki (sum_j G_kj) / (sum_j w_kj + 1e-12)]
//   detached: dL/dx_i = sum_k G_ki.
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>

#include "common.h"
#include "sigmoid_masks.h"

namespace sas_fast {
namespace {

// Four lanes of doubles (GCC vector extension, element-wise IEEE operations: the same bits as the
// scalar code on every ISA). The kLanes lanes are held as two of them, lanes 0-3 and 4-7: 32-byte
// vectors stay in registers in the AVX2 copy too (64-byte ones did not; the baseline copy splits
// them in SSE2 halves), and the AVX-512 copy loses little by them (the divisions dominate).
typedef double Quad __attribute__((vector_size(32)));
typedef double QuadUnaligned __attribute__((vector_size(32), aligned(8)));  // at any double*
// Loads and stores go through QuadUnaligned into local Quads (a reference to the memory would
// assume 32-byte alignment); Quads are passed by reference and never returned (no by-value
// vector ABI in the baseline copy).

// Adds pixel values sig (one Quad, lanes l..l+3) into the partial sums q += sig^2 and
// j += sig^2 (1 - sig).
SAS_FAST_ALWAYS_INLINE void add_area_terms(const Quad& sig, Quad& q, Quad& j) {
  const Quad sq = sig * sig;
  q += sq;
  j += sq * (1.0 - sig);
}

// sums = (sum_i sig_i^2, sum_i sig_i^2 (1 - sig_i)) from the lane partial sums (q0, q1), (j0, j1)
// and the tail pixels sig[0..rest) (lanes 0..rest-1), lanes added up in order 0..kLanes-1.
SAS_FAST_ALWAYS_INLINE void finish_area_sums(const Quad& q0, const Quad& q1, const Quad& j0,
                                             const Quad& j1, const double* tail, int64_t rest,
                                             double* sums) {
  double q[kLanes], j[kLanes];
  for (int u = 0; u < 4; ++u) q[u] = q0[u], q[u + 4] = q1[u], j[u] = j0[u], j[u + 4] = j1[u];
  for (int64_t u = 0; u < rest; ++u) {
    const double sq = tail[u] * tail[u];
    q[u] += sq;
    j[u] += sq * (1.0 - tail[u]);
  }
  sums[0] = sums[1] = 0.0;
  for (int u = 0; u < kLanes; ++u) sums[0] += q[u], sums[1] += j[u];
}

// sums = (sum_i sig_i^2, sum_i sig_i^2 (1 - sig_i)), i < n, each over kLanes partial sums
// (pixel i in lane i mod kLanes) added up in a fixed order: the same bits on every ISA.
SAS_FAST_ALWAYS_INLINE void area_sums_body(const double* __restrict sig, int64_t n, double* sums) {
  Quad q0 = {}, q1 = {}, j0 = {}, j1 = {};
  const int64_t full = n - n % kLanes;
  for (int64_t i = 0; i < full; i += kLanes) {
    const Quad s0 = *reinterpret_cast<const QuadUnaligned*>(sig + i);
    const Quad s1 = *reinterpret_cast<const QuadUnaligned*>(sig + i + 4);
    add_area_terms(s0, q0, j0);
    add_area_terms(s1, q1, j1);
  }
  finish_area_sums(q0, q1, j0, j1, sig + full, n - full, sums);
}
SAS_FAST_MULTIVERSION(area_sums, area_sums_body)

// sig[i] = 1 / (1 + e[i] et), i < n, and their area_sums in the same pass (the same bits as
// area_sums on the stored sig).
SAS_FAST_ALWAYS_INLINE void scaled_sigmoid_sums_body(const double* __restrict e, double et, int64_t n,
                                                     double* __restrict sig, double* sums) {
  Quad q0 = {}, q1 = {}, j0 = {}, j1 = {};
  const int64_t full = n - n % kLanes;
  for (int64_t i = 0; i < full; i += kLanes) {
    const Quad s0 = 1.0 / (1.0 + *reinterpret_cast<const QuadUnaligned*>(e + i) * et);
    const Quad s1 = 1.0 / (1.0 + *reinterpret_cast<const QuadUnaligned*>(e + i + 4) * et);
    *reinterpret_cast<QuadUnaligned*>(sig + i) = s0;
    *reinterpret_cast<QuadUnaligned*>(sig + i + 4) = s1;
    add_area_terms(s0, q0, j0);
    add_area_terms(s1, q1, j1);
  }
  for (int64_t i = full; i < n; ++i) sig[i] = 1.0 / (1.0 + e[i] * et);
  finish_area_sums(q0, q1, j0, j1, sig + full, n - full, sums);
}
SAS_FAST_MULTIVERSION(scaled_sigmoid_sums, scaled_sigmoid_sums_body)

// sig_i(t) = sigmoid(s (x_i - t)) over the n pixels of one image (sigmoid_masks.h; e_i computed
// once per image, shared by every area and iteration).
template <typename T>
class Sigmoids {
 public:
  Sigmoids(const T* x, int64_t n, double s, double lo, double hi)
      : sigmoid_(x, s, lo, hi), n_(n), s_(s), sig_(n) {
    if (sigmoid_.factored()) {
      e_.resize(n);
      sigmoid_.scales(0, n, e_.data());
    }
  }

  // The n values sig_i(t) (kept: asking again for the last t costs nothing).
  const std::vector<double>& at(double t) {
    if (t == t_) return sig_;
    t_ = t;
    double et;
    if (sigmoid_.factored_at(t, &et)) {
      scaled_sigmoid_sums(e_.data(), et, n_, sig_.data(), sums_);
    } else {
      for (int64_t i = 0; i < n_; ++i) sig_[i] = sigmoid_.direct(i, t);
      area_sums(sig_.data(), n_, sums_);
    }
    return sig_;
  }

  // (A(t), J(t)) = (mean sig^2, -2 s mean sig^2 (1 - sig)), accumulated in double.
  std::pair<double, double> area_and_slope(double t) {
    at(t);
    const double nd = static_cast<double>(n_);
    return {sums_[0] / nd, -2.0 * s_ * sums_[1] / nd};
  }

 private:
  MidRangeSigmoid<T> sigmoid_;
  int64_t n_;
  double s_, t_ = NAN;
  std::vector<double> e_, sig_;
  double sums_[2] = {};  // area_sums of sig_
};

// Root of r on one (b, k); lo / hi bracket it (r(lo) >= 0 >= r(hi)) and shrink with every
// evaluated point; the damped (LM) step on rho is taken while it stays strictly inside.
template <typename T>
double solve(Sigmoids<T>& sig, double a, double t, double lo, double hi, double tol, int64_t max_iter) {
  const double logit_a = std::log(std::sqrt(a) / (1.0 - std::sqrt(a)));
  double r = 0.0, t_newton = NAN;
  const auto evaluate = [&](double tp) {  // r and the Newton point at tp; shrinks the bracket
    const auto [area, jac] = sig.area_and_slope(tp);
    r = area - a;
    const double root = std::sqrt(area);
    t_newton = (area > 0 && area < 1 && jac < 0)
                   ? tp - (std::log(root / (1.0 - root)) - logit_a) * 2.0 * area * (1.0 - root) / jac
                   : NAN;
    if (r > 0) lo = std::max(lo, tp);
    if (r <= 0) hi = std::min(hi, tp);
  };
  t = std::min(std::max(t, lo), hi);
  evaluate(t);
  double t_best = t, r_best = r;
  double damping = 0.0;  // Marquardt's lambda
  for (int64_t it = 0; it < max_iter && std::abs(r) >= tol; ++it) {
    const double t_lm = t + (t_newton - t) / (1.0 + damping);
    const bool lm = t_lm > lo && t_lm < hi;
    const double r_old = r;
    t = lm ? t_lm : (lo + hi) / 2;
    evaluate(t);
    if (lm) damping = std::abs(r) < std::abs(r_old) ? damping / 10.0 : std::max(10.0 * damping, 1.0);
    if (std::abs(r) < std::abs(r_best)) t_best = t, r_best = r;
  }
  return t_best;
}

// x[0..n) sorted ascending: LSD radix sort, one byte per pass, on the bits of each value mapped
// to an unsigned key of the same order (sign bit set: all bits flipped; else the sign bit set).
// O(n) per image (a comparison sort or a selection of the 2K ranks costs several times more).
template <typename T>
std::vector<T> sorted_copy(const T* x, int64_t n) {
  using Key = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr int kBytes = sizeof(Key);
  constexpr Key kSign = Key(1) << (8 * kBytes - 1);
  if (n == 0) return {};
  std::vector<Key> key(n), other(n);
  std::vector<int64_t> count(kBytes * 256, 0);  // histogram of byte d of the keys at [256 d]
  for (int64_t i = 0; i < n; ++i) {
    Key u;
    std::memcpy(&u, x + i, sizeof u);
    key[i] = (u & kSign) ? ~u : (u | kSign);
    for (int d = 0; d < kBytes; ++d) ++count[256 * d + ((key[i] >> (8 * d)) & 255)];
  }
  for (int d = 0; d < kBytes; ++d) {
    int64_t* c = count.data() + 256 * d;
    if (c[(key[0] >> (8 * d)) & 255] == n) continue;  // every key has this byte: nothing moves
    int64_t start = 0;
    for (int v = 0; v < 256; ++v) std::swap(c[v], start), start += c[v];
    for (int64_t i = 0; i < n; ++i) other[c[(key[i] >> (8 * d)) & 255]++] = key[i];
    key.swap(other);
  }
  std::vector<T> v(n);
  for (int64_t i = 0; i < n; ++i) {
    const Key u = (key[i] & kSign) ? (key[i] ^ kSign) : ~key[i];
    std::memcpy(v.data() + i, &u, sizeof u);
  }
  return v;
}

// The q-quantiles of x for q = 1 - a_k, linear interpolation computed in T as torch.quantile
// does: rank q (n - 1), values at floor(rank) and ceil(rank), lerp. NaN where a_k is not in (0, 1).
template <typename T>
std::vector<double> quantiles(const T* x, int64_t n, const T* areas, int64_t K) {
  const std::vector<T> v = sorted_copy(x, n);
  std::vector<double> q(K, NAN);
  for (int64_t k = 0; k < K; ++k) {
    if (!(areas[k] > T(0) && areas[k] < T(1))) continue;
    const T rank = (T(1) - areas[k]) * static_cast<T>(n - 1);
    const int64_t lo = static_cast<int64_t>(rank), hi = static_cast<int64_t>(std::ceil(rank));
    const T w = rank - static_cast<T>(lo), a = v[lo], b = v[hi];
    q[k] = w < T(0.5) ? a + w * (b - a) : b - (b - a) * (T(1) - w);
  }
  return q;
}

template <typename T>
void forward_kernel(const T* x, const T* areas, const T* init, int64_t B, int64_t K, int64_t n,
                    double s, double tol, int64_t max_iter, T* masks, T* thresholds) {
  std::vector<std::vector<double>> start(init ? 0 : B);  // quantile starts, B x K
  std::vector<double> range(2 * B);                       // min and max of each image
  at::parallel_for(0, B, grain_for(8 * n), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const auto [mn, mx] = std::minmax_element(x + b * n, x + (b + 1) * n);
      range[2 * b] = *mn, range[2 * b + 1] = *mx;
      if (!init) start[b] = quantiles(x + b * n, n, areas, K);
    }
  });
  at::parallel_for(0, B * K, grain_for(8 * n), [&](int64_t l0, int64_t l1) {
    int64_t b_sig = -1;  // the image whose Sigmoids are built (consecutive l share an image)
    std::optional<Sigmoids<T>> sig;
    for (int64_t l = l0; l < l1; ++l) {
      const int64_t b = l / K, k = l % K;
      const T a = areas[k];
      T* m = masks + l * n;
      if (!(a > T(0) && a < T(1))) {
        thresholds[l] = a <= T(0) ? INFINITY : -INFINITY;
        std::fill(m, m + n, a >= T(1) ? T(1) : T(0));
        continue;
      }
      if (b != b_sig) sig.emplace(x + b * n, n, s, range[2 * b], range[2 * b + 1]), b_sig = b;
      const double t0 = init ? static_cast<double>(init[l]) : start[b][k];
      const double ad = a, logit = std::log(std::sqrt(ad) / (1.0 - std::sqrt(ad)));
      const double lo = range[2 * b] - (logit + 1.0) / s, hi = range[2 * b + 1] - (logit - 1.0) / s;
      const double t = solve(*sig, ad, t0, lo, hi, tol, max_iter);
      thresholds[l] = static_cast<T>(t);
      round_to(sig->at(t).data(), n, m);
    }
  });
}

// sums = (sum_i g_i s m_i (1 - m_i), sum_i m_i^2 (1 - m_i)), i < n, over kLanes partial sums
// added up in a fixed order (as area_sums).
template <typename T>
SAS_FAST_ALWAYS_INLINE void implicit_sums_body(const T* __restrict m, const T* __restrict g, int64_t n,
                                               double s, double* sums) {
  double sg[kLanes] = {}, sw[kLanes] = {};
  const int64_t full = n - n % kLanes;
  for (int64_t i = 0; i < full; i += kLanes) {
    for (int u = 0; u < kLanes; ++u) {
      const double mi = m[i + u], dm = mi * (1.0 - mi);
      sg[u] += static_cast<double>(g[i + u]) * s * dm;
      sw[u] += mi * dm;
    }
  }
  for (int64_t i = full; i < n; ++i) {
    const double mi = m[i], dm = mi * (1.0 - mi);
    sg[i - full] += static_cast<double>(g[i]) * s * dm;
    sw[i - full] += mi * dm;
  }
  sums[0] = sums[1] = 0.0;
  for (int u = 0; u < kLanes; ++u) sums[0] += sg[u], sums[1] += sw[u];
}
SAS_FAST_MULTIVERSION(implicit_sums, implicit_sums_body)

// acc[i] += g_i s m_i (1 - m_i) - coef m_i^2 (1 - m_i), i < n.
template <typename T>
SAS_FAST_ALWAYS_INLINE void accumulate_grad_body(const T* __restrict m, const T* __restrict g, int64_t n,
                                                 double s, double coef, double* __restrict acc) {
  for (int64_t i = 0; i < n; ++i) {
    const double mi = m[i], dm = mi * (1.0 - mi);
    acc[i] += static_cast<double>(g[i]) * s * dm - coef * mi * dm;
  }
}
SAS_FAST_MULTIVERSION(accumulate_grad, accumulate_grad_body)

template <typename T>
void backward_kernel(const T* grad, const T* masks, const T* thresholds, int64_t B, int64_t K,
                     int64_t n, double s, bool implicit_grad, T* grad_x) {
  std::vector<double> coef(B * K, 0.0);  // (sum_j G_kj) / (sum_j w_kj + eps) per (b, k)
  if (implicit_grad) {
    at::parallel_for(0, B * K, grain_for(n), [&](int64_t l0, int64_t l1) {
      for (int64_t l = l0; l < l1; ++l) {
        if (!std::isfinite(static_cast<double>(thresholds[l]))) continue;
        double sums[2];
        implicit_sums(masks + l * n, grad + l * n, n, s, sums);
        coef[l] = sums[0] / (sums[1] + 1e-12);
      }
    });
  }
  constexpr int64_t kChunk = 1024;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  at::parallel_for(0, B * chunks, grain_for(K * kChunk), [&](int64_t c0, int64_t c1) {
    std::vector<double> acc(kChunk);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b = c / chunks, i0 = (c % chunks) * kChunk, len = std::min(kChunk, n - i0);
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t l = b * K + k;
        if (!std::isfinite(static_cast<double>(thresholds[l]))) continue;
        accumulate_grad(masks + l * n + i0, grad + l * n + i0, len, s, coef[l], acc.data());
      }
      round_to(acc.data(), len, grad_x + b * n + i0);
    }
  });
}

// schedule B x 1 x H x W, areas [K] -> (masks B x K x H x W, thresholds B x K). implicit_grad is
// only read by the backward (it is an input so that autograd sees it).
std::tuple<at::Tensor, at::Tensor> threshold_masks(const at::Tensor& schedule,
                                                   const at::Tensor& areas, double sharpness,
                                                   const std::optional<at::Tensor>& thresholds_init,
                                                   bool implicit_grad, double tol, int64_t max_iter) {
  TORCH_CHECK(schedule.device().is_cpu(), "schedule must be a CPU tensor");
  TORCH_CHECK(schedule.dim() == 4 && schedule.size(1) == 1, "schedule must be B x 1 x H x W");
  TORCH_CHECK(areas.dim() == 1 && areas.numel() >= 1, "areas must be a non-empty 1-D tensor");
  const int64_t B = schedule.size(0), K = areas.numel(), H = schedule.size(2), W = schedule.size(3);
  const at::Tensor x = schedule.contiguous();
  const at::Tensor a = areas.to(x.scalar_type()).contiguous();
  at::Tensor init;
  if (thresholds_init.has_value()) {
    TORCH_CHECK(thresholds_init->sizes() == at::IntArrayRef({B, K}), "thresholds_init must be B x K");
    init = thresholds_init->to(x.scalar_type()).contiguous();
  }
  at::Tensor masks = at::empty({B, K, H, W}, x.options());
  at::Tensor thresholds = at::empty({B, K}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "threshold_masks", [&] {
    forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(),
                             init.defined() ? init.data_ptr<scalar_t>() : nullptr, B, K, H * W,
                             sharpness, tol, max_iter, masks.data_ptr<scalar_t>(),
                             thresholds.data_ptr<scalar_t>());
  });
  return {masks, thresholds};
}

// Gradient w.r.t. the schedule, B x 1 x H x W, from dL/dmasks B x K x H x W.
at::Tensor threshold_masks_backward(const at::Tensor& grad, const at::Tensor& masks,
                                    const at::Tensor& thresholds, double sharpness,
                                    bool implicit_grad) {
  TORCH_CHECK(grad.sizes() == masks.sizes() && masks.dim() == 4, "grad and masks must be B x K x H x W");
  TORCH_CHECK(thresholds.sizes() == masks.sizes().slice(0, 2), "thresholds must be B x K");
  const int64_t B = masks.size(0), K = masks.size(1), H = masks.size(2), W = masks.size(3);
  const at::Tensor m = masks.contiguous();
  const at::Tensor g = grad.to(m.scalar_type()).contiguous();
  const at::Tensor t = thresholds.to(m.scalar_type()).contiguous();
  at::Tensor grad_x = at::empty({B, 1, H, W}, m.options());
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "threshold_masks_backward", [&] {
    backward_kernel<scalar_t>(g.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                              t.data_ptr<scalar_t>(), B, K, H * W, sharpness, implicit_grad,
                              grad_x.data_ptr<scalar_t>());
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(sas_fast, CPU, m) {
  m.impl("threshold_masks", &threshold_masks);
  m.impl("threshold_masks_backward", &threshold_masks_backward);
}

}  // namespace sas_fast
