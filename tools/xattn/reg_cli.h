/*
 * Any module kind through the registry (reg_cli.c, reg_io.c): option parsing, the module, its
 * inputs (files checked against the kind's symbolic shapes, messages naming the file), outputs.
 * Used by `xattn run` and `xattn bench`.
 */
#ifndef XATTN_REG_CLI_H
#define XATTN_REG_CLI_H

#include "cli.h"

#define REG_MAX_ARGS  48
#define REG_MAX_IO    12
#define REG_MAX_FLAGS 64

typedef struct reg_args {
    const char *model, *kind, *prefix, *out_dir;
    const char *weights; /* --weights (NULL: as stored; float32 where need_f32)               */
    const char *compute; /* --compute f32|bf16 (NULL: f32)                                    */
    const char *kernels; /* --kernels NAME (NULL: the best the CPU has)                       */
    int need_f32;        /* set by grad and train before reg_open: gradients need float32 */
    long long threads, reps, len, context_len, batch;
    int return_all, allow_nonfinite, json;
    struct {
        const char *flag, *value; /* value NULL: a flag without one */
    } rest[REG_MAX_ARGS];         /* inputs and constructor arguments of the kind */
    int n_rest;
    char flags[REG_MAX_FLAGS][128]; /* every flag given, to refuse repeats */
} reg_args;

typedef struct reg_state {
    xattn_safetensors *st;
    xattn_module *m;
    char kind[64], prefix[256];
    xattn_option opts[REG_MAX_ARGS];
    const char *opt_names[REG_MAX_ARGS];
    int n_opts;
    int used[REG_MAX_ARGS]; /* rest[r] consumed                          */
    /* inputs, in the kind's input order */
    int n_in;
    xattn_io_desc in_desc[REG_MAX_IO];
    const char *in_file[REG_MAX_IO]; /* NULL: not given (or generated)        */
    const char *in_flag[REG_MAX_IO];
    xattn_array arr[REG_MAX_IO];
    int unbatched;        /* inputs given without their leading B      */
    unsigned batch_added; /* bit i: input i was given so (its B added) */
    /* size symbols bound by the inputs */
    char sym[16][64];
    int64_t sym_val[16];
    const char *sym_file[16];
    int n_sym;
    /* outputs */
    int n_out;
    xattn_tensor out[REG_MAX_IO];
    float *outbuf[REG_MAX_IO];
    const char
        *out_as[REG_MAX_IO]; /* the output out[o] is written in place of (an alias's), or NULL */
    /* under mpirun: the axis of input i / output o cut across the ranks (-1: whole), its length
     * over every rank, and where this rank's rows start (outputs) */
    int in_axis[REG_MAX_IO], out_axis[REG_MAX_IO];
    int64_t in_total[REG_MAX_IO], out_total[REG_MAX_IO], out_start[REG_MAX_IO];
} reg_state;

/* The input, option or output of kind that alias `name` (underscores) stands for, and for an
 * output the output it is written in place of (*as = NULL: its own name); NULL: not an alias. */
const char *reg_alias(const char *kind, const char *name, const char **as);
/* How messages name input (input >= 0: its index), option or output `name`: "--num-heads
 * (or --heads)", "--key (or --context)". */
void reg_flag_of(const char *kind, const char *name, int input, char *buf, size_t cap);
/* The reference's class name of a kind: its description up to " (". */
void reg_reference_name(const char *kind, char *buf, size_t cap);
/* Prints the module's warnings (assumed defaults, one line each): after a run that succeeded,
 * so that an error stays alone on its line. */
void reg_warn(const char *cmd, const reg_args *a, const reg_state *s);
/* Reports the library's last error in the command line's terms (files and flags). */
int reg_lib_error(const char *cmd, const reg_args *a, const reg_state *s);

/* ---- description templates (reg_text.c; see xattn_kind_brief) ---- */

/* What a front end could not read from a file: the options it set to stand-in values to open
 * the module, and the options whose values changed with them; both show as '?'. */
typedef struct reg_unknown {
    const char *stand_in[16];
    int n_stand_in;
    const char *changed[64];
    int n_changed;
} reg_unknown;
/* Expands a template of `kind` (an input's or output's doc) with module m's config; m NULL:
 * the choices spelled out ("A when f, else B"). u may be NULL. */
void reg_expand(const char *kind, const xattn_module *m, const reg_unknown *u, const char *tmpl,
                char *buf, size_t cap);
/* The one-line description "name=value, ..." of module m from the kind's brief (every option
 * when it has none). */
void reg_brief(const char *kind, const xattn_module *m, const reg_unknown *u, char *buf,
               size_t cap);
/* The options the brief shows (names, not aliases), in its order; returns how many. */
int reg_brief_options(const char *kind, const char **names, int cap);

/* Parses argv (argv[0] is the command); reports usage errors. */
int reg_parse(const char *cmd, int argc, char **argv, reg_args *a, int *help);
/* Opens the file and the module (--module / --prefix select). Returns 0 or an exit code
 * (reported). */
int reg_open(const char *cmd, const reg_args *a, reg_state *s);
void reg_free(reg_state *s);
int reg_check_weights(const char *cmd, const reg_args *a, const reg_state *s);
/* Loads the inputs given as options and checks them; `generate` (bench) makes the missing
 * required ones from --batch / --len / --context-len. Unknown options are usage errors. */
int reg_inputs(const char *cmd, const reg_args *a, reg_state *s, int generate);
/* Plans and allocates the outputs (the required ones, and the optional ones with
 * --return-attn). */
int reg_outputs(const char *cmd, const reg_args *a, reg_state *s);
/* The loaded inputs as named tensors (those given), in the kind's input order. */
void reg_tensors(const reg_state *s, xattn_tensor *t, size_t *n);
/* Loads the file of output o's gradient or target (its shape), this rank's rows under mpirun
 * (*axis: the axis cut, -1 whole). */
int reg_load_output_rows(const char *cmd, const reg_state *s, int o, const char *file,
                         cli_finite_rule rule, xattn_array *arr, int *axis);
/* Runs the forward on ctx (NULL: default). */
int reg_forward(const char *cmd, const reg_args *a, reg_state *s, xattn_ctx *ctx);
/* Writes the outputs into --out-dir (without the leading batch axis for unbatched inputs). */
int reg_write(const char *cmd, const reg_args *a, const reg_state *s);
/* The file name (without .npy) of an output: its name, dots as underscores (out.0 -> out_0). */
void reg_file_name(const char *output, char *buf, size_t cap);
/* The kinds' inputs and options for --help. */
void reg_help_kinds(void);
void reg_help_kind(const char *kind);
/* 1 if the command line runs `kind` through the registry. */
int reg_cli_handles(const char *kind);
/* `xattn run` through the registry. */
int reg_cmd_run(const char *cmd, int argc, char **argv);
/* `xattn grad` through the registry (cmd_grad.c). */
int reg_cmd_grad(const char *cmd, int argc, char **argv);
/* `xattn bench` through the registry. */
int reg_cmd_bench(const char *cmd, int argc, char **argv);

/* A context for the run: --threads and --compute (usage errors for a bad value). */
int reg_context(const char *cmd, const reg_args *a, xattn_ctx **ctx);

#endif
