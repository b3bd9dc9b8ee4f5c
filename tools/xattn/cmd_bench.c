/*
 * xattn bench: times a saved module's forward on given or generated inputs and reports the
 * median time and the process's peak resident memory, VmHWM of /proc/self/status (what
 * bench/bidir_bench.py compares with the reference package under PyTorch); through the
 * registry (reg_run.c).
 */
#include "cli.h"
#include "reg_cli.h"

int cmd_bench(int argc, char **argv) { return reg_cmd_bench("bench", argc, argv); }
