/*
 * xattn grad: the gradients of a saved module, through the registry (xattn_module_grad).
 *
 * Either the gradients of the outputs are given (--grad-out G.npy, --grad-context-out GC.npy,
 * --grad-NAME for any output: a vector-Jacobian product), or targets are (--target T.npy for
 * the first output, --context-target CT.npy for context_out, --target-NAME for any): the loss is
 * then F.mse_loss(output, target) summed over the targets given, each term averaged over its own
 * elements, and its gradients are taken. Writes DIR/grads.safetensors (one tensor per parameter
 * under its state-dict name, prefix included) and DIR/d_INPUT.npy for every float input given.
 */
#include "cli.h"
#include "reg_cli.h"
#include "cli_dist.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct grad_req {
    const char *name; /* the output's name */
    int out;          /* its index in s->out, once the outputs are planned */
    int target;       /* 1: a target (MSE), 0: the output's gradient */
    const char *flag; /* as given */
    const char *file;
    xattn_array arr;
} grad_req;

static void help(void)
{
    printf("usage: xattn grad MODEL.safetensors [--module KIND] [--prefix P] --INPUT FILE.npy ...\n"
           "                  [--OPTION VALUE ...]\n"
           "                  (--grad-out G.npy [--grad-context-out GC.npy] |\n"
           "                   --target T.npy [--context-target CT.npy])\n"
           "                  [--out-dir DIR] [--threads N] [--kernels K] [--allow-nonfinite]\n"
           "\n"
           "Gradients of a module saved from PyTorch, on the inputs 'xattn run' takes.\n"
           "  --grad-out G.npy         the gradient of the output 'out' (any output: --grad-NAME,\n"
           "                           dashes for underscores): a vector-Jacobian product; an\n"
           "                           output without a given gradient has gradient 0\n"
           "  --target T.npy           instead: the loss F.mse_loss(out, T) (reduction 'mean');\n"
           "  --context-target CT.npy  plus F.mse_loss(context_out, CT), each averaged over its\n"
           "                           own elements (any output: --target-NAME); the loss is\n"
           "                           printed\n"
           "Writes DIR/grads.safetensors (the gradient of every parameter, under its state-dict\n"
           "name, the prefix included: it loads beside the model's own state dict) and\n"
           "DIR/d_INPUT.npy for every float input given (d_x.npy, d_context.npy,\n"
           "d_rel_pos_bias.npy, ...). --out-dir DIR defaults to '.', created if missing.\n"
           "--kernels K forces a kernel set as 'xattn run' does.\n"
           "Kinds with a backward:");
    for (size_t i = 0; i < xattn_kind_count(); i++) {
        xattn_kind_desc k;
        if (!xattn_kind_info(i, &k) && xattn_kind_has_backward(k.name)) printf(" %s", k.name);
    }
    printf("\n");
}

/* The name of the module's output named `dashed` (dashes as underscores), or NULL; first: the
 * first output. */
static const char *output_named(const reg_state *s, const char *dashed, int first)
{
    char name[128];
    snprintf(name, sizeof name, "%s", dashed ? dashed : "");
    for (char *c = name; *c; c++)
        if (*c == '-') *c = '_';
    for (size_t o = 0; o < xattn_module_output_count(s->m); o++) {
        xattn_io_desc d;
        if (xattn_module_output(s->m, o, &d)) break;
        if (first || !strcmp(d.name, name)) return d.name;
    }
    return NULL;
}

/* Takes the --grad-* / --target* flags out of the command line (marked used) into req. */
static int take_requests(const char *cmd, const reg_args *a, reg_state *s, grad_req *req, int *n)
{
    *n = 0;
    int grads = 0, targets = 0;
    for (int r = 0; r < a->n_rest; r++) {
        const char *f = a->rest[r].flag, *o;
        int target;
        if (!strncmp(f, "--grad-", 7)) {
            target = 0;
            o = output_named(s, f + 7, 0);
        } else if (!strcmp(f, "--target")) {
            target = 1;
            o = output_named(s, NULL, 1);
        } else if (!strcmp(f, "--context-target")) {
            target = 1;
            o = output_named(s, "context_out", 0);
        } else if (!strncmp(f, "--target-", 9)) {
            target = 1;
            o = output_named(s, f + 9, 0);
        } else {
            continue;
        }
        if (!o) {
            char list[512];
            size_t off = 0;
            list[0] = '\0';
            for (size_t k = 0; k < xattn_module_output_count(s->m) && off < sizeof list; k++) {
                xattn_io_desc d;
                if (xattn_module_output(s->m, k, &d)) break;
                off +=
                    (size_t)snprintf(list + off, sizeof list - off, "%s%s", k ? ", " : "", d.name);
            }
            return cli_usage(cmd, "%s: %s has no such output (outputs: %s)", f, s->kind, list);
        }
        if (!a->rest[r].value) return cli_usage(cmd, "%s needs a FILE.npy", f);
        for (int k = 0; k < *n; k++)
            if (!strcmp(req[k].name, o))
                return cli_usage(cmd, "%s and %s are both about the output '%s'", req[k].flag, f,
                                 o);
        grads += !target;
        targets += target;
        memset(&req[*n], 0, sizeof req[*n]);
        req[*n].name = o, req[*n].out = -1, req[*n].target = target, req[*n].flag = f;
        req[*n].file = a->rest[r].value;
        (*n)++;
        s->used[r] = 1;
    }
    if (grads && targets)
        return cli_usage(cmd, "give the outputs' gradients (--grad-...) or targets (--target...), "
                              "not both");
    if (!*n) return cli_usage(cmd, "missing --grad-out G.npy or --target T.npy");
    return 0;
}

/* Loads req's file: the output's shape, or the shape without its batch axis when the inputs
 * were given without theirs. */
static int load_request(const char *cmd, const reg_args *a, const reg_state *s, grad_req *q)
{
    const xattn_tensor *t = &s->out[q->out];
    int axis; /* under mpirun this rank's rows, as the output's */
    int rc = reg_load_output_rows(cmd, s, q->out, q->file,
                                  a->allow_nonfinite ? CLI_FINITE_ANY : CLI_FINITE_STRICT, &q->arr,
                                  &axis);
    if (rc) return rc;
    const int drop = s->unbatched && t->ndim > 0 && t->shape[0] == 1 && q->arr.ndim == t->ndim - 1;
    int same = q->arr.ndim == t->ndim - drop;
    for (int d = 0; same && d < q->arr.ndim; d++) same = q->arr.shape[d] == t->shape[d + drop];
    if (!same) {
        char got[128], want[128];
        cli_dims_str(q->arr.ndim, q->arr.shape, got, sizeof got);
        cli_dims_str(t->ndim - drop, t->shape + drop, want, sizeof want);
        return cli_error(cmd, q->file, "%s: shape %s; the output '%s' has shape %s", q->flag, got,
                         t->name, want);
    }
    return 0;
}

static int64_t numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

/* grads.safetensors: every parameter's gradient under prefix + name, written to DIR via a
 * temporary file renamed into place. */
static int save_grads(const char *cmd, const char *dir, const reg_state *s, float *const *dp,
                      const char *loss)
{
    const size_t np = xattn_module_param_count(s->m);
    xattn_st_entry *e = calloc(np ? np : 1, sizeof *e);
    char(*names)[512] = calloc(np ? np : 1, sizeof *names);
    if (!e || !names) {
        free(e);
        free(names);
        return cli_error(cmd, NULL, "out of memory");
    }
    size_t n = 0;
    for (size_t i = 0; i < np; i++) {
        xattn_param_desc p;
        if (xattn_module_param(s->m, i, &p) || !p.data) continue;
        snprintf(names[n], sizeof names[n], "%s%s", s->prefix, p.name);
        e[n].name = names[n];
        e[n].dtype = XATTN_F32;
        e[n].ndim = p.ndim;
        memcpy(e[n].shape, p.shape, sizeof p.shape);
        e[n].data = dp[i];
        n++;
    }
    const char *meta[6] = {"xattn_kind", s->kind, "content", "gradients of the parameters",
                           "loss",       loss};
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/grads.safetensors", dir);
    snprintf(tmp, sizeof tmp, "%s.part", path);
    int rc = 0;
    if (xattn_st_save(tmp, e, n, meta, loss ? 3 : 2))
        rc = cli_lib_error(cmd, tmp);
    else if (rename(tmp, path)) {
        rc = cli_error(cmd, path, "cannot write: %s", strerror(errno));
        remove(tmp);
    } else if (!cli_quiet_writes) {
        printf("wrote %s (%zu parameter gradients)\n", path, n);
    }
    free(e);
    free(names);
    return rc;
}

/* The gradients of the float inputs: names d_INPUT, the inputs' shapes. */
static int input_grads(const reg_state *s, xattn_tensor *din, char (*fname)[128], int *src,
                       size_t *n)
{
    xattn_tensor in[REG_MAX_IO];
    size_t n_in;
    reg_tensors(s, in, &n_in);
    *n = 0;
    for (size_t i = 0; i < n_in; i++) {
        int is_mask = 0;
        for (int k = 0; k < s->n_in; k++)
            if (!strcmp(s->in_desc[k].name, in[i].name)) is_mask = s->in_desc[k].mask;
        if (in[i].dtype != XATTN_F32 || is_mask || in[i].ndim == 0) continue;
        din[*n] = in[i];
        for (int k = 0; k < s->n_in; k++)
            if (!strcmp(s->in_desc[k].name, in[i].name)) src[*n] = k;
        din[*n].data = calloc((size_t)numel(in[i].ndim, in[i].shape) + 1, sizeof(float));
        if (!din[*n].data) return -1;
        char base[120];
        reg_file_name(in[i].name, base, sizeof base);
        snprintf(fname[*n], sizeof fname[*n], "d_%s", base);
        (*n)++;
    }
    return 0;
}

static int run_grad(const char *cmd, const reg_args *a, reg_state *s, grad_req *req, int nreq,
                    xattn_ctx *ctx)
{
    xattn_tensor in[REG_MAX_IO], din[REG_MAX_IO], dout[REG_MAX_IO];
    char dname[REG_MAX_IO][128];
    int src[REG_MAX_IO] = {0};
    size_t n_in, n_din = 0;
    reg_tensors(s, in, &n_in);
    const size_t np = xattn_module_param_count(s->m);
    float **dp = calloc(np ? np : 1, sizeof *dp);
    int rc = dp ? 0 : cli_error(cmd, NULL, "out of memory");
    for (size_t i = 0; i < np && !rc; i++) {
        xattn_param_desc p;
        if (xattn_module_param(s->m, i, &p) || !p.data) continue;
        if (!(dp[i] = calloc((size_t)numel(p.ndim, p.shape), sizeof(float))))
            rc = cli_error(cmd, NULL, "out of memory");
    }
    if (!rc && input_grads(s, din, dname, src, &n_din)) rc = cli_error(cmd, NULL, "out of memory");
    double loss = 0.0;
    const int targets = nreq > 0 && req[0].target;
    for (int k = 0; k < nreq; k++) { /* gradients or targets: named like their outputs */
        dout[k] = s->out[req[k].out];
        dout[k].data = req[k].arr.data;
    }
    if (!rc &&
        (targets
             ? xattn_module_mse_grad(ctx, s->m, in, n_in, dout, (size_t)nreq, &loss, din, n_din, dp)
             : xattn_module_grad(ctx, s->m, in, n_in, NULL, 0, dout, (size_t)nreq, din, n_din, dp)))
        rc = reg_lib_error(cmd, a, s);
    const char *dir = a->out_dir ? a->out_dir : ".";
    if (!rc && mkdir(dir, 0777) && errno != EEXIST)
        rc = cli_error(cmd, dir, "cannot create the directory: %s", strerror(errno));
    rc = cli_dist_agree(cmd, rc); /* under mpirun: every rank has its gradients */
    char loss_text[64];
    snprintf(loss_text, sizeof loss_text, "%.9g", loss);
    if (!rc) {
        cli_output outs[REG_MAX_IO];
        for (size_t k = 0; k < n_din; k++) {
            const int drop = s->unbatched && din[k].ndim > 1 && din[k].shape[0] == 1 &&
                             s->arr[0].ndim < din[k].ndim;
            cli_output_set(&outs[k], dname[k], din[k].data, NULL, din[k].ndim - drop,
                           din[k].shape + drop);
            const int ax = s->in_axis[src[k]] - drop; /* under mpirun: this rank's rows */
            if (s->in_axis[src[k]] >= 0 && ax >= 0) {
                int64_t st, len;
                cli_dist_range(s->in_total[src[k]], &st, &len);
                outs[k].axis = ax, outs[k].start = st, outs[k].total = s->in_total[src[k]];
            }
        }
        rc = cli_write_outputs(cmd, dir, outs, (int)n_din);
    }
    /* the parameters' gradients are whole on every rank (summed over the ranks): rank 0 saves */
    if (!rc && cli_dist_rank() == 0) rc = save_grads(cmd, dir, s, dp, targets ? loss_text : NULL);
    if (cli_dist_active()) rc = cli_dist_agree(cmd, rc);
    if (!rc && targets && cli_dist_rank() == 0) printf("loss %s (F.mse_loss, mean)\n", loss_text);
    for (size_t i = 0; dp && i < np; i++) free(dp[i]);
    free(dp);
    for (size_t k = 0; k < n_din; k++) free(din[k].data);
    return rc;
}

int reg_cmd_grad(const char *cmd, int argc, char **argv)
{
    reg_args a;
    int hl, rc;
    if ((rc = reg_parse(cmd, argc, argv, &a, &hl))) return rc;
    a.need_f32 = 1;
    if (hl) {
        help();
        return CLI_EXIT_OK;
    }
    if (!a.model) return cli_usage(cmd, "missing MODEL.safetensors");
    if ((rc = cli_check_out_dir(cmd, a.out_dir ? a.out_dir : "."))) return rc;
    reg_state s;
    grad_req req[REG_MAX_IO];
    int nreq = 0;
    if (!(rc = reg_open(cmd, &a, &s)) && !xattn_kind_has_backward(s.kind))
        rc = cli_error(cmd, a.model,
                       "%s has no backward yet (xattn grad --help lists the kinds "
                       "that have one)",
                       s.kind);
    if (!rc && !(rc = reg_check_weights(cmd, &a, &s)) &&
        !(rc = take_requests(cmd, &a, &s, req, &nreq)) && !(rc = reg_inputs(cmd, &a, &s, 0)) &&
        !(rc = reg_outputs(cmd, &a, &s))) {
        for (int k = 0; k < nreq && !rc; k++) {
            for (int o = 0; o < s.n_out; o++)
                if (!strcmp(s.out[o].name, req[k].name)) req[k].out = o;
            if (req[k].out < 0) {
                char flag[128];
                snprintf(flag, sizeof flag, "%s", req[k].name);
                for (char *c = flag; *c; c++)
                    if (*c == '_') *c = '-';
                rc = cli_usage(cmd,
                               "%s: the output '%s' is optional and not asked for: add --%s to "
                               "compute it",
                               req[k].flag, req[k].name, flag);
            } else
                rc = load_request(cmd, &a, &s, &req[k]);
        }
        xattn_ctx *ctx = NULL;
        rc = cli_dist_agree(cmd, rc); /* under mpirun: every rank has its inputs */
        if (!rc && (a.threads || a.kernels || cli_dist_active()) &&
            !(ctx = cli_dist_ctx(cmd, a.threads)))
            rc = CLI_EXIT_ERROR;
        if (!rc && a.kernels && xattn_ctx_set_isa(ctx, a.kernels)) rc = cli_lib_error(cmd, NULL);
        if (!rc) rc = run_grad(cmd, &a, &s, req, nreq, ctx);
        if (!rc) reg_warn(cmd, &a, &s);
        xattn_ctx_free(ctx);
    }
    for (int k = 0; k < nreq; k++) xattn_array_free(&req[k].arr);
    reg_free(&s);
    return rc;
}

int cmd_grad(int argc, char **argv) { return reg_cmd_grad("grad", argc, argv); }
