/* Per-class component rules in 2-D and 3-D against a flood-fill oracle written here, voxel by
 * voxel, from the semantics in edgeseg_kernels.h; and 1 against several threads. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "edgeseg_kernels.h"
#include "oracle.h"

/* Flood fill of (depth, rows, cols) labels, 6-connected (conn3d) or 8-connected within slices,
 * then the rules: components numbered in raster order, equal sizes keep the first. */
static int oracle_filter(uint8_t *lab, ptrdiff_t depth, ptrdiff_t rows, ptrdiff_t cols,
                         int classes, const es_component_rule *rules, int conn3d) {
    const ptrdiff_t n = depth * rows * cols, plane = rows * cols;
    int32_t *comp = calloc((size_t)n, sizeof(int32_t));
    ptrdiff_t *queue = malloc((size_t)n * sizeof(ptrdiff_t));
    ptrdiff_t *size = malloc((size_t)(n + 1) * sizeof(ptrdiff_t));
    uint8_t *cls = malloc((size_t)(n + 1));
    if (!comp || !queue || !size || !cls) {
        free(comp), free(queue), free(size), free(cls);
        return 0;
    }
    int32_t next = 0;
    for (ptrdiff_t s = 0; s < n; ++s) {
        if (lab[s] == 0 || lab[s] >= classes || comp[s]) continue;
        ++next;
        ptrdiff_t head = 0, tail = 0;
        comp[s] = next;
        queue[tail++] = s;
        while (head < tail) {
            const ptrdiff_t q = queue[head++];
            const ptrdiff_t z = q / plane, y = q % plane / cols, x = q % cols;
            for (int dz = -1; dz <= 1; ++dz)
                for (int dy = -1; dy <= 1; ++dy)
                    for (int dx = -1; dx <= 1; ++dx) {
                        const int steps = (dz != 0) + (dy != 0) + (dx != 0);
                        if (steps == 0 || (conn3d && steps != 1) || (!conn3d && dz != 0)) continue;
                        const ptrdiff_t zz = z + dz, yy = y + dy, xx = x + dx;
                        if (zz < 0 || zz >= depth || yy < 0 || yy >= rows || xx < 0 || xx >= cols) continue;
                        const ptrdiff_t t = (zz * rows + yy) * cols + xx;
                        if (comp[t] || lab[t] != lab[s]) continue;
                        comp[t] = next;
                        queue[tail++] = t;
                    }
        }
        size[next] = tail;
        cls[next] = lab[s];
    }
    /* In 2-D "largest" is per slice: the best component of each class in each slice. */
    int32_t *best = malloc(sizeof(int32_t) * 256 * (size_t)(conn3d ? 1 : depth));
    for (ptrdiff_t i = 0; i < 256 * (conn3d ? 1 : depth); ++i) best[i] = 0;
    for (ptrdiff_t s = 0; s < n; ++s) {
        const int32_t k = comp[s];
        if (!k) continue;
        int32_t *b = best + 256 * (conn3d ? 0 : s / plane) + cls[k];
        if (*b == 0 || size[k] > size[*b]) *b = k;
    }
    for (ptrdiff_t s = 0; s < n; ++s) {
        const int32_t k = comp[s];
        if (!k) continue;
        const es_component_rule *r = &rules[cls[k]];
        const int32_t b = best[256 * (conn3d ? 0 : s / plane) + cls[k]];
        if (!r->keep_largest && r->min_size <= 1) continue;
        if ((r->keep_largest && b != k) || (int64_t)size[k] < r->min_size) lab[s] = (uint8_t)r->removed_to;
    }
    free(comp), free(queue), free(size), free(cls), free(best);
    return 1;
}

/* Random blobs of density `fill` (per mille) in classes 1..classes-1 (and an out-of-range 9). */
static void random_labels(uint8_t *lab, ptrdiff_t n, int classes, unsigned fill, unsigned *seed) {
    for (ptrdiff_t i = 0; i < n; ++i) {
        const unsigned r = test_rand(seed);
        lab[i] = (uint8_t)(r % 1000 < fill ? 1 + (r / 1000) % (unsigned)(classes - 1) : 0);
        if (r % 997 == 0) lab[i] = 9;
    }
}

static void test_case(ptrdiff_t depth, ptrdiff_t rows, ptrdiff_t cols, unsigned fill, unsigned seed,
                      int give_away) {
    enum { CLASSES = 4 };
    const ptrdiff_t n = depth * rows * cols;
    es_component_rule rules[CLASSES] = {{0, 0, 0}, {1, 0, 0}, {0, 3, 0}, {1, 2, 0}};
    if (give_away) { /* removed pixels go to another class: 1 -> 2, 2 -> 1, 3 -> 1 */
        rules[1].removed_to = 2;
        rules[2].removed_to = 1;
        rules[3].removed_to = 1;
    }
    uint8_t *src = malloc((size_t)n), *want = malloc((size_t)n), *one = malloc((size_t)n),
            *many = malloc((size_t)n);
    random_labels(src, n, CLASSES, fill, &seed);
    for (int conn3d = 0; conn3d <= 1; ++conn3d) {
        memcpy(want, src, (size_t)n);
        memcpy(one, src, (size_t)n);
        memcpy(many, src, (size_t)n);
        CHECK(oracle_filter(want, depth, rows, cols, CLASSES, rules, conn3d), "oom");
        if (conn3d) {
            CHECK(es_filter_components_3d(one, depth, rows, cols, CLASSES, rules, 1) == ES_OK, "status");
            CHECK(es_filter_components_3d(many, depth, rows, cols, CLASSES, rules, 4) == ES_OK, "status");
        } else {
            CHECK(es_filter_components(one, depth, rows, cols, CLASSES, rules, 1) == ES_OK, "status");
            CHECK(es_filter_components(many, depth, rows, cols, CLASSES, rules, 4) == ES_OK, "status");
        }
        CHECK(memcmp(one, want, (size_t)n) == 0, "%s %tdx%tdx%td fill %u removed_to %d differs from the oracle",
              conn3d ? "3-D" : "2-D", depth, rows, cols, fill, give_away);
        CHECK(memcmp(many, one, (size_t)n) == 0, "%s: 4 threads differ from 1", conn3d ? "3-D" : "2-D");
    }
    free(src), free(want), free(one), free(many);
}

static void test_bad_arguments(void) {
    uint8_t lab[8] = {0};
    es_component_rule rules[2] = {{0, 0, 0}, {1, 0, 0}};
    CHECK(es_filter_components_3d(NULL, 1, 2, 4, 2, rules, 1) == ES_EINVAL, "NULL labels");
    CHECK(es_filter_components_3d(lab, 1, 2, 4, 2, NULL, 1) == ES_EINVAL, "NULL rules");
    CHECK(es_filter_components_3d(lab, 1, 0, 4, 2, rules, 1) == ES_EINVAL, "rows 0");
    CHECK(es_filter_components_3d(lab, 1, 2, 4, 257, rules, 1) == ES_EINVAL, "257 classes");
    CHECK(es_filter_components_3d(lab, (ptrdiff_t)1 << 20, 1 << 12, 1 << 12, 2, rules, 1) == ES_EINVAL,
          "too many voxels");
    CHECK(es_filter_components_3d(lab, 0, 2, 4, 2, rules, 1) == ES_OK, "empty volume");
    es_component_rule bad[2] = {{0, 0, 0}, {1, 0, 256}};
    CHECK(es_filter_components_3d(lab, 1, 2, 4, 2, bad, 1) == ES_EINVAL, "removed_to 256 (3-D)");
    CHECK(es_filter_components(lab, 1, 2, 4, 2, bad, 1) == ES_EINVAL, "removed_to 256 (2-D)");
    bad[1].removed_to = -1;
    CHECK(es_filter_components(lab, 1, 2, 4, 2, bad, 1) == ES_EINVAL, "removed_to -1");
}

void test_components_all(void) {
    const unsigned fills[] = {50, 300, 500, 700};
    unsigned seed = 11;
    for (int give_away = 0; give_away <= 1; ++give_away)
        for (int i = 0; i < 4; ++i) {
            test_case(1, 37, 41, fills[i], seed++, give_away);
            test_case(9, 23, 19, fills[i], seed++, give_away);
            test_case(17, 8, 64, fills[i], seed++, give_away);
            test_case(5, 1, 70, fills[i], seed++, give_away);
        }
    test_bad_arguments();
}
