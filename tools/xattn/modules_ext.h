/*
 * Modules that `xattn run` hands over whole to their own file (tools/xattn/run_<kind>.c): each
 * parses its own options, loads its own inputs and writes its own outputs, with the conventions
 * of cli.h (one-line errors naming the file, NaN policy, nothing written on failure).
 */
#ifndef XATTN_MODULES_EXT_H
#define XATTN_MODULES_EXT_H

#include "xattn.h"

typedef struct cli_ext_module {
    const char *kind;    /* --module value, e.g. "mutual" */
    const char *summary; /* one line for 'xattn run --help' */
    /* 1 if the state dict is this module (from its tensor names); NULL for a module without
     * weights, which only --module selects */
    int (*detect)(const xattn_safetensors *st);
    /* 'xattn run' for this module: the argv given to cmd_run (argv[0] = "run") */
    int (*run)(int argc, char **argv);
    /* the "module: ..." line of 'xattn inspect' for a state dict it detected; may be NULL */
    void (*describe)(const xattn_safetensors *st);
} cli_ext_module;

/* the module of --module KIND, or NULL */
const cli_ext_module *cli_ext_find(const char *kind);
/* the module that claims the state dict, or NULL */
const cli_ext_module *cli_ext_detect(const xattn_safetensors *st);
/* i-th registered module (NULL past the end) */
const cli_ext_module *cli_ext_at(int i);
/* If argv selects a registered module (--module KIND, or a *.safetensors argument that one of
 * them detects), runs it and returns 1 with its exit code in *rc; else returns 0. */
int cli_ext_dispatch(int argc, char **argv, int *rc);

#endif
