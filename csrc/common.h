// Helpers shared by the SaS CPU kernels: runtime choice of the instruction set, Gaussian taps
// and a separable 2-D correlation.
//
// Vectorisation: each hot loop is an always-inline template ("body") compiled three times by
// SAS_FAST_MULTIVERSION, for x86-64 baseline (SSE2), AVX2 + FMA and AVX-512 (F/BW/VL/DQ), and
// the copy for active_isa() runs. The loops are written so that the compiler vectorises them
// (contiguous pixels, no early exits, reductions over explicit lanes in a fixed order), and
// setup.py compiles with -ffp-contract=off: every ISA rounds the same operations in the same
// order, so the three copies give bit-identical results.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace sas_fast {

enum class Isa { kBase, kAvx2, kAvx512 };

// The instruction set the kernels use: torch's CPU capability (at::get_cpu_capability(), which
// ATEN_CPU_CAPABILITY=default / avx2 / avx512 lowers), never above what this CPU supports.
// Read once per process, like torch's own.
inline Isa active_isa() {
#if defined(__GNUC__) && defined(__x86_64__)
  static const Isa isa = [] {
    const std::string cap = at::get_cpu_capability();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512dq");
    if (cap == "AVX512" && avx512) return Isa::kAvx512;
    if ((cap == "AVX512" || cap == "AVX2") && avx2) return Isa::kAvx2;
    return Isa::kBase;
  }();
  return isa;
#else
  return Isa::kBase;
#endif
}

#define SAS_FAST_ALWAYS_INLINE inline __attribute__((always_inline))

// Partial sums of the reductions over pixels: pixel i in lane i mod kLanes, the lanes added up in
// order 0..kLanes-1 (one AVX-512 register of doubles).
constexpr int kLanes = 8;

#if defined(__GNUC__) && defined(__x86_64__)
#define SAS_FAST_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define SAS_FAST_TARGET_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")))
#else
#define SAS_FAST_TARGET_AVX2
#define SAS_FAST_TARGET_AVX512
#endif

// Defines `name(args...)`: calls the always-inline function template `body(args...)` compiled for
// active_isa() (the body is inlined into one wrapper per instruction set).
#define SAS_FAST_MULTIVERSION(name, body)                                          \
  template <typename... A>                                                          \
  SAS_FAST_TARGET_AVX512 void name##_avx512(A... a) { body(a...); }                 \
  template <typename... A>                                                          \
  SAS_FAST_TARGET_AVX2 void name##_avx2(A... a) { body(a...); }                     \
  template <typename... A>                                                          \
  void name##_base(A... a) { body(a...); }                                          \
  template <typename... A>                                                          \
  void name(A... a) {                                                               \
    switch (active_isa()) {                                                         \
      case Isa::kAvx512: return name##_avx512(a...);                                \
      case Isa::kAvx2: return name##_avx2(a...);                                    \
      default: return name##_base(a...);                                            \
    }                                                                               \
  }

// dst[i] = src[i] rounded to T, i < n.
template <typename T>
SAS_FAST_ALWAYS_INLINE void round_to_body(const double* __restrict src, int64_t n, T* __restrict dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}
SAS_FAST_MULTIVERSION(round_to, round_to_body)

// at::parallel_for grain (in items) for items of about `work` simple operations each, so that a
// thread gets at least ~2^18 of them: small problems (a 32 x 32 image) stay on one thread, where
// a parallel region costs more than it saves (much more on an oversubscribed machine).
inline int64_t grain_for(int64_t work) {
  return std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, work));
}

// Normalised 1-D Gaussian exp(-x^2 / (2 sigma^2)), x = -radius..radius; sigma <= 0: identity.
inline std::vector<double> gaussian_taps(double sigma, int64_t radius) {
  std::vector<double> taps(2 * radius + 1);
  double total = 0.0;
  for (int64_t i = -radius; i <= radius; ++i) {
    double v = sigma > 0 ? std::exp(-double(i * i) / (2.0 * sigma * sigma)) : double(i == 0);
    taps[i + radius] = v;
    total += v;
  }
  for (double& v : taps) v /= total;
  return taps;
}

// One row of the separable correlation: dst[x] += sum_b g[b] src[x + b - off], x < wo, the
// source row zero outside [0, wi) (n taps, accumulated in double).
template <typename TI>
SAS_FAST_ALWAYS_INLINE void correlate_row_body(const TI* __restrict src, double* __restrict dst,
                                               const double* __restrict g, int64_t n, int64_t off,
                                               int64_t wi, int64_t wo) {
  for (int64_t b = 0; b < n; ++b) {
    const int64_t s = b - off, x0 = std::max<int64_t>(0, -s), x1 = std::min(wo, wi - s);
    const double gb = g[b];
    for (int64_t x = x0; x < x1; ++x) dst[x] += gb * static_cast<double>(src[x + s]);
  }
}
SAS_FAST_MULTIVERSION(correlate_row, correlate_row_body)

// One output row of the column pass: dst[x] = sum_{a < taps} g[a] rows[a][x], rows[a] at
// rows + a * wo (acc: wo doubles of scratch).
template <typename TO>
SAS_FAST_ALWAYS_INLINE void correlate_column_body(const double* __restrict rows, const double* __restrict g,
                                                  int64_t taps, int64_t wo, double* __restrict acc,
                                                  TO* __restrict dst) {
  for (int64_t x = 0; x < wo; ++x) acc[x] = 0.0;
  for (int64_t a = 0; a < taps; ++a) {
    const double* __restrict src = rows + a * wo;
    const double ga = g[a];
    for (int64_t x = 0; x < wo; ++x) acc[x] += ga * src[x];
  }
  for (int64_t x = 0; x < wo; ++x) dst[x] = static_cast<TO>(acc[x]);
}
SAS_FAST_MULTIVERSION(correlate_column, correlate_column_body)

// For each of `planes` planes (input plane p at in + p * in_ps, output at out + p * out_ps):
// out[y][x] = sum_{a,b} g[a] g[b] in[y + a - off][x + b - off], the input zero outside its
// hi x wi extent, for an ho x wo output. Rows first, then columns, accumulated in double.
// Valid correlation: off = 0; "same" zero padding: off = radius; adjoint of valid: off = 2 radius.
template <typename TI, typename TO>
void separable_correlate(const TI* in, int64_t in_ps, TO* out, int64_t out_ps, int64_t planes,
                         int64_t hi, int64_t wi, int64_t ho, int64_t wo,
                         const std::vector<double>& g, int64_t off) {
  const int64_t n = static_cast<int64_t>(g.size());
  std::vector<double> tmp(planes * hi * wo, 0.0);
  at::parallel_for(0, planes * hi, grain_for(wo * n), [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l)
      correlate_row(in + (l / hi) * in_ps + (l % hi) * wi, tmp.data() + l * wo, g.data(), n, off, wi, wo);
  });
  at::parallel_for(0, planes * ho, grain_for(wo * n), [&](int64_t l0, int64_t l1) {
    std::vector<double> acc(wo);
    for (int64_t l = l0; l < l1; ++l) {
      const int64_t p = l / ho, y = l % ho;
      const int64_t a0 = std::max<int64_t>(0, off - y), a1 = std::min(n, hi + off - y);
      correlate_column(tmp.data() + (p * hi + y + a0 - off) * wo, g.data() + a0, a1 - a0, wo,
                       acc.data(), out + p * out_ps + y * wo);
    }
  });
}

}  // namespace sas_fast
