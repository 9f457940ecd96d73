/* The C test's check macro: a failed check prints where and why, and the run goes on. */
#ifndef ES_TEST_CHECK_H
#define ES_TEST_CHECK_H

#include <stdio.h>

extern int failures;

#define CHECK(cond, ...)                                                         \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: FAIL %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
            ++failures;                                                          \
        }                                                                        \
    } while (0)

void test_postprocess_all(void);
void test_bands_all(void);
void test_components_all(void);
void test_fit_all(void);
void test_mirror_all(void);
void test_component_rules_all(void);
void test_portable_all(void);
/* "SSE2, signed char" or "portable (no SSE2), unsigned char", ...: what this build runs. */
const char *test_build_variant(void);

#endif
