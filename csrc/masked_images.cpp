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
//   implicit (docs/SPEC.md section 3): dL/dx_i = sum_k [G_ki - w_ki (sum_j G_kj) / (sum_j w_kj + 1e-12)],
//   detached: dL/dx_i = sum_k G_ki.
//   Pass 1 (per image and pixel tile) reads the gradient once and writes sum_k G_ki and each
//   tile's partial sums of G and w per mask; these are added up once per mask, in tile order
//   (deterministic), and pass 2 subtracts the implicit term, whose w_ki needs only the schedule.
// The masks are computed in double and rounded to the schedule's dtype, as threshold_masks stores
// them, and factored as there (sigmoid_masks.h): c the mid-range of the image's schedule,
// m_ki = 1 / (1 + e_i exp(s (t_k - c))), e_i = exp(-s (x_i - c)) computed once per pixel and tile,
// so each mask costs a division (vectorised), not an exp, where |s| (max x - min x) < 1200 and
// |s (t_k - c)| < 700; otherwise sigmoid(s (x_i - t_k)) directly.
// Sums over pixels run over kLanes partial sums added in a fixed order: the same bits on every ISA.
#include <torch/library.h>

#include <optional>

#include "common.h"
#include "pyramid_tiles.h"
#include "sigmoid_masks.h"

namespace sas_fast {
namespace {

// m[i] = 1 / (1 + e[i] et) rounded to T, i < len.
template <typename T>
SAS_FAST_ALWAYS_INLINE void factored_masks_body(const double* __restrict e, double et, int64_t len,
                                                T* __restrict m) {
  for (int64_t i = 0; i < len; ++i) m[i] = static_cast<T>(1.0 / (1.0 + e[i] * et));
}
SAS_FAST_MULTIVERSION(factored_masks, factored_masks_body)

// v[i] = 1 - m[i] in T, i < len.
template <typename T>
SAS_FAST_ALWAYS_INLINE void complement_body(const T* __restrict m, int64_t len, T* __restrict v) {
  for (int64_t i = 0; i < len; ++i) v[i] = T(1) - m[i];
}
SAS_FAST_MULTIVERSION(complement, complement_body)

// Per pixel of a tile: gk = dm s' m (1 - m) (s' = (L - 1) s) added to a; sums = (sum gk, sum
// m^2 (1 - m)) over kLanes partial sums.
template <typename T>
SAS_FAST_ALWAYS_INLINE void mask_grad_sums_body(const T* __restrict m, const double* __restrict dm,
                                                int64_t len, double scale, double s,
                                                double* __restrict a, double* sums) {
  double sg[kLanes] = {}, sw[kLanes] = {};
  for (int64_t i0 = 0; i0 < len; i0 += kLanes) {
    const int lanes = static_cast<int>(std::min<int64_t>(kLanes, len - i0));
    if (lanes == kLanes) {
      for (int u = 0; u < kLanes; ++u) {
        const double md = m[i0 + u], gk = dm[i0 + u] * scale * s * md * (1.0 - md);
        a[i0 + u] += gk;
        sg[u] += gk;
        sw[u] += md * md * (1.0 - md);
      }
    } else {
      for (int u = 0; u < lanes; ++u) {
        const double md = m[i0 + u], gk = dm[i0 + u] * scale * s * md * (1.0 - md);
        a[i0 + u] += gk;
        sg[u] += gk;
        sw[u] += md * md * (1.0 - md);
      }
    }
  }
  sums[0] = sums[1] = 0.0;
  for (int u = 0; u < kLanes; ++u) sums[0] += sg[u], sums[1] += sw[u];
}
SAS_FAST_MULTIVERSION(mask_grad_sums, mask_grad_sums_body)

// v[i] -= coef m_i^2 (1 - m_i), i < len.
template <typename T>
SAS_FAST_ALWAYS_INLINE void subtract_implicit_body(const T* __restrict m, int64_t len, double coef,
                                                   double* __restrict v) {
  for (int64_t i = 0; i < len; ++i) {
    const double md = m[i];
    v[i] -= coef * md * md * (1.0 - md);
  }
}
SAS_FAST_MULTIVERSION(subtract_implicit, subtract_implicit_body)

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
  TORCH_CHECK(pyramid.size(1) * pyramid.size(2) * H * W < (int64_t{1} << 31),
              "pyramid: L x C x H x W must stay below 2^31 elements per image, got ", pyramid.sizes());
  return {B, thresholds.size(1), pyramid.size(1), pyramid.size(2), H * W};
}

// The masks of the tiles of one image: at(t, m) writes m_i = sigmoid(s (x_i - t)) rounded to T for
// the tile's pixels (sigmoid_masks.h; e_i computed per tile).
template <typename T>
class TileMasks {
 public:
  // x: the image's schedule (n pixels).
  TileMasks(const T* x, int64_t n, double s) : sigmoid_(make_sigmoid(x, n, s)) {}

  // Moves to the tile [i0, i0 + len).
  void tile(int64_t i0, int64_t len) {
    i0_ = i0, len_ = len;
    if (sigmoid_.factored()) sigmoid_.scales(i0, len, e_);
  }

  void at(T t, T* m) const {
    const double td = static_cast<double>(t);
    if (!std::isfinite(td)) {
      std::fill(m, m + len_, t < T(0) ? T(1) : T(0));
      return;
    }
    double et;
    if (sigmoid_.factored_at(td, &et)) {
      factored_masks(e_, et, len_, m);
    } else {
      for (int64_t i = 0; i < len_; ++i) m[i] = static_cast<T>(sigmoid_.direct(i0_ + i, td));
    }
  }

 private:
  static MidRangeSigmoid<T> make_sigmoid(const T* x, int64_t n, double s) {
    const auto [mn, mx] = std::minmax_element(x, x + n);
    return {x, s, static_cast<double>(*mn), static_cast<double>(*mx)};
  }

  MidRangeSigmoid<T> sigmoid_;
  int64_t i0_ = 0, len_ = 0;
  double e_[kTile];
};

at::Tensor masked_images(const at::Tensor& schedule, const at::Tensor& thresholds,
                         const at::Tensor& pyramid, double sharpness, bool insertion, bool deletion,
                         bool /*implicit_grad: read by the backward*/, bool channels_last) {
  const Shape d = check(schedule, thresholds, pyramid);
  TORCH_CHECK(insertion || deletion, "need at least one of insertion and deletion");
  const at::Tensor x = schedule.contiguous(), t = thresholds.contiguous(), P = pyramid.contiguous();
  const int64_t J = int64_t(insertion) + int64_t(deletion), tiles = (d.n + kTile - 1) / kTile;
  const int64_t H = P.size(3), W = P.size(4);
  at::Tensor out = at::empty({d.B * J * d.K, d.C, H, W}, P.options().memory_format(
      channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "masked_images", [&] {
    const scalar_t *px = x.data_ptr<scalar_t>(), *pt = t.data_ptr<scalar_t>(), *pp = P.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, d.B * tiles, grain_for(J * d.K * d.C * kTile), [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> m(kTile), v(kTile), buffer(channels_last ? d.C * kTile : 0);
      std::optional<TileMasks<scalar_t>> masks;
      int64_t b_masks = -1;  // the image whose TileMasks are built
      for (int64_t tile = t0; tile < t1; ++tile) {
        const int64_t b = tile / tiles, i0 = (tile % tiles) * kTile, len = std::min(d.n - i0, kTile);
        if (b != b_masks) masks.emplace(px + b * d.n, d.n, sharpness), b_masks = b;
        masks->tile(i0, len);
        const scalar_t* pb = pp + b * d.L * d.C * d.n + i0;
        for (int64_t k = 0; k < d.K; ++k) {
          masks->at(pt[b * d.K + k], m.data());
          for (int64_t j = 0; j < J; ++j) {
            const bool del = !insertion || j == 1;
            if (del) complement(m.data(), len, v.data());
            scalar_t* oi = o + ((b * J + j) * d.K + k) * d.C * d.n;
            if (!channels_last) {
              mask_tile(del ? v.data() : m.data(), pb, oi + i0, d.n, len, d.L, d.C, d.n);
              continue;
            }
            mask_tile(del ? v.data() : m.data(), pb, buffer.data(), kTile, len, d.L, d.C, d.n);
            for (int64_t i = 0; i < len; ++i)
              for (int64_t c = 0; c < d.C; ++c) oi[(i0 + i) * d.C + c] = buffer[c * kTile + i];
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
  const bool pixels_contiguous = st[4] == 1;
  // sum_k G per pixel; (sum G, sum w) per image, mask and tile; coef = (sum_j G_kj) /
  // (sum_j w_kj + 1e-12) per image and mask
  std::vector<double> acc(d.B * d.n), partial(2 * d.B * d.K * tiles, 0.0), coef(d.B * d.K);
  at::Tensor grad_x = at::empty({d.B, 1, H, W}, P.options());
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "masked_images_backward", [&] {
    const scalar_t *px = x.data_ptr<scalar_t>(), *pt = t.data_ptr<scalar_t>(), *pp = P.data_ptr<scalar_t>();
    const scalar_t* g = G.data_ptr<scalar_t>();
    const double s = sharpness, scale = double(d.L - 1);
    at::parallel_for(0, d.B * tiles, grain_for(J * d.K * d.C * kTile), [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> m(kTile), v(kTile), buffer(pixels_contiguous ? 0 : d.C * kTile);
      std::vector<double> dm(kTile);
      std::optional<TileMasks<scalar_t>> masks;
      int64_t b_masks = -1;
      for (int64_t tile = t0; tile < t1; ++tile) {
        const int64_t b = tile / tiles, i0 = (tile % tiles) * kTile, len = std::min(d.n - i0, kTile);
        if (b != b_masks) masks.emplace(px + b * d.n, d.n, sharpness), b_masks = b;
        masks->tile(i0, len);
        const scalar_t* pb = pp + b * d.L * d.C * d.n + i0;
        double* a = acc.data() + b * d.n + i0;
        std::fill(a, a + len, 0.0);
        for (int64_t k = 0; k < d.K; ++k) {
          const scalar_t tk = pt[b * d.K + k];
          if (!std::isfinite(static_cast<double>(tk))) continue;  // m exactly 0 or 1: G = w = 0
          masks->at(tk, m.data());
          std::fill(dm.begin(), dm.begin() + len, 0.0);
          for (int64_t j = 0; j < J; ++j) {
            const bool del = !insertion || j == 1;
            if (del) complement(m.data(), len, v.data());
            int64_t gc;
            const scalar_t* gk = contiguous_grad_tile(g + b * st[0] + (j * d.K + k) * st[1] + i0 * st[4],
                                                      st[2], st[4], len, d.C, buffer.data(), &gc);
            mask_dot_tile(del ? v.data() : m.data(), pb, gk, gc, del, dm.data(), len, d.L, d.C, d.n);
          }
          double* part = partial.data() + 2 * ((b * d.K + k) * tiles + tile % tiles);
          mask_grad_sums(m.data(), dm.data(), len, scale, s, a, part);
        }
      }
    });
    if (implicit_grad) {
      for (int64_t l = 0; l < d.B * d.K; ++l) {  // the tiles' sums added in tile order
        const double* part = partial.data() + 2 * l * tiles;
        double sum_g = 0.0, sum_w = 0.0;
        for (int64_t u = 0; u < tiles; ++u) sum_g += part[2 * u], sum_w += part[2 * u + 1];
        coef[l] = sum_g / (sum_w + 1e-12);
      }
    }
    scalar_t* dx = grad_x.data_ptr<scalar_t>();
    at::parallel_for(0, d.B * tiles, grain_for(d.K * kTile), [&](int64_t t0, int64_t t1) {
      std::vector<double> v(kTile);
      std::vector<scalar_t> m(kTile);
      std::optional<TileMasks<scalar_t>> masks;
      int64_t b_masks = -1;
      for (int64_t tile = t0; tile < t1; ++tile) {
        const int64_t b = tile / tiles, i0 = (tile % tiles) * kTile, len = std::min(d.n - i0, kTile);
        std::copy(acc.data() + b * d.n + i0, acc.data() + b * d.n + i0 + len, v.data());
        if (implicit_grad) {
          if (b != b_masks) masks.emplace(px + b * d.n, d.n, sharpness), b_masks = b;
          masks->tile(i0, len);
          for (int64_t k = 0; k < d.K; ++k) {
            const scalar_t tk = pt[b * d.K + k];
            if (!std::isfinite(static_cast<double>(tk))) continue;
            masks->at(tk, m.data());
            subtract_implicit(m.data(), len, coef[b * d.K + k], v.data());
          }
        }
        round_to(v.data(), len, dx + b * d.n + i0);
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
