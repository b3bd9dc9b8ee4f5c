/* Run-time selection of the kernel table from the CPU's features. */
#if !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* syscall (the AMX tile-state permission) */
#endif
#include "kernels.h"
#include "../base/base.h"

#include <string.h>

#if defined(XATTN_HAVE_NEON_KERNELS) && defined(__linux__)
#include <sys/auxv.h>
#endif

#if defined(XATTN_HAVE_X86_KERNELS) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
/* F16C (CPUID.1:ECX bit 29): the half-precision conversions the avx2 set uses for 16-bit
 * weights (asked through cpuid: not every compiler's __builtin_cpu_supports knows "f16c"). */
static int has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
}

#if defined(XATTN_HAVE_BF16_KERNELS)
/* AVX512_BF16: CPUID.(7,1):EAX bit 5. */
static int has_avx512bf16(void)
{
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5)) != 0;
}

/* AMX-TILE and AMX-BF16 (CPUID.(7,0):EDX bits 24 and 22), the tile state enabled by the OS
 * (XCR0 bits 17 and 18: XTILECFG, XTILEDATA) and, on Linux, this process's permission to use
 * it, asked once (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA; without it the first tile
 * instruction would kill the process). */
static int has_amx_bf16(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 22)))
        return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0; /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return 0;
#if defined(__linux__) && defined(SYS_arch_prctl)
    static int perm = -1; /* -1 not asked yet, else the answer */
    int p = __atomic_load_n(&perm, __ATOMIC_ACQUIRE);
    if (p < 0) {
        p = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
        __atomic_store_n(&perm, p, __ATOMIC_RELEASE);
    }
    return p;
#else
    return 0; /* no known way to be granted the tile state: not used */
#endif
}
#endif
#endif

static int cpu_has(const char *isa)
{
#if defined(XATTN_HAVE_X86_KERNELS) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (!strcmp(isa, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    if (!strcmp(isa, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("fma");
#endif
#if defined(XATTN_HAVE_BF16_KERNELS)
    if (!strcmp(isa, "avx512bf16")) return cpu_has("avx512") && has_avx512bf16();
    if (!strcmp(isa, "amx")) return cpu_has("avx512bf16") && has_amx_bf16();
#endif
#if defined(XATTN_HAVE_NEON_KERNELS)
    /* Advanced SIMD is part of every AArch64 CPU; Linux still reports it (HWCAP_ASIMD, bit 1) */
    if (!strcmp(isa, "neon")) {
#if defined(__linux__)
        return (getauxval(AT_HWCAP) & (1UL << 1)) != 0;
#else
        return 1;
#endif
    }
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
#if defined(XATTN_HAVE_BF16_KERNELS)
    if (!strcmp(name, "avx512bf16") && cpu_has("avx512bf16")) return &xa_kernels_avx512bf16;
    if (!strcmp(name, "amx") && cpu_has("amx")) return &xa_kernels_amx;
#endif
#if defined(XATTN_HAVE_NEON_KERNELS)
    if (!strcmp(name, "neon") && cpu_has("neon")) return &xa_kernels_neon;
#endif
    return NULL;
}

/* Every kernel set any build may have, the best first (scalar, always present, last). */
static const char *const SETS[] = {"amx", "avx512bf16", "avx512", "avx2", "neon", "scalar"};

int xa_kern_known(const char *name)
{
    for (size_t i = 0; i < sizeof SETS / sizeof SETS[0]; i++)
        if (!strcmp(name, SETS[i])) return 1;
    return 0;
}

const xa_kernels *xa_kern_best(void)
{
    static const xa_kernels *best;
    const xa_kernels *k = __atomic_load_n(&best, __ATOMIC_ACQUIRE);
    if (k) return k;
    for (size_t i = 0; !k; i++) k = xa_kern_by_name(SETS[i]);
    __atomic_store_n(&best, k, __ATOMIC_RELEASE);
    return k;
}
