/* Per-axis resampling tables (index + weights), computed once per call in double with the same
 * operations as reference.resize_matrix, so the weights agree with the oracle bit for bit. */
#include <math.h>
#include <stdlib.h>

#include "es_internal.h"

void es_axis_free(es_axis *ax) {
    free(ax->first);
    free(ax->wf);
    free(ax->wd);
    ax->first = NULL;
    ax->wf = NULL;
    ax->wd = NULL;
}

static int axis_alloc(es_axis *ax, int taps) {
    ax->taps = taps;
    ax->first = (int32_t *)calloc((size_t)ax->n_out, sizeof(int32_t));
    ax->wf = (float *)calloc((size_t)(ax->n_out * taps), sizeof(float));
    ax->wd = (double *)calloc((size_t)(ax->n_out * taps), sizeof(double));
    if (!ax->first || !ax->wf || !ax->wd) {
        es_axis_free(ax);
        return ES_ENOMEM;
    }
    return ES_OK;
}

static int bilinear_init(es_axis *ax) {
    const ptrdiff_t n_in = ax->n_in;
    const double scale = (double)n_in / (double)ax->n_out;
    int taps = n_in >= 2 ? 2 : 1;
    int rc = axis_alloc(ax, taps);
    if (rc != ES_OK) return rc;
    for (ptrdiff_t j = 0; j < ax->n_out; ++j) {
        double x = ((double)j + 0.5) * scale - 0.5;
        x = x < 0.0 ? 0.0 : (x > (double)(n_in - 1) ? (double)(n_in - 1) : x);
        ptrdiff_t i0 = (ptrdiff_t)x; /* floor: x >= 0 here, and no libm call per output */
        double w1 = x - (double)i0;
        double w0 = 1.0 - w1;
        if (taps == 1) {
            ax->first[j] = 0;
            ax->wd[j] = 1.0;
        } else if (i0 == n_in - 1) { /* right edge: w1 == 0, read it as (n-2, n-1) */
            ax->first[j] = (int32_t)(n_in - 2);
            ax->wd[2 * j] = w1;
            ax->wd[2 * j + 1] = w0;
        } else {
            ax->first[j] = (int32_t)i0;
            ax->wd[2 * j] = w0;
            ax->wd[2 * j + 1] = w1;
        }
    }
    return ES_OK;
}

static int area_init(es_axis *ax) {
    const ptrdiff_t n_in = ax->n_in, n_out = ax->n_out;
    const double scale = (double)n_in / (double)n_out;
    int taps = 1;
    /* First pass: the widest footprint decides the fixed tap count. */
    for (ptrdiff_t j = 0; j < n_out; ++j) {
        double lo = (double)j * scale, hi = (double)(j + 1) * scale;
        ptrdiff_t a = (ptrdiff_t)floor(lo), b = (ptrdiff_t)ceil(hi);
        if (b > n_in) b = n_in;
        if (b - a > taps) taps = (int)(b - a);
    }
    int rc = axis_alloc(ax, taps);
    if (rc != ES_OK) return rc;
    for (ptrdiff_t j = 0; j < n_out; ++j) {
        double lo = (double)j * scale, hi = (double)(j + 1) * scale;
        ptrdiff_t a = (ptrdiff_t)floor(lo);
        if (a > n_in - taps) a = n_in - taps;
        ax->first[j] = (int32_t)a;
        for (int t = 0; t < taps; ++t) {
            double e0 = (double)(a + t), e1 = e0 + 1.0;
            double overlap = (e1 < hi ? e1 : hi) - (e0 > lo ? e0 : lo);
            ax->wd[j * taps + t] = overlap > 0.0 ? overlap / scale : 0.0;
        }
    }
    return ES_OK;
}

/* f when the interior of an n_in -> f * n_in bilinear table is f outputs per source pair whose
 * weights repeat exactly (up_w0, up_w1 filled), else 0. */
static int periodic_factor(es_axis *ax, int f) {
    const ptrdiff_t h = f / 2, end = h + (ptrdiff_t)f * (ax->n_in - 1);
    for (int k = 0; k < f; ++k) {
        ax->up_w0[k] = ax->wf[2 * (h + k)];
        ax->up_w1[k] = ax->wf[2 * (h + k) + 1];
    }
    for (ptrdiff_t j = h; j < end; ++j) {
        const int k = (int)((j - h) % f);
        if (ax->first[j] != (j - h) / f || ax->wf[2 * j] != ax->up_w0[k] || ax->wf[2 * j + 1] != ax->up_w1[k])
            return 0;
    }
    return f;
}

int es_axis_init(es_axis *ax, ptrdiff_t n_in, ptrdiff_t n_out, es_interp interp) {
    ax->n_in = n_in;
    ax->n_out = n_out;
    ax->first = NULL;
    ax->wf = NULL;
    ax->wd = NULL;
    ax->stride = 0;
    ax->up2 = 0;
    ax->upf = 0;
    if (n_in < 1 || n_out < 1 || n_in > INT32_MAX) return ES_EINVAL;
    int rc;
    if (interp == ES_BILINEAR) rc = bilinear_init(ax);
    else if (interp == ES_AREA) rc = area_init(ax);
    else return ES_EINVAL;
    if (rc != ES_OK) return rc;
    for (ptrdiff_t k = 0; k < n_out * ax->taps; ++k) ax->wf[k] = (float)ax->wd[k];
    ax->stride = 0;
    if (n_out >= 2) {
        const ptrdiff_t s = ax->first[1] - ax->first[0];
        ptrdiff_t j = 2;
        while (j < n_out && ax->first[j] - ax->first[0] == s * j) ++j;
        if (j == n_out && s >= 1 && s <= 4) ax->stride = (int)s;
    }
    ax->up2 = 0;
    if (ax->taps == 2 && n_out == 2 * n_in && n_in >= 2) {
        ptrdiff_t j = 1;
        while (j < n_out - 1 && ax->first[j] == (j - 1) / 2) ++j;
        ax->up2 = j == n_out - 1;
    }
    ax->upf = 0;
    if (ax->taps == 2 && n_in >= 2 && n_out % n_in == 0 && n_out / n_in >= 3 && n_out / n_in <= ES_UP_MAX)
        ax->upf = periodic_factor(ax, (int)(n_out / n_in));
    return ES_OK;
}

/* F outputs per source pair (a, b), the same expression as the table loop: a constant F and
 * weights in registers let the compiler compute the F outputs as one vector. */
#define UP_BLOCKS(F)                                                                               \
    for (ptrdiff_t i = 0; i < n_in - 1; ++i) {                                                    \
        const float a = in[i], b = in[i + 1];                                                      \
        float *ES_RESTRICT o = out + h + (F) * i;                                                  \
        for (int k = 0; k < (F); ++k) o[k] = w0[k] * a + w1[k] * b;                                \
    }

/* Integer up-scaling (ax->upf): the edge outputs through the table, the interior in blocks. */
ES_WIDE static void up_row(const es_axis *ax, const float *ES_RESTRICT in, float *ES_RESTRICT out) {
    const int f = ax->upf;
    const ptrdiff_t n_in = ax->n_in, n_out = ax->n_out, h = f / 2, end = h + (ptrdiff_t)f * (n_in - 1);
    const int32_t *first = ax->first;
    const float *w = ax->wf, *w0 = ax->up_w0, *w1 = ax->up_w1;
    for (ptrdiff_t j = 0; j < h; ++j) out[j] = w[2 * j] * in[first[j]] + w[2 * j + 1] * in[first[j] + 1];
    switch (f) {
    case 4: UP_BLOCKS(4) break;
    case 8: UP_BLOCKS(8) break;
    default: UP_BLOCKS(f) break;
    }
    for (ptrdiff_t j = end; j < n_out; ++j) out[j] = w[2 * j] * in[first[j]] + w[2 * j + 1] * in[first[j] + 1];
}

/* One row of n_in floats -> n_out resampled floats through the axis table. */
ES_WIDE void es_resize_row(const es_axis *ax, const float *ES_RESTRICT in, float *ES_RESTRICT out) {
    const ptrdiff_t n_out = ax->n_out;
    const int32_t *ES_RESTRICT first = ax->first;
    const float *ES_RESTRICT w = ax->wf;
    if (ax->taps == 2 && ax->up2) {
        /* Outputs 2i+1 and 2i+2 both read (i, i+1): contiguous loads and stores vectorise. */
        const ptrdiff_t n_in = ax->n_in;
        out[0] = w[0] * in[first[0]] + w[1] * in[first[0] + 1];
        for (ptrdiff_t i = 0; i < n_in - 1; ++i) {
            const float a = in[i], b = in[i + 1];
            out[2 * i + 1] = w[4 * i + 2] * a + w[4 * i + 3] * b;
            out[2 * i + 2] = w[4 * i + 4] * a + w[4 * i + 5] * b;
        }
        out[n_out - 1] = w[2 * n_out - 2] * in[first[n_out - 1]] + w[2 * n_out - 1] * in[first[n_out - 1] + 1];
    } else if (ax->upf) {
        up_row(ax, in, out);
    } else if (ax->taps == 2 && ax->stride == 2) {
        /* 2x down-scaling (512 -> 256): a constant stride lets the loads vectorise. */
        const float *ES_RESTRICT q = in + first[0];
        for (ptrdiff_t j = 0; j < n_out; ++j) out[j] = w[2 * j] * q[2 * j] + w[2 * j + 1] * q[2 * j + 1];
    } else if (ax->taps == 2) {
        for (ptrdiff_t j = 0; j < n_out; ++j) {
            const float *q = in + first[j];
            out[j] = w[2 * j] * q[0] + w[2 * j + 1] * q[1];
        }
    } else if (ax->taps == 1) {
        for (ptrdiff_t j = 0; j < n_out; ++j) out[j] = w[j] * in[first[j]];
    } else {
        const int taps = ax->taps;
        const double *ES_RESTRICT wd = ax->wd;
        for (ptrdiff_t j = 0; j < n_out; ++j) {
            const float *q = in + first[j];
            const double *wj = wd + j * taps;
            double acc = 0.0; /* wide area footprints: double keeps the sum exact enough */
            for (int t = 0; t < taps; ++t) acc += wj[t] * (double)q[t];
            out[j] = (float)acc;
        }
    }
}
