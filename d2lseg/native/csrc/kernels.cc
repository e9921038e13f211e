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
// package keeps MXNet's operators.
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
struct Geometry {
  int N, Cin, h, w, C, s, K, Kpad, hb, wb, H, W;
  long P;  // number of blocks
  Geometry(const std::vector<int64_t>& xs, const std::vector<int64_t>& ws, int stride) {
    N = xs[0]; Cin = xs[1]; h = xs[2]; w = xs[3]; C = ws[1]; s = stride;
    K = 4 * Cin; Kpad = (K + 7) / 8 * 8; hb = h + 1; wb = w + 1; H = s * h; W = s * w;
    P = static_cast<long>(N) * hb * wb;
  }
};

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

// Register tiles: PB blocks x VT vectors of 8 columns, VT*8 columns of a block's s at a time. The
// shapes keep accumulators, weights and the broadcast within AVX2's 16 registers (measured, batch 8,
// stride 32: 6 x 2 runs the fused argmax at 1.4x the speed of 3 x 4, which spills a register).
template <int V>
struct Tiles {
  static constexpr int VT = V % 2 == 0 ? 2 : 1;  // vectors per tile
  static constexpr int PB = VT == 2 ? 6 : 10;    // blocks per tile
  static constexpr int chunks = V / VT;          // tiles across a block's s columns
};

// PB blocks, VT vectors of one panel row (row stride ldp floats): acc = bias + sum_k a[p][k] panel[k]
template <int VT, int PB>
__attribute__((always_inline)) inline void upsample_tile(const float* a, int K, const float* panel, int ldp, float b,
                                                         __m256 (&acc)[PB][VT]) {
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < VT; ++v) acc[p][v] = _mm256_set1_ps(b);
  for (int k = 0; k < K; ++k) {
    __m256 wv[VT];
    for (int v = 0; v < VT; ++v) wv[v] = _mm256_loadu_ps(panel + k * ldp + 8 * v);
    for (int p = 0; p < PB; ++p) {
      __m256 av = _mm256_broadcast_ss(a + p * K + k);
      for (int v = 0; v < VT; ++v) acc[p][v] = _mm256_fmadd_ps(av, wv[v], acc[p][v]);
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

template <int VT, int PB>
inline void tile_values(const TileArgs& t, float* out, int ldo, bool stream) {
  __m256 acc[PB][VT];
  upsample_tile<VT, PB>(t.a, t.K, t.panel, t.ldp, t.bias ? *t.bias : 0.f, acc);
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < VT; ++v) {
      if (stream)
        _mm256_stream_ps(out + p * ldo + 8 * v, acc[p][v]);
      else
        _mm256_storeu_ps(out + p * ldo + 8 * v, acc[p][v]);
    }
}

template <int VT, int PB>
inline void tile_labels(const TileArgs& t, float* out, int ldo) {
  __m256 best[PB][VT], idx[PB][VT];
  upsample_tile<VT, PB>(t.a, t.K, t.panel, t.ldp, t.bias ? t.bias[0] : 0.f, best);
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < VT; ++v) idx[p][v] = _mm256_setzero_ps();
  for (int c = 1; c < t.C; ++c) {
    __m256 acc[PB][VT];
    upsample_tile<VT, PB>(t.a, t.K, t.panel + c * t.class_stride, t.ldp, t.bias ? t.bias[c] : 0.f, acc);
    const __m256 fc = _mm256_set1_ps(static_cast<float>(c));
    for (int p = 0; p < PB; ++p)
      for (int v = 0; v < VT; ++v) {
        const __m256 more = _mm256_cmp_ps(acc[p][v], best[p][v], _CMP_GT_OQ);
        best[p][v] = _mm256_blendv_ps(best[p][v], acc[p][v], more);
        idx[p][v] = _mm256_blendv_ps(idx[p][v], fc, more);
      }
  }
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < VT; ++v) _mm256_storeu_ps(out + p * ldo + 8 * v, idx[p][v]);
}

// nb (< PB) blocks at the end of a row: the same tile with fewer blocks
template <bool Labels, int VT, int R>
inline void tile_rest(int nb, const TileArgs& t, float* out, int ldo) {
  if constexpr (R >= 1) {
    if (nb == R)
      Labels ? tile_labels<VT, R>(t, out, ldo) : tile_values<VT, R>(t, out, ldo, false);
    else
      tile_rest<Labels, VT, R - 1>(nb, t, out, ldo);
  }
}

// Output rows Y = by*s + i - s/2 of every image: values (N, C, H, W) of class panels Wp, or (Labels)
// the argmax over classes (N, H, W). Rows of one offset i share their C panels, which stay in cache.
template <bool Labels, int V>
void upsample_rows(const Geometry& g, const float* A, const float* Wp, const float* bias, float* out) {
  using T = Tiles<V>;
  constexpr int VT = T::VT, PB = T::PB, cw = 8 * VT;
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
              if (!Labels && nb == PB && bx0 > 0 && bx0 + PB < g.wb && (reinterpret_cast<uintptr_t>(dst) & 31) == 0) {
                tile_values<VT, PB>(t, dst, s, true);  // inside the image: straight to the output
                continue;
              }
              if (nb == PB)
                Labels ? tile_labels<VT, PB>(t, tile, cw) : tile_values<VT, PB>(t, tile, cw, false);
              else
                tile_rest<Labels, VT, PB - 1>(nb, t, tile, cw);
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
  Geometry g(in->at(0).shape, in->at(1).shape, s);
  const long na = g.P * g.K, nw = static_cast<long>(g.K) * g.C * s * s;
  Scratch scratch(na + nw);
  if (!scratch.ptr) {
    MX_ERROR_MSG << "d2lseg_upsample: out of memory";
    return MX_FAIL;
  }
  float* A = scratch.ptr;
  float* Wp = A + na;
  gather_blocks(g, in->at(0).data<float>(), A, g.K, 1);
  pack_panels(g, in->at(1).data<float>(), Wp);
  const float* bias = in->at(2).data<float>();
  float* y = out->at(0).data<float>();
  switch (s / 8) {
    case 1: argmax ? upsample_rows<true, 1>(g, A, Wp, bias, y) : upsample_rows<false, 1>(g, A, Wp, bias, y); break;
    case 2: argmax ? upsample_rows<true, 2>(g, A, Wp, bias, y) : upsample_rows<false, 2>(g, A, Wp, bias, y); break;
    case 3: argmax ? upsample_rows<true, 3>(g, A, Wp, bias, y) : upsample_rows<false, 3>(g, A, Wp, bias, y); break;
    case 4: argmax ? upsample_rows<true, 4>(g, A, Wp, bias, y) : upsample_rows<false, 4>(g, A, Wp, bias, y); break;
    default:
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
// Gp[p][j0 + 8v ..]; the same register budget as the forward's tiles
template <int KB, int VT>
inline void dweight_tile(const float* AT, long P, const float* Gp, int s, int j0, int k0, float* dw, int C, int c,
                         int i) {
  __m256 acc[KB][VT];
  for (int q = 0; q < KB; ++q)
    for (int v = 0; v < VT; ++v) acc[q][v] = _mm256_setzero_ps();
  for (long p = 0; p < P; ++p) {
    __m256 gv[VT];
    for (int v = 0; v < VT; ++v) gv[v] = _mm256_loadu_ps(Gp + p * s + j0 + 8 * v);
    for (int q = 0; q < KB; ++q) {
      __m256 av = _mm256_broadcast_ss(AT + (k0 + q) * P + p);
      for (int v = 0; v < VT; ++v) acc[q][v] = _mm256_fmadd_ps(av, gv[v], acc[q][v]);
    }
  }
  for (int q = 0; q < KB; ++q)
    for (int v = 0; v < VT; ++v)
      _mm256_storeu_ps(dw + ((static_cast<long>(k0 + q) * C + c) * s + i) * s + j0 + 8 * v, acc[q][v]);
}

// dA[p][8*kv0 .. 8*(kv0+NV)) += sum_j Gp[p][j] * WT[j][same] for PB blocks
template <int NV, int PB>
inline void dA_tile(const float* Gp, int s, const float* WT, int Kpad, int kv0, float* dA) {
  __m256 acc[PB][NV];
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm256_loadu_ps(dA + p * Kpad + 8 * (kv0 + v));
  for (int j = 0; j < s; ++j) {
    __m256 w[NV];
    for (int v = 0; v < NV; ++v) w[v] = _mm256_loadu_ps(WT + j * Kpad + 8 * (kv0 + v));
    for (int p = 0; p < PB; ++p) {
      __m256 gj = _mm256_broadcast_ss(Gp + p * s + j);
      for (int v = 0; v < NV; ++v) acc[p][v] = _mm256_fmadd_ps(gj, w[v], acc[p][v]);
    }
  }
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(dA + p * Kpad + 8 * (kv0 + v), acc[p][v]);
}

template <int NV>
void dA_panel(const float* Gp, long P, int s, const float* WT, int Kpad, int kv0, float* dA) {
  long p = 0;
  for (; p + 4 <= P; p += 4) dA_tile<NV, 4>(Gp + p * s, s, WT, Kpad, kv0, dA + p * Kpad);
  for (; p < P; ++p) dA_tile<NV, 1>(Gp + p * s, s, WT, Kpad, kv0, dA + p * Kpad);
}

// The backward sums the input gradient over panels in kGroups fixed groups (then the groups in
// order), so its result does not depend on how many threads run it: MXNet runs the contexts of
// one process concurrently, each with a share of the cores, and a distributed worker must get
// the same bits as the single-process run it is compared with (tests/test_kvstore.py).
constexpr int kGroups = 16;

// Backward, one panel (c, i) at a time: Gp[p][j] = dout at block p's row/column j (zero where cropped);
// dweight[k, c, i, :] = sum_p AT[k][p] Gp[p]; dA[p][k] += sum_j weight[k, c, i, j] Gp[p][j];
// dbias[c] = sum of dout; dx gathers dA back through the four groups.
template <int V>
void upsample_backward(const Geometry& g, const float* dout, const float* AT, const float* wt, float* dx,
                       float* dw, float* db, float* scratch) {
  const int s = g.s, half = s / 2, K = g.K, Kpad = g.Kpad, panels = g.C * s;
  const int groups = std::min(kGroups, panels);
  float* dA_all = scratch;                                     // groups x P x Kpad
  float* panel_sum = dA_all + static_cast<long>(groups) * g.P * Kpad;  // C*s
  std::memset(dA_all, 0, sizeof(float) * groups * g.P * Kpad);
#pragma omp parallel
  {
    std::vector<float> Gp(g.P * s), WT(static_cast<size_t>(s) * Kpad, 0.f);
#pragma omp for schedule(dynamic)
    for (int grp_id = 0; grp_id < groups; ++grp_id)
    for (int ci = grp_id * panels / groups; ci < (grp_id + 1) * panels / groups; ++ci) {
      float* dA = dA_all + static_cast<long>(grp_id) * g.P * Kpad;
      const int c = ci / s, i = ci % s;
      double total = 0;
      for (int n = 0; n < g.N; ++n)
        for (int by = 0; by < g.hb; ++by) {
          const int Y = by * s + i - half;
          float* gdst = Gp.data() + ((static_cast<long>(n) * g.hb + by) * g.wb) * s;
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
      constexpr int VT = Tiles<V>::VT, KB = Tiles<V>::PB;
      for (int j0 = 0; j0 < s; j0 += 8 * VT) {
        int k0 = 0;
        for (; k0 + KB <= K; k0 += KB) dweight_tile<KB, VT>(AT, g.P, Gp.data(), s, j0, k0, dw, g.C, c, i);
        for (; k0 < K; ++k0) dweight_tile<1, VT>(AT, g.P, Gp.data(), s, j0, k0, dw, g.C, c, i);
      }
      // dA[p] += sum_j Gp[p][j] * WT[j], WT[j][k] = weight[k, c, i, j]
      for (int k = 0; k < K; ++k)
        for (int j = 0; j < s; ++j) WT[static_cast<size_t>(j) * Kpad + k] = wt[((static_cast<long>(k) * g.C + c) * s + i) * s + j];
      for (int kv0 = 0; kv0 < Kpad / 8; kv0 += 3) {
        switch (std::min(3, Kpad / 8 - kv0)) {
          case 3: dA_panel<3>(Gp.data(), g.P, s, WT.data(), Kpad, kv0, dA); break;
          case 2: dA_panel<2>(Gp.data(), g.P, s, WT.data(), Kpad, kv0, dA); break;
          default: dA_panel<1>(Gp.data(), g.P, s, WT.data(), Kpad, kv0, dA); break;
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

MXReturnValue upsample_bwd(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* in,
                           std::vector<MXTensor>* out, const OpResource&) {
  // in: dout, data, weight, bias, out;  out: ddata, dweight, dbias
  const int s = attr_int(attrs, "stride", 0);
  Geometry g(in->at(1).shape, in->at(2).shape, s);
  const long na = g.P * g.K;
  Scratch buffer(na + static_cast<long>(kGroups) * g.P * g.Kpad + g.C * s);
  if (!buffer.ptr) {
    MX_ERROR_MSG << "d2lseg_upsample: out of memory";
    return MX_FAIL;
  }
  float* AT = buffer.ptr;
  float* scratch = AT + na;
  gather_blocks(g, in->at(1).data<float>(), AT, 1, g.P);
  const float* dout = in->at(0).data<float>();
  const float* wt = in->at(2).data<float>();
  float *dx = out->at(0).data<float>(), *dw = out->at(1).data<float>(), *db = out->at(2).data<float>();
  switch (s / 8) {
    case 1: upsample_backward<1>(g, dout, AT, wt, dx, dw, db, scratch); break;
    case 2: upsample_backward<2>(g, dout, AT, wt, dx, dw, db, scratch); break;
    case 3: upsample_backward<3>(g, dout, AT, wt, dx, dw, db, scratch); break;
    case 4: upsample_backward<4>(g, dout, AT, wt, dx, dw, db, scratch); break;
    default:
      MX_ERROR_MSG << "d2lseg_upsample: stride " << s << " is not 8, 16, 24 or 32";
      return MX_FAIL;
  }
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------ softmax cross-entropy
// exp for x <= 88 (Cephes' expf polynomial, relative error about 1e-7)
inline __m256 exp256(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
  __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

constexpr int BLOCK = 64;  // pixels of one row handled together (a multiple of 8)

// Per-pixel max and sum of exp(z - max) over C channels of a row segment [x0, x0 + nb), nb <= BLOCK
inline void softmax_stats(const float* z, long plane, int C, int nb, float* mx, float* se) {
  float buf[BLOCK];
  const int nv = (nb + 7) / 8;
  for (int x = 0; x < nb; ++x) mx[x] = z[x];
  for (int c = 1; c < C; ++c)
    for (int x = 0; x < nb; ++x) mx[x] = std::max(mx[x], z[c * plane + x]);
  for (int x = nb; x < nv * 8; ++x) mx[x] = 0.f;
  for (int v = 0; v < nv; ++v) _mm256_storeu_ps(se + 8 * v, _mm256_setzero_ps());
  for (int c = 0; c < C; ++c) {
    const float* zc = z + c * plane;
    for (int x = 0; x < nv * 8; ++x) buf[x] = x < nb ? zc[x] : 0.f;
    for (int v = 0; v < nv; ++v) {
      __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(buf + 8 * v), _mm256_loadu_ps(mx + 8 * v)));
      _mm256_storeu_ps(se + 8 * v, _mm256_add_ps(_mm256_loadu_ps(se + 8 * v), e));
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
        const int nb = std::min(BLOCK, W - x0), nv = (nb + 7) / 8;
        const long off = static_cast<long>(n) * C * plane + static_cast<long>(y) * W + x0;
        const float* zr = z + off;
        float* dr = dz + off;
        const float* lr = lab + (static_cast<long>(n) * H + y) * W + x0;
        softmax_stats(zr, plane, C, nb, mx, se);
        for (int x = 0; x < nv * 8; ++x)
          coef[x] = (x < nb && lr[x] != ignore) ? scale * (weight ? weight[clip_label(lr[x], C)] : 1.f) / se[x] : 0.f;
        for (int c = 0; c < C; ++c) {
          for (int x = 0; x < nv * 8; ++x) buf[x] = x < nb ? zr[c * plane + x] : 0.f;
          for (int v = 0; v < nv; ++v) {
            __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(buf + 8 * v), _mm256_loadu_ps(mx + 8 * v)));
            _mm256_storeu_ps(buf + 8 * v, _mm256_mul_ps(e, _mm256_loadu_ps(coef + 8 * v)));
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
