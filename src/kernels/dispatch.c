/* Run-time selection of the kernel table from the CPU's features. */
#include "kernels.h"
#include "../base/base.h"

#include <string.h>

static int cpu_has(const char *isa)
{
#if defined(XATTN_HAVE_X86_KERNELS) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (!strcmp(isa, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!strcmp(isa, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("fma");
#endif
    return !strcmp(isa, "scalar");
}

const xa_kernels *xa_kern_by_name(const char *name)
{
    if (!strcmp(name, "scalar")) return &xa_kernels_scalar;
#if defined(XATTN_HAVE_X86_KERNELS)
    if (!strcmp(name, "avx2") && cpu_has("avx2")) return &xa_kernels_avx2;
    if (!strcmp(name, "avx512") && cpu_has("avx512")) return &xa_kernels_avx512;
#endif
    return NULL;
}

static const xa_kernels *best(void)
{
    const xa_kernels *k;
    if ((k = xa_kern_by_name("avx512"))) return k;
    if ((k = xa_kern_by_name("avx2"))) return k;
    return &xa_kernels_scalar;
}

static const xa_kernels *xa_current;

const xa_kernels *xa_kern(void)
{
    const xa_kernels *k = __atomic_load_n(&xa_current, __ATOMIC_ACQUIRE);
    if (!k) {
        k = best();
        __atomic_store_n(&xa_current, k, __ATOMIC_RELEASE);
    }
    return k;
}

const char *xattn_isa(void) { return xa_kern()->name; }

xattn_status xattn_set_isa(const char *name)
{
    if (!name) return xa_error(XATTN_ERR_ARG, "xattn_set_isa: name is NULL");
    const xa_kernels *k;
    if (!strcmp(name, "auto"))
        k = best();
    else if (strcmp(name, "scalar") && strcmp(name, "avx2") && strcmp(name, "avx512"))
        return xa_error(XATTN_ERR_ARG, "xattn_set_isa: unknown kernel set '%s' "
                                       "(auto, avx512, avx2, scalar)", name);
    else if (!(k = xa_kern_by_name(name)))
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "xattn_set_isa: kernel set '%s' is not available on this CPU/build", name);
    __atomic_store_n(&xa_current, k, __ATOMIC_RELEASE);
    return XATTN_OK;
}
