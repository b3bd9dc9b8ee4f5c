/*
 * Sharded module runs (xattn_ctx_set_sharded): bidir, bidir-transformer, mha, attention, mutual,
 * joint and bert-decoder with their sequences cut across the ranks (xattn_shard_range: lengths
 * not divisible by the rank count, shards of 0 and 1 rows) against the single-process run of the
 * same module on the whole inputs: outputs within 2e-5 (1 + |ref|), input gradients and the
 * parameter gradients (summed over the ranks) within 1e-4 (1 + |ref|), the global MSE loss; and
 * the refusals (maps, a kind that cannot run sharded), the same on every rank.
 */
#include "mpitest.h"

#define MAXT 8

typedef struct tset {
    xattn_tensor t[MAXT];
    int n;
} tset;

static int64_t numel(const xattn_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

static void add_f32(tset *s, const char *name, int ndim, const int64_t *shape, uint64_t *seed)
{
    xattn_tensor *t = &s->t[s->n++];
    memset(t, 0, sizeof *t);
    t->name = name, t->dtype = XATTN_F32, t->ndim = ndim;
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    t->data = mt_rand(numel(t), -1.0f, 1.0f, seed);
}

/* a bool mask, each value 1 with probability p_one (percent) */
static void add_mask(tset *s, const char *name, int ndim, const int64_t *shape, int p_one,
                     uint64_t *seed)
{
    xattn_tensor *t = &s->t[s->n++];
    memset(t, 0, sizeof *t);
    t->name = name, t->dtype = XATTN_BOOL, t->ndim = ndim;
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    uint8_t *d = malloc((size_t)numel(t) + 1);
    for (int64_t i = 0; i < numel(t); i++) d[i] = mt_int(seed, 0, 99) < p_one;
    t->data = d;
}

static void tset_free(tset *s)
{
    for (int i = 0; i < s->n; i++) free(s->t[i].data);
    s->n = 0;
}

/* rows [start, start + len) of axis `axis` of t (a copy; axis -1: the whole tensor) */
static xattn_tensor slice(const xattn_tensor *t, int axis, int64_t start, int64_t len)
{
    xattn_tensor r = *t;
    const size_t esz = xattn_dtype_size(t->dtype);
    if (axis < 0) {
        r.data = malloc((size_t)numel(t) * esz + 1);
        memcpy(r.data, t->data, (size_t)numel(t) * esz);
        return r;
    }
    r.shape[axis] = len;
    int64_t outer = 1, inner = (int64_t)esz;
    for (int d = 0; d < axis; d++) outer *= t->shape[d];
    for (int d = axis + 1; d < t->ndim; d++) inner *= t->shape[d];
    r.data = malloc((size_t)(outer * len * inner) + 1);
    for (int64_t o = 0; o < outer; o++)
        memcpy((char *)r.data + o * len * inner,
               (const char *)t->data + (o * t->shape[axis] + start) * inner, (size_t)(len * inner));
    return r;
}

/* this rank's slice of each tensor of s (input or output of m) */
static int shard_set(const xattn_module *m, const tset *s, int output, tset *local)
{
    local->n = s->n;
    for (int i = 0; i < s->n; i++) {
        int axis = -1;
        if (xattn_module_shard_axis(m, s->t[i].name, output, s->t[i].ndim, &axis)) return -1;
        int64_t st = 0, len = 0;
        if (axis >= 0) xattn_shard_range(s->t[i].shape[axis], mt_size, mt_rank, &st, &len);
        local->t[i] = slice(&s->t[i], axis, st, len);
    }
    return 0;
}

/* zeroed tensors shaped like s */
static void like(const tset *s, tset *z)
{
    z->n = s->n;
    for (int i = 0; i < s->n; i++) {
        z->t[i] = s->t[i];
        z->t[i].dtype = XATTN_F32;
        z->t[i].data = calloc((size_t)numel(&s->t[i]) + 1, sizeof(float));
    }
}

static double set_err(const tset *got, const tset *ref)
{
    double e = 0.0;
    for (int i = 0; i < got->n; i++)
        e = mt_max(e, mt_err(got->t[i].data, ref->t[i].data, numel(&got->t[i])));
    return e;
}

static double worst_fwd, worst_grad;
static int n_maps; /* cases whose attention maps were checked */
static xattn_ctx *ref_ctx, *dist_ctx;

/* Output names of a kind's run (all required outputs). */
static void outputs_of(const xattn_module *m, const tset *in, tset *out)
{
    out->n = 0;
    for (size_t i = 0; i < xattn_module_output_count(m); i++) {
        xattn_io_desc d;
        xattn_module_output(m, i, &d);
        if (d.optional) continue;
        xattn_tensor *t = &out->t[out->n++];
        memset(t, 0, sizeof *t);
        t->name = d.name;
    }
    CHECK_OK(xattn_module_plan(m, in->t, (size_t)in->n, out->t, (size_t)out->n));
    for (int i = 0; i < out->n; i++) out->t[i].data = calloc((size_t)numel(&out->t[i]) + 1, 4);
}

/* the float inputs (those with gradients) of in */
static void float_inputs(const xattn_module *m, const tset *in, tset *f)
{
    f->n = 0;
    for (int i = 0; i < in->n; i++) {
        int mask = 0;
        for (size_t k = 0; k < xattn_module_input_count(m); k++) {
            xattn_io_desc d;
            xattn_module_input(m, k, &d);
            if (!strcmp(d.name, in->t[i].name)) mask = d.mask;
        }
        if (!mask && in->t[i].dtype == XATTN_F32) f->t[f->n++] = in->t[i];
    }
}

/* gradients must be overwritten: fill them with values no gradient has */
static void poison(tset *din, float **dp, const int64_t *pn, size_t np)
{
    for (int i = 0; i < din->n; i++)
        for (int64_t k = 0; k < numel(&din->t[i]); k++) ((float *)din->t[i].data)[k] = 1e3f;
    for (size_t i = 0; i < np; i++)
        for (int64_t k = 0; dp[i] && k < pn[i]; k++) dp[i][k] = 1e3f;
}

/* The forward of m on `in` into the planned outputs `out` in one process, then sharded (each
 * rank its slices, lin; lout, lref: its outputs and the reference's slices of them), compared
 * within 2e-5 (1 + |ref|). 0, or -1 when the slices cannot be taken. */
static int forward_both(const char *label, const xattn_module *m, const tset *in, tset *out,
                        tset *lin, tset *lout, tset *lref)
{
    CHECK_OK(xattn_module_forward(ref_ctx, m, in->t, (size_t)in->n, out->t, (size_t)out->n));
    if (shard_set(m, in, 0, lin) || shard_set(m, out, 1, lref)) {
        fprintf(stderr, "%s: %s\n", label, xattn_last_error());
        CHECK(0);
        return -1;
    }
    like(lref, lout);
    for (int i = 0; i < lout->n; i++)
        for (int64_t k = 0; k < numel(&lout->t[i]); k++) ((float *)lout->t[i].data)[k] = 1e3f;
    xattn_status s =
        xattn_module_forward(dist_ctx, m, lin->t, (size_t)lin->n, lout->t, (size_t)lout->n);
    CHECK(s == XATTN_OK);
    if (s) fprintf(stderr, "rank %d %s: %s\n", mt_rank, label, xattn_last_error());
    double ef = 0.0;
    for (int i = 0; i < lout->n; i++) {
        const double e = mt_err(lout->t[i].data, lref->t[i].data, numel(&lout->t[i]));
        if (!(e <= 2e-5))
            fprintf(stderr, "rank %d %s: %s error %.3g\n", mt_rank, label, lout->t[i].name, e);
        ef = mt_max(ef, e);
    }
    CHECK(ef <= 2e-5);
    worst_fwd = mt_max(worst_fwd, ef);
    return 0;
}

/* The sharded forward and gradients of m on `in` against the single-process run. */
static void check_module(const char *label, const xattn_module *m, const tset *in, uint64_t *seed)
{
    tset out, lin, lout, lref;
    outputs_of(m, in, &out);
    if (forward_both(label, m, in, &out, &lin, &lout, &lref)) return;
    xattn_status s;

    /* gradients: random output gradients, every float input, every parameter */
    tset dout, ldout, fin, din, ldin, lfin, ldin_ref;
    dout.n = out.n;
    for (int i = 0; i < out.n; i++) {
        dout.t[i] = out.t[i];
        dout.t[i].data = mt_rand(numel(&out.t[i]), -1.0f, 1.0f, seed);
    }
    float_inputs(m, in, &fin);
    like(&fin, &din);
    const size_t np = xattn_module_param_count(m);
    float **dp = calloc(np + 1, sizeof *dp), **ldp = calloc(np + 1, sizeof *ldp);
    int64_t *pn = calloc(np + 1, sizeof *pn);
    for (size_t i = 0; i < np; i++) {
        xattn_param_desc p;
        xattn_module_param(m, i, &p);
        if (!p.data) continue; /* an optional parameter the module does not have */
        pn[i] = tu_param_numel(&p);
        dp[i] = calloc((size_t)pn[i] + 1, sizeof(float));
        ldp[i] = calloc((size_t)pn[i] + 1, sizeof(float));
    }
    CHECK_OK(xattn_module_grad(ref_ctx, m, in->t, (size_t)in->n, NULL, 0, dout.t, (size_t)dout.n,
                               din.t, (size_t)din.n, dp));
    shard_set(m, &dout, 1, &ldout);
    shard_set(m, &din, 0, &ldin_ref);
    float_inputs(m, &lin, &lfin);
    like(&lfin, &ldin);
    poison(&ldin, ldp, pn, np);
    s = xattn_module_grad(dist_ctx, m, lin.t, (size_t)lin.n, NULL, 0, ldout.t, (size_t)ldout.n,
                          ldin.t, (size_t)ldin.n, ldp);
    CHECK(s == XATTN_OK);
    if (s) fprintf(stderr, "rank %d %s grad: %s\n", mt_rank, label, xattn_last_error());
    double eg = set_err(&ldin, &ldin_ref);
    for (size_t i = 0; i < np; i++) eg = mt_max(eg, mt_err(ldp[i], dp[i], pn[i]));
    if (!(eg <= 1e-4)) fprintf(stderr, "rank %d %s: gradient error %.3g\n", mt_rank, label, eg);
    CHECK(eg <= 1e-4);
    worst_grad = mt_max(worst_grad, eg);

    /* the MSE loss over every rank's elements and its gradients (targets: the output gradients) */
    double loss = 0.0, lloss = -1.0;
    CHECK_OK(xattn_module_mse_grad(ref_ctx, m, in->t, (size_t)in->n, dout.t, (size_t)dout.n, &loss,
                                   din.t, (size_t)din.n, dp));
    poison(&ldin, ldp, pn, np);
    s = xattn_module_mse_grad(dist_ctx, m, lin.t, (size_t)lin.n, ldout.t, (size_t)ldout.n, &lloss,
                              ldin.t, (size_t)ldin.n, ldp);
    CHECK(s == XATTN_OK);
    tset ldin_ref2;
    shard_set(m, &din, 0, &ldin_ref2);
    double el = fabs(lloss - loss) / (1.0 + fabs(loss));
    eg = set_err(&ldin, &ldin_ref2);
    for (size_t i = 0; i < np; i++) eg = mt_max(eg, mt_err(ldp[i], dp[i], pn[i]));
    if (!(el <= 2e-5 && eg <= 1e-4)) {
        fprintf(stderr, "rank %d %s: mse loss %.9g vs %.9g, gradient error %.3g\n", mt_rank, label,
                lloss, loss, eg);
        for (int i = 0; i < ldin.n; i++)
            fprintf(stderr, "  d_%s %.3g\n", ldin.t[i].name,
                    mt_err(ldin.t[i].data, ldin_ref2.t[i].data, numel(&ldin.t[i])));
        for (size_t i = 0; i < np; i++) {
            xattn_param_desc p;
            xattn_module_param(m, i, &p);
            const double e = mt_err(ldp[i], dp[i], pn[i]);
            if (e > 1e-4) fprintf(stderr, "  %s %.3g\n", p.name, e);
        }
    }
    CHECK(el <= 2e-5 && eg <= 1e-4);
    worst_grad = mt_max(worst_grad, eg);

    for (size_t i = 0; i < np; i++) free(dp[i]), free(ldp[i]);
    free(dp), free(ldp), free(pn);
    tset_free(&out), tset_free(&lin), tset_free(&lout), tset_free(&lref), tset_free(&dout);
    tset_free(&ldout), tset_free(&din), tset_free(&ldin), tset_free(&ldin_ref);
    tset_free(&ldin_ref2);
}

/* The forward with every output, the optional attention maps included (each rank its query
 * rows of every key column), against the single-process run. */
static void check_maps(const char *label, const xattn_module *m, const tset *in)
{
    tset out, lin, lout, lref;
    out.n = 0;
    for (size_t i = 0; i < xattn_module_output_count(m); i++) {
        xattn_io_desc d;
        xattn_module_output(m, i, &d);
        xattn_tensor *t = &out.t[out.n++];
        memset(t, 0, sizeof *t);
        t->name = d.name;
    }
    CHECK_OK(xattn_module_plan(m, in->t, (size_t)in->n, out.t, (size_t)out.n));
    for (int i = 0; i < out.n; i++) out.t[i].data = calloc((size_t)numel(&out.t[i]) + 1, 4);
    if (forward_both(label, m, in, &out, &lin, &lout, &lref)) return;
    n_maps++;
    tset_free(&out), tset_free(&lin), tset_free(&lout), tset_free(&lref);
}

static xattn_module *create(const char *kind, const xattn_option *o, size_t n, uint64_t seed)
{
    xattn_module *m = NULL;
    CHECK_OK(xattn_module_create(kind, o, n, seed, &m));
    return m;
}

/* global lengths: often below the rank count (shards of 0 rows), often not divisible by it */
static int64_t length(uint64_t *s)
{
    const int k = (int)mt_int(s, 0, 3);
    return k == 0 ? mt_int(s, 1, 3) : mt_int(s, 1, 11);
}

static const char *b(uint64_t *s) { return mt_int(s, 0, 1) ? "True" : "False"; }

static void one_case(int c, uint64_t *s)
{
    const int kind = c % 8;
    const int64_t B = mt_int(s, 1, 2), I = length(s), J = length(s);
    tset in;
    in.n = 0;
    xattn_module *m = NULL;
    char label[160];
    if (kind == 0 || kind == 1) { /* bidir, bidir-transformer */
        const xattn_option o[] = {{"dim", "8"},      {"context_dim", "6"},    {"heads", "2"},
                                  {"dim_head", "4"}, {"talking_heads", b(s)}, {"prenorm", b(s)}};
        const xattn_option t[] = {
            {"dim", "8"},          {"context_dim", "8"},        {"heads", "2"},
            {"dim_head", "4"},     {"talking_heads", b(s)},     {"depth", "2"},
            {"final_norms", b(s)}, {"ff_expansion_factor", "2"}};
        m = kind ? create("bidir-transformer", t, 8, (uint64_t)c + 1)
                 : create("bidir", o, 6, (uint64_t)c + 1);
        add_f32(&in, "x", 3, (int64_t[]){B, I, 8}, s);
        add_f32(&in, "context", 3, (int64_t[]){B, J, kind ? 8 : 6}, s);
        if (mt_int(s, 0, 1)) add_mask(&in, "mask", 2, (int64_t[]){B, I}, 80, s);
        if (mt_int(s, 0, 1)) add_mask(&in, "context_mask", 2, (int64_t[]){B, J}, 80, s);
        switch (mt_int(s, 0, 4)) { /* rel_pos_bias: (I, J), (H|1, I, J), (B|1, H|1, I, J) */
        case 1: add_f32(&in, "rel_pos_bias", 2, (int64_t[]){I, J}, s); break;
        case 2:
            add_f32(&in, "rel_pos_bias", 3, (int64_t[]){mt_int(s, 0, 1) ? 2 : 1, I, J}, s);
            break;
        case 3:
            add_f32(&in, "rel_pos_bias", 4,
                    (int64_t[]){mt_int(s, 0, 1) ? B : 1, mt_int(s, 0, 1) ? 2 : 1, I, J}, s);
            break;
        default: break;
        }
    } else if (kind == 2 || kind == 3) { /* nn.MultiheadAttention: cross, or self with causal */
        const int self = kind == 3;
        const xattn_option o[] = {
            {"embed_dim", "8"}, {"num_heads", "2"}, {"bias", b(s)}, {"kdim", "6"}, {"vdim", "5"}};
        m = create("mha", o, self ? 3 : 5, (uint64_t)c + 1);
        add_f32(&in, "query", 3, (int64_t[]){B, I, 8}, s);
        const int64_t Jk = self ? I : J;
        if (!self) {
            add_f32(&in, "key", 3, (int64_t[]){B, J, 6}, s);
            add_f32(&in, "value", 3, (int64_t[]){B, J, 5}, s);
        }
        if (mt_int(s, 0, 2) == 0) {
            add_f32(&in, "key_padding_mask", 2, (int64_t[]){B, Jk}, s); /* float: added */
        } else if (mt_int(s, 0, 1)) {
            add_mask(&in, "key_padding_mask", 2, (int64_t[]){B, Jk}, 20, s); /* True = out */
        }
        /* attn_mask over both sequences: each rank its query rows and every key column;
         * (I, J) or (B * num_heads, I, J), bool (True = out) or float (added) */
        const int per_head = (int)mt_int(s, 0, 1);
        const int64_t ams[3] = {B * 2, I, Jk};
        switch (mt_int(s, 0, 2)) {
        case 1: add_mask(&in, "attn_mask", 2 + per_head, ams + 1 - per_head, 25, s); break;
        case 2: add_f32(&in, "attn_mask", 2 + per_head, ams + 1 - per_head, s); break;
        default: break;
        }
        if (self || mt_int(s, 0, 1)) {
            add_mask(&in, "is_causal", 0, (int64_t[]){0}, 100, s);
        }
    } else if (kind == 4) { /* diffusers Attention */
        const xattn_option o[] = {{"query_dim", "8"}, {"cross_attention_dim", "6"},
                                  {"heads", "2"},     {"dim_head", "3"},
                                  {"bias", b(s)},     {"residual_connection", b(s)}};
        m = create("attention", o, 6, (uint64_t)c + 1);
        add_f32(&in, "hidden_states", 3, (int64_t[]){B, I, 8}, s);
        add_f32(&in, "encoder_hidden_states", 3, (int64_t[]){B, J, 6}, s);
        if (mt_int(s, 0, 1)) add_mask(&in, "attention_mask", 2, (int64_t[]){B, J}, 80, s);
    } else if (kind == 5) { /* mutual: a and b of one shape, (B, N, D) or (N, D) */
        m = create("mutual", NULL, 0, 0);
        if (mt_int(s, 0, 1)) {
            add_f32(&in, "a", 3, (int64_t[]){B, I, 5}, s);
            add_f32(&in, "b", 3, (int64_t[]){B, I, 5}, s);
        } else {
            add_f32(&in, "a", 2, (int64_t[]){I, 5}, s);
            add_f32(&in, "b", 2, (int64_t[]){I, 5}, s);
        }
    } else if (kind == 6) { /* joint: a TransformerEncoder over [x; context] */
        const xattn_option o[] = {{"d_model", "8"},
                                  {"nhead", "2"},
                                  {"dim_feedforward", "12"},
                                  {"dropout", "0"},
                                  {"num_layers", "2"},
                                  {"norm_first", b(s)},
                                  {"activation", mt_int(s, 0, 1) ? "gelu" : "relu"},
                                  {"norm", b(s)}};
        m = create("joint", o, 8, (uint64_t)c + 1);
        add_f32(&in, "x", 3, (int64_t[]){B, I, 8}, s);
        add_f32(&in, "context", 3, (int64_t[]){B, J, 8}, s);
        if (mt_int(s, 0, 1)) add_mask(&in, "x_padding_mask", 2, (int64_t[]){B, I}, 20, s);
        if (mt_int(s, 0, 1)) add_mask(&in, "context_padding_mask", 2, (int64_t[]){B, J}, 20, s);
    } else { /* bert-decoder, the full forward (causal self-attention, cross-attention) */
        const xattn_option o[] = {{"hidden_size", "8"},
                                  {"num_attention_heads", "2"},
                                  {"intermediate_size", "12"},
                                  {"num_hidden_layers", "2"},
                                  {"encoder_width", "6"}};
        m = create("bert-decoder", o, 5, (uint64_t)c + 1);
        add_f32(&in, "hidden_states", 3, (int64_t[]){B, I, 8}, s);
        add_f32(&in, "encoder_hidden_states", 3, (int64_t[]){B, J, 6}, s);
        if (mt_int(s, 0, 1)) add_mask(&in, "attention_mask", 2, (int64_t[]){B, I}, 80, s);
        if (mt_int(s, 0, 1)) add_mask(&in, "encoder_attention_mask", 2, (int64_t[]){B, J}, 80, s);
    }
    if (!m) return;
    int o = snprintf(label, sizeof label, "case %d (%s, B=%lld I=%lld J=%lld", c,
                     xattn_module_kind(m), (long long)B, (long long)I, (long long)J);
    for (int i = 2; i < in.n && o < (int)sizeof label; i++)
        o += snprintf(label + o, sizeof label - (size_t)o, " %s", in.t[i].name);
    if (o < (int)sizeof label) snprintf(label + o, sizeof label - (size_t)o, ")");
    check_module(label, m, &in, s);
    /* the attention maps: bidir, mha, attention (a bidir-transformer returns none) */
    if (kind == 0 || kind == 2 || kind == 3 || kind == 4) check_maps(label, m, &in);
    tset_free(&in);
    xattn_module_free(m);
}

/* Refusals: every rank gets the same error, naming what is refused. */
static void refusals(void)
{
    uint64_t s = 7;
    const xattn_option o[] = {{"dim", "8"}, {"heads", "2"}, {"dim_head", "4"}};
    xattn_module *m = create("bidir", o, 3, 1);
    tset in;
    in.n = 0;
    add_f32(&in, "x", 3, (int64_t[]){1, 3, 8}, &s);
    add_f32(&in, "context", 3, (int64_t[]){1, 2, 8}, &s);
    /* rel_pos_bias of the wrong column count (each rank must hold every key column) */
    add_f32(&in, "rel_pos_bias", 2, (int64_t[]){3, 2 * mt_size + 1}, &s);
    in.t[2].shape[1] = 2; /* planned as one process's */
    tset out;
    outputs_of(m, &in, &out);
    in.t[2].shape[1] = 2 * mt_size + 1; /* every rank: 3 x rows, 2 context rows */
    CHECK(xattn_module_forward(dist_ctx, m, in.t, 3, out.t, (size_t)out.n) == XATTN_ERR_SHAPE);
    CHECK(strstr(xattn_last_error(), "rel_pos_bias") != NULL);
    int axis = 0;
    CHECK_OK(xattn_module_shard_axis(m, "rel_pos_bias", 0, 4, &axis));
    CHECK(axis == 2);
    CHECK_OK(xattn_module_shard_axis(m, "attn", 1, 4, &axis)); /* the maps: their query rows */
    CHECK(axis == 2);
    CHECK_OK(xattn_module_shard_axis(m, "context_mask", 0, 2, &axis));
    CHECK(axis == 1);
    tset_free(&out);
    tset_free(&in);
    xattn_module_free(m);
    const xattn_option mo[] = {{"embed_dim", "8"}, {"num_heads", "2"}, {"add_bias_kv", "True"}};
    m = create("mha", mo, 3, 1);
    CHECK(xattn_module_shard_axis(m, "query", 0, 3, &axis) == XATTN_ERR_UNSUPPORTED);
    CHECK(strstr(xattn_last_error(), "add_bias_kv") != NULL);
    xattn_module_free(m);
    m = create("mha", mo, 2, 1); /* an attn_mask: cut along its query rows */
    in.n = 0;                    /* an attn_mask of the wrong column count: refused on every rank */
    add_f32(&in, "query", 3, (int64_t[]){1, 3, 8}, &s);
    add_f32(&in, "attn_mask", 2, (int64_t[]){3, 3 * mt_size + 1}, &s);
    in.t[1].shape[1] = 3; /* planned as one process's */
    outputs_of(m, &in, &out);
    in.t[1].shape[1] = 3 * mt_size + 1; /* every rank: 3 query rows */
    CHECK(xattn_module_forward(dist_ctx, m, in.t, 2, out.t, (size_t)out.n) == XATTN_ERR_SHAPE);
    CHECK(strstr(xattn_last_error(), "attn_mask holds") != NULL);
    if (mt_size > 1) { /* rank 0 without the attn_mask the others have: every rank names it */
        in.t[1].shape[1] = 3 * mt_size;
        const int n_in = mt_rank == 0 ? 1 : 2;
        CHECK(xattn_module_forward(dist_ctx, m, in.t, (size_t)n_in, out.t, (size_t)out.n) ==
              XATTN_ERR_ARG);
        CHECK(strstr(xattn_last_error(), "rank 0 has no attn_mask") != NULL);
        /* and the correct call works afterwards */
        CHECK_OK(xattn_module_forward(dist_ctx, m, in.t, 2, out.t, (size_t)out.n));
    }
    tset_free(&out);
    tset_free(&in);
    CHECK_OK(xattn_module_shard_axis(m, "attn_mask", 0, 2, &axis));
    CHECK(axis == 0);
    CHECK_OK(xattn_module_shard_axis(m, "attn_mask", 0, 3, &axis));
    CHECK(axis == 1);
    CHECK_OK(xattn_module_shard_axis(m, "attn", 1, 3, &axis)); /* the maps: their query rows */
    CHECK(axis == 1);
    xattn_module_free(m);
    m = NULL;
    if (!xattn_module_create("interlaced", NULL, 0, 1, &m)) {
        CHECK(xattn_module_shard_axis(m, "x", 0, 4, &axis) == XATTN_ERR_UNSUPPORTED);
        CHECK(strstr(xattn_last_error(), "interlaced cannot run sharded") != NULL);
        xattn_module_free(m);
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &mt_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mt_size);
    CHECK_OK(xattn_ctx_new(&ref_ctx));
    CHECK_OK(xattn_ctx_new(&dist_ctx));
    CHECK_OK(xattn_ctx_set_comm(dist_ctx, MPI_COMM_WORLD));
    CHECK_OK(xattn_ctx_set_sharded(dist_ctx, 1));
    CHECK(xattn_ctx_get_sharded(dist_ctx) == 1 && xattn_ctx_get_sharded(ref_ctx) == 0);
    const int n = argc > 1 ? atoi(argv[1]) : 48, only = argc > 2 ? atoi(argv[2]) : -1;
    for (int c = 0; c < n; c++) {
        uint64_t seed = 0x5eed + 7919 * (uint64_t)c; /* each case its own stream */
        if (only < 0 || c == only) one_case(c, &seed);
    }
    refusals();
    const double f = mt_max_all(worst_fwd), g = mt_max_all(worst_grad);
    if (mt_rank == 0)
        printf("worst forward error %.3g, gradient error %.3g; maps checked in %d cases\n", f, g,
               n_maps);
    xattn_ctx_set_comm(dist_ctx, MPI_COMM_NULL);
    xattn_ctx_free(dist_ctx);
    xattn_ctx_free(ref_ctx);
    const int rc = mt_finish("test_mpi_modules");
    MPI_Finalize();
    return rc;
}
