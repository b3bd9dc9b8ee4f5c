/*
 * xattn generate: token sequences (captions) from a whole BERT decoder model, transformers'
 * BertLMHeadModel with cross-attention, as its generate(): greedy search, beam search or
 * sampling, from a memory (encoder_hidden_states) or from video / audio features through the
 * model's projector. Writes ids.npy (int64, (B, T)) and, with a WordPiece vocab.txt, prints the
 * text of each sequence as BertTokenizer.decode(ids, skip_special_tokens=True).
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *CMD = "generate";

static void help(void)
{
    printf(
        "usage: xattn generate MODEL.safetensors (--memory M.npy | --video V.npy [--audio A.npy])\n"
        "                      [--memory-mask MM.npy] [--prompt IDS [--prompt-mask PM.npy]]\n"
        "                      [--max-new-tokens N]\n"
        "                      [--num-beams K [--length-penalty X] [--early-stopping "
        "true|false|never]\n"
        "                       | --do-sample [--top-k K] [--top-p P] [--temperature T] [--seed "
        "S]]\n"
        "                      [--no-repeat-ngram-size N] [--config config.json] [--vocab "
        "vocab.txt]\n"
        "                      [--eos-token-id IDS|none] [--pad-token-id N|none] [--bos-token-id "
        "N]\n"
        "                      [--weights auto|f32|bf16|f16|int8] [--compute f32|bf16]\n"
        "                      [--kernels K] [--threads N] --out ids.npy\n"
        "\n"
        "Generates token ids as transformers' BertLMHeadModel.generate(input_ids=prompt,\n"
        "encoder_hidden_states=memory, encoder_attention_mask=memory_mask, ...) on a model saved\n"
        "with save_file(model.state_dict(), ...) (BertConfig(is_decoder=True,\n"
        "add_cross_attention=True)): greedy and beam search give its ids; sampling draws from its\n"
        "distributions with xattn's own seeded generator. The special token ids, heads and eps\n"
        "come from --config, else the file's __metadata__ (BertConfig's defaults are announced).\n"
        "\n"
        "inputs:\n"
        "  MODEL.safetensors     bert.embeddings.*, bert.encoder.layer.N.*, cls.predictions.*\n"
        "  --memory M.npy        float (B, M, hidden) (or (M, hidden)): encoder_hidden_states\n"
        "  --video V.npy         float (B, F, N, video_dim): video features, mean-pooled over\n"
        "                        the F frames and projected by bert.encoder.proj.video\n"
        "                        (+ type_embedding.video) into the memory\n"
        "  --audio A.npy         float (B, F, N, audio_dim): the same with proj.audio, after the\n"
        "                        video in the memory (with or without --video)\n"
        "  --memory-mask MM.npy  bool or integer (B, M): 1 = KEEP (encoder_attention_mask)\n"
        "  --prompt IDS          the start of every sequence: comma-separated ids (the same for\n"
        "                        every item) or an .npy of integer ids (B, P) (or (P)); default\n"
        "                        bos_token_id alone\n"
        "  --prompt-mask PM.npy  bool or integer (B, P): 1 = KEEP (generate()'s attention_mask\n"
        "                        of prompts padded on the left; positions count kept tokens)\n"
        "  --config config.json  the transformers config.json of the model\n"
        "  --vocab vocab.txt     a WordPiece vocabulary (one token a line, as many as the model's\n"
        "                        word embeddings): print each sequence's text\n"
        "\n"
        "generation (transformers' GenerationConfig; defaults in brackets):\n"
        "  --max-new-tokens N    tokens to generate [up to 20 in all, prompt included]\n"
        "  --num-beams K         beam search with K beams, 2 to 32 [1: greedy]\n"
        "  --length-penalty X    beam scores are sum_logprobs / length^X [1.0]\n"
        "  --early-stopping E    true, false or never [false]\n"
        "  --no-repeat-ngram-size N  no n-gram of N tokens occurs twice [0: off]\n"
        "  --do-sample           sample instead of greedy search\n"
        "  --top-k K             keep the K most likely tokens [50; 0: off]\n"
        "  --top-p P             keep the smallest set of probability >= P, in (0, 1] [1.0]\n"
        "  --temperature T       divide the logits by T > 0 [1.0]\n"
        "  --seed S              the sampling generator's seed [0]\n"
        "\n"
        "output:\n"
        "  --out ids.npy         int64 (B, T): the sequences, prompt included; finished greedy\n"
        "                        rows continue with pad_token_id. Written to ids.npy.part\n"
        "                        first, then renamed: a failure writes nothing\n"
        "  --eos-token-id IDS    the end tokens (comma-separated, up to 8), or none [the model's]\n"
        "  --pad-token-id N      fills finished sequences, or none (the first end token)\n"
        "                        [the model's]\n"
        "  --bos-token-id N      starts every sequence when there is no --prompt [the model's]\n"
        "  --weights W           how the linear layers keep their weights: auto: as stored\n"
        "                        (BF16/F16 tensors stay 16-bit, others float32) [default];\n"
        "                        f32; bf16 or f16: half the memory, rounded to nearest from\n"
        "                        wider files, read exactly; int8: quantised at load per output\n"
        "                        channel (a quarter of the memory and of the bytes read per\n"
        "                        token; the logits move by the quantisation error, so ids may\n"
        "                        differ from float32)\n"
        "  --compute C           f32 [default], or bf16: every product reads its operands\n"
        "                        rounded to bfloat16, accumulating in float32\n"
        "  --kernels K           the kernel set: auto [the best this CPU has], amx, avx512bf16,\n"
        "                        avx512, avx2, neon or scalar (an error if the CPU lacks it)\n"
        "  --threads N           worker threads [all cores]\n"
        "  -h, --help            this help\n"
        "\n"
        "Prints \"wrote PATH (B, T)\", then with --vocab one line \"b: TEXT\" per item: the\n"
        "tokens other than [PAD] [UNK] [CLS] [SEP] [MASK], '##' pieces joined to the previous\n"
        "token, with BertTokenizer's clean-up of spaces before punctuation. Errors are one\n"
        "line on stderr; the exit code is 1 (2 for a usage error).\n");
}

typedef struct gen_args {
    const char *model, *memory, *video, *audio, *mmask, *prompt, *early, *config, *vocab, *out;
    const char *pmask;
    const char *lp, *weights, *compute, *kernels, *eos_ids, *pad_id, *bos_id;
    long long max_new, beams, ngram, top_k, seed, threads;
    double top_p, temp;
    int do_sample;
} gen_args;

/* Loaded inputs; everything here is freed by inputs_free. */
typedef struct gen_inputs {
    xattn_safetensors *st;
    xattn_lm *m;
    xattn_lm_config c;
    xattn_array mem, video, audio, mask, pmask;
    float *memory; /* (B, M, hidden): mem.data or built from video / audio */
    int64_t B, M, P;
    int64_t *prompt; /* (B, P) */
    char *vocab_buf;
    char **vocab; /* vocab_size tokens */
} gen_inputs;

static void inputs_free(gen_inputs *in)
{
    if (in->memory != in->mem.data) free(in->memory);
    xattn_array_free(&in->mem);
    xattn_array_free(&in->video);
    xattn_array_free(&in->audio);
    xattn_array_free(&in->pmask);
    xattn_array_free(&in->mask);
    free(in->prompt);
    free(in->vocab_buf);
    free(in->vocab);
    xattn_lm_free(in->m);
    xattn_st_close(in->st);
}

/* ---- options ---- */

static int parse_early(const char *s, xattn_early_stopping *e)
{
    if (!s) return *e = XATTN_EARLY_STOP_DEFAULT, 0;
    if (!strcmp(s, "true") || !strcmp(s, "True")) return *e = XATTN_EARLY_STOP_TRUE, 0;
    if (!strcmp(s, "false") || !strcmp(s, "False")) return *e = XATTN_EARLY_STOP_FALSE, 0;
    if (!strcmp(s, "never")) return *e = XATTN_EARLY_STOP_NEVER, 0;
    return cli_usage(CMD, "--early-stopping: expected true, false or never");
}

/* "none" / "None": -1; else up to cap comma-separated token ids >= 0 into v; the count, or -2. */
static int parse_ids(const char *s, int64_t *v, int cap)
{
    if (!strcmp(s, "none") || !strcmp(s, "None")) return -1;
    int n = 0;
    for (const char *p = s;; n++) {
        char *end = NULL;
        errno = 0;
        const long long x = strtoll(p, &end, 10);
        if (n == cap || end == p || errno || x < 0 || (*end && *end != ',')) return -2;
        v[n] = x;
        if (!*end) return n + 1;
        p = end + 1;
    }
}

/* --eos-token-id, --pad-token-id, --bos-token-id over the model's. */
static int special_flags(const gen_args *a, xattn_generate_opts *o)
{
    if (a->eos_ids) {
        const int n = parse_ids(a->eos_ids, o->eos_token_ids, XATTN_MAX_EOS);
        if (n == -2)
            return cli_usage(CMD, "--eos-token-id: expected up to %d comma-separated ids or none",
                             XATTN_MAX_EOS);
        o->n_eos = n;
    }
    const char *one[2] = {a->pad_id, a->bos_id}, *name[2] = {"--pad-token-id", "--bos-token-id"};
    int64_t *dst[2] = {&o->pad_token_id, &o->bos_token_id};
    int *has[2] = {&o->has_pad_token_id, &o->has_bos_token_id};
    for (int i = 0; i < 2; i++) {
        if (!one[i]) continue;
        const int n = parse_ids(one[i], dst[i], 1);
        if (n == -2 || (n == -1 && i == 1))
            return cli_usage(CMD, "%s: expected a token id%s", name[i], i ? "" : " or none");
        if (n == -1) *dst[i] = -1;
        *has[i] = 1;
    }
    return 0;
}

/* Flags that contradict each other, and the options struct. */
static int check_flags(const gen_args *a, xattn_generate_opts *o)
{
    if (!a->model) return cli_usage(CMD, "missing MODEL.safetensors");
    if (!a->out) return cli_usage(CMD, "--out ids.npy is required");
    if (a->weights && xattn_weights_parse(a->weights) < 0)
        return cli_usage(CMD, "--weights: expected auto, f32, bf16, f16 or int8, not '%s'",
                         a->weights);
    if (!a->memory && !a->video && !a->audio)
        return cli_usage(CMD, "give the memory: --memory M.npy, or --video V.npy / --audio A.npy");
    if (a->memory && (a->video || a->audio))
        return cli_usage(CMD, "--memory and --%s together: give one memory",
                         a->video ? "video" : "audio");
    const int sampling_flag = a->top_k >= 0 || a->top_p >= 0 || a->temp >= 0 || a->seed >= 0;
    const int beam_flag = a->lp || a->early;
    if (a->do_sample && (a->beams > 1 || beam_flag))
        return cli_usage(CMD, "--do-sample and %s together: beam sampling is not supported",
                         a->beams > 1 ? "--num-beams"
                         : a->lp      ? "--length-penalty"
                                      : "--early-stopping");
    if (sampling_flag && !a->do_sample)
        return cli_usage(CMD, "--top-k, --top-p, --temperature and --seed need --do-sample");
    if (beam_flag && a->beams < 2)
        return cli_usage(CMD, "--length-penalty and --early-stopping need --num-beams K > 1");
    if (a->top_p >= 0 && (a->top_p <= 0 || a->top_p > 1))
        return cli_usage(CMD, "--top-p must be in (0, 1]");
    if (a->temp >= 0 && a->temp <= 0) return cli_usage(CMD, "--temperature must be > 0");
    memset(o, 0, sizeof *o);
    if (a->lp) {
        char *end = NULL;
        errno = 0;
        o->length_penalty = strtod(a->lp, &end);
        if (end == a->lp || *end || errno || o->length_penalty != o->length_penalty)
            return cli_usage(CMD, "--length-penalty: '%s' is not a number", a->lp);
        o->has_length_penalty = 1;
    }
    if (parse_early(a->early, &o->early_stopping)) return CLI_EXIT_USAGE;
    o->max_new_tokens = a->max_new > 0 ? a->max_new : 0;
    o->num_beams = a->beams > 1 ? a->beams : 1;
    o->no_repeat_ngram_size = a->ngram > 0 ? a->ngram : 0;
    o->do_sample = a->do_sample;
    o->temperature = a->temp > 0 ? a->temp : 0;
    o->top_k = a->top_k; /* resolved once the vocabulary size is known */
    o->top_p = a->top_p > 0 ? a->top_p : 0;
    o->seed = a->seed > 0 ? (uint64_t)a->seed : 0;
    return special_flags(a, o);
}

/* ---- the model and the vocabulary ---- */

static int load_model(const gen_args *a, gen_inputs *in)
{
    xattn_lm_opts lo;
    memset(&lo, 0, sizeof lo);
    lo.config_json = a->config;
    lo.weights = a->weights ? xattn_weights_parse(a->weights) : XATTN_WEIGHTS_AUTO;
    if (xattn_st_open(a->model, &in->st)) return cli_lib_error(CMD, a->model);
    if (xattn_lm_load(in->st, &lo, &in->m)) {
        const char *msg = xattn_last_error();
        const size_t n = a->config ? strlen(a->config) : 0;
        const int blame_config = a->config && msg && !strncmp(msg, a->config, n);
        return cli_lib_error(CMD, blame_config ? a->config : a->model);
    }
    /* the weights are the model's own copies now: the file's bytes are not needed */
    xattn_st_close(in->st);
    in->st = NULL;
    xattn_lm_get_config(in->m, &in->c);
    if (!in->c.has_head)
        return cli_error(CMD, a->model,
                         "has no prediction head (cls.predictions.*): a BertModel cannot "
                         "generate; save a BertLMHeadModel");
    const char *w = xattn_lm_warnings(in->m);
    while (w && *w) {
        const char *e = strchr(w, '\n');
        const int len = e ? (int)(e - w) : (int)strlen(w);
        if (len) fprintf(stderr, "xattn %s: %s: warning: %.*s\n", CMD, a->model, len, w);
        w += len + (e != NULL);
    }
    return 0;
}

/* Reads vocab.txt as BertTokenizer does: one token a line (the line ends "\n", "\r\n" or "\r"
 * removed), line k holding token k; as many tokens as the model's embeddings have rows. */
static int load_vocab(const char *path, gen_inputs *in)
{
    FILE *f = fopen(path, "rb");
    if (!f) return cli_error(CMD, path, "cannot open: %s", strerror(errno));
    size_t cap = 1 << 16, len = 0, got;
    char *buf = malloc(cap + 1);
    while (buf && (got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        char *nb = len == cap ? realloc(buf, (cap *= 2) + 1) : buf;
        if (!nb) free(buf);
        buf = nb;
    }
    const int bad_read = ferror(f);
    fclose(f);
    if (!buf) return cli_error(CMD, path, "out of memory");
    in->vocab_buf = buf;
    if (bad_read) return cli_error(CMD, path, "cannot read");
    int64_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (buf[i] == '\n' || (buf[i] == '\r' && (i + 1 == len || buf[i + 1] != '\n'))) n++;
    if (len && buf[len - 1] != '\n' && buf[len - 1] != '\r') n++;
    if (n != in->c.vocab_size)
        return cli_error(CMD, path,
                         "holds %lld tokens, the model's word embeddings %lld rows "
                         "(vocab_size): not the model's vocabulary",
                         (long long)n, (long long)in->c.vocab_size);
    in->vocab = malloc(sizeof(char *) * (size_t)(n ? n : 1));
    if (!in->vocab) return cli_error(CMD, path, "out of memory");
    int64_t k = 0;
    char *start = buf;
    for (size_t i = 0; i <= len && k < n; i++) {
        if (i < len && buf[i] != '\n' && buf[i] != '\r') continue;
        if (i < len && buf[i] == '\r' && i + 1 < len && buf[i + 1] == '\n') buf[i++] = '\0';
        buf[i] = '\0';
        in->vocab[k++] = start;
        start = buf + i + 1;
    }
    return 0;
}

/* ---- the memory ---- */

static int check_batch(const char *path, int64_t got, int64_t B)
{
    if (got == B) return 0;
    return cli_error(CMD, path, "has %lld batch items, the other inputs %lld", (long long)got,
                     (long long)B);
}

static int load_features(const char *path, int64_t width, const char *what, xattn_array *a)
{
    if (!width)
        return cli_error(CMD, path,
                         "the model has no %s projector (bert.encoder.proj.%s.weight): give "
                         "--memory",
                         what, what);
    if (cli_load_float(CMD, path, 4, 4, CLI_FINITE_STRICT, a)) return CLI_EXIT_ERROR;
    if (a->shape[3] != width)
        return cli_error(CMD, path, "has %lld channels, the model's proj.%s reads %lld",
                         (long long)a->shape[3], what, (long long)width);
    return 0;
}

/* The memory (B, M, hidden) from --memory, or --video / --audio through the projector. */
static int load_memory(const gen_args *a, gen_inputs *in)
{
    const int64_t H = in->c.hidden;
    if (a->memory) {
        if (cli_load_float(CMD, a->memory, 2, 3, CLI_FINITE_STRICT, &in->mem)) return 1;
        const int r = in->mem.ndim;
        if (in->mem.shape[r - 1] != H)
            return cli_error(CMD, a->memory,
                             "has width %lld, the model's cross-attention reads %lld "
                             "(hidden_size)",
                             (long long)in->mem.shape[r - 1], (long long)H);
        in->B = r == 3 ? in->mem.shape[0] : 1;
        in->M = in->mem.shape[r - 2];
        in->memory = in->mem.data;
        return 0;
    }
    xattn_decoder_config dc;
    xattn_decoder_get_config(xattn_lm_decoder(in->m), &dc);
    if (a->video && load_features(a->video, dc.video_dim, "video", &in->video)) return 1;
    if (a->audio && load_features(a->audio, dc.audio_dim, "audio", &in->audio)) return 1;
    const xattn_array *v = &in->video, *au = &in->audio;
    in->B = v->data ? v->shape[0] : au->shape[0];
    if (v->data && au->data && check_batch(a->audio, au->shape[0], in->B)) return 1;
    const int64_t Nv = v->data ? v->shape[2] : 0, Na = au->data ? au->shape[2] : 0;
    in->M = Nv + Na;
    in->memory = malloc(sizeof(float) * (size_t)(in->B * in->M * H));
    if (!in->memory) return cli_error(CMD, NULL, "out of memory");
    if (xattn_decoder_project(NULL, xattn_lm_decoder(in->m), in->B, v->data,
                              v->data ? v->shape[1] : 0, Nv, au->data, au->data ? au->shape[1] : 0,
                              Na, in->memory))
        return cli_lib_error(CMD, a->video ? a->video : a->audio);
    return 0;
}

/* A keep mask (B, n) (or (n,) for one item) from flag's file into k: --memory-mask (n = M) or
 * --prompt-mask (n = P); what names the axis in the message. */
static int load_keep(const char *path, const char *flag, int64_t B, int64_t n, const char *what,
                     xattn_array *k)
{
    if (cli_load_bool_mask(CMD, path, flag, "keep", k)) return 1;
    const int ok = (k->ndim == 2 && k->shape[0] == B && k->shape[1] == n) ||
                   (k->ndim == 1 && B == 1 && k->shape[0] == n);
    if (!ok) {
        char s[160];
        return cli_error(CMD, path, "has shape %s; expected (%lld, %lld): %s",
                         cli_shape_str(k, s, sizeof s), (long long)B, (long long)n, what);
    }
    return 0;
}

/* ---- the prompt ---- */

/* "1,5,7": one row, repeated for every item. */
static int parse_prompt_list(const char *s, gen_inputs *in)
{
    int64_t n = 1;
    for (const char *p = s; *p; p++) n += *p == ',';
    int64_t *row = malloc(sizeof(int64_t) * (size_t)n);
    in->prompt = malloc(sizeof(int64_t) * (size_t)(n * in->B));
    if (!row || !in->prompt) {
        free(row);
        return cli_error(CMD, NULL, "out of memory");
    }
    const char *p = s;
    for (int64_t k = 0; k < n; k++) {
        char *end = NULL;
        errno = 0;
        const long long v = *p >= '0' && *p <= '9' ? strtoll(p, &end, 10) : -1;
        if (!end || errno || (*end && *end != ',')) {
            free(row);
            return cli_usage(CMD, "--prompt: expected comma-separated token ids or an .npy file");
        }
        row[k] = v;
        p = *end ? end + 1 : end;
    }
    for (int64_t b = 0; b < in->B; b++)
        memcpy(in->prompt + b * n, row, sizeof(int64_t) * (size_t)n);
    free(row);
    in->P = n;
    return 0;
}

static int load_prompt_npy(const char *path, gen_inputs *in)
{
    xattn_array a;
    if (xattn_npy_load(path, &a)) return cli_lib_error(CMD, path);
    char s[160];
    int rc = 0;
    const xattn_dtype t = a.dtype;
    if (t != XATTN_I64 && t != XATTN_I32 && t != XATTN_I16 && t != XATTN_I8 && t != XATTN_U8)
        rc = cli_error(CMD, path, "dtype %s is not supported: expected integer token ids",
                       cli_np_dtype(t));
    else if (!(a.ndim == 2 && a.shape[0] == in->B) && !(a.ndim == 1 && in->B == 1))
        rc = cli_error(CMD, path, "has shape %s; expected (%lld, P): a row of ids per item",
                       cli_shape_str(&a, s, sizeof s), (long long)in->B);
    else if ((in->P = a.shape[a.ndim - 1]) < 1)
        rc = cli_error(CMD, path, "is empty: no prompt tokens");
    else if (!(in->prompt = malloc(sizeof(int64_t) * (size_t)(in->B * in->P))))
        rc = cli_error(CMD, NULL, "out of memory");
    for (int64_t i = 0; !rc && i < in->B * in->P; i++) {
        const char *d = a.data;
        in->prompt[i] = t == XATTN_I64   ? ((const int64_t *)d)[i]
                        : t == XATTN_I32 ? ((const int32_t *)d)[i]
                        : t == XATTN_I16 ? ((const int16_t *)d)[i]
                        : t == XATTN_I8  ? ((const int8_t *)d)[i]
                                         : ((const uint8_t *)d)[i];
    }
    xattn_array_free(&a);
    return rc;
}

/* A prompt given as a file (else a list of ids). */
static int is_npy(const char *s)
{
    const size_t n = s ? strlen(s) : 0;
    return n > 4 && !strcmp(s + n - 4, ".npy");
}

/* The prompt's ids in range, and prompt + new tokens within the positions. */
static int check_prompt(const gen_args *a, gen_inputs *in, xattn_generate_opts *o)
{
    const int64_t V = in->c.vocab_size, maxpos = in->c.max_positions;
    const char *what = is_npy(a->prompt) ? a->prompt : "--prompt";
    for (int64_t i = 0; i < in->B * in->P; i++)
        if (in->prompt[i] < 0 || in->prompt[i] >= V)
            return cli_error(CMD, what,
                             "token id %lld (item %lld, position %lld) is out of range: the "
                             "vocabulary has %lld tokens",
                             (long long)in->prompt[i], (long long)(i / in->P),
                             (long long)(i % in->P), (long long)V);
    if (!a->prompt && in->c.bos_token_id < 0)
        return cli_error(CMD, a->model,
                         "the model has no bos_token_id to start from: give --prompt IDS");
    const int64_t P = in->P ? in->P : 1;
    if (P >= maxpos)
        return cli_error(CMD, what,
                         "a prompt of %lld tokens leaves no position to generate in: the model "
                         "has max_position_embeddings = %lld",
                         (long long)P, (long long)maxpos);
    if (!o->max_new_tokens && P >= 20)
        return cli_usage(CMD,
                         "a prompt of %lld tokens is past the default length (20): give "
                         "--max-new-tokens N",
                         (long long)P);
    const int64_t n = o->max_new_tokens ? o->max_new_tokens : 20 - P;
    if (P + n > maxpos)
        return cli_error(CMD, what,
                         "%lld prompt tokens and %lld new ones exceed the model's %lld positions "
                         "(max_position_embeddings)",
                         (long long)P, (long long)n, (long long)maxpos);
    if (o->top_k == 0 || o->top_k >= V) o->top_k = V; /* off */
    if (o->top_k < 0) o->top_k = 0;                   /* transformers' default */
    return 0;
}

/* ---- output ---- */

static int check_out(const char *out)
{
    char dir[4096];
    const char *slash = strrchr(out, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", slash == out ? 1 : (int)(slash - out), out);
    struct stat sb;
    if (stat(out, &sb) == 0 && S_ISDIR(sb.st_mode))
        return cli_error(CMD, out, "is a directory; --out names the .npy file to write");
    if (access(dir, W_OK | X_OK) != 0)
        return cli_error(CMD, out, "cannot write into %s: %s", dir, strerror(errno));
    return 0;
}

static int write_ids(const char *out, const int64_t *ids, int64_t B, int64_t T)
{
    char tmp[4200];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.part", out) >= sizeof tmp)
        return cli_error(CMD, out, "path too long");
    xattn_array a;
    memset(&a, 0, sizeof a);
    a.dtype = XATTN_I64;
    a.ndim = 2;
    a.shape[0] = B;
    a.shape[1] = T;
    a.data = (void *)ids;
    if (xattn_npy_save(tmp, &a)) {
        remove(tmp);
        return cli_lib_error(CMD, out);
    }
    if (rename(tmp, out)) {
        const int e = errno;
        remove(tmp);
        return cli_error(CMD, out, "cannot write: %s", strerror(e));
    }
    printf("wrote %s (%lld, %lld)\n", out, (long long)B, (long long)T);
    return 0;
}

/* Python's str.replace(pat, rep) in place (rep no longer than pat). */
static void replace_all(char *s, const char *pat, const char *rep)
{
    const size_t np = strlen(pat), nr = strlen(rep);
    char *w = s;
    for (const char *r = s; *r;) {
        if (!strncmp(r, pat, np)) {
            memcpy(w, rep, nr);
            w += nr, r += np;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
}

/* One token of BertTokenizer.decode: tokenizers' WordPiece decoder with cleanup. */
static void print_piece(const char *tok, int first)
{
    static const char *const clean[][2] = {{" .", "."},     {" ?", "?"},           {" !", "!"},
                                           {" ,", ","},     {" ' ", "'"},          {" n't", "n't"},
                                           {" 'm", "'m"},   {" do not", " don't"}, {" 's", "'s"},
                                           {" 've", "'ve"}, {" 're", "'re"}};
    const size_t n = strlen(tok);
    char *t = malloc(n + 2);
    if (!t) return;
    if (!first && !strncmp(tok, "##", 2))
        memcpy(t, tok + 2, n - 1);
    else
        snprintf(t, n + 2, "%s%s", first ? "" : " ", tok);
    for (size_t k = 0; k < sizeof clean / sizeof clean[0]; k++)
        replace_all(t, clean[k][0], clean[k][1]);
    fputs(t, stdout);
    free(t);
}

static void print_text(const gen_inputs *in, const int64_t *ids, int64_t T)
{
    static const char *const special[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
    for (int64_t b = 0; b < in->B; b++) {
        printf("%lld: ", (long long)b);
        int first = 1;
        for (int64_t t = 0; t < T; t++) {
            const char *tok = in->vocab[ids[b * T + t]];
            int skip = 0;
            for (size_t k = 0; k < sizeof special / sizeof special[0]; k++)
                skip |= !strcmp(tok, special[k]);
            if (skip) continue;
            print_piece(tok, first);
            first = 0;
        }
        putchar('\n');
    }
}

/* ---- the command ---- */

static int load_all(const gen_args *a, gen_inputs *in, xattn_generate_opts *o)
{
    if (check_out(a->out) || load_model(a, in)) return CLI_EXIT_ERROR;
    if (a->vocab && load_vocab(a->vocab, in)) return CLI_EXIT_ERROR;
    if (load_memory(a, in)) return CLI_EXIT_ERROR;
    if (a->mmask &&
        load_keep(a->mmask, "--memory-mask", in->B, in->M, "(B, M) of the memory", &in->mask))
        return CLI_EXIT_ERROR;
    if (a->prompt) {
        const int rc =
            is_npy(a->prompt) ? load_prompt_npy(a->prompt, in) : parse_prompt_list(a->prompt, in);
        if (rc) return rc;
    }
    if (a->pmask && !a->prompt) return cli_usage(CMD, "--prompt-mask needs --prompt");
    if (a->pmask &&
        load_keep(a->pmask, "--prompt-mask", in->B, in->P, "(B, P) of the prompt", &in->pmask))
        return CLI_EXIT_ERROR;
    o->prompt_mask = in->pmask.data;
    return check_prompt(a, in, o);
}

static int generate(const gen_args *a, gen_inputs *in, const xattn_generate_opts *o)
{
    const int64_t cap = xattn_lm_generate_length(o, in->P);
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)(in->B * cap)), T = 0;
    int rc = ids ? 0 : cli_error(CMD, NULL, "out of memory");
    if (!rc && xattn_lm_generate(NULL, in->m, in->B, in->M, in->memory, in->mask.data, in->P,
                                 in->prompt, o, ids, &T))
        rc = cli_lib_error(CMD, a->model);
    if (!rc) rc = write_ids(a->out, ids, in->B, T);
    if (!rc && in->vocab) print_text(in, ids, T);
    free(ids);
    return rc;
}

int cmd_generate(int argc, char **argv)
{
    gen_args a;
    memset(&a, 0, sizeof a);
    a.max_new = a.beams = a.ngram = a.top_k = a.seed = a.threads = -1;
    a.top_p = a.temp = -1;
    const cli_option opts[] = {
        {"--memory", CLI_STRING, &a.memory, 0, 0},
        {"--video", CLI_STRING, &a.video, 0, 0},
        {"--audio", CLI_STRING, &a.audio, 0, 0},
        {"--memory-mask", CLI_STRING, &a.mmask, 0, 0},
        {"--prompt-mask", CLI_STRING, &a.pmask, 0, 0},
        {"--prompt", CLI_STRING, &a.prompt, 0, 0},
        {"--max-new-tokens", CLI_INT, &a.max_new, 1, 1LL << 30},
        {"--num-beams", CLI_INT, &a.beams, 1, 32},
        {"--length-penalty", CLI_STRING, &a.lp, 0, 0},
        {"--early-stopping", CLI_STRING, &a.early, 0, 0},
        {"--no-repeat-ngram-size", CLI_INT, &a.ngram, 0, 1LL << 30},
        {"--do-sample", CLI_FLAG, &a.do_sample, 0, 0},
        {"--top-k", CLI_INT, &a.top_k, 0, 1LL << 40},
        {"--top-p", CLI_DOUBLE, &a.top_p, 0, 0},
        {"--temperature", CLI_DOUBLE, &a.temp, 0, 0},
        {"--seed", CLI_INT, &a.seed, 0, 1LL << 62},
        {"--config", CLI_STRING, &a.config, 0, 0},
        {"--vocab", CLI_STRING, &a.vocab, 0, 0},
        {"--weights", CLI_STRING, &a.weights, 0, 0},
        {"--compute", CLI_STRING, &a.compute, 0, 0},
        {"--kernels", CLI_STRING, &a.kernels, 0, 0},
        {"--eos-token-id", CLI_STRING, &a.eos_ids, 0, 0},
        {"--pad-token-id", CLI_STRING, &a.pad_id, 0, 0},
        {"--bos-token-id", CLI_STRING, &a.bos_id, 0, 0},
        {"--threads", CLI_INT, &a.threads, 1, XATTN_MAX_THREADS},
        {"--out", CLI_STRING, &a.out, 0, 0},
    };
    int n_pos = 0;
    const cli_parse_result pr =
        cli_parse(CMD, argc, argv, opts, sizeof opts / sizeof opts[0], &a.model, 1, &n_pos);
    if (pr == CLI_HELP) {
        help();
        return CLI_EXIT_OK;
    }
    if (pr == CLI_BAD_USAGE) return CLI_EXIT_USAGE;
    xattn_generate_opts o;
    int rc = check_flags(&a, &o);
    if (rc) return rc;
    /* the whole command on N threads: loading (int8 quantisation) as well as generating */
    if (a.threads > 0) xattn_set_threads((int)a.threads);
    if (a.compute && strcmp(a.compute, "f32") && strcmp(a.compute, "bf16"))
        return cli_usage(CMD, "--compute: expected f32 or bf16, not '%s'", a.compute);
    if (a.compute && !strcmp(a.compute, "bf16")) xattn_set_compute(XATTN_COMPUTE_BF16);
    if (a.kernels && xattn_set_isa(a.kernels)) return cli_lib_error(CMD, NULL);
    gen_inputs in;
    memset(&in, 0, sizeof in);
    rc = load_all(&a, &in, &o);
    if (!rc) rc = generate(&a, &in, &o);
    inputs_free(&in);
    return rc;
}
