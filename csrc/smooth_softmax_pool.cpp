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
// Gil-Werman scheme: 3 merges (3 exp) per pixel and pass, whatever the window, on 8 lines at once
// (one per vector lane; the merges' exp in plain arithmetic, exp_nonpositive).
#include <torch/library.h>

#include <cstring>

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

constexpr Back kBackEmpty{INFINITY, 0.0, 0.0};

// exp(x) for x <= 0 (NaN stays NaN) in plain arithmetic, so that the lane loops below vectorise
// with the same bits on every ISA: x = n ln2 + r, n = round(x / ln2), |r| <= ln2 / 2 (ln2 in two
// parts, n ln2_hi exact), exp(r) by its Taylor polynomial to degree 13 (remainder < 5e-18), 2^n
// from the exponent bits. x < -708 (2^n would be subnormal; exp(x) < 4e-308) gives 0.
SAS_FAST_ALWAYS_INLINE double exp_nonpositive(double x) {
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kInvLn2 = 1.44269504088896338700e+00;
  const double xc = x < -708.0 ? -708.0 : x;
  const double k = xc * kInvLn2 + kShift, n = k - kShift;
  const double r = (xc - n * kLn2Hi) - n * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // 1 / 13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  int64_t bits;
  std::memcpy(&bits, &k, sizeof bits);  // 2^51 + n in the low bits: n + 1023 into the exponent
  bits = static_cast<int64_t>(static_cast<uint64_t>(bits + 1023) << 52);
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < -708.0 ? 0.0 : p * scale;
}

// kLines records, one per lane (line): the folds run over kLines lines at once.
constexpr int kLines = 8;

struct SoftLanes {
  double m[kLines], e[kLines], t[kLines];
};

struct BackLanes {
  double mu[kLines], c[kLines], d[kLines];
};

// Merges rescale the record further from the reference by exp(<= 0).
SAS_FAST_ALWAYS_INLINE void merge(const SoftLanes& a, const SoftLanes& b, SoftLanes& out) {
  for (int u = 0; u < kLines; ++u) {
    const bool a_hi = a.m[u] >= b.m[u];
    const double hm = a_hi ? a.m[u] : b.m[u], lm = a_hi ? b.m[u] : a.m[u];
    const double he = a_hi ? a.e[u] : b.e[u], le = a_hi ? b.e[u] : a.e[u];
    const double ht = a_hi ? a.t[u] : b.t[u], lt = a_hi ? b.t[u] : a.t[u];
    const double s = exp_nonpositive(lm - hm);
    out.m[u] = hm, out.e[u] = he + le * s, out.t[u] = ht + lt * s;
  }
}

// An empty record (mu = inf) merged in leaves the other unchanged.
SAS_FAST_ALWAYS_INLINE void merge(const BackLanes& a, const BackLanes& b, BackLanes& out) {
  for (int u = 0; u < kLines; ++u) {
    const bool a_lo = a.mu[u] <= b.mu[u];
    const double lm = a_lo ? a.mu[u] : b.mu[u], hm = a_lo ? b.mu[u] : a.mu[u];
    const double lc = a_lo ? a.c[u] : b.c[u], hc = a_lo ? b.c[u] : a.c[u];
    const double ld = a_lo ? a.d[u] : b.d[u], hd = a_lo ? b.d[u] : a.d[u];
    const double s = hm == INFINITY ? 0.0 : exp_nonpositive(lm - hm);
    out.mu[u] = lm, out.c[u] = lc + hc * s, out.d[u] = ld + hd * s;
  }
}

// res[i] = v[i] + ... + v[i + w - 1] (merge), i in [0, n - w], for kLines lines at once, with 3
// merges per element: per-block prefixes and suffixes (blocks of w), one suffix + one prefix per window.
template <typename R>
SAS_FAST_ALWAYS_INLINE void window_fold_body(const R* __restrict v, int64_t n, int64_t w, R* __restrict pre,
                                             R* __restrict suf, R* __restrict res) {
  for (int64_t j = 0; j < n; ++j) {
    if (j % w == 0) pre[j] = v[j];
    else merge(pre[j - 1], v[j], pre[j]);
  }
  for (int64_t j = n - 1; j >= 0; --j) {
    if (j == n - 1 || (j + 1) % w == 0) suf[j] = v[j];
    else merge(v[j], suf[j + 1], suf[j]);
  }
  for (int64_t i = 0; i + w <= n; ++i) {
    if (i % w == 0) res[i] = pre[i + w - 1];
    else merge(suf[i], pre[i + w - 1], res[i]);
  }
}
SAS_FAST_MULTIVERSION(window_fold, window_fold_body)

// Window folds over `lines` independent lines of length n, kLines at a time, in parallel:
// load(l0, count, v) fills the lanes u < count of the input with lines l0 + u (the other lanes are
// copies of lane 0), store(l0, count, res) consumes the n - w + 1 window records of those lanes.
template <typename R, typename Load, typename Store>
void fold_lines(int64_t lines, int64_t n, int64_t w, Load load, Store store) {
  const int64_t groups = (lines + kLines - 1) / kLines;
  at::parallel_for(0, groups, grain_for(16 * kLines * n), [&](int64_t g0, int64_t g1) {
    std::vector<R> v(n), pre(n), suf(n), res(n - w + 1);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t l0 = g * kLines, count = std::min<int64_t>(kLines, lines - l0);
      load(l0, count, v);
      window_fold(v.data(), n, w, pre.data(), suf.data(), res.data());
      store(l0, count, res);
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
  fold_lines<SoftLanes>(
      B * Hp, Wp, ws,
      [&](int64_t l0, int64_t count, std::vector<SoftLanes>& v) {
        for (int u = 0; u < kLines; ++u) {
          const int64_t l = l0 + (u < count ? u : 0);
          const T* xr = x + (l / Hp) * H * W + reflect(l % Hp - r, H) * W;
          for (int64_t j = 0; j < Wp; ++j) {
            const double xv = xr[reflect(j - r, W)];
            v[j].m[u] = beta * xv, v[j].e[u] = 1.0, v[j].t[u] = xv;
          }
        }
      },
      [&](int64_t l0, int64_t count, const std::vector<SoftLanes>& res) {
        for (int u = 0; u < count; ++u)
          for (int64_t i = 0; i < W; ++i) rows[(l0 + u) * W + i] = {res[i].m[u], res[i].e[u], res[i].t[u]};
      });
  fold_lines<SoftLanes>(
      B * W, Hp, ws,
      [&](int64_t l0, int64_t count, std::vector<SoftLanes>& v) {
        for (int u = 0; u < kLines; ++u) {
          const int64_t l = l0 + (u < count ? u : 0);
          const Soft* col = rows.data() + (l / W) * Hp * W + l % W;
          for (int64_t p = 0; p < Hp; ++p) v[p].m[u] = col[p * W].m, v[p].e[u] = col[p * W].e, v[p].t[u] = col[p * W].t;
        }
      },
      [&](int64_t l0, int64_t count, const std::vector<SoftLanes>& res) {
        for (int u = 0; u < count; ++u) {
          const int64_t b = (l0 + u) / W, i = (l0 + u) % W;
          for (int64_t y = 0; y < H; ++y) {
            const int64_t k = b * H * W + y * W + i;
            out[k] = static_cast<T>(res[y].t[u] / res[y].e[u]);
            stats[(2 * b) * H * W + y * W + i] = res[y].m[u];
            stats[(2 * b + 1) * H * W + y * W + i] = res[y].e[u];
          }
        }
      });
}

template <typename T>
void backward_kernel(const T* grad, const T* x, const T* out, const double* stats, int64_t B,
                     int64_t H, int64_t W, int64_t ws, double beta, T* grad_pm) {
  const int64_t r = ws / 2, Hp = H + 2 * r, Wp = W + 2 * r, n = H * W;
  std::vector<Back> rows(B * H * Wp);  // transposed row-window records, B x H x Wp
  fold_lines<BackLanes>(
      B * H, Wp + 2 * r, ws,
      [&](int64_t l0, int64_t count, std::vector<BackLanes>& v) {
        for (int u = 0; u < kLines; ++u) {
          const int64_t l = l0 + (u < count ? u : 0), b = l / H, o = b * n + (l % H) * W;
          const double* m = stats + 2 * b * n + (l % H) * W;  // row of M; E is n further
          const double* e = m + n;
          for (int64_t j = 0; j < Wp + 2 * r; ++j)
            v[j].mu[u] = kBackEmpty.mu, v[j].c[u] = kBackEmpty.c, v[j].d[u] = kBackEmpty.d;
          for (int64_t i = 0; i < W; ++i) {
            const double c = static_cast<double>(grad[o + i]) / e[i];
            v[i + 2 * r].mu[u] = m[i], v[i + 2 * r].c[u] = c, v[i + 2 * r].d[u] = c * static_cast<double>(out[o + i]);
          }
        }
      },
      [&](int64_t l0, int64_t count, const std::vector<BackLanes>& res) {
        for (int u = 0; u < count; ++u)
          for (int64_t j = 0; j < Wp; ++j) rows[(l0 + u) * Wp + j] = {res[j].mu[u], res[j].c[u], res[j].d[u]};
      });
  std::vector<double> gx(B * n, 0.0);  // gradient w.r.t. the smoothed x, B x H x W
  std::vector<double> gxp(B * Hp * Wp);  // ... w.r.t. its reflection-padded copy
  fold_lines<BackLanes>(
      B * Wp, Hp + 2 * r, ws,
      [&](int64_t l0, int64_t count, std::vector<BackLanes>& v) {
        for (int u = 0; u < kLines; ++u) {
          const int64_t l = l0 + (u < count ? u : 0);
          const Back* col = rows.data() + (l / Wp) * H * Wp + l % Wp;
          for (int64_t p = 0; p < Hp + 2 * r; ++p)
            v[p].mu[u] = kBackEmpty.mu, v[p].c[u] = kBackEmpty.c, v[p].d[u] = kBackEmpty.d;
          for (int64_t y = 0; y < H; ++y)
            v[y + 2 * r].mu[u] = col[y * Wp].mu, v[y + 2 * r].c[u] = col[y * Wp].c, v[y + 2 * r].d[u] = col[y * Wp].d;
        }
      },
      [&](int64_t l0, int64_t count, const std::vector<BackLanes>& res) {
        for (int u = 0; u < count; ++u) {
          const int64_t b = (l0 + u) / Wp, j = (l0 + u) % Wp, xj = reflect(j - r, W);
          for (int64_t p = 0; p < Hp; ++p) {
            const double bx = beta * static_cast<double>(x[b * n + reflect(p - r, H) * W + xj]);
            gxp[(b * Hp + p) * Wp + j] = std::exp(bx - res[p].mu[u]) * (res[p].c[u] * (1.0 + bx) - beta * res[p].d[u]);
          }
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
