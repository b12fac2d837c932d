// The per-tile loops of the masking operator (SPEC 2.7), shared by pyramid_mask (pyramid.cpp) and
// the fused masked_images (masked_images.cpp):
//   w = v (L - 1), lev = min(floor(w), L - 2) (and >= 0), f = w - lev,
//   out = (1 - f) P[lev] + f P[lev + 1],  d out / d v = (L - 1) (P[lev + 1] - P[lev]).
// A tile is up to kTile pixels of one image; per tile and mask, a first loop turns the mask values
// into offsets of the lower level (lev C n + i) and, for the forward, weights f, then one loop per
// channel interpolates (forward) or accumulates the gradient (backward, which needs no f):
// contiguous loops the compiler vectorises, the two level reads as gathers.
#pragma once

#include "common.h"

namespace sas_fast {

constexpr int64_t kTile = 1024;  // pixels per work item: the pyramid's tile stays in cache over k

// lev = min(floor(w), L - 2) (and >= 0) of w = v (L - 1), top = L - 2 (clamping before truncating
// gives the same lev as flooring first, and NaN gives 0).
template <typename T>
SAS_FAST_ALWAYS_INLINE int32_t level_of(T w, T top) {
  return static_cast<int32_t>(std::min(top, std::max(T(0), w)));
}

// offset[i] = lev C n + i of the lower level of mask value v[i] (the pixel's value in level lev,
// channel 0), i < len.
template <typename T>
SAS_FAST_ALWAYS_INLINE void level_offsets(const T* __restrict v, int64_t len, int64_t L,
                                          int64_t level_stride, int32_t* __restrict offset) {
  const T top = static_cast<T>(L - 2), scale = static_cast<T>(L - 1);
  const int32_t stride = static_cast<int32_t>(level_stride);
  for (int64_t i = 0; i < len; ++i)
    offset[i] = level_of(v[i] * scale, top) * stride + static_cast<int32_t>(i);
}

// level_offsets and the weights f[i] = w - lev, w = v[i] (L - 1).
template <typename T>
SAS_FAST_ALWAYS_INLINE void levels_of(const T* __restrict v, int64_t len, int64_t L, int64_t level_stride,
                                      int32_t* __restrict offset, T* __restrict f) {
  const T top = static_cast<T>(L - 2), scale = static_cast<T>(L - 1);
  const int32_t stride = static_cast<int32_t>(level_stride);
  for (int64_t i = 0; i < len; ++i) {
    const T w = v[i] * scale;
    const int32_t lev = level_of(w, top);
    offset[i] = lev * stride + static_cast<int32_t>(i);
    f[i] = w - static_cast<T>(lev);
  }
}

// out[c oc + i] = (1 - f) P[lev]_c,i + f P[lev + 1]_c,i for the len pixels of a tile of one mask;
// v: the mask at the tile's first pixel, p: the image's pyramid there (channel stride n, level
// stride C n), o: the output there (channel stride oc).
template <typename T>
SAS_FAST_ALWAYS_INLINE void mask_tile_body(const T* __restrict v, const T* __restrict p, T* __restrict o,
                                           int64_t oc, int64_t len, int64_t L, int64_t C, int64_t n) {
  int32_t offset[kTile];
  T f[kTile];
  levels_of(v, len, L, C * n, offset, f);
  for (int64_t c = 0; c < C; ++c) {
    const T* __restrict lo = p + c * n;
    const T* __restrict hi = lo + C * n;
    T* __restrict out = o + c * oc;
    for (int64_t i = 0; i < len; ++i) out[i] = (T(1) - f[i]) * lo[offset[i]] + f[i] * hi[offset[i]];
  }
}
SAS_FAST_MULTIVERSION(mask_tile, mask_tile_body)

// gv[i] = scale sum_c g[c gc + i] (P[lev + 1]_c,i - P[lev]_c,i), accumulated in T, for the len
// pixels of a tile of one mask (g: the output gradient at the tile's first pixel, channel stride gc).
template <typename T>
SAS_FAST_ALWAYS_INLINE void mask_grad_tile_body(const T* __restrict v, const T* __restrict p,
                                                const T* __restrict g, int64_t gc, T* __restrict gv,
                                                int64_t len, int64_t L, int64_t C, int64_t n, T scale) {
  int32_t offset[kTile];
  T acc[kTile];
  level_offsets(v, len, L, C * n, offset);
  for (int64_t i = 0; i < len; ++i) acc[i] = T(0);
  for (int64_t c = 0; c < C; ++c) {
    const T* __restrict lo = p + c * n;
    const T* __restrict hi = lo + C * n;
    const T* __restrict gch = g + c * gc;
    for (int64_t i = 0; i < len; ++i) acc[i] += gch[i] * (hi[offset[i]] - lo[offset[i]]);
  }
  for (int64_t i = 0; i < len; ++i) gv[i] = scale * acc[i];
}
SAS_FAST_MULTIVERSION(mask_grad_tile, mask_grad_tile_body)

// dv[i] +=/-= sum_c g[c gc + i] (P[lev + 1]_c,i - P[lev]_c,i), accumulated in double (subtracted
// when `negate`: a deletion image, v = 1 - m), for the len pixels of a tile of one mask.
template <typename T>
SAS_FAST_ALWAYS_INLINE void mask_dot_tile_body(const T* __restrict v, const T* __restrict p,
                                               const T* __restrict g, int64_t gc, bool negate,
                                               double* __restrict dv, int64_t len, int64_t L,
                                               int64_t C, int64_t n) {
  int32_t offset[kTile];
  double dot[kTile];
  level_offsets(v, len, L, C * n, offset);
  for (int64_t i = 0; i < len; ++i) dot[i] = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    const T* __restrict lo = p + c * n;
    const T* __restrict hi = lo + C * n;
    const T* __restrict gch = g + c * gc;
    for (int64_t i = 0; i < len; ++i)
      dot[i] += static_cast<double>(gch[i]) *
                (static_cast<double>(hi[offset[i]]) - static_cast<double>(lo[offset[i]]));
  }
  if (negate) {
    for (int64_t i = 0; i < len; ++i) dv[i] -= dot[i];
  } else {
    for (int64_t i = 0; i < len; ++i) dv[i] += dot[i];
  }
}
SAS_FAST_MULTIVERSION(mask_dot_tile, mask_dot_tile_body)

// A tile of the output gradient made readable with channel stride *gc: g points at the tile's
// first pixel, channel stride gs, pixel stride gp; when gp != 1 (the gradient of a sum() arrives
// expanded, gp = 0) the len x C values are copied into buffer (C x kTile) and g, *gc point there.
template <typename T>
inline const T* contiguous_grad_tile(const T* g, int64_t gs, int64_t gp, int64_t len, int64_t C,
                                     T* buffer, int64_t* gc) {
  *gc = gs;
  if (gp == 1) return g;
  for (int64_t c = 0; c < C; ++c) {
    T* row = buffer + c * kTile;
    if (gp == 0) std::fill(row, row + len, g[c * gs]);
    else for (int64_t i = 0; i < len; ++i) row[i] = g[c * gs + i * gp];
  }
  *gc = kTile;
  return buffer;
}

}  // namespace sas_fast
