/*
 * Shared helpers of the xattn command-line tool: option parsing, one-line error reporting,
 * loading .npy inputs with checks, and module detection from state_dict names.
 *
 * Error convention: every failure prints exactly ONE line to stderr,
 *     xattn CMD: FILE: problem
 * (or "xattn CMD: problem" when no file is at fault) and the command returns CLI_EXIT_ERROR;
 * usage errors (unknown option, missing argument, bad number) return CLI_EXIT_USAGE.
 */
#ifndef XATTN_CLI_H
#define XATTN_CLI_H

#include "xattn.h"

#include <stddef.h>
#include <stdint.h>

#define CLI_EXIT_OK    0
#define CLI_EXIT_ERROR 1
#define CLI_EXIT_USAGE 2

#if defined(__GNUC__)
#define CLI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CLI_PRINTF(a, b)
#endif

/* ---- errors ---- */

/* "xattn CMD: FILE: message" (FILE may be NULL); returns CLI_EXIT_ERROR. */
int cli_error(const char *cmd, const char *file, const char *fmt, ...) CLI_PRINTF(3, 4);
/* "xattn CMD: message (see 'xattn CMD --help')"; returns CLI_EXIT_USAGE. */
int cli_usage(const char *cmd, const char *fmt, ...) CLI_PRINTF(2, 3);
/* Reports xattn_last_error() for `file`, without repeating the file name when the library's
 * message already starts with it; returns CLI_EXIT_ERROR. */
int cli_lib_error(const char *cmd, const char *file);

/* Copies s into buf (capacity cap >= 8) for display on one line: control characters become '?',
 * and a string too long for buf is cut with "...". Returns buf. */
const char *cli_printable(const char *s, char *buf, size_t cap);

/* ---- options ---- */

typedef enum cli_kind {
    CLI_FLAG,   /* int *: set to 1                         */
    CLI_STRING, /* const char **                           */
    CLI_INT,    /* long long *: in [min, max]              */
    CLI_DOUBLE  /* double *: finite, >= 0                  */
} cli_kind;

typedef struct cli_option {
    const char *name; /* "--threads" */
    cli_kind kind;
    void *dst;
    long long min, max; /* CLI_INT only */
} cli_option;

typedef enum cli_parse_result { CLI_PARSED = 0, CLI_HELP = 1, CLI_BAD_USAGE = 2 } cli_parse_result;

/* Parses argv[1 .. argc) (argv[0] is the subcommand). "--name value" and "--name=value";
 * "-h"/"--help" -> CLI_HELP; "--" ends options. Positionals go to pos[0 .. max_pos); more is a
 * usage error, and so is an option given twice. A usage error has already been reported when
 * CLI_BAD_USAGE is returned. */
cli_parse_result cli_parse(const char *cmd, int argc, char **argv, const cli_option *opts,
                           size_t n_opts, const char **pos, int max_pos, int *n_pos);

/* ---- arrays ---- */

/* numpy's name of a dtype ("float32", "bool", "int64", ...). */
const char *cli_np_dtype(xattn_dtype t);
/* "(2, 5, 8)" into buf. */
const char *cli_shape_str(const xattn_array *a, char *buf, size_t cap);
const char *cli_dims_str(int ndim, const int64_t *shape, char *buf, size_t cap);

/* NaN policy. Non-finite values are rejected unless the user passes --allow-nonfinite;
 * float masks may hold -inf (a masked position) but not NaN or +inf. */
typedef enum cli_finite_rule {
    CLI_FINITE_ANY = 0,    /* no check (--allow-nonfinite)                 */
    CLI_FINITE_STRICT = 1, /* every value finite                           */
    CLI_FINITE_MASK = 2    /* finite or -inf (additive masks)              */
} cli_finite_rule;

/* Index of the first element of `a` (F32 or F64; F64 values are judged after rounding to
 * float32) that breaks `rule`, or -1 if none does (or `a` is of another dtype). `what`
 * (capacity cap) receives a description of that value: "nan", "inf", "1e+300 (beyond
 * float32 range)". */
int64_t cli_first_nonfinite(const xattn_array *a, cli_finite_rule rule, char *what, size_t cap);
/* Formats a flat index of an array of shape (ndim, shape) as "[i, j, k]". */
const char *cli_index_str(int ndim, const int64_t *shape, int64_t flat, char *buf, size_t cap);

/* Loads a float .npy (float32 or float64, converted to float32) with rank in [min_rank,
 * max_rank] and no zero-sized dimension, checked against `rule` (CLI_FINITE_STRICT or
 * CLI_FINITE_ANY). Errors are reported; returns 0 or CLI_EXIT_ERROR. */
int cli_load_float(const char *cmd, const char *path, int min_rank, int max_rank,
                   cli_finite_rule rule, xattn_array *a);
/* Masks. A bool mask is a bool or integer array (nonzero = True), made XATTN_BOOL; a float
 * array is refused with one message for every option of every module: "dtype D is not
 * supported for OPT: expected bool or integer (True / nonzero = MEANING)". `opt` names the
 * option ("--mask"), `true_means` what True means ("keep", "ignore", "masked out"). */
int cli_mask_to_bool(const char *cmd, const char *path, const char *opt, const char *true_means,
                     xattn_array *a);
/* Loads a bool mask .npy (see cli_mask_to_bool); frees `a` on failure. */
int cli_load_bool_mask(const char *cmd, const char *path, const char *opt, const char *true_means,
                       xattn_array *a);
/* Loads a mask .npy of a module with additive masks: bool or integer (made XATTN_BOOL, as
 * cli_mask_to_bool), or float32/float64/float16 (converted to F32, checked against `rule`,
 * CLI_FINITE_MASK or CLI_FINITE_ANY); no zero-sized dimension. */
int cli_load_mask(const char *cmd, const char *path, const char *opt, const char *true_means,
                  cli_finite_rule rule, xattn_array *a);

/* ---- outputs ---- */

/* Checks before any work that the output directory exists and is writable, or can be made
 * (its parent exists and is writable): returns 0 or CLI_EXIT_ERROR (reported). */
int cli_check_out_dir(const char *cmd, const char *dir);

typedef struct cli_output {
    const char *name; /* "out" -> DIR/out.npy */
    xattn_array arr;  /* data borrowed */
    const char *note; /* printed after the shape, or NULL */
    /* under mpirun: arr holds this rank's rows [start, start + arr.shape[axis]) of axis `axis`
     * of an output of `total` rows there (axis -1: the whole output, written by rank 0) */
    int axis;
    int64_t start, total;
} cli_output;

/* Sets *o to a float32 output of shape (ndim, shape) over `data` (borrowed). */
void cli_output_set(cli_output *o, const char *name, float *data, const char *note, int ndim,
                    const int64_t *shape);
/* Writes outs[0 .. n) into dir (created if missing): each first as NAME.npy.part, then all
 * renamed into place, so that a failure leaves neither a partial set nor a clobbered earlier
 * result; on failure removes what it wrote (and dir if it made it). Prints
 * "wrote PATH SHAPE [(note)]" per output. Returns 0 or CLI_EXIT_ERROR (reported). */
int cli_write_outputs(const char *cmd, const char *dir, const cli_output *outs, int n);
/* Nonzero: cli_write_outputs prints nothing (a command whose stdout is one JSON line). */
extern int cli_quiet_writes;

/* Monotonic wall clock in seconds. */
double cli_now(void);
/* Peak resident set size of this process in bytes, 0 if unknown: VmHWM of /proc/self/status
 * (*note = ""); where /proc is missing, getrusage's ru_maxrss, which Linux carries across exec
 * from the parent (*note = a label to print after the number). note may be NULL. */
double cli_peak_rss_bytes(const char **note);

/* Subcommands. argv[0] is the subcommand name. */
int cmd_run(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_attn_png(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_grad(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_generate(int argc, char **argv);

#endif
