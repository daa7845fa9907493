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
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define BAD_VALUE 8 /* a sum is NaN or infinite in bf16 */

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

/* One value added at position p: the rounding error's square, and whether the sum left bf16's range. */
static inline __attribute__((always_inline)) float add_at(uint16_t *out, int64_t p, float alpha, float value, int *bad) {
    float exact = fmaf(alpha, value, widen(out[p]));
    uint16_t y = to_bf16(exact);
    out[p] = y;
    float e = widen(y) - exact;
    *bad |= !finite_bf16(y);
    return e * e;
}

/* out += alpha * delta over n weights; `delta` holds bf16 bits (`bf16`) or float32. */
static inline __attribute__((always_inline)) int dense(uint16_t *out, const void *delta, const int bf16, int64_t n, float alpha, float *sums) {
    float err = 0.0f, norm = 0.0f;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float d = bf16 ? widen(((const uint16_t *)delta)[i]) : ((const float *)delta)[i];
        err += add_at(out, i, alpha, d, &bad);
        norm += d * d;
    }
    sums[0] = err;
    sums[1] = norm * alpha * alpha;
    return bad ? BAD_VALUE : 0;
}

CLONES int rvec_dense_bf16(uint16_t *out, const uint16_t *delta, int64_t n, float alpha, float *sums) {
    return dense(out, delta, 1, n, alpha, sums);
}

CLONES int rvec_dense_f32(uint16_t *out, const float *delta, int64_t n, float alpha, float *sums) {
    return dense(out, delta, 0, n, alpha, sums);
}

/* At each (checked) position where[i], in any order: out += alpha * values[i]. */
CLONES int rvec_indexed(uint16_t *out, const int64_t *where, const float *values, int64_t n, float alpha, float *sums) {
    float err = 0.0f, norm = 0.0f;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float value = values[i];
        if (value != 0.0f) {
            err += add_at(out, where[i], alpha, value, &bad);
            norm += value * value;
        }
    }
    sums[0] = err;
    sums[1] = norm * alpha * alpha;
    return bad ? BAD_VALUE : 0;
}

/* The walk of one coded block (rvec_hub/encodings/packed.py has the layout). With `add`, bf16 bits `out`
   get out += alpha * value at each entry; without, float32 `out` is filled with the decoded block (zeros
   between the entries). Statuses other than 0 and BAD_VALUE name a corrupt block:
   1 an entry past the block's end, 2 more entries than codes, 3 a code outside the codebook,
   4 more escape codes than escaped values, 5 codes left over, 6 escaped values left over,
   7 a code count or scale count that does not fit the block. */
static inline __attribute__((always_inline)) int coded(
    const uint8_t *gaps, int64_t n_gaps, const uint8_t *codes, int64_t n_codes, const float *table, int64_t n_table,
    const float *escaped, int64_t n_escaped, int has_escaped, const float *scales, int64_t n_scales, int64_t cols,
    void *target, int64_t n, float alpha, float *sums, const int add) {
    uint16_t *bits = (uint16_t *)target;
    float *values = (float *)target;
    float err = 0.0f, norm = 0.0f;
    int bad = 0;
    int64_t e = 0, k = 0;
    int scaled = n_scales > 0;
    int bad_code = has_escaped ? 4 : 3;
    sums[0] = 0.0f;
    sums[1] = 0.0f;
    if (scaled && n_scales * cols != n)
        return 7;
#define PUT(p, value)                                      \
    do {                                                   \
        float v_ = (value);                                \
        if (add) {                                         \
            if (v_ != 0.0f) {                              \
                err += add_at(bits, (p), alpha, v_, &bad); \
                norm += v_ * v_;                           \
            }                                              \
        } else {                                           \
            values[p] = v_;                                \
        }                                                  \
    } while (0)
    if (n_gaps == 0 && n_codes > 0 && !scaled) { /* a code for every element */
        if (n_codes != n)
            return 7;
        for (int64_t p = 0; p < n; p++) {
            uint8_t c = codes[p];
            if (c < n_table) {
                PUT(p, table[c]);
            } else if (c == 255 && e < n_escaped) {
                PUT(p, escaped[e]);
                e++;
            } else {
                return c == 255 ? bad_code : 3;
            }
        }
        k = n;
    } else {
        if (!add)
            memset(values, 0, (size_t)n * sizeof(float));
        int64_t p = -1, row = 0, row_end = cols;
        for (int64_t i = 0; i < n_gaps; i++) {
            uint8_t g = gaps[i];
            if (g == 0) {
                p += 255;
                continue;
            }
            p += g;
            if (p >= n)
                return 1;
            if (k >= n_codes)
                return 2;
            uint8_t c = codes[k++];
            float value;
            if (c < n_table) {
                value = table[c];
            } else if (c == 255 && e < n_escaped) {
                value = escaped[e++];
            } else {
                return c == 255 ? bad_code : 3;
            }
            if (scaled) {
                while (p >= row_end) {
                    row++;
                    row_end += cols;
                }
                value = value * scales[row];
            }
            PUT(p, value);
        }
    }
#undef PUT
    if (k != n_codes)
        return 5;
    if (e != n_escaped)
        return 6;
    sums[0] = err;
    sums[1] = norm * alpha * alpha;
    return bad ? BAD_VALUE : 0;
}

CLONES int rvec_coded_add(const uint8_t *gaps, int64_t n_gaps, const uint8_t *codes, int64_t n_codes, const float *table,
                          int64_t n_table, const float *escaped, int64_t n_escaped, int has_escaped, const float *scales,
                          int64_t n_scales, int64_t cols, uint16_t *out, int64_t n, float alpha, float *sums) {
    return coded(gaps, n_gaps, codes, n_codes, table, n_table, escaped, n_escaped, has_escaped, scales, n_scales, cols, out, n,
                 alpha, sums, 1);
}

CLONES int rvec_coded_decode(const uint8_t *gaps, int64_t n_gaps, const uint8_t *codes, int64_t n_codes, const float *table,
                             int64_t n_table, const float *escaped, int64_t n_escaped, int has_escaped, const float *scales,
                             int64_t n_scales, int64_t cols, float *out, int64_t n, float *sums) {
    return coded(gaps, n_gaps, codes, n_codes, table, n_table, escaped, n_escaped, has_escaped, scales, n_scales, cols, out, n,
                 0.0f, sums, 0);
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ckernels", "rvec's compiled kernels, called through ctypes.", -1, NULL};

PyMODINIT_FUNC PyInit__ckernels(void) { return PyModule_Create(&module); }
