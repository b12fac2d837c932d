// Schedule = SoftMaxPool(Smooth(premask)) (paper eq. 2), forward and backward.
//
// Smooth: valid separable Gaussian, premask B x 1 x (H+2r) x (W+2r) -> x, B x 1 x H x W,
// sigma = (ws - 1) / 4. SoftMaxPool over the ws x ws window N(i) of x reflection-padded by r:
//   out_i = sum_{j in N(i)} p_ij x_j,  p_ij = exp(beta x_j - M_i) / E_i,
//   M_i = max_{N(i)} beta x,  E_i = sum_{N(i)} exp(beta x_j - M_i).
// Backward: dL/dx_j = sum_{i: j in N(i)} g_i p_ij (1 + beta (x_j - out_i))
//   = exp(beta x_j - mu_j) [C_j (1 + beta x_j) - beta D_j],  mu_j = min_{i: j in N(i)} M_i,
//   C_j = sum_i (g_i / E_i) exp(mu_j - M_i),  D_j = sum_i (g_i out_i / E_i) exp(mu_j - M_i).
// Every exponent is <= 0, so nothing overflows for any range of x. Both window reductions are
// associative merges of small records, done separably (rows, then columns) with the van Herk /
// Gil-Werman scheme: 3 merges (3 exp) per pixel and pass, whatever the window.
#include <torch/library.h>

#include "common.h"

namespace sas_fast {
namespace {

// Online-softmax record of a set X: m = max beta x, e = sum exp(beta x - m), t = sum x exp(beta x - m).
struct Soft {
  double m, e, t;
};

// Backward record of a set I of output pixels: mu = min M_i, c = sum c_i exp(mu - M_i), d likewise.
struct Back {
  double mu, c, d;
};

// Merges rescale the record further from the reference by exp(<= 0).
inline Soft merge(const Soft& a, const Soft& b) {
  const Soft& hi = a.m >= b.m ? a : b;
  const Soft& lo = a.m >= b.m ? b : a;
  const double s = std::exp(lo.m - hi.m);
  return {hi.m, hi.e + lo.e * s, hi.t + lo.t * s};
}

constexpr Back kBackEmpty{INFINITY, 0.0, 0.0};

inline Back merge(const Back& a, const Back& b) {
  const Back& lo = a.mu <= b.mu ? a : b;
  const Back& hi = a.mu <= b.mu ? b : a;
  if (std::isinf(hi.mu)) return lo;
  const double s = std::exp(lo.mu - hi.mu);
  return {lo.mu, lo.c + hi.c * s, lo.d + hi.d * s};
}

// res[i] = v[i] + ... + v[i + w - 1] (merge), i in [0, n - w], with 3 merges per element:
// per-block prefixes and suffixes (blocks of w), one suffix + one prefix per window.
template <typename R>
void window_fold(const std::vector<R>& v, int64_t w, std::vector<R>& pre, std::vector<R>& suf,
                 std::vector<R>& res) {
  const int64_t n = static_cast<int64_t>(v.size());
  for (int64_t j = 0; j < n; ++j) pre[j] = j % w == 0 ? v[j] : merge(pre[j - 1], v[j]);
  for (int64_t j = n - 1; j >= 0; --j)
    suf[j] = (j == n - 1 || (j + 1) % w == 0) ? v[j] : merge(v[j], suf[j + 1]);
  for (int64_t i = 0; i + w <= n; ++i)
    res[i] = i % w == 0 ? pre[i + w - 1] : merge(suf[i], pre[i + w - 1]);
}

// Window folds over `lines` independent lines of length n, in parallel: load(line, v) fills the
// input, store(line, res) consumes the n - w + 1 window records.
template <typename R, typename Load, typename Store>
void fold_lines(int64_t lines, int64_t n, int64_t w, Load load, Store store) {
  at::parallel_for(0, lines, grain_for(16 * n), [&](int64_t l0, int64_t l1) {
    std::vector<R> v(n), pre(n), suf(n), res(n - w + 1);
    for (int64_t l = l0; l < l1; ++l) {
      load(l, v);
      window_fold(v, w, pre, suf, res);
      store(l, res);
    }
  });
}

// Index into [0, n) of position p of a reflection-padded line (edge not repeated).
inline int64_t reflect(int64_t p, int64_t n) {
  return p < 0 ? -p : (p >= n ? 2 * (n - 1) - p : p);
}

template <typename T>
void forward_kernel(const T* pm, int64_t B, int64_t H, int64_t W, int64_t ws, double beta,
                    T* x, T* out, double* stats) {
  const int64_t r = ws / 2, Hp = H + 2 * r, Wp = W + 2 * r;
  separable_correlate(pm, Hp * Wp, x, H * W, B, Hp, Wp, H, W, gaussian_taps((ws - 1) / 4.0, r), 0);
  std::vector<Soft> rows(B * Hp * W);  // row-window records, B x Hp x W
  fold_lines<Soft>(
      B * Hp, Wp, ws,
      [&](int64_t l, std::vector<Soft>& v) {
        const T* xr = x + (l / Hp) * H * W + reflect(l % Hp - r, H) * W;
        for (int64_t j = 0; j < Wp; ++j) {
          const double xv = xr[reflect(j - r, W)];
          v[j] = {beta * xv, 1.0, xv};
        }
      },
      [&](int64_t l, const std::vector<Soft>& res) {
        std::copy(res.begin(), res.end(), rows.begin() + l * W);
      });
  fold_lines<Soft>(
      B * W, Hp, ws,
      [&](int64_t l, std::vector<Soft>& v) {
        const Soft* col = rows.data() + (l / W) * Hp * W + l % W;
        for (int64_t p = 0; p < Hp; ++p) v[p] = col[p * W];
      },
      [&](int64_t l, const std::vector<Soft>& res) {
        const int64_t b = l / W, i = l % W;
        for (int64_t y = 0; y < H; ++y) {
          const int64_t k = b * H * W + y * W + i;
          out[k] = static_cast<T>(res[y].t / res[y].e);
          stats[(2 * b) * H * W + y * W + i] = res[y].m;
          stats[(2 * b + 1) * H * W + y * W + i] = res[y].e;
        }
      });
}

template <typename T>
void backward_kernel(const T* grad, const T* x, const T* out, const double* stats, int64_t B,
                     int64_t H, int64_t W, int64_t ws, double beta, T* grad_pm) {
  const int64_t r = ws / 2, Hp = H + 2 * r, Wp = W + 2 * r, n = H * W;
  std::vector<Back> rows(B * H * Wp);  // transposed row-window records, B x H x Wp
  fold_lines<Back>(
      B * H, Wp + 2 * r, ws,
      [&](int64_t l, std::vector<Back>& v) {
        const int64_t b = l / H, o = b * n + (l % H) * W;
        const double* m = stats + 2 * b * n + (l % H) * W;  // row of M; E is n further
        const double* e = m + n;
        std::fill(v.begin(), v.end(), kBackEmpty);
        for (int64_t i = 0; i < W; ++i) {
          const double c = static_cast<double>(grad[o + i]) / e[i];
          v[i + 2 * r] = {m[i], c, c * static_cast<double>(out[o + i])};
        }
      },
      [&](int64_t l, const std::vector<Back>& res) {
        std::copy(res.begin(), res.end(), rows.begin() + l * Wp);
      });
  std::vector<double> gx(B * n, 0.0);  // gradient w.r.t. the smoothed x, B x H x W
  std::vector<double> gxp(B * Hp * Wp);  // ... w.r.t. its reflection-padded copy
  fold_lines<Back>(
      B * Wp, Hp + 2 * r, ws,
      [&](int64_t l, std::vector<Back>& v) {
        const Back* col = rows.data() + (l / Wp) * H * Wp + l % Wp;
        std::fill(v.begin(), v.end(), kBackEmpty);
        for (int64_t y = 0; y < H; ++y) v[y + 2 * r] = col[y * Wp];
      },
      [&](int64_t l, const std::vector<Back>& res) {
        const int64_t b = l / Wp, j = l % Wp, xj = reflect(j - r, W);
        for (int64_t p = 0; p < Hp; ++p) {
          const double bx = beta * static_cast<double>(x[b * n + reflect(p - r, H) * W + xj]);
          const Back& q = res[p];
          gxp[(b * Hp + p) * Wp + j] = std::exp(bx - q.mu) * (q.c * (1.0 + bx) - beta * q.d);
        }
      });
  at::parallel_for(0, B, grain_for(Hp * Wp), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t p = 0; p < Hp; ++p)
        for (int64_t j = 0; j < Wp; ++j)
          gx[b * n + reflect(p - r, H) * W + reflect(j - r, W)] += gxp[(b * Hp + p) * Wp + j];
  });
  separable_correlate(gx.data(), n, grad_pm, Hp * Wp, B, H, W, Hp, Wp,
                      gaussian_taps((ws - 1) / 4.0, r), 2 * r);
}

void check_image(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4 && t.size(1) == 1, name, " must be B x 1 x H x W, got ", t.sizes());
}

// premask B x 1 x (H+2r) x (W+2r) -> (schedule, smoothed B x 1 x H x W, stats B x 2 x H x W
// float64 holding M and E, kept for the backward).
std::tuple<at::Tensor, at::Tensor, at::Tensor> smooth_softmax_pool(const at::Tensor& premask,
                                                                   int64_t window, double beta) {
  check_image(premask, "premask");
  TORCH_CHECK(window >= 1 && window % 2 == 1, "window must be a positive odd integer");
  const int64_t r = window / 2, B = premask.size(0);
  const int64_t H = premask.size(2) - 2 * r, W = premask.size(3) - 2 * r;
  TORCH_CHECK(H >= window && W >= window, "premask is too small for window ", window);
  const at::Tensor pm = premask.contiguous();
  at::Tensor x = at::empty({B, 1, H, W}, pm.options());
  at::Tensor out = at::empty_like(x);
  at::Tensor stats = at::empty({B, 2, H, W}, pm.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(pm.scalar_type(), "smooth_softmax_pool", [&] {
    forward_kernel<scalar_t>(pm.data_ptr<scalar_t>(), B, H, W, window, beta,
                             x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                             stats.data_ptr<double>());
  });
  return {out, x, stats};
}

// Gradient w.r.t. the premask, B x 1 x (H+2r) x (W+2r), from the output gradient B x 1 x H x W.
at::Tensor smooth_softmax_pool_backward(const at::Tensor& grad, const at::Tensor& smoothed,
                                        const at::Tensor& out, const at::Tensor& stats,
                                        int64_t window, double beta) {
  check_image(grad, "grad");
  TORCH_CHECK(grad.sizes() == smoothed.sizes() && grad.sizes() == out.sizes(),
              "grad, smoothed and out must have one shape");
  TORCH_CHECK(stats.scalar_type() == at::kDouble, "stats must be float64");
  const int64_t r = window / 2, B = grad.size(0), H = grad.size(2), W = grad.size(3);
  const at::Tensor g = grad.contiguous().to(smoothed.scalar_type());
  const at::Tensor x = smoothed.contiguous(), o = out.contiguous(), st = stats.contiguous();
  at::Tensor grad_pm = at::empty({B, 1, H + 2 * r, W + 2 * r}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "smooth_softmax_pool_backward", [&] {
    backward_kernel<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                              o.data_ptr<scalar_t>(), st.data_ptr<double>(), B, H, W, window,
                              beta, grad_pm.data_ptr<scalar_t>());
  });
  return grad_pm;
}

}  // namespace

TORCH_LIBRARY_IMPL(sas_fast, CPU, m) {
  m.impl("smooth_softmax_pool", &smooth_softmax_pool);
  m.impl("smooth_softmax_pool_backward", &smooth_softmax_pool_backward);
}

}  // namespace sas_fast
