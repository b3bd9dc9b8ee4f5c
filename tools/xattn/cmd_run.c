/* xattn run: runs a saved module on .npy inputs, through the registry (reg_run.c). */
#include "cli.h"
#include "modules_ext.h"
#include "reg_cli.h"

int cmd_run(int argc, char **argv)
{
    /* modules with their own runner first: their blocks (an nn.MultiheadAttention inside a
     * layer) are registry modules of their own */
    int ext_rc;
    if (cli_ext_dispatch(argc, argv, &ext_rc)) return ext_rc;
    return reg_cmd_run("run", argc, argv);
}
