/* xattn run --module bert-decoder: BERT decoder layers (transformers BertLayer / BertEncoder
 * with is_decoder=True, add_cross_attention=True), full forward or incremental decoding. */
#include "cli.h"
#include "modules_ext.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *CMD = "run";

static void dec_help(void)
{
    printf(
        "usage: xattn run [--module bert-decoder] MODEL.safetensors --x X.npy\n"
        "                 (--memory M.npy | --video V.npy [--audio A.npy] | --audio A.npy)\n"
        "                 [--attention-mask K.npy] [--memory-mask K.npy] [--incremental]\n"
        "                 [--heads N] [--layer-norm-eps E] [--out-dir DIR] [--threads N]\n"
        "                 [--allow-nonfinite]\n"
        "\n"
        "BERT decoder layers with causal self-attention and cross-attention (Hugging Face\n"
        "transformers BertLayer/BertEncoder, BertConfig(is_decoder=True, add_cross_attention=True),\n"
        "post-LN, GELU erf). The model is the state_dict of a BertLayer (attention.self.query.weight,\n"
        "..., crossattention.*, intermediate.dense.*, output.*) or of a BertEncoder (layer.N.<those\n"
        "names>); it is detected from crossattention.self.query.weight / layer.0.crossattention....\n"
        "  --x X.npy                (B, T, hidden) or (T, hidden): the decoder input (embeddings)\n"
        "  --memory M.npy           (B, M, memory_dim) or (M, memory_dim): what cross-attention\n"
        "                           reads (also --context)\n"
        "  --video V.npy, --audio A.npy  instead of --memory: modality features (B, F, N, D) or\n"
        "                           (F, N, D), mean-pooled over frames F and projected by the file's\n"
        "                           proj.video.* / proj.audio.* (+ type_embedding.*); the memory is\n"
        "                           [video; audio] along the sequence (T-V, T-A or T-AV)\n"
        "  --attention-mask K.npy   (B, T) or (T,), bool or integer: 1 = KEEP (transformers'\n"
        "                           attention_mask); combined with the causal mask\n"
        "  --memory-mask K.npy      (B, M) or (M,): 1 = keep (encoder_attention_mask); a row with\n"
        "                           every key masked is the uniform average, as transformers\n"
        "  --incremental            decode one token at a time with the K/V cache (same out.npy\n"
        "                           up to float rounding, except rows with no kept key at all)\n"
        "  --heads N                (metadata 'heads' or 'num_attention_heads'; default 12)\n"
        "  --layer-norm-eps E       (metadata 'layer_norm_eps'; default 1e-12)\n"
        "outputs (float32 .npy in --out-dir DIR, default '.'; nothing is written if anything\n"
        "fails):\n"
        "  out.npy                  (B, T, hidden) or (T, hidden)\n"
        "NaN policy: a NaN or infinity in the inputs or the weights is an error naming the file\n"
        "and index, unless --allow-nonfinite.\n"
        "  --threads N              threads (default: all cores)\n"
        "  -h, --help               this help\n");
}

static int dec_detect(const xattn_safetensors *st)
{
    return xattn_st_find(st, "layer.0.crossattention.self.query.weight") >= 0 ||
           xattn_st_find(st, "crossattention.self.query.weight") >= 0;
}

static void dec_describe(const xattn_safetensors *st)
{
    int n = 0;
    char name[80];
    if (xattn_st_find(st, "crossattention.self.query.weight") >= 0) {
        n = 1;
    } else {
        for (; n < 4096; n++) {
            snprintf(name, sizeof name, "layer.%d.crossattention.self.query.weight", n);
            if (xattn_st_find(st, name) < 0) break;
        }
    }
    printf("module: transformers BertLayer decoder with cross-attention, %d layer%s%s%s "
           "('xattn run --module bert-decoder')\n",
           n, n == 1 ? "" : "s",
           xattn_st_find(st, "proj.video.weight") >= 0 ? ", video projector" : "",
           xattn_st_find(st, "proj.audio.weight") >= 0 ? ", audio projector" : "");
}

typedef struct dargs {
    const char *model, *x, *mem, *ctx, *video, *audio, *am, *mm, *out_dir, *module, *eps_s;
    long long heads, threads;
    double eps;
    int allow_nonfinite, incremental;
} dargs;

typedef struct dstate {
    xattn_safetensors *st;
    xattn_decoder *m;
    xattn_decoder_state *ds;
    xattn_array x, mem, video, audio, am, mm;
    float *pmem, *out;
} dstate;

/* A keep mask: bool or integer (any nonzero = keep), or float holding only 0 and 1 (as
 * transformers reads a float attention_mask). */
static int load_keep(const char *path, const char *opt, int rank3, int64_t B, int64_t n,
                     xattn_array *a)
{
    if (xattn_npy_load(path, a) != XATTN_OK) return cli_lib_error(CMD, path);
    char sh[128];
    int ok = rank3 ? (a->ndim == 2 && a->shape[0] == B && a->shape[1] == n)
                   : (a->ndim == 1 && a->shape[0] == n);
    if (!ok) {
        if (rank3)
            return cli_error(CMD, path, "%s has shape %s; expected (%lld, %lld)", opt,
                             cli_shape_str(a, sh, sizeof sh), (long long)B, (long long)n);
        return cli_error(CMD, path, "%s has shape %s; expected (%lld,)", opt,
                         cli_shape_str(a, sh, sizeof sh), (long long)n);
    }
    if (a->dtype == XATTN_F32 || a->dtype == XATTN_F64 || a->dtype == XATTN_F16 ||
        a->dtype == XATTN_BF16) {
        if (xattn_array_convert(a, XATTN_F32) != XATTN_OK) return cli_lib_error(CMD, path);
        const float *f = a->data;
        int64_t N = xattn_array_numel(a);
        uint8_t *k = a->data; /* in place: byte i lies in a float already read */
        for (int64_t i = 0; i < N; i++) {
            if (f[i] != 0.0f && f[i] != 1.0f) {
                char idx[96];
                return cli_error(CMD, path, "%s must hold 1 (keep) and 0 (masked) only, found %g at %s",
                                 opt, (double)f[i], cli_index_str(a->ndim, a->shape, i, idx, sizeof idx));
            }
            k[i] = f[i] != 0.0f;
        }
        a->dtype = XATTN_BOOL;
        return 0;
    }
    return cli_mask_to_bool(CMD, path, opt, "keep", a);
}

static int dec_go(const dargs *a, dstate *s)
{
    int rc;
    const char *dir = a->out_dir ? a->out_dir : ".";
    if ((rc = cli_check_out_dir(CMD, dir))) return rc;
    if (xattn_st_open(a->model, &s->st) != XATTN_OK) return cli_lib_error(CMD, a->model);
    if (!dec_detect(s->st))
        return cli_error(CMD, a->model,
                         "--module bert-decoder: no BERT decoder layer found (expected "
                         "crossattention.self.query.weight or "
                         "layer.0.crossattention.self.query.weight)");
    xattn_decoder_opts o;
    memset(&o, 0, sizeof o);
    o.heads = a->heads > 0 ? a->heads : 0;
    o.layer_norm_eps = a->eps;
    if (xattn_decoder_load(s->st, "", &o, &s->m) != XATTN_OK) return cli_lib_error(CMD, a->model);
    if (!a->allow_nonfinite && (rc = cli_check_weights_finite(CMD, a->model, s->st, NULL, 0)))
        return rc;
    xattn_decoder_config cfg;
    xattn_decoder_get_config(s->m, &cfg);
    const int64_t h = cfg.hidden, md = cfg.memory_dim;
    cli_finite_rule rule = a->allow_nonfinite ? CLI_FINITE_ANY : CLI_FINITE_STRICT;
    char sh[128];
    if (cli_load_float(CMD, a->x, 2, 3, rule, &s->x)) return CLI_EXIT_ERROR;
    const int rank3 = s->x.ndim == 3;
    const int64_t B = rank3 ? s->x.shape[0] : 1, T = s->x.shape[rank3];
    if (s->x.shape[s->x.ndim - 1] != h)
        return cli_error(CMD, a->x, "has shape %s but the model's hidden size is %lld",
                         cli_shape_str(&s->x, sh, sizeof sh), (long long)h);
    int64_t M = 0;
    const float *memory = NULL;
    const char *mpath = a->mem ? a->mem : a->ctx;
    if (mpath) {
        if (cli_load_float(CMD, mpath, 2, 3, rule, &s->mem)) return CLI_EXIT_ERROR;
        if (s->mem.ndim != s->x.ndim || s->mem.shape[s->mem.ndim - 1] != md ||
            (rank3 && s->mem.shape[0] != B))
            return cli_error(CMD, mpath, "the memory has shape %s; expected %s%lld) (memory_dim "
                                         "from crossattention.self.key.weight)",
                             cli_shape_str(&s->mem, sh, sizeof sh),
                             rank3 ? "(B, M, " : "(M, ", (long long)md);
        M = s->mem.shape[rank3];
        memory = s->mem.data;
    } else {
        int64_t Fv = 0, Nv = 0, Fa = 0, Na = 0;
        const char *paths[2] = {a->video, a->audio};
        xattn_array *arr[2] = {&s->video, &s->audio};
        const int64_t dims[2] = {cfg.video_dim, cfg.audio_dim};
        const char *what[2] = {"video", "audio"};
        for (int k = 0; k < 2; k++) {
            if (!paths[k]) continue;
            if (!dims[k])
                return cli_error(CMD, a->model, "--%s given but the file has no proj.%s.weight",
                                 what[k], what[k]);
            if (cli_load_float(CMD, paths[k], 3, 4, rule, arr[k])) return CLI_EXIT_ERROR;
            xattn_array *v = arr[k];
            if (v->ndim != (rank3 ? 4 : 3) || v->shape[v->ndim - 1] != dims[k] ||
                (rank3 && v->shape[0] != B))
                return cli_error(CMD, paths[k], "the %s features have shape %s; expected %s%lld)",
                                 what[k], cli_shape_str(v, sh, sizeof sh),
                                 rank3 ? "(B, F, N, " : "(F, N, ", (long long)dims[k]);
            int64_t F = v->shape[rank3], N = v->shape[rank3 + 1];
            if (k == 0) {
                Fv = F;
                Nv = N;
            } else {
                Fa = F;
                Na = N;
            }
        }
        M = Nv + Na;
        s->pmem = malloc((size_t)(B * M * md) * sizeof(float));
        if (!s->pmem) return cli_error(CMD, a->model, "out of memory for the memory");
        if (xattn_decoder_project(NULL, s->m, B, a->video ? s->video.data : NULL, Fv, Nv,
                                  a->audio ? s->audio.data : NULL, Fa, Na, s->pmem) != XATTN_OK)
            return cli_lib_error(CMD, a->model);
        memory = s->pmem;
    }
    if (a->am && (rc = load_keep(a->am, "--attention-mask", rank3, B, T, &s->am))) return rc;
    if (a->mm && (rc = load_keep(a->mm, "--memory-mask", rank3, B, M, &s->mm))) return rc;
    const uint8_t *am = a->am ? s->am.data : NULL, *mm = a->mm ? s->mm.data : NULL;
    s->out = malloc((size_t)(B * T * h) * sizeof(float));
    if (!s->out) return cli_error(CMD, a->x, "out of memory for the output");
    if (!a->incremental) {
        xattn_decoder_inputs in = {B, T, M, s->x.data, am, memory, mm, {0}};
        xattn_decoder_outputs res = {s->out, {0}};
        if (xattn_decoder_forward(NULL, s->m, &in, &res) != XATTN_OK)
            return cli_lib_error(CMD, a->model);
    } else {
        if (xattn_decoder_state_new(s->m, B, T, 1, &s->ds) != XATTN_OK ||
            xattn_decoder_set_memory(NULL, s->ds, M, memory, mm) != XATTN_OK)
            return cli_lib_error(CMD, a->model);
        float *buf = malloc((size_t)(2 * B * h) * sizeof(float) + (size_t)B);
        if (!buf) return cli_error(CMD, a->x, "out of memory");
        float *xs = buf;
        float *ys = buf + B * h;
        uint8_t *ms = (uint8_t *)(ys + B * h);
        const float *x = s->x.data;
        for (int64_t t = 0; t < T; t++) {
            for (int64_t b = 0; b < B; b++) {
                memcpy(xs + b * h, x + (b * T + t) * h, (size_t)h * sizeof(float));
                ms[b] = am ? am[b * T + t] : 1;
            }
            if (xattn_decoder_step(NULL, s->ds, 1, xs, ms, ys) != XATTN_OK) {
                free(buf);
                return cli_lib_error(CMD, a->model);
            }
            for (int64_t b = 0; b < B; b++)
                memcpy(s->out + (b * T + t) * h, ys + b * h, (size_t)h * sizeof(float));
        }
        free(buf);
    }
    cli_output out;
    int64_t sh_out[3];
    int nd = 0;
    if (rank3) sh_out[nd++] = B;
    sh_out[nd++] = T;
    sh_out[nd++] = h;
    cli_output_set(&out, "out", s->out, a->incremental ? "incremental" : NULL, nd, sh_out);
    return cli_write_outputs(CMD, dir, &out, 1);
}

static int dec_run(int argc, char **argv)
{
    dargs a;
    memset(&a, 0, sizeof a);
    const cli_option opts[] = {
        {"--x", CLI_STRING, &a.x, 0, 0},
        {"--memory", CLI_STRING, &a.mem, 0, 0},
        {"--context", CLI_STRING, &a.ctx, 0, 0},
        {"--video", CLI_STRING, &a.video, 0, 0},
        {"--audio", CLI_STRING, &a.audio, 0, 0},
        {"--attention-mask", CLI_STRING, &a.am, 0, 0},
        {"--memory-mask", CLI_STRING, &a.mm, 0, 0},
        {"--incremental", CLI_FLAG, &a.incremental, 0, 0},
        {"--heads", CLI_INT, &a.heads, 1, 1 << 20},
        {"--layer-norm-eps", CLI_STRING, &a.eps_s, 0, 0},
        {"--out-dir", CLI_STRING, &a.out_dir, 0, 0},
        {"--threads", CLI_INT, &a.threads, 1, 4096},
        {"--module", CLI_STRING, &a.module, 0, 0},
        {"--allow-nonfinite", CLI_FLAG, &a.allow_nonfinite, 0, 0},
    };
    const char *pos[1];
    int n_pos;
    cli_parse_result pr =
        cli_parse(CMD, argc, argv, opts, sizeof opts / sizeof opts[0], pos, 1, &n_pos);
    if (pr == CLI_HELP) {
        dec_help();
        return CLI_EXIT_OK;
    }
    if (pr != CLI_PARSED) return CLI_EXIT_USAGE;
    if (a.module && strcmp(a.module, "bert-decoder"))
        return cli_usage(CMD, "--module %s given, but the model is a bert-decoder module",
                         a.module);
    if (n_pos != 1) return cli_usage(CMD, "missing MODEL.safetensors");
    a.model = pos[0];
    if (!a.x) return cli_usage(CMD, "missing --x X.npy");
    if (a.mem && a.ctx) return cli_usage(CMD, "--memory and --context are the same option: give one");
    int has_mem = a.mem || a.ctx;
    if (has_mem && (a.video || a.audio))
        return cli_usage(CMD, "give either --memory or --video/--audio, not both");
    if (!has_mem && !a.video && !a.audio)
        return cli_usage(CMD, "missing --memory M.npy (or --video V.npy / --audio A.npy)");
    if (a.eps_s) {
        char *end = NULL;
        a.eps = strtod(a.eps_s, &end);
        if (!end || end == a.eps_s || *end || !(a.eps > 0) || a.eps > 1e30)
            return cli_usage(CMD, "--layer-norm-eps must be a positive number");
    }
    if (a.threads > 0) xattn_set_threads((int)a.threads);
    dstate s;
    memset(&s, 0, sizeof s);
    int rc = dec_go(&a, &s);
    xattn_decoder_state_free(s.ds);
    xattn_decoder_free(s.m);
    xattn_st_close(s.st);
    xattn_array_free(&s.x);
    xattn_array_free(&s.mem);
    xattn_array_free(&s.video);
    xattn_array_free(&s.audio);
    xattn_array_free(&s.am);
    xattn_array_free(&s.mm);
    free(s.pmem);
    free(s.out);
    return rc;
}

const cli_ext_module cli_ext_bert_decoder = {
    "bert-decoder",
    "BERT decoder layers (transformers BertLayer, is_decoder + cross-attention), KV-cached "
    "incremental decoding",
    dec_detect, dec_run, dec_describe};
