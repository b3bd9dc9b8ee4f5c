#include "base.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int xa_nthreads = 0; /* 0 = default */

void xattn_set_threads(int n) { xa_nthreads = n > 0 ? n : 0; }

int xattn_get_threads(void) { return xa_threads(); }

int xa_threads(void)
{
#ifdef _OPENMP
    if (xa_nthreads > 0) return xa_nthreads;
    /* default: OMP_NUM_THREADS if set, else the number of cores */
    static int dflt = 0;
    int n = __atomic_load_n(&dflt, __ATOMIC_RELAXED);
    if (n <= 0) {
        n = omp_in_parallel() ? omp_get_num_procs() : omp_get_max_threads();
        if (n <= 0) n = 1;
        __atomic_store_n(&dflt, n, __ATOMIC_RELAXED);
    }
    return n;
#else
    return 1;
#endif
}
