/* Brute-force references for the C test (see oracle.h). */
#include "oracle.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

unsigned test_rand(unsigned *state) {
    *state = *state * 1664525u + 1013904223u;
    return *state >> 8;
}

ptrdiff_t oracle_nearest(ptrdiff_t j, ptrdiff_t n_in, ptrdiff_t n_out) {
    const ptrdiff_t i = (2 * j + 1) * n_in / (2 * n_out);
    return i < n_in - 1 ? i : n_in - 1;
}

/* Output j of an axis n_in -> n_out reads i0 (weight w0) and i1 (weight w1). */
typedef struct {
    ptrdiff_t i0, i1;
    double w0, w1;
} tap;

static tap bilinear_tap(ptrdiff_t j, ptrdiff_t n_in, ptrdiff_t n_out) {
    const double scale = (double)n_in / (double)n_out;
    double x = ((double)j + 0.5) * scale - 0.5;
    if (x < 0.0) x = 0.0;
    if (x > (double)(n_in - 1)) x = (double)(n_in - 1);
    tap t;
    t.i0 = (ptrdiff_t)floor(x);
    t.i1 = t.i0 + 1 < n_in ? t.i0 + 1 : n_in - 1;
    t.w1 = x - (double)t.i0;
    t.w0 = 1.0 - t.w1;
    return t;
}

void oracle_logits_labels(const float *logits, ptrdiff_t count, ptrdiff_t classes, ptrdiff_t rows,
                          ptrdiff_t cols, ptrdiff_t out_rows, ptrdiff_t out_cols, uint8_t *out) {
    for (ptrdiff_t n = 0; n < count; ++n)
        for (ptrdiff_t y = 0; y < out_rows; ++y) {
            const tap ty = bilinear_tap(y, rows, out_rows);
            for (ptrdiff_t x = 0; x < out_cols; ++x) {
                const tap tx = bilinear_tap(x, cols, out_cols);
                float best = 0.0f;
                int arg = 0;
                for (ptrdiff_t k = 0; k < classes; ++k) {
                    const float *pl = logits + (n * classes + k) * rows * cols;
                    const double v0 = ty.w0 * pl[ty.i0 * cols + tx.i0] + ty.w1 * pl[ty.i1 * cols + tx.i0];
                    const double v1 = ty.w0 * pl[ty.i0 * cols + tx.i1] + ty.w1 * pl[ty.i1 * cols + tx.i1];
                    const float f = (float)(tx.w0 * v0 + tx.w1 * v1);
                    if (k == 0 || f > best) {
                        best = f;
                        arg = (int)k;
                    }
                }
                out[(n * out_rows + y) * out_cols + x] = (uint8_t)arg;
            }
        }
}

void oracle_argmax_nearest(const float *logits, ptrdiff_t count, ptrdiff_t classes,
                           ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t out_rows,
                           ptrdiff_t out_cols, uint8_t *out) {
    for (ptrdiff_t n = 0; n < count; ++n)
        for (ptrdiff_t y = 0; y < out_rows; ++y)
            for (ptrdiff_t x = 0; x < out_cols; ++x) {
                const ptrdiff_t r = oracle_nearest(y, rows, out_rows);
                const ptrdiff_t c = oracle_nearest(x, cols, out_cols);
                int arg = 0;
                for (ptrdiff_t k = 1; k < classes; ++k)
                    if (logits[((n * classes + k) * rows + r) * cols + c] >
                        logits[((n * classes + arg) * rows + r) * cols + c])
                        arg = (int)k;
                out[(n * out_rows + y) * out_cols + x] = (uint8_t)arg;
            }
}

void oracle_resize_labels(const uint8_t *src, ptrdiff_t count, ptrdiff_t rows, ptrdiff_t cols,
                          ptrdiff_t out_rows, ptrdiff_t out_cols, uint8_t *out) {
    for (ptrdiff_t n = 0; n < count; ++n)
        for (ptrdiff_t y = 0; y < out_rows; ++y)
            for (ptrdiff_t x = 0; x < out_cols; ++x)
                out[(n * out_rows + y) * out_cols + x] =
                    src[(n * rows + oracle_nearest(y, rows, out_rows)) * cols +
                        oracle_nearest(x, cols, out_cols)];
}

/* Marks the 8-connected component of class c holding pixel s with `id`; returns its size. */
static ptrdiff_t flood(const uint8_t *lab, int32_t *comp, ptrdiff_t *queue, ptrdiff_t rows,
                       ptrdiff_t cols, ptrdiff_t s, int32_t id) {
    ptrdiff_t head = 0, tail = 0;
    comp[s] = id;
    queue[tail++] = s;
    while (head < tail) {
        const ptrdiff_t p = queue[head++], y = p / cols, x = p % cols;
        for (ptrdiff_t dy = -1; dy <= 1; ++dy)
            for (ptrdiff_t dx = -1; dx <= 1; ++dx) {
                const ptrdiff_t yy = y + dy, xx = x + dx, q = yy * cols + xx;
                if (yy < 0 || yy >= rows || xx < 0 || xx >= cols) continue;
                if (comp[q] != 0 || lab[q] != lab[s]) continue;
                comp[q] = id;
                queue[tail++] = q;
            }
    }
    return tail;
}

int oracle_largest_component(uint8_t *labels, ptrdiff_t count, ptrdiff_t rows, ptrdiff_t cols,
                             int classes) {
    const ptrdiff_t npix = rows * cols;
    int32_t *comp = malloc((size_t)npix * sizeof(int32_t));
    ptrdiff_t *queue = malloc((size_t)npix * sizeof(ptrdiff_t));
    ptrdiff_t *size = malloc((size_t)(npix + 1) * sizeof(ptrdiff_t));
    if (!comp || !queue || !size) {
        free(comp), free(queue), free(size);
        return 0;
    }
    for (ptrdiff_t n = 0; n < count; ++n) {
        uint8_t *lab = labels + n * npix;
        int32_t keep[256] = {0}, next = 0;
        memset(comp, 0, (size_t)npix * sizeof(int32_t));
        for (ptrdiff_t s = 0; s < npix; ++s) {
            if (lab[s] == 0 || lab[s] >= classes || comp[s] != 0) continue;
            ++next;
            size[next] = flood(lab, comp, queue, rows, cols, s, next);
            if (keep[lab[s]] == 0 || size[next] > size[keep[lab[s]]]) keep[lab[s]] = next;
        }
        for (ptrdiff_t s = 0; s < npix; ++s)
            if (comp[s] != 0 && comp[s] != keep[lab[s]]) lab[s] = 0;
    }
    free(comp), free(queue), free(size);
    return 1;
}

void oracle_preprocess_bilinear(const int16_t *img, ptrdiff_t rows, ptrdiff_t cols, double low,
                                double high, double scale, double offset, ptrdiff_t out_rows,
                                ptrdiff_t out_cols, double *out) {
    for (ptrdiff_t y = 0; y < out_rows; ++y) {
        const tap ty = bilinear_tap(y, rows, out_rows);
        for (ptrdiff_t x = 0; x < out_cols; ++x) {
            const tap tx = bilinear_tap(x, cols, out_cols);
            const ptrdiff_t r[2] = {ty.i0, ty.i1}, c[2] = {tx.i0, tx.i1};
            const double wy[2] = {ty.w0, ty.w1}, wx[2] = {tx.w0, tx.w1};
            double acc = 0.0;
            for (int a = 0; a < 2; ++a)
                for (int b = 0; b < 2; ++b) {
                    double v = img[r[a] * cols + c[b]];
                    v = v < low ? low : (v > high ? high : v);
                    acc += wy[a] * wx[b] * v;
                }
            out[y * out_cols + x] = scale * acc + offset;
        }
    }
}

uint16_t oracle_half_bits(double v) {
    const uint16_t sign = signbit(v) ? 0x8000u : 0u;
    v = fabs(v);
    if (v == 0.0) return sign;
    int e;
    const double f = frexp(v, &e); /* v = f * 2^e, f in [0.5, 1): biased exponent e - 1 + 15 */
    if (e - 1 + 15 <= 0) return (uint16_t)(sign | (uint16_t)(v * 16777216.0)); /* v / 2^-24 */
    return (uint16_t)(sign | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)((2.0 * f - 1.0) * 1024.0));
}

static float quantize(double v) {
    v = v < -16.0 ? -16.0 : (v > 16.0 ? 16.0 : v);
    return (float)(floor(v * 64.0 + 0.5) / 64.0);
}

void make_blob_logits(float *logits, ptrdiff_t count, ptrdiff_t classes, ptrdiff_t rows,
                      ptrdiff_t cols, unsigned seed) {
    unsigned st = seed * 2654435761u + 1u;
    for (ptrdiff_t n = 0; n < count; ++n)
        for (ptrdiff_t k = 0; k < classes; ++k) {
            float *pl = logits + (n * classes + k) * rows * cols;
            double cy[3], cx[3], r2[3];
            for (int b = 0; b < 3; ++b) { /* blobs inside the middle rows; columns anywhere */
                cy[b] = rows * (0.25 + 0.5 * (test_rand(&st) % 1000) / 1000.0);
                cx[b] = cols * ((test_rand(&st) % 1000) / 1000.0);
                const double rad = 1.0 + (rows < cols ? rows : cols) * (0.04 + 0.12 * (test_rand(&st) % 1000) / 1000.0);
                r2[b] = rad * rad;
            }
            for (ptrdiff_t y = 0; y < rows; ++y)
                for (ptrdiff_t x = 0; x < cols; ++x) {
                    const double noise = ((int)(test_rand(&st) % 33) - 16) / 64.0;
                    double v = k == 0 ? 4.0 : -8.0;
                    for (int b = 0; b < 3 && k > 0; ++b) {
                        const double d2 = (y - cy[b]) * (y - cy[b]) + (x - cx[b]) * (x - cx[b]);
                        const double blob = 12.0 * (1.0 - d2 / r2[b]) + (double)(k % 3);
                        v = blob > v ? blob : v;
                    }
                    pl[y * cols + x] = quantize(v + noise);
                }
            /* Every class exactly equal on a square: the argmax must give class 0 there. */
            for (ptrdiff_t y = rows / 2; y < rows / 2 + rows / 8 + 1 && y < rows; ++y)
                for (ptrdiff_t x = cols / 3; x < cols / 3 + cols / 8 + 1 && x < cols; ++x)
                    pl[y * cols + x] = 1.5f;
        }
}

int oracle_fit_box(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t out_rows, ptrdiff_t out_cols,
                   ptrdiff_t box[4]) {
    /* out_rows / rows <= out_cols / cols, cross-multiplied */
    const int rows_limit = (long long)out_rows * cols <= (long long)out_cols * rows;
    const long long in_other = rows_limit ? cols : rows, in_lim = rows_limit ? rows : cols;
    const long long out_lim = rows_limit ? out_rows : out_cols;
    const long long out_other = rows_limit ? out_cols : out_rows;
    /* exact other side = in_other * out_lim / in_lim; refuse when under 1 */
    if (in_other * out_lim < in_lim) return 0;
    long long best = -1;
    for (long long k = 0; k <= out_other; ++k) {
        /* twice the distance from k to the exact value, in units of 1 / in_lim */
        const long long d = 2 * llabs(k * in_lim - in_other * out_lim);
        const long long db = best < 0 ? 0 : 2 * llabs(best * in_lim - in_other * out_lim);
        if (best < 0 || d < db || (d == db && k > best)) best = k;
    }
    box[0] = rows_limit ? out_rows : (ptrdiff_t)best;
    box[1] = rows_limit ? (ptrdiff_t)best : out_cols;
    box[2] = (out_rows - box[0]) / 2;
    box[3] = (out_cols - box[1]) / 2;
    return 1;
}

int oracle_preprocess_pad(const int16_t *img, ptrdiff_t rows, ptrdiff_t cols, double low,
                          double high, double scale, double offset, ptrdiff_t out_rows,
                          ptrdiff_t out_cols, double *out) {
    ptrdiff_t box[4];
    if (!oracle_fit_box(rows, cols, out_rows, out_cols, box)) return 0;
    double *inner = malloc((size_t)(box[0] * box[1]) * sizeof(double));
    if (!inner) return 0;
    oracle_preprocess_bilinear(img, rows, cols, low, high, scale, offset, box[0], box[1], inner);
    for (ptrdiff_t y = 0; y < out_rows; ++y)
        for (ptrdiff_t x = 0; x < out_cols; ++x) {
            const ptrdiff_t by = y - box[2], bx = x - box[3];
            const int in = by >= 0 && by < box[0] && bx >= 0 && bx < box[1];
            out[y * out_cols + x] = in ? inner[by * box[1] + bx] : scale * low + offset;
        }
    free(inner);
    return 1;
}

void oracle_crop_logits(const float *logits, ptrdiff_t count, ptrdiff_t classes, ptrdiff_t in_rows,
                        ptrdiff_t in_cols, const ptrdiff_t box[4], float *out) {
    for (ptrdiff_t p = 0; p < count * classes; ++p)
        for (ptrdiff_t y = 0; y < box[0]; ++y)
            for (ptrdiff_t x = 0; x < box[1]; ++x)
                out[(p * box[0] + y) * box[1] + x] =
                    logits[(p * in_rows + y + box[2]) * in_cols + x + box[3]];
}
