/*
 * The registry's description templates (xattn_kind_brief, and the docs of inputs and outputs)
 * expanded with a module's config: {f}, {f?A|B}, {f@SRC?A|B}, {f@}. Nothing here knows any
 * particular kind.
 */
#include "reg_cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct out_buf {
    char *p;
    size_t cap, n;
} out_buf;

static void put(out_buf *o, const char *s, size_t l)
{
    for (size_t k = 0; k < l && o->n + 1 < o->cap; k++) o->p[o->n++] = s[k];
    if (o->cap) o->p[o->n < o->cap ? o->n : o->cap - 1] = '\0';
}

static void puts_(out_buf *o, const char *s) { put(o, s, strlen(s)); }

/* The end of the {...} that starts at p ('{'), or NULL when it is not closed before end. */
static const char *closing(const char *p, const char *end)
{
    int depth = 0;
    for (; p < end; p++) {
        depth += *p == '{';
        depth -= *p == '}';
        if (!depth) return p;
    }
    return NULL;
}

/* The first c at depth 0 in [p, end), or end. */
static const char *at_top(const char *p, const char *end, char c)
{
    int depth = 0;
    for (; p < end; p++) {
        if (*p == c && !depth) return p;
        depth += *p == '{';
        depth -= *p == '}';
    }
    return end;
}

static int listed(const char *const *l, int n, const char *name)
{
    for (int i = 0; l && i < n; i++)
        if (!strcmp(l[i], name)) return 1;
    return 0;
}

/* The config entry of option `name` (or of what the alias `name` stands for) of m. */
static int entry_of(const char *kind, const xattn_module *m, const char *name,
                    xattn_config_entry *e)
{
    const char *target = reg_alias(kind, name, NULL);
    for (size_t c = 0; m && c < xattn_module_config_count(m); c++)
        if (!xattn_module_config(m, c, e) && !strcmp(e->name, target ? target : name)) return 1;
    return 0;
}

/* '?' for an option the file does not tell (u->stand_in) or one that changes with such. */
static int unknown(const reg_unknown *u, const xattn_config_entry *e)
{
    return u && (listed(u->stand_in, u->n_stand_in, e->name) ||
                 listed(u->changed, u->n_changed, e->name));
}

/* VALUE of option `tok` (as written in the template: an alias, perhaps). */
static void value(const char *kind, const xattn_module *m, const reg_unknown *u, const char *tok,
                  out_buf *o)
{
    xattn_config_entry e;
    if (!entry_of(kind, m, tok, &e)) {
        puts_(o, "?");
        return;
    }
    if (!unknown(u, &e)) {
        puts_(o, e.value);
        if (!strcmp(e.source, "default")) puts_(o, " (default)");
        return;
    }
    puts_(o, "?");
    if (!listed(u->stand_in, u->n_stand_in, e.name)) return; /* it follows one of those */
    char flag[96], dflt[64] = "";
    snprintf(flag, sizeof flag, "--%s", tok);
    for (char *c = flag + 2; *c; c++)
        if (*c == '_') *c = '-';
    for (size_t j = 0;; j++) {
        xattn_arg_desc a;
        if (xattn_kind_arg(kind, j, &a)) break;
        if (!strcmp(a.name, e.name) && strcmp(a.default_value, "-"))
            snprintf(dflt, sizeof dflt, "%s", a.default_value);
    }
    char note[256];
    if (dflt[0])
        snprintf(note, sizeof note,
                 " (not in the file, and the default %s does not fit it: pass "
                 "%s to run)",
                 dflt, flag);
    else
        snprintf(note, sizeof note, " (not in the file: pass %s to run)", flag);
    puts_(o, note);
}

/* The tensor an entry's source quotes ("shape of 'talking_heads.weight'"), less the prefix. */
static void tensor_of(const xattn_module *m, const xattn_config_entry *e, out_buf *o)
{
    const char *q = strchr(e->detail, '\'');
    if (!q) {
        puts_(o, e->detail);
        return;
    }
    q++;
    size_t l = strcspn(q, "'");
    const char *prefix = xattn_module_prefix(m);
    const size_t pl = strlen(prefix);
    if (pl < l && !strncmp(q, prefix, pl)) q += pl, l -= pl;
    put(o, q, l);
}

static void expand(const char *kind, const xattn_module *m, const reg_unknown *u, const char *p,
                   const char *end, out_buf *o)
{
    while (p < end) {
        const char *close = *p == '{' ? closing(p, end) : NULL;
        if (!close) {
            put(o, p++, 1);
            continue;
        }
        /* {f}, {f?A|B}, {f@SRC?A|B}, {f@} */
        const char *in = p + 1;
        const size_t nl = strcspn(in, "?@}");
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(nl < sizeof name ? nl : sizeof name - 1), in);
        const char *rest = in + nl, *src = NULL, *a = NULL, *b = NULL, *a_end = NULL;
        size_t src_l = 0;
        if (*rest == '@') {
            src = rest + 1;
            src_l = strcspn(src, "?}");
            rest = src + src_l;
        }
        if (*rest == '?') {
            a = rest + 1;
            a_end = at_top(a, close, '|');
            b = a_end < close ? a_end + 1 : close;
        }
        xattn_config_entry e;
        const int have = entry_of(kind, m, name, &e), unk = have && unknown(u, &e);
        if (!m) { /* without a module: the choices spelled out */
            if (a) {
                expand(kind, m, u, a, a_end, o);
                puts_(o, " when ");
                puts_(o, name);
                if (src) {
                    puts_(o, " comes from the ");
                    put(o, src, src_l);
                }
                if (b < close) {
                    puts_(o, ", else ");
                    expand(kind, m, u, b, close, o);
                }
            } else {
                puts_(o, name);
                if (src) puts_(o, "'s tensor");
            }
        } else if (a && (!have || (unk && !src))) {
            puts_(o, "?");
        } else if (a) {
            int yes;
            if (src)
                yes = !unk && strlen(e.source) == src_l && !strncmp(e.source, src, src_l);
            else
                yes = !strcmp(e.value, "True") ||
                      (strcmp(e.value, "False") && strcmp(e.value, "None") && atof(e.value) != 0);
            if (yes)
                expand(kind, m, u, a, a_end, o);
            else
                expand(kind, m, u, b, close, o);
        } else if (src) {
            if (have && !unk)
                tensor_of(m, &e, o);
            else
                puts_(o, "?");
        } else {
            value(kind, m, u, name, o);
        }
        p = close + 1;
    }
}

void reg_expand(const char *kind, const xattn_module *m, const reg_unknown *u, const char *tmpl,
                char *buf, size_t cap)
{
    out_buf o = {buf, cap, 0};
    if (cap) buf[0] = '\0';
    expand(kind, m, u, tmpl, tmpl + strlen(tmpl), &o);
}

void reg_brief(const char *kind, const xattn_module *m, const reg_unknown *u, char *buf, size_t cap)
{
    out_buf o = {buf, cap, 0};
    if (cap) buf[0] = '\0';
    const char *brief = xattn_kind_brief(kind);
    if (!brief[0]) { /* every option */
        for (size_t j = 0;; j++) {
            xattn_arg_desc a;
            if (xattn_kind_arg(kind, j, &a)) break;
            if (a.derived) continue;
            char item[96];
            snprintf(item, sizeof item, "{%s}", a.name);
            puts_(&o, o.n ? ", " : "");
            puts_(&o, a.name);
            puts_(&o, "=");
            expand(kind, m, u, item, item + strlen(item), &o);
        }
        return;
    }
    const char *end = brief + strlen(brief);
    for (const char *p = brief; p < end;) {
        const char *stop = at_top(p, end, ','), *eq = at_top(p, stop, '=');
        puts_(&o, p == brief ? "" : ", ");
        put(&o, p, (size_t)(eq - p));
        puts_(&o, "=");
        if (eq < stop) {
            expand(kind, m, u, eq + 1, stop, &o);
        } else { /* NAME alone: its value */
            char item[96];
            snprintf(item, sizeof item, "{%.*s}", (int)(stop - p), p);
            expand(kind, m, u, item, item + strlen(item), &o);
        }
        p = stop + (stop < end);
    }
}

int reg_brief_options(const char *kind, const char **names, int cap)
{
    int n = 0;
    const char *brief = xattn_kind_brief(kind);
    for (const char *p = brief; *p && n < cap;) {
        /* each NAME item and each {f...} of the templates */
        char tok[64];
        size_t l;
        if (*p == '{') {
            p++;
            l = strcspn(p, "?@}");
        } else if (p == brief || p[-1] == ',') {
            l = strcspn(p, ",=");
            if (p[l] == '=') { /* a label */
                p += l + 1;
                continue;
            }
        } else {
            p++;
            continue;
        }
        snprintf(tok, sizeof tok, "%.*s", (int)(l < sizeof tok ? l : sizeof tok - 1), p);
        p += l;
        const char *target = reg_alias(kind, tok, NULL);
        for (size_t j = 0; n < cap; j++) {
            xattn_arg_desc a;
            if (xattn_kind_arg(kind, j, &a)) break;
            if (strcmp(a.name, target ? target : tok)) continue;
            if (!listed(names, n, a.name)) names[n++] = a.name;
            break;
        }
    }
    for (size_t j = 0; !brief[0] && n < cap; j++) {
        xattn_arg_desc a;
        if (xattn_kind_arg(kind, j, &a)) break;
        if (!a.derived) names[n++] = a.name;
    }
    return n;
}
