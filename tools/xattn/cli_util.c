/* Shared helpers of the xattn CLI: see cli.h. */
#include "cli.h"
#include "cli_dist.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------- */
/* Errors                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Writes s to stderr with control characters (newlines included) shown as '?', as the
 * library shows them, so that every message stays on one line whatever a file name or
 * library message holds. */
/* Appends s to buf (length *n, capacity cap), control characters as '?'. */
static void put_clean(char *buf, size_t *n, size_t cap, const char *s)
{
    for (; *s && *n + 1 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        buf[(*n)++] = (char)(ch < 0x20 || ch == 0x7f ? '?' : ch);
    }
    buf[*n] = '\0';
}

/* The message as one line, written with one call: under mpirun the ranks share stderr, and a
 * line written in pieces would interleave with another rank's. */
static void vreport(const char *cmd, const char *file, const char *fmt, va_list ap)
{
    char msg[1024], line[2400], out[3400], tag[32] = "";
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (cli_dist_size() > 1 && strncmp(msg, "rank ", 5)) /* under mpirun: which rank says it */
        snprintf(tag, sizeof tag, "rank %d: ", cli_dist_rank());
    size_t n = 0;
    put_clean(out, &n, sizeof out, "xattn ");
    put_clean(out, &n, sizeof out, cmd);
    put_clean(out, &n, sizeof out, ": ");
    put_clean(out, &n, sizeof out, tag);
    if (file) {
        put_clean(out, &n, sizeof out, file);
        put_clean(out, &n, sizeof out, ": ");
    }
    put_clean(out, &n, sizeof out, msg);
    out[n++] = '\n';
    fwrite(out, 1, n, stderr);
    fflush(stderr);
    snprintf(line, sizeof line, "%s%s%s", file ? file : "", file ? ": " : "", msg);
    cli_dist_note_error(line);
}

const char *cli_printable(const char *s, char *buf, size_t cap)
{
    if (!s) s = "(null)";
    const size_t n = strlen(s);
    const int cut = n >= cap;
    const size_t keep = cut ? cap - 4 : n; /* room for "..." and the NUL */
    size_t i = 0;
    for (; i < keep; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    if (cut) { /* do not end inside a UTF-8 sequence */
        while (i > 0 && ((unsigned char)buf[i - 1] & 0xc0) == 0x80) i--;
        if (i > 0 && ((unsigned char)buf[i - 1] & 0xc0) == 0xc0) i--;
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

int cli_error(const char *cmd, const char *file, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, file, fmt, ap);
    va_end(ap);
    return CLI_EXIT_ERROR;
}

int cli_usage(const char *cmd, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cli_error(cmd, NULL, "%s (see 'xattn %s --help')", msg, cmd);
    return CLI_EXIT_USAGE;
}

int cli_lib_error(const char *cmd, const char *file)
{
    const char *msg = xattn_last_error();
    if (!msg || !msg[0]) msg = "failed (no details)";
    if (file) {
        size_t n = strlen(file);
        if (!strncmp(msg, file, n) && msg[n] == ':' && msg[n + 1] == ' ') msg += n + 2;
    }
    return cli_error(cmd, file, "%s", msg);
}

/* ---------------------------------------------------------------------------------------- */
/* Options                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static int set_value(const char *cmd, const cli_option *o, const char *val)
{
    char *end = NULL;
    switch (o->kind) {
    case CLI_STRING:
        if (!val[0]) {
            cli_usage(cmd, "%s needs a non-empty value", o->name);
            return -1;
        }
        *(const char **)o->dst = val;
        return 0;
    case CLI_INT: {
        errno = 0;
        long long v = strtoll(val, &end, 10);
        if (errno || end == val || *end || v < o->min || v > o->max) {
            cli_usage(cmd, "%s: '%s' is not an integer in [%lld, %lld]", o->name, val, o->min,
                      o->max);
            return -1;
        }
        *(long long *)o->dst = v;
        return 0;
    }
    case CLI_DOUBLE: {
        errno = 0;
        double v = strtod(val, &end);
        if (errno || end == val || *end || !isfinite(v) || v < 0) {
            cli_usage(cmd, "%s: '%s' is not a non-negative number", o->name, val);
            return -1;
        }
        *(double *)o->dst = v;
        return 0;
    }
    case CLI_FLAG: break;
    }
    return -1;
}

cli_parse_result cli_parse(const char *cmd, int argc, char **argv, const cli_option *opts,
                           size_t n_opts, const char **pos, int max_pos, int *n_pos)
{
    *n_pos = 0;
    int only_pos = 0;
    uint64_t seen[4] = {0}; /* options given so far, by index (the first 256) */
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (!only_pos && (!strcmp(arg, "-h") || !strcmp(arg, "--help"))) return CLI_HELP;
        if (!only_pos && !strcmp(arg, "--")) {
            only_pos = 1;
            continue;
        }
        if (!only_pos && arg[0] == '-' && arg[1] != '\0') {
            const char *eq = strchr(arg, '=');
            size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
            const cli_option *o = NULL;
            for (size_t i = 0; i < n_opts; i++)
                if (strlen(opts[i].name) == len && !strncmp(opts[i].name, arg, len)) o = &opts[i];
            if (!o) {
                cli_usage(cmd, "unknown option '%.*s'", (int)len, arg);
                return CLI_BAD_USAGE;
            }
            size_t k = (size_t)(o - opts);
            if (k < 256 && (seen[k / 64] >> (k % 64) & 1)) {
                cli_usage(cmd, "%s given twice", o->name);
                return CLI_BAD_USAGE;
            }
            if (k < 256) seen[k / 64] |= (uint64_t)1 << (k % 64);
            if (o->kind == CLI_FLAG) {
                if (eq) {
                    cli_usage(cmd, "%s takes no value", o->name);
                    return CLI_BAD_USAGE;
                }
                *(int *)o->dst = 1;
                continue;
            }
            const char *val;
            if (eq) {
                val = eq + 1;
            } else {
                if (a + 1 >= argc) {
                    cli_usage(cmd, "%s needs a value", o->name);
                    return CLI_BAD_USAGE;
                }
                /* "--out --help" asks for help (a value "--help" is written --out=--help) */
                if (!only_pos && (!strcmp(argv[a + 1], "-h") || !strcmp(argv[a + 1], "--help")))
                    return CLI_HELP;
                val = argv[++a];
            }
            if (set_value(cmd, o, val)) return CLI_BAD_USAGE;
            continue;
        }
        if (!arg[0]) {
            cli_usage(cmd, "empty argument ''");
            return CLI_BAD_USAGE;
        }
        if (*n_pos >= max_pos) {
            if (max_pos == 0)
                cli_usage(cmd, "unexpected argument '%s'", arg);
            else
                cli_usage(cmd, "too many arguments ('%s')", arg);
            return CLI_BAD_USAGE;
        }
        pos[(*n_pos)++] = arg;
    }
    return CLI_PARSED;
}

/* ---------------------------------------------------------------------------------------- */
/* Arrays                                                                                   */
/* ---------------------------------------------------------------------------------------- */

const char *cli_np_dtype(xattn_dtype t)
{
    switch (t) {
    case XATTN_F32: return "float32";
    case XATTN_F64: return "float64";
    case XATTN_F16: return "float16";
    case XATTN_BF16: return "bfloat16";
    case XATTN_BOOL: return "bool";
    case XATTN_U8: return "uint8";
    case XATTN_I8: return "int8";
    case XATTN_I16: return "int16";
    case XATTN_I32: return "int32";
    case XATTN_I64: return "int64";
    default: return "unknown";
    }
}

const char *cli_dims_str(int ndim, const int64_t *shape, char *buf, size_t cap)
{
    size_t off = 0;
    buf[0] = '\0';
    off += (size_t)snprintf(buf, cap, "(");
    for (int d = 0; d < ndim && off < cap; d++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (ndim == 1 && off < cap) off += (size_t)snprintf(buf + off, cap - off, ",");
    if (off < cap) snprintf(buf + off, cap - off, ")");
    return buf;
}

const char *cli_shape_str(const xattn_array *a, char *buf, size_t cap)
{
    return cli_dims_str(a->ndim, a->shape, buf, cap);
}

static int check_nonempty(const char *cmd, const char *path, const xattn_array *a)
{
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] <= 0 && !(d == cli_row_got_axis && cli_row_got_len > 0)) {
            /* (under mpirun a rank's share of a sequence may be empty; the file is not) */
            char s[160];
            return cli_error(cmd, path, "has an empty shape %s", cli_shape_str(a, s, sizeof s));
        }
    return 0;
}

/* 1 if the float32 value v breaks `rule`. */
static int breaks(float v, cli_finite_rule rule)
{
    if (rule == CLI_FINITE_ANY || isfinite(v)) return 0;
    if (rule == CLI_FINITE_MASK && isinf(v) && v < 0) return 0;
    return 1;
}

static void describe(float v, char *what, size_t cap)
{
    snprintf(what, cap, "%s", isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
}

int64_t cli_first_nonfinite(const xattn_array *a, cli_finite_rule rule, char *what, size_t cap)
{
    if (cap) what[0] = '\0';
    if (rule == CLI_FINITE_ANY || !a || !a->data) return -1;
    int64_t n = xattn_array_numel(a);
    if (a->dtype == XATTN_F32) {
        const float *x = (const float *)a->data;
        for (int64_t i = 0; i < n; i++)
            if (breaks(x[i], rule)) {
                describe(x[i], what, cap);
                return i;
            }
    } else if (a->dtype == XATTN_F64) {
        const double *x = (const double *)a->data;
        for (int64_t i = 0; i < n; i++) {
            float f = (float)x[i]; /* IEEE: out of range rounds to +-inf */
            if (!breaks(f, rule)) continue;
            if (isfinite(x[i]))
                snprintf(what, cap, "%g, beyond the float32 range", x[i]);
            else
                describe(f, what, cap);
            return i;
        }
    }
    return -1;
}

const char *cli_index_str(int ndim, const int64_t *shape, int64_t flat, char *buf, size_t cap)
{
    int64_t idx[XATTN_MAX_DIMS];
    if (ndim < 0 || ndim > XATTN_MAX_DIMS) ndim = 0;
    for (int d = ndim - 1; d >= 0; d--) {
        int64_t n = shape[d] > 0 ? shape[d] : 1;
        idx[d] = flat % n;
        flat /= n;
    }
    size_t off = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && off < cap; d++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", d ? ", " : "", (long long)idx[d]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
    return buf;
}

/* Checks `a` against `rule`; reports the first offending value. */
static int check_finite(const char *cmd, const char *path, const xattn_array *a,
                        cli_finite_rule rule)
{
    char what[64], at[200];
    int64_t bad = cli_first_nonfinite(a, rule, what, sizeof what);
    if (bad < 0) return 0;
    const int ax = cli_row_got_axis;
    if (ax >= 0 &&
        ax < a->ndim) { /* under mpirun: the index in the file, not in this rank's rows */
        int64_t idx[XATTN_MAX_DIMS], shape[XATTN_MAX_DIMS], st, len, flat = 0, f = bad;
        for (int d = a->ndim - 1; d >= 0; d--) {
            const int64_t n = a->shape[d] > 0 ? a->shape[d] : 1;
            idx[d] = f % n, f /= n;
        }
        cli_dist_range(cli_row_got_len, &st, &len);
        memcpy(shape, a->shape, sizeof(int64_t) * (size_t)a->ndim);
        shape[ax] = cli_row_got_len, idx[ax] += st;
        for (int d = 0; d < a->ndim; d++) flat = flat * shape[d] + idx[d];
        cli_index_str(a->ndim, shape, flat, at, sizeof at);
    } else {
        cli_index_str(a->ndim, a->shape, bad, at, sizeof at);
    }
    if (rule == CLI_FINITE_MASK)
        return cli_error(cmd, path,
                         "float mask holds %s at index %s (only finite values and -inf are "
                         "allowed); pass --allow-nonfinite to accept it",
                         what, at);
    return cli_error(cmd, path,
                     "holds a non-finite value (%s) at index %s; pass --allow-nonfinite to "
                     "accept it",
                     what, at);
}

/* xattn_npy_load, or this rank's rows under mpirun when the caller set cli_row_axis */
static xattn_status load_npy(const char *path, xattn_array *a)
{
    cli_row_got_axis = -1;
    cli_row_got_len = 0;
    return cli_dist_npy_rows(path, cli_row_axis, cli_row_arg, a, &cli_row_got_axis,
                             &cli_row_got_len);
}

int cli_load_float(const char *cmd, const char *path, int min_rank, int max_rank,
                   cli_finite_rule rule, xattn_array *a)
{
    memset(a, 0, sizeof *a);
    if (load_npy(path, a) != XATTN_OK) return cli_lib_error(cmd, path);
    char s[160];
    int rc = 0;
    if (a->dtype != XATTN_F32 && a->dtype != XATTN_F64 && a->dtype != XATTN_F16) {
        rc = cli_error(cmd, path, "dtype %s is not supported: expected float32, float64 or float16",
                       cli_np_dtype(a->dtype));
    } else if (a->ndim < min_rank || a->ndim > max_rank) {
        if (min_rank == max_rank)
            rc = cli_error(cmd, path, "has shape %s (rank %d); expected rank %d",
                           cli_shape_str(a, s, sizeof s), a->ndim, min_rank);
        else
            rc = cli_error(cmd, path, "has shape %s (rank %d); expected rank %d to %d",
                           cli_shape_str(a, s, sizeof s), a->ndim, min_rank, max_rank);
    } else if ((rc = check_nonempty(cmd, path, a)) != 0) {
        /* reported */
    } else if (a->dtype == XATTN_F16 && xattn_array_convert(a, XATTN_F32) != XATTN_OK) {
        rc = cli_lib_error(cmd, path); /* float16 -> float32 is exact, infinities and NaN too */
    } else if ((rc = check_finite(cmd, path, a, rule)) != 0) {
        /* reported */
    } else if (a->dtype != XATTN_F32 && xattn_array_convert(a, XATTN_F32) != XATTN_OK) {
        rc = cli_lib_error(cmd, path);
    }
    if (rc) xattn_array_free(a);
    return rc;
}

static int is_int_dtype(xattn_dtype t)
{
    return t == XATTN_U8 || t == XATTN_I8 || t == XATTN_I16 || t == XATTN_I32 || t == XATTN_I64;
}

int cli_mask_to_bool(const char *cmd, const char *path, const char *opt, const char *true_means,
                     xattn_array *a)
{
    if (a->dtype != XATTN_BOOL && !is_int_dtype(a->dtype))
        return cli_error(cmd, path,
                         "dtype %s is not supported for %s: expected bool or integer (True / "
                         "nonzero = %s)",
                         cli_np_dtype(a->dtype), opt, true_means);
    /* bool too: a .npy bool byte may hold any nonzero value */
    if (xattn_array_convert(a, XATTN_BOOL) != XATTN_OK) return cli_lib_error(cmd, path);
    return 0;
}

int cli_load_bool_mask(const char *cmd, const char *path, const char *opt, const char *true_means,
                       xattn_array *a)
{
    memset(a, 0, sizeof *a);
    if (load_npy(path, a) != XATTN_OK) return cli_lib_error(cmd, path);
    int rc = cli_mask_to_bool(cmd, path, opt, true_means, a);
    if (rc) xattn_array_free(a);
    return rc;
}

int cli_load_mask(const char *cmd, const char *path, const char *opt, const char *true_means,
                  cli_finite_rule rule, xattn_array *a)
{
    memset(a, 0, sizeof *a);
    if (load_npy(path, a) != XATTN_OK) return cli_lib_error(cmd, path);
    int rc = 0;
    if (a->dtype == XATTN_F32 || a->dtype == XATTN_F64 || a->dtype == XATTN_F16) {
        if (a->dtype == XATTN_F16 && xattn_array_convert(a, XATTN_F32) != XATTN_OK)
            rc = cli_lib_error(cmd, path);
        if (!rc) rc = check_finite(cmd, path, a, rule);
        if (!rc && xattn_array_convert(a, XATTN_F32) != XATTN_OK) rc = cli_lib_error(cmd, path);
    } else {
        rc = cli_mask_to_bool(cmd, path, opt, true_means, a);
    }
    if (!rc) rc = check_nonempty(cmd, path, a);
    if (rc) xattn_array_free(a);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Time and memory                                                                          */
/* ---------------------------------------------------------------------------------------- */

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* VmHWM of /proc/self/status in bytes: the high-water mark of this process's own memory,
 * which exec starts afresh; -1 where /proc cannot be read. */
static double proc_vmhwm_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    double kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) {
            kb = strtod(line + 6, NULL);
            break;
        }
    fclose(f);
    return kb < 0 ? -1 : kb * 1024.0;
}

double cli_peak_rss_bytes(const char **note)
{
    double hwm = proc_vmhwm_bytes();
    if (note) *note = "";
    if (hwm >= 0) return hwm;
    /* Linux keeps ru_maxrss across exec, so this one may be the parent's peak */
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    if (note) *note = " (ru_maxrss: may be the parent process's peak)";
    return (double)ru.ru_maxrss * 1024.0; /* kilobytes on Linux */
}

/* ---------------------------------------------------------------------------------------- */
/* Outputs                                                                                  */
/* ---------------------------------------------------------------------------------------- */

#define CLI_PATH_CAP 4096

int cli_check_out_dir(const char *cmd, const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) return cli_error(cmd, dir, "exists and is not a directory");
        if (access(dir, W_OK | X_OK) != 0)
            return cli_error(cmd, dir, "output directory is not writable: %s", strerror(errno));
        return 0;
    }
    if (errno != ENOENT)
        return cli_error(cmd, dir, "cannot use as the output directory: %s", strerror(errno));
    /* the parent must exist: only the last component is created */
    char parent[CLI_PATH_CAP];
    size_t n = strlen(dir);
    if (n >= sizeof parent) return cli_error(cmd, dir, "output directory name is too long");
    memcpy(parent, dir, n + 1);
    while (n > 1 && parent[n - 1] == '/') parent[--n] = '\0';
    char *slash = strrchr(parent, '/');
    if (!slash)
        snprintf(parent, sizeof parent, ".");
    else if (slash == parent)
        parent[1] = '\0';
    else
        *slash = '\0';
    if (stat(parent, &sb) != 0)
        return cli_error(cmd, dir, "cannot create the output directory: %s", strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return cli_error(cmd, dir, "cannot create the output directory: %s is not a directory",
                         parent);
    if (access(parent, W_OK | X_OK) != 0)
        return cli_error(cmd, dir, "cannot create the output directory: %s", strerror(errno));
    return 0;
}

void cli_output_set(cli_output *o, const char *name, float *data, const char *note, int ndim,
                    const int64_t *shape)
{
    memset(o, 0, sizeof *o);
    o->name = name;
    o->note = note;
    o->arr.dtype = XATTN_F32;
    o->arr.data = data;
    o->arr.ndim = ndim;
    for (int d = 0; d < ndim; d++) o->arr.shape[d] = shape[d];
    o->axis = -1;
}

int cli_quiet_writes;

int cli_write_outputs(const char *cmd, const char *dir, const cli_output *outs, int n)
{
    if (cli_dist_active()) return cli_dist_write_outputs(cmd, dir, outs, n);
    if (n <= 0) return 0;
    char(*path)[CLI_PATH_CAP] = calloc((size_t)n, sizeof *path);
    char(*part)[CLI_PATH_CAP + 8] = calloc((size_t)n, sizeof *part);
    int rc = 0, made_dir = 0, written = 0, renamed = 0;
    if (!path || !part) rc = cli_error(cmd, dir, "out of memory");
    for (int k = 0; k < n && !rc; k++)
        if ((size_t)snprintf(path[k], sizeof path[k], "%s/%s.npy", dir, outs[k].name) >=
                sizeof path[k] ||
            (size_t)snprintf(part[k], sizeof part[k], "%s.part", path[k]) >= sizeof part[k])
            rc = cli_error(cmd, dir, "output directory name is too long");

    struct stat sb;
    if (!rc && stat(dir, &sb) != 0) {
        if (mkdir(dir, 0777) != 0)
            rc = cli_error(cmd, dir, "cannot create the output directory: %s", strerror(errno));
        else
            made_dir = 1;
    } else if (!rc && !S_ISDIR(sb.st_mode)) {
        rc = cli_error(cmd, dir, "exists and is not a directory");
    }

    /* what could make a rename fail is checked first, so that the renames do not fail half way */
    for (int k = 0; k < n && !rc; k++)
        if (stat(path[k], &sb) == 0 && S_ISDIR(sb.st_mode))
            rc = cli_error(cmd, path[k], "cannot write: is a directory");
    for (int k = 0; k < n && !rc; k++, written++)
        if (xattn_npy_save(part[k], &outs[k].arr) != XATTN_OK) rc = cli_lib_error(cmd, part[k]);
    for (int k = 0; k < n && !rc; k++, renamed++)
        if (rename(part[k], path[k]) != 0)
            rc = cli_error(cmd, path[k], "cannot write: %s", strerror(errno));
    if (rc) {
        for (int k = 0; k < renamed; k++) unlink(path[k]);
        for (int k = renamed; k < written; k++) unlink(part[k]);
        if (made_dir) rmdir(dir);
    } else {
        char sh[160];
        for (int k = 0; k < n && !cli_quiet_writes; k++) {
            cli_shape_str(&outs[k].arr, sh, sizeof sh);
            if (outs[k].note)
                printf("wrote %s %s (%s)\n", path[k], sh, outs[k].note);
            else
                printf("wrote %s %s\n", path[k], sh);
        }
    }
    free(path);
    free(part);
    return rc;
}
