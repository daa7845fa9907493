/* The kernels of rvec_hub.fused and the walk of packed and quantized blocks (see rvec_hub/_kernels.py).

   bf16 values travel as their bits (uint16). A sum is float32's fused multiply-add, base + alpha * delta,
   rounded to bf16 to nearest even, as torch computes and casts it. Each kernel returns a status and writes
   sums[0] = the squared rounding error and sums[1] = |alpha * delta|^2 of what it added (float32 sums; a
   call covers one chunk or block, about a million weights).

   Built with the package (setup.py) as an extension module with no functions of its own: rvec_hub._kernels
   calls these through ctypes, which releases the GIL for each call. On x86-64 with GCC each kernel is
   compiled three times (AVX-512, AVX2 with FMA, baseline) and the loader picks the one the CPU runs. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define BAD_VALUE 8 /* a sum is NaN or infinite in bf16 */
#define NO_MEMORY 9 /* a buffer could not be allocated */
#define SPAN 2048   /* elements of one round of a gathered walk (its buffers and base rows stay in the first-level cache), and how far the vector loops fetch ahead */

static inline float widen(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t to_bf16(float x) { /* round to nearest even, as torch casts */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline int finite_bf16(uint16_t y) { return (y & 0x7F80u) != 0x7F80u; }

/* out[p] = source[p] + alpha * value: the rounding error's square, and whether the sum left bf16's range. */
static inline __attribute__((always_inline)) float add_at(uint16_t *out, const uint16_t *source, int64_t p, float alpha, float value, int *bad) {
    float exact = fmaf(alpha, value, widen(source[p]));
    uint16_t y = to_bf16(exact);
    out[p] = y;
    float e = widen(y) - exact;
    *bad |= !finite_bf16(y);
    return e * e;
}

/* out = source + alpha * delta over n weights (source may be out); `delta` holds bf16 bits (`bf16`) or float32. */
static inline __attribute__((always_inline)) int dense(uint16_t *out, const uint16_t *source, const void *delta, const int bf16, int64_t n,
                                                       float alpha, float *sums) {
    float err = 0.0f, norm = 0.0f;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float d = bf16 ? widen(((const uint16_t *)delta)[i]) : ((const float *)delta)[i];
        err += add_at(out, source, i, alpha, d, &bad);
        norm += d * d;
    }
    sums[0] = err;
    sums[1] = norm * alpha * alpha;
    return bad ? BAD_VALUE : 0;
}

/* `source` NULL: out itself, added in place. */
CLONES int rvec_dense_f32(uint16_t *out, const uint16_t *source, const float *delta, int64_t n, float alpha, float *sums) {
    return dense(out, source ? source : out, delta, 0, n, alpha, sums);
}

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define VECTOR_KERNELS
static int dense_avx512(uint16_t *out, const uint16_t *source, const uint16_t *delta, int64_t n, float alpha, float *sums);
static int dense_bf16(uint16_t *out, const uint16_t *source, const uint16_t *delta, int64_t n, float alpha, float *sums);
static int has_avx512(void);
static int has_bf16(void);
static int lowrank_bf16(uint16_t *out, const uint16_t *source, const uint16_t *b, const uint16_t *a, int64_t rows, int64_t cols, int64_t rank,
                        float alpha, float *sums);
#if !defined(__clang__) && __GNUC__ >= 11 /* AMX intrinsics */
#define AMX_KERNELS
static int lowrank_amx(uint16_t *out, const uint16_t *source, const uint16_t *b, const uint16_t *a, int64_t rows, int64_t cols, int64_t rank,
                       float alpha, float *sums);
static int has_amx(void);
#endif
#endif

/* A bf16 delta takes the AVX-512 loop where the CPU has it and the walk setting allows vector walks; the
   converting loop where the CPU has AVX512-BF16 and the setting allows gathered walks. */
int rvec_dense_bf16(uint16_t *out, const uint16_t *source, const uint16_t *delta, int64_t n, float alpha, float *sums) {
#ifdef VECTOR_KERNELS
    if (has_bf16())
        return dense_bf16(out, source ? source : out, delta, n, alpha, sums);
    if (has_avx512())
        return dense_avx512(out, source ? source : out, delta, n, alpha, sums);
#endif
    return dense(out, source ? source : out, delta, 1, n, alpha, sums);
}

/* The low-rank add of a bf16 factor pair in one pass: on AMX (lowrank_amx) for ranks in thirty-twos up to
   256; where AMX cannot run, with AVX512-BF16 (lowrank_bf16) for even ranks. Not the second where AMX runs:
   torch's bf16 matmul, whose bits the adds keep, then sums on AMX tiles, in an order this kernel is not
   checked against. -1 where neither runs here (columns not a multiple of 16, neither unit, the walk setting,
   a rank AMX declines on an AMX machine): the caller multiplies and adds the general way. */
int rvec_lowrank_bf16(uint16_t *out, const uint16_t *source, const uint16_t *b, const uint16_t *a, int64_t rows, int64_t cols, int64_t rank,
                      float alpha, float *sums) {
    int amx = 0;
#ifdef AMX_KERNELS
    amx = has_amx();
    if (rank > 0 && rank % 32 == 0 && rank <= 256 && cols > 0 && cols % 16 == 0 && amx)
        return lowrank_amx(out, source ? source : out, b, a, rows, cols, rank, alpha, sums);
#endif
#ifdef VECTOR_KERNELS
    if (rank > 0 && rank % 2 == 0 && cols > 0 && cols % 16 == 0 && !amx && has_bf16())
        return lowrank_bf16(out, source ? source : out, b, a, rows, cols, rank, alpha, sums);
#endif
    (void)amx;
    return -1;
}

/* At each (checked) position where[i], in any order: out += alpha * values[i]. */
CLONES int rvec_indexed(uint16_t *out, const int64_t *where, const float *values, int64_t n, float alpha, float *sums) {
    float err = 0.0f, norm = 0.0f;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float value = values[i];
        if (value != 0.0f) {
            err += add_at(out, out, where[i], alpha, value, &bad);
            norm += value * value;
        }
    }
    sums[0] = err;
    sums[1] = norm * alpha * alpha;
    return bad ? BAD_VALUE : 0;
}

/* The walk of one coded block (rvec_hub/encodings/blocks.py has the layout). With `add`, bf16 bits `out`
   get out = source + alpha * value at each entry and the source's weight elsewhere (`source` NULL: out
   itself, added in place); without, float32 `out` is filled with the decoded block (zeros between the
   entries). The positions are gap bytes or (`bitmask`) one bit per element, least significant first.
   Statuses other than 0 and BAD_VALUE name a corrupt block:
   1 an entry past the block's end, 2 more entries than codes, 3 a code outside the codebook,
   4 more escape codes than escaped values, 5 codes left over, 6 escaped values left over,
   7 a code count, scale count or bitmask size that does not fit the block; 9 (NO_MEMORY) is no corruption
   but a buffer that could not be allocated. */
struct walk {
    const uint8_t *codes;
    int64_t n_codes, k;
    const float *table;
    int64_t n_table;
    const float *escaped;
    int64_t n_escaped, e;
    int bad_code;
    const float *scales; /* NULL: no scales */
    int64_t cols, row, row_end;
    void *target;
    const uint16_t *source; /* the base the bitmask walk adds to, written into target whole (NULL: target) */
    float alpha, err, norm;
    int add, bad;
};

/* The value at position p, or 0 on success and a status: the next code, looked up, escaped, scaled. */
static inline __attribute__((always_inline)) int next_value(struct walk *w, int64_t p, float *value) {
    if (w->k >= w->n_codes)
        return 2;
    uint8_t c = w->codes[w->k++];
    if (c < w->n_table) {
        *value = w->table[c];
    } else if (c == 255 && w->e < w->n_escaped) {
        *value = w->escaped[w->e++];
    } else {
        return c == 255 ? w->bad_code : 3;
    }
    if (w->scales) {
        while (p >= w->row_end) {
            w->row++;
            w->row_end += w->cols;
        }
        *value *= w->scales[w->row];
    }
    return 0;
}

static inline __attribute__((always_inline)) void put(struct walk *w, int64_t p, float value) {
    if (w->add) {
        if (value != 0.0f) {
            w->err += add_at((uint16_t *)w->target, (uint16_t *)w->target, p, w->alpha, value, &w->bad);
            w->norm += value * value;
        }
    } else {
        ((float *)w->target)[p] = value;
    }
}

/* The entry at position p: its value from the next code, put; 0, or the block's status. */
static inline __attribute__((always_inline)) int entry(struct walk *w, int64_t p) {
    float value = 0.0f;
    int status = next_value(w, p, &value);
    if (!status)
        put(w, p, value);
    return status;
}

/* The entries of one group of bitmask positions: bit i of `m` set is an entry at p0 + i. */
static inline __attribute__((always_inline)) int group(struct walk *w, int64_t p0, uint32_t m) {
    while (m) {
        int64_t p = p0 + __builtin_ctz(m);
        m &= m - 1;
        int status = entry(w, p);
        if (status)
            return status;
    }
    return 0;
}

/* Sixteen bits of the bitmask from element p0 (a multiple of 16) on; the block's last byte may be the first. */
static inline uint32_t bits16(const uint8_t *mask, int64_t n_mask, int64_t p0) {
    int64_t at = p0 >> 3;
    return mask[at] | (at + 1 < n_mask ? (uint32_t)mask[at + 1] << 8 : 0u);
}

static inline __attribute__((always_inline)) int walk_gaps(struct walk *w, const uint8_t *gaps, int64_t n_gaps, int64_t n) {
    int64_t p = -1;
    for (int64_t i = 0; i < n_gaps; i++) {
        uint8_t g = gaps[i];
        if (g == 0) {
            p += 255;
            continue;
        }
        p += g;
        if (p >= n)
            return 1;
        int status = entry(w, p);
        if (status)
            return status;
    }
    return 0;
}

/* The bitmask walk from element p_start (a multiple of 16) on. */
static inline __attribute__((always_inline)) int walk_mask(struct walk *w, const uint8_t *mask, int64_t n_mask, int64_t n, int64_t p_start) {
    for (int64_t p0 = p_start; p0 < n; p0 += 16) {
        uint32_t m = bits16(mask, n_mask, p0);
        if (n - p0 < 16 && m >> (n - p0))
            return 1;
        int status = group(w, p0, m);
        if (status)
            return status;
    }
    return 0;
}

static inline __attribute__((always_inline)) int walk_every(struct walk *w, int64_t n) {
    if (w->n_codes != n)
        return 7;
    for (int64_t p = 0; p < n; p++) {
        int status = entry(w, p);
        if (status)
            return status;
    }
    return 0;
}

static int vector_walk = 2;

/* Which walks may run where the CPU has them (`enable`; -1 only asks): 2 all, 1 the AVX-512 walk but not
   the gathered walks of a fused bitmask add nor the converting loops (has_bf16), 0 only the scalar loops (the
   dense add's too). Tests run each on the same machine. Returns the setting before the call. */
int rvec_vector_walk(int enable) {
    int before = vector_walk;
    if (enable >= 0)
        vector_walk = enable;
    return before;
}

/* The walk this thread's last bitmask block took, as rvec_vector_walk counts them (for tests). */
static __thread int walked = -1;

int rvec_last_walk(void) { return walked; }

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,bmi,bmi2,popcnt,fma")))

static int has_avx512(void) {
    static int known = -1;
    if (vector_walk == 0)
        return 0;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("bmi2");
    }
    return known;
}

/* Whether the byte kernels (compiled for AVX512_BYTES) may run: the AVX-512 walk may, and the CPU has VBMI
   and VBMI2. */
static int has_bytes(void) {
    static int known = -1;
    if (!has_avx512())
        return 0;
    if (known < 0)
        known = __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vbmi2");
    return known;
}

/* Whether the gathered walks may run: the walk setting allows them, and the byte kernels may. */
static int has_gathered(void) { return vector_walk >= 2 && has_bytes(); }

/* Sixteen float32 bit patterns rounded to bf16, to nearest even, as to_bf16 rounds: the bf16 bits in each
   lane's low half. */
AVX512 static inline __attribute__((always_inline)) __m512i round16(__m512i u) {
    return _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))), 16);
}

/* bf16(base + alpha * v) in sixteen lanes (bf16 bits), the fused sum rounded to nearest even as add_at
   rounds it; the `live` lanes' squared rounding errors and |v|^2 added into err and norm, and those of them
   whose sum left bf16's range into bad. */
AVX512 static inline __attribute__((always_inline)) __m256i sum16(__m512 alpha, __m512 v, __m256i base, __mmask16 live, __m512 *err,
                                                                 __m512 *norm, __mmask16 *bad) {
    const __m512i exponent = _mm512_set1_epi32(0x7F80);
    const __m512 exact = _mm512_fmadd_ps(alpha, v, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(base), 16)));
    const __m512i rounded = round16(_mm512_castps_si512(exact));
    const __m512 e = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_slli_epi32(rounded, 16)), exact);
    *err = _mm512_mask3_fmadd_ps(e, e, *err, live);
    *norm = _mm512_mask3_fmadd_ps(v, v, *norm, live);
    *bad |= _mm512_mask_cmpeq_epi32_mask(live, _mm512_and_si512(rounded, exponent), exponent);
    return _mm512_cvtepi32_epi16(rounded);
}

/* Sixteen (thirty-two) bf16 sums stored at `to`: past the caches where the store is 32-byte (64-byte)
   aligned (see scatter_sums), else plainly. */
AVX512 static inline __attribute__((always_inline)) void store16(uint16_t *to, __m256i y) {
    if (((uintptr_t)to & 31) == 0)
        _mm256_stream_si256((__m256i *)to, y);
    else
        _mm256_storeu_si256((__m256i *)to, y);
}

AVX512 static inline __attribute__((always_inline)) void store32(uint16_t *to, __m512i y) {
    if (((uintptr_t)to & 63) == 0)
        _mm512_stream_si512((__m512i *)to, y);
    else
        _mm512_storeu_si512(to, y);
}

/* The end of a vector loop of the dense add: the weights from `i` on by `dense`, the loop's sums reduced
   into sums[0] and sums[1], its streaming stores fenced. */
AVX512 static inline __attribute__((always_inline)) int dense_finish(uint16_t *out, const uint16_t *source, const uint16_t *delta, int64_t n,
                                                                    int64_t i, float alpha, __m512 err, __m512 norm, int bad, float *sums) {
    _mm_sfence();
    float tail[2];
    int status = dense(out + i, source + i, delta + i, 1, n - i, alpha, tail);
    sums[0] = _mm512_reduce_add_ps(err) + tail[0];
    sums[1] = _mm512_reduce_add_ps(norm) * alpha * alpha + tail[1];
    return bad || status ? BAD_VALUE : 0;
}

/* Whether the conversion kernels (compiled for AVX512_BF16) may run: the walk setting allows the gathered
   walks, and the CPU converts float32 to bf16 itself (AVX512-BF16). */
#define AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,bmi,bmi2,popcnt,fma")))

static int has_bf16(void) {
    static int known = -1;
    if (vector_walk < 2 || !has_avx512())
        return 0;
    if (known < 0)
        known = __builtin_cpu_supports("avx512bf16");
    return known;
}

/* Thirty-two float32 sums, the even elements' in `even` and the odd elements' in `odd`, rounded to bf16 by
   round16 and laid out in order. */
AVX512_BF16 static inline __attribute__((always_inline)) __m512i round32(__m512 even, __m512 odd) {
    return _mm512_or_si512(round16(_mm512_castps_si512(even)), _mm512_slli_epi32(round16(_mm512_castps_si512(odd)), 16));
}

/* sum16 for thirty-two weights, base and d both thirty-two bf16 in order: each lane's even element
   widened by a shift and its odd one by a mask, so no lane is widened by a permute; the sums rounded by
   VCVTNE2PS2BF16 (to nearest even, as round16, one instruction for thirty-two) and put back in order
   (vpermw). The conversion flushes a sum below bf16's normal range to zero, as no cast in torch does: a
   step with a zero among its sums is rounded again by round16 (a weight cancelled to zero, or a tiny one;
   the squared errors and norms of such sums are below float32's range either way). */
AVX512_BF16 static inline __attribute__((always_inline)) __m512i sum32(__m512 alpha, __m512i d, __m512i base, __m512 *err, __m512 *norm,
                                                                      __mmask32 *bad) {
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u), exponent = _mm512_set1_epi16(0x7F80);
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3,
                                           18, 2, 17, 1, 16, 0);
    const __m512 d_even = _mm512_castsi512_ps(_mm512_slli_epi32(d, 16)), d_odd = _mm512_castsi512_ps(_mm512_and_si512(d, high));
    const __m512 even = _mm512_fmadd_ps(alpha, d_even, _mm512_castsi512_ps(_mm512_slli_epi32(base, 16)));
    const __m512 odd = _mm512_fmadd_ps(alpha, d_odd, _mm512_castsi512_ps(_mm512_and_si512(base, high)));
    __m512i y = _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(odd, even)); /* converted: evens low, odds high */
    const __m512 e_even = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_slli_epi32(y, 16)), even);
    const __m512 e_odd = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_and_si512(y, high)), odd);
    *err = _mm512_fmadd_ps(e_odd, e_odd, _mm512_fmadd_ps(e_even, e_even, *err));
    *norm = _mm512_fmadd_ps(d_odd, d_odd, _mm512_fmadd_ps(d_even, d_even, *norm));
    *bad |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(y, exponent), exponent);
    if (__builtin_expect(_mm512_testn_epi16_mask(y, _mm512_set1_epi16(0x7FFF)) != 0, 0))
        y = round32(even, odd);
    return y;
}

/* dense_avx512 with sum32: thirty-two weights a step, the same sums bit for bit. */
AVX512_BF16 static int dense_bf16(uint16_t *out, const uint16_t *source, const uint16_t *delta, int64_t n, float alpha, float *sums) {
    const __m512 a = _mm512_set1_ps(alpha);
    __m512 err = _mm512_setzero_ps(), norm = _mm512_setzero_ps();
    __mmask32 bad = 0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512i y = sum32(a, _mm512_loadu_si512(delta + i), _mm512_loadu_si512(source + i), &err, &norm, &bad);
        store32(out + i, y);
        _mm_prefetch((const char *)(source + i + SPAN), _MM_HINT_T0);
        _mm_prefetch((const char *)(delta + i + SPAN), _MM_HINT_T0);
    }
    return dense_finish(out, source, delta, n, i, alpha, err, norm, bad != 0, sums);
}

/* `dense` for a bf16 delta, sixteen weights a step with the same fused sum and rounding, bit for bit; the
   sums stored past the caches where aligned (see scatter_sums), the next rows fetched ahead. */
AVX512 static int dense_avx512(uint16_t *out, const uint16_t *source, const uint16_t *delta, int64_t n, float alpha, float *sums) {
    const __m512 a = _mm512_set1_ps(alpha);
    __m512 err = _mm512_setzero_ps(), norm = _mm512_setzero_ps();
    __mmask16 bad = 0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(delta + i))), 16));
        const __m256i y = sum16(a, v, _mm256_loadu_si256((const __m256i *)(source + i)), 0xFFFF, &err, &norm, &bad);
        store16(out + i, y);
        _mm_prefetch((const char *)(source + i + SPAN), _MM_HINT_T0);
        _mm_prefetch((const char *)(delta + i + SPAN), _MM_HINT_T0);
    }
    return dense_finish(out, source, delta, n, i, alpha, err, norm, bad != 0, sums);
}

/* walk_mask sixteen elements at a time: the group's codes looked up together (a gather from the codebook),
   expanded to their positions (vexpandps) and added in vector lanes, with the same fused sum and rounding
   as add_at, bit for bit. A group with an escaped code, a code outside the codebook, too few codes left or
   (scaled) a row that starts inside it in a matrix of fewer than 16 columns goes through `group`. */
/* Each code's value, into `values` (n_codes floats): the codebook's, or the next escaped value for the
   escape code; 0, or the block's status. */
static int look_up(struct walk *w, float *values) {
    const uint8_t *codes = w->codes;
    const float *table = w->table;
    const int64_t n_table = w->n_table;
    for (int64_t i = 0; i < w->n_codes; i++) {
        uint8_t c = codes[i];
        if (__builtin_expect(c < n_table, 1)) {
            values[i] = table[c];
        } else if (c == 255 && w->e < w->n_escaped) {
            values[i] = w->escaped[w->e++];
        } else {
            return c == 255 ? w->bad_code : 3;
        }
    }
    return 0;
}

/* look_up sixteen codes at a time: a gather from the codebook (a permute for one of 16 values or fewer);
   sixteen codes with one outside the codebook (an escape, or a corrupt code) go through look_up's loop. */
AVX512 static int look_up_avx512(struct walk *w, float *values) {
    const uint8_t *codes = w->codes;
    const float *table = w->table;
    const int64_t n_codes = w->n_codes, n_table = w->n_table;
    const int small = n_table <= 16;
    const __m512 few = small ? _mm512_maskz_loadu_ps((__mmask16)((1u << n_table) - 1u), table) : _mm512_setzero_ps();
    const __m128i limit = _mm_set1_epi8((char)(n_table < 255 ? n_table : 255));
    for (int64_t i = 0; i < n_codes; i += 16) {
        int64_t left = n_codes - i;
        __mmask16 lanes = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1u);
        __m128i code = _mm_maskz_loadu_epi8(lanes, codes + i);
        if (n_table < 256 && _mm_mask_cmpge_epu8_mask(lanes, code, limit)) {
            struct walk part = *w;
            part.codes = codes + i;
            part.n_codes = left < 16 ? left : 16;
            int status = look_up(&part, values + i);
            if (status)
                return status;
            w->e = part.e;
            continue;
        }
        __m512i index = _mm512_cvtepu8_epi32(code);
        __m512 v = small ? _mm512_permutexvar_ps(index, few) : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, index, table, 4);
        _mm512_mask_storeu_ps(values + i, lanes, v);
    }
    return 0;
}

/* The arithmetic of a vector step: out = source + alpha * v in the `lanes` from element p0 on, where `m`
   has an entry and v is not zero (the sums, squared rounding errors and |v|^2 of those lanes, into err and
   norm; a sum outside bf16's range into bad), and the source's weight elsewhere when there is a source. */
AVX512 static inline __attribute__((always_inline)) void add16(const struct walk *w, int64_t p0, __mmask16 lanes, __mmask16 m, __m512 v,
                                                              __m512 *err, __m512 *norm, __mmask16 *bad) {
    uint16_t *bits = (uint16_t *)w->target;
    const uint16_t *from = w->source ? w->source : bits;
    const __m256i stored = _mm256_maskz_loadu_epi16(lanes, from + p0);
    if (!m) {
        if (w->source)
            _mm256_mask_storeu_epi16(bits + p0, lanes, stored);
        return;
    }
    const __mmask16 live = _mm512_mask_cmp_ps_mask(m, v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    const __m256i y = sum16(_mm512_set1_ps(w->alpha), v, stored, live, err, norm, bad);
    if (w->source) /* every weight of the step: the sums where the vector adds, the base elsewhere */
        _mm256_mask_storeu_epi16(bits + p0, lanes, _mm256_mask_blend_epi16(live, stored, y));
    else
        _mm256_mask_storeu_epi16(bits + p0, live, y);
}

/* One step of walk_mask_avx512: the sixteen elements from p0 on, their values the next ones of `looked`;
   0, or the block's status. */
AVX512 static inline __attribute__((always_inline)) int step16(struct walk *w, const uint8_t *mask, int64_t n_mask, int64_t n, int64_t p0,
                                                               const float *looked, int64_t *k, __m512 *err, __m512 *norm, __mmask16 *bad,
                                                               const int add, const int scaled) {
    float *values = (float *)w->target;
    uint32_t m;
    int64_t len = 16;
    __mmask16 lanes = 0xFFFF;
    if (__builtin_expect(p0 + 16 <= n, 1)) {
        uint16_t m16;
        memcpy(&m16, mask + (p0 >> 3), sizeof m16);
        m = m16;
    } else {
        m = bits16(mask, n_mask, p0);
        len = n - p0;
        lanes = (__mmask16)((1u << len) - 1u);
        if (m >> len)
            return 1;
    }
    int count = __builtin_popcount(m);
    if (*k + count > w->n_codes)
        return 2;
    __m512 v = _mm512_maskz_expandloadu_ps((__mmask16)m, looked + *k);
    *k += count;
    if (scaled && m) {
        while (p0 >= w->row_end) {
            w->row++;
            w->row_end += w->cols;
        }
        if (w->row_end - p0 >= len) {
            v = _mm512_mul_ps(v, _mm512_set1_ps(w->scales[w->row]));
        } else { /* rows start inside the step: each lane's own row */
            float scale[16];
            int64_t row = w->row, row_end = w->row_end;
            for (int i = 0; i < len; i++) {
                while (p0 + i >= row_end) {
                    row++;
                    row_end += w->cols;
                }
                scale[i] = w->scales[row];
            }
            for (int i = len; i < 16; i++)
                scale[i] = 0.0f;
            v = _mm512_mul_ps(v, _mm512_loadu_ps(scale));
        }
    }
    if (!add) {
        _mm512_mask_storeu_ps(values + p0, lanes, v);
        return 0;
    }
    add16(w, p0, lanes, (__mmask16)m, v, err, norm, bad);
    return 0;
}

/* Two steps at a time, each with its own sums, so that neither waits on the other's; from element p_start
   (a multiple of 32) and code k_start on. */
AVX512 static inline __attribute__((always_inline)) int walk_mask_avx512_as(struct walk *w, const uint8_t *mask, int64_t n_mask,
                                                                             int64_t n, const float *looked, const int add, const int scaled, int64_t p_start, int64_t k_start) {
    __m512 err[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, norm[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    __mmask16 bad = 0;
    int64_t k = k_start;
    int status = 0;
    for (int64_t p0 = p_start; p0 < n && !status; p0 += 32) {
        status = step16(w, mask, n_mask, n, p0, looked, &k, &err[0], &norm[0], &bad, add, scaled);
        if (!status && p0 + 16 < n)
            status = step16(w, mask, n_mask, n, p0 + 16, looked, &k, &err[1], &norm[1], &bad, add, scaled);
    }
    if (status)
        return status;
    w->k = k;
    w->err += _mm512_reduce_add_ps(_mm512_add_ps(err[0], err[1]));
    w->norm += _mm512_reduce_add_ps(_mm512_add_ps(norm[0], norm[1]));
    w->bad |= bad != 0;
    return 0;
}

/* walk_mask_avx512's loop for a decode without scales: thirty-two elements a step, each half's values
   expanded from the buffer to their positions and stored, zeros between. Stops before the last partial
   step or where the codes run out (the general walk then goes on, and names any problem); returns the
   first element it left, and in *k_out the codes it used. */
AVX512 static int64_t decode_mask_fast(const uint8_t *mask, int64_t n, const float *looked, int64_t n_codes, float *out, int64_t *k_out) {
    int64_t k = 0, p0 = 0;
    for (; p0 + 32 <= n; p0 += 32) {
        uint32_t m;
        memcpy(&m, mask + (p0 >> 3), sizeof m);
        const int64_t c0 = __builtin_popcount(m & 0xFFFFu), c = __builtin_popcount(m);
        if (__builtin_expect(k + c > n_codes, 0))
            break;
        _mm512_storeu_ps(out + p0, _mm512_maskz_expandloadu_ps((__mmask16)m, looked + k));
        _mm512_storeu_ps(out + p0 + 16, _mm512_maskz_expandloadu_ps((__mmask16)(m >> 16), looked + k + c0));
        k += c;
    }
    *k_out = k;
    return p0;
}

/* walk_mask_avx512's buffer of looked-up values, kept by each thread from block to block up to KEPT_BYTES:
   a buffer allocated per block came back as fresh pages, faulted in again on every block. */
#define KEPT_BYTES ((size_t)16 << 20)
static __thread float *kept;
static __thread size_t kept_bytes;

static float *values_buffer(size_t bytes) {
    if (bytes <= kept_bytes)
        return kept;
    if (bytes > KEPT_BYTES)
        return malloc(bytes);
    float *grown = malloc(bytes);
    if (grown) {
        free(kept);
        kept = grown;
        kept_bytes = bytes;
    }
    return grown;
}

#define AVX512_BYTES __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vbmi2,bmi,bmi2,popcnt,fma")))

/* Whether the byte walk can add this block: bf16 values (every codebook and escaped value a bf16, as a
   bf16 vector's are), no scales, at most 255 codebook values. */
static int bf16_values(const struct walk *w) {
    if (!w->add || w->scales || w->n_table > 255)
        return 0;
    for (int64_t i = 0; i < w->n_table; i++) {
        uint32_t u;
        memcpy(&u, w->table + i, sizeof u);
        if (u & 0xFFFFu)
            return 0;
    }
    for (int64_t i = 0; i < w->n_escaped; i++) {
        uint32_t u;
        memcpy(&u, w->escaped + i, sizeof u);
        if (u & 0xFFFFu)
            return 0;
    }
    return 1;
}

/* The arithmetic of add16 on sixteen entries gathered together: sums[i] = bf16(sums[i] + alpha * v[i]) (bf16
   bits) in the `lanes` where v is not zero. */
AVX512 static inline __attribute__((always_inline)) void add_gathered16(uint16_t *sums, __m512 v, __mmask16 lanes, __m512 alpha, __m512 *err,
                                                                       __m512 *norm, __mmask16 *bad) {
    const __m256i stored = _mm256_loadu_si256((const __m256i *)sums);
    const __mmask16 live = _mm512_mask_cmp_ps_mask(lanes, v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    _mm256_storeu_si256((__m256i *)sums, _mm256_mask_blend_epi16(live, stored, sum16(alpha, v, stored, live, err, norm, bad)));
}

/* The base weights at a round's entries, elements [p0, end), gathered into `sums` (vpcompressw); the next
   round's base rows fetched meanwhile. */
AVX512_BYTES static inline __attribute__((always_inline)) void gather_base(uint16_t *sums, const uint16_t *from, const uint8_t *mask, int64_t p0,
                                                                          int64_t end, int64_t ahead) {
    int64_t c = 0;
    for (int64_t p = p0; p < end; p += 32) {
        uint32_t m;
        memcpy(&m, mask + (p >> 3), sizeof m);
        _mm512_storeu_si512(sums + c, _mm512_maskz_compress_epi16(m, _mm512_loadu_si512(from + p)));
        c += __builtin_popcount(m);
        _mm_prefetch((const char *)(from + p + ahead), _MM_HINT_T0);
    }
}

/* Elements [p0, end) of `out`: the base weights with a round's sums put back at its entries (vpexpandw);
   with `streaming` (64-byte aligned rows), stored past the caches: the merged weights are not read again
   soon, and the stores need not read the lines they fill first. */
AVX512_BYTES static inline __attribute__((always_inline)) void scatter_sums(uint16_t *out, const uint16_t *from, const uint16_t *sums,
                                                                           const uint8_t *mask, int64_t p0, int64_t end, int streaming) {
    int64_t c = 0;
    for (int64_t p = p0; p < end; p += 32) {
        uint32_t m;
        memcpy(&m, mask + (p >> 3), sizeof m);
        const __m512i merged = _mm512_mask_expand_epi16(_mm512_loadu_si512(from + p), m, _mm512_loadu_si512(sums + c));
        if (streaming)
            _mm512_stream_si512((__m512i *)(out + p), merged);
        else
            _mm512_storeu_si512(out + p, merged);
        c += __builtin_popcount(m);
    }
}

/* Entries of the round [p0, end): the sum of popcounts of its mask. */
static inline int64_t entries_in(const uint8_t *mask, int64_t p0, int64_t end) {
    int64_t count = 0;
    for (int64_t p = p0; p < end; p += 64) {
        uint64_t m;
        memcpy(&m, mask + (p >> 3), sizeof m);
        count += __builtin_popcountll(m);
    }
    return count;
}

/* The scalar walk from element p0 (a multiple of 16) to the block's end, after a gathered walk: it adds in
   place, so the source's weights are copied first; 0, or the block's status. */
static int finish_scalar(struct walk *w, const uint8_t *mask, int64_t n_mask, int64_t n, int64_t p0) {
    if (p0 >= n)
        return 0;
    if (w->source)
        memcpy((uint16_t *)w->target + p0, w->source + p0, (size_t)(n - p0) * sizeof(uint16_t));
    return walk_mask(w, mask, n_mask, n, p0);
}

/* A gathered walk's sums in vector lanes: squared rounding errors, |v|^2 (two of each, for alternate
   steps), and the lanes whose sum left bf16's range. */
struct tally {
    __m512 err[2], norm[2];
    __mmask16 bad;
};

/* The end of a gathered walk that stopped at element p0 with k codes and e escaped values used: its
   streaming stores fenced, its sums into the walk's, and the scalar walk from p0 on. */
AVX512 static int finish_gathered(struct walk *w, const uint8_t *mask, int64_t n_mask, int64_t n, int64_t p0, int64_t k, int64_t e,
                                  const struct tally *t, int streaming) {
    if (streaming)
        _mm_sfence();
    w->k = k;
    w->e = e;
    w->err += _mm512_reduce_add_ps(_mm512_add_ps(t->err[0], t->err[1]));
    w->norm += _mm512_reduce_add_ps(_mm512_add_ps(t->norm[0], t->norm[1]));
    w->bad |= t->bad != 0;
    return finish_scalar(w, mask, n_mask, n, p0);
}

/* The next round of a gathered walk from element p0, code k on: its end (*end, after the last whole step of
   sixty-four) and its entries; -1 where no whole step is left or the entries outrun the codes (the scalar
   walk then goes on, and names the problem). */
static inline int64_t next_round(const struct walk *w, const uint8_t *mask, int64_t n, int64_t p0, int64_t k, int64_t *end) {
    if (n - p0 < 64)
        return -1;
    *end = n - p0 >= SPAN ? p0 + SPAN : p0 + ((n - p0) & ~(int64_t)63);
    const int64_t count = entries_in(mask, p0, *end);
    return k + count > w->n_codes ? -1 : count;
}

/* walk_mask for the fused add of bf16 values, with no pass before it. Round by round over SPAN elements:
   the round's codes looked up sixty-four at a time as the low and high bytes of their bf16 values
   (vpermt2b over the codebook's two byte planes, 256 bytes each), escaped values expanded into the escape
   codes' places; the base weights at the entries gathered (vpcompressw); the arithmetic of add16 on
   sixteen entries a step, so no lane computes a weight the vector leaves alone; the sums put back among
   the base weights (vpexpandw) and stored. A round with a code outside the codebook, more escape codes
   than escaped values left or more entries than codes, and the last elements after the whole steps of
   sixty-four, go to the scalar walk, which names any problem. `bf16_values` must hold. */
AVX512_BYTES static int walk_mask_bytes(struct walk *w, const uint8_t *mask, int64_t n_mask, int64_t n) {
    /* Entry i of a lookup sits at byte order[i], so that interleaving the low and high bytes
       (vpunpcklbw / vpunpckhbw, within 128-bit lanes) lays the sixty-four bf16 values out in order. */
    static const uint8_t order[64] = {0,  1,  2,  3,  4,  5,  6,  7,  32, 33, 34, 35, 36, 37, 38, 39, 8,  9,  10, 11, 12, 13,
                                      14, 15, 40, 41, 42, 43, 44, 45, 46, 47, 16, 17, 18, 19, 20, 21, 22, 23, 48, 49, 50, 51,
                                      52, 53, 54, 55, 24, 25, 26, 27, 28, 29, 30, 31, 56, 57, 58, 59, 60, 61, 62, 63};
    uint8_t low[256] = {0}, high[256] = {0};
    for (int64_t i = 0; i < w->n_table; i++) {
        uint32_t u;
        memcpy(&u, w->table + i, sizeof u);
        low[i] = (uint8_t)(u >> 16);
        high[i] = (uint8_t)(u >> 24);
    }
    uint16_t *escaped = (uint16_t *)values_buffer((size_t)(w->n_escaped + 1) * sizeof(float));
    if (!escaped)
        return NO_MEMORY;
    for (int64_t i = 0; i < w->n_escaped; i++) {
        uint32_t u;
        memcpy(&u, w->escaped + i, sizeof u);
        escaped[i] = (uint16_t)(u >> 16);
    }
    const __m512i low0 = _mm512_loadu_si512(low), low1 = _mm512_loadu_si512(low + 64), low2 = _mm512_loadu_si512(low + 128),
                  low3 = _mm512_loadu_si512(low + 192), high0 = _mm512_loadu_si512(high), high1 = _mm512_loadu_si512(high + 64),
                  high2 = _mm512_loadu_si512(high + 128), high3 = _mm512_loadu_si512(high + 192);
    const __m512i laid = _mm512_loadu_si512(order), limit = _mm512_set1_epi8((char)w->n_table), escape = _mm512_set1_epi8((char)255);
    const __m512 alpha = _mm512_set1_ps(w->alpha);
    const int can_escape = w->bad_code == 4;
    uint16_t *out = (uint16_t *)w->target;
    const uint16_t *from = w->source ? w->source : out;
    const int streaming = ((uintptr_t)out & 63) == 0;
    uint16_t deltas[SPAN + 64], sums[SPAN + 64]; /* the round's entries: their values, their bases then sums */
    struct tally t = {{_mm512_setzero_ps(), _mm512_setzero_ps()}, {_mm512_setzero_ps(), _mm512_setzero_ps()}, 0};
    int64_t k = 0, e = 0, p0 = 0, end, count;
    while ((count = next_round(w, mask, n, p0, k, &end)) >= 0) {
        int64_t used = 0; /* escaped values the round takes */
        int corrupt = 0;
        for (int64_t i = 0; i < count && !corrupt; i += 64) {
            const __mmask64 lanes = count - i >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (count - i)) - 1;
            const __m512i code = _mm512_maskz_loadu_epi8(lanes, w->codes + k + i);
            const __mmask64 escapes = _mm512_mask_cmpge_epu8_mask(lanes, code, limit); /* past the codebook: escape codes, or corrupt */
            if (escapes && (!can_escape || _mm512_mask_cmpneq_epi8_mask(escapes, code, escape) ||
                            e + used + __builtin_popcountll(escapes) > w->n_escaped)) {
                corrupt = 1;
                break;
            }
            const __m512i at = _mm512_permutexvar_epi8(laid, code);
            const __mmask64 upper = _mm512_movepi8_mask(at);
            const __m512i lo = _mm512_mask_blend_epi8(upper, _mm512_permutex2var_epi8(low0, at, low1), _mm512_permutex2var_epi8(low2, at, low3));
            const __m512i hi = _mm512_mask_blend_epi8(upper, _mm512_permutex2var_epi8(high0, at, high1), _mm512_permutex2var_epi8(high2, at, high3));
            __m512i first = _mm512_unpacklo_epi8(lo, hi), second = _mm512_unpackhi_epi8(lo, hi);
            if (escapes) {
                first = _mm512_mask_expandloadu_epi16(first, (__mmask32)escapes, escaped + e + used);
                used += __builtin_popcount((uint32_t)escapes);
                second = _mm512_mask_expandloadu_epi16(second, (__mmask32)(escapes >> 32), escaped + e + used);
                used += __builtin_popcount((uint32_t)(escapes >> 32));
            }
            _mm512_storeu_si512(deltas + i, first);
            _mm512_storeu_si512(deltas + i + 32, second);
        }
        if (corrupt)
            break;
        gather_base(sums, from, mask, p0, end, SPAN);
        for (int64_t i = 0; i < count; i += 32) {
            const int64_t left = count - i;
            const __m512i words = _mm512_loadu_si512(deltas + i);
            add_gathered16(sums + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(words)), 16)),
                           left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1u), alpha, &t.err[0], &t.norm[0], &t.bad);
            if (left > 16)
                add_gathered16(sums + i + 16, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(words, 1)), 16)),
                               left >= 32 ? 0xFFFF : (__mmask16)((1u << (left - 16)) - 1u), alpha, &t.err[1], &t.norm[1], &t.bad);
        }
        scatter_sums(out, from, sums, mask, p0, end, streaming);
        k += count;
        e += used;
        p0 = end;
    }
    if (escaped != (uint16_t *)kept)
        free(escaped);
    return finish_gathered(w, mask, n_mask, n, p0, k, e, &t, streaming);
}

/* walk_mask_bytes for any other fused add: a codebook of float32 values, escaped float32 values, or row
   scales (`quantized`). Each round's codes are looked up sixteen at a time (a permute from a codebook of
   sixteen values or fewer, else a gather), escaped values expanded into the escape codes' places; with
   scales, each entry's row scale is laid beside its value (one broadcast where thirty-two elements lie in
   one row) and multiplies it, as `next_value` does; then as walk_mask_bytes. */
AVX512_BYTES static int walk_mask_values(struct walk *w, const uint8_t *mask, int64_t n_mask, int64_t n) {
    const int small = w->n_table <= 16, bounded = w->n_table < 256;
    const __m512 few = small ? _mm512_maskz_loadu_ps((__mmask16)((1u << w->n_table) - 1u), w->table) : _mm512_setzero_ps();
    const __m128i limit = _mm_set1_epi8((char)(bounded ? w->n_table : 0)), escape = _mm_set1_epi8((char)255);
    const __m512 alpha = _mm512_set1_ps(w->alpha);
    const int can_escape = w->bad_code == 4;
    uint16_t *out = (uint16_t *)w->target;
    const uint16_t *from = w->source ? w->source : out;
    const int streaming = ((uintptr_t)out & 63) == 0;
    float values[SPAN + 16], scale[SPAN + 64]; /* the round's entries: their values and row scales */
    uint16_t sums[SPAN + 64];
    struct tally t = {{_mm512_setzero_ps(), _mm512_setzero_ps()}, {_mm512_setzero_ps(), _mm512_setzero_ps()}, 0};
    int64_t k = 0, e = 0, p0 = 0, end, count, row = 0, row_end = w->cols;
    while ((count = next_round(w, mask, n, p0, k, &end)) >= 0) {
        int64_t used = 0; /* escaped values the round takes */
        int corrupt = 0;
        for (int64_t i = 0; i < count; i += 16) {
            const __mmask16 lanes = count - i >= 16 ? 0xFFFF : (__mmask16)((1u << (count - i)) - 1u);
            const __m128i code = _mm_maskz_loadu_epi8(lanes, w->codes + k + i);
            const __mmask16 escapes = bounded ? _mm_mask_cmpge_epu8_mask(lanes, code, limit) : 0; /* escape codes, or corrupt */
            if (escapes && (!can_escape || _mm_mask_cmpneq_epi8_mask(escapes, code, escape) || e + used + __builtin_popcount(escapes) > w->n_escaped)) {
                corrupt = 1;
                break;
            }
            const __m512i index = _mm512_cvtepu8_epi32(code);
            __m512 v = small ? _mm512_permutexvar_ps(index, few)
                             : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), (__mmask16)(lanes & ~escapes), index, w->table, 4);
            if (escapes) {
                v = _mm512_mask_expandloadu_ps(v, escapes, w->escaped + e + used);
                used += __builtin_popcount(escapes);
            }
            _mm512_storeu_ps(values + i, v);
        }
        if (corrupt)
            break;
        if (w->scales) {
            int64_t c = 0;
            for (int64_t p = p0; p < end; p += 32) {
                uint32_t m;
                memcpy(&m, mask + (p >> 3), sizeof m);
                while (p >= row_end) {
                    row++;
                    row_end += w->cols;
                }
                if (p + 32 <= row_end) {
                    const __m512 one = _mm512_set1_ps(w->scales[row]);
                    _mm512_storeu_ps(scale + c, one);
                    _mm512_storeu_ps(scale + c + 16, one);
                } else { /* rows start inside these thirty-two: each element's own row */
                    float lane[32];
                    int64_t r = row, r_end = row_end;
                    for (int j = 0; j < 32; j++) {
                        while (p + j >= r_end) {
                            r++;
                            r_end += w->cols;
                        }
                        lane[j] = w->scales[r];
                    }
                    const int low = __builtin_popcount(m & 0xFFFFu);
                    _mm512_storeu_ps(scale + c, _mm512_maskz_compress_ps((__mmask16)m, _mm512_loadu_ps(lane)));
                    _mm512_storeu_ps(scale + c + low, _mm512_maskz_compress_ps((__mmask16)(m >> 16), _mm512_loadu_ps(lane + 16)));
                }
                c += __builtin_popcount(m);
            }
        }
        gather_base(sums, from, mask, p0, end, SPAN);
        for (int64_t i = 0; i < count; i += 16) {
            __m512 v = _mm512_loadu_ps(values + i);
            if (w->scales)
                v = _mm512_mul_ps(v, _mm512_loadu_ps(scale + i));
            add_gathered16(sums + i, v, count - i >= 16 ? 0xFFFF : (__mmask16)((1u << (count - i)) - 1u), alpha, &t.err[(i >> 4) & 1],
                           &t.norm[(i >> 4) & 1], &t.bad);
        }
        scatter_sums(out, from, sums, mask, p0, end, streaming);
        k += count;
        e += used;
        p0 = end;
    }
    return finish_gathered(w, mask, n_mask, n, p0, k, e, &t, streaming);
}

/* walk_mask in two passes: every code looked up into a buffer, then the bitmask walked sixteen elements
   at a time, each step's values expanded from the buffer to their positions (vexpandps) and added in
   vector lanes with the same fused sum and rounding as add_at, bit for bit. */
AVX512 static int walk_mask_avx512(struct walk *w, const uint8_t *mask, int64_t n_mask, int64_t n) {
    if (w->add && has_gathered()) {
        walked = 2;
        return bf16_values(w) ? walk_mask_bytes(w, mask, n_mask, n) : walk_mask_values(w, mask, n_mask, n);
    }
    walked = 1;
    float *looked = values_buffer((size_t)(w->n_codes + 1) * sizeof(float)); /* + 1: never a request for 0 bytes */
    if (!looked)
        return NO_MEMORY;
    int status = look_up_avx512(w, looked);
    if (!status) {
        int64_t p = 0, k = 0;
        if (!w->add && !w->scales)
            p = decode_mask_fast(mask, n, looked, w->n_codes, (float *)w->target, &k);
        if (w->add)
            status = w->scales ? walk_mask_avx512_as(w, mask, n_mask, n, looked, 1, 1, p, k) : walk_mask_avx512_as(w, mask, n_mask, n, looked, 1, 0, p, k);
        else
            status = w->scales ? walk_mask_avx512_as(w, mask, n_mask, n, looked, 0, 1, p, k) : walk_mask_avx512_as(w, mask, n_mask, n, looked, 0, 0, p, k);
    }
    if (looked != kept)
        free(looked);
    return status;
}

/* rvec_unnibble_codes's whole steps of sixty-four codes: each step's thirty-two bytes widened to a nibble a
   byte, and the long codes' bytes expanded into the places of their 15s (vpexpandb). Stops before the last
   partial step or where the long codes run out; returns the codes it wrote, and in *used the long codes'
   bytes it took. */
AVX512_BYTES static int64_t unnibble_avx512(const uint8_t *nibbles, const uint8_t *longs, int64_t n_longs, uint8_t *out, int64_t n, int64_t *used) {
    const __m512i low = _mm512_set1_epi16(0x000F), high = _mm512_set1_epi16(0x0F00), fifteen = _mm512_set1_epi8(15);
    int64_t i = 0, o = 0;
    for (; i + 64 <= n; i += 64) {
        const __m512i wide = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(nibbles + i / 2)));
        const __m512i codes = _mm512_or_si512(_mm512_and_si512(wide, low), _mm512_and_si512(_mm512_slli_epi16(wide, 4), high));
        const __mmask64 m = _mm512_cmpeq_epi8_mask(codes, fifteen);
        const int64_t count = __builtin_popcountll(m);
        if (o + count > n_longs)
            break;
        _mm512_storeu_si512(out + i, m ? _mm512_mask_expandloadu_epi8(codes, m, longs + o) : codes);
        o += count;
    }
    *used = o;
    return i;
}

/* rvec_unpack_codes's whole steps of sixty-four codes: each output quadword's `slot` source bytes laid in
   its low bytes (vpermb), each code's field picked out by a bit offset (vpmultishiftqb). Returns the codes
   it wrote. */
AVX512_BYTES static int64_t unpack_avx512(const uint8_t *packed, int slot, uint8_t *out, int64_t n) {
    uint8_t lay[64], offsets[64];
    for (int k = 0; k < 64; k++) {
        const int t = k % 8;
        lay[k] = (uint8_t)(slot * (k / 8) + (t < slot ? t : slot - 1));
        offsets[k] = (uint8_t)(slot * t);
    }
    const __m512i laid = _mm512_loadu_si512(lay), at = _mm512_loadu_si512(offsets), field = _mm512_set1_epi8((char)((1 << slot) - 1));
    const __mmask64 bytes = ((__mmask64)1 << (8 * slot)) - 1;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m512i source = _mm512_permutexvar_epi8(laid, _mm512_maskz_loadu_epi8(bytes, packed + i / (8 / slot)));
        _mm512_storeu_si512(out + i, _mm512_and_si512(_mm512_multishift_epi64_epi8(at, source), field));
    }
    return i;
}

/* The low-rank add with AVX512-BF16 where there is no AMX: out = bf16(source + alpha * bf16(B·A)) as
   lowrank_amx computes it, B rows × rank bf16 and A in the same pair layout (rank even, cols a multiple of
   16). A tile of `R` rows by 16·`N` columns (six by sixty-four) keeps its float32 sums in R·N registers:
   each pair of ranks is one VDPBF16PS per register (B's pair broadcast, A's sixteen column pairs loaded
   once for the tile's rows), the ranks in order as torch's bf16 matmul sums them (oneDNN's avx512_core_bf16
   kernel, the same instruction), so the bits are the same; the sums are rounded once to bf16 and added as
   `dense` adds a bf16 delta, in two chains of error sums, so the product is never stored. Rows go in blocks
   of LOWRANK_BLOCK, column panel by panel, so a panel of A and the block's rows of B stay in the first-level
   cache; each tile fetches the base rows of the next tile while it multiplies. */
#define LOWRANK_AHEAD 6
#define LOWRANK_BLOCK 96
AVX512_BF16 static inline __attribute__((always_inline)) void lowrank_tile(const int R, const int N, uint16_t *out, const uint16_t *source,
                                                                          const uint16_t *b, const uint16_t *a, int64_t cols, int64_t rank,
                                                                          __m512 alpha16, __m512 *err, __m512 *norm, __mmask16 *bad,
                                                                          __mmask32 *bad32) {
    __m512 acc[6][4];
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++)
            acc[r][n] = _mm512_setzero_ps();
    const int64_t pair_stride = cols * 2;
    for (int r = 0; r < R; r++) /* the next tile's base rows, from memory while this one multiplies */
        for (int n = 0; n < N; n += 2)
            _mm_prefetch((const char *)(source + (LOWRANK_AHEAD + r) * cols + n * 16), _MM_HINT_T0);
    for (int64_t p = 0; p < rank / 2; p++) {
        __m512bh av[4];
        for (int n = 0; n < N; n++)
            av[n] = (__m512bh)_mm512_loadu_si512(a + p * pair_stride + n * 32);
        for (int r = 0; r < R; r++) {
            int32_t pair;
            memcpy(&pair, b + r * rank + 2 * p, sizeof pair);
            const __m512bh bv = (__m512bh)_mm512_set1_epi32(pair);
            for (int n = 0; n < N; n++)
                acc[r][n] = _mm512_dpbf16_ps(acc[r][n], bv, av[n]);
        }
    }
    __m512 errs[2] = {*err, _mm512_setzero_ps()}, norms[2] = {*norm, _mm512_setzero_ps()}; /* two chains of sums */
    for (int r = 0; r < R; r++) {
        uint16_t *to = out + r * cols;
        const uint16_t *from = source + r * cols;
        int n = 0;
        for (; n + 2 <= N; n += 2) {
            const __m512i d = (__m512i)_mm512_cvtne2ps_pbh(acc[r][n + 1], acc[r][n]);
            store32(to + n * 16, sum32(alpha16, d, _mm512_loadu_si512(from + n * 16), &errs[(n / 2) & 1], &norms[(n / 2) & 1], bad32));
        }
        if (n < N) {
            const __m512 rounded = _mm512_castsi512_ps(_mm512_slli_epi32(round16(_mm512_castps_si512(acc[r][n])), 16));
            store16(to + n * 16, sum16(alpha16, rounded, _mm256_loadu_si256((const __m256i *)(from + n * 16)), 0xFFFF, &errs[1], &norms[1], bad));
        }
    }
    *err = _mm512_add_ps(errs[0], errs[1]);
    *norm = _mm512_add_ps(norms[0], norms[1]);
}

/* One panel of 16·N columns over rows [r0, r1), six rows a tile and the last rows a tile of their own. */
#define LOWRANK_PANEL(N)                                                                                                                  \
    do {                                                                                                                                  \
        int64_t r = r0;                                                                                                                   \
        for (; r + 6 <= r1; r += 6)                                                                                                       \
            lowrank_tile(6, N, out + r * cols + c0, source + r * cols + c0, b + r * rank, a + c0 * 2, cols, rank, alpha16, &err, &norm,  \
                         &bad, &bad32);                                                                                                   \
        switch (r1 - r) {                                                                                                                 \
        case 5: lowrank_tile(5, N, out + r * cols + c0, source + r * cols + c0, b + r * rank, a + c0 * 2, cols, rank, alpha16, &err, &norm, &bad, &bad32); break; \
        case 4: lowrank_tile(4, N, out + r * cols + c0, source + r * cols + c0, b + r * rank, a + c0 * 2, cols, rank, alpha16, &err, &norm, &bad, &bad32); break; \
        case 3: lowrank_tile(3, N, out + r * cols + c0, source + r * cols + c0, b + r * rank, a + c0 * 2, cols, rank, alpha16, &err, &norm, &bad, &bad32); break; \
        case 2: lowrank_tile(2, N, out + r * cols + c0, source + r * cols + c0, b + r * rank, a + c0 * 2, cols, rank, alpha16, &err, &norm, &bad, &bad32); break; \
        case 1: lowrank_tile(1, N, out + r * cols + c0, source + r * cols + c0, b + r * rank, a + c0 * 2, cols, rank, alpha16, &err, &norm, &bad, &bad32); break; \
        }                                                                                                                                 \
    } while (0)

AVX512_BF16 static int lowrank_bf16(uint16_t *out, const uint16_t *source, const uint16_t *b, const uint16_t *a, int64_t rows, int64_t cols,
                                    int64_t rank, float alpha, float *sums) {
    const __m512 alpha16 = _mm512_set1_ps(alpha);
    __m512 err = _mm512_setzero_ps(), norm = _mm512_setzero_ps();
    __mmask16 bad = 0;
    __mmask32 bad32 = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += LOWRANK_BLOCK) {
        const int64_t r1 = rows - r0 < LOWRANK_BLOCK ? rows : r0 + LOWRANK_BLOCK;
        int64_t c0 = 0;
        for (; c0 + 64 <= cols; c0 += 64)
            LOWRANK_PANEL(4);
        switch ((cols - c0) / 16) {
        case 3: LOWRANK_PANEL(3); break;
        case 2: LOWRANK_PANEL(2); break;
        case 1: LOWRANK_PANEL(1); break;
        }
    }
    _mm_sfence();
    sums[0] = _mm512_reduce_add_ps(err);
    sums[1] = _mm512_reduce_add_ps(norm) * alpha * alpha;
    return bad || bad32 ? BAD_VALUE : 0;
}

#ifdef AMX_KERNELS
/* The low-rank add on AMX: out = bf16(source + alpha * bf16(B·A)) for `rows` rows of `cols` weights, B the
   rows' factor (rows × rank bf16), A the other in AMX's pair layout (rank / 2 rows of cols pairs: A[2k][n],
   A[2k + 1][n]). Sixteen rows and sixty-four columns a step: the product's float32 sums in four tiles
   (TDPBF16PS, thirty-two ranks a call), stored to a buffer that stays in the first-level cache (stored
   farther, tile stores cost as much as the products), rounded once to bf16 as a bf16 matmul rounds them,
   then added as `dense` adds a bf16 delta. rank a multiple of 32, cols of 16. TDPBF16PS flushes sums below
   float32's normal range to zero, so converting them to bf16 (which would flush them too) changes none. */
#define AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,bmi,bmi2,popcnt,fma,amx-tile,amx-bf16")))

struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes[16];
    uint8_t rows[16];
};

/* Whether AMX's bf16 tiles may be used: the CPU has them, the walk setting allows vector walks, and Linux
   lets this process use the tile data state. */
static int has_amx(void) {
    static int known = -1;
    if (vector_walk < 1 || !has_avx512())
        return 0;
    if (known < 0) {
        known = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
                syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
    }
    return known;
}

AMX static int lowrank_amx(uint16_t *out, const uint16_t *source, const uint16_t *b, const uint16_t *a, int64_t rows, int64_t cols,
                           int64_t rank, float alpha, float *sums) {
    float sum[16 * 64] __attribute__((aligned(64))); /* a step's float32 sums, row by row: stored and read in the first-level cache */
    struct tile_config config = {0};
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.rows[t] = 16;
        config.bytes[t] = 64;
    }
    _tile_loadconfig(&config);
    const __m512 alpha16 = _mm512_set1_ps(alpha);
    const int convert = has_bf16();
    __m512 err = _mm512_setzero_ps(), norm = _mm512_setzero_ps();
    __mmask16 bad = 0;
    __mmask32 bad32 = 0;
    uint16_t padded[16 * 256]; /* the last rows' factor, zeros below them (rank at most 256 here) */
    const int64_t pair_stride = cols * 2 * (int64_t)sizeof(uint16_t);
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        const int64_t live = rows - r0 < 16 ? rows - r0 : 16;
        const uint16_t *brows = b + r0 * rank;
        if (live < 16) {
            memset(padded, 0, sizeof padded);
            memcpy(padded, brows, (size_t)(live * rank) * sizeof(uint16_t));
            brows = padded;
        }
        for (int64_t c0 = 0; c0 < cols; c0 += 64) {
            const int64_t width = cols - c0 >= 64 ? 64 : cols - c0;
            const int tiles = (int)(width / 16);
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t k = 0; k < rank; k += 32) {
                _tile_loadd(4, brows + k, rank * sizeof(uint16_t));
                const uint16_t *pairs = a + (k / 2) * cols * 2 + c0 * 2;
                _tile_loadd(6, pairs, pair_stride);
                _tile_dpbf16ps(0, 4, 6);
                if (tiles > 1) {
                    _tile_loadd(7, pairs + 32, pair_stride);
                    _tile_dpbf16ps(1, 4, 7);
                }
                if (tiles > 2) {
                    _tile_loadd(6, pairs + 64, pair_stride);
                    _tile_dpbf16ps(2, 4, 6);
                }
                if (tiles > 3) {
                    _tile_loadd(7, pairs + 96, pair_stride);
                    _tile_dpbf16ps(3, 4, 7);
                }
            }
            _tile_stored(0, sum, 64 * sizeof(float));
            if (tiles > 1)
                _tile_stored(1, sum + 16, 64 * sizeof(float));
            if (tiles > 2)
                _tile_stored(2, sum + 32, 64 * sizeof(float));
            if (tiles > 3)
                _tile_stored(3, sum + 48, 64 * sizeof(float));
            /* the step's weights row by row, as `dense` adds a bf16 delta: each sum rounded to bf16 (to nearest
               even, as a bf16 matmul rounds it), widened and added, thirty-two at a time by sum32 where the CPU
               converts; the next sixteen rows' weights in these columns fetched meanwhile */
            for (int64_t r = 0; r < live; r++) {
                uint16_t *to = out + (r0 + r) * cols + c0;
                const uint16_t *from = source + (r0 + r) * cols + c0;
                const float *row = sum + r * 64;
                int64_t i = 0;
                for (; convert && i + 32 <= width; i += 32) {
                    const __m512i d = (__m512i)_mm512_cvtne2ps_pbh(_mm512_load_ps(row + i + 16), _mm512_load_ps(row + i));
                    const __m512i y = sum32(alpha16, d, _mm512_loadu_si512(from + i), &err, &norm, &bad32);
                    store32(to + i, y);
                    _mm_prefetch((const char *)(from + i + 16 * cols), _MM_HINT_T0);
                }
                for (; i < width; i += 16) {
                    const __m512 rounded = _mm512_castsi512_ps(_mm512_slli_epi32(round16(_mm512_castps_si512(_mm512_load_ps(row + i))), 16));
                    const __m256i y = sum16(alpha16, rounded, _mm256_loadu_si256((const __m256i *)(from + i)), 0xFFFF, &err, &norm, &bad);
                    store16(to + i, y);
                    _mm_prefetch((const char *)(from + i + 16 * cols), _MM_HINT_T0);
                }
            }
        }
    }
    _tile_release();
    _mm_sfence();
    sums[0] = _mm512_reduce_add_ps(err);
    sums[1] = _mm512_reduce_add_ps(norm) * alpha * alpha;
    return bad || bad32 ? BAD_VALUE : 0;
}

#endif

#endif

static inline __attribute__((always_inline)) int coded(
    const uint8_t *positions, int64_t n_positions, int bitmask, const uint8_t *codes, int64_t n_codes, const float *table,
    int64_t n_table, const float *escaped, int64_t n_escaped, int has_escaped, const float *scales, int64_t n_scales, int64_t cols,
    void *target, const uint16_t *source, int64_t n, float alpha, float *sums, const int add) {
    struct walk w = {codes, n_codes, 0, table, n_table, escaped, n_escaped, 0, has_escaped ? 4 : 3,
                     n_scales > 0 ? scales : NULL, cols, 0, cols, target, source != target ? source : NULL, alpha, 0.0f, 0.0f, add, 0};
    int status;
    sums[0] = 0.0f;
    sums[1] = 0.0f;
    if ((w.scales && n_scales * cols != n) || (bitmask && n_positions != (n + 7) / 8))
        return 7;
    if (bitmask) {
#ifdef AVX512
        if (has_avx512())
            status = walk_mask_avx512(&w, positions, n_positions, n);
        else
#endif
        {
            if (w.source) /* the scalar walks add in place */
                memcpy(target, w.source, (size_t)n * sizeof(uint16_t));
            if (!add)
                memset(target, 0, (size_t)n * sizeof(float));
            walked = 0;
            status = walk_mask(&w, positions, n_positions, n, 0);
        }
    } else if (n_positions == 0 && n_codes > 0 && !w.scales) { /* a code for every element */
        if (w.source)
            memcpy(target, w.source, (size_t)n * sizeof(uint16_t));
        status = walk_every(&w, n);
    } else {
        if (w.source)
            memcpy(target, w.source, (size_t)n * sizeof(uint16_t));
        if (!add)
            memset(target, 0, (size_t)n * sizeof(float));
        status = walk_gaps(&w, positions, n_positions, n);
    }
    if (status)
        return status;
    if (w.k != n_codes)
        return 5;
    if (w.e != n_escaped)
        return 6;
    sums[0] = w.err;
    sums[1] = w.norm * alpha * alpha;
    return w.bad ? BAD_VALUE : 0;
}

CLONES int rvec_coded_add(const uint8_t *positions, int64_t n_positions, int bitmask, const uint8_t *codes, int64_t n_codes,
                          const float *table, int64_t n_table, const float *escaped, int64_t n_escaped, int has_escaped,
                          const float *scales, int64_t n_scales, int64_t cols, uint16_t *out, const uint16_t *source, int64_t n,
                          float alpha, float *sums) {
    return coded(positions, n_positions, bitmask, codes, n_codes, table, n_table, escaped, n_escaped, has_escaped, scales, n_scales,
                 cols, out, source ? source : out, n, alpha, sums, 1);
}

CLONES int rvec_coded_decode(const uint8_t *positions, int64_t n_positions, int bitmask, const uint8_t *codes, int64_t n_codes,
                             const float *table, int64_t n_table, const float *escaped, int64_t n_escaped, int has_escaped,
                             const float *scales, int64_t n_scales, int64_t cols, float *out, int64_t n, float *sums) {
    return coded(positions, n_positions, bitmask, codes, n_codes, table, n_table, escaped, n_escaped, has_escaped, scales, n_scales,
                 cols, out, NULL, n, 0.0f, sums, 0);
}

/* `n` codes of `slot` bits (1, 2 or 4), 8 / slot to a byte, least significant first (`quantized`'s
   "bitpacked" codes), widened to a byte each into `out`. 0; 1 for another slot width or a packed length
   that is not ceil(n / (8 / slot)); 2 where a bit past the n-th code is set. */
int rvec_unpack_codes(const uint8_t *packed, int64_t n_packed, int slot, uint8_t *out, int64_t n) {
    if ((slot != 1 && slot != 2 && slot != 4) || n < 0)
        return 1;
    const int per = 8 / slot;
    if (n_packed != (n + per - 1) / per)
        return 1;
    uint8_t spread[256][8]; /* each byte's codes, one a byte */
    for (int b = 0; b < 256; b++)
        for (int j = 0; j < per; j++)
            spread[b][j] = (uint8_t)((b >> (j * slot)) & ((1 << slot) - 1));
    int64_t done = 0;
#ifdef AVX512
    if (has_bytes())
        done = unpack_avx512(packed, slot, out, n) / per; /* whole bytes: 64 codes are 8 / slot of them */
#endif
    const int64_t whole = n / per;
    if (slot == 1)
        for (int64_t i = done; i < whole; i++)
            memcpy(out + 8 * i, spread[packed[i]], 8);
    else if (slot == 2)
        for (int64_t i = done; i < whole; i++)
            memcpy(out + 4 * i, spread[packed[i]], 4);
    else
        for (int64_t i = done; i < whole; i++)
            memcpy(out + 2 * i, spread[packed[i]], 2);
    const int left = (int)(n - whole * per);
    if (left) {
        const uint8_t last = packed[whole];
        memcpy(out + whole * per, spread[last], (size_t)left);
        if (last >> (left * slot))
            return 2;
    }
    return 0;
}

/* `n` codes of `packed`'s "nibbles" layout into `out`, a byte each: ceil(n / 2) bytes of two codes (low
   nibble first), a nibble of 15 standing for the next of the long codes' bytes that follow them. 0; 1 where
   the nibbles do not fit in `n_data` bytes, 2 where a nibble past the n-th code is set, 3 where the 15s
   outnumber the long codes' bytes, 4 where long codes' bytes are left over. */
int rvec_unnibble_codes(const uint8_t *data, int64_t n_data, uint8_t *out, int64_t n) {
    const int64_t n_nibbles = (n + 1) / 2;
    if (n < 0 || n_data < n_nibbles)
        return 1;
    const uint8_t *longs = data + n_nibbles;
    const int64_t n_longs = n_data - n_nibbles;
    int64_t i = 0, o = 0;
#ifdef AVX512
    if (has_bytes())
        i = unnibble_avx512(data, longs, n_longs, out, n, &o);
#endif
    for (; i < n; i++) {
        const uint8_t c = (uint8_t)(data[i / 2] >> (4 * (i & 1)) & 15);
        if (c == 15) {
            if (o == n_longs)
                return 3;
            out[i] = longs[o++];
        } else {
            out[i] = c;
        }
    }
    if ((n & 1) && data[n / 2] >> 4)
        return 2;
    return o == n_longs ? 0 : 4;
}

/* ---- A run of coded blocks in one call -------------------------------------------------------------

   rvec_coded_blocks adds a run of a tensor's whole blocks: it takes each block's frames out of the tensor's
   stored bytes, widens its codes, reads its escaped values and walks it (`coded`), all without returning to
   Python, whose per-block work otherwise holds the interpreter lock while other threads add. It takes only
   what it can read exactly as the Python reader (rvec_hub/encodings/blocks.py) does, and stops before
   writing a block it leaves to that reader (FRAMES): a frame of another kind than rvec writes, one whose
   declared size is not the index's, a compressed block where libzstd is not here to decompress it.
   Raw and RLE blocks (the streams rvec stores uncompressed) are read here, by RFC 8878's framing; a
   compressed block goes to libzstd itself, loaded at run time: the `zstandard` package takes the
   interpreter lock for each frame it decompresses. */

#define FRAMES 10 /* a status of rvec_coded_blocks: the block is left to the Python reader, nothing of it written */
#define ZSTD_BLOCK ((int64_t)1 << 17)

#ifdef __linux__
#include <dlfcn.h>
#include <pthread.h>

/* libzstd, found at run time (only a compressed block needs it): the package links nothing beyond libc. */
static struct {
    void *(*create)(void);
    size_t (*decompress)(void *, void *, size_t, const void *, size_t);
    unsigned (*is_error)(size_t);
    size_t (*frame_size)(const void *, size_t);
} zstd;
static pthread_once_t zstd_once = PTHREAD_ONCE_INIT;
static int zstd_enabled = 1;
static __thread void *zstd_dctx;

static void zstd_load(void) {
    void *lib = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        return;
    zstd.create = (void *(*)(void))dlsym(lib, "ZSTD_createDCtx");
    zstd.decompress = (size_t(*)(void *, void *, size_t, const void *, size_t))dlsym(lib, "ZSTD_decompressDCtx");
    zstd.is_error = (unsigned (*)(size_t))dlsym(lib, "ZSTD_isError");
    zstd.frame_size = (size_t(*)(const void *, size_t))dlsym(lib, "ZSTD_findFrameCompressedSize");
    if (!zstd.create || !zstd.decompress || !zstd.is_error || !zstd.frame_size)
        zstd.create = NULL;
}

/* Whether compressed blocks are decompressed here: 1 where libzstd loads; `enable` 0 leaves them to the
   Python reader (tests), 1 restores it, -1 only asks. */
int rvec_zstd_frames(int enable) {
    pthread_once(&zstd_once, zstd_load);
    if (enable >= 0)
        zstd_enabled = enable;
    return zstd_enabled && zstd.create != NULL;
}

/* The whole frame [f, f + n) decompressed by libzstd into exactly `size` bytes at `out`; 0, or FRAMES. */
static int zstd_frame(const uint8_t *f, int64_t n, uint8_t *out, int64_t size) {
    if (!rvec_zstd_frames(-1))
        return FRAMES;
    if (!zstd_dctx && !(zstd_dctx = zstd.create()))
        return FRAMES;
    const size_t used = zstd.frame_size(f, (size_t)n);
    if (zstd.is_error(used) || used != (size_t)n) /* one frame, nothing after it */
        return FRAMES;
    const size_t got = zstd.decompress(zstd_dctx, out, (size_t)size, f, (size_t)n);
    return zstd.is_error(got) || got != (size_t)size ? FRAMES : 0;
}
#else
int rvec_zstd_frames(int enable) {
    (void)enable;
    return 0;
}
static int zstd_frame(const uint8_t *f, int64_t n, uint8_t *out, int64_t size) {
    (void)f, (void)n, (void)out, (void)size;
    return FRAMES;
}
#endif

struct scratch {
    uint8_t *p;
    int64_t size;
};

/* A thread's buffer of at least `n` bytes, kept from call to call; NULL where it cannot grow. */
static uint8_t *room(struct scratch *s, int64_t n) {
    if (n > s->size) {
        uint8_t *grown = realloc(s->p, (size_t)(n > 0 ? n : 1));
        if (!grown)
            return NULL;
        s->p = grown;
        s->size = n;
    }
    return s->p;
}

static __thread struct scratch frame_room[3], widened_room, escaped_room;

/* One stream's zstd frame [f, f + n) (RFC 8878), holding `want` bytes, or with `at_most` up to `want`:
   *out points at them (into the frame where it is one raw block, else into `s`) and *got is their count.
   0; FRAMES where the frame is not one this reader takes (a dictionary, no declared size, more than it
   may hold, anything after its last block, a compressed block without libzstd); NO_MEMORY. */
static int unframe(const uint8_t *f, int64_t n, int64_t want, int at_most, struct scratch *s, const uint8_t **out, int64_t *got) {
    *out = f, *got = 0;
    if (n == 0)
        return want == 0 ? 0 : FRAMES;
    if (n < 6 || f[0] != 0x28 || f[1] != 0xB5 || f[2] != 0x2F || f[3] != 0xFD)
        return FRAMES;
    const uint8_t fhd = f[4];
    const int single = fhd >> 5 & 1, checksum = fhd >> 2 & 1, flag = fhd >> 6;
    if (fhd & 0x0B) /* reserved bit, dictionary */
        return FRAMES;
    static const int fcs_bytes[2][4] = {{0, 2, 4, 8}, {1, 2, 4, 8}};
    int64_t at = 5 + !single;
    const int nb = fcs_bytes[single][flag];
    if (nb == 0 || at + nb > n)
        return FRAMES;
    uint64_t declared = 0;
    for (int i = 0; i < nb; i++)
        declared |= (uint64_t)f[at + i] << (8 * i);
    if (nb == 2)
        declared += 256;
    at += nb;
    if (declared > (uint64_t)want || (!at_most && declared != (uint64_t)want))
        return FRAMES;
    const int64_t size = (int64_t)declared;
    *got = size;
    /* The blocks: raw and RLE ones are read here, a frame of one raw block in place; a compressed block (or a
       checksum), the whole frame by libzstd. */
    uint8_t *buf = NULL;
    for (int64_t filled = 0, blocks = 0;; blocks++) {
        if (at + 3 > n)
            return FRAMES;
        const uint32_t h = (uint32_t)f[at] | (uint32_t)f[at + 1] << 8 | (uint32_t)f[at + 2] << 16;
        const int last = h & 1, type = h >> 1 & 3;
        const int64_t length = h >> 3;
        at += 3;
        if (type == 2 || type == 3 || checksum) {
            if (!buf && !(buf = room(s, size)))
                return NO_MEMORY;
            *out = buf;
            return type == 3 ? FRAMES : zstd_frame(f, n, buf, size);
        }
        if (length > ZSTD_BLOCK || filled + length > size || (type == 0 && at + length > n) || (type == 1 && at + 1 > n))
            return FRAMES;
        if (type == 0 && last && blocks == 0) {
            if (at + length != n || length != size)
                return FRAMES;
            *out = f + at;
            return 0;
        }
        if (!buf && !(buf = room(s, size)))
            return NO_MEMORY;
        if (type == 0)
            memcpy(buf + filled, f + at, (size_t)length);
        else
            memset(buf + filled, f[at], (size_t)length);
        filled += length;
        at += type == 0 ? length : 1;
        if (last) {
            if (at != n || filled != size)
                return FRAMES;
            *out = buf;
            return 0;
        }
    }
}

/* Add the run of whole coded blocks index[0 .. n_blocks) (seven int64 each, as blocks.py lays them out) of one
   tensor with `cols` columns whose first block starts at row `first_row`: `data` holds the tensor's stored
   bytes from its byte `data_at` on, up to the run's last frame. A code is `bits` wide: 8 a byte each, 1, 2
   or 4 packed into bytes (`quantized`), 4 with `nibbles` `packed`'s nibbles (a long code whole after them);
   `escape_bytes` 2 (bf16 byte planes) or 4 (float32), 0 for an encoding without escapes
   (`scales` then one float32 per row of the tensor, or NULL). `out` (and `source`, or NULL) hold the run's
   rows. Returns the status of `coded` (the first block that is corrupt, NO_MEMORY, or BAD_VALUE after the
   whole run) or FRAMES, with *done the blocks added before it; sums as `coded`'s, over the blocks done. */
CLONES int rvec_coded_blocks(const uint8_t *data, int64_t n_data, int64_t data_at, const int64_t *index, int64_t n_blocks,
                             int64_t first_row, int64_t cols, int bitmask, int bits, int nibbles, int escape_bytes, const float *table,
                             int64_t n_table, const float *scales, uint16_t *out, const uint16_t *source, float alpha,
                             float *sums, int64_t *done) {
    float err = 0.0f, norm = 0.0f;
    int bad = 0;
    int64_t first = first_row, begin = data_at;
    *done = 0;
    sums[0] = sums[1] = 0.0f;
    if ((escape_bytes != 0 && escape_bytes != 2 && escape_bytes != 4) || (bits != 8 && bits != 4 && bits != 2 && bits != 1) || (nibbles && bits != 4))
        return FRAMES;
    for (int64_t b = 0; b < n_blocks; b++) {
        const int64_t *row = index + 7 * b;
        const int64_t last = row[0], count = row[1], escapes = row[2], position_bytes = row[3];
        const int64_t end_positions = row[4], end_codes = row[5], end_escapes = row[6];
        if (!(begin <= end_positions && end_positions <= end_codes && end_codes <= end_escapes && end_escapes - data_at <= n_data) ||
            last <= first || (escape_bytes == 0 && (escapes || end_escapes != end_codes)))
            return FRAMES; /* the index was checked before; the Python reader names anything else */
        const uint8_t *positions, *codes, *planes;
        int64_t n_positions, n_codes, n_planes;
        int status = unframe(data + (begin - data_at), end_positions - begin, position_bytes, 0, &frame_room[0], &positions, &n_positions);
        if (status)
            return status;
        const int64_t code_bytes = nibbles ? count + (count + 1) / 2 : (count * bits + 7) / 8; /* nibbles: at most */
        status = unframe(data + (end_positions - data_at), end_codes - end_positions, code_bytes, nibbles, &frame_room[1], &codes, &n_codes);
        if (status)
            return status;
        if (bits != 8) {
            uint8_t *wide = room(&widened_room, count);
            if (!wide)
                return NO_MEMORY;
            status = nibbles ? rvec_unnibble_codes(codes, n_codes, wide, count) : rvec_unpack_codes(codes, n_codes, bits, wide, count);
            if (status)
                return FRAMES;
            codes = wide;
            n_codes = count;
        }
        status = unframe(data + (end_codes - data_at), end_escapes - end_codes, escapes * escape_bytes, 0, &frame_room[2], &planes, &n_planes);
        if (status)
            return status;
        float *escaped = NULL;
        if (escape_bytes) {
            escaped = (float *)room(&escaped_room, escapes * (int64_t)sizeof(float));
            if (!escaped)
                return NO_MEMORY;
            for (int64_t i = 0; i < escapes; i++) { /* byte planes, least significant first */
                uint32_t bits = escape_bytes == 2 ? (uint32_t)planes[i] << 16 | (uint32_t)planes[escapes + i] << 24
                                                  : (uint32_t)planes[i] | (uint32_t)planes[escapes + i] << 8 |
                                                        (uint32_t)planes[2 * escapes + i] << 16 | (uint32_t)planes[3 * escapes + i] << 24;
                memcpy(escaped + i, &bits, sizeof bits);
            }
        }
        const int64_t at = (first - first_row) * cols, n = (last - first) * cols;
        float block_sums[2];
        status = coded(positions, n_positions, bitmask, codes, n_codes, table, n_table, escaped, escapes, escape_bytes != 0,
                       scales ? scales + first : NULL, scales ? last - first : 0, cols, out + at, source ? source + at : out + at, n,
                       alpha, block_sums, 1);
        if (status && status != BAD_VALUE)
            return status;
        bad |= status == BAD_VALUE;
        err += block_sums[0];
        norm += block_sums[1];
        sums[0] = err;
        sums[1] = norm;
        *done = b + 1;
        first = last;
        begin = end_escapes;
    }
    return bad ? BAD_VALUE : 0;
}

#ifdef __linux__
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif
#endif

/* A (rank × cols bf16 bits) in pairs of ranks, rank / 2 × cols pairs (A[2k][n] low, A[2k + 1][n] high), the
   layout the fused low-rank adds take; rank even. A loop the compiler vectorizes: a tenth of the time of
   torch's copy of the transposed view. */
CLONES int rvec_pair_ranks(const uint16_t *a, uint32_t *out, int64_t rank, int64_t cols) {
    for (int64_t k = 0; k + 1 < rank; k += 2) {
        const uint16_t *lo = a + k * cols, *hi = lo + cols;
        uint32_t *to = out + (k / 2) * cols;
        for (int64_t n = 0; n < cols; n++)
            to[n] = (uint32_t)lo[n] | (uint32_t)hi[n] << 16;
    }
    return 0;
}

/* Fault in the pages of [p, p + n) for writing, in one call: the first write to each page of fresh memory (a
   server's new parameters) otherwise traps once per page. Skipped where the page in the middle is in memory
   already (memory written before: walking its pages would only cost time). Nothing written is changed. 0;
   the errno where the kernel cannot (EINVAL before Linux 5.14), -1 off Linux: callers go on without it. */
int rvec_populate(void *p, int64_t n) {
#ifdef __linux__
    if (n <= 0)
        return 0;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), lo = (uintptr_t)p & ~(page - 1);
    const uintptr_t hi = ((uintptr_t)p + (uintptr_t)n + page - 1) & ~(page - 1);
    unsigned char present = 0;
    if (mincore((void *)(((uintptr_t)p + (uintptr_t)n / 2) & ~(page - 1)), page, &present) == 0 && (present & 1))
        return 0;
    return madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE) ? errno : 0;
#else
    (void)p;
    (void)n;
    return -1;
#endif
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ckernels", "rvec's compiled kernels, called through ctypes.", -1, NULL};

PyMODINIT_FUNC PyInit__ckernels(void) { return PyModule_Create(&module); }
