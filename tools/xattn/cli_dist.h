/*
 * xattn under mpirun (an MPI build, -DXATTN_MPI=ON): `xattn run`, `xattn grad` and `xattn train`
 * run across the ranks. The tool starts MPI only when the environment says mpirun started it
 * (OMPI_COMM_WORLD_SIZE, PMIX_RANK or PMI_SIZE); otherwise, and in a build without MPI, every
 * function here says "one process" and nothing changes.
 *
 * Sequence-parallel runs: each rank reads only its rows of each sequence input (offset reads of
 * the .npy data: rank r of R holds rows [floor(n r / R), floor(n (r + 1) / R)) of the axis
 * xattn_module_shard_axis names), the module runs sharded (xattn_ctx_set_sharded), and each
 * output is assembled into one complete file: rank 0 writes the header into NAME.npy.part, every
 * rank writes its rows at their offsets (MPI-IO), and once every rank has succeeded rank 0
 * renames the files into place (a failure removes the .part files).
 *
 * Errors: every collective phase starts with cli_dist_agree, so that a rank that fails (bad
 * input, out of memory) makes every rank stop there with a message naming it; a rank that dies is
 * Open MPI's to handle (mpirun ends the job).
 */
#ifndef XATTN_CLI_DIST_H
#define XATTN_CLI_DIST_H

#include "cli.h"

/* Starts MPI when mpirun started us (MPI build); call first in main. */
void cli_dist_begin(int *argc, char ***argv);
/* Agrees on the exit code (unless a failure was agreed already) and finalises MPI; returns the
 * exit code every rank returns. */
int cli_dist_end(const char *cmd, int rc);
/* 1 when running under mpirun (any number of ranks, 1 included). */
int cli_dist_active(void);
int cli_dist_rank(void);
int cli_dist_size(void);
/* Agrees on rc across the ranks (collective when active): every rank returns the exit code of
 * the lowest failing rank; the ranks that did not fail print "xattn CMD: stopped: rank R
 * failed: <its message>". Returns rc unchanged when not active. */
int cli_dist_agree(const char *cmd, int rc);
/* The message of this process's last error report (for cli_dist_agree). */
void cli_dist_note_error(const char *line);
/* A context for sharded module runs over every rank (threads 0: the default), or NULL with the
 * error reported. */
xattn_ctx *cli_dist_ctx(const char *cmd, long long threads);

/* Rows of an input: when active and axis_of(ndim) >= 0, this rank's rows along that axis of the
 * .npy file at path (offset reads), else the whole file; *glen the axis's length in the file,
 * *axis the axis (-1: whole). The array is as xattn_npy_load gives it. */
typedef int (*cli_axis_fn)(void *arg, int ndim);
xattn_status cli_dist_npy_rows(const char *path, cli_axis_fn axis_of, void *arg, xattn_array *out,
                               int *axis, int64_t *glen);
/* The loader hook (cli_util.c's loaders read through it when set). */
extern cli_axis_fn cli_row_axis;
extern void *cli_row_arg;
extern int cli_row_got_axis;
extern int64_t cli_row_got_len;

/* cli_write_outputs under mpirun (see above); each output's axis, start and total say where
 * its rows go. */
int cli_dist_write_outputs(const char *cmd, const char *dir, const cli_output *outs, int n);
/* This rank's rows [*start, *start + *len) of n (xattn_shard_range's split; the whole under one
 * process). */
void cli_dist_range(int64_t n, int64_t *start, int64_t *len);
/* xattn_module_shard_axis in an MPI build; *axis = -1 (whole) otherwise. */
xattn_status cli_dist_shard_axis(const xattn_module *m, const char *name, int output, int ndim,
                                 int *axis);
/* 0: sequence row reads off (data-parallel training); 1 by default. */
extern int cli_dist_rows;
/* Data-parallel reads (cli_dist_rows 0, under mpirun): for each file an input or target loader
 * opens, cli_batch_pick(cli_batch_arg, path, ndim, shape) says whether to read only some
 * samples of its first axis; it returns 1 and sets *rows, *n (sorted, distinct) for those it
 * picks, 0 for a file read whole. */
typedef int (*cli_batch_fn)(void *arg, const char *path, int ndim, const int64_t *shape,
                            const int64_t **rows, int64_t *n);
extern cli_batch_fn cli_batch_pick;
extern void *cli_batch_arg;
/* Bytes of .npy data this process has read through the input loaders (the whole file's data for
 * a file read whole; the rows' bytes for offset reads). With XATTN_TEST_READ_BYTES in the
 * environment, cli_dist_end prints "xattn CMD: rank R read N bytes of .npy data" (tests). */
int64_t cli_dist_bytes_read(void);
/* 1 once a failure has been agreed on (the ranks have stopped together). */
int cli_dist_agreed(void);
/* A test hook: with XATTN_TEST_EXIT="R:S" in the environment, rank R ends its process with
 * _exit(3) after step S (no message, no MPI_Finalize), as a crashed rank would. */
void cli_dist_test_exit(long long step);
/* Sums n floats over the ranks in place (collective). Returns 0 or an exit code (reported). */
int cli_dist_sum(const char *cmd, float *x, int64_t n);
/* Sums n doubles over the ranks in place (collective). */
int cli_dist_sum_d(const char *cmd, double *x, int n);

#endif
