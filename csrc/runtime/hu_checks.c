/* Checks of what a caller asks libedgeseg to segment: the C twin of
 * edgeseg/runtime/input_checks.py (same refusals, same limits), plus the pointer, size and
 * stride checks a C caller needs. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "es_hu_checks.h"

/* Stored CT values: padding goes down to -3024 HU on some scanners, extended-range metal to
 * about 30k; anything beyond int16 / uint16 is not a CT value. */
#define HU_MIN (-32768.0)
#define HU_MAX 65535.0
/* Above this, values with nothing below 0 cannot be HU clipped at 0 (NO_AIR_HIGH in input_checks.py). */
#define NO_AIR_HIGH 1000.0
/* Air and fat in HU, and the share of voxels in it a CT of a body holds at least (AIR_HU,
 * AIR_PER_MILLE in input_checks.py): padding at -2000 or -3024 HU is not air. */
#define AIR_LOW (-1200.0)
#define AIR_HIGH (-50.0)
#define AIR_PER_MILLE 1

/* The least and largest value, how many values lie in AIR_LOW..AIR_HIGH, and how many in all. */
typedef struct {
    double low, high;
    long long air, count;
} value_stats;

static int check_layout(const es_bundle *b, const es_hu_layout *in, const char *what, es_error *err) {
    if (in->slices < 1 || in->rows < 1 || in->cols < 1)
        return es_fail(err, ES_EINVAL, "%s sizes must be positive, got %d slice(s) of %d x %d", what, in->slices, in->rows, in->cols);
    if (in->rows < ES_MIN_SIDE || in->cols < ES_MIN_SIDE)
        return es_fail(err, ES_EDATA, "%s of %d x %d is too small; slices need at least %d rows and columns", what, in->rows,
                       in->cols, ES_MIN_SIDE);
    if (in->rows > ES_MAX_SIDE || in->cols > ES_MAX_SIDE)
        return es_fail(err, ES_EDATA, "%s of %d x %d is larger than the limit of %d rows and columns (ES_MAX_SIDE)", what,
                       in->rows, in->cols, ES_MAX_SIDE);
    if (!b->resize_input && (in->rows != b->rows || in->cols != b->cols))
        return es_fail(err, ES_EDATA, "%s %s %dx%d but this bundle takes %dx%d only (it was exported without resizing)",
                       what, *what == 'v' ? "slices are" : "is", in->rows, in->cols, b->rows, b->cols);
    es_fit_box box;
    if (b->pad && es_fit_geometry(in->rows, in->cols, b->rows, b->cols, ES_FIT_PAD, &box) != ES_OK) {
        const double scale = fmin((double)b->rows / in->rows, (double)b->cols / in->cols);
        return es_fail(err, ES_EDATA, "a %dx%d slice cannot be padded into %dx%d: its short side would scale to %.3g px, under 1 (fit=pad)",
                       in->rows, in->cols, b->rows, b->cols, fmin(in->rows * scale, in->cols * scale));
    }
    if (in->row_stride < in->cols)
        return es_fail(err, ES_EINVAL, "row_stride %td is below cols %d (strides count elements)", in->row_stride, in->cols);
    /* Offsets of the last pixel must fit a ptrdiff_t; far beyond any real image. */
    if (in->row_stride > PTRDIFF_MAX / ES_MAX_SIDE || (in->slices > 1 && in->slice_stride > PTRDIFF_MAX / in->slices))
        return es_fail(err, ES_EINVAL, "row_stride %td or slice_stride %td is too large to address", in->row_stride,
                       in->slice_stride);
    if (in->slices > 1 && in->slice_stride < (ptrdiff_t)in->rows * in->row_stride)
        return es_fail(err, ES_EINVAL, "slice_stride %td is below rows * row_stride = %td", in->slice_stride,
                       (ptrdiff_t)in->rows * in->row_stride);
    return ES_OK;
}

/* Float input: finite, within stored CT values, and not already normalised. */
static int check_float_values(const float *hu, const es_hu_layout *in, const char *what, value_stats *st, es_error *err) {
    double low = INFINITY, high = -INFINITY;
    long long bad = 0, air = 0;
    int first_bad = -1;
    for (int z = 0; z < in->slices; z++) {
        for (int r = 0; r < in->rows; r++) {
            const float *row = hu + z * in->slice_stride + r * in->row_stride;
            for (int c = 0; c < in->cols; c++) {
                double v = row[c];
                if (!isfinite(v)) {
                    bad++;
                    if (first_bad < 0) first_bad = z;
                    continue;
                }
                if (v < low) low = v;
                if (v > high) high = v;
                air += v >= AIR_LOW && v <= AIR_HIGH;
            }
        }
    }
    if (bad && in->slices > 1)
        return es_fail(err, ES_ENONFINITE, "%s holds %lld NaN or infinite value(s) (slice %d); expected finite HU", what, bad, first_bad);
    if (bad) return es_fail(err, ES_ENONFINITE, "%s holds %lld NaN or infinite value(s); expected finite HU", what, bad);
    if (low < HU_MIN || high > HU_MAX)
        return es_fail(err, ES_EDATA, "%s values span %g..%g; CT stores HU within %g..%g", what, low, high, HU_MIN, HU_MAX);
    if (0 < high - low && high - low <= 2.0 && -2.0 <= low && high <= 2.0)
        return es_fail(err, ES_EDATA, "%s values span %g..%g, which looks normalised, not HU (air is about -1000); pass the scanner's HU",
                       what, low, high);
    st->low = low;
    st->high = high;
    st->air = air;
    return ES_OK;
}

#define INT_RANGE(T)                                                                  \
    for (int z = 0; z < in->slices; z++)                                              \
        for (int r = 0; r < in->rows; r++) {                                          \
            const T *row = (const T *)hu + z * in->slice_stride + r * in->row_stride; \
            for (int c = 0; c < in->cols; c++) {                                      \
                if (row[c] < st->low) st->low = row[c];                               \
                if (row[c] > st->high) st->high = row[c];                             \
                st->air += row[c] >= AIR_LOW && row[c] <= AIR_HIGH;                   \
            }                                                                         \
        }

static void int_range(const void *hu, es_dtype dtype, const es_hu_layout *in, value_stats *st) {
    st->low = INFINITY;
    st->high = -INFINITY;
    if (dtype == ES_INT16) INT_RANGE(int16_t)
    else if (dtype == ES_UINT16) INT_RANGE(uint16_t)
    else INT_RANGE(uint8_t)
}

/* No air or fat, where a CT of a body has them: check_has_air in input_checks.py. */
static int check_has_air(const es_bundle *b, const value_stats *st, const char *what, es_error *err) {
    double low = st->low, high = st->high;
    if (low == high || (b->window_low >= 0 && high <= NO_AIR_HIGH)) return ES_OK;
    if (st->air >= 1 && st->air * 1000 >= AIR_PER_MILLE * st->count) return ES_OK;
    char none[128], why[96];
    if (low >= 0) es_format(none, sizeof none, "none below 0 HU");
    else es_format(none, sizeof none, "%lld of %lld voxels in the air and fat range %g..%g HU (under %g %%)", st->air,
                  st->count, AIR_LOW, AIR_HIGH, AIR_PER_MILLE / 10.0);
    if (b->window_low < 0) es_format(why, sizeof why, "this model's window starts at %g HU", b->window_low);
    else es_format(why, sizeof why, "they reach %g, above any tissue but bone", high);
    return es_fail(err, ES_EDATA, "%s values span %g..%g, %s, where a CT of a body has fat and air (-100, -1000) "
                   "and %s: not HU (stored values without RescaleIntercept? an 8-bit image? MR?); pass HU = stored value x "
                   "RescaleSlope + RescaleIntercept", what, low, high, none, why);
}

int es_check_model_input(const float *input, size_t count, const char *artifact, es_error *err) {
    size_t bad = 0;
    for (size_t i = 0; i < count; i++) bad += !isfinite(input[i]);
    if (!bad) return ES_OK;
    return es_fail(err, ES_ENONFINITE, "openvino: input holds NaN or infinite values (%zu of the %zu model inputs for %s, "
                   "after the bundle's window, mean and std)", bad, count, artifact);
}

int es_check_hu(const es_bundle *b, const void *hu, es_dtype dtype, const es_hu_layout *in, const uint8_t *labels, es_error *err) {
    const char *what = in->slices > 1 || in->volume ? "volume" : "slice";
    if (!hu) return es_fail(err, ES_EINVAL, "hu is NULL");
    if (!labels) return es_fail(err, ES_EINVAL, "labels is NULL");
    if (dtype != ES_INT16 && dtype != ES_UINT16 && dtype != ES_UINT8 && dtype != ES_FLOAT32)
        return es_fail(err, ES_EINVAL, "dtype code %d is not one of ES_UINT8 (%d), ES_INT16 (%d), ES_UINT16 (%d), ES_FLOAT32 (%d)",
                       (int)dtype, ES_UINT8, ES_INT16, ES_UINT16, ES_FLOAT32);
    int rc = check_layout(b, in, what, err);
    if (rc) return rc;
    value_stats st = {0, 0, 0, (long long)in->slices * in->rows * in->cols};
    if (dtype == ES_FLOAT32) rc = check_float_values((const float *)hu, in, what, &st, err);
    else int_range(hu, dtype, in, &st);
    return rc ? rc : check_has_air(b, &st, what, err);
}
