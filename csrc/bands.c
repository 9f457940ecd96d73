/* The band driver shared by pre-processing, post-processing and the component filter: one
 * OpenMP loop over (slice, band) items with per-thread scratch and a status reduction, so the
 * splitting rule and the error handling exist once. */
#include "es_internal.h"

/* A single 512^2 slice takes ~0.1 ms, less than a descheduled thread can cost on a loaded
 * machine: split a slice only when each band has about a million pixels of work, and then only
 * as far as a few slices still keep every thread busy (and a band keeps >= 16 rows). */
#define ES_MIN_BAND_WORK ((ptrdiff_t)1 << 20)

static ptrdiff_t bands_per_slice(ptrdiff_t count, ptrdiff_t rows, ptrdiff_t work, int nt) {
    ptrdiff_t bands = 1;
    if (count < nt) bands = (2 * nt + count - 1) / count;
    if (bands > work / ES_MIN_BAND_WORK) bands = work / ES_MIN_BAND_WORK;
    if (bands > rows / 16) bands = rows / 16;
    return bands < 1 ? 1 : bands;
}

ptrdiff_t es_band_count(ptrdiff_t count, ptrdiff_t rows, ptrdiff_t work, int num_threads) {
    if (count < 1 || rows < 1) return 1;
    return bands_per_slice(count, rows, work, es_threads_for(num_threads, count * rows));
}

static int status_of(unsigned err) {
    if (err & (1u << ES_ENOMEM)) return ES_ENOMEM;
    if (err & (1u << ES_ENONFINITE)) return ES_ENONFINITE;
    if (err & (1u << ES_EINVAL)) return ES_EINVAL;
    return ES_OK;
}

int es_run_bands(const es_band_job *job, int num_threads) {
    if (job->count < 1 || job->rows < 1) return ES_OK;
    const int nt0 = es_threads_for(num_threads, job->count * job->rows);
    const ptrdiff_t bands = bands_per_slice(job->count, job->rows, job->work, nt0);
    const ptrdiff_t items = job->count * bands;
    const int nt = es_threads_for(nt0, items);
    unsigned err = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(| : err)
#endif
    {
        void *scratch = job->thread_init ? job->thread_init(job->ctx) : NULL;
        const int ok = scratch != NULL || job->thread_init == NULL;
        if (!ok) err |= 1u << ES_ENOMEM;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (ptrdiff_t it = 0; it < items; ++it) {
            if (!ok) continue;
            es_band b;
            b.slice = it / bands;
            b.index = it % bands;
            b.of = bands;
            b.y0 = b.index * job->rows / bands;
            b.y1 = (b.index + 1) * job->rows / bands;
            const int rc = job->run(job->ctx, scratch, &b);
            if (rc != ES_OK) err |= (unsigned)rc < 8u ? 1u << rc : 1u << ES_EINVAL;
        }
        if (scratch) job->thread_free(scratch);
    }
    (void)nt;
    return status_of(err);
}
