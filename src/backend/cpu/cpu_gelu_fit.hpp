// The erfc fit behind the SIMD GELU kernels (AVX-512 and AVX2 evaluate the same polynomial):
// erfc(|x| / sqrt 2) = t exp(-x^2 / 2 + f(t)) with t = 1 / (1 + z / 2), z = |x| / sqrt 2, and
// f a degree-10 polynomial in u = 2.4 t - 1.4 fitted (Chebyshev least squares) to
// ln(erfc(z) exp(z^2) / t) on z in [0, 10]: relative error below 4e-7.
#pragma once

namespace moxin::cpu {

// f's coefficients, constant term first.
inline constexpr float kGeluErfcFit[11] = {-5.585953566e-01f, 5.703071246e-01f,  1.574523109e-02f,
                                           -2.947066410e-02f, -1.046896071e-03f, 3.708789350e-03f,
                                           -2.719721463e-04f, -5.362412916e-04f, 1.250716277e-04f,
                                           5.578634640e-05f,  -2.084848001e-05f};

}  // namespace moxin::cpu
