// The Extremal-Perturbation blur pyramid and the masking operator (SPEC 2.7).
//
// blur_pyramid: images B x C x H x W -> P, B x L x C x H x W, level l blurred by a separable
// Gaussian of sigma = max_blur (1 - l / (L - 1)), taps -ceil(4 sigma)..ceil(4 sigma), zero padding.
// pyramid_mask: (P, masks B x K x H x W) -> B x K x C x H x W,
//   w = m (L - 1), k = min(floor(w), L - 2) (and >= 0), f = w - k, out = (1 - f) P[k] + f P[k + 1];
//   backward: dL/dm = (L - 1) sum_c dL/dout_c (P[k + 1]_c - P[k]_c).
// Both kernels loop over the K masks within a tile of kTile pixels of one image, so that the
// tile of the pyramid (L x C x kTile values) stays in cache (the tile loops: pyramid_tiles.h).
#include <torch/library.h>

#include "common.h"
#include "pyramid_tiles.h"

namespace sas_fast {
namespace {

at::Tensor blur_pyramid(const at::Tensor& images, int64_t levels, double max_blur) {
  TORCH_CHECK(images.device().is_cpu(), "images must be a CPU tensor");
  TORCH_CHECK(images.dim() == 4, "images must be B x C x H x W, got ", images.sizes());
  TORCH_CHECK(levels >= 2 && max_blur >= 0, "need levels >= 2 and max_blur >= 0");
  const at::Tensor x = images.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), n = H * W;
  at::Tensor out = at::empty({B, levels, C, H, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "blur_pyramid", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    for (int64_t l = 0; l < levels; ++l) {
      const double sigma = max_blur * (1.0 - double(l) / double(levels - 1));
      const int64_t radius = static_cast<int64_t>(std::ceil(4.0 * sigma));
      const std::vector<double> taps = gaussian_taps(sigma, radius);
      for (int64_t b = 0; b < B; ++b)
        separable_correlate(src + b * C * n, n, dst + (b * levels + l) * C * n, n, C, H, W, H, W,
                            taps, radius);
    }
  });
  return out;
}

void check_pair(const at::Tensor& pyramid, const at::Tensor& masks) {
  TORCH_CHECK(pyramid.device().is_cpu() && masks.device().is_cpu(), "inputs must be CPU tensors");
  TORCH_CHECK(pyramid.dim() == 5 && masks.dim() == 4 && pyramid.size(0) == masks.size(0) &&
                  pyramid.size(3) == masks.size(2) && pyramid.size(4) == masks.size(3),
              "need pyramid B x L x C x H x W and masks B x K x H x W, got ", pyramid.sizes(),
              " and ", masks.sizes());
  TORCH_CHECK(pyramid.size(1) >= 2, "the pyramid needs at least 2 levels");
  TORCH_CHECK(pyramid.size(1) * pyramid.size(2) * pyramid.size(3) * pyramid.size(4) < (int64_t{1} << 31),
              "pyramid: L x C x H x W must stay below 2^31 elements per image, got ", pyramid.sizes());
  TORCH_CHECK(pyramid.scalar_type() == masks.scalar_type(), "pyramid and masks must have one dtype");
}

at::Tensor pyramid_mask(const at::Tensor& pyramid, const at::Tensor& masks) {
  check_pair(pyramid, masks);
  const at::Tensor P = pyramid.contiguous(), M = masks.contiguous();
  const int64_t B = P.size(0), L = P.size(1), C = P.size(2), K = M.size(1), n = M.size(2) * M.size(3);
  const int64_t tiles = (n + kTile - 1) / kTile;
  at::Tensor out = at::empty({B, K, C, M.size(2), M.size(3)}, P.options());
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "pyramid_mask", [&] {
    const scalar_t *p = P.data_ptr<scalar_t>(), *m = M.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * tiles, grain_for(K * C * kTile), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / tiles, i0 = (t % tiles) * kTile, len = std::min(n - i0, kTile);
        for (int64_t k = 0; k < K; ++k)
          mask_tile(m + (b * K + k) * n + i0, p + b * L * C * n + i0, o + (b * K + k) * C * n + i0,
                    n, len, L, C, n);
      }
    });
  });
  return out;
}

// dL/dmasks, B x K x H x W, from dL/dout B x K x C x H x W. A gradient whose pixels are not
// contiguous (that of a sum() arrives expanded, stride 0) is read in place, a tile at a time
// copied into a contiguous buffer, never materialised whole.
at::Tensor pyramid_mask_backward(const at::Tensor& grad, const at::Tensor& pyramid,
                                 const at::Tensor& masks) {
  check_pair(pyramid, masks);
  const at::Tensor P = pyramid.contiguous(), M = masks.contiguous();
  const int64_t B = P.size(0), L = P.size(1), C = P.size(2), K = M.size(1);
  const int64_t H = M.size(2), W = M.size(3), n = H * W;
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({B, K, C, H, W}), "grad must be B x K x C x H x W, got ",
              grad.sizes());
  at::Tensor G = grad.to(P.scalar_type());
  if (G.stride(3) != W * G.stride(4)) G = G.contiguous();  // then pixel i is at i * stride(4)
  const auto st = G.strides();
  const bool pixels_contiguous = st[4] == 1;
  const int64_t tiles = (n + kTile - 1) / kTile;
  at::Tensor grad_m = at::empty_like(M);
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "pyramid_mask_backward", [&] {
    const scalar_t *p = P.data_ptr<scalar_t>(), *m = M.data_ptr<scalar_t>(), *g = G.data_ptr<scalar_t>();
    scalar_t* gm = grad_m.data_ptr<scalar_t>();
    const scalar_t scale = static_cast<scalar_t>(L - 1);
    at::parallel_for(0, B * tiles, grain_for(K * C * kTile), [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> buffer(pixels_contiguous ? 0 : C * kTile);  // a tile of g, C x kTile
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / tiles, i0 = (t % tiles) * kTile, len = std::min(n - i0, kTile);
        for (int64_t k = 0; k < K; ++k) {
          int64_t gc;
          const scalar_t* gk = contiguous_grad_tile(g + b * st[0] + k * st[1] + i0 * st[4], st[2], st[4],
                                                    len, C, buffer.data(), &gc);
          mask_grad_tile(m + (b * K + k) * n + i0, p + b * L * C * n + i0, gk, gc,
                         gm + (b * K + k) * n + i0, len, L, C, n, scale);
        }
      }
    });
  });
  return grad_m;
}

}  // namespace

TORCH_LIBRARY_IMPL(sas_fast, CPU, m) {
  m.impl("blur_pyramid", &blur_pyramid);
  m.impl("pyramid_mask", &pyramid_mask);
  m.impl("pyramid_mask_backward", &pyramid_mask_backward);
}

}  // namespace sas_fast
