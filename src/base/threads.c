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
    int n = omp_get_num_procs();
    return n > 0 ? n : 1;
#else
    return 1;
#endif
}
