#include "modules_ext.h"

#include <stddef.h>
#include <string.h>

/* one definition per tools/xattn/run_<kind>.c */
const cli_ext_module *cli_ext_at(int i)
{
    const cli_ext_module *all[] = {NULL};
    return i >= 0 && (size_t)i < sizeof all / sizeof all[0] ? all[i] : NULL;
}

const cli_ext_module *cli_ext_find(const char *kind)
{
    const cli_ext_module *m;
    for (int i = 0; kind && (m = cli_ext_at(i)); i++)
        if (!strcmp(m->kind, kind)) return m;
    return NULL;
}

const cli_ext_module *cli_ext_detect(const xattn_safetensors *st)
{
    const cli_ext_module *m;
    for (int i = 0; (m = cli_ext_at(i)); i++)
        if (m->detect && m->detect(st)) return m;
    return NULL;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

int cli_ext_dispatch(int argc, char **argv, int *rc)
{
    const cli_ext_module *m = NULL;
    for (int i = 1; i < argc && !m; i++) {
        if (!strcmp(argv[i], "--module") && i + 1 < argc)
            m = cli_ext_find(argv[i + 1]);
        else if (!strncmp(argv[i], "--module=", 9))
            m = cli_ext_find(argv[i] + 9);
    }
    for (int i = 1; i < argc && !m; i++) {
        if (!strcmp(argv[i], "--module") || !strncmp(argv[i], "--module=", 9)) return 0;
        if (argv[i][0] == '-' || !ends_with(argv[i], ".safetensors")) continue;
        xattn_safetensors *st = NULL;
        if (xattn_st_open(argv[i], &st) != XATTN_OK) return 0; /* reported by the caller */
        m = cli_ext_detect(st);
        xattn_st_close(st);
        break;
    }
    if (!m) return 0;
    *rc = m->run(argc, argv);
    return 1;
}
