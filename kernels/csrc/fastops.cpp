// Fused CPU kernels for egeunet.fast (built on first use by torch.utils.cpp_extension).
//
// Every map is a B x C x H x W tensor in channels-last memory: element (b, c, h, w) lives at
// ((b * H + h) * W + w) * C + c, so the C values of one pixel are contiguous. The kernels replace
// chains of full-size ATen passes over 5-64-channel maps by one or two passes each: LayerNorm over
// channels (also over a virtual concatenation of several maps: GAB), GroupNorm, GroupNorm + 2x2
// max-pool, depth-wise 'same' convs and their weight gradient, bilinear align_corners resizing, and
// the BceDice loss sums and gradient.
//
// Reductions that feed parameter gradients are summed over fixed blocks of rows in double and the
// block partials added in block order, so results do not depend on the number of threads. The
// kernels are compiled without -fopenmp (torch brings its own OpenMP runtime), so at::parallel_for
// runs them single-threaded: egeunet.fast calls them from its worker threads, one per core, with
// the GIL released.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kRowsPerBlock = 16;  // rows (b, h) per reduction block
constexpr int64_t kSpan = 16;          // pixels per replicated-coefficient span (see channel_sums)

void check_cl(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D (B x C x H x W), got ", t.dim(), "-D");
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), name, " must be channels-last contiguous");
}

// ---------------------------------------------------------------------------------- LayerNorm
// y = (x - mean_c(x)) * rstd * w + b over the C channels of every pixel (two-pass statistics).
// Pixels are processed kTile at a time, transposed into a C x kTile scratch, so the per-pixel sums
// run as vector loops across pixels (per-pixel loops over 5-20 channels are latency-bound chains).
// CC > 0: C known at compile time (the common GAB widths); CC == 0: any C.
constexpr int64_t kTile = 16;

template <typename T, int CC>
void ln_fwd_impl(const T* x, const T* w, const T* b, double eps, int64_t P, int64_t Crt, T* y, T* mean,
                 T* rstd) {
  const int64_t C = CC > 0 ? CC : Crt;
  const T inv_c = T(1) / T(C);
  const int64_t ntiles = (P + kTile - 1) / kTile;
  at::parallel_for(0, ntiles, 16, [&](int64_t t0, int64_t t1) {
    std::vector<T> scratch(C * kTile);
    T* __restrict xt = scratch.data();
    alignas(64) T m[kTile], r[kTile];
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t p0 = tile * kTile, n = std::min(kTile, P - p0);
      const T* __restrict xp = x + p0 * C;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < C; ++c) xt[c * kTile + i] = xp[i * C + c];
      for (int64_t i = n; i < kTile; ++i)
        for (int64_t c = 0; c < C; ++c) xt[c * kTile + i] = T(0);
#pragma omp simd
      for (int64_t i = 0; i < kTile; ++i) m[i] = T(0);
      for (int64_t c = 0; c < C; ++c)
#pragma omp simd
        for (int64_t i = 0; i < kTile; ++i) m[i] += xt[c * kTile + i];
#pragma omp simd
      for (int64_t i = 0; i < kTile; ++i) {
        m[i] *= inv_c;
        r[i] = T(0);
      }
      for (int64_t c = 0; c < C; ++c)
#pragma omp simd
        for (int64_t i = 0; i < kTile; ++i) {
          const T d = xt[c * kTile + i] - m[i];
          r[i] += d * d;
        }
#pragma omp simd
      for (int64_t i = 0; i < kTile; ++i) r[i] = T(1) / std::sqrt(r[i] * inv_c + T(eps));
      for (int64_t c = 0; c < C; ++c) {
        const T wc = w[c], bc = b[c];
#pragma omp simd
        for (int64_t i = 0; i < kTile; ++i) xt[c * kTile + i] = (xt[c * kTile + i] - m[i]) * r[i] * wc + bc;
      }
      T* __restrict yp = y + p0 * C;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < C; ++c) yp[i * C + c] = xt[c * kTile + i];
      if (mean != nullptr)
        for (int64_t i = 0; i < n; ++i) {
          mean[p0 + i] = m[i];
          rstd[p0 + i] = r[i];
        }
    }
  });
}

// calls f(CC) with CC the compile-time channel count for EGE-UNet's widths, else 0 (any C)
template <typename F>
void dispatch_c(int64_t C, F&& f) {
  switch (C) {
#define EGE_CASE(n) \
  case n: f(std::integral_constant<int, n>{}); break;
    EGE_CASE(1) EGE_CASE(5) EGE_CASE(8) EGE_CASE(9) EGE_CASE(13) EGE_CASE(16) EGE_CASE(17) EGE_CASE(20) EGE_CASE(24)
    EGE_CASE(25) EGE_CASE(32) EGE_CASE(36) EGE_CASE(48)
#undef EGE_CASE
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

std::vector<torch::Tensor> ln_forward(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                                      double eps, bool save_stats) {
  check_cl(x, "x");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = B * H * W;
  auto y = torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto opts = x.options();
  auto mean = save_stats ? torch::empty({B, 1, H, W}, opts) : torch::Tensor();
  auto rstd = save_stats ? torch::empty({B, 1, H, W}, opts) : torch::Tensor();
  auto wc = w.contiguous(), bc = b.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ln_forward", [&] {
    dispatch_c(C, [&](auto cc) {
      ln_fwd_impl<scalar_t, decltype(cc)::value>(
          x.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), eps, P, C,
          y.data_ptr<scalar_t>(), save_stats ? mean.data_ptr<scalar_t>() : nullptr,
          save_stats ? rstd.data_ptr<scalar_t>() : nullptr);
    });
  });
  if (save_stats) return {y, mean, rstd};
  return {y};
}

// gx = (g - mean_c(g) - xhat * mean_c(g * xhat)) * rstd with g = gy * w; gw = sum gy * xhat; gb = sum gy.
// Tiled across pixels like the forward; gw / gb are summed per row in T, per block of rows in double.
template <typename T, int CC>
void ln_bwd_impl(const T* gy, const T* x, const T* mean, const T* rstd, const T* w, int64_t P, int64_t Crt,
                 int64_t row, T* gx, double* part_w, double* part_b) {
  const int64_t C = CC > 0 ? CC : Crt;
  const T inv_c = T(1) / T(C);
  const int64_t rows = P / row, nblocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  at::parallel_for(0, nblocks, 1, [&](int64_t k0, int64_t k1) {
    // scratch in pixel-minor (C x kTile) order: x -> xhat, gy, and per-(channel, lane) sums for gw / gb
    std::vector<T> s1(C * kTile), s2(C * kTile), s3(C * kTile), s4(C * kTile);
    T* __restrict xh = s1.data();
    T* __restrict gt = s2.data();
    T* __restrict rwt = s3.data();
    T* __restrict rbt = s4.data();
    alignas(64) T a[kTile], bq[kTile], rs[kTile], mu[kTile];
    for (int64_t k = k0; k < k1; ++k) {
      double* pw = part_w + k * C;
      double* pb = part_b + k * C;
      std::fill(pw, pw + C, 0.0);
      std::fill(pb, pb + C, 0.0);
      const int64_t r1 = std::min(rows, (k + 1) * kRowsPerBlock);
      for (int64_t r = k * kRowsPerBlock; r < r1; ++r) {
        std::fill(s3.begin(), s3.end(), T(0));
        std::fill(s4.begin(), s4.end(), T(0));
        for (int64_t p0 = r * row; p0 < (r + 1) * row; p0 += kTile) {
          const int64_t n = std::min(kTile, (r + 1) * row - p0);
          const T* __restrict xp = x + p0 * C;
          const T* __restrict gp = gy + p0 * C;
          for (int64_t i = 0; i < n; ++i) {
            mu[i] = mean[p0 + i];
            rs[i] = rstd[p0 + i];
            for (int64_t c = 0; c < C; ++c) {
              xh[c * kTile + i] = xp[i * C + c];
              gt[c * kTile + i] = gp[i * C + c];
            }
          }
          for (int64_t i = n; i < kTile; ++i) {  // padding lanes: zero gradient, so they add nothing
            mu[i] = rs[i] = T(0);
            for (int64_t c = 0; c < C; ++c) xh[c * kTile + i] = gt[c * kTile + i] = T(0);
          }
#pragma omp simd
          for (int64_t i = 0; i < kTile; ++i) a[i] = bq[i] = T(0);
          for (int64_t c = 0; c < C; ++c) {
            const T wc = w[c];
            T* __restrict xc = xh + c * kTile;
            const T* __restrict gc = gt + c * kTile;
            T* __restrict rwc = rwt + c * kTile;
            T* __restrict rbc = rbt + c * kTile;
#pragma omp simd
            for (int64_t i = 0; i < kTile; ++i) {
              const T v = (xc[i] - mu[i]) * rs[i];
              xc[i] = v;
              const T g = gc[i] * wc;
              a[i] += g;
              bq[i] += g * v;
              rwc[i] += gc[i] * v;
              rbc[i] += gc[i];
            }
          }
#pragma omp simd
          for (int64_t i = 0; i < kTile; ++i) {
            a[i] *= inv_c;
            bq[i] *= inv_c;
          }
          for (int64_t c = 0; c < C; ++c) {
            const T wc = w[c];
            T* __restrict xc = xh + c * kTile;
            const T* __restrict gc = gt + c * kTile;
#pragma omp simd
            for (int64_t i = 0; i < kTile; ++i) xc[i] = (gc[i] * wc - a[i] - xc[i] * bq[i]) * rs[i];
          }
          T* __restrict op = gx + p0 * C;
          for (int64_t i = 0; i < n; ++i)
            for (int64_t c = 0; c < C; ++c) op[i * C + c] = xh[c * kTile + i];
        }
        for (int64_t c = 0; c < C; ++c) {
          T sw = 0, sb = 0;
          for (int64_t i = 0; i < kTile; ++i) {
            sw += rwt[c * kTile + i];
            sb += rbt[c * kTile + i];
          }
          pw[c] += double(sw);
          pb[c] += double(sb);
        }
      }
    }
  });
}

std::vector<torch::Tensor> ln_backward(const torch::Tensor& gy, const torch::Tensor& x, const torch::Tensor& mean,
                                       const torch::Tensor& rstd, const torch::Tensor& w) {
  check_cl(x, "x");
  check_cl(gy, "gy");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = B * H * W;
  auto gx = torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  const int64_t nblocks = (B * H + kRowsPerBlock - 1) / kRowsPerBlock;
  auto dopts = x.options().dtype(torch::kFloat64);
  auto part_w = torch::empty({nblocks, C}, dopts), part_b = torch::empty({nblocks, C}, dopts);
  auto wc = w.contiguous(), mc = mean.contiguous(), rc = rstd.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ln_backward", [&] {
    dispatch_c(C, [&](auto cc) {
      ln_bwd_impl<scalar_t, decltype(cc)::value>(
          gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mc.data_ptr<scalar_t>(), rc.data_ptr<scalar_t>(),
          wc.data_ptr<scalar_t>(), P, C, W, gx.data_ptr<scalar_t>(), part_w.data_ptr<double>(),
          part_b.data_ptr<double>());
    });
  });
  // block partials summed in block order (sum over dim 0 of a small double tensor is sequential-stable
  // enough here: at most a few hundred rows, then rounded once to x's dtype)
  return {gx, part_w.sum(0).to(x.scalar_type()), part_b.sum(0).to(x.scalar_type())};
}

// LayerNorm over channel groups of a virtual concatenation of channel ranges of several maps, without
// writing the concatenation: segs = (source, first channel, count) rows in order; the concatenated
// channels are split into consecutive groups (sizes), each normalised over its own channels with its
// slice of w / b and written to its own dense channels-last output. Forward only (inference): GAB's
// group inputs cat(xh_j, xl_j, mask) -> LN_j, and its tail LN over the cat of the group outputs.
// kTile pixels of a C-channel channels-last map <-> C x kTile pixel-minor scratch (n <= kTile pixels;
// padding lanes of the scratch are zeroed on the way in)
template <typename T, int CC>
inline void tile_in(const T* __restrict src, int64_t Crt, int64_t n, T* __restrict xt) {
  const int64_t C = CC > 0 ? CC : Crt;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < C; ++c) xt[c * kTile + i] = src[i * C + c];
  for (int64_t i = n; i < kTile; ++i)
    for (int64_t c = 0; c < C; ++c) xt[c * kTile + i] = T(0);
}

template <typename T, int CC>
inline void tile_out(const T* __restrict xt, int64_t Crt, int64_t n, T* __restrict dst) {
  const int64_t C = CC > 0 ? CC : Crt;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < C; ++c) dst[i * C + c] = xt[c * kTile + i];
}

// q (pout x kTile) = pw (pout x gs) . o (gs x kTile) + pb: four output rows at a time held in registers (a
// row-at-a-time loop stores and reloads its accumulator once per input channel); each output still sums
// bias, then channel 0, 1, ... in order, so the result does not change
template <typename T>
inline void proj_tile(const T* __restrict o, int64_t gs, const T* __restrict pw, const T* __restrict pb, int64_t pout,
                      T* __restrict q) {
  int64_t oc = 0;
  for (; oc + 4 <= pout; oc += 4) {
    alignas(64) T a0[kTile], a1[kTile], a2[kTile], a3[kTile];
    const T b0 = pb != nullptr ? pb[oc] : T(0), b1 = pb != nullptr ? pb[oc + 1] : T(0),
            b2 = pb != nullptr ? pb[oc + 2] : T(0), b3 = pb != nullptr ? pb[oc + 3] : T(0);
#pragma omp simd
    for (int64_t i = 0; i < kTile; ++i) {
      a0[i] = b0;
      a1[i] = b1;
      a2[i] = b2;
      a3[i] = b3;
    }
    const T* __restrict w0 = pw + oc * gs;
    for (int64_t c = 0; c < gs; ++c) {
      const T* __restrict orow = o + c * kTile;
      const T v0 = w0[c], v1 = w0[gs + c], v2 = w0[2 * gs + c], v3 = w0[3 * gs + c];
#pragma omp simd
      for (int64_t i = 0; i < kTile; ++i) {
        a0[i] += v0 * orow[i];
        a1[i] += v1 * orow[i];
        a2[i] += v2 * orow[i];
        a3[i] += v3 * orow[i];
      }
    }
#pragma omp simd
    for (int64_t i = 0; i < kTile; ++i) {
      q[oc * kTile + i] = a0[i];
      q[(oc + 1) * kTile + i] = a1[i];
      q[(oc + 2) * kTile + i] = a2[i];
      q[(oc + 3) * kTile + i] = a3[i];
    }
  }
  for (; oc < pout; ++oc) {
    alignas(64) T a[kTile];
    const T bias = pb != nullptr ? pb[oc] : T(0);
#pragma omp simd
    for (int64_t i = 0; i < kTile; ++i) a[i] = bias;
    for (int64_t c = 0; c < gs; ++c) {
      const T wv = pw[oc * gs + c];
      const T* __restrict orow = o + c * kTile;
#pragma omp simd
      for (int64_t i = 0; i < kTile; ++i) a[i] += wv * orow[i];
    }
#pragma omp simd
    for (int64_t i = 0; i < kTile; ++i) q[oc * kTile + i] = a[i];
  }
}

template <typename T>
void ln_multi_impl(const std::vector<const T*>& src, const std::vector<int64_t>& src_c,
                   const std::vector<int64_t>& seg, const std::vector<int64_t>& sizes, const T* w, const T* b,
                   double eps, int64_t P, const std::vector<T*>& out, const std::vector<T*>& smean,
                   const std::vector<T*>& srstd, const T* pw = nullptr, const T* pb = nullptr, int64_t pout = 0) {
  // every source is transposed whole into its rows of the scratch; the groups then read their
  // channels through a row map (virtual concatenation order -> scratch row)
  const int64_t nsrc = int64_t(src.size()), ngroups = int64_t(sizes.size());
  std::vector<int64_t> base(nsrc + 1, 0);
  for (int64_t k = 0; k < nsrc; ++k) base[k + 1] = base[k] + src_c[k];
  std::vector<int64_t> rowmap;
  for (size_t k = 0; k < seg.size(); k += 3)
    for (int64_t c = 0; c < seg[k + 2]; ++c) rowmap.push_back(base[seg[k]] + seg[k + 1] + c);
  int64_t gmax = 0;
  for (auto g : sizes) gmax = std::max(gmax, g);
  const int64_t ntiles = (P + kTile - 1) / kTile;
  at::parallel_for(0, ntiles, 16, [&](int64_t t0, int64_t t1) {
    std::vector<T> scratch(base[nsrc] * kTile), ot(gmax * kTile), pt(pout * kTile);
    T* __restrict xt = scratch.data();
    T* __restrict o = ot.data();
    alignas(64) T m[kTile], r[kTile];
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t p0 = tile * kTile, n = std::min(kTile, P - p0);
      for (int64_t k = 0; k < nsrc; ++k)
        dispatch_c(src_c[k], [&](auto cc) {
          tile_in<T, decltype(cc)::value>(src[k] + p0 * src_c[k], src_c[k], n, xt + base[k] * kTile);
        });
      int64_t g0 = 0;
      for (int64_t gi = 0; gi < ngroups; ++gi) {
        const int64_t gs = sizes[gi];
        const T inv = T(1) / T(gs);
#pragma omp simd
        for (int64_t i = 0; i < kTile; ++i) m[i] = r[i] = T(0);
        for (int64_t c = 0; c < gs; ++c) {
          const T* __restrict row = xt + rowmap[g0 + c] * kTile;
#pragma omp simd
          for (int64_t i = 0; i < kTile; ++i) m[i] += row[i];
        }
#pragma omp simd
        for (int64_t i = 0; i < kTile; ++i) m[i] *= inv;
        for (int64_t c = 0; c < gs; ++c) {
          const T* __restrict row = xt + rowmap[g0 + c] * kTile;
#pragma omp simd
          for (int64_t i = 0; i < kTile; ++i) {
            const T d = row[i] - m[i];
            r[i] += d * d;
          }
        }
#pragma omp simd
        for (int64_t i = 0; i < kTile; ++i) r[i] = T(1) / std::sqrt(r[i] * inv + T(eps));
        for (int64_t c = 0; c < gs; ++c) {
          const T* __restrict row = xt + rowmap[g0 + c] * kTile;
          const T wc = w[g0 + c], bc = b[g0 + c];
#pragma omp simd
          for (int64_t i = 0; i < kTile; ++i) o[c * kTile + i] = (row[i] - m[i]) * r[i] * wc + bc;
        }
        if (pw != nullptr) {  // a 1x1 conv (pout x gs weights) on the normalised tile, written instead of it
          T* __restrict q = pt.data();
          proj_tile<T>(o, gs, pw, pb, pout, q);
          dispatch_c(pout, [&](auto cc) { tile_out<T, decltype(cc)::value>(q, pout, n, out[gi] + p0 * pout); });
        } else {
          dispatch_c(gs, [&](auto cc) { tile_out<T, decltype(cc)::value>(o, gs, n, out[gi] + p0 * gs); });
        }
        if (!smean.empty())
          for (int64_t i = 0; i < n; ++i) {
            smean[gi][p0 + i] = m[i];
            srstd[gi][p0 + i] = r[i];
          }
        g0 += gs;
      }
    }
  });
}

// checks the sources and segments of ln_multi / ln_multi_backward; returns the sources' channel counts
std::vector<int64_t> check_multi(const std::vector<torch::Tensor>& srcs, const std::vector<int64_t>& seg,
                                 const std::vector<int64_t>& sizes, const torch::Tensor& w, const torch::Tensor& b) {
  TORCH_CHECK(!srcs.empty() && seg.size() % 3 == 0 && !sizes.empty(), "ln_multi: empty or malformed segments");
  const auto& x0 = srcs[0];
  std::vector<int64_t> src_c;
  for (const auto& t : srcs) {
    check_cl(t, "ln_multi source");
    TORCH_CHECK(t.size(0) == x0.size(0) && t.size(2) == x0.size(2) && t.size(3) == x0.size(3) &&
                    t.scalar_type() == x0.scalar_type(), "ln_multi: sources differ in batch, size or dtype");
    src_c.push_back(t.size(1));
  }
  int64_t total = 0, ctot = 0;
  for (size_t k = 0; k < seg.size(); k += 3) {
    TORCH_CHECK(seg[k] >= 0 && seg[k] < int64_t(srcs.size()) && seg[k + 1] >= 0 &&
                    seg[k + 1] + seg[k + 2] <= src_c[seg[k]], "ln_multi: segment out of range");
    total += seg[k + 2];
  }
  for (auto g : sizes) ctot += g;
  TORCH_CHECK(total == ctot && w.numel() == ctot && b.numel() == ctot, "ln_multi: ", total, " segment channels, ",
              ctot, " group channels, ", w.numel(), " weights");
  return src_c;
}

// returns the group outputs, then (with save) every group's mean and rstd (B x 1 x H x W each)
std::vector<torch::Tensor> ln_multi(const std::vector<torch::Tensor>& srcs, const std::vector<int64_t>& seg,
                                    const std::vector<int64_t>& sizes, const torch::Tensor& w,
                                    const torch::Tensor& b, double eps, bool save) {
  const auto src_c = check_multi(srcs, seg, sizes, w, b);
  const auto& x0 = srcs[0];
  const int64_t B = x0.size(0), H = x0.size(2), W = x0.size(3);
  std::vector<torch::Tensor> outs, stats;
  for (auto g : sizes) outs.push_back(torch::empty({B, g, H, W}, x0.options().memory_format(at::MemoryFormat::ChannelsLast)));
  if (save)
    for (size_t k = 0; k < 2 * sizes.size(); ++k) stats.push_back(torch::empty({B, 1, H, W}, x0.options()));
  auto wc = w.contiguous(), bc = b.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x0.scalar_type(), "ln_multi", [&] {
    std::vector<const scalar_t*> sp;
    for (const auto& t : srcs) sp.push_back(t.data_ptr<scalar_t>());
    std::vector<scalar_t*> op, mp, rp;
    for (auto& t : outs) op.push_back(t.data_ptr<scalar_t>());
    for (size_t k = 0; k < stats.size(); ++k) (k < sizes.size() ? mp : rp).push_back(stats[k].data_ptr<scalar_t>());
    ln_multi_impl<scalar_t>(sp, src_c, seg, sizes, wc.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), eps, B * H * W,
                            op, mp, rp);
  });
  outs.insert(outs.end(), stats.begin(), stats.end());
  return outs;
}

// One LayerNorm group over the virtual concatenation, then a 1x1 conv (pw: Cout x C [x 1 x 1], pb: Cout
// or undefined) applied per pixel before anything is written: GAB's tail (LN + conv) at inference.
torch::Tensor ln_multi_proj(const std::vector<torch::Tensor>& srcs, const std::vector<int64_t>& seg,
                            const torch::Tensor& w, const torch::Tensor& b, double eps, const torch::Tensor& pw,
                            const c10::optional<torch::Tensor>& pb) {
  const int64_t ctot = w.numel();
  const auto src_c = check_multi(srcs, seg, {ctot}, w, b);
  const int64_t cout = pw.size(0);
  TORCH_CHECK(pw.numel() == cout * ctot, "ln_multi_proj: projection weight must be Cout x ", ctot);
  TORCH_CHECK(!pb.has_value() || pb->numel() == cout, "ln_multi_proj: projection bias must have ", cout, " values");
  const auto& x0 = srcs[0];
  const int64_t B = x0.size(0), H = x0.size(2), W = x0.size(3);
  auto out = torch::empty({B, cout, H, W}, x0.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto wc = w.contiguous(), bc = b.contiguous(), pwc = pw.contiguous();
  torch::Tensor pbc = pb.has_value() ? pb->contiguous() : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x0.scalar_type(), "ln_multi_proj", [&] {
    std::vector<const scalar_t*> sp;
    for (const auto& t : srcs) sp.push_back(t.data_ptr<scalar_t>());
    std::vector<scalar_t*> op{out.data_ptr<scalar_t>()};
    ln_multi_impl<scalar_t>(sp, src_c, seg, {ctot}, wc.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), eps, B * H * W,
                            op, {}, {}, pwc.data_ptr<scalar_t>(), pb.has_value() ? pbc.data_ptr<scalar_t>() : nullptr,
                            cout);
  });
  return out;
}

// The backward of ln_multi: every group's LayerNorm backward, the input gradient written straight into
// dense per-source gradients (summed where a source channel feeds several groups, zero where it feeds
// none); gw / gb per group channel, summed per row in T and per block of rows in double.
template <typename T>
void ln_multi_bwd_impl(const std::vector<const T*>& src, const std::vector<int64_t>& src_c,
                       const std::vector<int64_t>& seg, const std::vector<int64_t>& sizes, const T* w,
                       const std::vector<const T*>& mean, const std::vector<const T*>& rstd,
                       const std::vector<const T*>& gy, int64_t B, int64_t H, int64_t W,
                       const std::vector<T*>& gsrc, double* part_w, double* part_b) {
  const int64_t nsrc = int64_t(src.size()), ngroups = int64_t(sizes.size());
  std::vector<int64_t> base(nsrc + 1, 0), gbase(ngroups + 1, 0);
  for (int64_t k = 0; k < nsrc; ++k) base[k + 1] = base[k] + src_c[k];
  for (int64_t g = 0; g < ngroups; ++g) gbase[g + 1] = gbase[g] + sizes[g];
  const int64_t ctot = gbase[ngroups];
  std::vector<int64_t> rowmap;
  for (size_t k = 0; k < seg.size(); k += 3)
    for (int64_t c = 0; c < seg[k + 2]; ++c) rowmap.push_back(base[seg[k]] + seg[k + 1] + c);
  const int64_t rows = B * H, nblocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  at::parallel_for(0, nblocks, 1, [&](int64_t k0, int64_t k1) {
    std::vector<T> xs(base[nsrc] * kTile), gs_(base[nsrc] * kTile), gt(ctot * kTile), xh(ctot * kTile);
    std::vector<T> rw(ctot * kTile), rb(ctot * kTile);
    T* __restrict xt = xs.data();
    T* __restrict gx = gs_.data();
    T* __restrict gtv = gt.data();
    T* __restrict xhv = xh.data();
    T* __restrict rwv = rw.data();
    T* __restrict rbv = rb.data();
    alignas(64) T a[kTile], bq[kTile], rs[kTile], mu[kTile];
    for (int64_t k = k0; k < k1; ++k) {
      double* pw = part_w + k * ctot;
      double* pb = part_b + k * ctot;
      std::fill(pw, pw + ctot, 0.0);
      std::fill(pb, pb + ctot, 0.0);
      const int64_t r1 = std::min(rows, (k + 1) * kRowsPerBlock);
      for (int64_t r = k * kRowsPerBlock; r < r1; ++r) {
        std::fill(rw.begin(), rw.end(), T(0));
        std::fill(rb.begin(), rb.end(), T(0));
        for (int64_t p0 = r * W; p0 < (r + 1) * W; p0 += kTile) {
          const int64_t n = std::min(kTile, (r + 1) * W - p0);
          for (int64_t s = 0; s < nsrc; ++s)
            dispatch_c(src_c[s], [&](auto cc) {
              tile_in<T, decltype(cc)::value>(src[s] + p0 * src_c[s], src_c[s], n, xt + base[s] * kTile);
            });
          for (int64_t g = 0; g < ngroups; ++g)
            dispatch_c(sizes[g], [&](auto cc) {
              tile_in<T, decltype(cc)::value>(gy[g] + p0 * sizes[g], sizes[g], n, gtv + gbase[g] * kTile);
            });
          std::fill(gs_.begin(), gs_.end(), T(0));
          for (int64_t g = 0; g < ngroups; ++g) {
            const int64_t g0 = gbase[g], gsz = sizes[g];
            const T inv = T(1) / T(gsz);
            for (int64_t i = 0; i < n; ++i) {
              mu[i] = mean[g][p0 + i];
              rs[i] = rstd[g][p0 + i];
            }
            for (int64_t i = n; i < kTile; ++i) mu[i] = rs[i] = T(0);
#pragma omp simd
            for (int64_t i = 0; i < kTile; ++i) a[i] = bq[i] = T(0);
            for (int64_t c = g0; c < g0 + gsz; ++c) {
              const T* __restrict xr = xt + rowmap[c] * kTile;
              const T* __restrict gr = gtv + c * kTile;
              T* __restrict hr = xhv + c * kTile;
              T* __restrict wr = rwv + c * kTile;
              T* __restrict br = rbv + c * kTile;
              const T wc = w[c];
#pragma omp simd
              for (int64_t i = 0; i < kTile; ++i) {
                const T v = (xr[i] - mu[i]) * rs[i];
                hr[i] = v;
                const T gg = gr[i] * wc;
                a[i] += gg;
                bq[i] += gg * v;
                wr[i] += gr[i] * v;
                br[i] += gr[i];
              }
            }
#pragma omp simd
            for (int64_t i = 0; i < kTile; ++i) {
              a[i] *= inv;
              bq[i] *= inv;
            }
            for (int64_t c = g0; c < g0 + gsz; ++c) {
              T* __restrict dst = gx + rowmap[c] * kTile;
              const T* __restrict gr = gtv + c * kTile;
              const T* __restrict hr = xhv + c * kTile;
              const T wc = w[c];
#pragma omp simd
              for (int64_t i = 0; i < kTile; ++i) dst[i] += (gr[i] * wc - a[i] - hr[i] * bq[i]) * rs[i];
            }
          }
          for (int64_t s = 0; s < nsrc; ++s)
            dispatch_c(src_c[s], [&](auto cc) {
              tile_out<T, decltype(cc)::value>(gx + base[s] * kTile, src_c[s], n, gsrc[s] + p0 * src_c[s]);
            });
        }
        for (int64_t c = 0; c < ctot; ++c) {
          T sw = 0, sb = 0;
          for (int64_t i = 0; i < kTile; ++i) {
            sw += rwv[c * kTile + i];
            sb += rbv[c * kTile + i];
          }
          pw[c] += double(sw);
          pb[c] += double(sb);
        }
      }
    }
  });
}

// returns the per-source input gradients, then gw and gb
std::vector<torch::Tensor> ln_multi_backward(const std::vector<torch::Tensor>& srcs, const std::vector<int64_t>& seg,
                                             const std::vector<int64_t>& sizes, const torch::Tensor& w,
                                             const std::vector<torch::Tensor>& means,
                                             const std::vector<torch::Tensor>& rstds,
                                             const std::vector<torch::Tensor>& gys) {
  const auto src_c = check_multi(srcs, seg, sizes, w, w);
  TORCH_CHECK(means.size() == sizes.size() && rstds.size() == sizes.size() && gys.size() == sizes.size(),
              "ln_multi_backward: one mean, rstd and gradient per group");
  const auto& x0 = srcs[0];
  const int64_t B = x0.size(0), H = x0.size(2), W = x0.size(3);
  for (size_t g = 0; g < gys.size(); ++g) {
    check_cl(gys[g], "ln_multi_backward gradient");
    TORCH_CHECK(gys[g].size(1) == sizes[g], "ln_multi_backward: gradient ", g, " has the wrong channel count");
  }
  std::vector<torch::Tensor> gsrc;
  for (const auto& t : srcs) gsrc.push_back(torch::empty_like(t, at::MemoryFormat::ChannelsLast));
  int64_t ctot = 0;
  for (auto g : sizes) ctot += g;
  const int64_t nblocks = (B * H + kRowsPerBlock - 1) / kRowsPerBlock;
  auto dopts = x0.options().dtype(torch::kFloat64);
  auto part_w = torch::empty({nblocks, ctot}, dopts), part_b = torch::empty({nblocks, ctot}, dopts);
  auto wc = w.contiguous();
  std::vector<torch::Tensor> mc, rc;
  for (size_t g = 0; g < sizes.size(); ++g) {
    mc.push_back(means[g].contiguous());
    rc.push_back(rstds[g].contiguous());
  }
  AT_DISPATCH_FLOATING_TYPES(x0.scalar_type(), "ln_multi_backward", [&] {
    std::vector<const scalar_t*> sp, mp, rp, gp;
    for (const auto& t : srcs) sp.push_back(t.data_ptr<scalar_t>());
    for (size_t g = 0; g < sizes.size(); ++g) {
      mp.push_back(mc[g].data_ptr<scalar_t>());
      rp.push_back(rc[g].data_ptr<scalar_t>());
      gp.push_back(gys[g].data_ptr<scalar_t>());
    }
    std::vector<scalar_t*> op;
    for (auto& t : gsrc) op.push_back(t.data_ptr<scalar_t>());
    ln_multi_bwd_impl<scalar_t>(sp, src_c, seg, sizes, wc.data_ptr<scalar_t>(), mp, rp, gp, B, H, W, op,
                                part_w.data_ptr<double>(), part_b.data_ptr<double>());
  });
  gsrc.push_back(part_w.sum(0).to(x0.scalar_type()));
  gsrc.push_back(part_b.sum(0).to(x0.scalar_type()));
  return gsrc;
}

// -------------------------------------------------------------------------- depth-wise conv
// y = depth-wise k x k conv of x (stride 1, dilation d, zero 'same' padding d * (k / 2)) [+ bias].
// Each output row is built from k * k contiguous multiply-adds over row spans (the tap weights are
// replicated along a kSpan-pixel pattern, so the loops vectorise whatever C is). With the weights
// flipped it is also the conv's input gradient.
template <typename T, int CC>
void dw_conv_impl(const T* x, const T* w, const T* bias, int64_t B, int64_t Crt, int64_t H, int64_t W, int64_t k,
                  int64_t d, T* y) {
  const int64_t C = CC > 0 ? CC : Crt;
  const int64_t L = kSpan * C, WC = W * C, r = k / 2, kk = k * k;
  std::vector<T> wrep(kk * L), brep(L, T(0));
  for (int64_t tap = 0; tap < kk; ++tap)
    for (int64_t t = 0; t < L; ++t) wrep[tap * L + t] = w[(t % C) * kk + tap];
  if (bias != nullptr)
    for (int64_t t = 0; t < L; ++t) brep[t] = bias[t % C];
  at::parallel_for(0, B * H, 4, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / H, h = q % H;
      T* __restrict out = y + q * WC;
      {
        const T* __restrict br = brep.data();
        int64_t s = 0;
        for (; s < WC; s += L) {  // s is a multiple of L, so the pattern index is u
          const int64_t m = std::min(L, WC - s);
#pragma omp simd
          for (int64_t u = 0; u < m; ++u) out[s + u] = br[u];
        }
      }
      for (int64_t i = 0; i < k; ++i) {
        const int64_t hh = h + d * (i - r);
        if (hh < 0 || hh >= H) continue;
        const T* __restrict in = x + (b * H + hh) * WC;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t dj = d * (j - r);
          const int64_t w0 = std::max<int64_t>(0, -dj), w1 = std::min<int64_t>(W, W - dj);
          if (w1 <= w0) continue;
          const T* __restrict wr = wrep.data() + (i * k + j) * L;
          T* __restrict o = out + w0 * C;
          const T* __restrict src = in + (w0 + dj) * C;
          const int64_t n = (w1 - w0) * C;
          for (int64_t s = 0; s < n; s += L) {
            const int64_t m = std::min(L, n - s);
#pragma omp simd
            for (int64_t u = 0; u < m; ++u) o[s + u] += wr[u] * src[s + u];
          }
        }
      }
    }
  });
}

torch::Tensor dw_conv(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias,
                      int64_t d) {
  check_cl(x, "x");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), k = w.size(-1);
  TORCH_CHECK(w.numel() == C * k * k && k % 2 == 1, "dw_conv: weight must be C x 1 x k x k with odd k");
  TORCH_CHECK(!bias.has_value() || bias->numel() == C, "dw_conv: bias must have C values");
  auto y = torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto wc = w.contiguous();
  torch::Tensor bc = bias.has_value() ? bias->contiguous() : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dw_conv", [&] {
    dispatch_c(C, [&](auto cc) {
      dw_conv_impl<scalar_t, decltype(cc)::value>(x.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(),
                                                  bias.has_value() ? bc.data_ptr<scalar_t>() : nullptr, B, C, H, W, k,
                                                  d, y.data_ptr<scalar_t>());
    });
  });
  return y;
}

// ------------------------------------------------------------------ bilinear up-sampling
// Bilinear resize with align_corners=True of a channels-last map, source positions computed as ATen
// does (opmath scale = (in - 1) / (out - 1), src = scale * o, i0 = floor, i1 = i0 + (i0 < in - 1)).
struct Taps {
  std::vector<int64_t> i0, i1;
  std::vector<double> l0, l1;
};

template <typename T>
Taps make_taps(int64_t n_in, int64_t n_out) {
  using opmath = at::opmath_type<T>;
  Taps t;
  const opmath scale = n_out > 1 ? opmath(n_in - 1) / opmath(n_out - 1) : opmath(0);
  for (int64_t o = 0; o < n_out; ++o) {
    const opmath src = scale * opmath(o);
    const int64_t i0 = std::min<int64_t>(int64_t(src), n_in - 1);
    const opmath lam = std::min(std::max(src - opmath(i0), opmath(0)), opmath(1));
    t.i0.push_back(i0);
    t.i1.push_back(i0 < n_in - 1 ? i0 + 1 : i0);
    t.l0.push_back(double(opmath(1) - lam));
    t.l1.push_back(double(lam));
  }
  return t;
}

template <typename T>
void up_fwd_impl(const T* x, int64_t B, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, T* y) {
  const Taps th = make_taps<T>(H, Ho), tw = make_taps<T>(W, Wo);
  at::parallel_for(0, B * Ho, 4, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / Ho, oh = q % Ho;
      const T* __restrict r0 = x + (b * H + th.i0[oh]) * W * C;
      const T* __restrict r1 = x + (b * H + th.i1[oh]) * W * C;
      const T h0 = T(th.l0[oh]), h1 = T(th.l1[oh]);
      T* __restrict out = y + q * Wo * C;
      for (int64_t ow = 0; ow < Wo; ++ow) {
        const int64_t a = tw.i0[ow] * C, e = tw.i1[ow] * C;
        const T w0 = T(tw.l0[ow]), w1 = T(tw.l1[ow]);
        T* __restrict o = out + ow * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          o[c] = h0 * (w0 * r0[a + c] + w1 * r0[e + c]) + h1 * (w0 * r1[a + c] + w1 * r1[e + c]);
      }
    }
  });
}

// The backward as a gather (each input position sums the outputs that read it), separable: first
// along W into a B x Ho x W x C buffer, then along H; no scatter, no zero-filled accumulation buffer.
template <typename T>
void up_bwd_impl(const T* gy, int64_t B, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, T* tmp, T* gx) {
  const Taps th = make_taps<T>(H, Ho), tw = make_taps<T>(W, Wo);
  // inverse maps (CSR): for input index i, the outputs that read it and their weights, in output order
  struct Inv {
    std::vector<int64_t> start, out;
    std::vector<T> coef;
  };
  auto invert = [](const Taps& t, int64_t n_in) {
    std::vector<std::vector<std::pair<int64_t, double>>> lists(n_in);
    for (size_t o = 0; o < t.i0.size(); ++o) {
      lists[t.i0[o]].push_back({int64_t(o), t.l0[o]});
      lists[t.i1[o]].push_back({int64_t(o), t.l1[o]});
    }
    Inv inv;
    inv.start.push_back(0);
    for (const auto& l : lists) {
      for (const auto& pr : l) {
        inv.out.push_back(pr.first);
        inv.coef.push_back(T(pr.second));
      }
      inv.start.push_back(int64_t(inv.out.size()));
    }
    return inv;
  };
  const Inv ih = invert(th, H), iw = invert(tw, W);
  at::parallel_for(0, B * Ho, 4, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const T* __restrict g = gy + q * Wo * C;
      T* __restrict t = tmp + q * W * C;
      if (C == 1) {  // one channel: a plain gather per position
        for (int64_t w = 0; w < W; ++w) {
          T acc = 0;
          for (int64_t k = iw.start[w]; k < iw.start[w + 1]; ++k) acc += iw.coef[k] * g[iw.out[k]];
          t[w] = acc;
        }
        continue;
      }
      for (int64_t w = 0; w < W; ++w) {
        T* __restrict o = t + w * C;
        for (int64_t c = 0; c < C; ++c) o[c] = T(0);
        for (int64_t k = iw.start[w]; k < iw.start[w + 1]; ++k) {
          const T cw = iw.coef[k];
          const T* __restrict src = g + iw.out[k] * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] += cw * src[c];
        }
      }
    }
  });
  const int64_t WC = W * C;
  at::parallel_for(0, B * H, 4, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / H, h = q % H;
      T* __restrict o = gx + q * WC;
      for (int64_t u = 0; u < WC; ++u) o[u] = T(0);
      for (int64_t k = ih.start[h]; k < ih.start[h + 1]; ++k) {
        const T ch = ih.coef[k];
        const T* __restrict src = tmp + (b * Ho + ih.out[k]) * WC;
#pragma omp simd
        for (int64_t u = 0; u < WC; ++u) o[u] += ch * src[u];
      }
    }
  });
}

torch::Tensor up_forward(const torch::Tensor& x, int64_t Ho, int64_t Wo) {
  check_cl(x, "x");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto y = torch::empty({B, C, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "up_forward", [&] {
    up_fwd_impl<scalar_t>(x.data_ptr<scalar_t>(), B, C, H, W, Ho, Wo, y.data_ptr<scalar_t>());
  });
  return y;
}

torch::Tensor up_backward(const torch::Tensor& gy, int64_t H, int64_t W) {
  check_cl(gy, "gy");
  const int64_t B = gy.size(0), C = gy.size(1), Ho = gy.size(2), Wo = gy.size(3);
  auto gx = torch::empty({B, C, H, W}, gy.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto tmp = torch::empty({B, Ho, W, C}, gy.options());
  AT_DISPATCH_FLOATING_TYPES(gy.scalar_type(), "up_backward", [&] {
    up_bwd_impl<scalar_t>(gy.data_ptr<scalar_t>(), B, C, H, W, Ho, Wo, tmp.data_ptr<scalar_t>(),
                          gx.data_ptr<scalar_t>());
  });
  return gx;
}

// -------------------------------------------------------------------- depth-wise weight gradient
// gw[c, i, j] = sum_{b, h, w} gy[b, c, h, w] * x[b, c, h + d (i - k/2), w + d (j - k/2)] (zero outside).
template <typename T>
void dw_wgrad_impl(const T* x, const T* gy, int64_t B, int64_t C, int64_t H, int64_t W, int64_t k, int64_t d,
                   double* part) {
  // per tap, a row-long buffer accumulates gy[w, c] * x[w + dj, c] over the block's rows: each row and
  // tap is one contiguous multiply-add (vectorised whatever C is); the buffers are reduced over w once
  // per block
  const int64_t rows = B * H, nblocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock, kk = k * k, r = k / 2;
  const int64_t WC = W * C;
  at::parallel_for(0, nblocks, 1, [&](int64_t k0, int64_t k1) {
    std::vector<T> buf(kk * WC);
    for (int64_t blk = k0; blk < k1; ++blk) {
      std::fill(buf.begin(), buf.end(), T(0));
      const int64_t q1 = std::min(rows, (blk + 1) * kRowsPerBlock);
      for (int64_t q = blk * kRowsPerBlock; q < q1; ++q) {
        const int64_t b = q / H, h = q % H;
        const T* grow = gy + (b * H + h) * WC;
        for (int64_t i = 0; i < k; ++i) {
          const int64_t hh = h + d * (i - r);
          if (hh < 0 || hh >= H) continue;
          const T* xrow = x + (b * H + hh) * WC;
          for (int64_t j = 0; j < k; ++j) {
            const int64_t dj = d * (j - r);
            const int64_t w0 = std::max<int64_t>(0, -dj), w1 = std::min<int64_t>(W, W - dj);
            if (w1 <= w0) continue;
            T* __restrict a = buf.data() + (i * k + j) * WC + w0 * C;
            const T* __restrict g = grow + w0 * C;
            const T* __restrict xv = xrow + (w0 + dj) * C;
            const int64_t L = (w1 - w0) * C;
            for (int64_t t = 0; t < L; ++t) a[t] += g[t] * xv[t];
          }
        }
      }
      double* pp = part + blk * kk * C;
      for (int64_t tap = 0; tap < kk; ++tap) {
        const T* a = buf.data() + tap * WC;
        for (int64_t c = 0; c < C; ++c) {
          double s = 0;
          for (int64_t w = 0; w < W; ++w) s += double(a[w * C + c]);
          pp[tap * C + c] = s;
        }
      }
    }
  });
}

torch::Tensor dw_weight_grad(const torch::Tensor& x, const torch::Tensor& gy, int64_t k, int64_t d) {
  check_cl(x, "x");
  check_cl(gy, "gy");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t nblocks = (B * H + kRowsPerBlock - 1) / kRowsPerBlock;
  auto part = torch::empty({nblocks, k, k, C}, x.options().dtype(torch::kFloat64));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dw_weight_grad", [&] {
    dw_wgrad_impl<scalar_t>(x.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), B, C, H, W, k, d,
                            part.data_ptr<double>());
  });
  return part.sum(0).permute({2, 0, 1}).contiguous().view({C, 1, k, k}).to(x.scalar_type());
}

// ---------------------------------------------------------------------------------- GroupNorm
// Channel sums over n pixels of a channels-last map, as contiguous multiply-adds: the pixels are read
// kSpan at a time as one vector of kSpan * C values (position t holds channel t % C), so the inner loop
// vectorises whatever C is; each span vector is folded into per-channel double sums every 256 pixels.
// f(t, xv) gives the value to sum at span position t for input value xv.

template <typename T, typename F>
void channel_sums(const T* x, int64_t n, int64_t C, double* out, std::vector<T>& acc, F f) {
  const int64_t L = kSpan * C;
  std::fill(out, out + C, 0.0);
  int64_t p = 0;
  while (p + kSpan <= n) {
    std::fill(acc.begin(), acc.end(), T(0));
    T* __restrict a = acc.data();
    const int64_t stop = std::min(n - kSpan, p + 256);
    for (; p <= stop; p += kSpan) {
      const T* __restrict xv = x + p * C;
#pragma omp simd
      for (int64_t t = 0; t < L; ++t) a[t] += f(t, xv[t]);
    }
    for (int64_t t = 0; t < L; ++t) out[t % C] += double(a[t]);
  }
  for (; p < n; ++p)
    for (int64_t c = 0; c < C; ++c) out[c] += double(f(c, x[p * C + c]));
}

// Per-(image, group) mean and 1 / sqrt(var + eps), two passes, channel sums in double.
template <typename T>
void gn_stats_impl(const T* x, int64_t B, int64_t C, int64_t HW, int64_t G, double eps, T* mean, T* rstd) {
  const int64_t cg = C / G;
  const double n = double(cg * HW);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> s(C);
    std::vector<T> acc(kSpan * C), mrep(kSpan * C);
    for (int64_t b = b0; b < b1; ++b) {
      const T* xb = x + b * HW * C;
      channel_sums(xb, HW, C, s.data(), acc, [](int64_t, T v) { return v; });
      for (int64_t g = 0; g < G; ++g) {
        double t = 0;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) t += s[c];
        mean[b * G + g] = T(t / n);
      }
      for (int64_t t = 0; t < kSpan * C; ++t) mrep[t] = mean[b * G + (t % C) / cg];
      const T* __restrict mr = mrep.data();
      channel_sums(xb, HW, C, s.data(), acc, [mr](int64_t t, T v) { return (v - mr[t]) * (v - mr[t]); });
      for (int64_t g = 0; g < G; ++g) {
        double t = 0;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) t += s[c];
        rstd[b * G + g] = T(1.0 / std::sqrt(double(T(t / n)) + eps));
      }
    }
  });
}

std::vector<torch::Tensor> gn_stats(const torch::Tensor& x, int64_t groups, double eps) {
  check_cl(x, "x");
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  TORCH_CHECK(C % groups == 0, "channels ", C, " not divisible by groups ", groups);
  auto mean = torch::empty({B, groups}, x.options()), rstd = torch::empty({B, groups}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gn_stats", [&] {
    gn_stats_impl<scalar_t>(x.data_ptr<scalar_t>(), B, C, HW, groups, eps, mean.data_ptr<scalar_t>(),
                            rstd.data_ptr<scalar_t>());
  });
  return {mean, rstd};
}

// y = (x - mean[b, c]) * scale[b, c] + shift[c] (mean, scale: B x C; per-channel broadcasts done by the caller)
template <typename T, int CC>
void affine_impl(const T* x, const T* mean, const T* scale, const T* shift, int64_t B, int64_t Crt, int64_t HW,
                 T* y) {
  const int64_t C = CC > 0 ? CC : Crt;
  at::parallel_for(0, B * HW, 1024, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / HW;
      const T* __restrict m = mean + b * C;
      const T* __restrict s = scale + b * C;
      const T* __restrict sh = shift;
      const T* __restrict xp = x + p * C;
      T* __restrict yp = y + p * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yp[c] = (xp[c] - m[c]) * s[c] + sh[c];
    }
  });
}

torch::Tensor gn_affine(const torch::Tensor& x, const torch::Tensor& mean, const torch::Tensor& scale,
                        const torch::Tensor& shift) {
  check_cl(x, "x");
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto y = torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto mc = mean.contiguous(), sc = scale.contiguous(), hc = shift.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gn_affine", [&] {
    dispatch_c(C, [&](auto cc) {
      affine_impl<scalar_t, decltype(cc)::value>(x.data_ptr<scalar_t>(), mc.data_ptr<scalar_t>(),
                                                 sc.data_ptr<scalar_t>(), hc.data_ptr<scalar_t>(), B, C, HW,
                                                 y.data_ptr<scalar_t>());
    });
  });
  return y;
}

// Per-(image, channel) sums of gy and of gy * (x - mean): the GroupNorm backward's reductions.
template <typename T>
void gn_bwd_sums_impl(const T* gy, const T* x, const T* mean, int64_t B, int64_t C, int64_t HW, double* sg,
                      double* sgd) {
  const int64_t L = kSpan * C;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> a1(L), a2(L), mrep(L);
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t t = 0; t < L; ++t) mrep[t] = mean[b * C + t % C];
      const T* __restrict mr = mrep.data();
      const T* g = gy + b * HW * C;
      const T* xb = x + b * HW * C;
      double* s1 = sg + b * C;
      double* s2 = sgd + b * C;
      std::fill(s1, s1 + C, 0.0);
      std::fill(s2, s2 + C, 0.0);
      int64_t p = 0;
      while (p + kSpan <= HW) {
        std::fill(a1.begin(), a1.end(), T(0));
        std::fill(a2.begin(), a2.end(), T(0));
        T* __restrict u = a1.data();
        T* __restrict v = a2.data();
        const int64_t stop = std::min(HW - kSpan, p + 256);
        for (; p <= stop; p += kSpan) {
          const T* __restrict gv = g + p * C;
          const T* __restrict xv = xb + p * C;
#pragma omp simd
          for (int64_t t = 0; t < L; ++t) {
            u[t] += gv[t];
            v[t] += gv[t] * (xv[t] - mr[t]);
          }
        }
        for (int64_t t = 0; t < L; ++t) {
          s1[t % C] += double(a1[t]);
          s2[t % C] += double(a2[t]);
        }
      }
      for (; p < HW; ++p)
        for (int64_t c = 0; c < C; ++c) {
          s1[c] += double(g[p * C + c]);
          s2[c] += double(g[p * C + c] * (xb[p * C + c] - mr[c]));
        }
    }
  });
}

std::vector<torch::Tensor> gn_backward_sums(const torch::Tensor& gy, const torch::Tensor& x,
                                            const torch::Tensor& mean) {
  check_cl(x, "x");
  check_cl(gy, "gy");
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto dopts = x.options().dtype(torch::kFloat64);
  auto sg = torch::empty({B, C}, dopts), sgd = torch::empty({B, C}, dopts);
  auto mc = mean.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gn_backward_sums", [&] {
    gn_bwd_sums_impl<scalar_t>(gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mc.data_ptr<scalar_t>(), B, C,
                               HW, sg.data_ptr<double>(), sgd.data_ptr<double>());
  });
  return {sg.to(x.scalar_type()), sgd.to(x.scalar_type())};
}

// gx = c1 * gy + c2 + c3 * (x - mean), all coefficients B x C.
template <typename T, int CC>
void gn_bwd_apply_impl(const T* gy, const T* x, const T* mean, const T* c1, const T* c2, const T* c3, int64_t B,
                       int64_t Crt, int64_t HW, T* gx) {
  const int64_t C = CC > 0 ? CC : Crt;
  at::parallel_for(0, B * HW, 1024, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t o = (p / HW) * C;
      const T* __restrict g = gy + p * C;
      const T* __restrict xv = x + p * C;
      const T* __restrict a1 = c1 + o;
      const T* __restrict a2 = c2 + o;
      const T* __restrict a3 = c3 + o;
      const T* __restrict mv = mean + o;
      T* __restrict out = gx + p * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) out[c] = a1[c] * g[c] + a2[c] + a3[c] * (xv[c] - mv[c]);
    }
  });
}

torch::Tensor gn_backward_apply(const torch::Tensor& gy, const torch::Tensor& x, const torch::Tensor& mean,
                                const torch::Tensor& c1, const torch::Tensor& c2, const torch::Tensor& c3) {
  check_cl(x, "x");
  check_cl(gy, "gy");
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto gx = torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto m = mean.contiguous(), a = c1.contiguous(), b = c2.contiguous(), c = c3.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gn_backward_apply", [&] {
    dispatch_c(C, [&](auto cc) {
      gn_bwd_apply_impl<scalar_t, decltype(cc)::value>(
          gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(),
          b.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), B, C, HW, gx.data_ptr<scalar_t>());
    });
  });
  return gx;
}

// ------------------------------------------------------------------- GroupNorm + 2x2 max-pool
// out = |a| * max over the 2x2 window of sgn * (x - mean) + shift, with a = rstd * w, sgn = sign(a)
// (an affine map commutes with the max this way). Window order and ties as ATen's max_pool2d: the
// first strict maximum in (0,0), (0,1), (1,0), (1,1) order; NaN wins. With ``save`` also the
// arg-max (0..3) and the pooled sgn * (x - mean) for the backward.
template <typename T, int CC>
void gn_pool_impl(const T* x, const T* mean, const T* a, const T* shift, int64_t B, int64_t Crt, int64_t H,
                  int64_t W, T* out, T* pooled_d, T* idx) {
  const int64_t C = CC > 0 ? CC : Crt;
  const int64_t Ho = H / 2, Wo = W / 2;
  at::parallel_for(0, B * Ho, 16, [&](int64_t q0, int64_t q1) {
    std::vector<T> sg(C), aa(C);
    int64_t last_b = -1;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / Ho, ho = q % Ho;
      if (b != last_b) {
        for (int64_t c = 0; c < C; ++c) {
          const T av = a[b * C + c];
          sg[c] = av < T(0) ? T(-1) : T(1);
          aa[c] = std::abs(av);
        }
        last_b = b;
      }
      const T* m = mean + b * C;
      const T* r0 = x + ((b * H + 2 * ho) * W) * C;
      const T* r1 = r0 + W * C;
      for (int64_t wo = 0; wo < Wo; ++wo) {
        const T* __restrict p00 = r0 + 2 * wo * C;
        const T* __restrict p01 = p00 + C;
        const T* __restrict p10 = r1 + 2 * wo * C;
        const T* __restrict p11 = p10 + C;
        const int64_t o = (q * Wo + wo) * C;
        T* __restrict ov = out + o;
        if (idx == nullptr) {
          // selects, not branches: the comparisons are data-dependent (unpredictable) and this way
          // the channel loop vectorises
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const T s = sg[c], mc = m[c];
            T best = s * (p00[c] - mc);
            T v = s * (p01[c] - mc);
            best = (v > best || v != v) ? v : best;
            v = s * (p10[c] - mc);
            best = (v > best || v != v) ? v : best;
            v = s * (p11[c] - mc);
            best = (v > best || v != v) ? v : best;
            ov[c] = best * aa[c] + shift[c];
          }
        } else {
          T* __restrict pd = pooled_d + o;
          T* __restrict iv = idx + o;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const T s = sg[c], mc = m[c];
            T best = s * (p00[c] - mc);
            T bi = 0;
            T v = s * (p01[c] - mc);
            bool t = v > best || v != v;
            best = t ? v : best;
            bi = t ? T(1) : bi;
            v = s * (p10[c] - mc);
            t = v > best || v != v;
            best = t ? v : best;
            bi = t ? T(2) : bi;
            v = s * (p11[c] - mc);
            t = v > best || v != v;
            best = t ? v : best;
            bi = t ? T(3) : bi;
            ov[c] = best * aa[c] + shift[c];
            pd[c] = best;
            iv[c] = bi;
          }
        }
      }
    }
  });
}

std::vector<torch::Tensor> gn_pool_forward(const torch::Tensor& x, const torch::Tensor& mean, const torch::Tensor& a,
                                           const torch::Tensor& shift, bool save) {
  check_cl(x, "x");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(H % 2 == 0 && W % 2 == 0, "gn_pool_forward needs even sides, got ", H, " x ", W);
  auto out = torch::empty({B, C, H / 2, W / 2}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  torch::Tensor pd, idx;
  if (save) {
    pd = torch::empty_like(out, at::MemoryFormat::ChannelsLast);
    idx = torch::empty_like(out, at::MemoryFormat::ChannelsLast);  // arg-max 0..3, in x's dtype (vectorises)
  }
  auto m = mean.contiguous(), ac = a.contiguous(), sc = shift.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gn_pool_forward", [&] {
    dispatch_c(C, [&](auto cc) {
      gn_pool_impl<scalar_t, decltype(cc)::value>(
          x.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), ac.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(), B, C, H,
          W, out.data_ptr<scalar_t>(), save ? pd.data_ptr<scalar_t>() : nullptr,
          save ? idx.data_ptr<scalar_t>() : nullptr);
    });
  });
  if (save) return {out, pd, idx};
  return {out};
}

// gx = c2 + c3 * (x - mean) everywhere, plus c1 * gp at each window's arg-max.
template <typename T, int CC>
void gn_pool_bwd_impl(const T* gp, const T* x, const T* mean, const T* idx, const T* c1, const T* c2,
                      const T* c3, int64_t B, int64_t Crt, int64_t H, int64_t W, T* gx) {
  // two passes per pair of rows: the dense affine part c2 + c3 (x - mean) over contiguous spans of
  // kSpan pixels (coefficients replicated along the span, so the loop vectorises whatever C is), then
  // c1 * gp added at each window's arg-max (a quarter of the positions)
  const int64_t C = CC > 0 ? CC : Crt;
  const int64_t Ho = H / 2, Wo = W / 2, L = kSpan * C;
  at::parallel_for(0, B * Ho, 16, [&](int64_t q0, int64_t q1) {
    std::vector<T> rep(3 * L);
    T* __restrict r2 = rep.data();
    T* __restrict r3 = r2 + L;
    T* __restrict rm = r3 + L;
    int64_t last_b = -1;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / Ho, ho = q % Ho, o = b * C;
      if (b != last_b) {
        for (int64_t t = 0; t < L; ++t) {
          r2[t] = c2[o + t % C];
          r3[t] = c3[o + t % C];
          rm[t] = mean[o + t % C];
        }
        last_b = b;
      }
      for (int64_t dh = 0; dh < 2; ++dh) {
        const int64_t h = 2 * ho + dh;
        const T* __restrict xr = x + ((b * H + h) * W) * C;
        T* __restrict gr = gx + ((b * H + h) * W) * C;
        int64_t w0 = 0;
        for (; w0 + kSpan <= W; w0 += kSpan) {
          const T* __restrict xs = xr + w0 * C;
          T* __restrict gs = gr + w0 * C;
#pragma omp simd
          for (int64_t t = 0; t < L; ++t) gs[t] = r2[t] + r3[t] * (xs[t] - rm[t]);
        }
        for (int64_t t = w0 * C; t < W * C; ++t) gr[t] = r2[t % C] + r3[t % C] * (xr[t] - rm[t % C]);
      }
      const T* __restrict iv = idx + q * Wo * C;
      const T* __restrict gv = gp + q * Wo * C;
      for (int64_t wo = 0; wo < Wo; ++wo)
        for (int64_t c = 0; c < C; ++c) {
          const int pos = int(iv[wo * C + c]);
          const int64_t h = 2 * ho + (pos >> 1), w = 2 * wo + (pos & 1);
          gx[((b * H + h) * W + w) * C + c] += c1[o + c] * gv[wo * C + c];
        }
    }
  });
}

torch::Tensor gn_pool_backward(const torch::Tensor& gp, const torch::Tensor& x, const torch::Tensor& mean,
                               const torch::Tensor& idx, const torch::Tensor& c1, const torch::Tensor& c2,
                               const torch::Tensor& c3) {
  check_cl(x, "x");
  check_cl(gp, "gp");
  check_cl(idx, "idx");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto gx = torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto m = mean.contiguous(), a = c1.contiguous(), b = c2.contiguous(), c = c3.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gn_pool_backward", [&] {
    dispatch_c(C, [&](auto cc) {
      gn_pool_bwd_impl<scalar_t, decltype(cc)::value>(
          gp.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), idx.data_ptr<scalar_t>(),
          a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), B, C, H, W,
          gx.data_ptr<scalar_t>());
    });
  });
  return gx;
}

// ------------------------------------------------------------------------------- BCE + Dice loss
// Per-image sums for wb * BCE + wd * Dice of a B x N logit map z against t, given p = sigmoid(z) and
// sp = softplus(z) (ATen computes both, vectorised): out[b] = (sum sp - z t, sum p t, sum p, sum t).
template <typename T>
void bce_dice_sums_impl(const T* z, const T* t, const T* p, const T* sp, int64_t B, int64_t N, double* out) {
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* __restrict zb = z + b * N;
      const T* __restrict tb = t + b * N;
      const T* __restrict pb = p + b * N;
      const T* __restrict sb = sp + b * N;
      double acc[4] = {0, 0, 0, 0};
      for (int64_t i0 = 0; i0 < N; i0 += 4096) {
        const int64_t i1 = std::min(N, i0 + 4096);
        T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t i = i0; i < i1; ++i) {
          s0 += sb[i] - zb[i] * tb[i];
          s1 += pb[i] * tb[i];
          s2 += pb[i];
          s3 += tb[i];
        }
        acc[0] += s0;
        acc[1] += s1;
        acc[2] += s2;
        acc[3] += s3;
      }
      for (int k = 0; k < 4; ++k) out[b * 4 + k] = acc[k];
    }
  });
}

torch::Tensor bce_dice_sums(const torch::Tensor& z, const torch::Tensor& t, const torch::Tensor& p,
                            const torch::Tensor& sp) {
  for (const auto* a : {&z, &t, &p, &sp}) {
    TORCH_CHECK(a->is_contiguous() && a->device().is_cpu(), "bce_dice_sums needs contiguous CPU tensors");
    TORCH_CHECK(a->sizes() == z.sizes() && a->scalar_type() == z.scalar_type(), "bce_dice_sums: shapes/dtypes differ");
  }
  const int64_t B = z.size(0), N = z.numel() / std::max<int64_t>(1, B);
  auto out = torch::empty({B, 4}, z.options().dtype(torch::kFloat64));
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "bce_dice_sums", [&] {
    bce_dice_sums_impl<scalar_t>(z.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(),
                                 sp.data_ptr<scalar_t>(), B, N, out.data_ptr<double>());
  });
  return out;
}

// d loss / d z = a * (p - t) + alpha[b] * (2 t - D[b]) * p * (1 - p), one pass.
template <typename T>
void bce_dice_grad_impl(const T* p, const T* t, const T* alpha, const T* dcoef, T a, int64_t B, int64_t N, T* g) {
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* __restrict pb = p + b * N;
      const T* __restrict tb = t + b * N;
      T* __restrict gb = g + b * N;
      const T al = alpha[b], d = dcoef[b];
#pragma omp simd
      for (int64_t i = 0; i < N; ++i)
        gb[i] = a * (pb[i] - tb[i]) + al * (T(2) * tb[i] - d) * pb[i] * (T(1) - pb[i]);
    }
  });
}

torch::Tensor bce_dice_grad(const torch::Tensor& p, const torch::Tensor& t, const torch::Tensor& alpha,
                            const torch::Tensor& dcoef, double a) {
  TORCH_CHECK(p.is_contiguous() && t.is_contiguous() && p.sizes() == t.sizes(), "bce_dice_grad: bad inputs");
  const int64_t B = p.size(0), N = p.numel() / std::max<int64_t>(1, B);
  auto g = torch::empty_like(p, at::MemoryFormat::Contiguous);
  auto al = alpha.to(p.scalar_type()).contiguous(), dc = dcoef.to(p.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "bce_dice_grad", [&] {
    bce_dice_grad_impl<scalar_t>(p.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), al.data_ptr<scalar_t>(),
                                 dc.data_ptr<scalar_t>(), scalar_t(a), B, N, g.data_ptr<scalar_t>());
  });
  return g;
}

}  // namespace

// The GIL is released in every kernel: egeunet.fast runs them from several worker threads at once.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ln_forward", &ln_forward, "channels LayerNorm of a channels-last map (y[, mean, rstd])", py::call_guard<py::gil_scoped_release>());
  m.def("ln_backward", &ln_backward, "its backward (gx, gw, gb)", py::call_guard<py::gil_scoped_release>());
  m.def("ln_multi", &ln_multi, "LayerNorm groups over a virtual concatenation of channel ranges (forward only)",
        py::call_guard<py::gil_scoped_release>());
  m.def("ln_multi_proj", &ln_multi_proj, "one ln_multi group followed by a 1x1 conv (forward only)",
        py::call_guard<py::gil_scoped_release>());
  m.def("ln_multi_backward", &ln_multi_backward, "its backward (per-source gradients, gw, gb)",
        py::call_guard<py::gil_scoped_release>());
  m.def("dw_conv", &dw_conv, "depth-wise 'same' conv of a channels-last map (odd k, dilation d)",
        py::call_guard<py::gil_scoped_release>());
  m.def("up_forward", &up_forward, "bilinear align_corners=True resize of a channels-last map",
        py::call_guard<py::gil_scoped_release>());
  m.def("up_backward", &up_backward, "its backward, as a separable gather",
        py::call_guard<py::gil_scoped_release>());
  m.def("dw_weight_grad", &dw_weight_grad, "weight gradient of a depth-wise 'same' conv", py::call_guard<py::gil_scoped_release>());
  m.def("gn_stats", &gn_stats, "GroupNorm two-pass statistics (mean, rstd), B x G", py::call_guard<py::gil_scoped_release>());
  m.def("gn_affine", &gn_affine, "(x - mean) * scale + shift, per (image, channel)", py::call_guard<py::gil_scoped_release>());
  m.def("gn_backward_sums", &gn_backward_sums, "per-(image, channel) sums of gy and gy * (x - mean)", py::call_guard<py::gil_scoped_release>());
  m.def("gn_backward_apply", &gn_backward_apply, "gx = c1 * gy + c2 + c3 * (x - mean)", py::call_guard<py::gil_scoped_release>());
  m.def("gn_pool_forward", &gn_pool_forward, "GroupNorm + 2x2 max-pool (out[, pooled d, arg-max])", py::call_guard<py::gil_scoped_release>());
  m.def("bce_dice_sums", &bce_dice_sums, "per-image (sum softplus(z) - z t, sum p t, sum p, sum t)",
        py::call_guard<py::gil_scoped_release>());
  m.def("bce_dice_grad", &bce_dice_grad, "the BCE + Dice logit gradient in one pass",
        py::call_guard<py::gil_scoped_release>());
  m.def("gn_pool_backward", &gn_pool_backward, "its input gradient", py::call_guard<py::gil_scoped_release>());
}
