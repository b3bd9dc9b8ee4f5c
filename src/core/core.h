/*
 * The module core: strict parsing of metadata and options, config fields with provenance,
 * parameter tables (load, create with the reference's initialisation, export, enumerate), and
 * the registry of module kinds. Every module in src/modules/ is a table of fields, a table of
 * parameters, input/output descriptions and a forward; nothing else about loading lives there.
 *
 * Flow of a load (xa_mod_open):
 *   1. the kind's tables are bound: each field marked XA_F_SHAPE takes its value from the first
 *      present tensor whose shape names it (xa_cfg_bind_shapes), each XA_F_PRESENCE field from
 *      whether its tensor exists; layer stacks are counted (xa_count_layers);
 *   2. every other field is resolved: option (a flag or API argument), else __metadata__, else the
 *      reference's default (announced as a warning when the names and shapes cannot tell it);
 *      options and metadata that contradict the shapes are errors (xa_cfg_resolve);
 *   3. the kind's hook derives what it needs and checks cross-field rules;
 *   4. the parameter table is instantiated with concrete shapes (xa_params_add_table) and loaded
 *      by one routine that checks presence, dtype and shape of every tensor, refuses a tensor
 *      the config says is absent (a bias where bias=False), lays everything out in one block and
 *      binds the pointers. Other tensors of the file (another module, a model's embeddings) are
 *      not the module's business; gaps in layer stacks are refused by xa_count_layers.
 */
#ifndef XATTN_CORE_H
#define XATTN_CORE_H

#include "base/base.h"
#include "kernels/kernels.h"

#include <stdint.h>

/* ---------------------------------------------------------------------------------------- */
/* Strict parsing (metadata values and options)                                             */
/* ---------------------------------------------------------------------------------------- */

/* Each returns 1 and sets *v when the whole string is a value of the type, else 0.
 *   int:  optional '-', decimal digits, |v| < 2^53
 *   real: a finite decimal or exponent number (strtod over the whole string)
 *   bool: True, False, true, false, 1, 0
 *   enum: one of names[0 .. ) (NULL-terminated), exactly; *v = its index */
int xa_parse_int(const char *s, int64_t *v);
int xa_parse_real(const char *s, double *v);
int xa_parse_bool(const char *s, int *v);
int xa_parse_enum(const char *s, const char *const *names, int *v);

/* ---------------------------------------------------------------------------------------- */
/* Config fields                                                                            */
/* ---------------------------------------------------------------------------------------- */

typedef enum xa_ftype { XA_T_INT, XA_T_REAL, XA_T_BOOL, XA_T_ENUM } xa_ftype;

typedef enum xa_from {
    XA_FROM_UNSET = 0,
    XA_FROM_SHAPE,   /* a tensor's shape or presence      */
    XA_FROM_OPTION,  /* an option (CLI flag, API argument) */
    XA_FROM_META,    /* the file's __metadata__            */
    XA_FROM_DEFAULT, /* the reference's default            */
    XA_FROM_DERIVED  /* computed from other fields         */
} xa_from;

#define XA_F_SHAPE     0x01u /* told by tensor shapes; options / metadata must agree        */
#define XA_F_PRESENCE  0x02u /* bool told by whether a tensor exists (XA_P_COND tensors)    */
#define XA_F_TRACELESS 0x04u /* shapes cannot tell it: an assumed default is announced      */
#define XA_F_REQUIRED  0x08u /* no default: shape, option or metadata must give it          */
#define XA_F_DERIVED   0x10u /* computed by the kind's hook; not an option                  */
#define XA_F_NOMETA    0x20u /* never read from or written to __metadata__                  */
#define XA_F_OPTIONAL  0x40u /* an int that may stay unset (0) when nothing gives it        */
#define XA_F_NULLABLE  0x80u /* "None" given is the value -1 (absent: the default, announced) */

typedef struct xa_field {
    const char *name; /* the reference constructor's argument ("heads", "norm_first") */
    xa_ftype type;
    unsigned flags;
    double dflt;              /* the reference's default                                     */
    double min, max;          /* range of INT and REAL values                                */
    const char *const *enums; /* ENUM: value names, NULL-terminated                          */
    const char *meta;         /* __metadata__ keys, '|'-separated; NULL: the name            */
    const char *doc;          /* one line for --help and inspect                             */
} xa_field;

#define XA_MAX_FIELDS 40
#define XA_HOW_CAP    160
#define XA_WARN_CAP   1024

typedef struct xa_cfg {
    const xa_field *f;
    int n;
    double v[XA_MAX_FIELDS];
    xa_from from[XA_MAX_FIELDS];
    char how[XA_MAX_FIELDS][XA_HOW_CAP]; /* "shape of 'to_qk.weight'", "__metadata__ 'heads'" */
    char warn[XA_WARN_CAP];              /* assumed defaults, one line each                  */
} xa_cfg;

/* An option as a string pair (CLI flags, registry and Python arguments). */
typedef struct xa_kv {
    const char *key, *value;
} xa_kv;

void xa_cfg_init(xa_cfg *c, const xa_field *f, int n);
int xa_cfg_find(const xa_cfg *c, const char *name);   /* index or -1 */
double xa_cfg_get(const xa_cfg *c, const char *name); /* 0 for an unknown name */
int64_t xa_cfg_int(const xa_cfg *c, const char *name);
/* Sets field i from a shape (or derived); `how` says from where (printf-style). */
void xa_cfg_set(xa_cfg *c, int i, double v, xa_from from, const char *how, ...) XA_PRINTF(5, 6);
/* Resolves every unset field from options, metadata (st may be NULL), defaults, in that order;
 * checks options and metadata against fields already set from shapes. Unknown option names
 * and malformed values are errors naming `fn`. */
xattn_status xa_cfg_resolve(xa_cfg *c, const xa_kv *opts, size_t n_opts,
                            const xattn_safetensors *st, const char *fn);
/* The value of field i as text ("8", "True", "gelu", "1e-05") into buf. */
const char *xa_cfg_text(const xa_cfg *c, int i, char *buf, size_t cap);
/* Name of a source ("shape", "option", "metadata", "default", "derived"). */
const char *xa_from_name(xa_from f);

/* One metadata value by key ('|'-separated alternatives), parsed strictly as field f:
 * *found = 0 when absent; XATTN_ERR_FORMAT naming key and value when malformed. */
xattn_status xa_meta_field(const xattn_safetensors *st, const xa_field *f, double *v, int *found,
                           const char **key_used);

/* ---------------------------------------------------------------------------------------- */
/* Parameter tables                                                                         */
/* ---------------------------------------------------------------------------------------- */

/* How a parameter is initialised by the reference (fan_in and fan_out as torch computes them
 * from the tensor: fan_in = shape[1] * prod(shape[2:]), fan_out = shape[0] * prod(shape[2:])). */
typedef enum xa_init {
    XA_INIT_LINEAR = 0,    /* nn.Linear / nn.Conv weight: kaiming_uniform(a=sqrt(5)):
                              U(-b, b), b = 1/sqrt(fan_in)                                     */
    XA_INIT_BIAS,          /* nn.Linear / nn.Conv bias: U(-b, b), b = 1/sqrt(fan_in of weight)  */
    XA_INIT_ONES,          /* norm weights                                                     */
    XA_INIT_ZEROS,         /* norm biases, nn.MultiheadAttention in_proj_bias / out_proj.bias  */
    XA_INIT_XAVIER,        /* xavier_uniform: U(-b, b), b = sqrt(6 / (fan_in + fan_out))       */
    XA_INIT_XAVIER_NORMAL, /* xavier_normal: N(0, 2 / (fan_in + fan_out))                    */
    XA_INIT_NORMAL         /* N(0, std^2), std = the spec's init_arg                           */
} xa_init;

#define XA_P_OPT    0x01u /* may be absent (present or not, it is loaded when there)          */
#define XA_P_GLUE   0x02u /* placed right after the previous parameter, without padding        */
#define XA_P_ABSENT 0x04u /* must be absent (its condition is false): refused if present       */
#define XA_P_NOCREATE                                                                              \
    0x08u /* optional and its condition is false: loaded if present, not                           \
             created (an optional parameter's cond only governs creation)   */
/* a linear layer's 2-D weight (N, K) that the module reads through xa_param_w: loaded into the
 * storage the module's weights mode asks for (float32, bfloat16, float16 or int8 rows with a
 * scale per row); other parameters are always float32 */
#define XA_P_LIN 0x10u

/* One parameter of a table. Shapes are comma-separated dims, each an integer, a field name,
 * or N*field ("2*inner"); `cond` names a bool field ("!name" negates) that must hold for the
 * parameter to exist (when it does not hold, the tensor must be absent). */
typedef struct xa_pspec {
    const char *name;  /* relative to the prefix and the stack stem ("to_qk.weight")        */
    const char *shape; /* "inner,dim"                                                        */
    const char *cond;  /* NULL: always                                                       */
    unsigned flags;    /* XA_P_OPT, XA_P_GLUE                                                */
    xa_init init;
    const char *fan_in; /* XA_INIT_BIAS: the field giving the fan-in; XA_INIT_NORMAL: the std
                           as text ("0.02")                                                   */
    const char *what;   /* what it is, for messages ("the query projection")                   */
} xa_pspec;

typedef struct xa_param {
    char *name; /* relative to the prefix (owned)                                */
    const xa_pspec *spec;
    int ndim;
    int64_t shape[XATTN_MAX_DIMS];
    unsigned flags;
    int64_t fan_in; /* XA_INIT_BIAS                                                  */
    double init_arg;
    int present;           /* has data                                                      */
    xattn_dtype src_dtype; /* as stored in the file (F32 when created)                      */
    int wdt;               /* xa_wdt: how the values are kept (XA_W_F32 unless XA_P_LIN)    */
    float *data;           /* inside the block when kept in float32, else NULL              */
    void *w;               /* XA_W_BF16 / XA_W_F16: uint16_t rows; XA_W_Q8: int8_t rows     */
    float *qscale;         /* XA_W_Q8: a scale per row                                      */
} xa_param;

typedef struct xa_params {
    xa_param *p;
    int n, cap;
    float *block;
    int64_t numel;
    void *wblock;      /* the XA_P_LIN parameters kept in 16 bits or int8 (and the int8 scales) */
    int weights;       /* xattn_weights asked for the XA_P_LIN parameters (set before loading)    */
    const xa_cfg *cfg; /* for messages: where each field came from */
} xa_params;

void xa_params_free(xa_params *ps);
/* Adds one parameter: relative name stem + spec->name, shape evaluated against cfg. Returns its
 * index, or -1 with the error set. */
int xa_params_add(xa_params *ps, const xa_pspec *spec, const xa_cfg *cfg, const char *stem);
/* Adds every entry of a table under `stem` ("" or "layers.3."); `first` receives the index of
 * the first one (may be NULL). */
xattn_status xa_params_add_table(xa_params *ps, const xa_pspec *t, int n, const xa_cfg *cfg,
                                 const char *stem, int *first);
/* Loads every parameter from st (names prefix + name): presence, float dtype and exact shape
 * checked before anything is allocated; one block; pointers bound. */
xattn_status xa_params_load(xa_params *ps, const xattn_safetensors *st, const char *prefix,
                            const char *fn);
/* Allocates the block and draws every parameter as the reference initialises it (see xa_init)
 * from the seeded generator of xa_rng_*. Optional parameters are created. */
xattn_status xa_params_create(xa_params *ps, uint64_t seed);
/* Data of parameter i (NULL if absent). */
static inline float *xa_param_data(const xa_params *ps, int i)
{
    return i >= 0 && i < ps->n ? ps->p[i].data : NULL;
}
/* A linear weight as the op layer reads it, in whatever type it is kept (p NULL if absent). */
static inline xa_wt xa_param_w(const xa_params *ps, int i)
{
    const xa_param *p = i >= 0 && i < ps->n ? &ps->p[i] : NULL;
    if (!p || p->wdt == XA_W_F32) return xa_wt_f32(p ? p->data : NULL);
    return (xa_wt){p->w, p->qscale, p->wdt};
}
/* Whether any present parameter is kept in a type other than float32 (a module for inference
 * only: gradients, training and xattn_module_param's data need float32). */
int xa_params_reduced(const xa_params *ps);
/* The xattn_weights the XA_P_LIN parameters of n tables are kept as: ps[0]->weights when that is
 * not XATTN_WEIGHTS_AUTO, else F32, BF16 or F16 when they all are that, AUTO when they differ. */
int xa_params_weights(const xa_params *const *ps, int n);
/* The values of parameter i as float32 (converted from how they are kept), numel floats. */
void xa_param_read(const xa_params *ps, int i, float *dst);
/* Index of the parameter with relative name `name`, or -1. */
int xa_params_find(const xa_params *ps, const char *name);
/* Writes the present parameters to a safetensors file under prefix + name, each in the dtype
 * it was stored in (F16 / BF16 round-trip exactly; F64 is written as F32), with __metadata__
 * holding every field the names cannot tell plus "xattn_kind". */
xattn_status xa_params_save(const xa_params *ps, const xa_cfg *cfg, const char *kind,
                            const char *prefix, const char *path, const xattn_save_opts *o);

/* Binds the XA_F_SHAPE fields named alone in a dim of a present tensor of the table (first
 * tensor first), and XA_F_PRESENCE fields from whether the tensors conditioned on them exist.
 * `stem` as for xa_params_add_table. */
xattn_status xa_cfg_bind_shapes(xa_cfg *c, const xa_pspec *t, int n, const xattn_safetensors *st,
                                const char *prefix, const char *stem);

/* After xa_cfg_bind_shapes: every field flagged XA_F_SHAPE | XA_F_REQUIRED that no tensor gave
 * is an error naming the first tensor of the table that should have told it (missing, or of
 * the wrong rank: "expected (in1, ..., 1, 1) (what)"). */
xattn_status xa_cfg_require_shapes(const xa_cfg *c, const xa_pspec *t, int n,
                                   const xattn_safetensors *st, const char *prefix,
                                   const char *stem);

/* Layers of a stack: L such that prefix + stem + "0." + key .. prefix + stem + (L-1) + "." + key
 * exist; a tensor prefix + stem + N.* with N >= L is refused (a gap or a partial layer), as is an
 * index with leading zeros. */
xattn_status xa_count_layers(const xattn_safetensors *st, const char *prefix, const char *stem,
                             const char *key, int64_t max, int64_t *L);
/* Whether prefix + name exists. */
int xa_has(const xattn_safetensors *st, const char *prefix, const char *name);

/* "(2, 3)" / "(5,)" into buf; returns buf. */
const char *xa_dims_text(int ndim, const int64_t *shape, char *buf, size_t cap);

/* The attention scale PyTorch uses for head size dh: dh ** -0.5 in double, rounded to float. */
float xa_head_scale(int64_t dh);

/* Seeded generator for initialisation: SplitMix64 over a stream keyed by (seed, name). */
typedef struct xa_rng {
    uint64_t s;
    int has_spare;
    double spare;
} xa_rng;
void xa_rng_init(xa_rng *r, uint64_t seed, const char *name);
double xa_rng_uniform(xa_rng *r); /* [0, 1) with 53 bits */
double xa_rng_normal(xa_rng *r);  /* N(0, 1), Box-Muller */

#endif
