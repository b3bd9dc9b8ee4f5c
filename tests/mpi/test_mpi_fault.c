/* Faults: one rank's bad argument makes every rank return the error, naming that rank and the
 * cause, never a hang (an alarm ends the test if a call waits); a correct call afterwards works
 * (no message of the failed call is left in flight). Run under mpirun -np 1..4. */
#include "mpitest.h"

#include <signal.h>
#include <unistd.h>

/* Whether the last error names rank r and contains `cause`. */
static int names(int r, const char *cause)
{
    char want[32];
    snprintf(want, sizeof want, "rank %d:", r);
    const char *e = xattn_last_error();
    int ok = strstr(e, want) != NULL && strstr(e, cause) != NULL;
    if (!ok)
        fprintf(stderr, "rank %d: message \"%s\" (wanted \"%s\" and \"%s\")\n", mt_rank, e, want,
                cause);
    return ok;
}

/* A small self-attention problem: each rank 3 query and 2 key rows (zigzag: its share of 3R). */
typedef struct small {
    float q[2 * 5 * 8], k[2 * 5 * 8], v[2 * 5 * 8], out[2 * 5 * 8], dout[2 * 5 * 8];
    float dq[2 * 4 * 8], dk[2 * 4 * 8], dv[2 * 4 * 8];
    xattn_sdpa_params p;
    xattn_sdpa_grads g;
} small;

static void small_init(small *s, int64_t I, int64_t J)
{
    uint64_t rng = 7 + (uint64_t)mt_rank;
    tu_fill_uniform(s->q, 80, -1, 1, &rng);
    tu_fill_uniform(s->k, 80, -1, 1, &rng);
    tu_fill_uniform(s->v, 80, -1, 1, &rng);
    tu_fill_uniform(s->dout, 80, -1, 1, &rng);
    xattn_sdpa_init(&s->p);
    xattn_sdpa_params *p = &s->p;
    p->B = 2, p->H = 1, p->I = I, p->J = J, p->dh = 8, p->dv = 8;
    p->q = s->q, p->q_sb = 4 * 8, p->q_si = 8;
    p->k = s->k, p->k_sb = 4 * 8, p->k_sj = 8;
    p->v = s->v, p->v_sb = 4 * 8, p->v_sj = 8;
    p->out = s->out, p->o_sb = 4 * 8, p->o_si = 8;
    xattn_sdpa_grads_init(&s->g);
    xattn_sdpa_grads *g = &s->g;
    g->dout = s->dout, g->do_sb = 32, g->do_si = 8;
    g->dq = s->dq, g->dq_sb = 32, g->dq_si = 8;
    g->dk = s->dk, g->dk_sb = 32, g->dk_sj = 8;
    g->dv = s->dv, g->dv_sb = 32, g->dv_sj = 8;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &mt_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mt_size);
    alarm(60); /* a hang fails the test */
    xattn_set_threads(1);
    const int last = mt_size - 1;
    small s;

    /* no communicator: a local argument error on every rank */
    small_init(&s, 3, 2);
    CHECK_FAIL(xattn_sdpa_dist(NULL, &s.p, XATTN_LAYOUT_CONTIGUOUS), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "communicator") != NULL);
    CHECK_OK(xattn_ctx_set_comm(NULL, MPI_COMM_WORLD));

    /* the last rank passes q = NULL */
    small_init(&s, 3, 2);
    if (mt_rank == last) s.p.q = NULL;
    CHECK_FAIL(xattn_sdpa_dist(NULL, &s.p, XATTN_LAYOUT_CONTIGUOUS), XATTN_ERR_ARG);
    CHECK(names(last, "q or out is NULL"));

    /* rank 0 passes another head size: every rank sees the disagreement (valid alone) */
    small_init(&s, 3, 2);
    if (mt_rank == 0) s.p.dh = 4;
    xattn_status st = xattn_sdpa_dist(NULL, &s.p, XATTN_LAYOUT_CONTIGUOUS);
    if (mt_size > 1)
        CHECK(st == XATTN_ERR_ARG && strstr(xattn_last_error(), "dh = ") != NULL);
    else
        CHECK(st == XATTN_OK);

    /* zigzag with local lengths that are not the zigzag split (the last rank holds 5 rows of
     * 3R + 2: the split gives it 4, or rank 0 gets one row less than it holds) */
    small_init(&s, 3, 2);
    if (mt_rank == last) s.p.I = 5;
    if (mt_size > 1) {
        CHECK_FAIL(xattn_sdpa_dist(NULL, &s.p, XATTN_LAYOUT_ZIGZAG), XATTN_ERR_SHAPE);
        CHECK(strstr(xattn_last_error(), "zigzag") != NULL);
    }

    /* an unknown fill mode on the last rank, in the backward */
    small_init(&s, 3, 2);
    CHECK_OK(xattn_sdpa_dist(NULL, &s.p, XATTN_LAYOUT_CONTIGUOUS));
    if (mt_rank == last) s.p.fill = (xattn_fill)7;
    CHECK_FAIL(xattn_sdpa_backward_dist(NULL, &s.p, &s.g, XATTN_LAYOUT_CONTIGUOUS), XATTN_ERR_ARG);
    CHECK(names(last, "unknown fill mode"));

    /* the bidirectional backward: dout missing on rank 0 */
    small_init(&s, 3, 2);
    xattn_bidir_params b;
    xattn_bidir_init(&b);
    float cout[64];
    b.B = 2, b.H = 1, b.I = 3, b.J = 2, b.dh = 8;
    b.qk = s.q, b.qk_sb = 32, b.qk_si = 8, b.v = s.v, b.v_sb = 32, b.v_si = 8;
    b.cqk = s.k, b.cqk_sb = 32, b.cqk_sj = 8, b.cv = s.v, b.cv_sb = 32, b.cv_sj = 8;
    b.out = s.out, b.o_sb = 32, b.o_si = 8, b.cout = cout, b.co_sb = 32, b.co_sj = 8;
    CHECK_OK(xattn_bidir_attention_dist(NULL, &b));
    xattn_bidir_grads bg;
    xattn_bidir_grads_init(&bg);
    bg.dout = mt_rank == 0 ? NULL : s.dout, bg.do_sb = 32, bg.do_si = 8;
    bg.dcout = s.dout, bg.dco_sb = 32, bg.dco_sj = 8;
    bg.dqk = s.dq, bg.dqk_sb = 32, bg.dqk_si = 8;
    CHECK_FAIL(xattn_bidir_attention_backward_dist(NULL, &b, &bg), XATTN_ERR_ARG);
    CHECK(names(0, "dout is NULL"));

    /* attn maps are refused on the last rank only */
    if (mt_rank == last) b.attn = s.dk;
    CHECK_FAIL(xattn_bidir_attention_dist(NULL, &b), XATTN_ERR_ARG);
    CHECK(names(last, "not available distributed"));
    b.attn = NULL;

    /* after all that, correct calls work */
    small_init(&s, 3, 2);
    CHECK_OK(xattn_sdpa_dist(NULL, &s.p, XATTN_LAYOUT_CONTIGUOUS));
    CHECK_OK(xattn_sdpa_backward_dist(NULL, &s.p, &s.g, XATTN_LAYOUT_CONTIGUOUS));
    bg.dout = s.dout;
    CHECK_OK(xattn_bidir_attention_backward_dist(NULL, &b, &bg));
    CHECK_OK(xattn_ctx_set_comm(NULL, MPI_COMM_NULL));
    int rc = mt_finish("test_mpi_fault");
    MPI_Finalize();
    return rc;
}
