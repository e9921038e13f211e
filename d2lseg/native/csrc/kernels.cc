// Native CPU kernels for the FCN's head, registered as MXNet operators (MXNet 1.9 lib_api).
//
//   d2lseg_upsample(data, weight, bias, stride)   the chapter's Conv2DTranspose(C, 2s, padding=s/2,
//                                                  strides=s) in FastUpsampling's weight layout
//   d2lseg_upsample_argmax(data, weight, bias, stride)  argmax over classes of d2lseg_upsample's
//                                                  output, computed without writing that output
//   d2lseg_softmax_ce(logits, label, ignore)      per-sample mean softmax cross-entropy over axis 1
//   d2lseg_softmax_ce_weighted(logits, label, weight, ignore)   the same, each pixel weighted by its class
//   d2lseg_argmax(logits)                         argmax over axis 1, first maximum wins
//
// Built and loaded by d2lseg/kernels.py; tests/test_kernels.py checks every value and gradient
// against MXNet's own operators. Needs AVX2 and FMA (x86-64); otherwise the build fails and the
// package keeps MXNet's operators. Where the build has AVX-512 (-march=native on such a CPU), the
// upsampling of strides 16 and 32 and the loss run on 16-float vectors, with the AVX2 build's bits.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"

#if !defined(__AVX2__) || !defined(__FMA__)
#error "d2lseg kernels need AVX2 and FMA"
#endif

using namespace mxnet::ext;

namespace {

int attr_int(const std::unordered_map<std::string, std::string>& attrs, const char* key, int fallback) {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : std::stoi(it->second);
}

// Scratch memory of one operator call. Not MXNet's temporary space (OpResource::alloc_cpu): every
// alloc_cpu call of an operator returns the same buffer, resized, so two allocations would alias.
struct Scratch {
  float* ptr = nullptr;
  explicit Scratch(long floats) {
    if (posix_memalign(reinterpret_cast<void**>(&ptr), 64, sizeof(float) * std::max(floats, 1L))) ptr = nullptr;
  }
  ~Scratch() { std::free(ptr); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// ------------------------------------------------------------------------------------ upsampling
// Output block (by, bx), 0 <= by <= h, 0 <= bx <= w, covers rows by*s - s/2 + [0, s) and the same
// columns; it depends on the 4*Cin vector A[n, by, bx] = x[n, :, by - dy, bx - dx] for the groups
// g = 2*dy + dx (zero outside the image): out block = bias + sum_k A[k] * weight[k, c, :, :].
//
// The kernels are written once for a vector type (Avx2: 8 floats, 16 registers; Avx512: 16 floats,
// 32 registers). Every output value is accumulated in the same order whatever the vector width, so
// the AVX-512 build gives the AVX2 build's bits (tests/test_kernels.py builds both and compares).
// AVX-512 runs strides 16 and 32 (a block row is whole vectors); strides 8 and 24 stay on AVX2.
struct Avx2 {
  using V = __m256;
  static constexpr int L = 8, kRegs = 16;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void stream(float* p, V v) { _mm256_stream_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b
  static V round(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V pow2(V n) {  // 2^n for whole n in float range
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  // best, idx = the larger of (best, idx) and (v, c); ties keep best (the first maximum wins)
  static void keep_max(V v, V c, V& best, V& idx) {
    const V more = _mm256_cmp_ps(v, best, _CMP_GT_OQ);
    best = _mm256_blendv_ps(best, v, more);
    idx = _mm256_blendv_ps(idx, c, more);
  }
};

#ifdef __AVX512F__
struct Avx512 {
  using V = __m512;
  static constexpr int L = 16, kRegs = 32;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void stream(float* p, V v) { _mm512_stream_ps(p, v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static V round(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V pow2(V n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  static void keep_max(V v, V c, V& best, V& idx) {
    const __mmask16 more = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
    best = _mm512_mask_blend_ps(more, best, v);
    idx = _mm512_mask_blend_ps(more, idx, c);
  }
};
#endif

struct Geometry {
  int N, Cin, h, w, C, s, K, Kpad, hb, wb, H, W;
  long P;  // number of blocks
  // Kpad: K rounded up to whole vectors of `lanes` floats (the backward's input-gradient rows)
  Geometry(const std::vector<int64_t>& xs, const std::vector<int64_t>& ws, int stride, int lanes) {
    N = xs[0]; Cin = xs[1]; h = xs[2]; w = xs[3]; C = ws[1]; s = stride;
    K = 4 * Cin; Kpad = (K + lanes - 1) / lanes * lanes; hb = h + 1; wb = w + 1; H = s * h; W = s * w;
    P = static_cast<long>(N) * hb * wb;
  }
};

// Vector width the upsampling of stride s runs with: 16 where the build has AVX-512 and s is a
// multiple of 16, else 8
inline int upsample_lanes(int s) {
#ifdef __AVX512F__
  if (s % 16 == 0) return 16;
#endif
  (void)s;
  return 8;
}

// A[p * p_stride + k * k_stride] = block p's input value k, p = (n*hb + by)*wb + bx: (P, K) for the
// forward, (K, P) (k_stride = P, p_stride = 1) for the backward's dweight
void gather_blocks(const Geometry& g, const float* x, float* A, long p_stride, long k_stride) {
#pragma omp parallel for collapse(2)
  for (int n = 0; n < g.N; ++n)
    for (int by = 0; by < g.hb; ++by)
      for (int bx = 0; bx < g.wb; ++bx) {
        float* a = A + ((static_cast<long>(n) * g.hb + by) * g.wb + bx) * p_stride;
        for (int grp = 0; grp < 4; ++grp) {
          int y = by - grp / 2, xx = bx - grp % 2;
          bool in = y >= 0 && y < g.h && xx >= 0 && xx < g.w;
          for (int ci = 0; ci < g.Cin; ++ci)
            a[(grp * g.Cin + ci) * k_stride] = in ? x[((static_cast<long>(n) * g.Cin + ci) * g.h + y) * g.w + xx] : 0.f;
        }
      }
}

// Wp[c*s + i][k][j] = weight[k][c][i][j]: one K x s panel per output row offset (c, i)
void pack_panels(const Geometry& g, const float* wt, float* Wp) {
  const int s = g.s;
#pragma omp parallel for
  for (int ci = 0; ci < g.C * s; ++ci) {
    int c = ci / s, i = ci % s;
    for (int k = 0; k < g.K; ++k)
      std::memcpy(Wp + (static_cast<long>(ci) * g.K + k) * s, wt + ((static_cast<long>(k) * g.C + c) * s + i) * s,
                  s * sizeof(float));
  }
}

// Register tiles: PB blocks x VT vectors, VT*L columns of a block's s at a time (V vectors per block
// row). The shapes keep accumulators, weights and the broadcast within the registers (measured on
// AVX2, batch 8, stride 32: 6 x 2 runs the fused argmax at 1.4x the speed of 3 x 4, which spills a
// register; with AVX-512's 32 registers, 8 x 2 ran the backward 5-15% faster than 12 x 2).
template <class I, int V>
struct Tiles {
  static constexpr int VT = V % 2 == 0 ? 2 : 1;                           // vectors per tile
  static constexpr int PB = I::kRegs == 32 ? (VT == 2 ? 8 : 16) : (VT == 2 ? 6 : 10);  // blocks per tile
  static constexpr int chunks = V / VT;                                   // tiles across a block's s columns
};

// PB blocks, VT vectors of one panel row (row stride ldp floats): acc = bias + sum_k a[p][k] panel[k]
template <class I, int VT, int PB>
__attribute__((always_inline)) inline void upsample_tile(const float* a, int K, const float* panel, int ldp, float b,
                                                         typename I::V (&acc)[PB][VT]) {
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < VT; ++v) acc[p][v] = I::set1(b);
  for (int k = 0; k < K; ++k) {
    typename I::V wv[VT];
    for (int v = 0; v < VT; ++v) wv[v] = I::load(panel + k * ldp + I::L * v);
    for (int p = 0; p < PB; ++p) {
      const typename I::V av = I::bcast(a + p * K + k);
      for (int v = 0; v < VT; ++v) acc[p][v] = I::fma(av, wv[v], acc[p][v]);
    }
  }
}

// The tile's values (values) or the argmax over C classes of them (labels; classes are class_stride
// floats apart in the panels; each class's values are computed exactly as for `values`, the first
// maximum wins as in d2lseg_argmax), stored to out[p * ldo + column], streamed past the cache if asked.
struct TileArgs {
  const float* a;       // the PB blocks' input vectors, K floats each
  int K;
  const float* panel;   // (first class's) panel, at the tile's first column
  int ldp;              // panel row stride (s)
  const float* bias;    // (first class's) bias, or nullptr
  int C;                // classes compared (labels)
  long class_stride;
};

template <class I, int VT, int PB>
inline void tile_values(const TileArgs& t, float* out, int ldo, bool stream) {
  typename I::V acc[PB][VT];
  upsample_tile<I, VT, PB>(t.a, t.K, t.panel, t.ldp, t.bias ? *t.bias : 0.f, acc);
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < VT; ++v) {
      if (stream)
        I::stream(out + p * ldo + I::L * v, acc[p][v]);
      else
        I::store(out + p * ldo + I::L * v, acc[p][v]);
    }
}

template <class I, int VT, int PB>
inline void tile_labels(const TileArgs& t, float* out, int ldo) {
  typename I::V best[PB][VT], idx[PB][VT];
  upsample_tile<I, VT, PB>(t.a, t.K, t.panel, t.ldp, t.bias ? t.bias[0] : 0.f, best);
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < VT; ++v) idx[p][v] = I::set1(0.f);
  for (int c = 1; c < t.C; ++c) {
    typename I::V acc[PB][VT];
    upsample_tile<I, VT, PB>(t.a, t.K, t.panel + c * t.class_stride, t.ldp, t.bias ? t.bias[c] : 0.f, acc);
    const typename I::V fc = I::set1(static_cast<float>(c));
    for (int p = 0; p < PB; ++p)
      for (int v = 0; v < VT; ++v) I::keep_max(acc[p][v], fc, best[p][v], idx[p][v]);
  }
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < VT; ++v) I::store(out + p * ldo + I::L * v, idx[p][v]);
}

// nb (< PB) blocks at the end of a row: the same tile with fewer blocks
template <class I, bool Labels, int VT, int R>
inline void tile_rest(int nb, const TileArgs& t, float* out, int ldo) {
  if constexpr (R >= 1) {
    if (nb == R)
      Labels ? tile_labels<I, VT, R>(t, out, ldo) : tile_values<I, VT, R>(t, out, ldo, false);
    else
      tile_rest<I, Labels, VT, R - 1>(nb, t, out, ldo);
  }
}

// Output rows Y = by*s + i - s/2 of every image: values (N, C, H, W) of class panels Wp, or (Labels)
// the argmax over classes (N, H, W). Rows of one offset i share their C panels, which stay in cache.
template <class I, bool Labels, int V>
void upsample_rows(const Geometry& g, const float* A, const float* Wp, const float* bias, float* out) {
  using T = Tiles<I, V>;
  constexpr int VT = T::VT, PB = T::PB, cw = I::L * VT;
  const int s = g.s, half = s / 2;
  const int classes = Labels ? 1 : g.C;  // panel loops: one argmax over all classes, or one per class
#pragma omp parallel for collapse(2) schedule(static)
  for (int c = 0; c < classes; ++c)
    for (int i = 0; i < s; ++i) {
      const float* panel = Wp + (static_cast<long>(c) * s + i) * g.K * s;
      float tile[PB * cw];
      for (int n = 0; n < g.N; ++n)
        for (int by = 0; by < g.hb; ++by) {
          const int Y = by * s + i - half;
          if (Y < 0 || Y >= g.H) continue;
          float* row = out + ((static_cast<long>(n) * (Labels ? 1 : g.C) + c) * g.H + Y) * g.W;
          const float* arow = A + (static_cast<long>(n) * g.hb + by) * g.wb * g.K;
          for (int h = 0; h < T::chunks; ++h) {
            const TileArgs base{nullptr, g.K, panel + h * cw, s, bias ? bias + c : nullptr, g.C,
                                static_cast<long>(s) * g.K * s};
            for (int bx0 = 0; bx0 < g.wb; bx0 += PB) {
              const int nb = std::min(PB, g.wb - bx0);
              TileArgs t = base;
              t.a = arow + static_cast<long>(bx0) * g.K;
              float* dst = row + bx0 * s - half + h * cw;  // block bx0's chunk h
              if (!Labels && nb == PB && bx0 > 0 && bx0 + PB < g.wb &&
                  (reinterpret_cast<uintptr_t>(dst) & (sizeof(typename I::V) - 1)) == 0) {
                tile_values<I, VT, PB>(t, dst, s, true);  // inside the image: straight to the output
                continue;
              }
              if (nb == PB)
                Labels ? tile_labels<I, VT, PB>(t, tile, cw) : tile_values<I, VT, PB>(t, tile, cw, false);
              else
                tile_rest<I, Labels, VT, PB - 1>(nb, t, tile, cw);
              for (int p = 0; p < nb; ++p) {
                const int col0 = (bx0 + p) * s - half + h * cw;
                const int lo = std::max(0, -col0), hi = std::min(cw, g.W - col0);
                if (hi > lo) std::memcpy(row + col0 + lo, tile + p * cw + lo, (hi - lo) * sizeof(float));
              }
            }
          }
        }
      if (!Labels) _mm_sfence();  // this thread's non-temporal stores are visible before the region ends
    }
}

// upsample_rows for g.s = L * V, V = 1 .. 4 (AVX-512: 1 or 2) -> false for any other stride
template <class I, bool Labels>
bool upsample_rows_for(const Geometry& g, const float* A, const float* Wp, const float* bias, float* out) {
  switch (g.s / I::L * (g.s % I::L == 0)) {
    case 1: upsample_rows<I, Labels, 1>(g, A, Wp, bias, out); return true;
    case 2: upsample_rows<I, Labels, 2>(g, A, Wp, bias, out); return true;
    case 3:
      if constexpr (I::L == 8) { upsample_rows<I, Labels, 3>(g, A, Wp, bias, out); return true; }
      return false;
    case 4:
      if constexpr (I::L == 8) { upsample_rows<I, Labels, 4>(g, A, Wp, bias, out); return true; }
      return false;
    default: return false;
  }
}

MXReturnValue upsample_parse(const std::unordered_map<std::string, std::string>& attrs, int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 1;
  int s = attr_int(attrs, "stride", 0);
  if (s < 8 || s > 32 || s % 8) {
    MX_ERROR_MSG << "d2lseg_upsample: stride must be 8, 16, 24 or 32, got " << s;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

MXReturnValue float_types(const std::unordered_map<std::string, std::string>&, std::vector<int>* in_types,
                          std::vector<int>* out_types) {
  for (int t : *in_types)
    if (t != kFloat32) {
      MX_ERROR_MSG << "d2lseg kernels take float32 only";
      return MX_FAIL;
    }
  for (auto& t : *out_types) t = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue upsample_shape(const std::unordered_map<std::string, std::string>& attrs,
                             std::vector<std::vector<unsigned int>>* in, std::vector<std::vector<unsigned int>>* out) {
  const auto& x = in->at(0);
  const auto& wt = in->at(1);
  int s = attr_int(attrs, "stride", 0);
  if (x.size() != 4 || wt.size() != 4 || wt[0] != 4 * x[1] || wt[2] != static_cast<unsigned>(s) ||
      wt[3] != static_cast<unsigned>(s) || in->at(2).size() != 1 || in->at(2)[0] != wt[1]) {
    MX_ERROR_MSG << "d2lseg_upsample: expected data (N, C, h, w), weight (4C, C_out, s, s), bias (C_out,)";
    return MX_FAIL;
  }
  (*out)[0] = {x[0], wt[1], x[2] * s, x[3] * s};
  return MX_SUCCESS;
}

// The forward of d2lseg_upsample (argmax = false) or of d2lseg_upsample_argmax (true)
MXReturnValue upsample_run(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* in,
                           std::vector<MXTensor>* out, bool argmax) {
  const int s = attr_int(attrs, "stride", 0);
  const int lanes = upsample_lanes(s);
  Geometry g(in->at(0).shape, in->at(1).shape, s, lanes);
  const long na = g.P * g.K, nw = static_cast<long>(g.K) * g.C * s * s;
  Scratch scratch(na + nw);
  float* A = scratch.ptr;
  if (!A) {
    MX_ERROR_MSG << "d2lseg_upsample: out of memory";
    return MX_FAIL;
  }
  float* Wp = A + na;
  gather_blocks(g, in->at(0).data<float>(), A, g.K, 1);
  pack_panels(g, in->at(1).data<float>(), Wp);
  const float* bias = in->at(2).data<float>();
  float* y = out->at(0).data<float>();
  bool done = false;
#ifdef __AVX512F__
  if (lanes == 16)
    done = argmax ? upsample_rows_for<Avx512, true>(g, A, Wp, bias, y)
                  : upsample_rows_for<Avx512, false>(g, A, Wp, bias, y);
#endif
  if (lanes == 8)
    done = argmax ? upsample_rows_for<Avx2, true>(g, A, Wp, bias, y)
                  : upsample_rows_for<Avx2, false>(g, A, Wp, bias, y);
  if (!done) {
    MX_ERROR_MSG << "d2lseg_upsample: stride " << s << " is not 8, 16, 24 or 32";
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

MXReturnValue upsample_fwd(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* in,
                           std::vector<MXTensor>* out, const OpResource&) {
  return upsample_run(attrs, in, out, false);
}

MXReturnValue upsample_argmax_fwd(const std::unordered_map<std::string, std::string>& attrs,
                                  std::vector<MXTensor>* in, std::vector<MXTensor>* out, const OpResource&) {
  return upsample_run(attrs, in, out, true);
}

// argmax is piecewise constant: zero gradients (as MXNet's argmax), registered so that graphs holding
// the operator next to trainable parameters can be built
MXReturnValue zero_grads(const std::unordered_map<std::string, std::string>&, std::vector<MXTensor>*,
                         std::vector<MXTensor>* out, const OpResource&) {
  for (auto& t : *out) std::memset(t.data<float>(), 0, sizeof(float) * t.size());
  return MX_SUCCESS;
}

MXReturnValue upsample_argmax_shape(const std::unordered_map<std::string, std::string>& attrs,
                                    std::vector<std::vector<unsigned int>>* in,
                                    std::vector<std::vector<unsigned int>>* out) {
  if (upsample_shape(attrs, in, out) != MX_SUCCESS) return MX_FAIL;
  const auto full = (*out)[0];
  (*out)[0] = {full[0], full[2], full[3]};
  return MX_SUCCESS;
}

// dweight rows k0 .. k0+KB of panel (c, i), VT vectors from column j0: acc[q][v] = sum_p AT[k0+q][p] *
// Gp[p][j0 + L*v ..]; the same register budget as the forward's tiles
template <class I, int KB, int VT>
inline void dweight_tile(const float* AT, long P, const float* Gp, int s, int j0, int k0, float* dw, int C, int c,
                         int i) {
  typename I::V acc[KB][VT];
  for (int q = 0; q < KB; ++q)
    for (int v = 0; v < VT; ++v) acc[q][v] = I::set1(0.f);
  for (long p = 0; p < P; ++p) {
    typename I::V gv[VT];
    for (int v = 0; v < VT; ++v) gv[v] = I::load(Gp + p * s + j0 + I::L * v);
    for (int q = 0; q < KB; ++q) {
      const typename I::V av = I::bcast(AT + (k0 + q) * P + p);
      for (int v = 0; v < VT; ++v) acc[q][v] = I::fma(av, gv[v], acc[q][v]);
    }
  }
  for (int q = 0; q < KB; ++q)
    for (int v = 0; v < VT; ++v)
      I::store(dw + ((static_cast<long>(k0 + q) * C + c) * s + i) * s + j0 + I::L * v, acc[q][v]);
}

// kr (< KB) rows at the end of K: the same tile with fewer rows
template <class I, int VT, int R>
inline void dweight_rest(int kr, const float* AT, long P, const float* Gp, int s, int j0, int k0, float* dw, int C,
                         int c, int i) {
  if constexpr (R >= 1) {
    if (kr == R)
      dweight_tile<I, R, VT>(AT, P, Gp, s, j0, k0, dw, C, c, i);
    else
      dweight_rest<I, VT, R - 1>(kr, AT, P, Gp, s, j0, k0, dw, C, c, i);
  }
}

// dA[p][L*kv0 .. L*(kv0+NV)) += sum_j Gp[p][j] * WT[j][same] for PB blocks
template <class I, int NV, int PB>
inline void dA_tile(const float* Gp, int s, const float* WT, int Kpad, int kv0, float* dA) {
  typename I::V acc[PB][NV];
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = I::load(dA + p * Kpad + I::L * (kv0 + v));
  for (int j = 0; j < s; ++j) {
    typename I::V w[NV];
    for (int v = 0; v < NV; ++v) w[v] = I::load(WT + j * Kpad + I::L * (kv0 + v));
    for (int p = 0; p < PB; ++p) {
      const typename I::V gj = I::bcast(Gp + p * s + j);
      for (int v = 0; v < NV; ++v) acc[p][v] = I::fma(gj, w[v], acc[p][v]);
    }
  }
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < NV; ++v) I::store(dA + p * Kpad + I::L * (kv0 + v), acc[p][v]);
}

template <class I, int NV>
void dA_panel(const float* Gp, long P, int s, const float* WT, int Kpad, int kv0, float* dA) {
  constexpr int PB = I::kRegs == 32 ? 8 : 4;  // NV <= 3: PB * NV accumulators, NV weights, a broadcast
  long p = 0;
  for (; p + PB <= P; p += PB) dA_tile<I, NV, PB>(Gp + p * s, s, WT, Kpad, kv0, dA + p * Kpad);
  for (; p < P; ++p) dA_tile<I, NV, 1>(Gp + p * s, s, WT, Kpad, kv0, dA + p * Kpad);
}

// The backward sums the input gradient over panels in kGroups fixed groups (then the groups in
// order), so its result does not depend on how many threads run it: MXNet runs the contexts of
// one process concurrently, each with a share of the cores, and a distributed worker must get
// the same bits as the single-process run it is compared with (tests/test_kvstore.py).
constexpr int kGroups = 16;

// Backward, one panel (c, i) at a time: Gp[p][j] = dout at block p's row/column j (zero where cropped);
// dweight[k, c, i, :] = sum_p AT[k][p] Gp[p]; dA[p][k] += sum_j weight[k, c, i, j] Gp[p][j];
// dbias[c] = sum of dout; dx gathers dA back through the four groups.
template <class I, int V>
void upsample_backward(const Geometry& g, const float* dout, const float* AT, const float* wt, float* dx,
                       float* dw, float* db, float* work) {
  const int s = g.s, half = s / 2, K = g.K, Kpad = g.Kpad, panels = g.C * s;
  const int groups = std::min(kGroups, panels);
  float* dA_all = work;                                        // groups x P x Kpad
  float* panel_sum = dA_all + static_cast<long>(groups) * g.P * Kpad;  // C*s
  std::memset(dA_all, 0, sizeof(float) * groups * g.P * Kpad);
#pragma omp parallel
  {
    std::vector<float> gp_buffer(g.P * s), wt_buffer(static_cast<size_t>(s) * Kpad, 0.f);
    float* const Gp = gp_buffer.data();
    float* const WT = wt_buffer.data();
#pragma omp for schedule(dynamic)
    for (int grp_id = 0; grp_id < groups; ++grp_id)
    for (int ci = grp_id * panels / groups; ci < (grp_id + 1) * panels / groups; ++ci) {
      float* dA = dA_all + static_cast<long>(grp_id) * g.P * Kpad;
      const int c = ci / s, i = ci % s;
      double total = 0;
      for (int n = 0; n < g.N; ++n)
        for (int by = 0; by < g.hb; ++by) {
          const int Y = by * s + i - half;
          float* gdst = Gp + ((static_cast<long>(n) * g.hb + by) * g.wb) * s;
          if (Y < 0 || Y >= g.H) {
            std::memset(gdst, 0, sizeof(float) * g.wb * s);
            continue;
          }
          const float* row = dout + ((static_cast<long>(n) * g.C + c) * g.H + Y) * g.W;
          // the row's W values sit at block offset half: [half zeros | row | half zeros]
          std::memset(gdst, 0, sizeof(float) * half);
          std::memcpy(gdst + half, row, sizeof(float) * g.W);
          std::memset(gdst + half + g.W, 0, sizeof(float) * half);
          __m256 sum = _mm256_setzero_ps();
          for (int x = 0; x + 8 <= g.W; x += 8) sum = _mm256_add_ps(sum, _mm256_loadu_ps(row + x));
          float lanes[8];
          _mm256_storeu_ps(lanes, sum);
          for (int x = g.W / 8 * 8; x < g.W; ++x) total += row[x];
          for (float v : lanes) total += v;
        }
      panel_sum[ci] = static_cast<float>(total);
      // dweight[k, c, i, :] = sum_p AT[k][p] Gp[p]: register tiles of KB k-rows x VT vectors
      constexpr int VT = Tiles<I, V>::VT, KB = Tiles<I, V>::PB;
      for (int j0 = 0; j0 < s; j0 += I::L * VT) {
        int k0 = 0;
        for (; k0 + KB <= K; k0 += KB) dweight_tile<I, KB, VT>(AT, g.P, Gp, s, j0, k0, dw, g.C, c, i);
        dweight_rest<I, VT, KB - 1>(K - k0, AT, g.P, Gp, s, j0, k0, dw, g.C, c, i);
      }
      // dA[p] += sum_j Gp[p][j] * WT[j], WT[j][k] = weight[k, c, i, j]
      for (int k = 0; k < K; ++k)
        for (int j = 0; j < s; ++j)
          WT[static_cast<long>(j) * Kpad + k] = wt[((static_cast<long>(k) * g.C + c) * s + i) * s + j];
      const int kvs = Kpad / I::L;
      for (int kv0 = 0; kv0 < kvs; kv0 += 3) {
        switch (std::min(3, kvs - kv0)) {
          case 3: dA_panel<I, 3>(Gp, g.P, s, WT, Kpad, kv0, dA); break;
          case 2: dA_panel<I, 2>(Gp, g.P, s, WT, Kpad, kv0, dA); break;
          default: dA_panel<I, 1>(Gp, g.P, s, WT, Kpad, kv0, dA); break;
        }
      }
    }
  }
  // sum the groups' dA in a fixed order, then scatter to dx
#pragma omp parallel for
  for (long q = 0; q < g.P * Kpad; ++q)
    for (int grp_id = 1; grp_id < groups; ++grp_id) dA_all[q] += dA_all[static_cast<long>(grp_id) * g.P * Kpad + q];
#pragma omp parallel for collapse(2)
  for (int n = 0; n < g.N; ++n)
    for (int ci = 0; ci < g.Cin; ++ci)
      for (int y = 0; y < g.h; ++y)
        for (int xx = 0; xx < g.w; ++xx) {
          float v = 0;
          for (int grp = 0; grp < 4; ++grp) {
            const long p = (static_cast<long>(n) * g.hb + y + grp / 2) * g.wb + xx + grp % 2;
            v += dA_all[p * Kpad + grp * g.Cin + ci];
          }
          dx[((static_cast<long>(n) * g.Cin + ci) * g.h + y) * g.w + xx] = v;
        }
  for (int c = 0; c < g.C; ++c) {
    double total = 0;
    for (int i = 0; i < s; ++i) total += panel_sum[c * s + i];
    db[c] = static_cast<float>(total);
  }
}

// upsample_backward for g.s = L * V (as upsample_rows_for) -> false for any other stride
template <class I>
bool upsample_backward_for(const Geometry& g, const float* dout, const float* AT, const float* wt, float* dx,
                           float* dw, float* db, float* work) {
  switch (g.s / I::L * (g.s % I::L == 0)) {
    case 1: upsample_backward<I, 1>(g, dout, AT, wt, dx, dw, db, work); return true;
    case 2: upsample_backward<I, 2>(g, dout, AT, wt, dx, dw, db, work); return true;
    case 3:
      if constexpr (I::L == 8) { upsample_backward<I, 3>(g, dout, AT, wt, dx, dw, db, work); return true; }
      return false;
    case 4:
      if constexpr (I::L == 8) { upsample_backward<I, 4>(g, dout, AT, wt, dx, dw, db, work); return true; }
      return false;
    default: return false;
  }
}

MXReturnValue upsample_bwd(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* in,
                           std::vector<MXTensor>* out, const OpResource&) {
  // in: dout, data, weight, bias, out;  out: ddata, dweight, dbias
  const int s = attr_int(attrs, "stride", 0);
  const int lanes = upsample_lanes(s);
  Geometry g(in->at(1).shape, in->at(2).shape, s, lanes);
  const long na = g.P * g.K;
  Scratch buffer(na + static_cast<long>(kGroups) * g.P * g.Kpad + g.C * s);
  float* AT = buffer.ptr;
  if (!AT) {
    MX_ERROR_MSG << "d2lseg_upsample: out of memory";
    return MX_FAIL;
  }
  float* work = AT + na;
  gather_blocks(g, in->at(1).data<float>(), AT, 1, g.P);
  const float* dout = in->at(0).data<float>();
  const float* wt = in->at(2).data<float>();
  float *dx = out->at(0).data<float>(), *dw = out->at(1).data<float>(), *db = out->at(2).data<float>();
  bool done = false;
#ifdef __AVX512F__
  if (lanes == 16) done = upsample_backward_for<Avx512>(g, dout, AT, wt, dx, dw, db, work);
#endif
  if (lanes == 8) done = upsample_backward_for<Avx2>(g, dout, AT, wt, dx, dw, db, work);
  if (!done) {
    MX_ERROR_MSG << "d2lseg_upsample: stride " << s << " is not 8, 16, 24 or 32";
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------ softmax cross-entropy
// exp for x <= 88 (Cephes' expf polynomial, relative error about 1e-7), lane by lane: the same bits at
// either width
template <class I>
inline typename I::V exp_lanes(typename I::V x) {
  using V = typename I::V;
  x = I::max(I::min(x, I::set1(88.0f)), I::set1(-87.0f));
  const V fx = I::round(I::mul(x, I::set1(1.44269504088896341f)));
  V r = I::fnma(fx, I::set1(0.693359375f), x);
  r = I::fnma(fx, I::set1(-2.12194440e-4f), r);
  V p = I::set1(1.9875691500E-4f);
  p = I::fma(p, r, I::set1(1.3981999507E-3f));
  p = I::fma(p, r, I::set1(8.3334519073E-3f));
  p = I::fma(p, r, I::set1(4.1665795894E-2f));
  p = I::fma(p, r, I::set1(1.6666665459E-1f));
  p = I::fma(p, r, I::set1(5.0000001201E-1f));
  const V y = I::add(I::fma(p, I::mul(r, r), r), I::set1(1.0f));
  return I::mul(y, I::pow2(fx));
}

#ifdef __AVX512F__
using Wide = Avx512;  // the loss's vectors: AVX-512 where the build has it
#else
using Wide = Avx2;
#endif

constexpr int BLOCK = 64;  // pixels of one row handled together (a multiple of 16)

// Per-pixel max and sum of exp(z - max) over C channels of a row segment [x0, x0 + nb), nb <= BLOCK
inline void softmax_stats(const float* z, long plane, int C, int nb, float* mx, float* se) {
  using I = Wide;
  float buf[BLOCK];
  const int nv = (nb + I::L - 1) / I::L;
  for (int x = 0; x < nb; ++x) mx[x] = z[x];
  for (int c = 1; c < C; ++c)
    for (int x = 0; x < nb; ++x) mx[x] = std::max(mx[x], z[c * plane + x]);
  for (int x = nb; x < nv * I::L; ++x) mx[x] = 0.f;
  for (int v = 0; v < nv; ++v) I::store(se + I::L * v, I::set1(0.f));
  for (int c = 0; c < C; ++c) {
    const float* zc = z + c * plane;
    for (int x = 0; x < nv * I::L; ++x) buf[x] = x < nb ? zc[x] : 0.f;
    for (int v = 0; v < nv; ++v) {
      const I::V e = exp_lanes<I>(I::load(buf + I::L * v) - I::load(mx + I::L * v));
      I::store(se + I::L * v, I::load(se + I::L * v) + e);
    }
  }
}

inline int clip_label(float l, int C) { return std::min(std::max(static_cast<int>(l), 0), C - 1); }

MXReturnValue ce_parse(const std::unordered_map<std::string, std::string>&, int* num_in, int* num_out) {
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue ce_shape(const std::unordered_map<std::string, std::string>&, std::vector<std::vector<unsigned int>>* in,
                       std::vector<std::vector<unsigned int>>* out) {
  const auto& z = in->at(0);
  const auto& l = in->at(1);
  if (z.size() != 4 || l.size() != 3 || l[0] != z[0] || l[1] != z[2] || l[2] != z[3]) {
    MX_ERROR_MSG << "d2lseg_softmax_ce: expected logits (N, C, H, W) and labels (N, H, W)";
    return MX_FAIL;
  }
  (*out)[0] = {z[0]};
  return MX_SUCCESS;
}

MXReturnValue wce_parse(const std::unordered_map<std::string, std::string>&, int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue wce_shape(const std::unordered_map<std::string, std::string>& attrs,
                        std::vector<std::vector<unsigned int>>* in, std::vector<std::vector<unsigned int>>* out) {
  const auto& w = in->at(2);
  if (w.size() != 1 || in->at(0).size() != 4 || w[0] != in->at(0)[1]) {
    MX_ERROR_MSG << "d2lseg_softmax_ce_weighted: expected class weights (C,) for logits (N, C, H, W)";
    return MX_FAIL;
  }
  return ce_shape(attrs, in, out);
}

// Per-sample mean over all H*W pixels of weight[label] * (-log softmax(z)[label]); weight nullptr: 1.
MXReturnValue ce_fwd_impl(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* in,
                          std::vector<MXTensor>* out, const float* weight) {
  const auto& sh = in->at(0).shape;
  const int N = sh[0], C = sh[1], H = sh[2], W = sh[3];
  const float ignore = static_cast<float>(attr_int(attrs, "ignore_index", 255));
  const float* z = in->at(0).data<float>();
  const float* lab = in->at(1).data<float>();
  float* loss = out->at(0).data<float>();
  const long plane = static_cast<long>(H) * W;
  std::vector<double> rows(static_cast<size_t>(N) * H);
#pragma omp parallel for collapse(2) schedule(static)
  for (int n = 0; n < N; ++n)
    for (int y = 0; y < H; ++y) {
      double total = 0;
      float mx[BLOCK], se[BLOCK];
      for (int x0 = 0; x0 < W; x0 += BLOCK) {
        const int nb = std::min(BLOCK, W - x0);
        const float* zr = z + static_cast<long>(n) * C * plane + static_cast<long>(y) * W + x0;
        const float* lr = lab + (static_cast<long>(n) * H + y) * W + x0;
        softmax_stats(zr, plane, C, nb, mx, se);
        for (int x = 0; x < nb; ++x)
          if (lr[x] != ignore) {
            const int k = clip_label(lr[x], C);
            const double nll = mx[x] + std::log(se[x]) - zr[k * plane + x];
            total += weight ? weight[k] * nll : nll;
          }
      }
      rows[static_cast<size_t>(n) * H + y] = total;
    }
  for (int n = 0; n < N; ++n) {
    double total = 0;
    for (int y = 0; y < H; ++y) total += rows[static_cast<size_t>(n) * H + y];
    loss[n] = static_cast<float>(total / plane);
  }
  return MX_SUCCESS;
}

MXReturnValue ce_fwd(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* in,
                     std::vector<MXTensor>* out, const OpResource&) {
  return ce_fwd_impl(attrs, in, out, nullptr);
}

MXReturnValue wce_fwd(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* in,
                      std::vector<MXTensor>* out, const OpResource&) {
  return ce_fwd_impl(attrs, in, out, in->at(2).data<float>());
}

// in: dloss, logits, label[, weight], loss;  out: dlogits, dlabel[, dweight] (the label and weight get none)
MXReturnValue ce_bwd_impl(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* in,
                          std::vector<MXTensor>* out, const float* weight) {
  const auto& sh = in->at(1).shape;
  const int N = sh[0], C = sh[1], H = sh[2], W = sh[3];
  const float ignore = static_cast<float>(attr_int(attrs, "ignore_index", 255));
  const float* dl = in->at(0).data<float>();
  const float* z = in->at(1).data<float>();
  const float* lab = in->at(2).data<float>();
  float* dz = out->at(0).data<float>();
  const long plane = static_cast<long>(H) * W;
  std::memset(out->at(1).data<float>(), 0, sizeof(float) * N * plane);
#pragma omp parallel for collapse(2) schedule(static)
  for (int n = 0; n < N; ++n)
    for (int y = 0; y < H; ++y) {
      const float scale = dl[n] / static_cast<float>(plane);
      float mx[BLOCK], se[BLOCK], coef[BLOCK], buf[BLOCK];
      for (int x0 = 0; x0 < W; x0 += BLOCK) {
        using I = Wide;
        const int nb = std::min(BLOCK, W - x0), nv = (nb + I::L - 1) / I::L;
        const long off = static_cast<long>(n) * C * plane + static_cast<long>(y) * W + x0;
        const float* zr = z + off;
        float* dr = dz + off;
        const float* lr = lab + (static_cast<long>(n) * H + y) * W + x0;
        softmax_stats(zr, plane, C, nb, mx, se);
        for (int x = 0; x < nv * I::L; ++x)
          coef[x] = (x < nb && lr[x] != ignore) ? scale * (weight ? weight[clip_label(lr[x], C)] : 1.f) / se[x] : 0.f;
        for (int c = 0; c < C; ++c) {
          for (int x = 0; x < nv * I::L; ++x) buf[x] = x < nb ? zr[c * plane + x] : 0.f;
          for (int v = 0; v < nv; ++v) {
            const I::V e = exp_lanes<I>(I::load(buf + I::L * v) - I::load(mx + I::L * v));
            I::store(buf + I::L * v, e * I::load(coef + I::L * v));
          }
          std::memcpy(dr + c * plane, buf, nb * sizeof(float));
        }
        for (int x = 0; x < nb; ++x)
          if (lr[x] != ignore) {
            const int k = clip_label(lr[x], C);
            dr[k * plane + x] -= weight ? scale * weight[k] : scale;
          }
      }
    }
  return MX_SUCCESS;
}

MXReturnValue ce_bwd(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* in,
                     std::vector<MXTensor>* out, const OpResource&) {
  return ce_bwd_impl(attrs, in, out, nullptr);
}

MXReturnValue wce_bwd(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* in,
                      std::vector<MXTensor>* out, const OpResource&) {
  MXTensor& w = in->at(3);
  std::memset(out->at(2).data<float>(), 0, sizeof(float) * w.shape[0]);
  return ce_bwd_impl(attrs, in, out, w.data<float>());
}

// ---------------------------------------------------------------------------------------- argmax
MXReturnValue argmax_parse(const std::unordered_map<std::string, std::string>&, int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue argmax_shape(const std::unordered_map<std::string, std::string>&,
                           std::vector<std::vector<unsigned int>>* in, std::vector<std::vector<unsigned int>>* out) {
  const auto& z = in->at(0);
  if (z.size() != 4) {
    MX_ERROR_MSG << "d2lseg_argmax: expected (N, C, H, W) scores";
    return MX_FAIL;
  }
  (*out)[0] = {z[0], z[2], z[3]};
  return MX_SUCCESS;
}

MXReturnValue argmax_fwd(const std::unordered_map<std::string, std::string>&, std::vector<MXTensor>* in,
                         std::vector<MXTensor>* out, const OpResource&) {
  const auto& sh = in->at(0).shape;
  const int N = sh[0], C = sh[1];
  const long plane = static_cast<long>(sh[2]) * sh[3];
  const float* z = in->at(0).data<float>();
  float* idx = out->at(0).data<float>();
  const long chunks = (plane + 255) / 256;
#pragma omp parallel for collapse(2) schedule(static)
  for (int n = 0; n < N; ++n)
    for (long q = 0; q < chunks; ++q) {
      const long x0 = q * 256, x1 = std::min(plane, x0 + 256);
      const float* zn = z + static_cast<long>(n) * C * plane;
      float* out_n = idx + static_cast<long>(n) * plane;
      float best[256];
      std::memcpy(best, zn + x0, (x1 - x0) * sizeof(float));
      for (long x = x0; x < x1; ++x) out_n[x] = 0.f;
      for (int c = 1; c < C; ++c) {
        const float* zc = zn + static_cast<long>(c) * plane;
        const float fc = static_cast<float>(c);
        for (long x = x0; x < x1; ++x) {
          const bool more = zc[x] > best[x - x0];
          best[x - x0] = more ? zc[x] : best[x - x0];
          out_n[x] = more ? fc : out_n[x];
        }
      }
    }
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(d2lseg_upsample)
    .setParseAttrs(upsample_parse)
    .setInferType(float_types)
    .setInferShape(upsample_shape)
    .setForward(upsample_fwd, "cpu")
    .setBackward(upsample_bwd, "cpu");

REGISTER_OP(d2lseg_upsample_argmax)
    .setParseAttrs(upsample_parse)
    .setInferType(float_types)
    .setInferShape(upsample_argmax_shape)
    .setForward(upsample_argmax_fwd, "cpu")
    .setBackward(zero_grads, "cpu");

REGISTER_OP(d2lseg_softmax_ce)
    .setParseAttrs(ce_parse)
    .setInferType(float_types)
    .setInferShape(ce_shape)
    .setForward(ce_fwd, "cpu")
    .setBackward(ce_bwd, "cpu");

REGISTER_OP(d2lseg_softmax_ce_weighted)
    .setParseAttrs(wce_parse)
    .setInferType(float_types)
    .setInferShape(wce_shape)
    .setForward(wce_fwd, "cpu")
    .setBackward(wce_bwd, "cpu");

REGISTER_OP(d2lseg_argmax)
    .setParseAttrs(argmax_parse)
    .setInferType(float_types)
    .setInferShape(argmax_shape)
    .setForward(argmax_fwd, "cpu");

MXReturnValue initialize(int version) {
  if (version < 10700) {
    MX_ERROR_MSG << "d2lseg kernels need MXNet 1.7 or newer, found " << version;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

// The vector width (floats) d2lseg_upsample runs stride s with: 16 (AVX-512) or 8 (AVX2). For the tests.
extern "C" int d2lseg_upsample_lanes(int s) { return upsample_lanes(s); }

// The instruction sets the compiler targeted (-march=native on the building machine), for the
// environment record of every run (d2lseg/environment.py). Changes no operator.
extern "C" const char* d2lseg_isa() {
  return "fma avx2"
#ifdef __AVX512F__
         " avx512f"
#endif
#ifdef __AVX512BW__
         " avx512bw"
#endif
#ifdef __AVX512VL__
         " avx512vl"
#endif
#ifdef __AVX512VNNI__
         " avx512vnni"
#endif
#ifdef __AVX512BF16__
         " avx512bf16"
#endif
#ifdef __AMX_TILE__
         " amx"
#endif
      ;
}
