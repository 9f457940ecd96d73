/* The band driver shared by pre-processing, post-processing and the component filter: one
 * OpenMP loop over (slice, band) items with per-thread scratch and a status reduction, so the
 * splitting rule and the error handling exist once. */
#include "es_internal.h"

/* Cut slices only as far as a few slices still keep every thread busy, each band holds at
 * least job->band_work of work, and a band keeps >= 16 rows. */
static ptrdiff_t bands_per_slice(const es_band_job *job, int nt) {
    ptrdiff_t bands = 1;
    if (job->band_work <= 0) return 1;
    if (job->count < nt) bands = (2 * nt + job->count - 1) / job->count;
    if (bands > job->work / job->band_work) bands = job->work / job->band_work;
    if (bands > job->rows / 16) bands = job->rows / 16;
    return bands < 1 ? 1 : bands;
}

ptrdiff_t es_band_count(const es_band_job *job, int num_threads) {
    if (job->count < 1 || job->rows < 1) return 1;
    return bands_per_slice(job, es_threads_for(num_threads, job->count * job->rows));
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
    const ptrdiff_t bands = bands_per_slice(job, nt0);
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
