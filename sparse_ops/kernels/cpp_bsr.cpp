// Block-sparse products on x86 CPUs, fp32: register-tiled "row GEMM" (forward and
// grad-input) and SDDMM (grad-values), block sizes 16 and 8. Built by
// sparse_ops/kernels/cpp_build.py with torch.utils.cpp_extension; see kernels/README.md.
//
// One source for every x86-64 CPU: the kernels are compiled twice, for AVX2 + FMA and for
// AVX-512F (function target attributes), and the path is chosen at run time from the
// CPU's flags (__builtin_cpu_supports). A CPU without AVX2 + FMA never calls in (the
// Python side checks `isa()` and keeps the other backends).
//
// Row GEMM (one routine for two products):
//   out[n, s*B + o] (+)= sum over the blocks k of segment s:
//                        sum_{q<B} A[n, other[k]*B + q] * P[k][q][o]
//   forward   (segments = block rows, CSR order):    A = X,  P[k] = values[k]^T
//   grad_input (segments = block columns, CSC order): A = dY, P[k] = values[perm[k]]
// A tile of TN tokens x B outputs lives in registers for the whole K loop over the
// segment's blocks (A entries broadcast, one P row loaded per q). Tokens are split
// across threads (at::parallel_for), each thread owns its output rows: no reduction.
//
// SDDMM: dV[k][i][j] = sum_n dY[n, rows[k]*B + i] * X[n, cols[k]*B + j], over tokens
// in chunks; blocks split across threads (each block owned by one thread).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <malloc.h>
#include <sys/mman.h>
#include <cstdint>
#include <cstring>
#include <vector>
#include <chrono>
#include <algorithm>

namespace {

#define AVX2_FN __attribute__((target("avx2,fma")))
// SDDMM: tokens fetched ahead (prefetches never fault, also past the end of a tensor)
constexpr int64_t kSddPrefetch = 8;
#define AVX512_FN __attribute__((target("avx512f,avx2,fma")))

// ---------------------------------------------------------------------------------
// AVX2 + FMA (8 floats a register)

// TN tokens x 16 outputs = TN x 2 ymm accumulators.
template <int TN>
AVX2_FN inline void rowgemm_tile16_avx2(const float* ap, const float* P,
                                        const int64_t* other, int64_t k0, int64_t k1,
                                        float* const* out_rows, const float* bias) {
  __m256 acc0[TN], acc1[TN];
  __m256 b0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  __m256 b1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
#pragma GCC unroll 16
  for (int t = 0; t < TN; ++t) { acc0[t] = b0; acc1[t] = b1; }
  for (int64_t k = k0; k < k1; ++k) {
    const float* pk = P + k * 256;
    const float* a = ap + other[k] * (TN * 16);
    if (k + 1 < k1) _mm_prefetch(reinterpret_cast<const char*>(P + (k + 1) * 256), _MM_HINT_T0);
#pragma GCC unroll 16
    for (int q = 0; q < 16; ++q) {
      const __m256 p0 = _mm256_loadu_ps(pk + q * 16);
      const __m256 p1 = _mm256_loadu_ps(pk + q * 16 + 8);
#pragma GCC unroll 16
      for (int t = 0; t < TN; ++t) {
        const __m256 av = _mm256_broadcast_ss(a + t * 16 + q);
        acc0[t] = _mm256_fmadd_ps(av, p0, acc0[t]);
        acc1[t] = _mm256_fmadd_ps(av, p1, acc1[t]);
      }
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < TN; ++t) {
    _mm256_storeu_ps(out_rows[t], acc0[t]);
    _mm256_storeu_ps(out_rows[t] + 8, acc1[t]);
  }
}

// TN tokens x 8 outputs = TN ymm accumulators.
template <int TN>
AVX2_FN inline void rowgemm_tile8_avx2(const float* ap, const float* P,
                                       const int64_t* other, int64_t k0, int64_t k1,
                                       float* const* out_rows, const float* bias) {
  __m256 acc[TN];
  __m256 b0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
#pragma GCC unroll 16
  for (int t = 0; t < TN; ++t) acc[t] = b0;
  for (int64_t k = k0; k < k1; ++k) {
    const float* pk = P + k * 64;
    const float* a = ap + other[k] * (TN * 8);
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) {
      const __m256 p = _mm256_loadu_ps(pk + q * 8);
#pragma GCC unroll 16
      for (int t = 0; t < TN; ++t)
        acc[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + t * 8 + q), p, acc[t]);
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < TN; ++t) _mm256_storeu_ps(out_rows[t], acc[t]);
}

// ---------------------------------------------------------------------------------
// AVX-512F (16 floats a register)

// TN tokens x 16 outputs = TN zmm accumulators.
template <int TN>
AVX512_FN inline void rowgemm_tile16_avx512(const float* ap, const float* P,
                                            const int64_t* other, int64_t k0, int64_t k1,
                                            float* const* out_rows, const float* bias) {
  __m512 acc[TN];
  __m512 b0 = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int t = 0; t < TN; ++t) acc[t] = b0;
  for (int64_t k = k0; k < k1; ++k) {
    const float* pk = P + k * 256;
    const float* a = ap + other[k] * (TN * 16);
    if (k + 1 < k1) {  // the next block's P and this tile's A entries for it
      const char* pn = reinterpret_cast<const char*>(P + (k + 1) * 256);
      const char* an = reinterpret_cast<const char*>(ap + other[k + 1] * (TN * 16));
#pragma GCC unroll 16
      for (int t = 0; t < 16; ++t) _mm_prefetch(pn + 64 * t, _MM_HINT_T0);
#pragma GCC unroll 16
      for (int t = 0; t < TN; ++t) _mm_prefetch(an + 64 * t, _MM_HINT_T0);
    }
#pragma GCC unroll 16
    for (int q = 0; q < 16; ++q) {
      const __m512 p = _mm512_loadu_ps(pk + q * 16);
#pragma GCC unroll 16
      for (int t = 0; t < TN; ++t)
        acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(a[t * 16 + q]), p, acc[t]);
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < TN; ++t) _mm512_storeu_ps(out_rows[t], acc[t]);
}

// B = 8, AVX-512: the tile held transposed, 8 outputs x (16 V tokens) = 8 V zmm
// accumulators, so that all 16 lanes work (an 8-wide output row fills only half a zmm).
// A is packed transposed ([block column][q][16 V tokens]); per q: V loads of A and 8
// broadcasts of P feed 8 V FMAs. The tile is transposed back through a stack buffer.
template <int V>
AVX512_FN inline void rowgemm_tile8t_avx512(const float* ap, const float* P,
                                            const int64_t* other, int64_t k0, int64_t k1,
                                            float* const* out_rows, const float* bias) {
  constexpr int TN = 16 * V;
  __m512 acc[8][V];
#pragma GCC unroll 8
  for (int o = 0; o < 8; ++o) {
    const __m512 b0 = bias ? _mm512_set1_ps(bias[o]) : _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[o][v] = b0;
  }
  for (int64_t k = k0; k < k1; ++k) {
    const float* pk = P + k * 64;
    const float* a = ap + other[k] * (8 * TN);
    if (k + 1 < k1) {
      const char* an = reinterpret_cast<const char*>(ap + other[k + 1] * (8 * TN));
#pragma GCC unroll 32
      for (int l = 0; l < 8 * V; ++l) _mm_prefetch(an + 64 * l, _MM_HINT_T0);
    }
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) {
      __m512 av[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) av[v] = _mm512_loadu_ps(a + q * TN + 16 * v);
#pragma GCC unroll 8
      for (int o = 0; o < 8; ++o) {
        const __m512 b = _mm512_set1_ps(pk[q * 8 + o]);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[o][v] = _mm512_fmadd_ps(av[v], b, acc[o][v]);
      }
    }
  }
  alignas(64) float buf[8][TN];
#pragma GCC unroll 8
  for (int o = 0; o < 8; ++o) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) _mm512_store_ps(&buf[o][16 * v], acc[o][v]);
  }
  for (int t = 0; t < TN; ++t) {
    float* row = out_rows[t];
#pragma GCC unroll 8
    for (int o = 0; o < 8; ++o) row[o] = buf[o][t];
  }
}

// SDDMM, B = 16, AVX-512: the whole 16 x 16 block in 16 zmm accumulators.
AVX512_FN void sddmm16_avx512(const float* dy, int64_t ldy, const float* x, int64_t ldx,
                              int64_t n0, int64_t n1, int64_t r, int64_t c, float* dv,
                              bool accumulate) {
  __m512 acc[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) acc[i] = accumulate ? _mm512_loadu_ps(dv + i * 16) : _mm512_setzero_ps();
  const float* dyp = dy + r * 16;
  const float* xp = x + c * 16;
  for (int64_t n = n0; n < n1; ++n) {
    // a token's rows are ldx / ldy floats apart (a different 4 KB page every few tokens),
    // which the hardware prefetcher does not follow: fetch PF tokens ahead
    _mm_prefetch(reinterpret_cast<const char*>(xp + (n + kSddPrefetch) * ldx), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(dyp + (n + kSddPrefetch) * ldy), _MM_HINT_T0);
    const __m512 xv = _mm512_loadu_ps(xp + n * ldx);
    const float* d = dyp + n * ldy;
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(d[i]), xv, acc[i]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dv + i * 16, acc[i]);
}

// SDDMM, B = 16, AVX2: rows i0..i0+R of the block (R x 2 ymm accumulators) per pass.
template <int R>
AVX2_FN inline void sddmm16_rows_avx2(const float* dy, int64_t ldy, const float* x, int64_t ldx,
                                      int64_t n0, int64_t n1, int64_t r, int64_t c, int i0,
                                      float* dv, bool accumulate) {
  __m256 a0[R], a1[R];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    a0[i] = accumulate ? _mm256_loadu_ps(dv + (i0 + i) * 16) : _mm256_setzero_ps();
    a1[i] = accumulate ? _mm256_loadu_ps(dv + (i0 + i) * 16 + 8) : _mm256_setzero_ps();
  }
  const float* dyp = dy + r * 16 + i0;
  const float* xp = x + c * 16;
  for (int64_t n = n0; n < n1; ++n) {
    _mm_prefetch(reinterpret_cast<const char*>(xp + (n + kSddPrefetch) * ldx), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(dyp + (n + kSddPrefetch) * ldy), _MM_HINT_T0);
    const __m256 x0 = _mm256_loadu_ps(xp + n * ldx);
    const __m256 x1 = _mm256_loadu_ps(xp + n * ldx + 8);
    const float* d = dyp + n * ldy;
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const __m256 b = _mm256_broadcast_ss(d + i);
      a0[i] = _mm256_fmadd_ps(b, x0, a0[i]);
      a1[i] = _mm256_fmadd_ps(b, x1, a1[i]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    _mm256_storeu_ps(dv + (i0 + i) * 16, a0[i]);
    _mm256_storeu_ps(dv + (i0 + i) * 16 + 8, a1[i]);
  }
}

AVX2_FN void sddmm16_avx2(const float* dy, int64_t ldy, const float* x, int64_t ldx, int64_t n0,
                          int64_t n1, int64_t r, int64_t c, float* dv, bool accumulate) {
  sddmm16_rows_avx2<6>(dy, ldy, x, ldx, n0, n1, r, c, 0, dv, accumulate);
  sddmm16_rows_avx2<6>(dy, ldy, x, ldx, n0, n1, r, c, 6, dv, accumulate);
  sddmm16_rows_avx2<4>(dy, ldy, x, ldx, n0, n1, r, c, 12, dv, accumulate);
}

// SDDMM, B = 8, AVX2 (also used on AVX-512 CPUs): 8 ymm accumulators.
AVX2_FN void sddmm8_avx2(const float* dy, int64_t ldy, const float* x, int64_t ldx, int64_t n0,
                         int64_t n1, int64_t r, int64_t c, float* dv, bool accumulate) {
  __m256 acc[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) acc[i] = accumulate ? _mm256_loadu_ps(dv + i * 8) : _mm256_setzero_ps();
  const float* dyp = dy + r * 8;
  const float* xp = x + c * 8;
  for (int64_t n = n0; n < n1; ++n) {
    _mm_prefetch(reinterpret_cast<const char*>(xp + (n + kSddPrefetch) * ldx), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(dyp + (n + kSddPrefetch) * ldy), _MM_HINT_T0);
    const __m256 xv = _mm256_loadu_ps(xp + n * ldx);
    const float* d = dyp + n * ldy;
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + i), xv, acc[i]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dv + i * 8, acc[i]);
}

// ---------------------------------------------------------------------------------
// Peak: independent FMA chains in registers (no memory), for the benchmarks' "fraction of
// the core's peak". Returns the sum of the accumulators so nothing is optimised away.

AVX2_FN float fma_loop_avx2(int64_t iters) {
  __m256 acc[12];
  const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
#pragma GCC unroll 12
  for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_ps(static_cast<float>(j));
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = _mm256_fmadd_ps(acc[j], b, c);
  }
  __m256 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, acc[j]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}

AVX512_FN float fma_loop_avx512(int64_t iters) {
  __m512 acc[12];
  const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
#pragma GCC unroll 12
  for (int j = 0; j < 12; ++j) acc[j] = _mm512_set1_ps(static_cast<float>(j));
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = _mm512_fmadd_ps(acc[j], b, c);
  }
  __m512 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_ps(s, acc[j]);
  return _mm512_reduce_add_ps(s);
}

// ---------------------------------------------------------------------------------
// Drivers

enum class Isa { none = 0, avx2 = 1, avx512 = 2 };

Isa detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
  return Isa::none;
}

Isa g_isa = detect();
int g_force = -1;  // tests: -1 = the CPU's best path, else the Isa value to use

Isa active_isa() {
  if (g_force >= 0 && g_force <= static_cast<int>(g_isa)) return static_cast<Isa>(g_force);
  return g_isa;
}

using TileFn = void (*)(const float*, const float*, const int64_t*, int64_t, int64_t,
                        float* const*, const float*);

struct TileSet {
  int tn;           // tokens a tile
  TileFn full;
  bool transposed;  // A packed [block column][q][token] instead of [block column][token][q]
};

constexpr int kMaxTile = 48;

TileSet tiles(int B, Isa isa) {
  if (B == 16) {
    if (isa == Isa::avx512) return {14, rowgemm_tile16_avx512<14>, false};
    return {6, rowgemm_tile16_avx2<6>, false};
  }
  if (isa == Isa::avx512) return {48, rowgemm_tile8t_avx512<3>, true};
  return {12, rowgemm_tile8_avx2<12>, false};
}

// Pack rows n0..n0+rows of A [., K] into tile-major order: for each block column c, TN
// tokens x B values contiguous (rows past the end are zero), so that the kernel reads a
// tile's A entries at constant offsets from one pointer.
void pack_tile(const float* a, int64_t K, int64_t n0, int64_t rows, int tn, int64_t B, float* dst) {
  const int64_t ncb = K / B;
  for (int64_t c = 0; c < ncb; ++c) {
    float* d = dst + c * tn * B;
    for (int t = 0; t < tn; ++t) {
      if (t < rows) std::memcpy(d + t * B, a + (n0 + t) * K + c * B, B * sizeof(float));
      else std::memset(d + t * B, 0, B * sizeof(float));
    }
  }
}

// The same rows packed transposed: for each block column c and q < B, the tile's TN
// tokens contiguous (dst[c][q][t] = A[n0 + t, c B + q]; rows past the end are zero).
void pack_tile_transposed(const float* a, int64_t K, int64_t n0, int64_t rows, int tn, int64_t B,
                          float* dst) {
  const int64_t ncb = K / B;
  std::memset(dst, 0, sizeof(float) * ncb * B * tn);
  for (int t = 0; t < rows; ++t) {
    const float* src = a + (n0 + t) * K;
    for (int64_t c = 0; c < ncb; ++c)
      for (int64_t q = 0; q < B; ++q) dst[(c * B + q) * tn + t] = src[c * B + q];
  }
}

// A large fresh output (glibc maps it anew on every call above its mmap threshold) pays
// one page fault per 4 KB page on first touch: ~12k faults (~20 ms) for a 4096 x 3072
// fp32 tensor, as long as the product itself. Asking for transparent huge pages on it
// (where the kernel's THP mode is `madvise` or `always`) cuts that 512-fold.
at::Tensor empty_output(at::IntArrayRef size, const at::TensorOptions& options) {
  at::Tensor t = at::empty(size, options);
  const size_t huge = size_t(2) << 20;
  const size_t bytes = t.numel() * sizeof(float);
  if (bytes >= 2 * huge) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t first = (begin + huge - 1) & ~(huge - 1);
    const uintptr_t last = (begin + bytes) & ~(huge - 1);
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
  return t;
}

void check_common(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "cpp_bsr: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kFloat, "cpp_bsr: ", name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), "cpp_bsr: ", name, " must be contiguous");
}

// out [N, nseg*B] = row GEMM of A [N, K] with the blocks P [nnz, B, B] listed per segment
// (seg_ptr [nseg+1], other [nnz] int64); bias [nseg*B] or empty.
at::Tensor row_gemm(const at::Tensor& A, const at::Tensor& P, const at::Tensor& seg_ptr,
                    const at::Tensor& other, int64_t n_out, const at::Tensor& bias) {
  check_common(A, "A");
  check_common(P, "P");
  const int64_t B = P.size(1);
  TORCH_CHECK(B == 16 || B == 8, "cpp_bsr: block size must be 8 or 16, got ", B);
  TORCH_CHECK(seg_ptr.scalar_type() == at::kLong && other.scalar_type() == at::kLong,
              "cpp_bsr: index tensors must be int64");
  const Isa isa = active_isa();
  TORCH_CHECK(isa != Isa::none, "cpp_bsr: this CPU has no AVX2 + FMA");
  const int64_t N = A.size(0), K = A.size(1), nseg = seg_ptr.size(0) - 1;
  TORCH_CHECK(nseg * B == n_out, "cpp_bsr: segments x block size != output width");
  const bool has_bias = bias.defined() && bias.numel() > 0;
  if (has_bias) { check_common(bias, "bias"); TORCH_CHECK(bias.numel() == n_out, "cpp_bsr: bias size"); }
  at::Tensor out = empty_output({N, n_out}, A.options());
  if (N == 0) return out;
  const float* a = A.data_ptr<float>();
  const float* p = P.data_ptr<float>();
  const int64_t* sp = seg_ptr.data_ptr<int64_t>();
  const int64_t* ot = other.data_ptr<int64_t>();
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  float* o = out.data_ptr<float>();
  const TileSet ts = tiles(static_cast<int>(B), isa);
  const int64_t tn = ts.tn;
  // One tile of tokens at a time: its rows of A, packed (K x TN floats: L1 or L2), are
  // reused by every segment, while the blocks P stream through in memory order.
  const int64_t ntiles = (N + tn - 1) / tn;
  const int64_t grain = std::max<int64_t>(1, std::min<int64_t>(64, (ntiles + 1) / 2));
  at::parallel_for(0, ntiles, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> pack(static_cast<size_t>(tn * K));
    std::vector<float> scratch(static_cast<size_t>(tn * B));  // stores of padding rows
    float* o_rows[kMaxTile];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i * tn;
      if (ts.transposed) pack_tile_transposed(a, K, n, std::min<int64_t>(tn, N - n), ts.tn, B, pack.data());
      else pack_tile(a, K, n, std::min<int64_t>(tn, N - n), ts.tn, B, pack.data());
      for (int64_t s = 0; s < nseg; ++s) {
        for (int t = 0; t < tn; ++t)
          o_rows[t] = n + t < N ? o + (n + t) * n_out + s * B : scratch.data() + t * B;
        ts.full(pack.data(), p, ot, sp[s], sp[s + 1], o_rows, bp ? bp + s * B : nullptr);
      }
    }
  });
  return out;
}

// dv [nnz, B, B] (fp32) = (dY^T X) at the blocks (rows, cols int64).
at::Tensor sddmm(const at::Tensor& dY, const at::Tensor& X, const at::Tensor& rows,
                 const at::Tensor& cols, int64_t B) {
  check_common(dY, "dY");
  check_common(X, "X");
  TORCH_CHECK(B == 16 || B == 8, "cpp_bsr: block size must be 8 or 16, got ", B);
  TORCH_CHECK(rows.scalar_type() == at::kLong && cols.scalar_type() == at::kLong,
              "cpp_bsr: index tensors must be int64");
  const Isa isa = active_isa();
  TORCH_CHECK(isa != Isa::none, "cpp_bsr: this CPU has no AVX2 + FMA");
  const int64_t N = dY.size(0), ldy = dY.size(1), ldx = X.size(1), nnz = rows.size(0);
  TORCH_CHECK(X.size(0) == N, "cpp_bsr: dY and X token counts differ");
  at::Tensor dv = at::empty({nnz, B, B}, dY.options());
  if (nnz == 0) return dv;
  if (N == 0) { dv.zero_(); return dv; }
  const float* dy = dY.data_ptr<float>();
  const float* x = X.data_ptr<float>();
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* c = cols.data_ptr<int64_t>();
  float* d = dv.data_ptr<float>();
  using SddFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t,
                         int64_t, float*, bool);
  SddFn fn = B == 8 ? sddmm8_avx2 : (isa == Isa::avx512 ? sddmm16_avx512 : sddmm16_avx2);
  // Tokens in chunks (the chunk's rows of dY and X stay in cache across the blocks);
  // blocks split across threads.
  const int64_t chunk = 64;
  const int64_t grain = std::max<int64_t>(1, std::min<int64_t>(64, (nnz + 1) / 2));
  at::parallel_for(0, nnz, grain, [&](int64_t k0, int64_t k1) {
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t n1 = std::min(N, n0 + chunk);
      for (int64_t k = k0; k < k1; ++k) fn(dy, ldy, x, ldx, n0, n1, r[k], c[k], d + k * B * B, n0 > 0);
    }
  });
  return dv;
}

// The instruction set the kernels use on this CPU: "avx512", "avx2" or "none".
std::string isa_name() {
  switch (active_isa()) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "none";
  }
}

// One core's fp32 FMA peak in GFLOP/s with the widest vectors the kernels use (best of
// `rounds` timed loops of `iters` iterations x 12 independent FMA chains).
double peak_gflops(int64_t iters, int64_t rounds) {
  const Isa isa = active_isa();
  TORCH_CHECK(isa != Isa::none, "cpp_bsr: this CPU has no AVX2 + FMA");
  const int lanes = isa == Isa::avx512 ? 16 : 8;
  double best = 0.0;
  volatile float sink = 0.0f;
  for (int64_t r = 0; r < rounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    sink = sink + (isa == Isa::avx512 ? fma_loop_avx512(iters) : fma_loop_avx2(iters));
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * lanes * 12.0 * static_cast<double>(iters) / s / 1e9);
  }
  return best;
}

// Tests: restrict the kernels to a lower instruction set (-1: the CPU's best).
void force_isa(int64_t level) { g_force = static_cast<int>(level); }

// Large allocations come from glibc's heap instead of a fresh mmap each time (a fresh
// mapping costs one page fault per 4 KB page on first touch: ~20 ms for a 4096 x 3072
// fp32 output, as long as the sparse product itself). Returns whether glibc accepted it.
bool keep_large_allocations(int64_t threshold_bytes) {
  const int ok1 = mallopt(M_MMAP_THRESHOLD, static_cast<int>(threshold_bytes));
  const int ok2 = mallopt(M_TRIM_THRESHOLD, static_cast<int>(2 * threshold_bytes));
  return ok1 == 1 && ok2 == 1;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("row_gemm", &row_gemm, "row GEMM: forward / grad-input of a block-sparse layer");
  m.def("sddmm", &sddmm, "sampled dY^T X at the active blocks");
  m.def("isa", &isa_name, "instruction set the kernels use");
  m.def("peak_gflops", &peak_gflops, "one core's fp32 FMA peak (GFLOP/s)");
  m.def("force_isa", &force_isa, "restrict the kernels to a lower instruction set (tests)");
  m.def("keep_large_allocations", &keep_large_allocations, "raise glibc's mmap threshold");
}
