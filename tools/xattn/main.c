/* xattn: command-line tool of the xattn library. Subcommand dispatch; see cli.h. */
#include "cli.h"
#include "cli_dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} command;

static const command COMMANDS[] = {
    {"run", cmd_run,
     "run a saved module on .npy inputs: out.npy [context_out.npy, attention maps]"},
    {"inspect", cmd_inspect, "list a safetensors file's tensors and metadata, detect the module"},
    {"demo", cmd_demo, "video/audio bidirectional cross-attention recovering a known alignment"},
    {"compare", cmd_compare,
     "compare two .npy arrays (or safetensors files): max |a-b|/(1+|b|) against a tolerance"},
    {"bench", cmd_bench, "time a saved module's forward: median time and peak memory"},
    {"grad", cmd_grad,
     "gradients of a saved module: grads.safetensors and d_INPUT.npy, for given output "
     "gradients or an MSE target"},
    {"train", cmd_train,
     "train a saved module on .npy inputs and targets (MSE; AdamW or SGD): OUT.safetensors"},
    {"generate", cmd_generate,
     "captions from a BertLMHeadModel and video/audio features, as transformers' generate"},
    {"init", cmd_init, "create a module with the reference's default initialisation"},
    {"attn-png", cmd_attn_png, "draw an attention map .npy as a PNG heat-map (axes, colour bar)"},
};
#define N_COMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f)
{
    fprintf(f,
            "usage: xattn COMMAND [OPTIONS]\n"
            "\n"
            "Cross-attention modules saved from PyTorch, run from C (xattn %s).\n"
            "\n"
            "commands:\n",
            xattn_version());
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-9s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(f, "\n"
               "options:\n"
               "  -h, --help     this help; 'xattn COMMAND --help' (or 'xattn help COMMAND')\n"
               "                 for a command's own\n"
               "  -V, --version  print the version and the kernel set in use\n"
               "\n"
               "Errors are one line on stderr naming the file at fault; the exit code is 1\n"
               "(2 for a usage error).\n");
}

/* OMP_NUM_THREADS is validated as --threads is: a count in [1, XATTN_MAX_THREADS] (or a
 * nested-levels list such as "4,2", whose first level is ours). */
static int check_omp_env(void)
{
    const char *v = getenv("OMP_NUM_THREADS");
    if (!v) return 0;
    long long n = 0;
    const char *p = v;
    for (; *p >= '0' && *p <= '9' && n <= XATTN_MAX_THREADS; p++) n = n * 10 + (*p - '0');
    if (p != v && (!*p || *p == ',') && n >= 1 && n <= XATTN_MAX_THREADS) return 0;
    fputs("xattn: OMP_NUM_THREADS: '", stderr);
    for (const char *q = v; *q && q - v < 40; q++)
        fputc((unsigned char)*q < 0x20 ? '?' : *q, stderr);
    fprintf(stderr, "' is not a thread count in [1, %d]\n", XATTN_MAX_THREADS);
    return CLI_EXIT_USAGE;
}

/* The commands that run across the ranks under mpirun. */
static int runs_distributed(const char *c)
{
    return !strcmp(c, "run") || !strcmp(c, "grad") || !strcmp(c, "train");
}

static int dispatch(int argc, char **argv);

int main(int argc, char **argv)
{
    cli_dist_begin(&argc, &argv);
    const char *c = argc > 1 ? argv[1] : "";
    int rc;
    if (cli_dist_active() && argc > 1 && !runs_distributed(c) && strcmp(c, "-h") &&
        strcmp(c, "--help") && strcmp(c, "help") && strcmp(c, "-V") && strcmp(c, "--version"))
        rc = cli_error(c, NULL,
                       "not available under mpirun (%d ranks): run, grad and train run across "
                       "ranks; start the others without mpirun",
                       cli_dist_size());
    else
        rc = dispatch(argc, argv);
    return cli_dist_end(argc > 1 ? c : "xattn", rc);
}

static int dispatch(int argc, char **argv)
{
    if (check_omp_env()) return CLI_EXIT_USAGE;
    if (argc < 2) {
        fputs("xattn: missing command: run, inspect, init, generate, demo, bench, compare or "
              "attn-png "
              "(see "
              "'xattn "
              "--help')\n",
              stderr);
        return CLI_EXIT_USAGE;
    }
    const char *c = argv[1];
    if (!strcmp(c, "-h") || !strcmp(c, "--help")) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    if (!strcmp(c, "--version") || !strcmp(c, "-V")) {
        printf("xattn %s (kernels: %s)\n", xattn_version(), xattn_isa());
        return CLI_EXIT_OK;
    }
    if (!strcmp(c, "help")) {
        if (argc < 3) {
            usage(stdout);
            return CLI_EXIT_OK;
        }
        for (size_t i = 0; i < N_COMMANDS; i++)
            if (!strcmp(argv[2], COMMANDS[i].name)) {
                static char help_flag[] = "--help";
                char *hargv[] = {argv[2], help_flag, NULL};
                return COMMANDS[i].fn(2, hargv);
            }
        c = argv[2];
    } else {
        for (size_t i = 0; i < N_COMMANDS; i++)
            if (!strcmp(c, COMMANDS[i].name)) return COMMANDS[i].fn(argc - 1, argv + 1);
    }
    fputs("xattn: unknown command '", stderr);
    for (const char *p = c; *p; p++) fputc((unsigned char)*p < 0x20 ? '?' : *p, stderr);
    fputs("' (see 'xattn --help')\n", stderr);
    return CLI_EXIT_USAGE;
}
