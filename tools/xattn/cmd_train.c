/*
 * xattn train: trains a saved module on .npy inputs and targets with an MSE loss, an optimizer
 * as torch.optim's (AdamW, SGD), gradient clipping, a learning-rate schedule, mini-batches along
 * the batch axis (in order, or shuffled per epoch from a seed), a JSON-lines log, checkpoints
 * (weights, optimizer state, step in one safetensors file, written atomically) and resuming
 * from one with the same continuation, bit for bit.
 */
#include "cli.h"
#include "reg_cli.h"
#include "cli_dist.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct train_args {
    const char *target, *context_target, *out, *log, *resume, *optimizer, *schedule, *parallel;
    long long steps, batch_size, warmup, every, seed, stop_after;
    int shuffle;
    double clip;
    xattn_option opt[8]; /* optimizer options as text */
    int n_opt;
} train_args;

static void help(void)
{
    printf(
        "usage: xattn train MODEL.safetensors [--module KIND] [--prefix P] --INPUT FILE.npy ...\n"
        "                   [--OPTION VALUE ...] --target T.npy [--context-target CT.npy]\n"
        "                   --steps N --out OUT.safetensors [--batch-size B]\n"
        "                   [--optimizer adamw|sgd] [--lr LR] [--betas B1,B2] [--eps E]\n"
        "                   [--weight-decay W] [--amsgrad] [--momentum M] [--dampening D]\n"
        "                   [--nesterov] [--grad-clip C] [--schedule constant|cosine]\n"
        "                   [--warmup W] [--shuffle] [--seed S] [--checkpoint-every K]\n"
        "                   [--resume CKPT] [--stop-after K] [--log LOG.jsonl] [--threads N]\n"
        "                   [--kernels K]\n"
        "\n"
        "Trains the module on the inputs 'xattn run' takes, against targets of its outputs:\n"
        "the loss is F.mse_loss(out, T) (+ F.mse_loss(context_out, CT)), reduction 'mean'.\n"
        "  --steps N             optimizer steps\n"
        "  --batch-size B        samples per step (default: the whole batch); sample b of step\n"
        "                        s is (s*B + b) mod N of the N given\n"
        "  --shuffle             instead, every epoch in an order drawn from --seed S\n"
        "                        (default 0)\n"
        "  --optimizer NAME      adamw (default) or sgd, as torch.optim.AdamW / SGD with their\n"
        "                        defaults: --lr (1e-3), --betas (0.9,0.999), --eps (1e-8),\n"
        "                        --weight-decay (adamw 1e-2, sgd 0), --amsgrad; --momentum (0),\n"
        "                        --dampening (0), --nesterov\n"
        "  --grad-clip C         clip the gradients' total 2-norm to C\n"
        "                        (torch.nn.utils.clip_grad_norm_)\n"
        "  --schedule NAME       constant (default) or cosine; --warmup W steps of linear\n"
        "                        warmup first (transformers' get_cosine_schedule_with_warmup)\n"
        "  --checkpoint-every K  every K steps (and at the end) write OUT's name with\n"
        "                        .ckpt.safetensors: weights, optimizer state, step and the\n"
        "                        training options, written beside it and renamed into place\n"
        "  --resume CKPT         continue from a checkpoint (same data and options): the\n"
        "                        same weights, bit for bit, as a run that did not stop\n"
        "  --stop-after K        stop after step K, writing a checkpoint (and OUT): a long run\n"
        "                        in parts, each continued with --resume\n"
        "  --out OUT             the trained module (float32), loadable by PyTorch's\n"
        "                        load_state_dict(strict=True) and by 'xattn run'\n"
        "  --log LOG.jsonl       one line per step: step, loss, lr, grad_norm, seconds\n"
        "  --kernels K           the kernel set, as 'xattn run' takes it\n"
        "  --parallel MODE       under mpirun (MPI build): sequence (default: every rank reads\n"
        "                        its rows of the sequences and targets, the module runs\n"
        "                        sharded) or data (every rank a share of each step's\n"
        "                        samples); the gradients are summed over the ranks, so the\n"
        "                        losses and weights are those of one process; rank 0 writes\n"
        "                        OUT, the checkpoints and the log\n"
        "A progress line with the loss is drawn on a terminal.\n");
}

/* the training flags out of the command line (marked used) */
static int take_flags(const char *cmd, const reg_args *a, reg_state *s, train_args *t)
{
    memset(t, 0, sizeof *t);
    t->seed = 0;
    static const char *const opt_flags[][2] = {{"--lr", "lr"},
                                               {"--betas", "betas"},
                                               {"--eps", "eps"},
                                               {"--weight-decay", "weight_decay"},
                                               {"--momentum", "momentum"},
                                               {"--dampening", "dampening"}};
    for (int r = 0; r < a->n_rest; r++) {
        const char *f = a->rest[r].flag, *v = a->rest[r].value;
        const char **str = !strcmp(f, "--target")           ? &t->target
                           : !strcmp(f, "--context-target") ? &t->context_target
                           : !strcmp(f, "--out")            ? &t->out
                           : !strcmp(f, "--log")            ? &t->log
                           : !strcmp(f, "--resume")         ? &t->resume
                           : !strcmp(f, "--optimizer")      ? &t->optimizer
                           : !strcmp(f, "--schedule")       ? &t->schedule
                           : !strcmp(f, "--parallel")       ? &t->parallel
                                                            : NULL;
        long long *num = !strcmp(f, "--steps")              ? &t->steps
                         : !strcmp(f, "--batch-size")       ? &t->batch_size
                         : !strcmp(f, "--warmup")           ? &t->warmup
                         : !strcmp(f, "--checkpoint-every") ? &t->every
                         : !strcmp(f, "--seed")             ? &t->seed
                         : !strcmp(f, "--stop-after")       ? &t->stop_after
                                                            : NULL;
        int sw = !strcmp(f, "--shuffle") || !strcmp(f, "--amsgrad") || !strcmp(f, "--nesterov");
        int known = str || num || sw || !strcmp(f, "--grad-clip");
        for (size_t k = 0; k < sizeof opt_flags / sizeof opt_flags[0] && !known; k++)
            if (!strcmp(f, opt_flags[k][0])) {
                if (!v) return cli_usage(cmd, "%s needs a value", f);
                t->opt[t->n_opt].name = opt_flags[k][1];
                t->opt[t->n_opt++].value = v;
                known = 1;
            }
        if (!known) continue;
        for (int q = 0; q < r; q++)
            if (!strcmp(a->rest[q].flag, f)) return cli_usage(cmd, "%s given twice", f);
        s->used[r] = 1;
        if (sw) {
            if (v) return cli_usage(cmd, "%s takes no value", f);
            if (!strcmp(f, "--shuffle"))
                t->shuffle = 1;
            else {
                t->opt[t->n_opt].name = f + 2;
                t->opt[t->n_opt++].value = "True";
            }
            continue;
        }
        if (!v) return cli_usage(cmd, "%s needs a value", f);
        if (str) *str = v;
        char *end = NULL;
        if (num) {
            const long long x = strtoll(v, &end, 10);
            const long long lo = num == &t->steps || num == &t->batch_size || num == &t->every ||
                                 num == &t->stop_after;
            if (!*v || *end || x < (num == &t->seed ? 0 : lo) || x > (1LL << 40))
                return cli_usage(cmd, "%s: '%s' is not an integer in [%lld, 2^40]", f, v,
                                 num == &t->seed ? 0 : lo);
            *num = x;
        }
        if (!strcmp(f, "--grad-clip")) {
            t->clip = strtod(v, &end);
            if (!*v || *end || !(t->clip > 0 && t->clip < 1e30))
                return cli_usage(cmd, "--grad-clip: '%s' is not a positive number", v);
        }
    }
    if (!t->target) return cli_usage(cmd, "missing --target T.npy");
    if (!t->steps) return cli_usage(cmd, "missing --steps N");
    if (!t->out) return cli_usage(cmd, "missing --out OUT.safetensors");
    if (t->schedule && strcmp(t->schedule, "constant") && strcmp(t->schedule, "cosine"))
        return cli_usage(cmd, "--schedule: '%s' is not constant or cosine", t->schedule);
    if (t->optimizer && strcmp(t->optimizer, "adamw") && strcmp(t->optimizer, "sgd"))
        return cli_usage(cmd, "--optimizer: '%s' is not adamw or sgd", t->optimizer);
    if (t->parallel && strcmp(t->parallel, "data") && strcmp(t->parallel, "sequence"))
        return cli_usage(cmd, "--parallel: '%s' is not data or sequence", t->parallel);
    if (t->parallel && !cli_dist_active())
        return cli_usage(cmd, "--parallel %s: only under mpirun (an MPI build started by mpirun)",
                         t->parallel);
    return 0;
}

/* ---- data: mini-batches along the batch axis ---- */

typedef struct batched {
    const float *src; /* (N, per) the whole array */
    const uint8_t *msrc;
    int64_t per; /* values per sample */
    size_t esize;
    void *buf; /* (B, per) the mini-batch */
    int local; /* data-parallel: src holds only the samples this rank uses (see pick_batch) */
} batched;

/* The order of epoch e: 0..N-1, or a permutation drawn from (seed, e). */
static void epoch_order(int64_t N, int shuffle, long long seed, int64_t e, int64_t *order)
{
    for (int64_t i = 0; i < N; i++) order[i] = i;
    if (!shuffle) return;
    uint64_t z = (uint64_t)seed * 0x9e3779b97f4a7c15ull + (uint64_t)e + 1;
    for (int64_t i = N - 1; i > 0; i--) {
        z += 0x9e3779b97f4a7c15ull;
        uint64_t x = z;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        x ^= x >> 31;
        const int64_t j = (int64_t)(x % (uint64_t)(i + 1)), tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
}

/* Sample index of position b of step s. */
static int64_t sample_of(int64_t s, int64_t b, int64_t B, int64_t N, int shuffle, long long seed,
                         int64_t *order, int64_t *order_epoch)
{
    const int64_t k = s * B + b, e = k / N;
    if (*order_epoch != e) {
        epoch_order(N, shuffle, seed, e, order);
        *order_epoch = e;
    }
    return order[k % N];
}

typedef struct trainer {
    const char *cmd;
    const reg_args *a;
    reg_state *s;
    train_args t;
    xattn_ctx *ctx;
    int64_t N, B;
    xattn_tensor in[REG_MAX_IO], tg[2];
    batched bin[REG_MAX_IO], btg[2];
    size_t n_in, n_tg;
    xattn_array tarr[2];
    size_t np;
    float **params, **grads;
    int64_t *sizes;
    xattn_optim *opt;
    int64_t start; /* the step to begin at (a resumed run: the checkpoint's) */
    int data_par;  /* under mpirun, --parallel data: this rank's samples [b0, b0 + Bl) of B */
    int64_t b0, Bl;
    /* data-parallel reads: the files read as only the samples this rank uses over the run
     * (rows, sorted; lmap[sample] its row in them), all with bN samples in the file */
    int64_t bN, n_rows, *rows, *lmap;
    const char *picked[2 * REG_MAX_IO + 2];
    int n_picked;
#define MAX_TIMES 4096
    double times[MAX_TIMES]; /* seconds of each step (forward, backward, clipping, update) */
    int n_times;
    char ckpt[4200];
} trainer;

/* One of the inputs / targets: batched along its first axis (its first dim is N and the kind's
 * shape starts with B), or used whole. */
static int picked(const trainer *w, const char *path)
{
    for (int k = 0; path && k < w->n_picked; k++)
        if (!strcmp(w->picked[k], path)) return 1;
    return 0;
}

/* Data-parallel training under mpirun (cli_batch_pick): a file is read as the samples this rank
 * uses when it is a batched input given with its batch axis, or a target of a batched output,
 * with as many samples as the first such file (N): the union over every step of the samples
 * [b0, b0 + Bl) of the step's batch (at least one, so that no shape is empty). */
static int pick_batch(void *arg, const char *path, int ndim, const int64_t *shape,
                      const int64_t **rows, int64_t *n)
{
    trainer *w = arg;
    const reg_state *s = w->s;
    int is_b = 0;
    for (int i = 0; i < s->n_in && !is_b; i++) {
        if (!s->in_file[i] || strcmp(s->in_file[i], path)) continue;
        for (const char *p = s->in_desc[i].shape; p && *p;) { /* alternatives "B, I, d|..." */
            const size_t l = strcspn(p, "|");
            int nd = 1;
            for (size_t k = 0; k < l; k++) nd += p[k] == ',';
            if (p[0] == 'B' && (p[1] == ',' || p[1] == '|' || !p[1]) && nd == ndim) is_b = 1;
            p += l + (p[l] == '|');
        }
    }
    const char *targets[2] = {w->t.target, w->t.context_target};
    for (int k = 0; k < 2 && !is_b; k++) /* a target: its output's shape, batch axis first */
        for (int o = 0; targets[k] && !strcmp(targets[k], path) && o < s->n_out; o++)
            if ((k == 0 ? o == 0 : !strcmp(s->out[o].name, "context_out")) &&
                s->out[o].ndim == ndim && s->out[o].ndim >= 1 && w->bN &&
                s->out[o].shape[0] == w->n_rows)
                is_b = 1;
    if (!is_b || w->n_picked >= (int)(sizeof w->picked / sizeof w->picked[0])) return 0;
    if (!w->bN) { /* the first: which samples this rank uses over the run */
        const int64_t N = shape[0], B = w->t.batch_size ? w->t.batch_size : N;
        if (N < 1) return 0;
        int64_t b0, Bl, epoch = -1;
        cli_dist_range(B, &b0, &Bl);
        int64_t *order = malloc(sizeof(int64_t) * (size_t)N);
        w->lmap = malloc(sizeof(int64_t) * (size_t)N);
        w->rows = malloc(sizeof(int64_t) * (size_t)N);
        if (!order || !w->lmap || !w->rows) {
            free(order);
            return 0; /* read whole (the buffers are freed with the trainer) */
        }
        for (int64_t j = 0; j < N; j++) w->lmap[j] = -1;
        int64_t used = 0;
        for (int64_t st = 0; st < w->t.steps && used < N; st++)
            for (int64_t b = b0; b < b0 + Bl && used < N; b++) {
                const int64_t j = sample_of(st, b, B, N, w->t.shuffle, w->t.seed, order, &epoch);
                if (w->lmap[j] < 0) w->lmap[j] = 0, used++;
            }
        if (!used) w->lmap[0] = 0; /* no sample: one, unused, so that no shape is empty */
        for (int64_t j = 0; j < N; j++)
            if (w->lmap[j] >= 0) w->lmap[j] = w->n_rows, w->rows[w->n_rows++] = j;
        free(order);
        w->bN = N;
    }
    if (shape[0] != w->bN) return 0;
    w->picked[w->n_picked++] = path;
    *rows = w->rows, *n = w->n_rows;
    return 1;
}

static int setup_batched(trainer *w, xattn_tensor *t, batched *b, int batched_axis, int local)
{
    memset(b, 0, sizeof *b);
    if (!batched_axis || t->ndim < 1 || (!local && t->shape[0] != w->N)) return 0;
    if (w->B == w->N && !w->t.shuffle && !w->data_par) return 0; /* the whole batch, in order */
    b->esize = t->dtype == XATTN_F32 ? sizeof(float) : 1;
    b->per = 1;
    for (int d = 1; d < t->ndim; d++) b->per *= t->shape[d];
    b->src = t->data;
    b->local = local;
    if (!(b->buf = malloc(b->esize * (size_t)(w->B * b->per + 1))))
        return cli_error(w->cmd, NULL, "out of memory");
    t->shape[0] = w->data_par ? w->Bl : w->B;
    t->data = b->buf;
    return 0;
}

static void gather(const trainer *w, const int64_t *idx)
{
    for (size_t i = 0; i < w->n_in + w->n_tg; i++) {
        const batched *b = i < w->n_in ? &w->bin[i] : &w->btg[i - w->n_in];
        if (!b->buf) continue;
        for (int64_t k = 0; k < (w->data_par ? w->Bl : w->B); k++)
            memcpy((char *)b->buf + (size_t)(k * b->per) * b->esize,
                   (const char *)b->src +
                       (size_t)((b->local ? w->lmap[idx[k]] : idx[k]) * b->per) * b->esize,
                   b->esize * (size_t)b->per);
    }
}

static int load_targets(trainer *w)
{
    const char *files[2] = {w->t.target, w->t.context_target};
    const char *names[2] = {NULL, "context_out"};
    for (int k = 0; k < 2; k++) {
        if (!files[k]) continue;
        int o = -1;
        for (int q = 0; q < w->s->n_out; q++)
            if ((k == 0 && q == 0) || (names[k] && !strcmp(w->s->out[q].name, names[k]))) o = q;
        if (o < 0)
            return cli_usage(w->cmd, "--context-target: %s has no output context_out", w->s->kind);
        memset(&w->tarr[k], 0, sizeof w->tarr[k]);
        int axis, rc = reg_load_output_rows(w->cmd, w->s, o, files[k], CLI_FINITE_STRICT,
                                            &w->tarr[k], &axis); /* sequence-parallel: rows */
        if (rc) return rc;
        const xattn_tensor *out = &w->s->out[o];
        const int drop = w->s->unbatched && w->tarr[k].ndim == out->ndim - 1;
        int same = w->tarr[k].ndim == out->ndim - drop;
        for (int d = 0; same && d < w->tarr[k].ndim; d++)
            same = w->tarr[k].shape[d] == out->shape[d + drop];
        if (!same) {
            char got[128], want[128];
            return cli_error(w->cmd, files[k], "shape %s; the output '%s' has shape %s",
                             cli_dims_str(w->tarr[k].ndim, w->tarr[k].shape, got, sizeof got),
                             out->name, cli_dims_str(out->ndim, out->shape, want, sizeof want));
        }
        w->tg[w->n_tg] = *out;
        w->tg[w->n_tg].data = w->tarr[k].data;
        if ((rc = setup_batched(w, &w->tg[w->n_tg], &w->btg[w->n_tg], 1, picked(w, files[k]))))
            return rc;
        w->n_tg++;
    }
    return 0;
}

/* ---- checkpoints ---- */

static void options_text(const trainer *w, char *buf, size_t cap)
{
    char od[256];
    xattn_optim_describe(w->opt, od, sizeof od);
    snprintf(buf, cap,
             "%s; steps=%lld batch_size=%lld shuffle=%d seed=%lld schedule=%s "
             "warmup=%lld grad_clip=%.9g",
             od, w->t.steps, (long long)w->B, w->t.shuffle, w->t.seed,
             w->t.schedule ? w->t.schedule : "constant", w->t.warmup, w->t.clip);
}

static int save_checkpoint(trainer *w, int64_t step)
{
    const size_t ns = xattn_optim_state_count(w->opt);
    xattn_st_entry *e = calloc(ns ? ns : 1, sizeof *e);
    char(*names)[600] = calloc(ns ? ns : 1, sizeof *names);
    char *started = calloc(w->np + 1, 1);
    int rc = e && names && started ? 0 : cli_error(w->cmd, NULL, "out of memory");
    size_t n = 0;
    for (size_t k = 0; k < ns && !rc; k++) {
        const char *label;
        size_t p;
        float *data;
        int64_t size;
        xattn_optim_state(w->opt, k, &label, &p, &data, &size);
        xattn_param_desc d;
        xattn_module_param(w->s->m, p, &d);
        if (!d.data) continue; /* an optional parameter the module does not have */
        snprintf(names[n], sizeof names[n], "%s%s::%s", w->s->prefix, d.name, label);
        e[n].name = names[n];
        e[n].dtype = XATTN_F32;
        e[n].ndim = d.ndim;
        memcpy(e[n].shape, d.shape, sizeof d.shape);
        e[n].data = data;
        n++;
    }
    for (size_t i = 0; i < w->np && started; i++) started[i] = step > 0 ? '1' : '0';
    char steps[32], opts[512];
    snprintf(steps, sizeof steps, "%lld", (long long)step);
    options_text(w, opts, sizeof opts);
    const char *meta[6] = {"xattn_checkpoint_step",        steps,
                           "xattn_checkpoint_options",     opts,
                           "xattn_checkpoint_sgd_started", started ? started : ""};
    xattn_save_opts so;
    memset(&so, 0, sizeof so);
    so.float32 = 1;
    so.extra = e;
    so.n_extra = n;
    so.meta_kv = meta;
    so.n_meta = 3;
    if (!rc && xattn_module_save_ex(w->s->m, w->ckpt, &so)) rc = cli_lib_error(w->cmd, w->ckpt);
    free(e);
    free(names);
    free(started);
    return rc;
}

static int resume(trainer *w)
{
    xattn_safetensors *st = w->s->st; /* the model was opened from the checkpoint */
    const char *step = xattn_st_meta_get(st, "xattn_checkpoint_step");
    const char *opts = xattn_st_meta_get(st, "xattn_checkpoint_options");
    if (!step || !opts)
        return cli_error(w->cmd, w->t.resume,
                         "not an xattn train checkpoint (no "
                         "xattn_checkpoint_step in its __metadata__)");
    char now[512];
    options_text(w, now, sizeof now);
    if (strcmp(now, opts))
        return cli_error(w->cmd, w->t.resume,
                         "the checkpoint was made with \"%s\"; this run has "
                         "\"%s\" (resume with the same options)",
                         opts, now);
    char *end = NULL;
    const long long k = strtoll(step, &end, 10);
    if (!*step || *end || k < 0 || k > w->t.steps)
        return cli_error(w->cmd, w->t.resume, "checkpoint step '%s' is not in [0, --steps]", step);
    for (size_t i = 0; i < xattn_optim_state_count(w->opt); i++) {
        const char *label;
        size_t p;
        float *data;
        int64_t size;
        xattn_optim_state(w->opt, i, &label, &p, &data, &size);
        xattn_param_desc d;
        xattn_module_param(w->s->m, p, &d);
        if (!d.data) continue;
        char name[600];
        snprintf(name, sizeof name, "%s%s::%s", w->s->prefix, d.name, label);
        xattn_array arr;
        memset(&arr, 0, sizeof arr);
        if (xattn_st_get(st, name, XATTN_F32, &arr)) return cli_lib_error(w->cmd, w->t.resume);
        const int ok = xattn_array_numel(&arr) == size;
        if (ok) memcpy(data, arr.data, sizeof(float) * (size_t)size);
        xattn_array_free(&arr);
        if (!ok) return cli_error(w->cmd, w->t.resume, "tensor '%s' has the wrong size", name);
    }
    const char *sgd = xattn_st_meta_get(st, "xattn_checkpoint_sgd_started");
    int *started = calloc(w->np + 1, sizeof *started);
    for (size_t i = 0; started && sgd && i < w->np && sgd[i]; i++) started[i] = sgd[i] == '1';
    xattn_optim_restore(w->opt, k, started);
    free(started);
    w->start = k;
    return 0;
}

/* ---- the loop ---- */

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void progress(int64_t step, int64_t total, double loss)
{
    const int width = 30, done = (int)(width * step / (total ? total : 1));
    fprintf(stderr, "\rstep %lld/%lld  loss %.6g  [", (long long)step, (long long)total, loss);
    for (int i = 0; i < width; i++) fputc(i < done ? '=' : ' ', stderr);
    fprintf(stderr, "]%s", step == total ? "\n" : "");
    fflush(stderr);
}

static int train_loop(trainer *w, FILE *log)
{
    int64_t *order = malloc(sizeof(int64_t) * (size_t)w->N),
            *idx = malloc(sizeof(int64_t) * (size_t)w->B);
    if (!order || !idx) {
        free(order);
        free(idx);
        return cli_error(w->cmd, NULL, "out of memory");
    }
    /* the weights (and a checkpoint's state) are in the module and the optimizer now: the
     * file's bytes are not needed while training */
    xattn_st_close(w->s->st);
    w->s->st = NULL;
    int64_t order_epoch = -1;
    const int tty = isatty(2);
    const double base_lr = xattn_optim_get_lr(w->opt);
    int rc = 0;
    for (int64_t step = w->start; step < w->t.steps && !rc; step++) {
        for (int64_t b = 0; b < w->B; b++)
            idx[b] = sample_of(step, b, w->B, w->N, w->t.shuffle, w->t.seed, order, &order_epoch);
        gather(w, w->data_par ? idx + w->b0 : idx);
        const double t0 = cli_now();
        double loss = 0.0;
        if (w->data_par) { /* this rank's samples, then the mean over the step's B samples */
            rc = w->Bl && xattn_module_mse_grad(w->ctx, w->s->m, w->in, w->n_in, w->tg, w->n_tg,
                                                &loss, NULL, 0, w->grads)
                     ? reg_lib_error(w->cmd, w->a, w->s)
                     : 0;
            if ((rc = cli_dist_agree(w->cmd, rc))) break;
            const float f = (float)w->Bl / (float)w->B;
            for (size_t i = 0; i < w->np; i++)
                for (int64_t k = 0; w->grads[i] && k < w->sizes[i]; k++)
                    w->grads[i][k] = w->Bl ? w->grads[i][k] * f : 0.0f;
            loss *= (double)w->Bl / (double)w->B;
            for (size_t i = 0; i < w->np && !rc; i++)
                if (w->grads[i]) rc = cli_dist_sum(w->cmd, w->grads[i], w->sizes[i]);
            if (!rc) rc = cli_dist_sum_d(w->cmd, &loss, 1);
            if (rc) break;
        } else if (xattn_module_mse_grad(w->ctx, w->s->m, w->in, w->n_in, w->tg, w->n_tg, &loss,
                                         NULL, 0, w->grads)) {
            rc = reg_lib_error(w->cmd, w->a, w->s);
            break;
        }
        cli_dist_test_exit(step + 1);
        const double norm = xattn_clip_grad_norm(w->grads, w->sizes, w->np, w->t.clip);
        const double lr = xattn_lr_at(step, w->t.steps, w->t.warmup,
                                      w->t.schedule && !strcmp(w->t.schedule, "cosine"), base_lr);
        xattn_optim_set_lr(w->opt, lr);
        xattn_optim_step(w->opt, w->params, (const float *const *)w->grads);
        const double secs = cli_now() - t0;
        if (w->n_times < MAX_TIMES) w->times[w->n_times++] = secs;
        if (!isfinite(loss)) {
            rc = cli_error(w->cmd, w->a->model, "the loss is %g at step %lld: stopped", loss,
                           (long long)step + 1);
            break;
        }
        if (log && cli_dist_rank() == 0)
            fprintf(log,
                    "{\"step\": %lld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, "
                    "\"seconds\": %.6g}\n",
                    (long long)step + 1, loss, lr, norm, secs);
        if (tty && cli_dist_rank() == 0) progress(step + 1, w->t.steps, loss);
        const int stop = w->t.stop_after && step + 1 == w->t.stop_after;
        const int last = step + 1 == w->t.steps || stop;
        if ((w->t.every && ((step + 1) % w->t.every == 0 || last)) || stop) {
            xattn_optim_set_lr(w->opt, base_lr); /* the options as given, not the schedule's */
            /* under mpirun every rank holds the same weights: rank 0 writes */
            rc = cli_dist_rank() == 0 ? save_checkpoint(w, step + 1) : 0;
            if (log && cli_dist_rank() == 0) fflush(log);
            if (cli_dist_active()) rc = cli_dist_agree(w->cmd, rc);
        }
        if (last && !tty && cli_dist_rank() == 0)
            printf("step %lld/%lld  loss %.9g\n", (long long)step + 1, (long long)w->t.steps, loss);
        if (stop) break;
    }
    xattn_optim_set_lr(w->opt, base_lr);
    free(order);
    free(idx);
    return rc;
}

static int run(trainer *w)
{
    reg_state *s = w->s;
    reg_tensors(s, w->in, &w->n_in);
    w->N = s->unbatched || w->n_in == 0 ? 1 : w->in[0].shape[0];
    if (w->bN) w->N = w->bN; /* data-parallel reads: the samples in the files */
    w->B = w->t.batch_size ? w->t.batch_size : w->N;
    w->data_par = cli_dist_active() && w->t.parallel && !strcmp(w->t.parallel, "data");
    if (w->data_par) cli_dist_range(w->B, &w->b0, &w->Bl);
    for (size_t i = 0; i < w->n_in; i++) {
        int is_batched = 0, local = 0;
        for (int k = 0; k < s->n_in; k++)
            if (!strcmp(s->in_desc[k].name, w->in[i].name))
                is_batched = s->in_desc[k].shape[0] == 'B', local = picked(w, s->in_file[k]);
        int rc = setup_batched(w, &w->in[i], &w->bin[i], is_batched, local);
        if (rc) return rc;
    }
    int rc = load_targets(w);
    if (rc) return rc;
    w->np = xattn_module_param_count(s->m);
    w->params = calloc(w->np + 1, sizeof *w->params);
    w->grads = calloc(w->np + 1, sizeof *w->grads);
    w->sizes = calloc(w->np + 1, sizeof *w->sizes);
    if (!w->params || !w->grads || !w->sizes) return cli_error(w->cmd, NULL, "out of memory");
    for (size_t i = 0; i < w->np; i++) {
        xattn_param_desc d;
        xattn_module_param(s->m, i, &d);
        if (!d.data) continue;
        w->params[i] = d.data;
        w->sizes[i] = 1;
        for (int k = 0; k < d.ndim; k++) w->sizes[i] *= d.shape[k];
        if (!(w->grads[i] = malloc(sizeof(float) * (size_t)(w->sizes[i] + 1))))
            return cli_error(w->cmd, NULL, "out of memory");
    }
    if (xattn_optim_new(w->t.optimizer, w->t.opt, (size_t)w->t.n_opt, w->sizes, w->np, &w->opt))
        return cli_usage(w->cmd, "%s", xattn_last_error());
    snprintf(
        w->ckpt, sizeof w->ckpt, "%.*s.ckpt.safetensors",
        (int)(strlen(w->t.out) -
              (strlen(w->t.out) > 12 && !strcmp(w->t.out + strlen(w->t.out) - 12, ".safetensors")
                   ? 12
                   : 0)),
        w->t.out);
    if (w->t.resume && (rc = resume(w))) return rc;
    FILE *log = NULL;
    if (w->t.log && cli_dist_rank() == 0 && !(log = fopen(w->t.log, w->t.resume ? "a" : "w")))
        rc = cli_error(w->cmd, w->t.log, "cannot write the log");
    if ((rc = cli_dist_agree(w->cmd, rc))) return rc;
    rc = train_loop(w, log);
    if (log && fclose(log) && !rc) rc = cli_error(w->cmd, w->t.log, "cannot write the log");
    xattn_save_opts so;
    memset(&so, 0, sizeof so);
    so.float32 = 1;
    if (!rc && cli_dist_rank() == 0 && xattn_module_save_ex(s->m, w->t.out, &so))
        rc = cli_lib_error(w->cmd, w->t.out);
    if (cli_dist_active() && !rc) rc = cli_dist_agree(w->cmd, rc);
    if (cli_dist_rank() > 0) return rc;
    if (!rc && w->n_times) {
        qsort(w->times, (size_t)w->n_times, sizeof w->times[0], cmp_double);
        const char *note;
        const double rss = cli_peak_rss_bytes(&note) / 1048576.0;
        printf("median step %.6g s (forward, backward, update; of %d), peak RSS %.1f MB%s "
               "[%s, %d threads]\n",
               w->times[w->n_times / 2], w->n_times, rss, note, xattn_ctx_get_isa(w->ctx),
               xattn_ctx_get_threads(w->ctx));
    }
    if (!rc)
        printf("wrote %s (%s, %lld of %lld steps)%s%s\n", w->t.out, s->kind,
               (long long)xattn_optim_step_count(w->opt), w->t.steps,
               w->t.every || w->t.stop_after ? "; checkpoint " : "",
               w->t.every || w->t.stop_after ? w->ckpt : "");
    return rc;
}

int cmd_train(int argc, char **argv)
{
    const char *cmd = "train";
    reg_args a;
    int hl, rc;
    if ((rc = reg_parse(cmd, argc, argv, &a, &hl))) return rc;
    a.need_f32 = 1;
    if (hl) {
        help();
        return CLI_EXIT_OK;
    }
    if (!a.model) return cli_usage(cmd, "missing MODEL.safetensors");
    trainer w;
    memset(&w, 0, sizeof w);
    w.cmd = cmd, w.a = &a;
    reg_state s;
    w.s = &s;
    /* a resumed run loads the weights from the checkpoint */
    reg_args a2 = a;
    for (int r = 0; r < a.n_rest; r++)
        if (!strcmp(a.rest[r].flag, "--resume") && a.rest[r].value) a2.model = a.rest[r].value;
    if (!(rc = reg_open(cmd, &a2, &s)) && !xattn_kind_has_backward(s.kind))
        rc = cli_error(cmd, a.model, "%s has no backward yet: it cannot be trained", s.kind);
    if (!rc && !(rc = take_flags(cmd, &a, &s, &w.t)) && !(rc = reg_check_weights(cmd, &a, &s))) {
        /* under mpirun, data-parallel: every rank reads the samples it uses (pick_batch) */
        cli_dist_rows = !(w.t.parallel && !strcmp(w.t.parallel, "data"));
        if (!cli_dist_rows) cli_batch_pick = pick_batch, cli_batch_arg = &w;
        if (!(rc = reg_inputs(cmd, &a, &s, 0))) rc = reg_outputs(cmd, &a, &s);
    }
    rc = cli_dist_agree(cmd, rc); /* under mpirun: every rank has its inputs */
    if (!rc) {
        if (cli_dist_active() && cli_dist_rows)
            rc = (w.ctx = cli_dist_ctx(cmd, a.threads)) ? 0 : CLI_EXIT_ERROR;
        else if ((a.threads || a.kernels) &&
                 (xattn_ctx_new(&w.ctx) ||
                  (a.threads && xattn_ctx_set_threads(w.ctx, (int)a.threads))))
            rc = cli_lib_error(cmd, NULL);
        if (!rc && a.kernels && xattn_ctx_set_isa(w.ctx, a.kernels)) rc = cli_lib_error(cmd, NULL);
        if (!rc) rc = run(&w);
        if (cli_dist_active() && !cli_dist_agreed()) rc = cli_dist_agree(cmd, rc);
        if (!rc) reg_warn(cmd, &a, &s);
        for (size_t i = 0; !rc && i < xattn_module_config_count(s.m); i++) {
            xattn_config_entry e; /* dropout is not applied: say so, never silently */
            if (!xattn_module_config(s.m, i, &e) && strstr(e.name, "dropout") &&
                strtod(e.value, NULL) != 0.0)
                fprintf(stderr,
                        "xattn train: %s: warning: %s = %s is not applied: the module was trained "
                        "as in eval mode (no dropout)\n",
                        a.model, e.name, e.value);
        }
    }
    for (size_t i = 0; i < w.n_in; i++) free(w.bin[i].buf);
    for (size_t i = 0; i < w.n_tg; i++) free(w.btg[i].buf);
    for (int k = 0; k < 2; k++) xattn_array_free(&w.tarr[k]);
    cli_batch_pick = NULL, cli_batch_arg = NULL;
    free(w.rows);
    free(w.lmap);
    for (size_t i = 0; w.grads && i < w.np; i++) free(w.grads[i]);
    free(w.grads);
    free(w.params);
    free(w.sizes);
    xattn_optim_free(w.opt);
    xattn_ctx_free(w.ctx);
    reg_free(&s);
    return rc;
}
