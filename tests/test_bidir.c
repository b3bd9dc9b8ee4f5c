/*
 * M2: xattn_bidir_* (BidirectionalCrossAttention and BidirectionalCrossAttentionTransformer of
 * PyPI bidirectional-cross-attention 0.1.0 / 0.0.x).
 *   1. every fixture of tests/reference/gen_bidir.py (the real package, float64) at threads 1
 *      and 2 and kernel sets auto and scalar: outputs, and the maps where the fixture has them;
 *      each attention fixture run again with the maps requested (two-pass vs materialised
 *      equivalence); sums of the maps (1 without talking heads, sum_h T[g,h] with them);
 *   2. random shapes (B, I, J up to 300, heads, widths, masks with fully masked rows/columns,
 *      biases of every broadcast shape, talking heads, both prenorms, the transformer) built
 *      here as state dicts, against a float64 transcription of the package's forward in C;
 *   3. load and argument errors.
 */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const FIXTURES[] = {
#include "fixtures/bidir_list.inc"
};

static double g_worst_out, g_worst_attn, g_worst_equiv, g_worst_rand;

/* xattn_bidir_load with the heads option (0: not given) */
static xattn_status load_heads(const xattn_safetensors *st, const char *prefix, int64_t heads,
                               xattn_bidir **out)
{
    xattn_bidir_opts o;
    memset(&o, 0, sizeof o);
    o.heads = heads;
    return xattn_bidir_load(st, prefix, &o, out);
}

/* xattn_bidir_forward on the default context with the outputs given one by one */
static xattn_status fwd(const xattn_bidir *m, const xattn_bidir_inputs *in, float *out,
                        float *context_out, float *attn, float *context_attn)
{
    xattn_bidir_outputs o;
    memset(&o, 0, sizeof o);
    o.out = out;
    o.context_out = context_out;
    o.attn = attn;
    o.context_attn = context_attn;
    return xattn_bidir_forward(NULL, m, in, &o);
}

static const char *meta_str(const xattn_safetensors *st, const char *key)
{
    const char *v = xattn_st_meta_get(st, key);
    return v ? v : "";
}

static int64_t meta_int(const xattn_safetensors *st, const char *key)
{
    const char *v = xattn_st_meta_get(st, key);
    return v ? strtoll(v, NULL, 10) : -1;
}

static int meta_true(const xattn_safetensors *st, const char *key)
{
    return !strcmp(meta_str(st, key), "True");
}

static float *alloc_nan(int64_t n)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}

static void fill_nan(float *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++) p[i] = NAN;
}

/* Checks that the maps' sums are what the math says: sum over j of attn[b,g,i,:] and sum over i
 * of context_attn[b,g,:,j] equal 1 without talking heads, sum_h T[g,h] with them. */
static void check_map_sums(const char *what, const float *attn, const float *cattn, int64_t B,
                           int64_t H, int64_t I, int64_t J, const float *talk, const float *ctalk)
{
    double worst = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t g = 0; g < H; g++) {
            double want = 1, cwant = 1;
            if (talk) {
                want = cwant = 0;
                for (int64_t h = 0; h < H; h++) {
                    want += talk[g * H + h];
                    cwant += ctalk[g * H + h];
                }
            }
            const float *a = attn + (b * H + g) * I * J;
            const float *c = cattn + (b * H + g) * I * J;
            for (int64_t i = 0; i < I; i++) {
                double s = 0;
                for (int64_t j = 0; j < J; j++) s += a[i * J + j];
                double e = fabs(s - want) / (1 + fabs(want));
                if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
            }
            for (int64_t j = 0; j < J; j++) {
                double s = 0;
                for (int64_t i = 0; i < I; i++) s += c[i * J + j];
                double e = fabs(s - cwant) / (1 + fabs(cwant));
                if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
            }
        }
    tu_checks++;
    if (!(worst <= 1e-5)) {
        tu_failures++;
        fprintf(stderr, "%s: map sums off by %.3g (rel)\n", what, worst);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* 1. torch fixtures                                                                         */
/* ---------------------------------------------------------------------------------------- */

static void run_fixture(const char *file)
{
    char name[256];
    snprintf(name, sizeof name, "%s", file);
    char *dot = strstr(name, ".safetensors");
    if (dot) *dot = '\0';

    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    xattn_bidir *m = (xattn_bidir *)&g_worst_out; /* must be overwritten */
    xattn_status ls = load_heads(st, "", 0, &m);
    tu_checks++;
    if (ls != XATTN_OK) {
        tu_failures++;
        fprintf(stderr, "%s: xattn_bidir_load -> %s: %s\n", name, xattn_status_string(ls),
                xattn_last_error());
        xattn_st_close(st);
        return;
    }
    const int is_tf = !strcmp(meta_str(st, "kind"), "transformer");
    const int talking = meta_true(st, "talking_heads");
    xattn_bidir_config cfg;
    memset(&cfg, 0xff, sizeof cfg);
    xattn_bidir_get_config(m, &cfg);
    {
        int ok = cfg.is_transformer == is_tf && cfg.heads == meta_int(st, "expected_heads") &&
                 cfg.dim == meta_int(st, "dim") && cfg.context_dim == meta_int(st, "context_dim") &&
                 cfg.dim_head == meta_int(st, "dim_head") &&
                 cfg.inner_dim == cfg.heads * cfg.dim_head && cfg.talking_heads == talking &&
                 cfg.depth == meta_int(st, "depth");
        if (is_tf) {
            ok = ok && cfg.ff_hidden == meta_int(st, "ff_hidden") &&
                 cfg.context_ff_hidden == meta_int(st, "context_ff_hidden") &&
                 cfg.final_norms == meta_true(st, "final_norms");
            if (cfg.final_norms)
                ok = ok && cfg.context_norm_dim == meta_int(st, "context_norm_dim");
        } else {
            const char *pn = meta_str(st, "prenorm");
            xattn_bidir_norm want = !strcmp(pn, "rms")     ? XATTN_NORM_RMS
                                    : !strcmp(pn, "layer") ? XATTN_NORM_LAYER
                                                           : XATTN_NORM_NONE;
            ok = ok && cfg.prenorm == want;
        }
        tu_checks++;
        if (!ok) {
            tu_failures++;
            fprintf(stderr,
                    "%s: config differs: tf %d heads %lld dim %lld cdim %lld dh %lld inner %lld "
                    "prenorm %d talking %d depth %lld ff %lld/%lld final %d cnorm %lld\n",
                    name, cfg.is_transformer, (long long)cfg.heads, (long long)cfg.dim,
                    (long long)cfg.context_dim, (long long)cfg.dim_head, (long long)cfg.inner_dim,
                    (int)cfg.prenorm, cfg.talking_heads, (long long)cfg.depth,
                    (long long)cfg.ff_hidden, (long long)cfg.context_ff_hidden, cfg.final_norms,
                    (long long)cfg.context_norm_dim);
        }
    }

    xattn_array ax, ac, am, acm, ab, aout, acout, aattn, acattn, atk, actk;
    memset(&am, 0, sizeof am);
    memset(&acm, 0, sizeof acm);
    memset(&ab, 0, sizeof ab);
    memset(&aattn, 0, sizeof aattn);
    memset(&acattn, 0, sizeof acattn);
    memset(&atk, 0, sizeof atk);
    memset(&actk, 0, sizeof actk);
    xattn_bidir_inputs in;
    memset(&in, 0, sizeof in);
    in.x = tu_get_f32(st, "input.x", &ax);
    in.context = tu_get_f32(st, "input.context", &ac);
    in.B = ax.shape[0];
    in.I = ax.shape[1];
    in.J = ac.shape[1];
    CHECK(ax.shape[2] == cfg.dim && ac.shape[2] == cfg.context_dim && ac.shape[0] == in.B);
    if (xattn_st_find(st, "input.mask") >= 0) {
        CHECK_OK(xattn_st_get(st, "input.mask", XATTN_BOOL, &am));
        in.mask = am.data;
    }
    if (xattn_st_find(st, "input.context_mask") >= 0) {
        CHECK_OK(xattn_st_get(st, "input.context_mask", XATTN_BOOL, &acm));
        in.context_mask = acm.data;
    }
    if (xattn_st_find(st, "input.rel_pos_bias") >= 0) {
        in.rel_pos_bias = tu_get_f32(st, "input.rel_pos_bias", &ab);
        CHECK(ab.ndim == 4 && ab.shape[2] == in.I && ab.shape[3] == in.J);
        in.bias_b = ab.shape[0];
        in.bias_h = ab.shape[1];
    }
    const float *ref_out = tu_get_f32(st, "expected.out", &aout);
    const float *ref_cout = tu_get_f32(st, "expected.context_out", &acout);
    const float *ref_attn = NULL, *ref_cattn = NULL;
    if (xattn_st_find(st, "expected.attn") >= 0) {
        ref_attn = tu_get_f32(st, "expected.attn", &aattn);
        ref_cattn = tu_get_f32(st, "expected.context_attn", &acattn);
    }
    const float *talk = NULL, *ctalk = NULL;
    if (talking && !is_tf) {
        talk = tu_get_f32(st, "talking_heads.weight", &atk);
        ctalk = tu_get_f32(st, "context_talking_heads.weight", &actk);
    }
    char desc[200];
    snprintf(desc, sizeof desc, "%s", meta_str(st, "description"));
    xattn_st_close(st); /* the module keeps no pointer into the file */

    const int64_t H = cfg.heads;
    const int64_t n_out = in.B * in.I * cfg.dim, n_cout = in.B * in.J * cfg.context_dim;
    const int64_t n_map = in.B * H * in.I * in.J;
    float *out = alloc_nan(n_out), *cout = alloc_nan(n_cout);
    float *out2 = alloc_nan(n_out), *cout2 = alloc_nan(n_cout);
    float *attn = alloc_nan(n_map), *cattn = alloc_nan(n_map);
    /* inputs must not be modified */
    float *x_copy = malloc((size_t)(in.B * in.I * cfg.dim) * sizeof(float));
    memcpy(x_copy, in.x, (size_t)(in.B * in.I * cfg.dim) * sizeof(float));

    const char *isas[] = {"auto", "scalar"};
    double worst_out = 0, worst_attn = 0, worst_equiv = 0;
    for (int ii = 0; ii < 2; ii++) {
        CHECK_OK(xattn_set_isa(isas[ii]));
        for (int threads = 1; threads <= 2; threads++) {
            xattn_set_threads(threads);
            char what[400];
#define WHAT(t)                                                                                    \
    (snprintf(what, sizeof what, "%s %s (isa %s, threads %d)", name, t, isas[ii], threads), what)
            fill_nan(out, n_out);
            fill_nan(cout, n_cout);
            CHECK_OK(fwd(m, &in, out, cout, NULL, NULL));
            worst_out = tu_max(worst_out, tu_check_close(WHAT("out"), out, ref_out, n_out, TU_TOL));
            worst_out = tu_max(worst_out,
                               tu_check_close(WHAT("context_out"), cout, ref_cout, n_cout, TU_TOL));
            if (is_tf) {
                /* the transformer returns no maps */
                xattn_status s = fwd(m, &in, out2, cout2, attn, cattn);
                tu_checks++;
                if (!((s == XATTN_ERR_UNSUPPORTED || s == XATTN_ERR_ARG) &&
                      xattn_last_error()[0])) {
                    tu_failures++;
                    fprintf(stderr, "%s: transformer with maps requested -> %s (%s)\n", what,
                            xattn_status_string(s), xattn_last_error());
                }
                s = fwd(m, &in, out2, cout2, NULL, cattn);
                CHECK(s == XATTN_ERR_UNSUPPORTED || s == XATTN_ERR_ARG);
                continue;
            }
            /* materialised: both maps, then each alone */
            for (int which = 0; which < 3; which++) {
                float *pa = which != 2 ? attn : NULL, *pc = which != 1 ? cattn : NULL;
                const char *tag = which == 0   ? "both maps"
                                  : which == 1 ? "attn only"
                                               : "cattn only";
                fill_nan(out2, n_out);
                fill_nan(cout2, n_cout);
                fill_nan(attn, n_map);
                fill_nan(cattn, n_map);
                CHECK_OK(fwd(m, &in, out2, cout2, pa, pc));
                char t2[100];
                snprintf(t2, sizeof t2, "out with %s vs without", tag);
                worst_equiv =
                    tu_max(worst_equiv, tu_check_close(WHAT(t2), out2, out, n_out, TU_TOL));
                snprintf(t2, sizeof t2, "context_out with %s vs without", tag);
                worst_equiv =
                    tu_max(worst_equiv, tu_check_close(WHAT(t2), cout2, cout, n_cout, TU_TOL));
                snprintf(t2, sizeof t2, "out with %s", tag);
                worst_out =
                    tu_max(worst_out, tu_check_close(WHAT(t2), out2, ref_out, n_out, TU_TOL));
                snprintf(t2, sizeof t2, "context_out with %s", tag);
                worst_out =
                    tu_max(worst_out, tu_check_close(WHAT(t2), cout2, ref_cout, n_cout, TU_TOL));
                if (which == 0)
                    check_map_sums(WHAT("map sums"), attn, cattn, in.B, H, in.I, in.J, talk, ctalk);
                if (!ref_attn) continue;
                if (pa) {
                    snprintf(t2, sizeof t2, "attn (%s)", tag);
                    worst_attn =
                        tu_max(worst_attn, tu_check_close(WHAT(t2), attn, ref_attn, n_map, TU_TOL));
                }
                if (pc) {
                    snprintf(t2, sizeof t2, "context_attn (%s)", tag);
                    worst_attn = tu_max(worst_attn,
                                        tu_check_close(WHAT(t2), cattn, ref_cattn, n_map, TU_TOL));
                }
            }
#undef WHAT
        }
    }
    CHECK(memcmp(x_copy, in.x, (size_t)(in.B * in.I * cfg.dim) * sizeof(float)) == 0);
    xattn_set_isa("auto");
    xattn_set_threads(0);
    printf("  %-34s %s B=%lld I=%lld J=%lld dim=%lld cdim=%lld H=%lld dh=%lld%s%s%s  "
           "err out %.2e maps %.2e equiv %.2e\n",
           name, is_tf ? "tf " : "att", (long long)in.B, (long long)in.I, (long long)in.J,
           (long long)cfg.dim, (long long)cfg.context_dim, (long long)H, (long long)cfg.dim_head,
           in.mask || in.context_mask ? " masks" : "", in.rel_pos_bias ? " bias" : "",
           talking ? " talking" : "", worst_out, worst_attn, worst_equiv);
    (void)desc;
    g_worst_out = tu_max(g_worst_out, worst_out);
    g_worst_attn = tu_max(g_worst_attn, worst_attn);
    g_worst_equiv = tu_max(g_worst_equiv, worst_equiv);
    free(out);
    free(cout);
    free(out2);
    free(cout2);
    free(attn);
    free(cattn);
    free(x_copy);
    xattn_array_free(&ax);
    xattn_array_free(&ac);
    xattn_array_free(&am);
    xattn_array_free(&acm);
    xattn_array_free(&ab);
    xattn_array_free(&aout);
    xattn_array_free(&acout);
    xattn_array_free(&aattn);
    xattn_array_free(&acattn);
    xattn_array_free(&atk);
    xattn_array_free(&actk);
    xattn_bidir_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* State dicts built here                                                                    */
/* ---------------------------------------------------------------------------------------- */

#define MAXW 512
typedef struct wt {
    char name[200];
    xattn_dtype dtype;
    int ndim;
    int64_t shape[4];
    float *data;
    int owned;
} wt;

typedef struct wlist {
    wt t[MAXW];
    int n;
    const char *meta[8];
    int n_meta;
} wlist;

static float g_buf[1 << 16]; /* data of the synthetic tensors of the error tests */

static uint64_t g_rng = 12345;

static double urand(void)
{
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}

static int64_t irand(int64_t lo, int64_t hi) /* inclusive */
{
    return lo + (int64_t)(urand() * (double)(hi - lo + 1));
}

static void wl_init(wlist *w) { memset(w, 0, sizeof *w); }

static void wl_free(wlist *w)
{
    for (int i = 0; i < w->n; i++)
        if (w->t[i].owned) free(w->t[i].data);
    w->n = 0;
}

/* Adds a tensor: random values lo + (hi-lo)*u if `rnd`, else pointing at g_buf. */
static float *wl_add(wlist *w, int rnd, float lo, float hi, const char *prefix, const char *name,
                     int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    if (w->n >= MAXW) {
        fprintf(stderr, "too many tensors\n");
        exit(1);
    }
    wt *e = &w->t[w->n++];
    snprintf(e->name, sizeof e->name, "%s%s", prefix, name);
    e->dtype = XATTN_F32;
    e->ndim = ndim;
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->shape[2] = d2;
    e->shape[3] = d3;
    int64_t n = 1;
    for (int k = 0; k < ndim; k++) n *= e->shape[k];
    if (rnd) {
        e->data = malloc((size_t)n * sizeof(float));
        e->owned = 1;
        for (int64_t i = 0; i < n; i++) e->data[i] = lo + (float)urand() * (hi - lo);
    } else {
        e->data = g_buf;
        e->owned = 0;
    }
    return e->data;
}

static wt *wl_entry(wlist *w, const char *name)
{
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name)) return &w->t[i];
    return NULL;
}

static const float *wl_get(wlist *w, const char *prefix, const char *name)
{
    char full[256];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    wt *e = wl_entry(w, full);
    return e ? e->data : NULL;
}

static void wl_remove(wlist *w, const char *name)
{
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name)) {
            if (w->t[i].owned) free(w->t[i].data);
            memmove(&w->t[i], &w->t[i + 1], (size_t)(w->n - i - 1) * sizeof w->t[0]);
            w->n--;
            return;
        }
    fprintf(stderr, "wl_remove: no tensor '%s'\n", name);
    exit(1);
}

/* Saves the list to a fresh temporary file (mkstemp) and opens it; the file is removed. */
static xattn_safetensors *wl_open(const wlist *w)
{
    static xattn_st_entry e[MAXW];
    for (int i = 0; i < w->n; i++) {
        e[i].name = w->t[i].name;
        e[i].dtype = w->t[i].dtype;
        e[i].ndim = w->t[i].ndim;
        for (int k = 0; k < XATTN_MAX_DIMS; k++) e[i].shape[k] = k < 4 ? w->t[i].shape[k] : 0;
        e[i].data = w->t[i].data;
    }
    char path[] = "/tmp/test_bidir_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        exit(1);
    }
    close(fd);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_save(path, e, (size_t)w->n, w->meta, (size_t)w->n_meta));
    CHECK_OK(xattn_st_open(path, &st));
    unlink(path);
    return st;
}

/* Attention module tensors under `prefix`. norm: 0 none, 1 RMSNorm, 2 LayerNorm. */
static void add_attention(wlist *w, int rnd, const char *p, int64_t dim, int64_t cdim, int64_t H,
                          int64_t dh, int norm, int talking)
{
    const int64_t inner = H * dh;
    const float a = 1.7f / sqrtf((float)dim), ac = 1.7f / sqrtf((float)cdim);
    const float ai = 1.7f / sqrtf((float)inner);
    if (norm) {
        wl_add(w, rnd, 0.5f, 1.5f, p, "norm.weight", 1, dim, 0, 0, 0);
        if (norm == 2) wl_add(w, rnd, -0.5f, 0.5f, p, "norm.bias", 1, dim, 0, 0, 0);
        wl_add(w, rnd, 0.5f, 1.5f, p, "context_norm.weight", 1, cdim, 0, 0, 0);
        if (norm == 2) wl_add(w, rnd, -0.5f, 0.5f, p, "context_norm.bias", 1, cdim, 0, 0, 0);
    }
    wl_add(w, rnd, -a, a, p, "to_qk.weight", 2, inner, dim, 0, 0);
    wl_add(w, rnd, -ac, ac, p, "context_to_qk.weight", 2, inner, cdim, 0, 0);
    wl_add(w, rnd, -a, a, p, "to_v.weight", 2, inner, dim, 0, 0);
    wl_add(w, rnd, -ac, ac, p, "context_to_v.weight", 2, inner, cdim, 0, 0);
    wl_add(w, rnd, -ai, ai, p, "to_out.weight", 2, dim, inner, 0, 0);
    wl_add(w, rnd, -0.5f, 0.5f, p, "to_out.bias", 1, dim, 0, 0, 0);
    wl_add(w, rnd, -ai, ai, p, "context_to_out.weight", 2, cdim, inner, 0, 0);
    wl_add(w, rnd, -0.5f, 0.5f, p, "context_to_out.bias", 1, cdim, 0, 0, 0);
    if (talking) {
        float *t = wl_add(w, rnd, -0.6f, 0.6f, p, "talking_heads.weight", 4, H, H, 1, 1);
        float *c = wl_add(w, rnd, -0.6f, 0.6f, p, "context_talking_heads.weight", 4, H, H, 1, 1);
        if (rnd)
            for (int64_t g = 0; g < H; g++) {
                t[g * H + g] += 0.8f;
                c[g * H + g] += 0.8f;
            }
    }
}

static void add_ff(wlist *w, int rnd, const char *p, int64_t d, int64_t hid)
{
    const float a = 1.7f / sqrtf((float)d), ah = 1.7f / sqrtf((float)hid);
    wl_add(w, rnd, 0.5f, 1.5f, p, "0.weight", 1, d, 0, 0, 0);
    wl_add(w, rnd, -a, a, p, "1.weight", 2, hid, d, 0, 0);
    wl_add(w, rnd, -0.5f, 0.5f, p, "1.bias", 1, hid, 0, 0, 0);
    wl_add(w, rnd, -ah, ah, p, "3.weight", 2, d, hid, 0, 0);
    wl_add(w, rnd, -0.5f, 0.5f, p, "3.bias", 1, d, 0, 0, 0);
}

/* cnorm_dim: 0 no final norms, else the size of context_norm.weight */
static void add_transformer(wlist *w, int rnd, const char *p, int64_t depth, int64_t dim,
                            int64_t cdim, int64_t H, int64_t dh, int talking, int64_t hid,
                            int64_t chid, int64_t cnorm_dim)
{
    char q[256];
    for (int64_t l = 0; l < depth; l++) {
        snprintf(q, sizeof q, "%slayers.%lld.0.", p, (long long)l);
        add_attention(w, rnd, q, dim, cdim, H, dh, 1, talking);
        snprintf(q, sizeof q, "%slayers.%lld.1.", p, (long long)l);
        add_ff(w, rnd, q, dim, hid);
        snprintf(q, sizeof q, "%slayers.%lld.2.", p, (long long)l);
        add_ff(w, rnd, q, cdim, chid);
    }
    if (cnorm_dim) {
        wl_add(w, rnd, 0.5f, 1.5f, p, "norm.weight", 1, dim, 0, 0, 0);
        wl_add(w, rnd, 0.5f, 1.5f, p, "context_norm.weight", 1, cnorm_dim, 0, 0, 0);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* float64 transcription of the package's forward                                           */
/* ---------------------------------------------------------------------------------------- */

/* y (rows, n) = norm(x); kind 1 RMSNorm (eps FLT_EPSILON), 2 LayerNorm (eps 1e-5) */
static void ref_norm(const double *x, int64_t rows, int64_t n, int kind, const float *w,
                     const float *b, double *y)
{
    for (int64_t r = 0; r < rows; r++) {
        const double *xr = x + r * n;
        double *yr = y + r * n;
        if (kind == 0) {
            memmove(yr, xr, (size_t)n * sizeof(double));
            continue;
        }
        if (kind == 1) {
            double ss = 0;
            for (int64_t k = 0; k < n; k++) ss += xr[k] * xr[k];
            double inv = 1.0 / sqrt(ss / (double)n + (double)FLT_EPSILON);
            for (int64_t k = 0; k < n; k++) yr[k] = xr[k] * inv * (double)w[k];
        } else {
            double mean = 0, var = 0;
            for (int64_t k = 0; k < n; k++) mean += xr[k];
            mean /= (double)n;
            for (int64_t k = 0; k < n; k++) var += (xr[k] - mean) * (xr[k] - mean);
            var /= (double)n;
            double inv = 1.0 / sqrt(var + 1e-5);
            for (int64_t k = 0; k < n; k++)
                yr[k] = (xr[k] - mean) * inv * (double)w[k] + (double)b[k];
        }
    }
}

/* y (rows, N) = x (rows, K) W^T + b */
static void ref_linear(const double *x, int64_t rows, int64_t K, const float *W, const float *b,
                       int64_t N, double *y)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < N; o++) {
            double s = b ? (double)b[o] : 0.0;
            for (int64_t k = 0; k < K; k++) s += x[r * K + k] * (double)W[o * K + k];
            y[r * N + o] = s;
        }
}

typedef struct ref_attn_w {
    int64_t dim, cdim, H, dh;
    int norm;
    const float *nw, *nb, *cnw, *cnb, *wqk, *wcqk, *wv, *wcv, *wo, *bo, *wco, *bco, *th, *cth;
} ref_attn_w;

static void ref_attn_weights(wlist *w, const char *p, int64_t dim, int64_t cdim, int64_t H,
                             int64_t dh, int norm, ref_attn_w *r)
{
    memset(r, 0, sizeof *r);
    r->dim = dim, r->cdim = cdim, r->H = H, r->dh = dh, r->norm = norm;
    r->nw = wl_get(w, p, "norm.weight");
    r->nb = wl_get(w, p, "norm.bias");
    r->cnw = wl_get(w, p, "context_norm.weight");
    r->cnb = wl_get(w, p, "context_norm.bias");
    r->wqk = wl_get(w, p, "to_qk.weight");
    r->wcqk = wl_get(w, p, "context_to_qk.weight");
    r->wv = wl_get(w, p, "to_v.weight");
    r->wcv = wl_get(w, p, "context_to_v.weight");
    r->wo = wl_get(w, p, "to_out.weight");
    r->bo = wl_get(w, p, "to_out.bias");
    r->wco = wl_get(w, p, "context_to_out.weight");
    r->bco = wl_get(w, p, "context_to_out.bias");
    r->th = wl_get(w, p, "talking_heads.weight");
    r->cth = wl_get(w, p, "context_talking_heads.weight");
}

/* The package's BidirectionalCrossAttention.forward in float64. attn/cattn (B,H,I,J) optional. */
static void ref_attention(const ref_attn_w *r, const xattn_bidir_inputs *in, const double *x,
                          const double *ctx, double *out, double *cout, double *attn_out,
                          double *cattn_out)
{
    const int64_t B = in->B, I = in->I, J = in->J, H = r->H, dh = r->dh, inner = H * dh;
    const int64_t dim = r->dim, cdim = r->cdim;
    double *xn = malloc((size_t)(B * I * dim) * sizeof(double));
    double *cn = malloc((size_t)(B * J * cdim) * sizeof(double));
    double *qk = malloc((size_t)(B * I * inner) * sizeof(double));
    double *v = malloc((size_t)(B * I * inner) * sizeof(double));
    double *cqk = malloc((size_t)(B * J * inner) * sizeof(double));
    double *cv = malloc((size_t)(B * J * inner) * sizeof(double));
    double *sim = malloc((size_t)(H * I * J) * sizeof(double));
    double *at = malloc((size_t)(H * I * J) * sizeof(double));
    double *ct = malloc((size_t)(H * I * J) * sizeof(double));
    double *at2 = malloc((size_t)(H * I * J) * sizeof(double));
    double *ct2 = malloc((size_t)(H * I * J) * sizeof(double));
    double *o = malloc((size_t)(B * I * inner) * sizeof(double));
    double *co = malloc((size_t)(B * J * inner) * sizeof(double));
    ref_norm(x, B * I, dim, r->norm, r->nw, r->nb, xn);
    ref_norm(ctx, B * J, cdim, r->norm, r->cnw, r->cnb, cn);
    ref_linear(xn, B * I, dim, r->wqk, NULL, inner, qk);
    ref_linear(xn, B * I, dim, r->wv, NULL, inner, v);
    ref_linear(cn, B * J, cdim, r->wcqk, NULL, inner, cqk);
    ref_linear(cn, B * J, cdim, r->wcv, NULL, inner, cv);
    const double scale = pow((double)dh, -0.5);
    const int any_mask = in->mask || in->context_mask;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < I; i++)
                for (int64_t j = 0; j < J; j++) {
                    double s = 0;
                    const double *a = qk + (b * I + i) * inner + h * dh;
                    const double *c = cqk + (b * J + j) * inner + h * dh;
                    for (int64_t d = 0; d < dh; d++) s += a[d] * c[d];
                    s *= scale;
                    if (in->rel_pos_bias) {
                        int64_t bb = in->bias_b == 1 ? 0 : b, bh = in->bias_h == 1 ? 0 : h;
                        s += (double)in->rel_pos_bias[((bb * in->bias_h + bh) * I + i) * J + j];
                    }
                    if (any_mask) {
                        int keep = (!in->mask || in->mask[b * I + i]) &&
                                   (!in->context_mask || in->context_mask[b * J + j]);
                        if (!keep) s = -(double)FLT_MAX;
                    }
                    sim[(h * I + i) * J + j] = s;
                }
        /* softmax over j (attn) and over i (context_attn) */
        for (int64_t h = 0; h < H; h++) {
            const double *S = sim + h * I * J;
            double *A = at + h * I * J, *C = ct + h * I * J;
            for (int64_t i = 0; i < I; i++) {
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < J; j++) mx = tu_max(mx, S[i * J + j]);
                for (int64_t j = 0; j < J; j++) sum += (A[i * J + j] = exp(S[i * J + j] - mx));
                for (int64_t j = 0; j < J; j++) A[i * J + j] /= sum;
            }
            for (int64_t j = 0; j < J; j++) {
                double mx = -INFINITY, sum = 0;
                for (int64_t i = 0; i < I; i++) mx = tu_max(mx, S[i * J + j]);
                for (int64_t i = 0; i < I; i++) sum += (C[i * J + j] = exp(S[i * J + j] - mx));
                for (int64_t i = 0; i < I; i++) C[i * J + j] /= sum;
            }
        }
        /* talking heads: 1x1 conv over heads */
        if (r->th) {
            for (int64_t g = 0; g < H; g++)
                for (int64_t t = 0; t < I * J; t++) {
                    double sa = 0, sc = 0;
                    for (int64_t h = 0; h < H; h++) {
                        sa += (double)r->th[g * H + h] * at[h * I * J + t];
                        sc += (double)r->cth[g * H + h] * ct[h * I * J + t];
                    }
                    at2[g * I * J + t] = sa;
                    ct2[g * I * J + t] = sc;
                }
        } else {
            memcpy(at2, at, (size_t)(H * I * J) * sizeof(double));
            memcpy(ct2, ct, (size_t)(H * I * J) * sizeof(double));
        }
        if (attn_out) memcpy(attn_out + b * H * I * J, at2, (size_t)(H * I * J) * sizeof(double));
        if (cattn_out) memcpy(cattn_out + b * H * I * J, ct2, (size_t)(H * I * J) * sizeof(double));
        /* out = attn @ context_v, context_out = context_attn^T @ v, heads merged as (h d) */
        for (int64_t h = 0; h < H; h++) {
            for (int64_t i = 0; i < I; i++)
                for (int64_t d = 0; d < dh; d++) {
                    double s = 0;
                    for (int64_t j = 0; j < J; j++)
                        s += at2[(h * I + i) * J + j] * cv[(b * J + j) * inner + h * dh + d];
                    o[(b * I + i) * inner + h * dh + d] = s;
                }
            for (int64_t j = 0; j < J; j++)
                for (int64_t d = 0; d < dh; d++) {
                    double s = 0;
                    for (int64_t i = 0; i < I; i++)
                        s += ct2[(h * I + i) * J + j] * v[(b * I + i) * inner + h * dh + d];
                    co[(b * J + j) * inner + h * dh + d] = s;
                }
        }
    }
    ref_linear(o, B * I, inner, r->wo, r->bo, dim, out);
    ref_linear(co, B * J, inner, r->wco, r->bco, cdim, cout);
    free(xn);
    free(cn);
    free(qk);
    free(v);
    free(cqk);
    free(cv);
    free(sim);
    free(at);
    free(ct);
    free(at2);
    free(ct2);
    free(o);
    free(co);
}

/* x += FeedForward(x): RMSNorm, Linear, GELU (erf), Linear */
static void ref_ff_residual(wlist *w, const char *p, double *x, int64_t rows, int64_t d,
                            int64_t hid)
{
    double *n = malloc((size_t)(rows * d) * sizeof(double));
    double *hbuf = malloc((size_t)(rows * hid) * sizeof(double));
    double *y = malloc((size_t)(rows * d) * sizeof(double));
    ref_norm(x, rows, d, 1, wl_get(w, p, "0.weight"), NULL, n);
    ref_linear(n, rows, d, wl_get(w, p, "1.weight"), wl_get(w, p, "1.bias"), hid, hbuf);
    for (int64_t t = 0; t < rows * hid; t++)
        hbuf[t] = 0.5 * hbuf[t] * (1.0 + erf(hbuf[t] / sqrt(2.0)));
    ref_linear(hbuf, rows, hid, wl_get(w, p, "3.weight"), wl_get(w, p, "3.bias"), d, y);
    for (int64_t t = 0; t < rows * d; t++) x[t] += y[t];
    free(n);
    free(hbuf);
    free(y);
}

static double *to_double(const float *x, int64_t n)
{
    double *y = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

static double check_close_d(const char *what, const float *got, const double *ref, int64_t n)
{
    float *rf = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) rf[i] = (float)ref[i];
    double e = tu_check_close(what, got, rf, n, TU_TOL);
    free(rf);
    return e;
}

/* ---------------------------------------------------------------------------------------- */
/* 2. random shapes                                                                          */
/* ---------------------------------------------------------------------------------------- */

typedef struct rcase {
    int transformer;
    int64_t B, I, J, dim, cdim, H, dh, depth, hid, chid, cnorm;
    int norm, talking;
    int heads_how;             /* 0: argument, 1: metadata, 2: from talking heads (heads arg 0) */
    int mask_kind, cmask_kind; /* 0 none, 1 random, 2 random + a fully masked batch element */
    int bias_kind;             /* 0 none, 1 (B,H), 2 (1,H), 3 (B,1), 4 (1,1) */
    const char *prefix;
} rcase;

static uint8_t *rand_mask(int kind, int64_t B, int64_t N)
{
    if (!kind) return NULL;
    uint8_t *m = malloc((size_t)(B * N));
    double p_keep = 0.3 + 0.6 * urand();
    for (int64_t t = 0; t < B * N; t++) m[t] = urand() < p_keep;
    if (urand() < 0.5) /* ragged padding instead */
        for (int64_t b = 0; b < B; b++) {
            int64_t len = irand(0, N);
            for (int64_t n = 0; n < N; n++) m[b * N + n] = n < len;
        }
    if (kind == 2) {
        int64_t b = irand(0, B - 1);
        memset(m + b * N, 0, (size_t)N);
    }
    return m;
}

static void run_random_case(const rcase *c, int idx)
{
    wlist *w = malloc(sizeof *w);
    wl_init(w);
    const char *p = c->prefix;
    if (c->transformer)
        add_transformer(w, 1, p, c->depth, c->dim, c->cdim, c->H, c->dh, c->talking, c->hid,
                        c->chid, c->cnorm);
    else
        add_attention(w, 1, p, c->dim, c->cdim, c->H, c->dh, c->norm, c->talking);
    char hs[32];
    snprintf(hs, sizeof hs, "%lld", (long long)c->H);
    int64_t heads_arg = 0;
    if (c->heads_how == 0) heads_arg = c->H;
    if (c->heads_how == 1) {
        w->meta[0] = "heads";
        w->meta[1] = hs;
        w->n_meta = 1;
    }
    xattn_safetensors *st = wl_open(w);
    xattn_bidir *m = NULL;
    char what[400];
    int n = snprintf(what, sizeof what,
                     "random %d: %s B=%lld I=%lld J=%lld dim=%lld cdim=%lld H=%lld dh=%lld norm=%d "
                     "talking=%d masks=%d/%d bias=%d",
                     idx, c->transformer ? "transformer" : "attention", (long long)c->B,
                     (long long)c->I, (long long)c->J, (long long)c->dim, (long long)c->cdim,
                     (long long)c->H, (long long)c->dh, c->norm, c->talking, c->mask_kind,
                     c->cmask_kind, c->bias_kind);
    if (c->transformer)
        snprintf(what + n, sizeof what - (size_t)n, " depth=%lld hid=%lld/%lld cnorm=%lld",
                 (long long)c->depth, (long long)c->hid, (long long)c->chid, (long long)c->cnorm);
    xattn_status ls = st ? load_heads(st, p, heads_arg, &m) : XATTN_ERR_IO;
    tu_checks++;
    if (ls != XATTN_OK) {
        tu_failures++;
        fprintf(stderr, "%s: load -> %s: %s\n", what, xattn_status_string(ls), xattn_last_error());
        xattn_st_close(st);
        wl_free(w);
        free(w);
        return;
    }
    xattn_st_close(st);
    xattn_bidir_config cfg;
    xattn_bidir_get_config(m, &cfg);
    CHECK(cfg.heads == c->H && cfg.dim_head == c->dh && cfg.dim == c->dim &&
          cfg.context_dim == c->cdim && cfg.is_transformer == c->transformer);

    const int64_t B = c->B, I = c->I, J = c->J, H = c->H;
    float *x = alloc_nan(B * I * c->dim), *ctx = alloc_nan(B * J * c->cdim);
    for (int64_t t = 0; t < B * I * c->dim; t++) x[t] = (float)(urand() * 4 - 2);
    for (int64_t t = 0; t < B * J * c->cdim; t++) ctx[t] = (float)(urand() * 4 - 2);
    xattn_bidir_inputs in;
    memset(&in, 0, sizeof in);
    in.B = B, in.I = I, in.J = J, in.x = x, in.context = ctx;
    uint8_t *mk = rand_mask(c->mask_kind, B, I), *cmk = rand_mask(c->cmask_kind, B, J);
    in.mask = mk;
    in.context_mask = cmk;
    float *bias = NULL;
    if (c->bias_kind) {
        in.bias_b = (c->bias_kind == 1 || c->bias_kind == 3) ? B : 1;
        in.bias_h = (c->bias_kind == 1 || c->bias_kind == 2) ? H : 1;
        int64_t nb = in.bias_b * in.bias_h * I * J;
        bias = alloc_nan(nb);
        for (int64_t t = 0; t < nb; t++) bias[t] = (float)(urand() * 4 - 2);
        in.rel_pos_bias = bias;
    }

    /* float64 reference */
    const int64_t n_out = B * I * c->dim, n_cout = B * J * c->cdim, n_map = B * H * I * J;
    double *rx = to_double(x, n_out), *rc = to_double(ctx, n_cout);
    double *ro = malloc((size_t)n_out * sizeof(double));
    double *rco = malloc((size_t)n_cout * sizeof(double));
    double *rattn = NULL, *rcattn = NULL;
    if (!c->transformer) {
        rattn = malloc((size_t)n_map * sizeof(double));
        rcattn = malloc((size_t)n_map * sizeof(double));
        ref_attn_w rw;
        ref_attn_weights(w, p, c->dim, c->cdim, H, c->dh, c->norm, &rw);
        ref_attention(&rw, &in, rx, rc, ro, rco, rattn, rcattn);
    } else {
        for (int64_t l = 0; l < c->depth; l++) {
            char q[256];
            snprintf(q, sizeof q, "%slayers.%lld.0.", p, (long long)l);
            ref_attn_w rw;
            ref_attn_weights(w, q, c->dim, c->cdim, H, c->dh, 1, &rw);
            ref_attention(&rw, &in, rx, rc, ro, rco, NULL, NULL);
            for (int64_t t = 0; t < n_out; t++) rx[t] += ro[t];
            for (int64_t t = 0; t < n_cout; t++) rc[t] += rco[t];
            snprintf(q, sizeof q, "%slayers.%lld.1.", p, (long long)l);
            ref_ff_residual(w, q, rx, B * I, c->dim, c->hid);
            snprintf(q, sizeof q, "%slayers.%lld.2.", p, (long long)l);
            ref_ff_residual(w, q, rc, B * J, c->cdim, c->chid);
        }
        if (c->cnorm) {
            ref_norm(rx, B * I, c->dim, 1, wl_get(w, p, "norm.weight"), NULL, ro);
            ref_norm(rc, B * J, c->cdim, 1, wl_get(w, p, "context_norm.weight"), NULL, rco);
        } else {
            memcpy(ro, rx, (size_t)n_out * sizeof(double));
            memcpy(rco, rc, (size_t)n_cout * sizeof(double));
        }
    }

    float *out = alloc_nan(n_out), *cout = alloc_nan(n_cout);
    float *out2 = alloc_nan(n_out), *cout2 = alloc_nan(n_cout);
    float *attn = c->transformer ? NULL : alloc_nan(n_map);
    float *cattn = c->transformer ? NULL : alloc_nan(n_map);
    const char *isas[] = {"auto", "scalar"};
    double worst = 0;
    for (int ii = 0; ii < 2; ii++) {
        CHECK_OK(xattn_set_isa(isas[ii]));
        xattn_set_threads(1 + (int)((idx + ii) % 2));
        char w2[520];
        fill_nan(out, n_out);
        fill_nan(cout, n_cout);
        CHECK_OK(fwd(m, &in, out, cout, NULL, NULL));
        snprintf(w2, sizeof w2, "%s [%s] out", what, isas[ii]);
        worst = tu_max(worst, check_close_d(w2, out, ro, n_out));
        snprintf(w2, sizeof w2, "%s [%s] context_out", what, isas[ii]);
        worst = tu_max(worst, check_close_d(w2, cout, rco, n_cout));
        if (c->transformer) continue;
        fill_nan(out2, n_out);
        fill_nan(cout2, n_cout);
        fill_nan(attn, n_map);
        fill_nan(cattn, n_map);
        CHECK_OK(fwd(m, &in, out2, cout2, attn, cattn));
        snprintf(w2, sizeof w2, "%s [%s] out with maps vs without", what, isas[ii]);
        worst = tu_max(worst, tu_check_close(w2, out2, out, n_out, TU_TOL));
        snprintf(w2, sizeof w2, "%s [%s] context_out with maps vs without", what, isas[ii]);
        worst = tu_max(worst, tu_check_close(w2, cout2, cout, n_cout, TU_TOL));
        snprintf(w2, sizeof w2, "%s [%s] attn", what, isas[ii]);
        worst = tu_max(worst, check_close_d(w2, attn, rattn, n_map));
        snprintf(w2, sizeof w2, "%s [%s] context_attn", what, isas[ii]);
        worst = tu_max(worst, check_close_d(w2, cattn, rcattn, n_map));
        snprintf(w2, sizeof w2, "%s [%s] out with maps", what, isas[ii]);
        worst = tu_max(worst, check_close_d(w2, out2, ro, n_out));
        snprintf(w2, sizeof w2, "%s [%s] context_out with maps", what, isas[ii]);
        worst = tu_max(worst, check_close_d(w2, cout2, rco, n_cout));
    }
    xattn_set_isa("auto");
    xattn_set_threads(0);
    printf("  %s%s: max err %.2e\n", what, c->prefix[0] ? " (prefixed)" : "", worst);
    g_worst_rand = tu_max(g_worst_rand, worst);
    xattn_bidir_free(m);
    free(x);
    free(ctx);
    free(mk);
    free(cmk);
    free(bias);
    free(rx);
    free(rc);
    free(ro);
    free(rco);
    free(rattn);
    free(rcattn);
    free(out);
    free(cout);
    free(out2);
    free(cout2);
    free(attn);
    free(cattn);
    wl_free(w);
    free(w);
}

static void test_random(void)
{
    static const int64_t heads[] = {1, 2, 3, 4, 8};
    static const int64_t dhs[] = {1, 3, 8, 16, 17, 32, 64};
    static const int64_t lens[] = {1, 2, 7, 31, 32, 33, 63, 64, 65, 100, 129, 255, 256, 257, 300};
    static const char *prefixes[] = {"", "model.bidir.", "enc."};
    int ncase = 0;
    for (int t = 0; t < 48; t++) {
        rcase c;
        memset(&c, 0, sizeof c);
        c.transformer = t % 6 == 5;
        c.B = irand(1, 3);
        c.I = urand() < 0.5 ? lens[irand(0, 14)] : irand(1, 300);
        c.J = urand() < 0.5 ? lens[irand(0, 14)] : irand(1, 300);
        c.H = heads[irand(0, 4)];
        c.dh = dhs[irand(0, 6)];
        c.dim = irand(1, 40);
        c.cdim = urand() < 0.3 ? c.dim : irand(1, 40);
        c.norm = c.transformer ? 1 : (int)irand(0, 2);
        c.talking = urand() < 0.4;
        c.heads_how = (int)irand(0, c.talking ? 2 : 1);
        c.mask_kind = (int)irand(0, 2);
        c.cmask_kind = (int)irand(0, 2);
        c.bias_kind = (int)irand(0, 4);
        c.prefix = prefixes[irand(0, 2)];
        /* keep the float64 reference cheap */
        while (c.B * c.H * c.I * c.J * (c.dh + 4) > 40000000) {
            if (c.I > c.J)
                c.I = c.I / 2 + 1;
            else
                c.J = c.J / 2 + 1;
        }
        if (c.transformer) {
            c.depth = irand(1, 3);
            c.dim = irand(2, 24);
            c.cdim = urand() < 0.3 ? c.dim : irand(2, 24);
            double mult = urand() < 0.5 ? 4.0 : 1.5 + 0.5 * (double)irand(0, 3);
            c.hid = (int64_t)((double)c.dim * mult);
            c.chid = (int64_t)((double)c.cdim * mult);
            c.cnorm = urand() < 0.5 ? 0 : (urand() < 0.5 ? c.dim : c.cdim);
            if (c.cnorm == c.dim && c.cdim != c.dim) c.cnorm = c.cdim; /* package bug otherwise */
            while (c.depth * c.B * c.H * c.I * c.J * (c.dh + 4) > 20000000) {
                if (c.I > c.J)
                    c.I = c.I / 2 + 1;
                else
                    c.J = c.J / 2 + 1;
            }
        }
        run_random_case(&c, t);
        ncase++;
    }
    printf("random shapes: %d cases, max rel error %.3g\n", ncase, g_worst_rand);
}

/* ---------------------------------------------------------------------------------------- */
/* 3. errors                                                                                 */
/* ---------------------------------------------------------------------------------------- */

static void check_message(const char *needle, int line)
{
    const char *msg = xattn_last_error();
    tu_checks++;
    if (needle && !strstr(msg, needle)) {
        tu_failures++;
        fprintf(stderr, "%s:%d: load error message '%s' does not mention '%s'\n", __FILE__, line,
                msg, needle);
    }
    CHECK(strchr(msg, '\n') == NULL && strlen(msg) < 400);
}

/* Expects load to fail with `want` (or any failure if want == XATTN_OK) and a message
 * mentioning `needle` (if not NULL). */
static void expect_load_fail(const wlist *w, const char *prefix, int64_t heads, xattn_status want,
                             const char *needle, int line)
{
    xattn_safetensors *st = wl_open(w);
    if (!st) return;
    xattn_bidir *m = (xattn_bidir *)&g_buf;
    xattn_status s = load_heads(st, prefix, heads, &m);
    tu_checks++;
    if (s == XATTN_OK || (want != XATTN_OK && s != want) || !xattn_last_error()[0]) {
        tu_failures++;
        fprintf(stderr, "%s:%d: load -> %s (%s), wanted %s\n", __FILE__, line,
                xattn_status_string(s), xattn_last_error(),
                want == XATTN_OK ? "a failure" : xattn_status_string(want));
        if (s == XATTN_OK) xattn_bidir_free(m);
    } else {
        CHECK(m == NULL);
        check_message(needle, line);
    }
    xattn_st_close(st);
}
#define LOAD_FAIL(w, prefix, heads, want, needle)                                                  \
    expect_load_fail(w, prefix, heads, want, needle, __LINE__)

static xattn_bidir *load_ok(const wlist *w, const char *prefix, int64_t heads)
{
    xattn_safetensors *st = wl_open(w);
    xattn_bidir *m = NULL;
    if (!st) return NULL;
    CHECK_OK(load_heads(st, prefix, heads, &m));
    xattn_st_close(st);
    return m;
}

/* a forward call that must fail with SHAPE or ARG (where the header leaves either possible) */
#define CHECK_FAIL_SHAPE_OR_ARG(call)                                                              \
    do {                                                                                           \
        tu_checks++;                                                                               \
        xattn_status s_ = (call);                                                                  \
        if (!((s_ == XATTN_ERR_SHAPE || s_ == XATTN_ERR_ARG) && xattn_last_error()[0])) {          \
            tu_failures++;                                                                         \
            fprintf(stderr, "%s:%d: %s -> %s (%s), wanted shape or argument error\n", __FILE__,    \
                    __LINE__, #call, xattn_status_string(s_), xattn_last_error());                 \
        }                                                                                          \
    } while (0)

static void test_errors(void)
{
    wlist *w = malloc(sizeof *w);
    for (int i = 0; i < (int)(sizeof g_buf / sizeof g_buf[0]); i++)
        g_buf[i] = 0.01f * (float)((i * 37) % 101) - 0.5f;
    static const char *const att_names[] = {
        "to_qk.weight",  "context_to_qk.weight", "to_v.weight",           "context_to_v.weight",
        "to_out.weight", "to_out.bias",          "context_to_out.weight", "context_to_out.bias"};

    /* a valid module: dim 8, context 6, heads 2 x 4, and its config */
    wl_init(w);
    add_attention(w, 0, "", 8, 6, 2, 4, 0, 0);
    xattn_bidir *m = load_ok(w, "", 2);
    if (m) {
        xattn_bidir_config c;
        xattn_bidir_get_config(m, &c);
        CHECK(!c.is_transformer && c.dim == 8 && c.context_dim == 6 && c.heads == 2 &&
              c.dim_head == 4 && c.inner_dim == 8 && c.prenorm == XATTN_NORM_NONE &&
              !c.talking_heads && c.depth == 1);
        /* forward argument errors */
        float x[3 * 5 * 8], ctx[3 * 7 * 6], out[3 * 5 * 8], cout[3 * 7 * 6];
        float attn[3 * 2 * 5 * 7], cattn[3 * 2 * 5 * 7], bias[3 * 2 * 5 * 7];
        uint8_t mk[3 * 5], cmk[3 * 7];
        uint64_t rng = 3;
        tu_fill_uniform(x, 120, -1, 1, &rng);
        tu_fill_uniform(ctx, 126, -1, 1, &rng);
        tu_fill_uniform(bias, 210, -1, 1, &rng);
        memset(mk, 1, sizeof mk);
        memset(cmk, 1, sizeof cmk);
        xattn_bidir_inputs in;
        memset(&in, 0, sizeof in);
        in.B = 3, in.I = 5, in.J = 7, in.x = x, in.context = ctx;
        CHECK_OK(fwd(m, &in, out, cout, NULL, NULL));
        CHECK_OK(fwd(m, &in, out, cout, attn, cattn));
        CHECK_FAIL(fwd(NULL, &in, out, cout, NULL, NULL), XATTN_ERR_ARG);
        CHECK_FAIL(fwd(m, NULL, out, cout, NULL, NULL), XATTN_ERR_ARG);
        CHECK_FAIL(fwd(m, &in, NULL, cout, NULL, NULL), XATTN_ERR_ARG);
        xattn_bidir_inputs bad = in;
        bad.x = NULL;
        CHECK_FAIL(fwd(m, &bad, out, cout, NULL, NULL), XATTN_ERR_ARG);
        bad = in;
        bad.context = NULL;
        CHECK_FAIL(fwd(m, &bad, out, cout, NULL, NULL), XATTN_ERR_ARG);
        bad = in;
        bad.B = -1;
        CHECK_FAIL(fwd(m, &bad, out, cout, NULL, NULL), XATTN_ERR_ARG);
        bad = in;
        bad.I = -2;
        CHECK_FAIL(fwd(m, &bad, out, cout, NULL, NULL), XATTN_ERR_ARG);
        bad = in;
        bad.J = -2;
        CHECK_FAIL(fwd(m, &bad, out, cout, NULL, NULL), XATTN_ERR_ARG);
        bad = in;
        bad.I = INT64_MAX / 4;
        CHECK(fwd(m, &bad, out, cout, NULL, NULL) != XATTN_OK);
        /* masks given with B = 0 */
        bad = in;
        bad.B = 0;
        bad.mask = mk;
        bad.context_mask = cmk;
        {
            xattn_status s = fwd(m, &bad, out, cout, NULL, NULL);
            tu_checks++;
            if (s == XATTN_OK || !xattn_last_error()[0]) {
                tu_failures++;
                fprintf(stderr, "%s:%d: masks with B = 0 -> %s (%s), wanted an error\n", __FILE__,
                        __LINE__, xattn_status_string(s), xattn_last_error());
            }
        }
        /* rel_pos_bias broadcast dims must be 1 or B, 1 or heads */
        bad = in;
        bad.rel_pos_bias = bias;
        bad.bias_b = 2, bad.bias_h = 2; /* B = 3 */
        CHECK_FAIL_SHAPE_OR_ARG(fwd(m, &bad, out, cout, NULL, NULL));
        bad.bias_b = 3, bad.bias_h = 3; /* heads = 2 */
        CHECK_FAIL_SHAPE_OR_ARG(fwd(m, &bad, out, cout, NULL, NULL));
        bad.bias_b = 0, bad.bias_h = 1;
        CHECK_FAIL_SHAPE_OR_ARG(fwd(m, &bad, out, cout, NULL, NULL));
        bad.bias_b = 1, bad.bias_h = 0;
        CHECK_FAIL_SHAPE_OR_ARG(fwd(m, &bad, out, cout, attn, cattn));
        bad.bias_b = -1, bad.bias_h = 2;
        CHECK_FAIL_SHAPE_OR_ARG(fwd(m, &bad, out, cout, NULL, NULL));
        /* every valid combination works */
        for (int bb = 0; bb < 2; bb++)
            for (int bh = 0; bh < 2; bh++) {
                bad.bias_b = bb ? 3 : 1;
                bad.bias_h = bh ? 2 : 1;
                CHECK_OK(fwd(m, &bad, out, cout, NULL, NULL));
            }
        /* a NaN in x row (b=1, i=2) reaches every output of batch 1's context (shared softmax
         * over i) and that x row, but never batch 0 or 2 */
        x[(1 * 5 + 2) * 8 + 3] = NAN;
        CHECK_OK(fwd(m, &in, out, cout, NULL, NULL));
        int iso = 1;
        for (int64_t b = 0; b < 3; b += 2) {
            for (int64_t t = 0; t < 5 * 8; t++)
                if (isnan(out[b * 40 + t])) iso = 0;
            for (int64_t t = 0; t < 7 * 6; t++)
                if (isnan(cout[b * 42 + t])) iso = 0;
        }
        CHECK(iso);
        xattn_bidir_free(m);
    }
    xattn_bidir_free(NULL);

    /* heads: resolution and divisibility */
    LOAD_FAIL(w, "", 3, XATTN_ERR_SHAPE, NULL); /* inner 8 % 3 */
    {
        xattn_bidir *m8 = load_ok(w, "", 0); /* default 8 -> dim_head 1 */
        if (m8) {
            xattn_bidir_config c;
            xattn_bidir_get_config(m8, &c);
            CHECK(c.heads == 8 && c.dim_head == 1);
            xattn_bidir_free(m8);
        }
        w->meta[0] = "heads";
        w->meta[1] = "4";
        w->n_meta = 1;
        m8 = load_ok(w, "", 0);
        if (m8) {
            xattn_bidir_config c;
            xattn_bidir_get_config(m8, &c);
            CHECK(c.heads == 4 && c.dim_head == 2);
            xattn_bidir_free(m8);
        }
        m8 = load_ok(w, "", 2); /* the argument wins over metadata */
        if (m8) {
            xattn_bidir_config c;
            xattn_bidir_get_config(m8, &c);
            CHECK(c.heads == 2 && c.dim_head == 4);
            xattn_bidir_free(m8);
        }
        w->meta[1] = "3";
        LOAD_FAIL(w, "", 0, XATTN_ERR_SHAPE, NULL);
        w->meta[1] = "abc";
        LOAD_FAIL(w, "", 0, XATTN_OK, "heads");
        w->meta[1] = "0";
        LOAD_FAIL(w, "", 0, XATTN_OK, "heads");
        w->n_meta = 0;
    }

    /* missing tensors */
    for (size_t k = 0; k < sizeof att_names / sizeof att_names[0]; k++) {
        wl_init(w);
        add_attention(w, 0, "", 8, 6, 2, 4, 0, 0);
        wl_remove(w, att_names[k]);
        LOAD_FAIL(w, "", 2, XATTN_ERR_NOT_FOUND, att_names[k]);
    }
    /* with a prefix: the message names the full tensor */
    wl_init(w);
    add_attention(w, 0, "blk.2.", 8, 6, 2, 4, 1, 1);
    {
        xattn_bidir *mp = load_ok(w, "blk.2.", 2);
        if (mp) {
            xattn_bidir_config c;
            xattn_bidir_get_config(mp, &c);
            CHECK(c.prenorm == XATTN_NORM_RMS && c.talking_heads);
            xattn_bidir_free(mp);
        }
    }
    LOAD_FAIL(w, "", 2, XATTN_ERR_NOT_FOUND, NULL); /* nothing under "" */
    LOAD_FAIL(w, "blk.3.", 2, XATTN_ERR_NOT_FOUND, NULL);
    wl_remove(w, "blk.2.context_to_v.weight");
    LOAD_FAIL(w, "blk.2.", 2, XATTN_ERR_NOT_FOUND, "blk.2.context_to_v.weight");

    /* wrong shapes */
    struct {
        const char *name;
        int axis;
        int64_t value;
    } shapes[] = {
        {"context_to_qk.weight", 0, 12}, /* inner dim != to_qk's */
        {"context_to_qk.weight", 1, 7},  /* != context_to_v's context_dim */
        {"to_v.weight", 0, 12},          /* inner dim */
        {"to_v.weight", 1, 9},           /* != to_qk's dim */
        {"context_to_v.weight", 0, 4},
        {"to_out.weight", 0, 7}, /* out width != dim */
        {"to_out.weight", 1, 9}, /* != inner */
        {"to_out.bias", 0, 9},
        {"context_to_out.weight", 0, 5},
        {"context_to_out.weight", 1, 10},
        {"context_to_out.bias", 0, 7},
    };
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        wl_init(w);
        add_attention(w, 0, "", 8, 6, 2, 4, 0, 0);
        wl_entry(w, shapes[k].name)->shape[shapes[k].axis] = shapes[k].value;
        LOAD_FAIL(w, "", 2, XATTN_ERR_SHAPE, NULL);
    }
    wl_init(w);
    add_attention(w, 0, "", 8, 6, 2, 4, 0, 0);
    wl_entry(w, "to_qk.weight")->ndim = 1;
    wl_entry(w, "to_qk.weight")->shape[0] = 64;
    LOAD_FAIL(w, "", 2, XATTN_ERR_SHAPE, "to_qk.weight");
    wl_init(w);
    add_attention(w, 0, "", 8, 6, 2, 4, 0, 0);
    wl_entry(w, "context_to_qk.weight")->dtype = XATTN_I32;
    LOAD_FAIL(w, "", 2, XATTN_ERR_UNSUPPORTED, "context_to_qk.weight");
    /* norms */
    wl_init(w);
    add_attention(w, 0, "", 8, 6, 2, 4, 1, 0);
    wl_entry(w, "norm.weight")->shape[0] = 6;
    LOAD_FAIL(w, "", 2, XATTN_ERR_SHAPE, "norm.weight");
    wl_init(w);
    add_attention(w, 0, "", 8, 6, 2, 4, 1, 0);
    wl_entry(w, "context_norm.weight")->shape[0] = 8;
    LOAD_FAIL(w, "", 2, XATTN_ERR_SHAPE, "context_norm.weight");
    wl_init(w);
    add_attention(w, 0, "", 8, 6, 2, 4, 1, 0);
    wl_remove(w, "context_norm.weight");
    LOAD_FAIL(w, "", 2, XATTN_OK, "context_norm");
    wl_init(w);
    add_attention(w, 0, "", 8, 6, 2, 4, 2, 0);
    wl_entry(w, "context_norm.bias")->shape[0] = 5;
    LOAD_FAIL(w, "", 2, XATTN_ERR_SHAPE, "context_norm.bias");
    wl_init(w);
    add_attention(w, 0, "", 8, 6, 2, 4, 2, 0);
    wl_remove(w, "context_norm.bias"); /* LayerNorm on one side only */
    LOAD_FAIL(w, "", 2, XATTN_OK, "context_norm");
    /* talking heads */
    wl_init(w);
    add_attention(w, 0, "", 8, 6, 2, 4, 0, 1);
    LOAD_FAIL(w, "", 4, XATTN_ERR_SHAPE, NULL); /* (2,2,1,1) with heads 4 */
    {
        xattn_bidir *mt = load_ok(w, "", 0); /* heads from the weight: 2 */
        if (mt) {
            xattn_bidir_config c;
            xattn_bidir_get_config(mt, &c);
            CHECK(c.heads == 2 && c.talking_heads);
            xattn_bidir_free(mt);
        }
    }
    wl_entry(w, "context_talking_heads.weight")->shape[1] = 4;
    LOAD_FAIL(w, "", 2, XATTN_ERR_SHAPE, "context_talking_heads.weight");
    wl_entry(w, "context_talking_heads.weight")->shape[1] = 2;
    wl_entry(w, "talking_heads.weight")->shape[2] = 3;
    LOAD_FAIL(w, "", 2, XATTN_ERR_SHAPE, "talking_heads.weight");
    wl_init(w);
    add_attention(w, 0, "", 8, 6, 2, 4, 0, 1);
    wl_remove(w, "context_talking_heads.weight");
    LOAD_FAIL(w, "", 2, XATTN_OK, "context_talking_heads");

    /* transformer */
    wl_init(w);
    add_transformer(w, 0, "", 2, 8, 6, 2, 4, 0, 32, 24, 0);
    m = load_ok(w, "", 2);
    if (m) {
        xattn_bidir_config c;
        xattn_bidir_get_config(m, &c);
        CHECK(c.is_transformer && c.depth == 2 && c.ff_hidden == 32 && c.context_ff_hidden == 24 &&
              c.dim == 8 && c.context_dim == 6 && !c.final_norms);
        float x[2 * 3 * 8], ctx[2 * 4 * 6], out[2 * 3 * 8], cout[2 * 4 * 6];
        float attn[2 * 2 * 3 * 4], cattn[2 * 2 * 3 * 4];
        uint64_t rng = 5;
        tu_fill_uniform(x, 48, -1, 1, &rng);
        tu_fill_uniform(ctx, 48, -1, 1, &rng);
        xattn_bidir_inputs in;
        memset(&in, 0, sizeof in);
        in.B = 2, in.I = 3, in.J = 4, in.x = x, in.context = ctx;
        CHECK_OK(fwd(m, &in, out, cout, NULL, NULL));
        xattn_status s = fwd(m, &in, out, cout, attn, cattn);
        tu_checks++;
        if (!((s == XATTN_ERR_UNSUPPORTED || s == XATTN_ERR_ARG) && xattn_last_error()[0])) {
            tu_failures++;
            fprintf(stderr, "%s:%d: transformer asked for maps -> %s (%s)\n", __FILE__, __LINE__,
                    xattn_status_string(s), xattn_last_error());
        }
        s = fwd(m, &in, out, cout, attn, NULL);
        CHECK(s == XATTN_ERR_UNSUPPORTED || s == XATTN_ERR_ARG);
        xattn_bidir_free(m);
    }
    wl_remove(w, "layers.1.2.3.bias");
    LOAD_FAIL(w, "", 2, XATTN_ERR_NOT_FOUND, "layers.1.2.3.bias");
    /* a whole feed-forward missing from the last layer: the message still names a tensor */
    wl_remove(w, "layers.1.2.0.weight");
    wl_remove(w, "layers.1.2.1.weight");
    wl_remove(w, "layers.1.2.1.bias");
    wl_remove(w, "layers.1.2.3.weight");
    LOAD_FAIL(w, "", 2, XATTN_OK, "layers.1.2.");
    wl_init(w);
    add_transformer(w, 0, "", 2, 8, 6, 2, 4, 0, 32, 24, 0);
    wl_remove(w, "layers.0.0.norm.weight"); /* the transformer's attention is prenorm */
    LOAD_FAIL(w, "", 2, XATTN_OK, "layers.0.0.norm.weight");
    wl_init(w);
    add_transformer(w, 0, "", 2, 8, 6, 2, 4, 0, 32, 24, 0);
    wl_entry(w, "layers.1.1.3.weight")->shape[1] = 31; /* != layers.1.1.1's hidden */
    LOAD_FAIL(w, "", 2, XATTN_ERR_SHAPE, "layers.1.1.3.weight");
    wl_init(w);
    add_transformer(w, 0, "", 2, 8, 6, 2, 4, 0, 32, 24, 0);
    wl_entry(w, "layers.1.0.context_to_qk.weight")->shape[0] = 16;
    LOAD_FAIL(w, "", 2, XATTN_ERR_SHAPE, "layers.1.0.context_to_qk.weight");
    wl_init(w);
    add_transformer(w, 0, "", 2, 8, 6, 2, 4, 0, 32, 24, 0);
    wl_entry(w, "layers.1.2.0.weight")->shape[0] = 8;
    LOAD_FAIL(w, "", 2, XATTN_ERR_SHAPE, "layers.1.2.0.weight");
    wl_init(w);
    add_transformer(w, 0, "", 2, 8, 6, 2, 4, 0, 32, 24, 7); /* context_norm of size 7 */
    LOAD_FAIL(w, "", 2, XATTN_ERR_SHAPE, "context_norm.weight");
    wl_init(w);
    add_transformer(w, 0, "", 1, 8, 6, 2, 4, 0, 32, 24, 8); /* size dim, but context_dim 6 */
    LOAD_FAIL(w, "", 2, XATTN_ERR_SHAPE, "context_norm.weight");
    wl_init(w);
    add_transformer(w, 0, "", 1, 8, 8, 2, 4, 0, 32, 32, 8); /* the package's own layout */
    m = load_ok(w, "", 2);
    if (m) {
        xattn_bidir_config c;
        xattn_bidir_get_config(m, &c);
        CHECK(c.final_norms && c.context_norm_dim == 8);
        xattn_bidir_free(m);
    }
    wl_init(w);
    add_transformer(w, 0, "", 1, 8, 6, 2, 4, 0, 32, 24, 6); /* size context_dim: accepted */
    m = load_ok(w, "", 2);
    if (m) {
        xattn_bidir_config c;
        xattn_bidir_get_config(m, &c);
        CHECK(c.final_norms && c.context_norm_dim == 6);
        xattn_bidir_free(m);
    }
    wl_init(w);
    add_transformer(w, 0, "", 1, 8, 8, 2, 4, 0, 32, 32, 8);
    wl_remove(w, "context_norm.weight"); /* final norms come in pairs */
    LOAD_FAIL(w, "", 2, XATTN_OK, "context_norm.weight");

    /* argument errors of load */
    wl_init(w);
    add_attention(w, 0, "", 8, 6, 2, 4, 0, 0);
    {
        xattn_safetensors *st = wl_open(w);
        xattn_bidir *mm = NULL;
        CHECK_FAIL(load_heads(NULL, "", 2, &mm), XATTN_ERR_ARG);
        CHECK_FAIL(load_heads(st, "", 2, NULL), XATTN_ERR_ARG);
        xattn_st_close(st);
    }
    wl_init(w);
    wl_add(w, 0, 0, 0, "", "something.else", 2, 4, 4, 0, 0);
    LOAD_FAIL(w, "", 2, XATTN_ERR_NOT_FOUND, NULL);
    free(w);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress lines and failure messages in order */
    printf("kernel set: %s\n", xattn_isa());
    const size_t nfix = sizeof FIXTURES / sizeof FIXTURES[0];
    for (size_t i = 0; i < nfix; i++) run_fixture(FIXTURES[i]);
    printf("torch fixtures: %zu files, max rel error out %.3g, maps %.3g, with-maps vs without "
           "%.3g (tolerance %.1g)\n",
           nfix, g_worst_out, g_worst_attn, g_worst_equiv, TU_TOL);
    test_random();
    test_errors();
    return tu_finish("test_bidir");
}
