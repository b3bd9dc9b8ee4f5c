/* xattn under mpirun: see cli_dist.h. */
#include "cli_dist.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CLI_PATH_CAP 4096 /* as cli_util.c */

#ifdef XATTN_CLI_MPI
#include "xattn_mpi.h"
#endif

cli_axis_fn cli_row_axis;
void *cli_row_arg;
int cli_row_got_axis = -1;
int64_t cli_row_got_len;

static int active, rank_, size_ = 1, agreed_fail;
int cli_dist_rows = 1;

int cli_dist_agreed(void) { return agreed_fail; }

void cli_dist_test_exit(long long step)
{
    const char *v = getenv("XATTN_TEST_EXIT");
    int r = -1;
    long long s = -1;
    if (active && v && sscanf(v, "%d:%lld", &r, &s) == 2 && r == rank_ && s == step) _exit(3);
}
static char last_error[1024];

void cli_dist_note_error(const char *line) { snprintf(last_error, sizeof last_error, "%s", line); }
int cli_dist_active(void) { return active; }
int cli_dist_rank(void) { return rank_; }
int cli_dist_size(void) { return size_; }

void cli_dist_range(int64_t n, int64_t *start, int64_t *len)
{
    const int64_t q = n / size_, m = n % size_;
    *start = q * rank_ + m * rank_ / size_;
    *len = q * (rank_ + 1) + m * (rank_ + 1) / size_ - *start;
}

xattn_status cli_dist_shard_axis(const xattn_module *m, const char *name, int output, int ndim,
                                 int *axis)
{
#ifdef XATTN_CLI_MPI
    return xattn_module_shard_axis(m, name, output, ndim, axis);
#else
    (void)m, (void)name, (void)output, (void)ndim;
    *axis = -1;
    return XATTN_OK;
#endif
}

/* ---- .npy headers ---------------------------------------------------------------------- */

typedef struct npy_head {
    char descr[16];
    int fortran, ndim;
    int64_t shape[XATTN_MAX_DIMS];
    int64_t data_off, esz;
} npy_head;

/* Parses the header of the .npy file f; 0 on success (else the library's loader reports). */
static int read_head(int fd, npy_head *h)
{
    unsigned char pre[12];
    if (pread(fd, pre, 12, 0) != 12 || memcmp(pre, "\x93NUMPY", 6)) return -1;
    const int major = pre[6];
    int64_t hlen, off;
    if (major == 1) {
        hlen = pre[8] | pre[9] << 8, off = 10;
    } else if (major == 2 || major == 3) {
        hlen = (int64_t)pre[8] | (int64_t)pre[9] << 8 | (int64_t)pre[10] << 16 |
               (int64_t)pre[11] << 24;
        off = 12;
    } else {
        return -1;
    }
    if (hlen <= 0 || hlen > 1 << 20) return -1;
    char *t = malloc((size_t)hlen + 1);
    if (!t || pread(fd, t, (size_t)hlen, off) != hlen) {
        free(t);
        return -1;
    }
    t[hlen] = '\0';
    memset(h, 0, sizeof *h);
    h->data_off = off + hlen;
    const char *d = strstr(t, "'descr'"), *f = strstr(t, "'fortran_order'"),
               *s = strstr(t, "'shape'");
    int ok = d && f && s;
    if (ok) { /* 'descr': '<f4' */
        const char *q = strchr(d + 7, '\'');
        const char *e = q ? strchr(q + 1, '\'') : NULL;
        ok = e && e - q - 1 < (long)sizeof h->descr;
        if (ok) snprintf(h->descr, sizeof h->descr, "%.*s", (int)(e - q - 1), q + 1);
    }
    if (ok) {
        const char *v = f + strlen("'fortran_order'");
        while (*v == ' ' || *v == ':') v++;
        h->fortran = !strncmp(v, "True", 4);
    }
    if (ok) { /* 'shape': (2, 3, 4) */
        const char *p = strchr(s, '('), *e = p ? strchr(p, ')') : NULL;
        ok = p && e;
        for (p = p ? p + 1 : NULL; ok && p < e;) {
            while (p < e && (*p == ' ' || *p == ',')) p++;
            if (p >= e) break;
            char *end;
            long long v = strtoll(p, &end, 10);
            if (end == p || v < 0 || h->ndim >= XATTN_MAX_DIMS)
                ok = 0;
            else
                h->shape[h->ndim++] = v, p = end;
        }
    }
    free(t);
    if (!ok || h->fortran || strlen(h->descr) != 3) return -1;
    const char c = h->descr[1], n = h->descr[2];
    h->esz = n - '0';
    if (!strchr("fbui", c) || (h->esz != 1 && h->esz != 2 && h->esz != 4 && h->esz != 8)) return -1;
    return 0;
}

/* A version 1.0 header for descr and shape (the whole size a multiple of 64); its length. */
static size_t write_head(char *buf, size_t cap, const char *descr, int ndim, const int64_t *shape)
{
    char dict[512];
    size_t o = (size_t)snprintf(dict, sizeof dict,
                                "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int d = 0; d < ndim && o < sizeof dict; d++)
        o += (size_t)snprintf(dict + o, sizeof dict - o, "%lld%s", (long long)shape[d],
                              ndim == 1      ? ","
                              : d + 1 < ndim ? ", "
                                             : "");
    o += (size_t)snprintf(dict + o, sizeof dict - o, "), }");
    size_t total = (10 + o + 1 + 63) / 64 * 64;
    if (total > cap) return 0;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    const size_t hl = total - 10;
    buf[8] = (char)(hl & 0xff), buf[9] = (char)(hl >> 8);
    memcpy(buf + 10, dict, o);
    memset(buf + 10 + o, ' ', hl - o - 1);
    buf[total - 1] = '\n';
    return total;
}

static int64_t bytes_read;
cli_batch_fn cli_batch_pick;
void *cli_batch_arg;

int64_t cli_dist_bytes_read(void) { return bytes_read; }

/* The whole file through the library's loader (its data counted as read). */
static xattn_status load_whole(const char *path, xattn_array *out)
{
    const xattn_status st = xattn_npy_load(path, out);
    if (!st) bytes_read += (int64_t)xattn_array_numel(out) * (int64_t)xattn_dtype_size(out->dtype);
    return st;
}

/* Reads rows of axis ax of the .npy file fd (header h): the runs [run[2k], run[2k] + run[2k+1])
 * of that axis for every leading index, in order, into a new .npy image parsed into out. */
static xattn_status read_runs(int fd, const npy_head *h, const char *path, int ax,
                              const int64_t *run, int n_run, xattn_array *out)
{
    int64_t len = 0, outer = 1, inner = h->esz;
    for (int k = 0; k < n_run; k++) len += run[2 * k + 1];
    for (int d = 0; d < ax; d++) outer *= h->shape[d];
    for (int d = ax + 1; d < h->ndim; d++) inner *= h->shape[d];
    int64_t lshape[XATTN_MAX_DIMS];
    memcpy(lshape, h->shape, sizeof lshape);
    lshape[ax] = len;
    char head[1024];
    const size_t hl = write_head(head, sizeof head, h->descr, h->ndim, lshape);
    const int64_t body = outer * len * inner;
    char *buf = hl ? malloc((size_t)(hl + body) + 1) : NULL;
    if (!buf) return load_whole(path, out); /* reports what it can */
    memcpy(buf, head, hl);
    xattn_status st = XATTN_OK;
    char *dst = buf + hl;
    for (int64_t o = 0; o < outer && !st; o++)
        for (int k = 0; k < n_run && !st; k++) { /* one pread run per (leading index, run) */
            const int64_t want = run[2 * k + 1] * inner,
                          at = h->data_off + (o * h->shape[ax] + run[2 * k]) * inner;
            for (int64_t got = 0; got < want;) {
                const ssize_t r = pread(fd, dst + got, (size_t)(want - got), at + got);
                if (r <= 0) {
                    st = load_whole(path, out); /* a short read: the library reports it */
                    if (!st) xattn_array_free(out), st = XATTN_ERR_IO;
                    break;
                }
                got += r;
            }
            dst += want;
            bytes_read += want;
        }
    if (!st) st = xattn_npy_parse(buf, (size_t)(hl + body), path, out);
    free(buf);
    if (!st && !out->data) out->data = calloc(1, 8); /* an empty shard: not "not given" */
    if (!st && !out->data) st = XATTN_ERR_NOMEM;
    return st;
}

xattn_status cli_dist_npy_rows(const char *path, cli_axis_fn axis_of, void *arg, xattn_array *out,
                               int *axis, int64_t *glen)
{
    *axis = -1;
    *glen = 0;
    memset(out, 0, sizeof *out);
    const int batch = !cli_dist_rows && cli_batch_pick;
    if (!active || !axis_of || (!cli_dist_rows && !batch)) return load_whole(path, out);
    const int fd = open(path, O_RDONLY);
    npy_head h;
    if (fd < 0 || read_head(fd, &h)) { /* the library's loader says what is wrong */
        if (fd >= 0) close(fd);
        return load_whole(path, out);
    }
    int64_t numel = 1;
    for (int d = 0; d < h.ndim; d++) numel *= h.shape[d];
    struct stat sb;
    const int whole = fstat(fd, &sb) || sb.st_size < h.data_off + numel * h.esz;
    if (batch) { /* data-parallel: the samples this rank uses, in runs of consecutive ones */
        const int64_t *rows = NULL;
        int64_t n = 0;
        if (whole || h.ndim < 1 ||
            !cli_batch_pick(cli_batch_arg, path, h.ndim, h.shape, &rows, &n)) {
            close(fd);
            return load_whole(path, out);
        }
        int64_t *run = malloc(sizeof(int64_t) * (size_t)(2 * n + 2));
        int n_run = 0;
        for (int64_t k = 0; run && k < n; k++)
            if (n_run && run[2 * n_run - 2] + run[2 * n_run - 1] == rows[k])
                run[2 * n_run - 1]++;
            else
                run[2 * n_run] = rows[k], run[2 * n_run + 1] = 1, n_run++;
        const xattn_status st =
            run ? read_runs(fd, &h, path, 0, run, n_run, out) : load_whole(path, out);
        free(run);
        close(fd);
        return st;
    }
    const int ax = axis_of(arg, h.ndim);
    if (ax == -2) { /* refused: the message is set */
        close(fd);
        return XATTN_ERR_UNSUPPORTED;
    }
    if (ax < 0 || ax >= h.ndim || whole) {
        close(fd);
        return load_whole(path, out);
    }
    int64_t run[2];
    cli_dist_range(h.shape[ax], &run[0], &run[1]);
    const xattn_status st = read_runs(fd, &h, path, ax, run, 1, out);
    close(fd);
    if (!st) *axis = ax, *glen = h.shape[ax];
    return st;
}

#ifdef XATTN_CLI_MPI

void cli_dist_begin(int *argc, char ***argv)
{
    if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMIX_RANK") && !getenv("PMI_SIZE")) return;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) return;
    /* errors come back as codes (and are agreed on); a rank that dies ends the job (mpirun) */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    active = 1;
}

int cli_dist_agree(const char *cmd, int rc)
{
    if (!active) return rc;
    struct {
        int failed, rank;
    } in = {rc != 0, rank_}, o = {0, 0};
    if (MPI_Allreduce(&in, &o, 1, MPI_2INT, MPI_MAXLOC, MPI_COMM_WORLD) != MPI_SUCCESS)
        return rc ? rc : cli_error(cmd, NULL, "rank %d: MPI_Allreduce failed", rank_);
    if (!o.failed) return 0;
    struct {
        int rc;
        char msg[1024];
    } m;
    memset(&m, 0, sizeof m);
    if (o.rank == rank_) m.rc = rc, snprintf(m.msg, sizeof m.msg, "%s", last_error);
    MPI_Bcast(&m, (int)sizeof m, MPI_BYTE, o.rank, MPI_COMM_WORLD);
    agreed_fail = 1;
    m.msg[sizeof m.msg - 1] = '\0';
    if (o.rank != rank_ && !rc) { /* a rank that failed has said why */
        const char *msg = m.msg;
        if (!strncmp(msg, "xattn ", 6)) msg = strchr(msg, ':') ? strchr(msg, ':') + 2 : msg;
        fprintf(stderr, "xattn %s: rank %d: stopped: rank %d failed: %s\n", cmd, rank_, o.rank,
                msg[0] ? msg : "(no message)");
        fflush(stderr);
    }
    return m.rc ? m.rc : CLI_EXIT_ERROR;
}

int cli_dist_end(const char *cmd, int rc)
{
    if (!active) return rc;
    if (getenv("XATTN_TEST_READ_BYTES")) {
        fprintf(stderr, "xattn %s: rank %d read %lld bytes of .npy data\n", cmd, rank_,
                (long long)bytes_read);
        fflush(stderr);
    }
    if (!agreed_fail) rc = cli_dist_agree(cmd, rc);
    MPI_Finalize();
    return rc;
}

xattn_ctx *cli_dist_ctx(const char *cmd, long long threads)
{
    xattn_ctx *ctx = NULL;
    if (xattn_ctx_new(&ctx) || (threads && xattn_ctx_set_threads(ctx, (int)threads)) ||
        (active && (xattn_ctx_set_comm(ctx, MPI_COMM_WORLD) || xattn_ctx_set_sharded(ctx, 1)))) {
        cli_lib_error(cmd, NULL);
        xattn_ctx_free(ctx);
        return NULL;
    }
    return ctx;
}

int cli_dist_sum(const char *cmd, float *x, int64_t n)
{
    for (int64_t o = 0; active && o < n;) {
        const int c = (int)(n - o < (1 << 30) ? n - o : (1 << 30));
        if (MPI_Allreduce(MPI_IN_PLACE, x + o, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD))
            return cli_error(cmd, NULL, "rank %d: MPI_Allreduce failed", rank_);
        o += c;
    }
    return 0;
}

int cli_dist_sum_d(const char *cmd, double *x, int n)
{
    if (active && MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD))
        return cli_error(cmd, NULL, "rank %d: MPI_Allreduce failed", rank_);
    return 0;
}

/* Rank 0 writes the header (and an unsharded output whole) into part; 0 or an exit code. */
static int write_header(const char *cmd, const char *part, const cli_output *o, int64_t *hl_out)
{
    int64_t shape[XATTN_MAX_DIMS];
    memcpy(shape, o->arr.shape, sizeof shape);
    if (o->axis >= 0) shape[o->axis] = o->total;
    if (o->axis < 0) {
        *hl_out = 0;
        return xattn_npy_save(part, &o->arr) ? cli_lib_error(cmd, part) : 0;
    }
    char head[1024];
    const size_t hl = write_head(head, sizeof head, "<f4", o->arr.ndim, shape);
    int64_t n = 1;
    for (int d = 0; d < o->arr.ndim; d++) n *= shape[d];
    FILE *f = fopen(part, "wb");
    int rc = 0;
    if (!f || !hl || fwrite(head, 1, hl, f) != hl || ftruncate(fileno(f), (off_t)(hl + 4 * n)))
        rc = cli_error(cmd, part, "cannot write: %s", strerror(errno));
    if (f && fclose(f) && !rc) rc = cli_error(cmd, part, "cannot write: %s", strerror(errno));
    *hl_out = (int64_t)hl;
    return rc;
}

/* Every rank writes its rows of o at their offsets in part (MPI-IO). */
static int write_rows(const char *cmd, const char *part, const cli_output *o, int64_t hl)
{
    MPI_File fh;
    if (MPI_File_open(MPI_COMM_WORLD, part, MPI_MODE_WRONLY, MPI_INFO_NULL, &fh) != MPI_SUCCESS)
        return cli_error(cmd, part, "rank %d: cannot open for writing (MPI_File_open)", rank_);
    int64_t outer = 1, inner = 1;
    const int ax = o->axis;
    for (int d = 0; d < ax; d++) outer *= o->arr.shape[d];
    for (int d = ax + 1; d < o->arr.ndim; d++) inner *= o->arr.shape[d];
    const int64_t len = o->arr.shape[ax];
    const float *src = o->arr.data;
    int rc = 0;
    for (int64_t b = 0; b < outer && !rc; b++)
        for (int64_t w = 0; w < len * inner && !rc;) {
            const int c = (int)(len * inner - w < (1 << 28) ? len * inner - w : (1 << 28));
            const MPI_Offset off = (MPI_Offset)(hl + 4 * ((b * o->total + o->start) * inner + w));
            if (MPI_File_write_at(fh, off, src + b * len * inner + w, c, MPI_FLOAT,
                                  MPI_STATUS_IGNORE) != MPI_SUCCESS)
                rc = cli_error(cmd, part, "rank %d: cannot write its rows (MPI_File_write_at)",
                               rank_);
            w += c;
        }
    if (MPI_File_close(&fh) != MPI_SUCCESS && !rc)
        rc = cli_error(cmd, part, "rank %d: cannot close (MPI_File_close)", rank_);
    return rc;
}

int cli_dist_write_outputs(const char *cmd, const char *dir, const cli_output *outs, int n)
{
    char(*path)[CLI_PATH_CAP] = calloc((size_t)(n ? n : 1), sizeof *path);
    char(*part)[CLI_PATH_CAP + 8] = calloc((size_t)(n ? n : 1), sizeof *part);
    int64_t *hl = calloc((size_t)(n ? n : 1), sizeof *hl);
    int rc = path && part && hl ? 0 : cli_error(cmd, dir, "out of memory");
    for (int k = 0; k < n && !rc; k++)
        if ((size_t)snprintf(path[k], sizeof path[k], "%s/%s.npy", dir, outs[k].name) >=
                sizeof path[k] ||
            (size_t)snprintf(part[k], sizeof part[k], "%s.part", path[k]) >= sizeof part[k])
            rc = cli_error(cmd, dir, "output directory name is too long");
    int made_dir = 0;
    struct stat sb;
    if ((rc = cli_dist_agree(cmd, rc))) goto done;
    if (rank_ == 0) { /* the directory and the headers */
        if (stat(dir, &sb) != 0) {
            if (mkdir(dir, 0777) != 0)
                rc = cli_error(cmd, dir, "cannot create the output directory: %s", strerror(errno));
            else
                made_dir = 1;
        } else if (!S_ISDIR(sb.st_mode)) {
            rc = cli_error(cmd, dir, "exists and is not a directory");
        }
        for (int k = 0; k < n && !rc; k++)
            if (stat(path[k], &sb) == 0 && S_ISDIR(sb.st_mode))
                rc = cli_error(cmd, path[k], "cannot write: is a directory");
        for (int k = 0; k < n && !rc; k++) rc = write_header(cmd, part[k], &outs[k], &hl[k]);
    }
    rc = cli_dist_agree(cmd, rc);
    if (!rc && MPI_Bcast(hl, n, MPI_INT64_T, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
        rc = cli_error(cmd, dir, "rank %d: MPI_Bcast failed", rank_);
    for (int k = 0; k < n && !rc; k++)
        if (outs[k].axis >= 0) rc = write_rows(cmd, part[k], &outs[k], hl[k]);
    rc = cli_dist_agree(cmd, rc);
    if (rank_ == 0) { /* every rank has written: into place, or away on failure */
        int renamed = 0;
        for (int k = 0; k < n && !rc; k++, renamed++)
            if (rename(part[k], path[k]) != 0)
                rc = cli_error(cmd, path[k], "cannot write: %s", strerror(errno));
        if (rc) {
            for (int k = 0; k < renamed; k++) unlink(path[k]);
            for (int k = renamed; k < n; k++) unlink(part[k]);
            if (made_dir) rmdir(dir);
        } else if (!cli_quiet_writes) {
            char sh[160];
            for (int k = 0; k < n; k++) {
                int64_t shape[XATTN_MAX_DIMS];
                memcpy(shape, outs[k].arr.shape, sizeof shape);
                if (outs[k].axis >= 0) shape[outs[k].axis] = outs[k].total;
                cli_dims_str(outs[k].arr.ndim, shape, sh, sizeof sh);
                if (outs[k].note)
                    printf("wrote %s %s (%s)\n", path[k], sh, outs[k].note);
                else
                    printf("wrote %s %s\n", path[k], sh);
            }
            fflush(stdout);
        }
    }
    if (!agreed_fail) rc = cli_dist_agree(cmd, rc); /* the renames */
done:
    free(path);
    free(part);
    free(hl);
    return rc;
}

#else

void cli_dist_begin(int *argc, char ***argv) { (void)argc, (void)argv; }
int cli_dist_end(const char *cmd, int rc) { return (void)cmd, rc; }
int cli_dist_agree(const char *cmd, int rc) { return (void)cmd, rc; }
xattn_ctx *cli_dist_ctx(const char *cmd, long long threads)
{
    xattn_ctx *ctx = NULL;
    if (xattn_ctx_new(&ctx) || (threads && xattn_ctx_set_threads(ctx, (int)threads))) {
        cli_lib_error(cmd, NULL);
        xattn_ctx_free(ctx);
        return NULL;
    }
    return ctx;
}
int cli_dist_sum(const char *cmd, float *x, int64_t n) { return (void)cmd, (void)x, (void)n, 0; }
int cli_dist_sum_d(const char *cmd, double *x, int n) { return (void)cmd, (void)x, (void)n, 0; }
int cli_dist_write_outputs(const char *cmd, const char *dir, const cli_output *outs, int n)
{
    return cli_write_outputs(cmd, dir, outs, n);
}

#endif
