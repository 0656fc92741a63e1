// Quantized linears at prefill row counts on AMX-INT8 tiles (Intel Sapphire Rapids and later).
// The activations take the integer GEMVs' exact split (cpu_quant_split.hpp: per group a 24-bit
// fixed-point value as three signed bytes h, l, t), the codes are the unsigned bytes, and
// TDPBUSD sums their products in int32, exactly: per weight row n, activation row m and group g,
//
//   y[m][n] += scale[n][g] * 2^(e[m][g] - 16) * (65536 D_h + 256 D_l + D_t) + bias[n][g] * sum_g(x[m]),
//
// the GEMVs' formula. So a row's result differs from the GEMV's only by the f32 rounding of
// that combination (not by bf16 rounding of anything), and the f32 reference's tolerances hold
// at every row count; the dense path it replaces dequantized blocks into an f32 GEMM.
//
// Layout: a tile row of A is one weight row's codes for a block of kb = min(64, group) inputs
// (4-bit codes unpacked to bytes, 8-bit copied), B holds one part of 16 activation rows for the
// same inputs (kb / 4 rows of 16 x 4 bytes), and C (16 weight rows x 16 activation rows) is one
// part's integer dot products for that block: three TDPBUSD per block, then the three C tiles
// are combined, scaled and added to f32 sums. A panel of up to 256 weight rows is unpacked 512
// inputs at a time and met by every activation block (B from memory once per panel, the codes
// and the sums in L2): [14336 x 4096] at 256 rows 55-61 ms against 132-158 for dequantize + f32
// GEMM on a 2-core Xeon (cpu_ops_bench BM_QuantLinear), about half the bf16 tiles' rate: the
// three parts' conversion and scaling on the vector units is the other half of the time.
#include "backend/cpu/cpu_quant_kernels.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_matmul_amx.hpp"
#include "backend/cpu/cpu_quant_split.hpp"
#include "core/large_buffer.hpp"
#include "core/thread_pool.hpp"

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define MOXIN_HAVE_AMX_QUANT 1
#include <immintrin.h>
#endif

#if defined(MOXIN_HAVE_AMX_QUANT)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl")
// GCC 12's intrinsics trip -Wmaybe-uninitialized on their own undefined vectors (bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "backend/cpu/cpu_amx_common.hpp"  // (after the pragmas: its transpose takes this file's target)
#endif  // MOXIN_HAVE_AMX_QUANT

namespace moxin::cpu {

#if defined(MOXIN_HAVE_AMX_QUANT)
namespace {

constexpr int kTile = 16;        // weight rows per A tile and activation rows per B tile
constexpr int64_t kChunkInputs = 512;  // inputs of a panel unpacked at a time (a multiple of every group size)
constexpr int64_t kRowsPerPass = 512;  // activation rows split and multiplied at a time

// Per-call constants.
struct AmxShape {
  int64_t K, groups, group_size, kb, blocks_per_group;
  int64_t m_pad;        // activation rows rounded up to whole B tiles
  int64_t part_tile;    // bytes of one B tile: kb / 4 rows of 64
  AmxShape(const QuantView& w, int64_t M)
      : K(w.cols),
        groups(w.groups_per_row()),
        group_size(w.group_size),
        kb(std::min<int64_t>(64, w.group_size)),
        blocks_per_group(w.group_size / kb),
        m_pad((M + kTile - 1) / kTile * kTile),
        part_tile(kb / 4 * 64) {}
  // The B tile of part p for activation block b, group g, input block i of the group.
  int64_t b_offset(int64_t block, int64_t g, int64_t i, int p) const {
    return (((block * groups + g) * blocks_per_group + i) * 3 + p) * part_tile;
  }
};

// Tile 0: A (16 weight rows x kb code bytes); 1-3: the h, l, t parts of B (kb / 4 rows x 16
// activation rows x 4 bytes); 4-6: their int32 dot products (16 x 16).
void configure_tiles(int64_t kb) {
  TileConfig config;
  config.colsb[0] = static_cast<uint16_t>(kb);
  config.rows[0] = kTile;
  for (int t = 1; t <= 3; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = static_cast<uint8_t>(kb / 4);
  }
  for (int t = 4; t <= 6; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = kTile;
  }
  _tile_loadconfig(&config);
}

// Activation row m split into the B tiles (columns m % 16 of its block), with 2^(e - 16) and the
// group sums stored group-major (pow2[g * m_pad + m]). 4-bit codes decode each 32-input run as
// its 16 even inputs (low nibbles) then its 16 odd ones, so the inputs are taken in that order.
// Every x must be finite (the split cannot carry inf or NaN).
void split_row(const AmxShape& s, int bits, const float* x, int64_t m, int8_t* b, float* pow2, float* sums) {
  const int64_t block = m / kTile, column = m % kTile;
  for (int64_t g = 0; g < s.groups; ++g) {
    const float* xg = x + g * s.group_size;
    float amax = 0.0f, sum = 0.0f;
    for (int64_t k = 0; k < s.group_size; ++k) {
      amax = std::max(amax, std::fabs(xg[k]));
      sum += xg[k];
    }
    const int e = split_exponent(amax);
    pow2[g * s.m_pad + m] = std::ldexp(1.0f, e - 16);
    sums[g * s.m_pad + m] = sum;
    const float to_fixed = std::ldexp(1.0f, 16 - e);
    for (int64_t k = 0; k < s.group_size; ++k) {
      int64_t input = k;
      if (bits == 4) {
        const int64_t within = k % 32;
        input = k - within + (within < 16 ? 2 * within : 2 * (within - 16) + 1);
      }
      // Power-of-two scaling is exact; one rounding to the nearest integer (even on ties, as the
      // GEMVs' conversion rounds).
      const auto q = static_cast<int32_t>(std::nearbyint(xg[input] * to_fixed));
      const int32_t t = static_cast<int8_t>(q & 0xFF);
      const int32_t rest = (q - t) >> 8;
      const int32_t l = static_cast<int8_t>(rest & 0xFF);
      const int32_t h = (rest - l) >> 8;
      const int64_t i = k / s.kb, within = k % s.kb;
      const int64_t at = within / 4 * 64 + column * 4 + within % 4;
      b[s.b_offset(block, g, i, 0) + at] = static_cast<int8_t>(h);
      b[s.b_offset(block, g, i, 1) + at] = static_cast<int8_t>(l);
      b[s.b_offset(block, g, i, 2) + at] = static_cast<int8_t>(t);
    }
  }
}

// Inputs [k0, k0 + width) of weight rows [n0, n0 + rows) as one code byte per input (row stride
// `width`; rows past `rows` up to whole tiles are zeros), and their groups' scales and biases as
// f32, group-major by 16-row tile (scale[(tile * groups_in_chunk + g) * 16 + r]).
void unpack_chunk(const QuantView& w, int64_t n0, int64_t rows, int64_t padded, int64_t k0, int64_t width,
                  uint8_t* codes, float* scales, float* biases) {
  const int64_t K = w.cols, groups = w.groups_per_row(), row_bytes = K * w.bits / 8;
  const int64_t g0 = k0 / w.group_size, chunk_groups = width / w.group_size;
  std::memset(codes + rows * width, 0, static_cast<size_t>((padded - rows) * width));
  std::fill(scales, scales + padded * chunk_groups, 0.0f);
  std::fill(biases, biases + padded * chunk_groups, 0.0f);
  const __m256i low_nibbles = _mm256_set1_epi8(15);
  for (int64_t r = 0; r < rows; ++r) {
    const auto* src = reinterpret_cast<const uint8_t*>(w.codes) + (n0 + r) * row_bytes;
    uint8_t* dst = codes + r * width;
    if (w.bits == 8) {
      std::memcpy(dst, src + k0, static_cast<size_t>(width));
    } else {
      // 32 bytes hold two 32-input runs: each becomes its 16 low nibbles then its 16 high ones.
      src += k0 / 2;
      int64_t k = 0;
      for (; k + 64 <= width; k += 64) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k / 2));
        const __m256i low = _mm256_and_si256(raw, low_nibbles);
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low_nibbles);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), _mm256_permute2x128_si256(low, high, 0x20));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k + 32), _mm256_permute2x128_si256(low, high, 0x31));
      }
      if (k < width) {  // a last lone run (an odd multiple of 32 inputs)
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k / 2));
        const __m128i low_bytes = _mm256_castsi256_si128(low_nibbles);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), _mm_and_si128(raw, low_bytes));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k + 16), _mm_and_si128(_mm_srli_epi16(raw, 4), low_bytes));
      }
    }
    const int64_t tile = r / kTile, lane = r % kTile;
    for (int64_t g = 0; g < chunk_groups; ++g) {
      scales[(tile * chunk_groups + g) * kTile + lane] = load_scale(w.scales, w.scale_dtype, (n0 + r) * groups + g0 + g);
      biases[(tile * chunk_groups + g) * kTile + lane] = load_scale(w.biases, w.scale_dtype, (n0 + r) * groups + g0 + g);
    }
  }
}

// Adds to acc (the panel's sums for activation block `block`: [tile][16 weight rows][16 activation
// rows]) the products over one unpacked chunk of inputs (groups g0 .. g0 + chunk_groups). Each
// input block's three B tiles are loaded once and met by every weight tile of the panel.
// Groups of 128 inputs combine their two 64-input halves in f32.
void chunk_products(const AmxShape& s, const uint8_t* codes, int64_t width, const float* scales, const float* biases,
                    int64_t tiles, const int8_t* b, const float* pow2, const float* sums, int64_t block, int64_t g0,
                    float* acc) {
  alignas(64) int32_t dots[3][kTile][kTile];
  const __m512 two_8 = _mm512_set1_ps(256.0f), two_16 = _mm512_set1_ps(65536.0f);
  const int64_t chunk_groups = width / s.group_size;
  for (int64_t g = 0; g < chunk_groups; ++g) {
    const __m512 p = _mm512_loadu_ps(pow2 + (g0 + g) * s.m_pad + block * kTile);
    const __m512 sum = _mm512_loadu_ps(sums + (g0 + g) * s.m_pad + block * kTile);
    for (int64_t i = 0; i < s.blocks_per_group; ++i) {
      _tile_loadd(1, b + s.b_offset(block, g0 + g, i, 0), 64);
      _tile_loadd(2, b + s.b_offset(block, g0 + g, i, 1), 64);
      _tile_loadd(3, b + s.b_offset(block, g0 + g, i, 2), 64);
      for (int64_t t = 0; t < tiles; ++t) {
        _tile_zero(4);
        _tile_zero(5);
        _tile_zero(6);
        _tile_loadd(0, codes + t * kTile * width + g * s.group_size + i * s.kb, width);
        _tile_dpbusd(4, 0, 1);
        _tile_dpbusd(5, 0, 2);
        _tile_dpbusd(6, 0, 3);
        _tile_stored(4, dots[0], 64);
        _tile_stored(5, dots[1], 64);
        _tile_stored(6, dots[2], 64);
        const float* scale = scales + (t * chunk_groups + g) * kTile;
        const float* bias = biases + (t * chunk_groups + g) * kTile;
        float* a = acc + t * kTile * kTile;
        for (int r = 0; r < kTile; ++r) {
          // A 64-input block sums at most 64 * 255 * 128 < 2^24: each part converts exactly; two
          // roundings combine them.
          const __m512 dot = _mm512_fmadd_ps(
              _mm512_cvtepi32_ps(_mm512_load_si512(dots[0][r])), two_16,
              _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(dots[1][r])), two_8,
                              _mm512_cvtepi32_ps(_mm512_load_si512(dots[2][r]))));
          __m512 v = _mm512_fmadd_ps(dot, _mm512_mul_ps(_mm512_set1_ps(scale[r]), p), _mm512_loadu_ps(a + r * kTile));
          if (i == 0) v = _mm512_fmadd_ps(_mm512_set1_ps(bias[r]), sum, v);
          _mm512_storeu_ps(a + r * kTile, v);
        }
      }
    }
  }
}

// y for M <= kRowsPerPass rows of finite activations.
void matmul_pass(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y, int64_t ldy) {
  const AmxShape s(w, M);
  // Reused across calls (a prefill makes four per layer): a fresh buffer of this size is a fresh
  // mapping whose pages fault in, zeroed by the kernel, on every call.
  thread_local std::vector<int8_t, LargeAllocator<int8_t>> b_storage;
  const int64_t b_bytes = s.m_pad * s.groups * s.group_size * 3;
  if (static_cast<int64_t>(b_storage.size()) < b_bytes) b_storage.resize(static_cast<size_t>(b_bytes));
  int8_t* const b = b_storage.data();
  // The last block's columns past M multiply as zeros.
  if (M < s.m_pad) {
    const int64_t last = s.b_offset(s.m_pad / kTile - 1, 0, 0, 0);
    std::memset(b + last, 0, static_cast<size_t>(b_bytes - last));
  }
  std::vector<float> pow2(static_cast<size_t>(s.groups * s.m_pad), 0.0f), sums(pow2.size(), 0.0f);
  const auto split = [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) split_row(s, w.bits, x + m * ldx, m, b, pow2.data(), sums.data());
  };
  if (pool)
    pool->parallel_for(M, split, 4);
  else
    split(0, M);

  // A panel of weight rows is unpacked a chunk of inputs at a time (codes and B chunks stay in
  // L2) and every activation block meets it, its sums kept in acc (about 256 KB) across chunks;
  // B comes from memory once per panel, so panels are as tall as acc allows.
  const int64_t panel = std::clamp<int64_t>((int64_t{1} << 16) / s.m_pad / kTile * kTile, kTile, 256);
  const int64_t chunk = std::min<int64_t>(s.K, std::max<int64_t>(s.group_size, kChunkInputs));
  const int64_t blocks = s.m_pad / kTile, panels = (w.rows + panel - 1) / panel;
  const auto run = [&](int64_t p0, int64_t p1) {
    thread_local std::vector<uint8_t, LargeAllocator<uint8_t>> codes;
    thread_local std::vector<float> scales, biases, acc;
    codes.resize(std::max(codes.size(), static_cast<size_t>(panel * chunk)));
    scales.resize(static_cast<size_t>(panel * (chunk / s.group_size)));
    biases.resize(scales.size());
    acc.resize(static_cast<size_t>(blocks * panel * kTile));
    configure_tiles(s.kb);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * panel, rows = std::min(panel, w.rows - n0);
      const int64_t padded = (rows + kTile - 1) / kTile * kTile, tiles = padded / kTile;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t k0 = 0; k0 < s.K; k0 += chunk) {
        const int64_t width = std::min(chunk, s.K - k0);
        unpack_chunk(w, n0, rows, padded, k0, width, codes.data(), scales.data(), biases.data());
        for (int64_t block = 0; block < blocks; ++block)
          chunk_products(s, codes.data(), width, scales.data(), biases.data(), tiles, b, pow2.data(), sums.data(),
                         block, k0 / s.group_size, acc.data() + block * panel * kTile);
      }
      for (int64_t block = 0; block < blocks; ++block)
        for (int64_t t = 0; t < tiles; ++t) {
          __m512 columns[kTile];
          for (int r = 0; r < kTile; ++r) columns[r] = _mm512_loadu_ps(acc.data() + (block * panel + t * kTile + r) * kTile);
          store_transposed(columns, static_cast<int>(std::min<int64_t>(kTile, M - block * kTile)),
                           static_cast<int>(std::min<int64_t>(kTile, rows - t * kTile)), _mm512_setzero_ps(),
                           y + block * kTile * ldy + n0 + t * kTile, ldy);
        }
    }
    _tile_release();
  };
  if (pool)
    pool->parallel_for(panels, run, 1);
  else
    run(0, panels);
}

}  // namespace

bool quant_amx_supported() {
  static const bool supported = amx_bf16_supported() && __builtin_cpu_supports("amx-int8");
  return supported;
}

bool quant_matmul_amx(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                      int64_t ldy) {
  if (!quant_amx_supported() || M <= 0) return false;
  // The split cannot carry inf or NaN: refuse before writing anything (the dense path then
  // propagates them).
  std::atomic<bool> finite{true};
  const auto check = [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1 && finite; ++m)
      for (int64_t k = 0; k < w.cols; ++k)
        if (!std::isfinite(x[m * ldx + k])) finite = false;
  };
  if (pool)
    pool->parallel_for(M, check, 16);
  else
    check(0, M);
  if (!finite) return false;
  // Passes of at most kRowsPerPass rows bound the split activations (3 bytes per input and row,
  // kept for the next call) however long the prompt.
  for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass)
    matmul_pass(pool, std::min(kRowsPerPass, M - m0), x + m0 * ldx, ldx, w, y + m0 * ldy, ldy);
  return true;
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

#else

bool quant_amx_supported() { return false; }

bool quant_matmul_amx(ThreadPool*, int64_t, const float*, int64_t, const QuantView&, float*, int64_t) { return false; }

#endif  // MOXIN_HAVE_AMX_QUANT

}  // namespace moxin::cpu
