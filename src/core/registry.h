/*
 * The registry of module kinds. A kind is a table of config fields, a table of named inputs and
 * outputs with symbolic shapes, and four hooks: build (resolve the config and instantiate the
 * parameter table), bind (take pointers into the loaded parameters), destroy and forward. The
 * registry opens, creates, saves, describes and runs every kind the same way; bindings and the
 * CLI need no per-kind code.
 */
#ifndef XATTN_REGISTRY_H
#define XATTN_REGISTRY_H

#include "core/core.h"

/* Inputs and outputs. A shape is comma-separated dims: an integer, a config field, a size
 * symbol (a name starting with a capital letter: B, I, J, H1 ...) bound by the inputs, or a sum
 * of products of these ("2*dim", "B*num_heads", "J+add_bias_kv+add_zero_attn": a bool field
 * counts 0 or 1); "B/1" accepts the symbol's value or 1 (broadcast). Only a dim that is a
 * symbol alone binds it. */
#define XA_IO_OPT  0x01u /* optional input / output produced only when asked          */
#define XA_IO_MASK 0x02u /* bool (or integer, nonzero = true) mask                    */
/* added to the logits: a mask that may also be float, or (without XA_IO_MASK) a float bias */
#define XA_IO_ADDITIVE 0x04u
/* An optional output that exists whenever the sizes of its shape are bound (by the inputs given
 * or the kind's plan hook): multiview's out.K, there when xs.K is given. Front ends ask for it
 * then, as for a required output (xattn_module_plan of it alone tells whether it exists). */
#define XA_IO_BOUND 0x08u
#define XA_MAX_IO   12
#define XA_MAX_SYMS 24

typedef struct xa_io {
    const char *name;
    const char *shape;
    unsigned flags;
    const char *doc; /* meaning and mask polarity ("True = keep") */
} xa_io;

/* An optional input and the input that stands in for it when it is not given ({"key",
 * "query"}: self-attention): the stand-in is checked against the input's shape (binding what
 * the input would bind) and passed to the forward in its place. */
typedef struct xa_stand_in {
    const char *input, *by;
} xa_stand_in;

/* Another name a front end accepts for an input, a config field or an output (an older flag,
 * a short name): {"heads", "num_heads"}. An alias of an optional output asks for that output;
 * `as` names the output it is then written in place of (NULL: under its own name). */
typedef struct xa_alias {
    const char *alias;
    const char *name;
    const char *as;
} xa_alias;
/* An alias whose name is "STEM.*" stands for the numbered inputs STEM.0, STEM.1, ... in order
 * ({"view", "xs.*"}): a front end takes it repeatedly, each time for the next of them after the
 * ones given by their own names. */

typedef struct xa_run {
    const void *in[XA_MAX_IO]; /* in input-table order; NULL when not given */
    xattn_dtype in_dtype[XA_MAX_IO];
    int in_ndim[XA_MAX_IO];
    int64_t in_shape[XA_MAX_IO][XATTN_MAX_DIMS];
    float *out[XA_MAX_IO]; /* in output-table order; NULL when not asked (optional ones) */
    const char *sym_name[XA_MAX_SYMS];
    int64_t sym[XA_MAX_SYMS];
    int n_sym;
} xa_run;

/* Value of size symbol `name` in r (0 if unbound). */
int64_t xa_run_sym(const xa_run *r, const char *name);
/* Binds size symbol `name` (a string that outlives r: a literal) to v, for a kind's plan hook. */
xattn_status xa_run_bind(xa_run *r, const char *name, int64_t v);

struct xa_kind;

/* What a kind's backward hook is given besides the forward's xa_run: the gradients of the
 * outputs (output-table order; NULL: zero), where to write the gradients of the float inputs
 * (input-table order; NULL: not wanted) and of the parameters (parameter order, as the
 * module's table; dparam NULL or an entry NULL: not wanted). Gradients are overwritten. */
typedef struct xa_grad {
    const float *dout[XA_MAX_IO];
    float *din[XA_MAX_IO];
    float *const *dparam;
    /* Called by the kind once the forward's outputs are in r->out, before dout is read (may be
     * NULL): a loss sets dout from the outputs here. */
    xattn_status (*on_outputs)(void *arg, const xa_run *r, struct xa_grad *g);
    void *arg;
} xa_grad;
/* What a kind's backward calls after its forward: g->on_outputs, if any. */
static inline xattn_status xa_grad_outputs(xa_grad *g, const xa_run *r)
{
    return g->on_outputs ? g->on_outputs(g->arg, r, g) : XATTN_OK;
}

/* Every module struct starts with this. */
typedef struct xa_mod {
    const struct xa_kind *kind;
    xa_cfg cfg;
    xa_params params;
    char prefix[256];
} xa_mod;

typedef struct xa_kind {
    const char *name;      /* "conv2d-cross"                                                 */
    const char *reference; /* the PyTorch module it mirrors                                  */
    const char *summary;   /* one line                                                       */
    const xa_field *fields;
    int n_fields;
    const xa_io *inputs;
    int n_in;
    const xa_io *outputs;
    int n_out;
    const char *anchor; /* a tensor name (relative to a prefix) that marks the kind, or
                           '|'-separated alternatives (a bare layer's tensor, a stack's
                           first layer's); NULL for kinds without weights                 */
    /* 1 if the tensors at prefix are this kind (anchor present); NULL: the anchor decides   */
    int (*claims)(const xattn_safetensors *st, const char *prefix);
    size_t size; /* of the module struct                                            */
    /* Resolves m->cfg (from st at prefix, or from options alone when st is NULL: creating)
     * and fills m->params with the parameter table. */
    xattn_status (*build)(xa_mod *m, const xattn_safetensors *st, const char *prefix,
                          const xa_kv *opts, size_t n_opts);
    xattn_status (*bind)(xa_mod *m); /* after the parameters have data; may be NULL      */
    void (*destroy)(xa_mod *m);      /* frees what bind allocated; may be NULL           */
    /* Checks that the bound sizes suit the module beyond the shapes (may be NULL). */
    xattn_status (*check)(const xa_mod *m, const xa_run *r);
    /* Sizes the symbolic shapes cannot compute (may be NULL): called once the inputs are bound,
     * before the output shapes, it binds the size symbols that only outputs name (xa_run_bind:
     * multiview's pooled token counts M0, M1, ... = floor(N_v / 2^(S-1))) and refuses inputs
     * too small for them ("input 'xs.2' has 1 token ..."). */
    xattn_status (*plan)(const xa_mod *m, xa_run *r);
    xattn_status (*forward)(const xa_mod *m, const xa_run *r);
    /* The forward on r (its outputs written to r->out) and the back-propagation of g's output
     * gradients (may be NULL: the kind has no backward yet). */
    xattn_status (*backward)(const xa_mod *m, const xa_run *r, xa_grad *g);
    const char *state_dict; /* the tensor names, for --help ("conv_query.{weight,bias}, ...") */
    const xa_stand_in *stand_ins; /* in input order (may be NULL)                           */
    int n_stand_ins;
    const xa_alias *aliases; /* other names of inputs, fields and outputs (may be NULL)       */
    int n_aliases;
    /* The one-line description (`xattn inspect`): comma-separated items, a ',' inside {}
     * not separating them ("embed_dim,heads,kdim,vdim,bias"); NULL: every field that is not
     * derived. An item is
     *   NAME          a config field (or its alias), shown as NAME=VALUE
     *   LABEL=TEXT    LABEL=TEXT, where TEXT is a template:
     *     {f}           VALUE of field f
     *     {f?A|B}       A when field f is true (nonzero), else B ("|B" may be left out)
     *     {f@SRC?A|B}   A when f's value came from SRC (shape, option, metadata, default,
     *                   derived), else B
     *     {f@}          the tensor f was read from (the name its source quotes, less the
     *                   module's prefix)
     *                   (A and B are templates)
     * VALUE is the value, "VALUE (default)" for a default the file does not tell, '?' for a
     * value a front end could not read from the file. Input and output docs may hold the same
     * {...} (the output's doc of a module with talking heads: "{talking_heads?mixed|per
     * head}"), expanded with the module's config; without a module, {f?A|B} reads "A when f,
     * else B". */
    const char *brief;
    /* Kinds that once shared one command line name their family ("multi-head" for torch's
     * and diffusers' attention, "bidirectional"): messages say "an option of the multi-head
     * modules", and an input such a kind needs that a kind of another family takes as
     * optional is the model's to ask for, not a usage error. NULL: none. */
    const char *family;
    /* In output order (may be NULL): for an output whose first axis lists parts saved one file
     * each, the name of part k, "BASE{A+B*k}" with A and B integers or config fields
     * ("attn_weights_{x_layer0+2*k}"); NULL for one array. */
    const char *const *out_parts;
    /* inputs given in exactly one of several ways (xattn_kind_one_of): alternatives separated
     * by '|', each a comma-separated list of optional inputs, one or more of which make it;
     * NULL: none */
    const char *one_of;
} xa_kind;

/* Every kind, NULL-terminated (registry.c). */
extern const xa_kind *const xa_kinds[];
const xa_kind *xa_kind_find(const char *name);

/* Opens / creates a module of kind k (typed loaders of the public API use these too); on
 * success the last error is cleared, on failure *out is NULL. */
xattn_status xa_mod_open(const xa_kind *k, const xattn_safetensors *st, const char *prefix,
                         const xa_kv *opts, size_t n_opts, xa_mod **out);
/* (xa_mod_open keeps every weight in float32.) The same with the kind's linear weights
 * (XA_P_LIN) kept as `weights` (xattn_weights) says; a kind without linear weights refuses
 * a type other than float32. The kind's build sees the mode in m->params.weights. */
xattn_status xa_mod_open_w(const xa_kind *k, const xattn_safetensors *st, const char *prefix,
                           const xa_kv *opts, size_t n_opts, int weights, xa_mod **out);
xattn_status xa_mod_create(const xa_kind *k, const xa_kv *opts, size_t n_opts, uint64_t seed,
                           xa_mod **out);
void xa_mod_free(xa_mod *m);
/* The typed get_config of the public API: a copy of the module's config (src), zeros when the
 * module is NULL; nothing when dst is NULL. */
void xa_copy_config(const void *src, void *dst, size_t size);
/* The typed loaders' first checks: `out` given (and cleared), the file handle given. */
#define XA_LOAD_ARGS(st, out, fn)                                                                  \
    do {                                                                                           \
        if (!(out)) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", fn);                         \
        *(out) = NULL;                                                                             \
        if (!(st)) return xa_error(XATTN_ERR_ARG, "%s: safetensors handle is NULL", fn);           \
    } while (0)

/* Typed options of the public API become string options: helpers for the kinds. */
typedef struct xa_kvbuf {
    xa_kv kv[XA_MAX_FIELDS];
    char text[XA_MAX_FIELDS][48];
    size_t n;
} xa_kvbuf;
void xa_kv_int(xa_kvbuf *b, const char *key, int64_t v); /* added only when v != 0 */
void xa_kv_real(xa_kvbuf *b, const char *key, double v); /* added only when v != 0 */
void xa_kv_bool(xa_kvbuf *b, const char *key, int v);    /* v: 0 default, 1 False, 2 True */
void xa_kv_enum(xa_kvbuf *b, const char *key, const char *const *names, int v); /* v: 0 default,
                                                                                  i+1 = names[i] */

#endif
