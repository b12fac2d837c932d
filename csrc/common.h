// Helpers shared by the SaS CPU kernels: Gaussian taps and a separable 2-D correlation.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace sas_fast {

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
    for (int64_t l = l0; l < l1; ++l) {
      const TI* src = in + (l / hi) * in_ps + (l % hi) * wi;
      double* dst = tmp.data() + l * wo;
      for (int64_t b = 0; b < n; ++b) {
        const int64_t s = b - off, x0 = std::max<int64_t>(0, -s), x1 = std::min(wo, wi - s);
        const double gb = g[b];
        for (int64_t x = x0; x < x1; ++x) dst[x] += gb * static_cast<double>(src[x + s]);
      }
    }
  });
  at::parallel_for(0, planes * ho, grain_for(wo * n), [&](int64_t l0, int64_t l1) {
    std::vector<double> acc(wo);
    for (int64_t l = l0; l < l1; ++l) {
      const int64_t p = l / ho, y = l % ho;
      std::fill(acc.begin(), acc.end(), 0.0);
      const int64_t a0 = std::max<int64_t>(0, off - y), a1 = std::min(n, hi + off - y);
      for (int64_t a = a0; a < a1; ++a) {
        const double* src = tmp.data() + (p * hi + y + a - off) * wo;
        const double ga = g[a];
        for (int64_t x = 0; x < wo; ++x) acc[x] += ga * src[x];
      }
      TO* dst = out + p * out_ps + y * wo;
      for (int64_t x = 0; x < wo; ++x) dst[x] = static_cast<TO>(acc[x]);
    }
  });
}

}  // namespace sas_fast
