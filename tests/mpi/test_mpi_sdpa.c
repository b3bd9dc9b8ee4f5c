/* xattn_sdpa_dist and xattn_sdpa_backward_dist against xattn_sdpa and xattn_sdpa_backward of
 * the whole problem: random shapes and per-rank lengths (0 and 1 included, totals not divisible
 * by the rank count), both layouts, masks (full and key padding), bias (full and broadcast),
 * causal with offsets, both fills, scales. Run under mpirun -np 1..4. */
#include "mpitest.h"

#include <float.h>

#define FWD_TOL 2e-5
#define BWD_TOL 1e-4

static double worst_fwd, worst_bwd;

typedef struct problem {
    int64_t B, H, I, J, dh, dv;
    xattn_layout layout;
    int mask_kind; /* 0 none, 1 (B, H, I, J), 2 key padding (B, 1, 1, J) */
    int bias_kind; /* 0 none, 1 (B, H, I, J), 2 (1, H, I, J) */
    int causal;
    int64_t offset;
    xattn_fill fill;
    int has_scale;
    float scale;
    int lse_given;  /* backward: the forward's lse, or NULL */
    int dbias_rows; /* backward: dbias per row (1) or summed over rows (si = 0) */
} problem;

static void run_case(uint64_t *rng, int verbose, int64_t maxlen)
{
    problem P;
    memset(&P, 0, sizeof P);
    int64_t Il[8], Jl[8];
    P.layout = mt_int(rng, 0, 2) == 0 ? XATTN_LAYOUT_ZIGZAG : XATTN_LAYOUT_CONTIGUOUS;
    mt_lengths(rng, Il, maxlen);
    mt_lengths(rng, Jl, maxlen);
    if (P.layout == XATTN_LAYOUT_ZIGZAG) { /* the lengths follow from the totals */
        int64_t ti = mt_int(rng, 0, 3 * maxlen), tj = mt_int(rng, 0, 3 * maxlen);
        for (int r = 0; r < mt_size; r++) {
            xattn_shard sh;
            xattn_zigzag_shard(ti, mt_size, r, &sh);
            Il[r] = sh.len[0] + sh.len[1];
            xattn_zigzag_shard(tj, mt_size, r, &sh);
            Jl[r] = sh.len[0] + sh.len[1];
        }
    }
    P.I = P.J = 0;
    for (int r = 0; r < mt_size; r++) P.I += Il[r], P.J += Jl[r];
    if (mt_int(rng, 0, 2) == 0 && P.layout == XATTN_LAYOUT_CONTIGUOUS) { /* self-attention */
        memcpy(Jl, Il, sizeof Il);
        P.J = P.I;
    }
    P.B = mt_int(rng, 1, 2), P.H = mt_int(rng, 1, 3);
    P.dh = mt_int(rng, 1, 12), P.dv = mt_int(rng, 1, 10);
    P.mask_kind = (int)mt_int(rng, 0, 2);
    P.bias_kind = (int)mt_int(rng, 0, 2);
    P.causal = (int)mt_int(rng, 0, 1);
    P.offset = P.causal ? mt_int(rng, -3, 3) + (mt_int(rng, 0, 1) ? P.J - P.I : 0) : 0;
    P.fill = mt_int(rng, 0, 1) ? XATTN_FILL_MIN_FLOAT : XATTN_FILL_NEG_INF;
    P.has_scale = (int)mt_int(rng, 0, 1);
    P.scale = P.has_scale ? (float)mt_int(rng, 1, 20) / 10.0f : 0.0f;
    P.lse_given = (int)mt_int(rng, 0, 3) > 0;
    P.dbias_rows = (int)mt_int(rng, 0, 2) > 0;

    const int64_t B = P.B, H = P.H, I = P.I, J = P.J, dh = P.dh, dv = P.dv;
    float *q = mt_rand(B * H * I * dh, -1, 1, rng), *k = mt_rand(B * H * J * dh, -1, 1, rng);
    float *v = mt_rand(B * H * J * dv, -1, 1, rng), *dout = mt_rand(B * H * I * dv, -1, 1, rng);
    uint8_t *mask = NULL;
    const int64_t mB = P.mask_kind == 1 ? H * I * J : J, mH = P.mask_kind == 1 ? I * J : 0,
                  mI = P.mask_kind == 1 ? J : 0;
    if (P.mask_kind) {
        int64_t n = P.mask_kind == 1 ? B * H * I * J : B * J;
        mask = malloc((size_t)n + 1);
        for (int64_t x = 0; x < n; x++) mask[x] = mt_int(rng, 0, 3) > 0;
        if (n && mt_int(rng, 0, 1)) /* a fully masked stretch */
            memset(mask, 0, (size_t)(n < J ? n : J));
    }
    float *bias = NULL;
    const int64_t bB = P.bias_kind == 1 ? H * I * J : 0, bH = I * J, bI = J;
    if (P.bias_kind) bias = mt_rand((P.bias_kind == 1 ? B : 1) * H * I * J, -2, 2, rng);

    /* the reference */
    float *out = malloc(sizeof(float) * (size_t)(B * H * I * dv + 1));
    float *lse = malloc(sizeof(float) * (size_t)(B * H * I + 1));
    xattn_sdpa_params p;
    xattn_sdpa_init(&p);
    p.B = B, p.H = H, p.I = I, p.J = J, p.dh = dh, p.dv = dv;
    p.q = q, p.q_sb = H * I * dh, p.q_sh = I * dh, p.q_si = dh;
    p.k = k, p.k_sb = H * J * dh, p.k_sh = J * dh, p.k_sj = dh;
    p.v = v, p.v_sb = H * J * dv, p.v_sh = J * dv, p.v_sj = dv;
    p.out = out, p.o_sb = H * I * dv, p.o_sh = I * dv, p.o_si = dv;
    p.has_scale = P.has_scale, p.scale = P.scale;
    p.mask = mask, p.mask_sb = mB, p.mask_sh = mH, p.mask_si = mI;
    p.bias = bias, p.bias_sb = bB, p.bias_sh = bH, p.bias_si = bI;
    p.causal = P.causal, p.causal_offset = P.offset, p.fill = P.fill;
    p.lse = lse;
    CHECK_OK(xattn_sdpa(&p));
    float *dq = calloc((size_t)(B * H * I * dh + 1), sizeof(float));
    float *dk = calloc((size_t)(B * H * J * dh + 1), sizeof(float));
    float *dvv = calloc((size_t)(B * H * J * dv + 1), sizeof(float));
    const int64_t dbn = P.bias_kind ? (P.dbias_rows ? B * H * I * J : B * H * J) : 0;
    float *dbias = calloc((size_t)(dbn + 1), sizeof(float));
    xattn_sdpa_grads g;
    xattn_sdpa_grads_init(&g);
    g.dout = dout, g.do_sb = H * I * dv, g.do_sh = I * dv, g.do_si = dv;
    g.dq = dq, g.dq_sb = H * I * dh, g.dq_sh = I * dh, g.dq_si = dh;
    g.dk = dk, g.dk_sb = H * J * dh, g.dk_sh = J * dh, g.dk_sj = dh;
    g.dv = dvv, g.dv_sb = H * J * dv, g.dv_sh = J * dv, g.dv_sj = dv;
    if (P.bias_kind) {
        g.dbias = dbias;
        g.dbias_sb = P.dbias_rows ? H * I * J : H * J;
        g.dbias_sh = P.dbias_rows ? I * J : J;
        g.dbias_si = P.dbias_rows ? J : 0;
    }
    CHECK_OK(xattn_sdpa_backward(&p, &g));

    /* this rank's shards */
    xattn_shard qs, ks;
    mt_shard(P.layout, Il, mt_rank, &qs);
    mt_shard(P.layout, Jl, mt_rank, &ks);
    const int64_t In = mt_count(&qs), Jn = mt_count(&ks);
    float *ql = mt_rows(q, B, H, I, dh, &qs), *kl = mt_rows(k, B, H, J, dh, &ks);
    float *vl = mt_rows(v, B, H, J, dv, &ks), *dol = mt_rows(dout, B, H, I, dv, &qs);
    float *outr = mt_rows(out, B, H, I, dv, &qs), *lser = mt_rows(lse, B, H, I, 1, &qs);
    uint8_t *maskl = NULL;
    if (P.mask_kind == 1) { /* the local rows, every column */
        maskl = malloc((size_t)(B * H * In * J) + 1);
        for (int64_t bh = 0; bh < B * H; bh++)
            for (int64_t i = 0; i < In; i++)
                memcpy(maskl + (bh * In + i) * J, mask + (bh * I + mt_pos(&qs, i)) * J, (size_t)J);
    }
    float *biasl = NULL;
    if (P.bias_kind) biasl = mt_rows(bias, P.bias_kind == 1 ? B : 1, H, I, J, &qs);
    float *outl = malloc(sizeof(float) * (size_t)(B * H * In * dv + 1));
    float *lsel = malloc(sizeof(float) * (size_t)(B * H * In + 1));
    xattn_sdpa_params d = p;
    d.I = In, d.J = Jn;
    d.q = ql, d.q_sb = H * In * dh, d.q_sh = In * dh;
    d.k = kl, d.k_sb = H * Jn * dh, d.k_sh = Jn * dh;
    d.v = vl, d.v_sb = H * Jn * dv, d.v_sh = Jn * dv;
    d.out = outl, d.o_sb = H * In * dv, d.o_sh = In * dv;
    if (P.mask_kind == 1) d.mask = maskl, d.mask_sb = H * In * J, d.mask_sh = In * J;
    if (P.bias_kind)
        d.bias = biasl, d.bias_sb = P.bias_kind == 1 ? H * In * J : 0, d.bias_sh = In * J;
    d.lse = lsel;
    CHECK_OK(xattn_sdpa_dist(NULL, &d, P.layout));
    double ef =
        mt_max_all(mt_max(mt_err(outl, outr, B * H * In * dv), mt_err(lsel, lser, B * H * In)));
    CHECK(ef <= FWD_TOL);
    if (ef > worst_fwd) worst_fwd = ef;

    /* backward */
    float *dql = calloc((size_t)(B * H * In * dh + 1), sizeof(float));
    float *dkl = calloc((size_t)(B * H * Jn * dh + 1), sizeof(float));
    float *dvl = calloc((size_t)(B * H * Jn * dv + 1), sizeof(float));
    const int64_t dbl_n = P.bias_kind ? (P.dbias_rows ? B * H * In * J : B * H * J) : 0;
    float *dbl = calloc((size_t)(dbl_n + 1), sizeof(float));
    xattn_sdpa_grads gl = g;
    gl.dout = dol, gl.do_sb = H * In * dv, gl.do_sh = In * dv;
    gl.dq = dql, gl.dq_sb = H * In * dh, gl.dq_sh = In * dh;
    gl.dk = dkl, gl.dk_sb = H * Jn * dh, gl.dk_sh = Jn * dh;
    gl.dv = dvl, gl.dv_sb = H * Jn * dv, gl.dv_sh = Jn * dv;
    if (P.bias_kind) {
        gl.dbias = dbl;
        gl.dbias_sb = P.dbias_rows ? H * In * J : H * J;
        gl.dbias_sh = P.dbias_rows ? In * J : J;
    }
    if (!P.lse_given) d.lse = NULL;
    CHECK_OK(xattn_sdpa_backward_dist(NULL, &d, &gl, P.layout));
    float *dqr = mt_rows(dq, B, H, I, dh, &qs), *dkr = mt_rows(dk, B, H, J, dh, &ks);
    float *dvr = mt_rows(dvv, B, H, J, dv, &ks);
    float *dbr = P.bias_kind && P.dbias_rows ? mt_rows(dbias, B, H, I, J, &qs) : dbias;
    double eb = mt_err(dql, dqr, B * H * In * dh);
    eb = mt_max(eb, mt_err(dkl, dkr, B * H * Jn * dh));
    eb = mt_max(eb, mt_err(dvl, dvr, B * H * Jn * dv));
    if (P.bias_kind) eb = mt_max(eb, mt_err(dbl, dbr, dbl_n));
    if (getenv("XATTN_TEST_VERBOSE") && eb > BWD_TOL)
        fprintf(stderr, "rank %d: dq %.2e dk %.2e dv %.2e dbias %.2e\n", mt_rank,
                mt_err(dql, dqr, B * H * In * dh), mt_err(dkl, dkr, B * H * Jn * dh),
                mt_err(dvl, dvr, B * H * Jn * dv), P.bias_kind ? mt_err(dbl, dbr, dbl_n) : 0.0);
    eb = mt_max_all(eb);
    CHECK(eb <= BWD_TOL);
    if (eb > worst_bwd) worst_bwd = eb;
    if ((verbose || ef > FWD_TOL || eb > BWD_TOL) && mt_rank == 0)
        printf("  B=%lld H=%lld I=%lld J=%lld dh=%lld dv=%lld %s mask=%d bias=%d causal=%d "
               "offset=%lld fill=%s scale=%g lse=%d dbias_rows=%d: fwd %.2e bwd %.2e\n",
               (long long)B, (long long)H, (long long)I, (long long)J, (long long)dh, (long long)dv,
               P.layout ? "zigzag" : "contiguous", P.mask_kind, P.bias_kind, P.causal,
               (long long)P.offset, P.fill ? "-FLT_MAX" : "-inf", P.has_scale ? P.scale : -1.0,
               P.lse_given, P.dbias_rows, ef, eb);
    if (dbr != dbias) free(dbr);
    free(dqr), free(dkr), free(dvr), free(dql), free(dkl), free(dvl), free(dbl);
    free(q), free(k), free(v), free(dout), free(mask), free(bias), free(out), free(lse);
    free(dq), free(dk), free(dvv), free(dbias);
    free(ql), free(kl), free(vl), free(dol), free(outr), free(lser), free(maskl), free(biasl);
    free(outl), free(lsel);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &mt_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mt_size);
    xattn_set_threads(1);
    CHECK_OK(xattn_ctx_set_comm(NULL, MPI_COMM_WORLD));
    CHECK(xattn_ctx_get_comm(NULL) == MPI_COMM_WORLD);
    uint64_t rng = 0x5eed5eedULL + (uint64_t)mt_size;
    const int ncase = argc > 1 ? atoi(argv[1]) : 150;
    /* every tenth case has longer shards (several kernel tiles per pair) */
    for (int c = 0; c < ncase; c++)
        run_case(&rng, getenv("XATTN_TEST_VERBOSE") != NULL, c % 10 == 9 ? 100 : 9);
    if (mt_rank == 0)
        printf("largest error: forward %.3e (tolerance %.0e), backward %.3e (tolerance %.0e)\n",
               worst_fwd, FWD_TOL, worst_bwd, BWD_TOL);
    CHECK_OK(xattn_ctx_set_comm(NULL, MPI_COMM_NULL));
    int rc = mt_finish("test_mpi_sdpa");
    MPI_Finalize();
    return rc;
}
