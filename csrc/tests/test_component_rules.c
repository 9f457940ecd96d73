/* The runtime's component rules (csrc/runtime/component_rules.c): filter sizes beyond int64 remove
 * every component instead of wrapping, and a spacing whose voxel volume is no normal number is
 * refused. Expected sizes are worked out by hand in the comments. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/es_runtime.h"
#include "check.h"

static void test_filter_size(void) {
    CHECK(es_filter_size(10.0) == 10, "whole");
    CHECK(es_filter_size(10.2) == 11, "rounded up");
    CHECK(es_filter_size(10.0 + 1e-12) == 10, "a rounding error above a whole number is not one more pixel");
    /* 2^63 - 1024 is the largest double below 2^63: it fits int64 exactly */
    CHECK(es_filter_size(9223372036854774784.0) == INT64_C(9223372036854774784), "largest that fits");
    CHECK(es_filter_size(9223372036854775808.0) == INT64_MAX, "2^63");
    CHECK(es_filter_size(1e30) == INT64_MAX, "1e30");
    CHECK(es_filter_size(1.0 / 0.0) == INT64_MAX, "inf");
}

static void test_voxel_ml(void) {
    CHECK(es_voxel_ml((const double[3]){2.0, 0.5, 0.5}) == 0.0005, "0.5 mm^3 is 0.0005 mL");
    /* (1e-100)^3 / 1000 = 1e-303, above DBL_MIN (2.2e-308); (1e-102)^3 / 1000 = 1e-309 is subnormal */
    CHECK(es_voxel_ml((const double[3]){1e-100, 1e-100, 1e-100}) > 0, "1e-303 mL is a normal number");
    CHECK(es_voxel_ml((const double[3]){1e-102, 1e-102, 1e-102}) == 0, "subnormal volume");
    CHECK(es_voxel_ml((const double[3]){1e-200, 1e-200, 1e-200}) == 0, "volume underflows to 0");
    CHECK(es_voxel_ml((const double[3]){1e300, 1e300, 1.0}) == 0, "volume overflows to inf");
    CHECK(es_voxel_ml((const double[3]){-1.0, -1.0, 1.0}) == 0, "negative sizes with a positive product");
    CHECK(es_voxel_ml((const double[3]){1.0, 0.0 / 0.0, 1.0}) == 0, "NaN");
}

static es_bundle *bundle_64(void) {
    es_bundle *b = calloc(1, sizeof *b);
    b->rows = b->cols = 64;
    b->num_classes = 3;
    return b;
}

static void test_slice_rules(void) {
    es_bundle *b = bundle_64();
    es_component_rule rules[ES_MAX_CLASSES];
    int any = 0;
    b->min_pixels[1] = 10;
    b->min_pixels[2] = 1000000000000000LL; /* 1e15 model pixels */
    es_slice_rules(b, 128, 128, rules, &any);
    CHECK(rules[1].min_size == 40, "10 model pixels are 40 at twice the side, got %lld", (long long)rules[1].min_size);
    /* at 8192 x 8192 one model pixel is 16384 pixels: 1.6e19, beyond int64 (9.2e18) */
    es_slice_rules(b, 8192, 8192, rules, &any);
    CHECK(rules[2].min_size > 8192LL * 8192LL, "class 2 must remove every component, got %lld", (long long)rules[2].min_size);
    CHECK(rules[1].min_size == 163840, "got %lld", (long long)rules[1].min_size);
    CHECK(any == 1, "filters");
    /* a class kept largest over the volume only has no per-slice rule */
    b->min_pixels[2] = 0;
    b->volume_keep[2] = 1;
    es_slice_rules(b, 64, 64, rules, &any);
    CHECK(!rules[2].keep_largest && rules[2].min_size == 0, "keep_largest_3d must not filter slices");
    b->slice_keep[2] = 1;
    b->volume_keep[2] = 0;
    es_slice_rules(b, 64, 64, rules, &any);
    CHECK(rules[2].keep_largest && any, "keep_largest must filter slices");
    free(b);
}

static void test_volume_rules(void) {
    es_bundle *b = bundle_64();
    es_component_rule rules[ES_MAX_CLASSES];
    es_error err;
    int any = 0;
    b->min_ml[1] = 1.0;
    CHECK(es_volume_rules(b, (const double[3]){1.0, 1.0, 1.0}, rules, &any, &err) == ES_OK, "%s", err.message);
    CHECK(rules[1].min_size == 1000, "1 mL of 1 mm^3 voxels, got %lld", (long long)rules[1].min_size);
    /* 1e-6 mm per side: 1e-21 mL per voxel, 1 mL is 1e21 voxels, beyond int64 */
    CHECK(es_volume_rules(b, (const double[3]){1e-6, 1e-6, 1e-6}, rules, &any, &err) == ES_OK, "%s", err.message);
    CHECK(rules[1].min_size == INT64_MAX && any, "got %lld", (long long)rules[1].min_size);
    memset(&err, 0, sizeof err);
    CHECK(es_volume_rules(b, (const double[3]){1e-200, 1e-200, 1e-200}, rules, &any, &err) == ES_EINVAL, "1e-200");
    CHECK(strstr(err.message, "voxel volume") && strstr(err.message, "1e-200 x 1e-200 x 1e-200"), "%s", err.message);
    free(b);
}

void test_component_rules_all(void) {
    test_filter_size();
    test_voxel_ml();
    test_slice_rules();
    test_volume_rules();
}
