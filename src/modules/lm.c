/*
 * A whole BERT decoder model: transformers' BertLMHeadModel (bert.embeddings.*,
 * bert.encoder.layer.N.*, cls.predictions.*) or a bare BertModel (embeddings.*, encoder.*), with
 * BertConfig(is_decoder=True, add_cross_attention=True).
 *
 *   x = LN(word[id] + token_type[0] + position[pos + t])            (BertEmbeddings)
 *   h = the decoder stack (bert-decoder, decoder.c) over x with the K/V cache
 *   logits = LN(gelu(h Wd^T + bd)) Wv^T + bias                       (BertLMPredictionHead)
 * Wv is cls.predictions.decoder.weight, or the word embeddings when it is absent (tied, as
 * save_model leaves shared tensors out); the bias is cls.predictions.decoder.bias or
 * cls.predictions.bias (the same tensor in transformers).
 *
 * Configuration goes through the module core: sizes from the shapes; heads, eps, hidden_act and
 * the special token ids from the options, which a transformers config.json supplies, else the
 * file's __metadata__, else BertConfig's defaults, announced as warnings. A config.json value that
 * disagrees with the shapes is an error naming config.json.
 */
#include "modules/lm.h"

#include "io/io_internal.h"
#include "kernels/ops.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const FN_LOAD = "xattn_lm_load";
static const char *const FN_STEP = "xattn_lm_step";

static const char *const acts[] = {"gelu", NULL};

/* BertConfig's arguments that the embeddings and the head need (the layers' are decoder.c's). */
static const xa_field fields[] = {
    {"vocab_size", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 30522, 1, 1e15, NULL, NULL,
     "tokens of the vocabulary"},
    {"hidden_size", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 768, 1, 1e15, NULL, NULL,
     "width of the hidden states"},
    {"max_position_embeddings", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 512, 1, 1e15, NULL, NULL,
     "positions of the position embeddings (the longest sequence)"},
    {"type_vocab_size", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 2, 1, 1e15, NULL, NULL,
     "token types (every token has type 0, as generate passes none)"},
    {"num_attention_heads", XA_T_INT, XA_F_TRACELESS, 12, 1, 1e15, NULL,
     "num_attention_heads|heads", "attention heads"},
    {"layer_norm_eps", XA_T_REAL, XA_F_TRACELESS, 1e-12, 0, 1e30, NULL, NULL,
     "eps of every LayerNorm"},
    {"hidden_act", XA_T_ENUM, XA_F_TRACELESS, 0, 0, 0, acts, NULL,
     "activation of the feed-forward layers and the head (the exact erf GELU)"},
    {"pad_token_id", XA_T_INT, XA_F_TRACELESS | XA_F_NULLABLE, 0, 0, 1e15, NULL, NULL,
     "the padding token (fills finished sequences; None: the first end token)"},
    {"bos_token_id", XA_T_INT, XA_F_OPTIONAL, 0, 0, 1e15, NULL, NULL,
     "the token that starts a sequence (None: a prompt is needed)"},
    {"eos_token_id", XA_T_INT, XA_F_OPTIONAL, 0, 0, 1e15, NULL, NULL,
     "the token that ends a sequence (None: generation runs to max_new_tokens)"},
};
#define N_FIELDS ((int)XA_N(fields))

enum { EW, EP, ET, ELW, ELB, NE };
static const xa_pspec emb_table[NE] = {
    {"embeddings.word_embeddings.weight", "vocab_size,hidden_size", NULL, 0, XA_INIT_NORMAL, "0.02",
     "the word embeddings (vocab_size, hidden_size)"},
    {"embeddings.position_embeddings.weight", "max_position_embeddings,hidden_size", NULL, 0,
     XA_INIT_NORMAL, "0.02", "the position embeddings (max_position_embeddings, hidden_size)"},
    {"embeddings.token_type_embeddings.weight", "type_vocab_size,hidden_size", NULL, 0,
     XA_INIT_NORMAL, "0.02", "the token type embeddings (type_vocab_size, hidden_size)"},
    {"embeddings.LayerNorm.weight", "hidden_size", NULL, 0, XA_INIT_ONES, NULL,
     "the embeddings' LayerNorm weight"},
    {"embeddings.LayerNorm.bias", "hidden_size", NULL, 0, XA_INIT_ZEROS, NULL,
     "the embeddings' LayerNorm bias"},
};

enum { HDW, HDB, HLW, HLB, HVW, HVB, HB, NH };
static const xa_pspec head_table[NH] = {
    {"cls.predictions.transform.dense.weight", "hidden_size,hidden_size", NULL, 0, XA_INIT_LINEAR,
     NULL, "the head's dense weight"},
    {"cls.predictions.transform.dense.bias", "hidden_size", NULL, 0, XA_INIT_BIAS, "hidden_size",
     "the head's dense bias"},
    {"cls.predictions.transform.LayerNorm.weight", "hidden_size", NULL, 0, XA_INIT_ONES, NULL,
     "the head's LayerNorm weight"},
    {"cls.predictions.transform.LayerNorm.bias", "hidden_size", NULL, 0, XA_INIT_ZEROS, NULL,
     "the head's LayerNorm bias"},
    {"cls.predictions.decoder.weight", "vocab_size,hidden_size", NULL, XA_P_OPT, XA_INIT_LINEAR,
     NULL, "the output weight (absent: tied to the word embeddings)"},
    {"cls.predictions.decoder.bias", "vocab_size", NULL, XA_P_OPT, XA_INIT_ZEROS, NULL,
     "the output bias"},
    {"cls.predictions.bias", "vocab_size", NULL, XA_P_OPT, XA_INIT_ZEROS, NULL, "the output bias"},
};

struct xattn_lm {
    xa_cfg cfg;
    xa_params emb, head;
    xattn_decoder *dec;
    xattn_lm_config c;
    const float *e[NE];
    const float *h[NH]; /* h[HVW]: the output weight (tied or not), h[HB]: the output bias */
    /* the head's dense and output weights as kept (float32, 16 bits or int8; h[] NULL when
     * not float32); tied, the word embeddings are the output weight's rows (e[EW] NULL then) */
    xa_wt wd, wv;
};

/* ---------------------------------------------------------------------------------------- */
/* config.json                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Options from a transformers config.json: BertConfig's keys this model reads. */
typedef struct lm_opts {
    xa_kv lm[N_FIELDS + 1], dec[4];
    size_t n_lm, n_dec;
    char text[N_FIELDS + 6][48];
    int nt;
    int64_t eos[XATTN_MAX_EOS], n_eos; /* a list of end tokens (config.json or __metadata__) */
    int eos_meta;                      /* the list came from __metadata__ */
} lm_opts;

/* A JSON list of 1 .. XATTN_MAX_EOS token ids into o->eos; where names it in messages. */
static xattn_status eos_list(const cJSON *v, const char *where, lm_opts *o)
{
    const int n = cJSON_GetArraySize(v);
    if (n < 1 || n > XATTN_MAX_EOS)
        return xa_error(XATTN_ERR_UNSUPPORTED, "%s: eos_token_id lists %d tokens (1 to %d)", where,
                        n, XATTN_MAX_EOS);
    for (int i = 0; i < n; i++) {
        const cJSON *x = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 1e15 ||
            x->valuedouble != (double)(int64_t)x->valuedouble)
            return xa_error(XATTN_ERR_FORMAT, "%s: eos_token_id: item %d is not a token id", where,
                            i);
        o->eos[i] = (int64_t)x->valuedouble;
    }
    o->n_eos = n;
    return XATTN_OK;
}

static const char *json_text(lm_opts *o, const cJSON *v)
{
    char *t = o->text[o->nt++];
    if (cJSON_IsNull(v))
        snprintf(t, 48, "None");
    else if (cJSON_IsBool(v))
        snprintf(t, 48, "%s", cJSON_IsTrue(v) ? "True" : "False");
    else if (cJSON_IsString(v))
        snprintf(t, 48, "%s", v->valuestring);
    else if (cJSON_IsNumber(v) && v->valuedouble == (double)(int64_t)v->valuedouble)
        snprintf(t, 48, "%lld", (long long)v->valuedouble);
    else if (cJSON_IsNumber(v))
        snprintf(t, 48, "%.17g", v->valuedouble);
    else
        snprintf(t, 48, "(not a number or string)");
    return t;
}

/* __metadata__ "eos_token_id" as a JSON list ("[3, 7]", as str() of a list writes it): the
 * list, and its first token as the field (marked as the metadata's after resolving). An
 * eos_token_id from config.json or the options wins, as for every field. */
static xattn_status meta_eos(const xattn_safetensors *st, lm_opts *o)
{
    for (size_t i = 0; i < o->n_lm; i++)
        if (!strcmp(o->lm[i].key, "eos_token_id")) return XATTN_OK;
    const char *t = xattn_st_meta_get(st, "eos_token_id");
    if (!t || *t != '[') return XATTN_OK;
    cJSON *v = cJSON_Parse(t);
    xattn_status s = cJSON_IsArray(v) ? eos_list(v, "__metadata__", o)
                                      : xa_error(XATTN_ERR_FORMAT,
                                                 "__metadata__ eos_token_id '%.40s' is not a "
                                                 "list of token ids",
                                                 t);
    cJSON_Delete(v);
    if (s) return s;
    snprintf(o->text[o->nt], 48, "%lld", (long long)o->eos[0]);
    o->lm[o->n_lm].key = "eos_token_id";
    o->lm[o->n_lm++].value = o->text[o->nt++];
    o->eos_meta = 1;
    return XATTN_OK;
}

/* Checks the keys that must hold for this model and turns the others into options. */
static xattn_status config_keys(const cJSON *root, const char *path, lm_opts *o)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "is_decoder");
    if (v && !cJSON_IsTrue(v))
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: is_decoder is not true: xattn runs BERT as a decoder "
                        "(is_decoder=True, add_cross_attention=True)",
                        path);
    v = cJSON_GetObjectItemCaseSensitive(root, "position_embedding_type");
    if (v && !(cJSON_IsString(v) && !strcmp(v->valuestring, "absolute")))
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: position_embedding_type must be \"absolute\" (the only one BERT "
                        "has in transformers 5)",
                        path);
    v = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (cJSON_IsArray(v)) { /* several end tokens: the first is eos_token_id */
        xattn_status s = eos_list(v, path, o);
        if (s) return s;
        v = cJSON_GetArrayItem(v, 0);
    }
    for (int i = 0; i < N_FIELDS; i++) {
        const cJSON *x = !strcmp(fields[i].name, "eos_token_id")
                             ? v
                             : cJSON_GetObjectItemCaseSensitive(root, fields[i].name);
        if (!x) continue;
        o->lm[o->n_lm].key = fields[i].name;
        o->lm[o->n_lm++].value = json_text(o, x);
    }
    static const char *const dec_keys[] = {"num_hidden_layers", "intermediate_size"};
    for (size_t i = 0; i < XA_N(dec_keys); i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, dec_keys[i]);
        if (!x) continue;
        o->dec[o->n_dec].key = dec_keys[i];
        o->dec[o->n_dec++].value = json_text(o, x);
    }
    return XATTN_OK;
}

static xattn_status read_config(const char *path, lm_opts *o)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    xattn_status s = xa_io_read_file(path, &buf, &len);
    if (s) return s;
    cJSON *root = cJSON_ParseWithLength((const char *)buf, len);
    xa_free(buf);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return xa_error(XATTN_ERR_FORMAT, "%s: not a JSON object (a transformers config.json)",
                        path);
    }
    s = config_keys(root, path, o);
    cJSON_Delete(root);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Loading                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* The prefix of the BertModel: "bert." (BertLMHeadModel) or "" (BertModel). */
static xattn_status find_base(const xattn_safetensors *st, const char **base)
{
    const char *key = "embeddings.word_embeddings.weight";
    if (xa_has(st, "bert.", key)) return *base = "bert.", XATTN_OK;
    if (xa_has(st, "", key)) return *base = "", XATTN_OK;
    return xa_error(XATTN_ERR_NOT_FOUND,
                    "no BERT model: expected 'bert.%s' (BertLMHeadModel) or '%s' (BertModel)", key,
                    key);
}

/* Adds `path: ` in front of the last error (an option from config.json disagreeing). */
static xattn_status blame(xattn_status s, const char *path)
{
    if (!s || !path) return s;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", xattn_last_error());
    return xa_error(s, "%s: %s", path, msg);
}

static xattn_status resolve(xattn_lm *m, const xattn_safetensors *st, const char *base,
                            const lm_opts *o, const char *json)
{
    xa_cfg *c = &m->cfg;
    xa_cfg_init(c, fields, N_FIELDS);
    const int head = xa_has(st, "", head_table[HDW].name);
    xattn_status s;
    if ((s = xa_cfg_bind_shapes(c, emb_table, NE, st, base, "")) ||
        (head && (s = xa_cfg_bind_shapes(c, head_table, NH, st, "", ""))) ||
        (s = xa_cfg_require_shapes(c, emb_table, NE, st, base, "")) ||
        (s = blame(xa_cfg_resolve(c, o->lm, o->n_lm, st, FN_LOAD), json)))
        return s;
    xattn_lm_config *g = &m->c;
    g->vocab_size = xa_cfg_int(c, "vocab_size");
    g->hidden = xa_cfg_int(c, "hidden_size");
    g->max_positions = xa_cfg_int(c, "max_position_embeddings");
    g->type_vocab_size = xa_cfg_int(c, "type_vocab_size");
    g->heads = xa_cfg_int(c, "num_attention_heads");
    g->layer_norm_eps = (float)xa_cfg_get(c, "layer_norm_eps");
    g->has_head = head;
    const char *ids[] = {"pad_token_id", "bos_token_id", "eos_token_id"};
    int64_t *dst[] = {&g->pad_token_id, &g->bos_token_id, &g->eos_token_id};
    for (int i = 0; i < 3; i++) {
        const int f = xa_cfg_find(c, ids[i]);
        *dst[i] = c->from[f] == XA_FROM_UNSET || c->v[f] < 0 ? -1 : (int64_t)c->v[f];
        if (*dst[i] >= g->vocab_size)
            return xa_error(XATTN_ERR_SHAPE,
                            "%s %s = %lld is not a token of the vocabulary of %lld", c->how[f],
                            ids[i], (long long)*dst[i], (long long)g->vocab_size);
    }
    const int fe = xa_cfg_find(c, "eos_token_id");
    if (o->eos_meta) xa_cfg_set(c, fe, c->v[fe], XA_FROM_META, "__metadata__ 'eos_token_id'");
    g->n_eos = o->n_eos ? o->n_eos : g->eos_token_id >= 0;
    for (int64_t i = 0; i < g->n_eos; i++) {
        g->eos_token_ids[i] = o->n_eos ? o->eos[i] : g->eos_token_id;
        if (g->eos_token_ids[i] >= g->vocab_size)
            return xa_error(XATTN_ERR_SHAPE,
                            "%s eos_token_id %lld (item %lld of the list) is not a token of the "
                            "vocabulary of %lld",
                            c->how[fe], (long long)g->eos_token_ids[i], (long long)i,
                            (long long)g->vocab_size);
    }
    return XATTN_OK;
}

static xattn_status load_params(xattn_lm *m, const xattn_safetensors *st, const char *base)
{
    xattn_status s;
    m->c.tied = m->c.has_head && !xa_has(st, "", head_table[HVW].name);
    m->emb.cfg = m->head.cfg = &m->cfg;
    m->emb.weights = m->head.weights = m->c.weights;
    if ((s = xa_params_add_table(&m->emb, emb_table, NE, &m->cfg, "", NULL))) return s;
    if (m->c.tied) m->emb.p[EW].flags |= XA_P_LIN; /* the output layer's rows */
    if ((s = xa_params_load(&m->emb, st, base, FN_LOAD))) return s;
    for (int k = 0; k < NE; k++) m->e[k] = xa_param_data(&m->emb, k);
    if (!m->c.has_head) return XATTN_OK;
    if ((s = xa_params_add_table(&m->head, head_table, NH, &m->cfg, "", NULL))) return s;
    m->head.p[HDW].flags |= XA_P_LIN;
    if (!m->c.tied) m->head.p[HVW].flags |= XA_P_LIN;
    if ((s = xa_params_load(&m->head, st, "", FN_LOAD))) return s;
    for (int k = 0; k < NH; k++) m->h[k] = xa_param_data(&m->head, k);
    m->wd = xa_param_w(&m->head, HDW);
    m->wv = m->c.tied ? xa_param_w(&m->emb, EW) : xa_param_w(&m->head, HVW);
    if (m->c.tied) m->h[HVW] = m->e[EW];
    if (m->h[HVB]) m->h[HB] = m->h[HVB];
    if (!m->h[HB])
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "tensor 'cls.predictions.bias' (or 'cls.predictions.decoder.bias') is "
                        "missing: the output bias of the prediction head");
    return XATTN_OK;
}

static xattn_status open_decoder(xattn_lm *m, const xattn_safetensors *st, const char *base,
                                 const lm_opts *o, const char *json)
{
    char pre[64], heads[32], eps[48];
    snprintf(pre, sizeof pre, "%sencoder.", base);
    snprintf(heads, sizeof heads, "%lld", (long long)m->c.heads);
    snprintf(eps, sizeof eps, "%.17g", xa_cfg_get(&m->cfg, "layer_norm_eps"));
    xa_kv kv[6] = {{"num_attention_heads", heads}, {"layer_norm_eps", eps}};
    size_t n = 2;
    for (size_t i = 0; i < o->n_dec; i++) kv[n++] = o->dec[i];
    xa_mod *d = NULL;
    xattn_status s = xa_mod_open_w(&xa_kind_bert_decoder, st, pre, kv, n, m->c.weights, &d);
    if (s) return blame(s, json);
    m->dec = (xattn_decoder *)d;
    xattn_decoder_config dc;
    xattn_decoder_get_config(m->dec, &dc);
    m->c.layers = dc.layers;
    if (dc.hidden != m->c.hidden || dc.memory_dim != m->c.hidden)
        return xa_error(XATTN_ERR_SHAPE,
                        "the decoder layers at '%s' have hidden size %lld and memory width %lld, "
                        "the embeddings %lld",
                        pre, (long long)dc.hidden, (long long)dc.memory_dim,
                        (long long)m->c.hidden);
    return XATTN_OK;
}

xattn_status xattn_lm_load(const xattn_safetensors *st, const xattn_lm_opts *opts, xattn_lm **out)
{
    XA_LOAD_ARGS(st, out, FN_LOAD);
    if (opts && !xa_reserved_zero(opts->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: opts->reserved_ must be zero", FN_LOAD);
    if (opts && (opts->weights < 0 || opts->weights > XATTN_WEIGHTS_INT8))
        return xa_error(XATTN_ERR_ARG,
                        "%s: opts->weights = %lld is not an xattn_weights value (0 auto, 1 f32, "
                        "2 bf16, 3 f16, 4 int8)",
                        FN_LOAD, (long long)opts->weights);
    lm_opts *o = calloc(1, sizeof *o);
    xattn_lm *m = calloc(1, sizeof *m);
    const char *json = opts ? opts->config_json : NULL, *base = NULL;
    xattn_status s = !o || !m ? xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN_LOAD) : XATTN_OK;
    if (!s && json) s = read_config(json, o);
    if (!s && opts && opts->heads) {
        snprintf(o->text[o->nt], 48, "%lld", (long long)opts->heads);
        o->lm[o->n_lm].key = "num_attention_heads";
        o->lm[o->n_lm++].value = o->text[o->nt++];
    }
    if (!s) s = find_base(st, &base);
    if (!s && !o->n_eos) s = meta_eos(st, o);
    if (!s) s = resolve(m, st, base, o, json);
    if (!s) m->c.weights = opts ? (int)opts->weights : XATTN_WEIGHTS_AUTO;
    if (!s) s = load_params(m, st, base);
    if (!s) s = open_decoder(m, st, base, o, json);
    if (!s) { /* as stored: what the linear layers hold, if one type */
        const xa_params *ps[3] = {&((xa_mod *)m->dec)->params, &m->head, &m->emb};
        m->c.weights = xa_params_weights(ps, 3);
    }
    free(o);
    if (s) {
        xattn_lm_free(m);
        return s;
    }
    *out = m;
    xa_clear_error();
    return XATTN_OK;
}

void xattn_lm_free(xattn_lm *m)
{
    if (!m) return;
    xattn_decoder_free(m->dec);
    xa_params_free(&m->emb);
    xa_params_free(&m->head);
    free(m);
}

void xattn_lm_get_config(const xattn_lm *m, xattn_lm_config *c)
{
    xa_copy_config(m ? &m->c : NULL, c, sizeof *c);
}

const char *xattn_lm_warnings(const xattn_lm *m) { return m ? m->cfg.warn : ""; }

const xattn_decoder *xattn_lm_decoder(const xattn_lm *m) { return m ? m->dec : NULL; }

/* ---------------------------------------------------------------------------------------- */
/* Embeddings, head, step                                                                   */
/* ---------------------------------------------------------------------------------------- */

xattn_status xa_lm_check_ids(const xattn_lm *m, const int64_t *ids, int64_t n, const char *what)
{
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= m->c.vocab_size)
            return xa_error(XATTN_ERR_ARG,
                            "%s: token id %lld (at %lld) is not in the vocabulary [0, %lld)", what,
                            (long long)ids[i], (long long)i, (long long)m->c.vocab_size);
    return XATTN_OK;
}

/* x (rows, n, h) = LN(word[ids] + type[0] + position[pos + t]), or position[pids[r]] when
 * position ids are given. */
static xattn_status embed(const xattn_lm *m, int64_t rows, int64_t n, const int64_t *ids,
                          int64_t pos, const int64_t *pids, float *x)
{
    const int64_t h = m->c.hidden;
    for (int64_t r = 0; r < rows * n; r++) {
        float *y = x + r * h;
        if (m->e[EW])
            memcpy(y, m->e[EW] + ids[r] * h, sizeof(float) * (size_t)h);
        else /* rows shared with the output layer, kept in 16 bits or int8 */
            xa_wt_rows_f32(NULL, m->wv, ids[r], 1, h, y);
        xa_op_add(y, m->e[ET], h);
        xa_op_add(y, m->e[EP] + (pids ? pids[r] : pos + r % n) * h, h);
    }
    return xa_op_layernorm(x, rows * n, h, m->e[ELW], m->e[ELB], m->c.layer_norm_eps, x);
}

xattn_status xa_lm_head(const xattn_lm *m, const float *hidden, int64_t rows, float *t,
                        float *logits)
{
    const int64_t h = m->c.hidden, V = m->c.vocab_size;
    xattn_status s = xa_op_linear_w(hidden, rows, h, m->wd, m->h[HDB], h, t, 0);
    if (!s) s = xa_op_gelu(t, rows * h, 0);
    if (!s) s = xa_op_layernorm(t, rows, h, m->h[HLW], m->h[HLB], m->c.layer_norm_eps, t);
    if (!s) s = xa_op_linear_w(t, rows, h, m->wv, m->h[HB], V, logits, 0);
    return s;
}

xattn_status xa_lm_step(xattn_ctx *ctx, const xattn_lm *m, xattn_decoder_state *s, int64_t n,
                        const int64_t *ids, const int64_t *pids, const uint8_t *keep, float *x,
                        float *hidden)
{
    const int64_t pos = xattn_decoder_position(s), rows = xa_decoder_state_rows(s);
    if (pos + n > m->c.max_positions)
        return xa_error(XATTN_ERR_SHAPE,
                        "%s: positions up to %lld, but the model has max_position_embeddings = "
                        "%lld",
                        FN_STEP, (long long)(pos + n), (long long)m->c.max_positions);
    xattn_status st = xa_lm_check_ids(m, ids, rows * n, FN_STEP);
    for (int64_t i = 0; !st && pids && i < rows * n; i++)
        if (pids[i] < 0 || pids[i] >= m->c.max_positions)
            st = xa_error(XATTN_ERR_SHAPE, "%s: position id %lld outside [0, %lld)", FN_STEP,
                          (long long)pids[i], (long long)m->c.max_positions);
    if (!st) st = embed(m, rows, n, ids, pos, pids, x);
    if (!st) st = xattn_decoder_step(ctx, s, n, x, keep, hidden);
    return st;
}

xattn_status xattn_lm_step(xattn_ctx *ctx, const xattn_lm *m, xattn_decoder_state *s, int64_t n,
                           const int64_t *ids, float *hidden, float *logits)
{
    if (!m || !s || !ids || (!hidden && !logits))
        return xa_error(XATTN_ERR_ARG, "%s: model, state, ids or both outputs NULL", FN_STEP);
    if (xa_decoder_state_model(s) != m->dec)
        return xa_error(XATTN_ERR_ARG, "%s: the state was made for another model's decoder",
                        FN_STEP);
    if (logits && !m->c.has_head)
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: logits asked of a BertModel without the prediction head "
                        "(cls.predictions.*)",
                        FN_STEP);
    const int64_t R = xa_decoder_state_rows(s) * n, h = m->c.hidden;
    if (n <= 0 || !((double)R * (double)h * 3 < 0x1p50))
        return xa_error(XATTN_ERR_SHAPE, "%s: %lld tokens per step", FN_STEP, (long long)n);
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    xa_ws *w = xa_ws_get(sizeof(float) * (size_t)(3 * R * h));
    xattn_status st = w ? XATTN_OK : XATTN_ERR_NOMEM;
    float *x = w ? xa_ws_data(w) : NULL, *hid = hidden ? hidden : x + R * h;
    if (!st) st = xa_lm_step(ctx, m, s, n, ids, NULL, NULL, x, hid);
    if (!st && logits) st = xa_lm_head(m, hid, R, x + 2 * R * h, logits);
    if (w) xa_ws_put(w);
    xa_ctx_leave(prev);
    if (!st) xa_clear_error();
    return st;
}
