/*
 * Weights kept in another type (xattn_weights: as stored, float32, bf16, f16, int8).
 *
 * Kernels: every kernel set's 16-bit conversion against the scalar one on all 65536 patterns of
 * both formats; the rounding to bf16 / f16 (xa_f32_to_half) against a brute-force nearest-even
 * search; xa_op_linear_w with 16-bit weights bit for bit equal to the float32 product of the
 * converted matrix (every path of the GEMM: direct, a few rows, a few columns, blocked; bias and
 * accumulation), int8 within float rounding of the float32 product of its dequantised matrix.
 *
 * Modules (every kind with linear weights, on the gradient fixtures and the bidirectional ones):
 * a module loaded with bf16 / f16 weights gives exactly (bit for bit) the outputs of the float32
 * module whose weights hold the same values, so its error against PyTorch is that of float32 on
 * the rounded weights; int8 the same within float rounding. Files stored as BF16 / F16 keep
 * their 16-bit weights by default and give PyTorch's float64 outputs within 2e-5 (1 + |ref|).
 * The error each type adds to the float32 outputs is printed and bounded by its rounding. Saving
 * 16-bit weights writes them as kept; int8 saves, gradients of 16-bit modules, float16 overflow
 * and kinds without linear weights are refused with messages.
 *
 * Compute bf16 (xattn_set_compute): a linear layer equals the float32 product of its operands
 * rounded to bfloat16 (within float32 summation-order rounding) on every kernel set and GEMM
 * path; the attention op equals the float32 kernel on rounded queries, keys and values, bit for
 * bit; modules stay within 32 bf16 unit roundoffs of PyTorch's float64 outputs; gradients are
 * refused.
 */
#include "kernels/kernels.h"
#include "kernels/ops.h"
#include "base/base.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const MODE_NAME[] = {"auto", "f32", "bf16", "f16", "int8"};

/* ---- kernels ------------------------------------------------------------------------------- */

static int same_value(float a, float b)
{
    if (a != a || b != b) return a != a && b != b;
    return !memcmp(&a, &b, sizeof a);
}

static void conversions(void)
{
    static const char *names[] = TU_ISAS;
    uint16_t *h = malloc(65536 * sizeof *h);
    float *want = malloc(65536 * sizeof *want), *got = malloc(65536 * sizeof *got);
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    for (int f16 = 0; f16 <= 1; f16++) {
        for (int i = 0; i < 65536; i++) want[i] = xa_half_to_f32(h[i], f16);
        for (int t = 0; t < TU_N_ISAS; t++) {
            const xa_kernels *kt = xa_kern_by_name(names[t]);
            if (!kt) continue;
            /* odd lengths and offsets: the vector loops and their tails */
            for (int64_t off = 0; off < 65536; off += 4099) {
                const int64_t n = XA_MIN((int64_t)4099, 65536 - off) - (off % 3);
                memset(got + off, 0xff, (size_t)n * sizeof(float));
                kt->cvt_h(h + off, got + off, n, f16);
                int bad = 0;
                for (int64_t i = 0; i < n && !bad; i++)
                    if (!same_value(got[off + i], want[off + i])) {
                        fprintf(stderr, "%s cvt_h(%s) of 0x%04x: %a, wanted %a\n", names[t],
                                f16 ? "f16" : "bf16", (unsigned)(off + i), (double)got[off + i],
                                (double)want[off + i]);
                        bad = 1;
                    }
                CHECK(!bad);
            }
        }
    }
    /* values a reader can check by hand */
    CHECK(xa_half_to_f32(0x3c00, 1) == 1.0f && xa_half_to_f32(0x3f80, 0) == 1.0f);
    CHECK(xa_half_to_f32(0x7bff, 1) == 65504.0f && xa_half_to_f32(0x0001, 1) == 0x1p-24f);
    CHECK(xa_half_to_f32(0x8400, 1) == -0x1p-14f && xa_half_to_f32(0xc000, 0) == -2.0f);
    CHECK(isinf(xa_half_to_f32(0x7c00, 1)) && isnan(xa_half_to_f32(0x7e00, 1)));
    free(h);
    free(want);
    free(got);
}

/* The nearest 16-bit value to x (ties to the even pattern) by bisection over the positive
 * patterns, whose values increase with them; finite max: 0x7f7f (bf16), 0x7bff (f16). */
static uint16_t nearest_half(float x, int f16)
{
    const uint16_t inf = f16 ? 0x7c00 : 0x7f80, maxf = f16 ? 0x7bff : 0x7f7f;
    const uint16_t sign = signbit(x) ? 0x8000 : 0;
    const double a = fabs((double)x);
    if (isnan(x)) return 0xffff; /* any NaN */
    const double top = xa_half_to_f32(maxf, f16), ulp = top - xa_half_to_f32(maxf - 1, f16);
    if (a >= top + ulp / 2) return (uint16_t)(sign | inf); /* at the midpoint: even is inf */
    unsigned lo = 0, hi = maxf; /* value(lo) <= a, find the largest such */
    while (lo < hi) {
        const unsigned mid = (lo + hi + 1) / 2;
        if ((double)xa_half_to_f32((uint16_t)mid, f16) <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    if (lo == maxf) return (uint16_t)(sign | lo);
    const double d0 = a - xa_half_to_f32((uint16_t)lo, f16),
                 d1 = xa_half_to_f32((uint16_t)(lo + 1), f16) - a;
    const unsigned r = d0 < d1 ? lo : d1 < d0 ? lo + 1 : (lo & 1 ? lo + 1 : lo);
    return (uint16_t)(sign | r);
}

static void rounding(void)
{
    uint64_t state = 7;
    int bad = 0;
    for (int i = 0; i < 400000 && bad < 5; i++) {
        float x;
        uint32_t u;
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        u = (uint32_t)(state >> 32);
        if (i % 4 == 1) u = (u & 0x807fffffu) | (0x33000000u + (u % 0x1000000u)); /* near f16 */
        if (i % 4 == 2) u = (u & 0xffff0000u) | 0x8000u;                          /* bf16 tie */
        if (i % 4 == 3) u = (u & 0xffffe000u) | 0x1000u;                          /* f16 tie */
        memcpy(&x, &u, 4);
        for (int f16 = 0; f16 <= 1; f16++) {
            const uint16_t got = xa_f32_to_half(x, f16), want = nearest_half(x, f16);
            const int ok = isnan(x) ? isnan(xa_half_to_f32(got, f16)) : got == want;
            if (!ok) {
                fprintf(stderr, "xa_f32_to_half(%a, %s) = 0x%04x, wanted 0x%04x\n", (double)x,
                        f16 ? "f16" : "bf16", got, want);
                bad++;
            }
        }
    }
    CHECK(bad == 0);
    CHECK(xa_f32_to_half(65504.0f, 1) == 0x7bff && xa_f32_to_half(65519.99f, 1) == 0x7bff);
    CHECK(xa_f32_to_half(65520.0f, 1) == 0x7c00 && xa_f32_to_half(-1e9f, 1) == 0xfc00);
    CHECK(xa_f32_to_half(0x1p-25f, 1) == 0 && xa_f32_to_half(0x1.000002p-25f, 1) == 1);
    CHECK(xa_f32_to_half(1.0f + 0x1p-8f, 0) == 0x3f80); /* tie to even */
    CHECK(xa_f32_to_half(1.0f + 0x1p-8f + 0x1p-23f, 0) == 0x3f81);
}

/* W (N, K) random, kept as dt; the float32 matrix it stands for into Wf. */
static xa_wt make_weights(int dt, int64_t N, int64_t K, uint64_t *st, uint16_t *h, int8_t *q,
                          float *scale, float *Wf)
{
    tu_fill_uniform(Wf, N * K, -1.0f, 1.0f, st);
    if (dt == XA_W_Q8) {
        CHECK(xa_q8_quantize_rows(Wf, N, K, q, scale) == 0);
        for (int64_t r = 0; r < N; r++)
            for (int64_t k = 0; k < K; k++) Wf[r * K + k] = (float)q[r * K + k] * scale[r];
        return (xa_wt){q, scale, XA_W_Q8};
    }
    for (int64_t i = 0; i < N * K; i++) {
        h[i] = xa_f32_to_half(Wf[i], dt == XA_W_F16);
        Wf[i] = xa_half_to_f32(h[i], dt == XA_W_F16);
    }
    return (xa_wt){h, NULL, dt};
}

/* The arrays of one linear problem (M, N, K): x, bias, the weights as float32 and as kept, the
 * outputs; x and the bias filled. */
typedef struct lin_bufs {
    float *x, *b, *Wf, *y, *r, *sc;
    uint16_t *h;
    int8_t *q;
} lin_bufs;

static void lin_alloc(lin_bufs *l, int64_t M, int64_t N, int64_t K, uint64_t *st)
{
    l->x = malloc(sizeof(float) * (size_t)(M * K));
    l->b = malloc(sizeof(float) * (size_t)N);
    l->Wf = malloc(sizeof(float) * (size_t)(N * K));
    l->y = malloc(sizeof(float) * (size_t)(M * N));
    l->r = malloc(sizeof(float) * (size_t)(M * N));
    l->sc = malloc(sizeof(float) * (size_t)N);
    l->h = malloc(sizeof(uint16_t) * (size_t)(N * K));
    l->q = malloc((size_t)(N * K));
    tu_fill_uniform(l->x, M * K, -1.0f, 1.0f, st);
    tu_fill_uniform(l->b, N, -1.0f, 1.0f, st);
}

static void lin_free(lin_bufs *l)
{
    free(l->x), free(l->b), free(l->Wf), free(l->y), free(l->r), free(l->sc), free(l->h);
    free(l->q);
}

static void linear_paths(void)
{
    static const char *names[] = TU_ISAS;
    /* direct (M N K < 32768), a few rows, a few columns, rows of one weight, blocked (several
     * K and N blocks); the last two are left out under an emulator */
    static const int64_t shapes[][3] = {
        {5, 6, 7},    {1, 37, 19},  {3, 300, 129}, {4, 1000, 300}, {7, 3, 50},      {40, 2, 700},
        {8, 130, 65}, {33, 65, 70}, {1, 9000, 1},  {3, 40000, 1},  {100, 257, 513}, {9, 33, 1100}};
    const int n_shapes = (int)(sizeof shapes / sizeof shapes[0]) - (tu_emulated() ? 2 : 0);
    double q8_err = 0;
    for (int t = 0; t < TU_N_ISAS; t++) {
        if (!xa_kern_by_name(names[t])) continue;
        CHECK_OK(xattn_set_isa(names[t]));
        for (int si = 0; si < n_shapes; si++) {
            const int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
            uint64_t st = 11 + (uint64_t)si;
            lin_bufs l;
            lin_alloc(&l, M, N, K, &st);
            float *x = l.x, *b = l.b, *Wf = l.Wf, *y = l.y, *r = l.r;
            for (int dt = XA_W_BF16; dt <= XA_W_Q8; dt++)
                for (int mode = 0; mode < 4; mode++) { /* bias?, accumulate? */
                    const float *bias = mode & 1 ? b : NULL;
                    const int acc = mode >> 1;
                    const xa_wt w = make_weights(dt, N, K, &st, l.h, l.q, l.sc, Wf);
                    tu_fill_uniform(y, M * N, -1.0f, 1.0f, &st);
                    memcpy(r, y, sizeof(float) * (size_t)(M * N));
                    CHECK_OK(xa_op_linear_w(x, M, K, w, bias, N, y, acc));
                    CHECK_OK(xa_op_linear(x, M, K, Wf, bias, N, r, acc));
                    char what[160];
                    snprintf(what, sizeof what, "%s linear %s M%lld N%lld K%lld bias %d acc %d",
                             names[t], MODE_NAME[dt + 1], (long long)M, (long long)N, (long long)K,
                             mode & 1, acc);
                    if (dt != XA_W_Q8) {
                        const int same = !memcmp(y, r, sizeof(float) * (size_t)(M * N));
                        if (!same) fprintf(stderr, "%s: not the float32 result\n", what);
                        CHECK(same);
                    } else { /* the scale applied after the sum in the int8 kernels */
                        q8_err = tu_max(q8_err, tu_check_close(what, y, r, M * N, 1e-5));
                    }
                }
            lin_free(&l);
        }
    }
    CHECK_OK(xattn_set_isa("auto"));
    printf("int8 linear against float32 on the dequantised weights: max rel error %.2e\n", q8_err);
}

/* ---- compute bf16 ---------------------------------------------------------------------------- */

static void round_all(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = xa_round_bf16(x[i]);
}

static void compute_linear(void)
{
    static const char *names[] = TU_ISAS;
    static const int64_t shapes[][3] = {{5, 6, 7},  {1, 37, 19},  {3, 300, 129},  {4, 600, 300},
                                        {7, 3, 50}, {33, 65, 70}, {100, 257, 513}};
    double worst = 0;
    for (int t = 0; t < TU_N_ISAS; t++) {
        if (!xa_kern_by_name(names[t])) continue;
        CHECK_OK(xattn_set_isa(names[t]));
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
            uint64_t st = 5 + (uint64_t)si;
            lin_bufs l;
            lin_alloc(&l, M, N, K, &st);
            float *x = l.x, *b = l.b, *Wf = l.Wf, *y = l.y, *r = l.r;
            float *xr = malloc(sizeof(float) * (size_t)(M * K));
            memcpy(xr, x, sizeof(float) * (size_t)(M * K));
            round_all(xr, M * K);
            for (int dt = XA_W_F32; dt <= XA_W_Q8; dt++) {
                xa_wt w;
                if (dt == XA_W_F32) {
                    tu_fill_uniform(Wf, N * K, -1.0f, 1.0f, &st);
                    w = xa_wt_f32(Wf);
                } else {
                    w = make_weights(dt, N, K, &st, l.h, l.q, l.sc, Wf);
                }
                tu_fill_uniform(y, M * N, -1.0f, 1.0f, &st);
                memcpy(r, y, sizeof(float) * (size_t)(M * N));
                CHECK_OK(xattn_set_compute(XATTN_COMPUTE_BF16));
                CHECK_OK(xa_op_linear_w(x, M, K, w, b, N, y, 1));
                CHECK_OK(xattn_set_compute(XATTN_COMPUTE_F32));
                float *wr = malloc(sizeof(float) * (size_t)(N * K));
                memcpy(wr, Wf, sizeof(float) * (size_t)(N * K));
                round_all(wr, N * K);
                CHECK_OK(xa_op_linear(xr, M, K, wr, b, N, r, 1));
                free(wr);
                char what[160];
                snprintf(what, sizeof what, "%s compute bf16 linear %s M%lld N%lld K%lld", names[t],
                         MODE_NAME[dt + 1], (long long)M, (long long)N, (long long)K);
                /* the same products, summed by the two paths in other orders (about
                 * sqrt(K) 2^-24 of the sum of |x w|, measured below 2e-6) */
                worst = tu_max(worst, tu_check_close(what, y, r, M * N, 1e-5));
            }
            free(xr);
            lin_free(&l);
        }
    }
    CHECK_OK(xattn_set_isa("auto"));
    printf("compute bf16 linear against float32 on rounded operands: max rel error %.2e\n", worst);
}

/* The attention op in bf16 is the float32 kernel on rounded q, k, v: the same bits, on every
 * kernel set without bf16 dot products; on one with them (avx512bf16, amx) the logits sum the
 * same exact products in another order, so within float32 summation error. */
static void compute_attention(void)
{
    enum { B = 2, H = 3, I = 37, J = 29, DH = 16, DV = 8, LD = 64 };
    static const char *names[] = TU_ISAS;
    float *q0 = malloc(sizeof(float) * B * I * LD), *k0 = malloc(sizeof(float) * B * J * LD);
    float *v0 = malloc(sizeof(float) * B * J * LD);
    float *q = malloc(sizeof(float) * B * I * LD), *k = malloc(sizeof(float) * B * J * LD);
    float *v = malloc(sizeof(float) * B * J * LD);
    float *o1 = calloc(B * I * LD, sizeof(float)), *o2 = calloc(B * I * LD, sizeof(float));
    float *l1 = calloc(B * H * I, sizeof(float)), *l2 = calloc(B * H * I, sizeof(float));
    uint64_t st = 3;
    tu_fill_uniform(q0, B * I * LD, -2.0f, 2.0f, &st);
    tu_fill_uniform(k0, B * J * LD, -2.0f, 2.0f, &st);
    tu_fill_uniform(v0, B * J * LD, -2.0f, 2.0f, &st);
    for (int t = 0; t < TU_N_ISAS; t++) {
        const xa_kernels *kt = xa_kern_by_name(names[t]);
        if (!kt) continue;
        CHECK_OK(xattn_set_isa(names[t]));
        memcpy(q, q0, sizeof(float) * B * I * LD);
        memcpy(k, k0, sizeof(float) * B * J * LD);
        memcpy(v, v0, sizeof(float) * B * J * LD);
        xa_attn a;
        memset(&a, 0, sizeof a);
        /* heads side by side in rows of LD values (as modules read projections in place) */
        a.B = B, a.H = H, a.I = I, a.J = J, a.dh = DH, a.dv = DV;
        a.q = q, a.q_sb = I * LD, a.q_sh = DH, a.q_si = LD;
        a.k = k, a.k_sb = J * LD, a.k_sh = DH, a.k_sj = LD;
        a.v = v, a.v_sb = J * LD, a.v_sh = DV, a.v_sj = LD;
        a.out = o1, a.o_sb = I * LD, a.o_sh = DV, a.o_si = LD;
        a.scale = 0.25f, a.fill = XATTN_FILL_NEG_INF, a.causal = 1, a.causal_offset = 3;
        a.lse = l1, a.fn = "test";
        CHECK_OK(xattn_set_compute(XATTN_COMPUTE_BF16));
        CHECK_OK(xa_op_attention(&a));
        CHECK_OK(xattn_set_compute(XATTN_COMPUTE_F32));
        round_all(q, B * I * LD);
        round_all(k, B * J * LD);
        round_all(v, B * J * LD);
        a.out = o2, a.lse = l2;
        CHECK_OK(xa_op_attention(&a));
        char what[96];
        snprintf(what, sizeof what, "%s compute bf16 attention", names[t]);
        if (!kt->ukr_bf16) {
            const int same = !memcmp(o1, o2, sizeof(float) * B * I * LD) &&
                             !memcmp(l1, l2, sizeof(float) * B * H * I);
            if (!same) fprintf(stderr, "%s: not the float32 kernel's bits\n", what);
            CHECK(same);
        } else {
            tu_check_close(what, o1, o2, B * I * LD, 2e-5);
            tu_check_close(what, l1, l2, B * H * I, 2e-5);
        }
    }
    CHECK_OK(xattn_set_isa("auto"));
    free(q0), free(k0), free(v0), free(q), free(k), free(v), free(o1), free(o2), free(l1), free(l2);
}

/* ---- modules ------------------------------------------------------------------------------- */

typedef struct run_io {
    xattn_tensor in[8], out[4];
    xattn_array arr[8];
    size_t n_in, n_out;
} run_io;

/* The inputs input.NAME of a fixture (masks as BOOL) and the kind's required outputs. */
static int load_io(xattn_safetensors *st, const xattn_module *m, run_io *io)
{
    static uint8_t causal = 1;
    memset(io, 0, sizeof *io);
    for (size_t i = 0; i < xattn_st_count(st) && io->n_in < 7; i++) {
        const char *name = xattn_st_name(st, i);
        if (strncmp(name, "input.", 6)) continue;
        xattn_dtype dt;
        int nd;
        int64_t sh[XATTN_MAX_DIMS];
        CHECK_OK(xattn_st_info(st, i, &dt, &nd, sh));
        const xattn_dtype want = dt == XATTN_BOOL ? XATTN_BOOL : XATTN_F32;
        xattn_array *a = &io->arr[io->n_in];
        CHECK_OK(xattn_st_get(st, name, want, a));
        io->in[io->n_in] = (xattn_tensor){name + 6, want, a->ndim, {0}, a->data};
        memcpy(io->in[io->n_in].shape, a->shape, sizeof a->shape);
        io->n_in++;
    }
    const char *ic = xattn_st_meta_get(st, "is_causal");
    if (ic && !strcmp(ic, "True"))
        io->in[io->n_in++] = (xattn_tensor){"is_causal", XATTN_BOOL, 0, {0}, &causal};
    for (size_t k = 0; k < xattn_module_output_count(m) && io->n_out < 4; k++) {
        xattn_io_desc d;
        CHECK_OK(xattn_module_output(m, k, &d));
        if (!d.optional) io->out[io->n_out++].name = d.name;
    }
    if (xattn_module_plan(m, io->in, io->n_in, io->out, io->n_out)) {
        fprintf(stderr, "plan: %s\n", xattn_last_error());
        return -1;
    }
    for (size_t k = 0; k < io->n_out; k++) {
        int64_t n = 1;
        for (int d = 0; d < io->out[k].ndim; d++) n *= io->out[k].shape[d];
        io->out[k].data = calloc((size_t)(n ? n : 1), sizeof(float));
    }
    return 0;
}

static int64_t out_numel(const xattn_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

static void free_io(run_io *io)
{
    for (size_t k = 0; k < io->n_in; k++)
        if (strcmp(io->in[k].name, "is_causal")) xattn_array_free(&io->arr[k]);
    for (size_t k = 0; k < io->n_out; k++) free(io->out[k].data);
}

static const char *cur_file = "";

static xattn_status open_as(xattn_safetensors *st, int weights, xattn_module **m)
{
    xattn_open_opts oo;
    memset(&oo, 0, sizeof oo);
    oo.prefix = "";
    oo.kind = xattn_st_meta_get(st, "kind");
    if (oo.kind && !strcmp(oo.kind, "transformer")) oo.kind = "bidir-transformer";
    if (!strncmp(cur_file, "bidir_", 6)) oo.kind = NULL; /* its "kind" is the case's */
    xattn_option opt = {"heads", xattn_st_meta_get(st, "expected_heads")};
    if (opt.value) {
        oo.options = &opt;
        oo.n_options = 1;
    }
    oo.weights = weights;
    return xattn_module_open(st, &oo, m);
}

/* The outputs of `file` with the given weights into outs (fresh arrays); 0 on success. */
static int forward(xattn_safetensors *st, const xattn_module *m, run_io *io)
{
    if (load_io(st, m, io)) return -1;
    xattn_status s = xattn_module_forward(NULL, m, io->in, io->n_in, io->out, io->n_out);
    if (s) fprintf(stderr, "forward: %s\n", xattn_last_error());
    CHECK(s == XATTN_OK);
    return s ? -1 : 0;
}

static double worst_vs_f32[5];
static int n_against_torch, n_refused; /* checks that must have run */

/* max |a - r| / max |r| (the error against the outputs' scale; NaN stays) */
static double normwise(const float *a, const float *r, int64_t n)
{
    double e = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        e = tu_max(e, fabs((double)a[i] - r[i]));
        m = tu_max(m, fabs((double)r[i]));
    }
    return m > 0 ? e / m : e;
}

static void one_module(const char *file)
{
    xattn_safetensors *st = NULL;
    cur_file = file;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    xattn_module *m32 = NULL;
    CHECK_OK(open_as(st, XATTN_WEIGHTS_F32, &m32));
    if (!m32) {
        fprintf(stderr, "%s: %s\n", file, xattn_last_error());
        xattn_st_close(st);
        return;
    }
    run_io ref;
    if (forward(st, m32, &ref)) goto done32;
    const size_t np = xattn_module_param_count(m32);
    for (int mode = XATTN_WEIGHTS_AUTO; mode <= XATTN_WEIGHTS_INT8; mode++) {
        if (mode == XATTN_WEIGHTS_F32) continue;
        xattn_module *mw = NULL, *same = NULL;
        xattn_status s = open_as(st, mode, &mw);
        if (s == XATTN_ERR_UNSUPPORTED) { /* conv2d, mutual: no linear weights */
            CHECK(strstr(xattn_last_error(), "no linear layers") != NULL);
            CHECK(mode != XATTN_WEIGHTS_AUTO);
            n_refused++;
            continue;
        }
        CHECK_OK(s);
        CHECK_OK(open_as(st, XATTN_WEIGHTS_F32, &same));
        if (!mw || !same) {
            xattn_module_free(mw);
            xattn_module_free(same);
            continue;
        }
        /* the float32 module given the values mw keeps */
        int kept_other = 0;
        for (size_t i = 0; i < np; i++) {
            xattn_param_desc p;
            CHECK_OK(xattn_module_param(same, i, &p));
            const xattn_dtype k = xattn_module_param_kept(mw, i);
            kept_other |= k != XATTN_F32;
            if (p.data) CHECK_OK(xattn_module_param_read(mw, i, p.data));
            if (mode == XATTN_WEIGHTS_BF16) CHECK(k == XATTN_F32 || k == XATTN_BF16);
            if (mode == XATTN_WEIGHTS_INT8) CHECK(k == XATTN_F32 || k == XATTN_I8);
        }
        CHECK(mode == XATTN_WEIGHTS_AUTO || kept_other);
        run_io a, b;
        if (!forward(st, mw, &a) && !forward(st, same, &b)) {
            for (size_t k = 0; k < a.n_out; k++) {
                const int64_t n = out_numel(&a.out[k]);
                char what[256];
                snprintf(what, sizeof what, "%s weights %s: %s", file, MODE_NAME[mode],
                         a.out[k].name);
                if (mode != XATTN_WEIGHTS_INT8) {
                    const int eq = !memcmp(a.out[k].data, b.out[k].data, sizeof(float) * n);
                    if (!eq) fprintf(stderr, "%s: not the float32 module's bits\n", what);
                    CHECK(eq);
                } else {
                    tu_check_close(what, a.out[k].data, b.out[k].data, n, 1e-5);
                }
                /* what the type adds to float32, against the outputs' scale: at most 32 times
                 * its rounding of a weight (unit roundoff 2^-9 bf16, 2^-11 f16; int8 half a
                 * step, a 254th of the row's largest weight, about 2^-8) as the layers and
                 * softmaxes carry it (the fixtures measure up to 10 times) */
                const double e = normwise(a.out[k].data, ref.out[k].data, n);
                const double bound = mode == XATTN_WEIGHTS_F16    ? 0x1p-6
                                     : mode == XATTN_WEIGHTS_INT8 ? 0x1p-3
                                                                  : 0x1p-4;
                if (e > bound) fprintf(stderr, "%s: %.3g from float32 > %.3g\n", what, e, bound);
                CHECK(e <= bound);
                worst_vs_f32[mode] = tu_max(worst_vs_f32[mode], e);
            }
            /* as stored: a 16-bit file is PyTorch's module on those weights */
            for (size_t k = 0; mode == XATTN_WEIGHTS_AUTO && k < a.n_out; k++) {
                char key[96];
                snprintf(key, sizeof key, "expected.%s", a.out[k].name);
                if (xattn_st_find(st, key) < 0) continue;
                xattn_array r;
                memset(&r, 0, sizeof r);
                const float *want = tu_get_f32(st, key, &r);
                char what[256];
                snprintf(what, sizeof what, "%s as stored against PyTorch: %s", file, key);
                tu_check_close(what, a.out[k].data, want, xattn_array_numel(&r), TU_TOL);
                n_against_torch += kept_other;
                xattn_array_free(&r);
            }
        }
        free_io(&a);
        free_io(&b);
        xattn_module_free(mw);
        xattn_module_free(same);
    }
    free_io(&ref);
done32:
    xattn_module_free(m32);
    xattn_st_close(st);
}

/* Modules in bf16 against PyTorch's float64 outputs: within 32 unit roundoffs (2^-9) against
 * the outputs' scale, and not the float32 result (the mode does something). */
static void compute_modules(void)
{
    static const char *files[] = {"bidir_basic.safetensors", "bidir_all_h8_dh64.safetensors",
                                  "bidir_w_bf16.safetensors", "bidir_tf_bf16.safetensors"};
    double worst = 0;
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        xattn_safetensors *st = NULL;
        cur_file = files[f];
        CHECK_OK(xattn_st_open(tu_fixture(files[f]), &st));
        xattn_module *m = NULL;
        if (st) CHECK_OK(open_as(st, XATTN_WEIGHTS_AUTO, &m));
        if (!m) {
            xattn_st_close(st);
            continue;
        }
        run_io a, b;
        CHECK_OK(xattn_set_compute(XATTN_COMPUTE_BF16));
        const int ok = !forward(st, m, &a);
        /* gradients refuse it */
        xattn_tensor dout = a.out[0];
        CHECK_FAIL(xattn_module_grad(NULL, m, a.in, a.n_in, NULL, 0, &dout, 1, NULL, 0, NULL),
                   XATTN_ERR_UNSUPPORTED);
        CHECK(strstr(xattn_last_error(), "bf16") != NULL);
        CHECK_OK(xattn_set_compute(XATTN_COMPUTE_F32));
        if (ok && !forward(st, m, &b))
            for (size_t k = 0; k < a.n_out; k++) {
                char key[96], what[256];
                snprintf(key, sizeof key, "expected.%s", a.out[k].name);
                if (xattn_st_find(st, key) < 0) continue;
                xattn_array r;
                memset(&r, 0, sizeof r);
                const float *want = tu_get_f32(st, key, &r);
                const int64_t n = xattn_array_numel(&r);
                const double e = normwise(a.out[k].data, want, n);
                snprintf(what, sizeof what, "%s compute bf16: %s", files[f], key);
                if (e > 0x1p-4) fprintf(stderr, "%s: %.3g > 2^-4\n", what, e);
                CHECK(e <= 0x1p-4);
                CHECK(memcmp(a.out[k].data, b.out[k].data, sizeof(float) * n) != 0);
                worst = tu_max(worst, e);
                xattn_array_free(&r);
            }
        free_io(&a);
        free_io(&b);
        xattn_module_free(m);
        xattn_st_close(st);
    }
    printf("modules in compute bf16 against float64: max error %.2e of the outputs' scale\n",
           worst);
    CHECK(worst > 0);
}

/* Saving: 16-bit weights are written as kept (and give the same module back); int8 refused. */
static void saving(void)
{
    const char *file = "bidir_w_f16.safetensors";
    xattn_safetensors *st = NULL, *back = NULL;
    cur_file = file;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    char path[] = "/tmp/xattn_test_weights_XXXXXX";
    const int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) return;
    close(fd);
    xattn_module *m = NULL, *r = NULL, *q = NULL;
    CHECK_OK(open_as(st, XATTN_WEIGHTS_BF16, &m));
    CHECK_OK(xattn_module_save(m, path));
    CHECK_OK(xattn_st_open(path, &back));
    CHECK_OK(open_as(back, XATTN_WEIGHTS_AUTO, &r));
    for (size_t i = 0; m && r && i < xattn_module_param_count(m); i++) {
        xattn_param_desc p;
        CHECK_OK(xattn_module_param(m, i, &p));
        if (xattn_module_param_kept(m, i) == XATTN_F32) continue;
        CHECK(xattn_module_param_kept(r, i) == XATTN_BF16);
        long idx = xattn_st_find(back, p.name);
        xattn_dtype dt = XATTN_F32;
        int nd;
        int64_t sh[XATTN_MAX_DIMS];
        CHECK(idx >= 0 && !xattn_st_info(back, (size_t)idx, &dt, &nd, sh) && dt == XATTN_BF16);
        const int64_t n = tu_param_numel(&p);
        float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
        CHECK_OK(xattn_module_param_read(m, i, x));
        CHECK_OK(xattn_module_param_read(r, i, y));
        CHECK(!memcmp(x, y, sizeof(float) * n));
        free(x);
        free(y);
    }
    CHECK_OK(open_as(st, XATTN_WEIGHTS_INT8, &q));
    CHECK_FAIL(xattn_module_save(q, path), XATTN_ERR_UNSUPPORTED);
    CHECK(strstr(xattn_last_error(), "int8") != NULL);
    xattn_module_free(m);
    xattn_module_free(r);
    xattn_module_free(q);
    xattn_st_close(back);
    xattn_st_close(st);
    remove(path);
}

/* float16 cannot hold 1e5: refused naming the tensor; bf16 can. A bad mode is an error. */
static void refusals(void)
{
    const char *file = "grad_attention_out_dim.safetensors";
    xattn_safetensors *st = NULL;
    cur_file = file;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    /* a copy of the fixture with one weight beyond float16's range */
    xattn_module *m = NULL;
    CHECK_OK(open_as(st, XATTN_WEIGHTS_F32, &m));
    char path[] = "/tmp/xattn_test_weights_XXXXXX";
    const int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    xattn_param_desc p;
    memset(&p, 0, sizeof p);
    const xattn_param_desc *q = m ? tu_param(m, "to_q.weight", &p) : NULL;
    if (q && q->data) q->data[3] = -1e5f;
    if (m) CHECK_OK(xattn_module_save(m, path));
    xattn_safetensors *big = NULL;
    CHECK_OK(xattn_st_open(path, &big));
    xattn_module *h = NULL;
    if (big) {
        CHECK_FAIL(open_as(big, XATTN_WEIGHTS_F16, &h), XATTN_ERR_FORMAT);
        CHECK(strstr(xattn_last_error(), "to_q.weight") && strstr(xattn_last_error(), "65504"));
        CHECK_OK(open_as(big, XATTN_WEIGHTS_BF16, &h));
        xattn_module_free(h);
        h = NULL;
        CHECK_FAIL(open_as(big, 9, &h), XATTN_ERR_ARG);
        CHECK_FAIL(open_as(big, -1, &h), XATTN_ERR_ARG);
        xattn_st_close(big);
    }
    remove(path);
    xattn_module_free(m);
    xattn_st_close(st);
    /* the names */
    CHECK(xattn_weights_parse("bfloat16") == XATTN_WEIGHTS_BF16);
    CHECK(xattn_weights_parse("fp16") == XATTN_WEIGHTS_F16);
    CHECK(xattn_weights_parse("int4") == -1 && strstr(xattn_last_error(), "int4"));
    CHECK(!strcmp(xattn_weights_name(XATTN_WEIGHTS_INT8), "int8") && !xattn_weights_name(7));
}

int main(void)
{
    conversions();
    rounding();
    linear_paths();
    static const char *fixtures[] = {
#include "fixtures/grad_list.inc"
#include "fixtures/grad_interlaced_list.inc"
#include "fixtures/grad_multiview_list.inc"
#include "fixtures/grad_hallo_list.inc"
#include "fixtures/grad_decoder_list.inc"
        "bidir_basic.safetensors", "bidir_all_h8_dh64.safetensors", "bidir_w_bf16.safetensors",
        "bidir_w_f16.safetensors", "bidir_tf_bf16.safetensors",
    };
    const size_t n = sizeof fixtures / sizeof fixtures[0];
    for (size_t f = 0; f < n; f++) one_module(fixtures[f]);
    printf("modules (%zu fixtures) against float32 weights: max rel error as stored %.2e, bf16 "
           "%.2e, f16 %.2e, int8 %.2e\n",
           n, worst_vs_f32[0], worst_vs_f32[2], worst_vs_f32[3], worst_vs_f32[4]);
    CHECK(n_against_torch >= 4); /* bidir_w_bf16, _f16: out, context_out; bidir_tf_bf16 */
    CHECK(n_refused >= 6);       /* conv2d and mutual: bf16, f16, int8 */
    saving();
    refusals();
    compute_linear();
    compute_attention();
    compute_modules();
    return tu_finish("test_weights");
}
