// One Adam step over a leaf whose moments are stored in bfloat16 or block-wise
// 8 bits (or float32), as a single pass on the CPU: an XLA FFI custom call.
//
// XLA:CPU compiles the same step into one loop per output (update, m, v) and,
// when a moment is stored narrower than it is computed, every loop recomputes
// the moments from the old state; with the state donated that forces copies of
// the old state (and, for 8-bit moments, a decode three times over). Here each
// block of 256 values is decoded, stepped and encoded once, in cache (float32
// and bfloat16 moments stepped where they lie).
//
// One call steps any number of leaves over any number of states: the members
// of a packed chunk (transform.chunk_step), read where they are with an
// update buffer each, in place of XLA's concatenation of the gradients, its
// loops over the chunk and the slices of the update; and leaves with states
// of their own, several a call (transform.NATIVE_GROUP_ELEMENTS).
//
// The math is transform._leaf_step's (and moments.quantize/dequantize's) for
// the configurations that transform._native_ok sends here, operation for
// operation, with the scalar coefficients computed by XLA and passed in
// `coef`: the results equal XLA's bit for bit (tests/test_native.py). Where
// XLA contracts a multiply and an add into an FMA, so does this code, by
// std::fma or Fma (and nowhere else: it is compiled with -ffp-contract=off).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include <sys/mman.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 256;
constexpr float kFloatMax = 3.40282347e38f;
constexpr float kBf16Max = 3.38953139e38f;

// Storage kinds of a moment.
enum Kind { kF32 = 0, kBF16 = 1, kInt8 = 2 };

// Indices into `coef` (transform._native_coefficients).
enum Coef {
  kRate1, kKeep1, kInvBc1, kRate2, kKeep2, kInvBc2, kEps, kEpsRoot, kBound,
  kSafe, kNumCoef
};

typedef uint32_t __attribute__((may_alias)) Bits32;

inline uint32_t Bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

inline float FromBits(uint32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

inline float Bf16ToFloat(uint16_t h) { return FromBits(uint32_t(h) << 16); }

// moments.store(x, bfloat16): saturate at bfloat16's largest finite value,
// round to nearest even; NaN stays (a quiet) NaN.
inline uint16_t FloatToBf16(float x) {
  uint32_t nan = (Bits(x) >> 16) | 0x40;
  float y = std::min(std::max(x, -kBf16Max), kBf16Max);
  uint32_t b = Bits(y);
  b += 0x7FFF + ((b >> 16) & 1);
  return uint16_t(x != x ? nan : b >> 16);
}

// Lanes of GCC/Clang vector extensions (split into narrower registers where
// the machine has none this wide): the 8-bit codec is written with them,
// since GCC vectorizes its select chains poorly on its own.
constexpr int kLanes = 16;
typedef float VF __attribute__((vector_size(4 * kLanes)));
typedef int32_t VI __attribute__((vector_size(4 * kLanes)));

inline VF Splat(float x) { return VF{} + x; }
inline VI Splat(int32_t x) { return VI{} + x; }

// moments._indices: the nearest code magnitude index of a in [0, 1], in a
// code map with decades 0..kTop. The decade k is the number of kDecade
// bounds above a, and a is scaled into [0.1, 1] by one product with 10^k.
constexpr float kDecade[] = {1.0f, float(1e-1), float(1e-2), float(1e-3),
                             float(1e-4), float(1e-5), float(1e-6), float(1e-7)};
constexpr float kTens[] = {1.0f, 10.0f, 100.0f, 1e3f, 1e4f, 1e5f, 1e6f, 1e7f};

#if defined(__AVX512F__)
// The decade from a's binary exponent: an octave [2^e, 2^(e + 1)) holds at
// most one decade bound (they are 10x apart), so k is the number of bounds
// at or above the octave's end (`above`) plus one where a is below the bound
// inside it (`inside`, 0 where none). Octaves below 2^-24 (under every
// bound) share entry 0: a's exponent bits minus kLowest, at least 0.
constexpr int kLowest = 102;  // the exponent bits of 2^-25

template <int kTop>
struct DecadeTable {
  // By octave: the bounds above it, the bound inside it.
  alignas(64) int32_t above[32];
  alignas(64) float inside[32];
  // By decade k (Index): 10^k, n_int, and j's offset and factor (0 and n in
  // the last decade, where j = f n: (f - 0) n == f n exactly).
  alignas(64) float tens[16];
  alignas(64) int32_t n_int[16];
  alignas(64) float offset[16];
  alignas(64) float factor[16];
  DecadeTable() {
    for (int x = 0; x < 32; ++x) {
      float hi = FromBits(uint32_t(kLowest + x + 1) << 23);
      float lo = x == 0 ? 0.0f : FromBits(uint32_t(kLowest + x) << 23);
      above[x] = 0;
      inside[x] = 0.0f;
      for (int i = 1; i <= kTop; ++i) {
        if (kDecade[i] >= hi) above[x] += 1;
        else if (kDecade[i] >= lo) inside[x] = kDecade[i];
      }
    }
    for (int k = 0; k < 16; ++k) {
      int d = std::min(k, kTop);
      tens[k] = kTens[d];
      n_int[k] = 1 << (kTop - d);
      float n = float(n_int[k]);
      offset[k] = d == kTop ? 0.0f : 0.1f;
      factor[k] = d == kTop ? n : n * (1.0f / 0.9f);
    }
  }
};

template <int kTop>
const DecadeTable<kTop>& Tables() {
  static const DecadeTable<kTop> t;
  return t;
}

template <int kTop>
inline VI Decade(VF a, VF& f) {
  const DecadeTable<kTop>& t = Tables<kTop>();
  __m512i bits = reinterpret_cast<__m512i>(a);
  __m512i x = _mm512_max_epi32(
      _mm512_sub_epi32(_mm512_srli_epi32(bits, 23), _mm512_set1_epi32(kLowest)),
      _mm512_setzero_si512());
  __m512i k = _mm512_permutex2var_epi32(_mm512_load_si512(t.above), x,
                                        _mm512_load_si512(t.above + 16));
  __m512 inside = _mm512_permutex2var_ps(_mm512_load_ps(t.inside), x,
                                         _mm512_load_ps(t.inside + 16));
  __mmask16 below = _mm512_cmp_ps_mask(reinterpret_cast<__m512>(a), inside, _CMP_LT_OQ);
  k = _mm512_mask_add_epi32(k, below, k, _mm512_set1_epi32(1));
  __m512 ten = _mm512_permutexvar_ps(k, _mm512_load_ps(t.tens));
  f = reinterpret_cast<VF>(_mm512_mul_ps(reinterpret_cast<__m512>(a), ten));
  return reinterpret_cast<VI>(k);
}
#else
template <int kTop>
inline VI Decade(VF a, VF& f) {
  VI k = Splat(0);
  for (int i = 1; i <= kTop; ++i) k -= a < kDecade[i];
  VF ten = Splat(1.0f);
  for (int i = 1; i <= kTop; ++i) ten = k == i ? Splat(kTens[i]) : ten;
  f = a * ten;
  return k;
}
#endif

#if defined(__AVX512F__)
template <int kTop>
inline VI Index(VF a) {
  const DecadeTable<kTop>& t = Tables<kTop>();
  VF f;
  __m512i k = reinterpret_cast<__m512i>(Decade<kTop>(a, f));
  __m512i n_int = _mm512_permutexvar_epi32(k, _mm512_load_si512(t.n_int));
  __m512 offset = _mm512_permutexvar_ps(k, _mm512_load_ps(t.offset));
  __m512 factor = _mm512_permutexvar_ps(k, _mm512_load_ps(t.factor));
  __m512 j = _mm512_mul_ps(_mm512_sub_ps(reinterpret_cast<__m512>(f), offset), factor);
  __m512i r = _mm512_cvttps_epi32(_mm512_add_ps(j, _mm512_set1_ps(0.5f)));
  r = _mm512_min_epi32(r, n_int);
  return reinterpret_cast<VI>(
      _mm512_add_epi32(_mm512_sub_epi32(n_int, _mm512_set1_epi32(1)), r));
}
#else
template <int kTop>
inline VI Index(VF a) {
  VF f;
  VI k = Decade<kTop>(a, f);
  VI n_int = Splat(1) << (kTop - k);
  VF n = __builtin_convertvector(n_int, VF);
  // n / 0.9f, exactly: n is a power of 2, and a quotient's rounding does not
  // depend on its scale.
  VF j = k == kTop ? f * n : (f - 0.1f) * (n * (1.0f / 0.9f));
  // floor(j + 0.5) by truncation: j > -0.5 (f is within an ulp of 0.1 or
  // above, above the last decade).
  VI r = __builtin_convertvector(j + 0.5f, VI);
  r = r < n_int ? r : n_int;
  return n_int - 1 + r;
}
#endif

// a * b + c rounded once, as XLA contracts it.
inline VF Fma(VF a, VF b, VF c) {
#if defined(__AVX512F__)
  return reinterpret_cast<VF>(_mm512_fmadd_ps(reinterpret_cast<__m512>(a),
                                              reinterpret_cast<__m512>(b),
                                              reinterpret_cast<__m512>(c)));
#else
  VF r;
  for (int l = 0; l < kLanes; ++l) r[l] = std::fma(a[l], b[l], c[l]);
  return r;
#endif
}

// moments._magnitudes: the code magnitude of index in [0, 2**(kTop + 1)).
template <int kTop>
inline VF Magnitude(VI index) {
  VI one = Splat(1);
  VF at_least_one = __builtin_convertvector(index > one ? index : one, VF);
  VI e = (reinterpret_cast<VI>(at_least_one) >> 23) - 127;  // floor(log2)
  VI n = one << e;
  VF inv_n = reinterpret_cast<VF>((127 - e) << 23);
  VF j = __builtin_convertvector(index - n + 1, VF);
  VF frac = e == 0 ? j : Fma(Splat(0.9f), j * inv_n, Splat(0.1f));
  VF decade = Splat(1.0f);
  for (int k = 1; k <= kTop; ++k) decade = e == kTop - k ? Splat(kDecade[k]) : decade;
  return index == 0 ? Splat(0.0f) : frac * decade;
}

// A moment's storage: its values, or 8-bit codes and their blocks' scales.
struct Moment {
  int kind;
  void* data;
  float* scales;
  bool is_signed;
};

// Decodes the 8-bit block [start, start + len) (block `blk`) into `out`
// (moments.dequantize) by Magnitude: the reference for LoadTable below.
inline void LoadComputed(const Moment& m, int64_t start, int64_t len,
                         int64_t blk, float* out) {
  alignas(64) int32_t codes[kBlock];
  if (m.is_signed) {
    const int8_t* d = static_cast<const int8_t*>(m.data) + start;
    for (int64_t i = 0; i < len; ++i) codes[i] = d[i];
  } else {
    const uint8_t* d = static_cast<const uint8_t*>(m.data) + start;
    for (int64_t i = 0; i < len; ++i) codes[i] = d[i];
  }
  for (int64_t i = len; i < kBlock; ++i) codes[i] = 0;
  VF s = Splat(m.scales[blk]);
  const VI* cv = reinterpret_cast<const VI*>(codes);
  VF* ov = reinterpret_cast<VF*>(out);
  if (m.is_signed) {
    for (int64_t i = 0; i < kBlock / kLanes; ++i) {
      VI c = cv[i];
      VF mag = Magnitude<6>(c < 0 ? -c : c);
      ov[i] = (c < 0 ? -mag : mag) * s;
    }
  } else {
    for (int64_t i = 0; i < kBlock / kLanes; ++i) ov[i] = Magnitude<7>(cv[i]) * s;
  }
}

#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
// The decoded value (before the scale) of every code byte, one table a code
// map, made by LoadComputed itself: so the lookup equals it bit for bit, for
// every byte (codes that quantize never writes included). Its four bytes a
// value are stored as four 256-byte planes, for byte permutes (vpermi2b).
struct CodeTable {
  alignas(64) uint8_t planes[4][256];
  explicit CodeTable(bool is_signed) {
    alignas(64) int8_t codes[kBlock];
    for (int i = 0; i < kBlock; ++i) codes[i] = int8_t(uint8_t(i));
    alignas(64) float values[kBlock];
    float one = 1.0f;
    LoadComputed(Moment{kInt8, codes, &one, is_signed}, 0, kBlock, 0, values);
    for (int i = 0; i < kBlock; ++i)
      for (int b = 0; b < 4; ++b) planes[b][i] = uint8_t(Bits(values[i]) >> (8 * b));
  }
};

const CodeTable& Table(bool is_signed) {
  static const CodeTable s(true), u(false);
  return is_signed ? s : u;
}

// Decodes a whole 8-bit block: each 64 codes are looked up in the table's
// byte planes (two 128-byte permutes a plane, picked by the code's top bit)
// and the planes interleaved into floats. The codes are first reordered so
// that the interleave (which works within 128-bit lanes) leaves the floats in
// order: float 16q + 4L + i comes from code position 16L + 4q + i.
inline void LoadTable(const Moment& m, int64_t start, int64_t blk, float* out) {
  const CodeTable& t = Table(m.is_signed);
  alignas(64) static const uint8_t kOrder[64] = {
      0,  1,  2,  3,  16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51,
      4,  5,  6,  7,  20, 21, 22, 23, 36, 37, 38, 39, 52, 53, 54, 55,
      8,  9,  10, 11, 24, 25, 26, 27, 40, 41, 42, 43, 56, 57, 58, 59,
      12, 13, 14, 15, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63};
  const __m512i order = _mm512_load_si512(kOrder);
  __m512i lo[4], hi[4], lo2[4], hi2[4];  // each plane's four 64-byte quarters
  for (int b = 0; b < 4; ++b) {
    lo[b] = _mm512_load_si512(t.planes[b]);
    hi[b] = _mm512_load_si512(t.planes[b] + 64);
    lo2[b] = _mm512_load_si512(t.planes[b] + 128);
    hi2[b] = _mm512_load_si512(t.planes[b] + 192);
  }
  const __m512 s = _mm512_set1_ps(m.scales[blk]);
  const uint8_t* d = static_cast<const uint8_t*>(m.data) + start;
  for (int64_t c = 0; c < kBlock; c += 64) {
    __m512i codes = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(d + c));
    __mmask64 top = _mm512_movepi8_mask(codes);
    __m512i p[4];
    for (int b = 0; b < 4; ++b) {
      __m512i low = _mm512_permutex2var_epi8(lo[b], codes, hi[b]);
      __m512i high = _mm512_permutex2var_epi8(lo2[b], codes, hi2[b]);
      p[b] = _mm512_mask_blend_epi8(top, low, high);
    }
    __m512i w01l = _mm512_unpacklo_epi8(p[0], p[1]), w01h = _mm512_unpackhi_epi8(p[0], p[1]);
    __m512i w23l = _mm512_unpacklo_epi8(p[2], p[3]), w23h = _mm512_unpackhi_epi8(p[2], p[3]);
    __m512i f[4] = {_mm512_unpacklo_epi16(w01l, w23l), _mm512_unpackhi_epi16(w01l, w23l),
                    _mm512_unpacklo_epi16(w01h, w23h), _mm512_unpackhi_epi16(w01h, w23h)};
    for (int q = 0; q < 4; ++q)
      _mm512_store_ps(out + c + 16 * q, _mm512_mul_ps(_mm512_castsi512_ps(f[q]), s));
  }
}
#endif

// Decodes the 8-bit block [start, start + len) (block `blk`) into `out`
// (moments.dequantize); float moments are stepped in place (WithView).
inline void Load(const Moment& m, int64_t start, int64_t len, int64_t blk,
                 float* out) {
#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
  if (len == kBlock) return LoadTable(m, start, blk, out);
#endif
  LoadComputed(m, start, len, blk, out);
}

// Encodes `x` into the 8-bit block (moments.quantize's block).
inline void Store(const Moment& m, int64_t start, int64_t len, int64_t blk,
                  const float* x) {
  // x holds kBlock values, zero past len (see StepBlocks). The absmax over
  // finite values, compared as bits (of |x| >= 0).
  const VI* xi = reinterpret_cast<const VI*>(x);
  VI acc = Splat(0);
  for (int64_t i = 0; i < kBlock / kLanes; ++i) {
    VI b = xi[i] & 0x7FFFFFFF;
    VI finite = (b - 0x7F800000) >> 31;  // all ones below inf's bits
    b &= finite;
    acc = acc > b ? acc : b;
  }
  int32_t s_bits = 0;
  for (int l = 0; l < kLanes; ++l) s_bits = std::max(s_bits, acc[l]);
  float s = FromBits(uint32_t(s_bits));
  m.scales[blk] = s;
  float pre = s > 0x1p100f ? 0x1p-100f : (s < 0x1p-100f ? 0x1p100f : 1.0f);
  float inv = 1.0f / (s > 0.0f ? s * pre : 1.0f);
  alignas(64) int32_t codes[kBlock];
  const VF* xv = reinterpret_cast<const VF*>(x);
  VI* cv = reinterpret_cast<VI*>(codes);
  for (int64_t i = 0; i < kBlock / kLanes; ++i) {
    VF xs = xv[i];
    VF mag = reinterpret_cast<VF>(reinterpret_cast<VI>(xs) & 0x7FFFFFFF);
    VF a = (mag * pre) * inv;
#if defined(__AVX512F__)
    // min(a, 1) where a is a number, 0 where NaN; the sign, or (the second
    // moment) at least code 1 where positive, by masked instructions.
    __m512 af = reinterpret_cast<__m512>(a);
    __mmask16 number = _mm512_cmp_ps_mask(af, af, _CMP_ORD_Q);
    a = reinterpret_cast<VF>(_mm512_maskz_min_ps(number, af, _mm512_set1_ps(1.0f)));
    __m512 xf = reinterpret_cast<__m512>(xs);
    if (m.is_signed) {
      __m512i index = reinterpret_cast<__m512i>(Index<6>(a));
      __mmask16 negative = _mm512_cmp_ps_mask(xf, _mm512_setzero_ps(), _CMP_LT_OQ);
      cv[i] = reinterpret_cast<VI>(
          _mm512_mask_sub_epi32(index, negative, _mm512_setzero_si512(), index));
    } else {
      __m512i index = reinterpret_cast<__m512i>(Index<7>(a));
      __mmask16 positive = _mm512_cmp_ps_mask(xf, _mm512_setzero_ps(), _CMP_GT_OQ);
      cv[i] = reinterpret_cast<VI>(
          _mm512_mask_max_epi32(index, positive, index, _mm512_set1_epi32(1)));
    }
#else
    a = a < 1.0f ? a : (a >= 1.0f ? Splat(1.0f) : Splat(0.0f));
    if (m.is_signed) {
      VI index = Index<6>(a);
      cv[i] = xs < 0.0f ? -index : index;
    } else {
      VI index = Index<7>(a);
      VI positive = -(xs > 0.0f);
      cv[i] = index > positive ? index : positive;
    }
#endif
  }
  if (m.is_signed) {
    int8_t* d = static_cast<int8_t*>(m.data) + start;
    for (int64_t i = 0; i < len; ++i) d[i] = int8_t(codes[i]);
  } else {
    uint8_t* d = static_cast<uint8_t*>(m.data) + start;
    for (int64_t i = 0; i < len; ++i) d[i] = uint8_t(codes[i]);
  }
}

// One gradient leaf and its part of the state: its values are the state's
// [offset, offset + rows * rest), blocked along `rest` (a leaf alone: offset 0;
// a member of a packed chunk: rows 1, its offset in the chunk, a multiple of
// kBlock when the state is 8-bit).
struct Segment {
  const float* g;
  float* u;
  int64_t state, offset, rows, rest, blocks_per_row, first_block;
};

struct Work {
  std::vector<Moment> m, v;  // per state
  float c[kNumCoef];
  std::vector<Segment> segs;
};

// Where the step reads and writes a moment's values in a block: float32 and
// bfloat16 storage in place, 8-bit codes through a float buffer (Load, Store).
struct F32At {
  static constexpr bool kStoredF32 = true;
  float* p;
  float Get(int64_t i) const { return p[i]; }
  void Set(int64_t i, float x) const { p[i] = x; }
};

struct Bf16At {
  static constexpr bool kStoredF32 = false;
  uint16_t* p;
  float Get(int64_t i) const { return Bf16ToFloat(p[i]); }
  void Set(int64_t i, float x) const { p[i] = FloatToBf16(x); }
};

struct BufferAt {
  static constexpr bool kStoredF32 = false;
  float* p;
  float Get(int64_t i) const { return p[i]; }
  void Set(int64_t i, float x) const { p[i] = x; }
};

// Calls f with the view of moment `mo` at `start` (`buffer`: 8-bit codes).
template <class F>
inline void WithView(const Moment& mo, int64_t start, float* buffer, F&& f) {
  if (mo.kind == kF32) {
    f(F32At{static_cast<float*>(mo.data) + start});
  } else if (mo.kind == kBF16) {
    f(Bf16At{static_cast<uint16_t*>(mo.data) + start});
  } else {
    f(BufferAt{buffer});
  }
}

// The Adam step of `len` values (moments.py's math, operation for operation).
// `u` may be `g` (native.call's `free`): element i is read before it is
// written, so the loop carries no dependence and vectorizes without the
// compiler's overlap checks (which would fall back to scalar code there).
template <class M, class V>
inline void StepValues(const float* c, bool safe, const float* g, M m,
                       V v, float* u, int64_t len) {
#if defined(__clang__)
#pragma clang loop vectorize(assume_safety)
#elif defined(__GNUC__)
#pragma GCC ivdep
#endif
  for (int64_t i = 0; i < len; ++i) {
    float gc = g[i];
    float mi = std::fma(c[kRate1], gc, c[kKeep1] * m.Get(i));
    float vr = std::min(v.Get(i), kFloatMax);
    float vi = V::kStoredF32 ? std::fma(c[kKeep2], vr, c[kRate2] * (gc * gc))
                             : std::fma(c[kRate2], gc * gc, c[kKeep2] * vr);
    vi = vi + (gc - gc);  // NaN for a non-finite gradient
    // XLA divides by a scalar through its reciprocal.
    float m_hat = mi * c[kInvBc1];
    float v_hat = std::min(vi * c[kInvBc2], kFloatMax);
    float denom = std::sqrt(v_hat + c[kEpsRoot]) + c[kEps];
    float ui = m_hat / denom;
    if (safe && m_hat == 0.0f) ui = 0.0f;
    // clip, NaN stays NaN
    ui = ui < -c[kBound] ? -c[kBound] : (ui > c[kBound] ? c[kBound] : ui);
    m.Set(i, mi);
    v.Set(i, vi);
    u[i] = ui;
  }
}

// Steps blocks [b0, b1), numbered over the segments in order (each segment's
// row-major over rows x blocks_per_row).
void StepBlocks(const Work& w, int64_t b0, int64_t b1) {
  alignas(64) float m[kBlock], v[kBlock];
  const float* c = w.c;
  const bool safe = c[kSafe] != 0.0f;
  // The segment holding b: found by bisection for the first block, then by
  // stepping forward.
  size_t s = std::upper_bound(w.segs.begin(), w.segs.end(), b0,
                              [](int64_t b, const Segment& x) {
                                return b < x.first_block;
                              }) -
             w.segs.begin() - 1;
  for (int64_t b = b0; b < b1; ++b) {
    while (s + 1 < w.segs.size() && w.segs[s + 1].first_block <= b) ++s;
    const Segment& seg = w.segs[s];
    const Moment& mm = w.m[seg.state];
    const Moment& vm = w.v[seg.state];
    int64_t local = b - seg.first_block;
    int64_t row = local / seg.blocks_per_row, k = local % seg.blocks_per_row;
    int64_t col = k * kBlock;
    int64_t len = std::min(kBlock, seg.rest - col);
    int64_t at = row * seg.rest + col;  // in the leaf
    int64_t start = seg.offset + at;    // in the state
    int64_t blk = seg.offset / kBlock + local;
    if (mm.kind == kInt8) Load(mm, start, len, blk, m);
    if (vm.kind == kInt8) Load(vm, start, len, blk, v);
    WithView(mm, start, m, [&](auto mv) {
      WithView(vm, start, v, [&](auto vv) {
        StepValues(c, safe, seg.g + at, mv, vv, seg.u + at, len);
      });
    });
    // Store reads a whole block: zeros past len.
    if (mm.kind == kInt8) {
      for (int64_t i = len; i < kBlock; ++i) m[i] = 0.0f;
      Store(mm, start, len, blk, m);
    }
    if (vm.kind == kInt8) {
      for (int64_t i = len; i < kBlock; ++i) v[i] = 0.0f;
      Store(vm, start, len, blk, v);
    }
  }
}

Moment MakeMoment(ffi::AnyBuffer codes, ffi::AnyBuffer scales,
                  ffi::Result<ffi::AnyBuffer> out,
                  ffi::Result<ffi::AnyBuffer> out_scales) {
  Moment m;
  switch (codes.element_type()) {
    case ffi::DataType::F32: m.kind = kF32; break;
    case ffi::DataType::BF16: m.kind = kBF16; break;
    default: m.kind = kInt8; break;
  }
  m.is_signed = codes.element_type() == ffi::DataType::S8;
  m.data = out->untyped_data();
  m.scales = static_cast<float*>(out_scales->untyped_data());
  // The outputs alias the inputs (input_output_aliases); copy if XLA chose
  // not to (the step then reads the input's values from the output).
  if (codes.untyped_data() != out->untyped_data())
    std::memcpy(out->untyped_data(), codes.untyped_data(), codes.size_bytes());
  if (scales.size_bytes() != 0 &&
      scales.untyped_data() != out_scales->untyped_data())
    std::memcpy(out_scales->untyped_data(), scales.untyped_data(),
                scales.size_bytes());
  return m;
}

// Tasks shared with the thread pool: every thread (the caller included) takes
// the next range of blocks until none is left; the caller then waits only for
// ranges already taken, so it never waits on a task that has not started.
struct Shared {
  Work work;
  int64_t total, grain;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

void Drain(Shared& s) {
  for (;;) {
    int64_t b0 = s.next.fetch_add(s.grain);
    if (b0 >= s.total) return;
    int64_t b1 = std::min(b0 + s.grain, s.total);
    StepBlocks(s.work, b0, b1);
    s.done.fetch_add(b1 - b0, std::memory_order_release);
  }
}

// A large update buffer, which XLA allocates for every step, is usually fresh
// memory: ask for huge pages before its first write, so that
// writing it costs a few page faults rather than one per 4 KiB.
void Huge(void* p, int64_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < int64_t(4 * kHuge)) return;
  uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
}

// args: the states' (m, m scales, v, v scales), four buffers a state, then
// one gradient a leaf; rets: the states (aliasing them), then one update a
// leaf. Leaf i is in state states[i] at (offsets[i], rows[i], rests[i]).
ffi::Error StepImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> coef,
                    ffi::RemainingArgs args, ffi::RemainingRets rets,
                    ffi::Span<const int64_t> states,
                    ffi::Span<const int64_t> offsets,
                    ffi::Span<const int64_t> rows, ffi::Span<const int64_t> rests) {
  size_t n = offsets.size();
  if (coef.element_count() != kNumCoef)
    return ffi::Error::InvalidArgument("adam_jax_cpu_step: bad coefficients");
  if (states.size() != n || rows.size() != n || rests.size() != n ||
      args.size() < n || (args.size() - n) % 4 != 0 ||
      rets.size() != args.size())
    return ffi::Error::InvalidArgument("adam_jax_cpu_step: bad leaf count");
  size_t num_states = (args.size() - n) / 4;
  auto shared = std::make_shared<Shared>();
  Work& w = shared->work;
  std::vector<int64_t> sizes;
  for (size_t k = 0; k < num_states; ++k) {
    std::vector<ffi::AnyBuffer> in;
    std::vector<ffi::Result<ffi::AnyBuffer>> out;
    for (size_t j = 0; j < 4; ++j) {
      auto x = args.get<ffi::AnyBuffer>(4 * k + j);
      auto y = rets.get<ffi::AnyBuffer>(4 * k + j);
      if (!x.has_value() || !y.has_value())
        return ffi::Error::InvalidArgument("adam_jax_cpu_step: bad state");
      in.push_back(*x);
      out.push_back(*y);
    }
    w.m.push_back(MakeMoment(in[0], in[1], out[0], out[1]));
    w.v.push_back(MakeMoment(in[2], in[3], out[2], out[3]));
    sizes.push_back(static_cast<int64_t>(in[0].element_count()));
  }
  std::memcpy(w.c, coef.typed_data(), sizeof(w.c));
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    auto g = args.get<ffi::Buffer<ffi::F32>>(4 * num_states + i);
    auto u = rets.get<ffi::Buffer<ffi::F32>>(4 * num_states + i);
    if (!g.has_value() || !u.has_value())
      return ffi::Error::InvalidArgument("adam_jax_cpu_step: bad gradient");
    if (states[i] < 0 || states[i] >= static_cast<int64_t>(num_states) ||
        rows[i] * rests[i] != static_cast<int64_t>(g->element_count()) ||
        offsets[i] + rows[i] * rests[i] > sizes[states[i]])
      return ffi::Error::InvalidArgument("adam_jax_cpu_step: bad leaf layout");
    Segment seg;
    seg.g = g->typed_data();
    seg.u = (*u)->typed_data();
    seg.state = states[i];
    seg.offset = offsets[i];
    seg.rows = rows[i];
    seg.rest = rests[i];
    seg.blocks_per_row = rests[i] == 0 ? 0 : (rests[i] + kBlock - 1) / kBlock;
    seg.first_block = total;
    // Written over its gradient (native.call's `free`), it is not fresh.
    if (seg.u != seg.g) Huge(seg.u, rows[i] * rests[i] * 4);
    total += seg.rows * seg.blocks_per_row;
    if (seg.blocks_per_row) w.segs.push_back(seg);
  }
  shared->total = total;
  if (total == 0) return ffi::Error::Success();
  // About 64K values a task, at least 4 tasks a thread when there is work.
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  shared->grain =
      std::max<int64_t>(1, std::min<int64_t>(256, total / (4 * threads)));
  int64_t helpers = std::min(threads, total / shared->grain) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([shared] { Drain(*shared); });
  Drain(*shared);
  while (shared->done.load(std::memory_order_acquire) < total)
    std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamJaxCpuStep, StepImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coef
                                  .RemainingArgs()   // states, gradients
                                  .RemainingRets()   // states, updates
                                  .Attr<ffi::Span<const int64_t>>("states")
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Attr<ffi::Span<const int64_t>>("rows")
                                  .Attr<ffi::Span<const int64_t>>("rests"));
