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
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <immintrin.h>
#include <malloc.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cpuid.h>
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
// bf16 with AMX (B = 16): the tile unit multiplies a 16 x 32-byte A tile by a B tile of
// bf16 pairs into a 16 x 16 fp32 tile (TDPBF16PS). One 16 x 16 block is one B tile of 8
// pair-rows (its 16 q in pairs); an A tile is 16 tokens x the block column's 16 inputs.
//   row GEMM: 4 output tiles (64 tokens x one block row's 16 outputs) stay in tile
//             registers over the segment's blocks; P is given pair-packed,
//             P[k][q/2][o][q%2]; output rounded to bf16 (as a bf16 GEMM's), bias in fp32.
//   SDDMM:    tokens are the reduction, so one operand is transposed ([feature][token])
//             and the other token-paired ([token/2][feature][2]); the narrower of dY and
//             X is the one transposed (done here with AVX-512, the products in fp32).
// AVX512-BF16's VDPBF16PS is not used: on the Sapphire Rapids class CPU measured it runs
// at half the fp32 FMA rate (120 against 247 GFLOP/s a core), below the fp32 kernels.
// Compiled only by compilers that know AMX; used only where the CPU has AMX-BF16 and the
// OS grants the tile state (arch_prctl), else bf16 stays on the other backends.
#if defined(__GNUC__) && (__GNUC__ >= 11 || (defined(__clang__) && __clang_major__ >= 12))
#define DYNSP_HAVE_AMX 1
#define AMX_FN __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))
#define BW_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))

struct alignas(64) TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

bool detect_amx() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1, avx512bw = (b >> 30) & 1;
  if (!amx_bf16 || !amx_tile || !avx512bw || !__builtin_cpu_supports("avx512f")) return false;
  // Linux hands out the tile data state only on request (ARCH_REQ_XCOMP_PERM, XTILEDATA)
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

bool g_amx = detect_amx();

// Tile 0-3: C (16 x 16 fp32); 4, 6: A (16 rows x 32 bytes); 5: B (8 pair-rows x 64 bytes).
AMX_FN void config_row_gemm_tiles() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette = 1;
  for (int i = 0; i < 4; ++i) { cfg.rows[i] = 16; cfg.colsb[i] = 64; }
  cfg.rows[4] = cfg.rows[6] = 16;
  cfg.colsb[4] = cfg.colsb[6] = 32;
  cfg.rows[5] = 8;
  cfg.colsb[5] = 64;
  _tile_loadconfig(&cfg);
}

// Tile 0-3: C; 4: A (16 features x 32 tokens); 5, 6: B (16 token pairs x 16 features x 2).
AMX_FN void config_sddmm_tiles() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette = 1;
  for (int i = 0; i < 7; ++i) { cfg.rows[i] = 16; cfg.colsb[i] = 64; }
  _tile_loadconfig(&cfg);
}

// 16 fp32 rows (+ bias) -> bf16 output rows (round to nearest even, as torch's cast).
AMX_FN void store_rows_bf16(const float* c, uint16_t* o, int64_t ld, int rows, const float* bias) {
  const __m512 b = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
  for (int t = 0; t < rows; ++t) {
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_add_ps(_mm512_loadu_ps(c + t * 16), b));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + t * ld), reinterpret_cast<const __m256i&>(h));
  }
}

constexpr int64_t kAmxTokens = 64;  // tokens a row-GEMM tile (4 A / C tiles)

AMX_FN void row_gemm_amx_range(const uint16_t* a, const uint16_t* p, const int64_t* sp,
                               const int64_t* ot, const float* bias, uint16_t* o, int64_t N,
                               int64_t K, int64_t nseg, int64_t n_out, int64_t i0, int64_t i1) {
  config_row_gemm_tiles();
  const int64_t ncb = K / 16;
  std::vector<uint16_t> pack(static_cast<size_t>(ncb * kAmxTokens * 16));
  alignas(64) float cbuf[4][256];
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t n = i * kAmxTokens, rows = std::min(kAmxTokens, N - n);
    // pack: [block column][token][16] (zero past N), a 16-token A tile every 512 bytes
    for (int64_t c = 0; c < ncb; ++c)
      for (int64_t t = 0; t < kAmxTokens; ++t) {
        uint16_t* d = pack.data() + (c * kAmxTokens + t) * 16;
        if (t < rows) std::memcpy(d, a + (n + t) * K + c * 16, 32);
        else std::memset(d, 0, 32);
      }
    for (int64_t s = 0; s < nseg; ++s) {
      _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
      for (int64_t k = sp[s]; k < sp[s + 1]; ++k) {
        const uint16_t* at = pack.data() + ot[k] * kAmxTokens * 16;
        _tile_loadd(5, p + k * 256, 64);
        _tile_loadd(4, at, 32);       _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(6, at + 256, 32); _tile_dpbf16ps(1, 6, 5);
        _tile_loadd(4, at + 512, 32); _tile_dpbf16ps(2, 4, 5);
        _tile_loadd(6, at + 768, 32); _tile_dpbf16ps(3, 6, 5);
      }
      _tile_stored(0, cbuf[0], 64); _tile_stored(1, cbuf[1], 64);
      _tile_stored(2, cbuf[2], 64); _tile_stored(3, cbuf[3], 64);
      for (int j = 0; j < 4; ++j) {
        const int r = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(16, rows - 16 * j)));
        store_rows_bf16(cbuf[j], o + (n + 16 * j) * n_out + s * 16, n_out, r, bias ? bias + s * 16 : nullptr);
      }
    }
  }
  _tile_release();
}

// Rows n, n+1 (zero past N), features d..d+15 -> 16 token pairs, one per 32-bit lane.
BW_FN inline __m512i token_pairs(const uint16_t* t, int64_t N, int64_t D, int64_t n, int64_t d) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                       23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m256i r0 = n < N ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + n * D + d))
                           : _mm256_setzero_si256();
  const __m256i r1 = n + 1 < N ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + (n + 1) * D + d))
                               : _mm256_setzero_si256();
  return _mm512_permutexvar_epi16(idx, _mm512_inserti64x4(_mm512_castsi256_si512(r0), r1, 1));
}

BW_FN void transpose16x16_epi32(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_i32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
      t[8 * h + 4 + i] = _mm512_shuffle_i32x4(r[8 * h + i], r[8 * h + 4 + i], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xdd);
  }
}

// out [Np/2][D][2] = token pairs of T [N, D] (zero past N).
BW_FN void pair_tokens_range(const uint16_t* t, int64_t N, int64_t D, uint16_t* o, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t d = 0; d < D; d += 16) _mm512_storeu_si512(o + (m * D + d) * 2, token_pairs(t, N, D, 2 * m, d));
}

// out [D][Np] = T^T (zero past N): token pairs, then a 16 x 16 transpose of the pairs.
BW_FN void transpose_tokens_range(const uint16_t* t, int64_t N, int64_t D, int64_t Np, uint16_t* o,
                                  int64_t c0, int64_t c1) {
  __m512i r[16];
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t n0 = 0; n0 < Np; n0 += 32) {
      for (int m = 0; m < 16; ++m) r[m] = token_pairs(t, N, D, n0 + 2 * m, c * 16);
      transpose16x16_epi32(r);
      for (int j = 0; j < 16; ++j) _mm512_storeu_si512(o + (c * 16 + j) * Np + n0, r[j]);
    }
}


// out[j] (fp32) = sum_n T[n, j] over bf16 T [N, D], columns c0..c1 (in 16s; D % 16 == 0).
BW_FN void col_sum_bf16_range(const uint16_t* t, int64_t N, int64_t D, float* out, int64_t c0, int64_t c1) {
  constexpr int W = 16;  // column blocks of 16 summed together (16 zmm accumulators)
  for (int64_t c = c0; c < c1; c += W) {
    const int w = static_cast<int>(std::min<int64_t>(W, c1 - c));
    __m512 acc[W];
    for (int j = 0; j < W; ++j) acc[j] = _mm512_setzero_ps();
    for (int64_t n = 0; n < N; ++n) {
      const uint16_t* row = t + n * D + c * 16;
      for (int j = 0; j < w; ++j) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 16 * j));
        acc[j] = _mm512_add_ps(acc[j], _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
      }
    }
    for (int j = 0; j < w; ++j) _mm512_storeu_ps(out + (c + j) * 16, acc[j]);
  }
}

// G (1-4) blocks sharing their A rows: C_g (+)= At[a*16 .., n0..n1] x Bp[n0/2 .., b_g*16 .., 2].
template <int G>
AMX_FN inline void sddmm_amx_group(const uint16_t* at, int64_t Np, const uint16_t* bp, int64_t Db,
                                   int64_t a, const int64_t* b, float* c, int64_t n0, int64_t n1,
                                   bool accumulate) {
  if (accumulate) {
    _tile_loadd(0, c, 64);
    if (G > 1) _tile_loadd(1, c + 256, 64);
    if (G > 2) _tile_loadd(2, c + 512, 64);
    if (G > 3) _tile_loadd(3, c + 768, 64);
  } else {
    _tile_zero(0);
    if (G > 1) _tile_zero(1);
    if (G > 2) _tile_zero(2);
    if (G > 3) _tile_zero(3);
  }
  const uint16_t* arow = at + a * 16 * Np;
  for (int64_t n = n0; n < n1; n += 32) {
    const uint16_t* bb = bp + (n / 2) * Db * 2;
    _tile_loadd(4, arow + n, Np * 2);
    _tile_loadd(5, bb + b[0] * 32, Db * 4); _tile_dpbf16ps(0, 4, 5);
    if (G > 1) { _tile_loadd(6, bb + b[1] * 32, Db * 4); _tile_dpbf16ps(1, 4, 6); }
    if (G > 2) { _tile_loadd(5, bb + b[2] * 32, Db * 4); _tile_dpbf16ps(2, 4, 5); }
    if (G > 3) { _tile_loadd(6, bb + b[3] * 32, Db * 4); _tile_dpbf16ps(3, 4, 6); }
  }
  _tile_stored(0, c, 64);
  if (G > 1) _tile_stored(1, c + 256, 64);
  if (G > 2) _tile_stored(2, c + 512, 64);
  if (G > 3) _tile_stored(3, c + 768, 64);
}

AMX_FN void sddmm_amx_range(const uint16_t* at, int64_t Np, const uint16_t* bp, int64_t Db,
                            const int64_t* sp, const int64_t* b, float* c, int64_t s0, int64_t s1) {
  config_sddmm_tiles();
  constexpr int64_t chunk = 256;  // tokens: the chunk of Bp (chunk x Db bf16) stays in L2
  for (int64_t n0 = 0; n0 < Np; n0 += chunk) {
    const int64_t n1 = std::min(Np, n0 + chunk);
    for (int64_t s = s0; s < s1; ++s)
      for (int64_t k = sp[s]; k < sp[s + 1]; k += 4) {
        const int64_t g = std::min<int64_t>(4, sp[s + 1] - k);
        float* ck = c + k * 256;
        if (g == 4) sddmm_amx_group<4>(at, Np, bp, Db, s, b + k, ck, n0, n1, n0 > 0);
        else if (g == 3) sddmm_amx_group<3>(at, Np, bp, Db, s, b + k, ck, n0, n1, n0 > 0);
        else if (g == 2) sddmm_amx_group<2>(at, Np, bp, Db, s, b + k, ck, n0, n1, n0 > 0);
        else sddmm_amx_group<1>(at, Np, bp, Db, s, b + k, ck, n0, n1, n0 > 0);
      }
  }
  _tile_release();
}
#else
bool g_amx = false;
#endif

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
  const size_t bytes = t.numel() * t.element_size();
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


bool amx_available() { return g_amx && g_force < 0; }

void check_bf16(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "cpp_bsr: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kBFloat16, "cpp_bsr: ", name, " must be bfloat16");
  TORCH_CHECK(t.is_contiguous(), "cpp_bsr: ", name, " must be contiguous");
}

// bf16 row GEMM with AMX: out [N, nseg*16] (bf16) from A [N, K] (bf16) and the blocks
// pair-packed, P [nnz, 8, 16, 2] (bf16), listed per segment; bias fp32 [n_out] or empty.
at::Tensor row_gemm_bf16(const at::Tensor& A, const at::Tensor& P, const at::Tensor& seg_ptr,
                         const at::Tensor& other, int64_t n_out, const at::Tensor& bias) {
  TORCH_CHECK(amx_available(), "cpp_bsr: bf16 kernels need AMX-BF16 (not available here)");
  check_bf16(A, "A");
  check_bf16(P, "P");
  TORCH_CHECK(P.dim() == 4 && P.size(1) == 8 && P.size(2) == 16 && P.size(3) == 2,
              "cpp_bsr: bf16 P must be [nnz, 8, 16, 2]");
  TORCH_CHECK(seg_ptr.scalar_type() == at::kLong && other.scalar_type() == at::kLong,
              "cpp_bsr: index tensors must be int64");
  const int64_t N = A.size(0), K = A.size(1), nseg = seg_ptr.size(0) - 1;
  TORCH_CHECK(K % 16 == 0 && nseg * 16 == n_out, "cpp_bsr: shapes do not match the block size 16");
  const bool has_bias = bias.defined() && bias.numel() > 0;
  if (has_bias) { check_common(bias, "bias"); TORCH_CHECK(bias.numel() == n_out, "cpp_bsr: bias size"); }
  at::Tensor out = empty_output({N, n_out}, A.options());
  if (N == 0) return out;
#ifdef DYNSP_HAVE_AMX
  const uint16_t* a = reinterpret_cast<const uint16_t*>(A.data_ptr());
  const uint16_t* p = reinterpret_cast<const uint16_t*>(P.data_ptr());
  const int64_t* sp = seg_ptr.data_ptr<int64_t>();
  const int64_t* ot = other.data_ptr<int64_t>();
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr());
  const int64_t ntiles = (N + kAmxTokens - 1) / kAmxTokens;
  at::parallel_for(0, ntiles, 1, [&](int64_t i0, int64_t i1) {
    row_gemm_amx_range(a, p, sp, ot, bp, o, N, K, nseg, n_out, i0, i1);
  });
#endif
  return out;
}

// bf16 SDDMM with AMX: dv [nnz, 16, 16] (fp32) = dY^T X at the blocks. Blocks are listed
// per block row (seg_ptr over the block rows of W, `cols` their block columns) when
// `transpose_dy`, else per block column (seg_ptr over the block columns, `rows` their block
// rows) and the result comes back transposed ([k][j][i]): the caller picks the orientation
// that transposes the narrower of dY and X, and orders / transposes the blocks back.
at::Tensor sddmm_bf16(const at::Tensor& dY, const at::Tensor& X, const at::Tensor& seg_ptr,
                      const at::Tensor& other, bool transpose_dy) {
  TORCH_CHECK(amx_available(), "cpp_bsr: bf16 kernels need AMX-BF16 (not available here)");
  check_bf16(dY, "dY");
  check_bf16(X, "X");
  TORCH_CHECK(seg_ptr.scalar_type() == at::kLong && other.scalar_type() == at::kLong,
              "cpp_bsr: index tensors must be int64");
  const int64_t N = dY.size(0), nnz = other.size(0);
  TORCH_CHECK(X.size(0) == N, "cpp_bsr: dY and X token counts differ");
  TORCH_CHECK(dY.size(1) % 16 == 0 && X.size(1) % 16 == 0, "cpp_bsr: widths must be multiples of 16");
  at::Tensor dv = at::empty({nnz, 16, 16}, dY.options().dtype(at::kFloat));
  if (nnz == 0) return dv;
  if (N == 0) { dv.zero_(); return dv; }
#ifdef DYNSP_HAVE_AMX
  const at::Tensor& T = transpose_dy ? dY : X;   // transposed: [feature][token]
  const at::Tensor& Q = transpose_dy ? X : dY;   // token-paired: [token/2][feature][2]
  const int64_t Dt = T.size(1), Dq = Q.size(1), Np = (N + 31) / 32 * 32;
  at::Tensor Tt = empty_output({Dt, Np}, T.options());
  at::Tensor Qp = empty_output({Np / 2, Dq, 2}, Q.options());
  const uint16_t* t = reinterpret_cast<const uint16_t*>(T.data_ptr());
  const uint16_t* q = reinterpret_cast<const uint16_t*>(Q.data_ptr());
  uint16_t* tt = reinterpret_cast<uint16_t*>(Tt.data_ptr());
  uint16_t* qp = reinterpret_cast<uint16_t*>(Qp.data_ptr());
  at::parallel_for(0, Dt / 16, 1, [&](int64_t c0, int64_t c1) { transpose_tokens_range(t, N, Dt, Np, tt, c0, c1); });
  at::parallel_for(0, Np / 2, 16, [&](int64_t m0, int64_t m1) { pair_tokens_range(q, N, Dq, qp, m0, m1); });
  const int64_t nseg = seg_ptr.size(0) - 1;
  TORCH_CHECK(nseg == Dt / 16, "cpp_bsr: segments do not match the transposed operand");
  const int64_t* sp = seg_ptr.data_ptr<int64_t>();
  const int64_t* ot = other.data_ptr<int64_t>();
  float* d = dv.data_ptr<float>();
  at::parallel_for(0, nseg, 1, [&](int64_t s0, int64_t s1) { sddmm_amx_range(tt, Np, qp, Dq, sp, ot, d, s0, s1); });
#endif
  return dv;
}


// Column sums of bf16 dY [N, D] in fp32 (the bias gradient), D a multiple of 16.
at::Tensor col_sum_bf16(const at::Tensor& dY) {
  TORCH_CHECK(amx_available(), "cpp_bsr: bf16 kernels need AMX-BF16 (not available here)");
  check_bf16(dY, "dY");
  const int64_t N = dY.size(0), D = dY.size(1);
  TORCH_CHECK(D % 16 == 0, "cpp_bsr: width must be a multiple of 16");
  at::Tensor out = at::zeros({D}, dY.options().dtype(at::kFloat));
#ifdef DYNSP_HAVE_AMX
  const uint16_t* t = reinterpret_cast<const uint16_t*>(dY.data_ptr());
  float* o = out.data_ptr<float>();
  at::parallel_for(0, D / 16, 16, [&](int64_t c0, int64_t c1) { col_sum_bf16_range(t, N, D, o, c0, c1); });
#endif
  return out;
}


// Dropout with a counter-based generator: element i is kept iff the 32-bit draw
// u(seed, i) >= p 2^32, with u from SplitMix64 of seed + (i / 2 + 1) x golden ratio (two draws a
// hash). Any element's draw depends on (seed, i) only: the same mask for any thread count,
// and the backward regenerates it from the seed instead of storing it. y = x / (1 - p) or 0.
inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

at::Tensor dropout(const at::Tensor& x, double p, int64_t seed) {
  TORCH_CHECK(x.device().is_cpu(), "cpp_bsr: dropout input must be on the CPU");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "cpp_bsr: dropout probability must be in [0, 1), got ", p);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t n = xc.numel();
  const uint64_t threshold = static_cast<uint64_t>(p * 4294967296.0);
  const uint64_t base = static_cast<uint64_t>(seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "dynsp_dropout", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(1.0 / (1.0 - p));
    const scalar_t* a = xc.data_ptr<scalar_t>();
    scalar_t* o = y.data_ptr<scalar_t>();
    at::parallel_for(0, (n + 1) / 2, 16384, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const uint64_t z = splitmix64(base + static_cast<uint64_t>(j + 1) * 0x9E3779B97F4A7C15ull);
        const int64_t i = 2 * j;
        o[i] = (z & 0xFFFFFFFFull) >= threshold ? static_cast<scalar_t>(static_cast<acc_t>(a[i]) * scale)
                                                 : static_cast<scalar_t>(0);
        if (i + 1 < n)
          o[i + 1] = (z >> 32) >= threshold ? static_cast<scalar_t>(static_cast<acc_t>(a[i + 1]) * scale)
                                            : static_cast<scalar_t>(0);
      }
    });
  });
  return y;
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
  m.def("row_gemm_bf16", &row_gemm_bf16, "bf16 row GEMM with AMX (B = 16)");
  m.def("sddmm_bf16", &sddmm_bf16, "bf16 SDDMM with AMX (B = 16), fp32 result");
  m.def("col_sum_bf16", &col_sum_bf16, "fp32 column sums of bf16 dY (bias gradient)");
  m.def("dropout", &dropout, "dropout with a counter-based mask (seed, element index)");
  m.def("amx", &amx_available, "whether the bf16 AMX kernels can run here");
  m.def("peak_gflops", &peak_gflops, "one core's fp32 FMA peak (GFLOP/s)");
  m.def("force_isa", &force_isa, "restrict the kernels to a lower instruction set (tests)");
  m.def("keep_large_allocations", &keep_large_allocations, "raise glibc's mmap threshold");
}
