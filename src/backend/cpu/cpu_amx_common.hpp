// What the AMX kernel files share: the tile configuration record, and the 16 x 16 register
// transpose with which they write y (their tiles hold y^T: a weight row per tile row, activation
// rows across; y wants whole 64-byte rows). Include it only inside a region compiled for
// AVX-512 F (the AMX kernel files' target pragmas).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace moxin::cpu {

// LDTILECFG's 64-byte operand: palette 1, then per tile its bytes per row and its rows.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// y[j * ldy + i] = r[i][j] + bias[i] for output columns i < `cols` and activation rows j < `rows`,
// where r[i] holds output column i across 16 activation rows. (Scalar stores a column at a time
// touched each y line 16 times, and with a power-of-two ldy every store of a column fell in the
// same L1 set: the [4096 x 1024] DINOv2 MLP ran at half the rate of SigLIP's [4304 x 1152].)
inline void store_transposed(__m512 (&r)[16], int rows, int cols, __m512 bias, float* y, int64_t ldy) {
  __m512 t[16];
  // Within each 128-bit lane: pairs of columns interleaved, then quads (after these, r[4g + e]
  // holds, in lane L, activation row 4L + e of output columns 4g .. 4g + 3).
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {
    const __m512d a = _mm512_castps_pd(t[g]), b = _mm512_castps_pd(t[g + 1]);
    const __m512d c = _mm512_castps_pd(t[g + 2]), d = _mm512_castps_pd(t[g + 3]);
    r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // Then the lanes: activation row 4L + e gathers lane L of r[e], r[4 + e], r[8 + e], r[12 + e].
  for (int e = 0; e < 4; ++e) {
    const __m512 p0 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0x44), p1 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0xEE);
    const __m512 q0 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0x44), q1 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0xEE);
    t[e] = _mm512_shuffle_f32x4(p0, q0, 0x88);
    t[4 + e] = _mm512_shuffle_f32x4(p0, q0, 0xDD);
    t[8 + e] = _mm512_shuffle_f32x4(p1, q1, 0x88);
    t[12 + e] = _mm512_shuffle_f32x4(p1, q1, 0xDD);
  }
  const __mmask16 lanes = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1u);
  for (int j = 0; j < rows; ++j) _mm512_mask_storeu_ps(y + j * ldy, lanes, _mm512_add_ps(t[j], bias));
}

}  // namespace moxin::cpu
