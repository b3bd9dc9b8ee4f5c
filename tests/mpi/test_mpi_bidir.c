/* xattn_bidir_attention_dist and its backward against xattn_bidir_attention and
 * xattn_bidir_attention_backward of the whole problem: random shapes and per-rank lengths (0 and
 * 1 included), talking heads, masks on both sides (fully masked rows and columns included),
 * rel_pos_bias (full and broadcast), scales, the forward's lse given or recomputed. Run under
 * mpirun -np 1..4. */
#include "mpitest.h"

#define FWD_TOL 2e-5
#define BWD_TOL 1e-4

static double worst_fwd, worst_bwd;

static uint8_t *keep_vec(int64_t n, uint64_t *rng)
{
    uint8_t *m = malloc((size_t)n + 1);
    for (int64_t x = 0; x < n; x++) m[x] = mt_int(rng, 0, 3) > 0;
    return m;
}

/* rows [r0, r0 + n) of a (B, N) keep vector */
static uint8_t *keep_rows(const uint8_t *m, int64_t B, int64_t N, int64_t r0, int64_t n)
{
    uint8_t *y = malloc((size_t)(B * n) + 1);
    for (int64_t b = 0; b < B; b++) memcpy(y + b * n, m + b * N + r0, (size_t)n);
    return y;
}

static xattn_ctx *ctx;

static void run_case(uint64_t *rng, int verbose, int64_t maxlen)
{
    int64_t Il[8], Jl[8];
    mt_lengths(rng, Il, maxlen);
    mt_lengths(rng, Jl, maxlen);
    int64_t I = 0, J = 0;
    for (int r = 0; r < mt_size; r++) I += Il[r], J += Jl[r];
    const int64_t B = mt_int(rng, 1, 2), H = mt_int(rng, 1, 3), dh = mt_int(rng, 1, 10);
    const int talk = (int)mt_int(rng, 0, 1), mask_on = (int)mt_int(rng, 0, 1),
              cmask_on = (int)mt_int(rng, 0, 1), bias_kind = (int)mt_int(rng, 0, 2);
    const int has_scale = (int)mt_int(rng, 0, 1), lse_given = (int)mt_int(rng, 0, 2) > 0;
    const float scale = (float)mt_int(rng, 1, 20) / 10.0f;
    float *qk = mt_rand(B * H * I * dh, -1, 1, rng), *v = mt_rand(B * H * I * dh, -1, 1, rng);
    float *cqk = mt_rand(B * H * J * dh, -1, 1, rng), *cv = mt_rand(B * H * J * dh, -1, 1, rng);
    float *dout = mt_rand(B * H * I * dh, -1, 1, rng), *dcout = mt_rand(B * H * J * dh, -1, 1, rng);
    float *tk = mt_rand(H * H, -1, 1, rng), *ctk = mt_rand(H * H, -1, 1, rng);
    uint8_t *mask = mask_on ? keep_vec(B * I, rng) : NULL;
    uint8_t *cmask = cmask_on ? keep_vec(B * J, rng) : NULL;
    if (mask && I && mt_int(rng, 0, 1)) memset(mask, 0, (size_t)I); /* b = 0 masked everywhere */
    if (cmask && J && mt_int(rng, 0, 1)) memset(cmask, 0, (size_t)J);
    const int64_t bB = bias_kind == 1 ? H * I * J : 0, bH = I * J;
    float *bias = bias_kind ? mt_rand((bias_kind == 1 ? B : 1) * H * I * J, -2, 2, rng) : NULL;

    xattn_bidir_params p;
    xattn_bidir_init(&p);
    p.B = B, p.H = H, p.I = I, p.J = J, p.dh = dh;
    p.qk = qk, p.qk_sb = H * I * dh, p.qk_sh = I * dh, p.qk_si = dh;
    p.v = v, p.v_sb = H * I * dh, p.v_sh = I * dh, p.v_si = dh;
    p.cqk = cqk, p.cqk_sb = H * J * dh, p.cqk_sh = J * dh, p.cqk_sj = dh;
    p.cv = cv, p.cv_sb = H * J * dh, p.cv_sh = J * dh, p.cv_sj = dh;
    float *out = calloc((size_t)(B * H * I * dh + 1), 4),
          *cout = calloc((size_t)(B * H * J * dh + 1), 4);
    float *lse = calloc((size_t)(B * H * I + 1), 4), *clse = calloc((size_t)(B * H * J + 1), 4);
    p.out = out, p.o_sb = H * I * dh, p.o_sh = I * dh, p.o_si = dh;
    p.cout = cout, p.co_sb = H * J * dh, p.co_sh = J * dh, p.co_sj = dh;
    p.has_scale = has_scale, p.scale = scale;
    p.mask = mask, p.mask_sb = I, p.cmask = cmask, p.cmask_sb = J;
    p.bias = bias, p.bias_sb = bB, p.bias_sh = bH;
    if (talk) p.talk = tk, p.ctalk = ctk;
    p.lse = lse, p.clse = clse;
    CHECK_OK(xattn_bidir_attention(&p));
    float *dqk = calloc((size_t)(B * H * I * dh + 1), 4),
          *dv = calloc((size_t)(B * H * I * dh + 1), 4);
    float *dcqk = calloc((size_t)(B * H * J * dh + 1), 4),
          *dcv = calloc((size_t)(B * H * J * dh + 1), 4);
    float *dbias = calloc((size_t)((bias_kind == 1 ? B : 1) * H * I * J + 1), 4);
    float dT[9] = {0}, dTc[9] = {0};
    xattn_bidir_grads g;
    xattn_bidir_grads_init(&g);
    g.dout = dout, g.do_sb = H * I * dh, g.do_sh = I * dh, g.do_si = dh;
    g.dcout = dcout, g.dco_sb = H * J * dh, g.dco_sh = J * dh, g.dco_sj = dh;
    g.dqk = dqk, g.dqk_sb = H * I * dh, g.dqk_sh = I * dh, g.dqk_si = dh;
    g.dv = dv, g.dv_sb = H * I * dh, g.dv_sh = I * dh, g.dv_si = dh;
    g.dcqk = dcqk, g.dcqk_sb = H * J * dh, g.dcqk_sh = J * dh, g.dcqk_sj = dh;
    g.dcv = dcv, g.dcv_sb = H * J * dh, g.dcv_sh = J * dh, g.dcv_sj = dh;
    if (bias_kind) g.dbias = dbias, g.dbias_sb = bB, g.dbias_sh = bH;
    if (talk) g.dtalk = dT, g.dctalk = dTc;
    if (I && J) CHECK_OK(xattn_bidir_attention_backward(&p, &g));

    /* this rank's rows */
    xattn_shard xs, cs;
    mt_shard(XATTN_LAYOUT_CONTIGUOUS, Il, mt_rank, &xs);
    mt_shard(XATTN_LAYOUT_CONTIGUOUS, Jl, mt_rank, &cs);
    const int64_t In = xs.len[0], Jn = cs.len[0];
    float *qkl = mt_rows(qk, B, H, I, dh, &xs), *vl = mt_rows(v, B, H, I, dh, &xs);
    float *cqkl = mt_rows(cqk, B, H, J, dh, &cs), *cvl = mt_rows(cv, B, H, J, dh, &cs);
    float *dol = mt_rows(dout, B, H, I, dh, &xs), *dcol = mt_rows(dcout, B, H, J, dh, &cs);
    uint8_t *maskl = mask ? keep_rows(mask, B, I, xs.start[0], In) : NULL;
    uint8_t *cmaskl = cmask ? keep_rows(cmask, B, J, cs.start[0], Jn) : NULL;
    float *biasl = bias ? mt_rows(bias, bias_kind == 1 ? B : 1, H, I, J, &xs) : NULL;
    float *outl = calloc((size_t)(B * H * In * dh + 1), 4),
          *coutl = calloc((size_t)(B * H * Jn * dh + 1), 4);
    float *lsel = calloc((size_t)(B * H * In + 1), 4), *clsel = calloc((size_t)(B * H * Jn + 1), 4);
    xattn_bidir_params d = p;
    d.I = In, d.J = Jn;
    d.qk = qkl, d.qk_sb = H * In * dh, d.qk_sh = In * dh;
    d.v = vl, d.v_sb = H * In * dh, d.v_sh = In * dh;
    d.cqk = cqkl, d.cqk_sb = H * Jn * dh, d.cqk_sh = Jn * dh;
    d.cv = cvl, d.cv_sb = H * Jn * dh, d.cv_sh = Jn * dh;
    d.out = outl, d.o_sb = H * In * dh, d.o_sh = In * dh;
    d.cout = coutl, d.co_sb = H * Jn * dh, d.co_sh = Jn * dh;
    d.mask = maskl, d.mask_sb = In, d.cmask = cmaskl, d.cmask_sb = Jn;
    d.bias = biasl, d.bias_sb = bias_kind == 1 ? H * In * J : 0, d.bias_sh = In * J;
    d.lse = lsel, d.clse = clsel;
    CHECK_OK(xattn_bidir_attention_dist(ctx, &d));
    float *outr = mt_rows(out, B, H, I, dh, &xs), *coutr = mt_rows(cout, B, H, J, dh, &cs);
    float *lser = mt_rows(lse, B, H, I, 1, &xs), *clser = mt_rows(clse, B, H, J, 1, &cs);
    double ef = mt_err(outl, outr, B * H * In * dh);
    ef = mt_max(ef, mt_err(coutl, coutr, B * H * Jn * dh));
    ef = mt_max(ef, mt_err(lsel, lser, B * H * In));
    ef = mt_max(ef, mt_err(clsel, clser, B * H * Jn));
    if (getenv("XATTN_TEST_VERBOSE") && ef > FWD_TOL) {
        fprintf(stderr, "rank %d: out %.2e cout %.2e lse %.2e clse %.2e\n", mt_rank,
                mt_err(outl, outr, B * H * In * dh), mt_err(coutl, coutr, B * H * Jn * dh),
                mt_err(lsel, lser, B * H * In), mt_err(clsel, clser, B * H * Jn));
        for (int64_t x = 0; x < B * H * In; x++) fprintf(stderr, " lse %g %g\n", lsel[x], lser[x]);
        for (int64_t x = 0; x < B * H * Jn; x++)
            fprintf(stderr, " clse %g %g\n", clsel[x], clser[x]);
    }
    ef = mt_max_all(ef);
    CHECK(ef <= FWD_TOL);
    if (ef > worst_fwd) worst_fwd = ef;

    double eb = 0.0;
    if (I && J) { /* the reference's backward needs both sequences */
        float *dqkl = calloc((size_t)(B * H * In * dh + 1), 4),
              *dvl = calloc((size_t)(B * H * In * dh + 1), 4);
        float *dcqkl = calloc((size_t)(B * H * Jn * dh + 1), 4),
              *dcvl = calloc((size_t)(B * H * Jn * dh + 1), 4);
        float *dbl = calloc((size_t)((bias_kind == 1 ? B : 1) * H * In * J + 1), 4);
        float dTl[9] = {0}, dTcl[9] = {0};
        xattn_bidir_grads gl = g;
        gl.dout = dol, gl.do_sb = H * In * dh, gl.do_sh = In * dh;
        gl.dcout = dcol, gl.dco_sb = H * Jn * dh, gl.dco_sh = Jn * dh;
        gl.dqk = dqkl, gl.dqk_sb = H * In * dh, gl.dqk_sh = In * dh;
        gl.dv = dvl, gl.dv_sb = H * In * dh, gl.dv_sh = In * dh;
        gl.dcqk = dcqkl, gl.dcqk_sb = H * Jn * dh, gl.dcqk_sh = Jn * dh;
        gl.dcv = dcvl, gl.dcv_sb = H * Jn * dh, gl.dcv_sh = Jn * dh;
        if (bias_kind)
            gl.dbias = dbl, gl.dbias_sb = bias_kind == 1 ? H * In * J : 0, gl.dbias_sh = In * J;
        if (talk) gl.dtalk = dTl, gl.dctalk = dTcl;
        if (!lse_given) d.lse = d.clse = NULL;
        CHECK_OK(xattn_bidir_attention_backward_dist(ctx, &d, &gl));
        { /* again on 3 threads: the same bits (the tasks come from the problem, not the count) */
            const int64_t nx = B * H * In * dh, nc = B * H * Jn * dh;
            const int64_t nb = (bias_kind == 1 ? B : 1) * H * In * J;
            float *t = calloc((size_t)(2 * nx + 2 * nc + nb + 18 + 1), 4);
            xattn_bidir_grads g3 = gl;
            g3.dqk = t, g3.dv = t + nx, g3.dcqk = t + 2 * nx, g3.dcv = t + 2 * nx + nc;
            if (bias_kind) g3.dbias = t + 2 * nx + 2 * nc;
            if (talk) g3.dtalk = t + 2 * nx + 2 * nc + nb, g3.dctalk = g3.dtalk + 9;
            CHECK_OK(xattn_ctx_set_threads(ctx, 3));
            CHECK_OK(xattn_bidir_attention_backward_dist(ctx, &d, &g3));
            CHECK_OK(xattn_ctx_set_threads(ctx, 1));
            CHECK(!memcmp(g3.dqk, gl.dqk, sizeof(float) * (size_t)nx) &&
                  !memcmp(g3.dv, gl.dv, sizeof(float) * (size_t)nx) &&
                  !memcmp(g3.dcqk, gl.dcqk, sizeof(float) * (size_t)nc) &&
                  !memcmp(g3.dcv, gl.dcv, sizeof(float) * (size_t)nc));
            if (bias_kind) CHECK(!memcmp(g3.dbias, gl.dbias, sizeof(float) * (size_t)nb));
            if (talk)
                CHECK(!memcmp(g3.dtalk, gl.dtalk, sizeof(float) * 9) &&
                      !memcmp(g3.dctalk, gl.dctalk, sizeof(float) * 9));
            free(t);
        }
        float *dqkr = mt_rows(dqk, B, H, I, dh, &xs), *dvr = mt_rows(dv, B, H, I, dh, &xs);
        float *dcqkr = mt_rows(dcqk, B, H, J, dh, &cs), *dcvr = mt_rows(dcv, B, H, J, dh, &cs);
        float *dbr = bias ? mt_rows(dbias, bias_kind == 1 ? B : 1, H, I, J, &xs) : NULL;
        double e[7] = {mt_err(dqkl, dqkr, B * H * In * dh),
                       mt_err(dvl, dvr, B * H * In * dh),
                       mt_err(dcqkl, dcqkr, B * H * Jn * dh),
                       mt_err(dcvl, dcvr, B * H * Jn * dh),
                       bias_kind == 1 ? mt_err(dbl, dbr, B * H * In * J) : 0.0,
                       talk ? mt_err(dTl, dT, H * H) : 0.0,
                       talk ? mt_err(dTcl, dTc, H * H) : 0.0};
        /* a broadcast dbias is summed over b on every rank's own rows */
        if (bias_kind == 2) e[4] = mt_err(dbl, dbr, H * In * J);
        for (int x = 0; x < 7; x++) eb = mt_max(eb, e[x]);
        if (verbose && eb > BWD_TOL)
            fprintf(stderr,
                    "rank %d: dqk %.2e dv %.2e dcqk %.2e dcv %.2e dbias %.2e dT %.2e dTc %.2e\n",
                    mt_rank, e[0], e[1], e[2], e[3], e[4], e[5], e[6]);
        free(dqkl), free(dvl), free(dcqkl), free(dcvl), free(dbl);
        free(dqkr), free(dvr), free(dcqkr), free(dcvr), free(dbr);
    }
    eb = mt_max_all(eb);
    CHECK(eb <= BWD_TOL);
    if (eb > worst_bwd) worst_bwd = eb;
    if ((verbose || ef > FWD_TOL || eb > BWD_TOL) && mt_rank == 0)
        printf("  B=%lld H=%lld I=%lld J=%lld dh=%lld talk=%d mask=%d cmask=%d bias=%d scale=%g "
               "lse=%d: fwd %.2e bwd %.2e\n",
               (long long)B, (long long)H, (long long)I, (long long)J, (long long)dh, talk, mask_on,
               cmask_on, bias_kind, has_scale ? scale : -1.0, lse_given, ef, eb);
    free(qk), free(v), free(cqk), free(cv), free(dout), free(dcout), free(tk), free(ctk);
    free(mask), free(cmask), free(bias), free(out), free(cout), free(lse), free(clse);
    free(dqk), free(dv), free(dcqk), free(dcv), free(dbias);
    free(qkl), free(vl), free(cqkl), free(cvl), free(dol), free(dcol), free(maskl), free(cmaskl);
    free(biasl), free(outl), free(coutl), free(lsel), free(clsel), free(outr), free(coutr);
    free(lser), free(clser);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &mt_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mt_size);
    xattn_set_threads(1);
    CHECK_OK(xattn_ctx_new(&ctx)); /* a context of its own, freed with its communicator */
    CHECK_OK(xattn_ctx_set_comm(ctx, MPI_COMM_WORLD));
    CHECK(xattn_ctx_get_comm(ctx) == MPI_COMM_WORLD && xattn_ctx_get_comm(NULL) == MPI_COMM_NULL);
    uint64_t rng = 0xb1d1ULL + (uint64_t)mt_size;
    const int ncase = argc > 1 ? atoi(argv[1]) : 100;
    /* every tenth case has longer shards (several tiles per block) */
    for (int c = 0; c < ncase; c++)
        run_case(&rng, getenv("XATTN_TEST_VERBOSE") != NULL, c % 10 == 9 ? 80 : 9);
    if (mt_rank == 0)
        printf("largest error: forward %.3e (tolerance %.0e), backward %.3e (tolerance %.0e)\n",
               worst_fwd, FWD_TOL, worst_bwd, BWD_TOL);
    xattn_ctx_free(ctx);
    int rc = mt_finish("test_mpi_bidir");
    MPI_Finalize();
    return rc;
}
