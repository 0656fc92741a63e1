#include <algorithm>
#include <cstring>
#include <string_view>
#include <vector>

#include "backend/cpu/cpu_matmul.hpp"
#include "backend/cpu/cpu_quant_kernels.hpp"
#include "core/thread_pool.hpp"

namespace moxin::cpu {
namespace {

// Copies x [M, K] (row stride ldx) contiguously, in the order quant_gemv expects, and sums groups.
void prepare_activations(const QuantView& w, int64_t M, const float* x, int64_t ldx, float* xp, float* xsum) {
  const int64_t K = w.cols, groups = w.groups_per_row();
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * ldx;
    float* dst = xp + m * K;
    if (w.bits == 4) {
      for (int64_t c = 0; c < K; c += 32)
        for (int64_t b = 0; b < 16; ++b) {
          dst[c + b] = src[c + 2 * b];
          dst[c + 16 + b] = src[c + 2 * b + 1];
        }
    } else {
      std::memcpy(dst, src, static_cast<size_t>(K) * sizeof(float));
    }
    for (int64_t g = 0; g < groups; ++g) {
      float s = 0.0f;
      for (int64_t k = g * w.group_size; k < (g + 1) * w.group_size; ++k) s += src[k];
      xsum[m * groups + g] = s;
    }
  }
}

}  // namespace

void quant_gemv_generic(const QuantView& w, int64_t n0, int64_t n1, const float* xp, int64_t M,
                        const float* xsum, float* y, int64_t ldy) {
  const int64_t K = w.cols, groups = w.groups_per_row(), words = w.words_per_row();
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* codes = reinterpret_cast<const uint8_t*>(w.codes + n * words);
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = xp + m * K;
      float total = 0.0f;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t k0 = g * w.group_size;
        float dot = 0.0f;
        if (w.bits == 8) {
          for (int64_t k = k0; k < k0 + w.group_size; ++k) dot += static_cast<float>(codes[k]) * xm[k];
        } else {
          // Byte b of a 32-input run holds inputs 2b (low nibble) and 2b + 1 (high nibble).
          for (int64_t c = k0; c < k0 + w.group_size; c += 32) {
            const uint8_t* bytes = codes + c / 2;
            for (int64_t b = 0; b < 16; ++b)
              dot += static_cast<float>(bytes[b] & 15) * xm[c + b] + static_cast<float>(bytes[b] >> 4) * xm[c + 16 + b];
          }
        }
        total += load_scale(w.scales, w.scale_dtype, n * groups + g) * dot +
                 load_scale(w.biases, w.scale_dtype, n * groups + g) * xsum[m * groups + g];
      }
      y[m * ldy + n] = total;
    }
  }
}

namespace {

// The quantized kernels keep to the instruction set of the dense table they go with, so that
// forcing a table (tests, MOXIN_CPU_KERNELS) runs that ISA throughout. The generic table is the
// best one only on a CPU without AVX2, where no SIMD quantized kernel runs either.
bool is_table(const Kernels& kernels, const Kernels* table) {
  return table && std::string_view(kernels.name) == std::string_view(table->name);
}

// The f32 GEMVs: activations copied in the order the kernel reads them, rows over threads.
void quant_gemv_f32(QuantGemvFn gemv, ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w,
                    float* y, int64_t ldy) {
  std::vector<float> xp(static_cast<size_t>(M * w.cols)), xsum(static_cast<size_t>(M * w.groups_per_row()));
  prepare_activations(w, M, x, ldx, xp.data(), xsum.data());
  const auto rows = [&](int64_t n0, int64_t n1) { gemv(w, n0, n1, xp.data(), M, xsum.data(), y, ldy); };
  if (pool)
    pool->parallel_for(w.rows, rows, 16);
  else
    rows(0, w.rows);
}

}  // namespace

const char* quant_gemv_path_name(QuantGemvPath path) {
  switch (path) {
    case QuantGemvPath::generic: return "generic";
    case QuantGemvPath::avx2: return "avx2";
    case QuantGemvPath::avx2_int: return "avx2-int";
    case QuantGemvPath::avx512: return "avx512";
    case QuantGemvPath::vnni: return "vnni";
    case QuantGemvPath::neon: return "neon";
    case QuantGemvPath::avx_vnni: return "avx-vnni";
    case QuantGemvPath::neon_dotprod: return "neon-dotprod";
  }
  return "?";
}

std::vector<QuantGemvPath> quant_gemv_paths() {
  // Measured order (bench/cpu_ops_bench.cpp BM_QuantGemvPath, Zen 4): the AVX2 kernel converts
  // scales a block of groups at a time and outruns the AVX-512 f32 one (18.7 vs 10.0 GB/s at
  // 4 bits, 2 threads), so an AVX-512 CPU without VNNI runs AVX2; the AVX-512 f32 kernel stays
  // as VNNI's path for activations it cannot split (inf/NaN).
  std::vector<QuantGemvPath> paths{QuantGemvPath::generic};
  if (quant_gemv_avx512()) paths.push_back(QuantGemvPath::avx512);
  if (quant_gemv_avx2()) paths.push_back(QuantGemvPath::avx2);
  if (quant_avx2_int_supported()) paths.push_back(QuantGemvPath::avx2_int);
  if (quant_avx_vnni_supported()) paths.push_back(QuantGemvPath::avx_vnni);
  if (quant_gemv_avx512() && quant_vnni_supported()) paths.push_back(QuantGemvPath::vnni);
  if (quant_gemv_neon()) paths.push_back(QuantGemvPath::neon);
  if (quant_neon_dotprod_supported()) paths.push_back(QuantGemvPath::neon_dotprod);
  return paths;
}

QuantGemvPath quant_gemv_path_for(const Kernels& kernels) {
  static const QuantGemvPath fastest = quant_gemv_paths().back();
  if (is_table(kernels, &generic_kernels())) return QuantGemvPath::generic;
  if (is_table(kernels, avx2_kernels()))
    return quant_avx_vnni_supported() ? QuantGemvPath::avx_vnni : QuantGemvPath::avx2_int;
  return fastest;
}

void quant_gemv(QuantGemvPath path, ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w,
                float* y, int64_t ldy) {
  if (path == QuantGemvPath::vnni && quant_gemv_vnni(pool, M, x, ldx, w, y, ldy)) return;
  if (path == QuantGemvPath::avx2_int && quant_gemv_avx2_int(pool, M, x, ldx, w, y, ldy)) return;
  if (path == QuantGemvPath::avx_vnni && quant_gemv_avx_vnni(pool, M, x, ldx, w, y, ldy)) return;
  if (path == QuantGemvPath::neon_dotprod && quant_gemv_neon_dotprod(pool, M, x, ldx, w, y, ldy)) return;
  QuantGemvFn gemv = nullptr;
  if (path == QuantGemvPath::avx512 || path == QuantGemvPath::vnni) gemv = quant_gemv_avx512();
  if (path == QuantGemvPath::avx2 || path == QuantGemvPath::avx2_int || path == QuantGemvPath::avx_vnni)
    gemv = quant_gemv_avx2();
  if (path == QuantGemvPath::neon || path == QuantGemvPath::neon_dotprod) gemv = quant_gemv_neon();
  quant_gemv_f32(gemv ? gemv : quant_gemv_generic, pool, M, x, ldx, w, y, ldy);
}

QuantDequantizeFn quant_dequantize_for(const Kernels& kernels) {
  if (is_table(kernels, &generic_kernels())) return dequantize_rows;
  if (is_table(kernels, avx2_kernels())) return quant_dequantize_avx2();
  for (QuantDequantizeFn simd : {quant_dequantize_avx512(), quant_dequantize_avx2(), quant_dequantize_neon()})
    if (simd) return simd;
  return dequantize_rows;
}

void quant_matmul(const Kernels& kernels, ThreadPool* pool, int64_t M, const float* x, int64_t ldx,
                  const QuantView& w, const float* bias, float* y, int64_t ldy) {
  const int64_t N = w.rows, K = w.cols;
  auto parallel = [&](int64_t n, const ThreadPool::RangeFn& fn, int64_t min_chunk) {
    if (pool)
      pool->parallel_for(n, fn, min_chunk);
    else
      fn(0, n);
  };
  const auto add_bias = [&] {
    if (bias)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) y[m * ldy + n] += bias[n];
  };
  // Past one GEMV's rows, the AMX-INT8 tiles where the amx table runs (the codes as bytes, exact
  // integer sums).
  const bool amx = M > kQuantGemvMaxRows && is_table(kernels, amx_kernels()) &&
                   quant_matmul_amx(pool, M, x, ldx, w, y, ldy);
  // Else decode-sized M, a server's decode batches included: the GEMV a chunk of rows at a time
  // reads the codes once per chunk, cheaper than dequantizing every weight for so few rows, and
  // each row gets the bits it would get alone.
  if (amx || M <= kQuantGemvChunkedMaxRows) {
    if (!amx) {
      const QuantGemvPath path = quant_gemv_path_for(kernels);
      for (int64_t m0 = 0; m0 < M; m0 += kQuantGemvMaxRows)
        quant_gemv(path, pool, std::min(kQuantGemvMaxRows, M - m0), x + m0 * ldx, ldx, w, y + m0 * ldy, ldy);
    }
    add_bias();
    return;
  }
  // Elsewhere each thread dequantizes its own blocks of weight rows into a buffer that stays in
  // its L2 and multiplies them there as dense f32 (threads never wait on one another's rows).
  // The GEMV reads a ~256 KB block once per 4 activation rows; the GEMM, for larger M, gets
  // ~1 MB blocks so that x is streamed fewer times.
  const bool gemm = M > kernels.gemv_max_rows;
  const int64_t align = gemm ? kernels.gemm_nr : 4;
  const int64_t target_floats = gemm ? (int64_t{1} << 18) : (int64_t{1} << 16);
  const int64_t block = std::min(N, std::max(align, target_floats / K / align * align));
  const QuantDequantizeFn dequantize = quant_dequantize_for(kernels);
  const int64_t blocks = (N + block - 1) / block;
  parallel(blocks, [&](int64_t b0, int64_t b1) {
    std::vector<float> dense(static_cast<size_t>(block * K));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * block, rows = std::min(block, N - n0);
      dequantize(w, n0, n0 + rows, dense.data());
      const WeightView view{DType::F32, dense.data(), rows, K, K};
      matmul(kernels, nullptr, M, x, ldx, view, bias ? bias + n0 : nullptr, y + n0, ldy);
    }
  }, 1);
}

}  // namespace moxin::cpu
