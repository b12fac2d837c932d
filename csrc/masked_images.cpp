// The model's input batch straight from the schedule (SPEC 2.6-2.7 fused): the masks are never stored.
//
// masked_images: schedule x B x 1 x H x W, solved thresholds t B x K, pyramid P B x L x C x H x W
//   -> B x (J K) x C x H x W, J = number of modes (insertion images first, then deletion images).
//   m_k = sigmoid(s (x - t_k)) (t = +inf / -inf: m = 0 / 1), v = m (insertion) or 1 - m (deletion),
//   w = v (L - 1), lev = min(floor(w), L - 2) (and >= 0), f = w - lev,
//   out = (1 - f) P[lev] + f P[lev + 1]; channels_last writes each image channels-last.
// masked_images_backward: dL/dx B x 1 x H x W from dL/dout, the masks recomputed per pixel:
//   dL/dm_ki = (L - 1) sum_j sign_j sum_c dL/dout_jkci (P[lev_j + 1] - P[lev_j])_ci,
//   sign = +1 (insertion), -1 (deletion); G_ki = dL/dm_ki s m_ki (1 - m_ki), w_ki = m_ki^2 (1 - m_ki);
//   implicit (SPEC section 3): dL/dx_i = sum_k [G_ki - w_ki (sum_j G_kj) / (sum_j w_kj + 1e-12)],
//   detached: dL/dx_i = sum_k G_ki.
//   Pass 1 (per image and pixel tile) reads the gradient once and writes sum_k G_ki and each
//   tile's partial sums of G and w per mask; pass 2 adds them up in a fixed order (deterministic)
//   and subtracts the implicit term, whose w_ki needs only the schedule.
// The masks are computed in double and rounded to the schedule's dtype, as threshold_masks stores them.
#include <torch/library.h>

#include "common.h"

namespace sas_fast {
namespace {

constexpr int64_t kTile = 1024;  // pixels per work item: the pyramid's tile stays in cache over k

// Mask value of pixel x for threshold t, rounded to T.
template <typename T>
inline T mask_value(T x, T t, double s) {
  if (!std::isfinite(static_cast<double>(t))) return t < T(0) ? T(1) : T(0);
  return static_cast<T>(1.0 / (1.0 + std::exp(-s * (static_cast<double>(x) - static_cast<double>(t)))));
}

// Lower level lev = min(floor(v (L - 1)), L - 2) (and >= 0) and weight f = v (L - 1) - lev.
template <typename T>
inline std::pair<int64_t, T> level_of(T v, int64_t L) {
  const T w = v * static_cast<T>(L - 1);
  const int64_t lev = static_cast<int64_t>(std::min(static_cast<T>(L - 2), std::max(T(0), w)));
  return {lev, w - static_cast<T>(lev)};
}

struct Shape {
  int64_t B, K, L, C, n;
};

Shape check(const at::Tensor& schedule, const at::Tensor& thresholds, const at::Tensor& pyramid) {
  TORCH_CHECK(schedule.device().is_cpu() && thresholds.device().is_cpu() && pyramid.device().is_cpu(),
              "inputs must be CPU tensors");
  TORCH_CHECK(pyramid.dim() == 5 && pyramid.size(1) >= 2, "pyramid must be B x L x C x H x W, L >= 2");
  const int64_t B = pyramid.size(0), H = pyramid.size(3), W = pyramid.size(4);
  TORCH_CHECK(schedule.sizes() == at::IntArrayRef({B, 1, H, W}), "schedule must be B x 1 x H x W, got ",
              schedule.sizes());
  TORCH_CHECK(thresholds.dim() == 2 && thresholds.size(0) == B, "thresholds must be B x K");
  TORCH_CHECK(schedule.scalar_type() == pyramid.scalar_type() &&
                  thresholds.scalar_type() == pyramid.scalar_type(), "inputs must have one dtype");
  return {B, thresholds.size(1), pyramid.size(1), pyramid.size(2), H * W};
}

at::Tensor masked_images(const at::Tensor& schedule, const at::Tensor& thresholds,
                         const at::Tensor& pyramid, double sharpness, bool insertion, bool deletion,
                         bool /*implicit_grad: read by the backward*/, bool channels_last) {
  const Shape d = check(schedule, thresholds, pyramid);
  TORCH_CHECK(insertion || deletion, "need at least one of insertion and deletion");
  const at::Tensor x = schedule.contiguous(), t = thresholds.contiguous(), P = pyramid.contiguous();
  const int64_t J = int64_t(insertion) + int64_t(deletion), tiles = (d.n + kTile - 1) / kTile;
  const int64_t H = P.size(3), W = P.size(4);
  // element (b, jk, c, i) at ((b J K + jk) C) n + c sc + i si
  const int64_t sc = channels_last ? 1 : d.n, si = channels_last ? d.C : 1;
  at::Tensor out = at::empty({d.B * J * d.K, d.C, H, W}, P.options().memory_format(
      channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "masked_images", [&] {
    const scalar_t *px = x.data_ptr<scalar_t>(), *pt = t.data_ptr<scalar_t>(), *pp = P.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, d.B * tiles, grain_for(J * d.K * d.C * kTile), [&](int64_t t0, int64_t t1) {
      for (int64_t tile = t0; tile < t1; ++tile) {
        const int64_t b = tile / tiles, i0 = (tile % tiles) * kTile, i1 = std::min(d.n, i0 + kTile);
        const scalar_t* pb = pp + b * d.L * d.C * d.n;
        for (int64_t k = 0; k < d.K; ++k) {
          const scalar_t tk = pt[b * d.K + k];
          for (int64_t i = i0; i < i1; ++i) {
            const scalar_t m = mask_value(px[b * d.n + i], tk, sharpness);
            for (int64_t j = 0; j < J; ++j) {
              const bool del = !insertion || j == 1;
              const auto [lev, f] = level_of(del ? scalar_t(1) - m : m, d.L);
              const scalar_t* lo = pb + lev * d.C * d.n + i;  // level lev, channel 0, pixel i
              scalar_t* oi = o + ((b * J + j) * d.K + k) * d.C * d.n + i * si;
              for (int64_t c = 0; c < d.C; ++c)
                oi[c * sc] = (scalar_t(1) - f) * lo[c * d.n] + f * lo[(d.C + c) * d.n];
            }
          }
        }
      }
    });
  });
  return out.view({d.B, J * d.K, d.C, H, W});
}

at::Tensor masked_images_backward(const at::Tensor& grad, const at::Tensor& schedule,
                                  const at::Tensor& thresholds, const at::Tensor& pyramid,
                                  double sharpness, bool insertion, bool deletion, bool implicit_grad) {
  const Shape d = check(schedule, thresholds, pyramid);
  const int64_t J = int64_t(insertion) + int64_t(deletion), tiles = (d.n + kTile - 1) / kTile;
  const int64_t H = pyramid.size(3), W = pyramid.size(4);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({d.B, J * d.K, d.C, H, W}), "grad must be B x ", J,
              "K x C x H x W, got ", grad.sizes());
  const at::Tensor x = schedule.contiguous(), t = thresholds.contiguous(), P = pyramid.contiguous();
  at::Tensor G = grad.to(P.scalar_type());
  if (G.stride(3) != W * G.stride(4)) G = G.contiguous();  // then pixel i is at i * stride(4)
  const auto st = G.strides();
  std::vector<double> acc(d.B * d.n), partial(2 * d.B * tiles * d.K, 0.0);  // sum_k G; (sum G, sum w)
  at::Tensor grad_x = at::empty({d.B, 1, H, W}, P.options());
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "masked_images_backward", [&] {
    const scalar_t *px = x.data_ptr<scalar_t>(), *pt = t.data_ptr<scalar_t>(), *pp = P.data_ptr<scalar_t>();
    const scalar_t* g = G.data_ptr<scalar_t>();
    const double s = sharpness, scale = double(d.L - 1);
    at::parallel_for(0, d.B * tiles, grain_for(J * d.K * d.C * kTile), [&](int64_t t0, int64_t t1) {
      for (int64_t tile = t0; tile < t1; ++tile) {
        const int64_t b = tile / tiles, i0 = (tile % tiles) * kTile, i1 = std::min(d.n, i0 + kTile);
        const scalar_t* pb = pp + b * d.L * d.C * d.n;
        double* a = acc.data() + b * d.n;
        std::fill(a + i0, a + i1, 0.0);
        for (int64_t k = 0; k < d.K; ++k) {
          const scalar_t tk = pt[b * d.K + k];
          if (!std::isfinite(static_cast<double>(tk))) continue;  // m exactly 0 or 1: G = w = 0
          double sum_g = 0.0, sum_w = 0.0;
          for (int64_t i = i0; i < i1; ++i) {
            const scalar_t m = mask_value(px[b * d.n + i], tk, s);
            double dm = 0.0;
            for (int64_t j = 0; j < J; ++j) {
              const bool del = !insertion || j == 1;
              const int64_t lev = level_of(del ? scalar_t(1) - m : m, d.L).first;
              const scalar_t* lo = pb + lev * d.C * d.n + i;
              const scalar_t* gi = g + b * st[0] + (j * d.K + k) * st[1] + i * st[4];
              double dot = 0.0;
              for (int64_t c = 0; c < d.C; ++c)
                dot += static_cast<double>(gi[c * st[2]]) *
                       (static_cast<double>(lo[(d.C + c) * d.n]) - static_cast<double>(lo[c * d.n]));
              dm += del ? -dot : dot;
            }
            const double md = m, gk = dm * scale * s * md * (1.0 - md);
            a[i] += gk;
            sum_g += gk;
            sum_w += md * md * (1.0 - md);
          }
          double* part = partial.data() + 2 * ((b * tiles + tile % tiles) * d.K + k);
          part[0] = sum_g, part[1] = sum_w;
        }
      }
    });
    scalar_t* dx = grad_x.data_ptr<scalar_t>();
    at::parallel_for(0, d.B * tiles, grain_for(d.K * kTile), [&](int64_t t0, int64_t t1) {
      std::vector<double> coef(d.K);
      for (int64_t tile = t0; tile < t1; ++tile) {
        const int64_t b = tile / tiles, i0 = (tile % tiles) * kTile, i1 = std::min(d.n, i0 + kTile);
        for (int64_t k = 0; k < d.K && implicit_grad; ++k) {
          double sum_g = 0.0, sum_w = 0.0;
          for (int64_t u = 0; u < tiles; ++u) {
            const double* part = partial.data() + 2 * ((b * tiles + u) * d.K + k);
            sum_g += part[0], sum_w += part[1];
          }
          coef[k] = sum_g / (sum_w + 1e-12);
        }
        for (int64_t i = i0; i < i1; ++i) {
          double v = acc[b * d.n + i];
          for (int64_t k = 0; k < d.K && implicit_grad; ++k) {
            const scalar_t tk = pt[b * d.K + k];
            if (!std::isfinite(static_cast<double>(tk))) continue;
            const double m = mask_value(px[b * d.n + i], tk, s);
            v -= coef[k] * m * m * (1.0 - m);
          }
          dx[b * d.n + i] = static_cast<scalar_t>(v);
        }
      }
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(sas_fast, CPU, m) {
  m.impl("masked_images", &masked_images);
  m.impl("masked_images_backward", &masked_images_backward);
}

}  // namespace sas_fast
