/* Arrays, .npy and safetensors: conversions, round trips and malformed files. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- temp files ------------------------------------------------------------------------- */

static char g_dir[512];
static char g_made[256][600];
static int g_nmade;

static const char *tpath(const char *name)
{
    static char buf[4][600];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 600, "%s/%s", g_dir, name);
    return p;
}

static void remember(const char *path)
{
    for (int i = 0; i < g_nmade; i++)
        if (strcmp(g_made[i], path) == 0) return;
    if (g_nmade < 256) snprintf(g_made[g_nmade++], 600, "%s", path);
}

static const char *write_bytes(const char *name, const void *data, size_t len)
{
    const char *p = tpath(name);
    FILE *f = fopen(p, "wb");
    if (!f) {
        fprintf(stderr, "cannot create %s\n", p);
        exit(1);
    }
    if (len && fwrite(data, 1, len, f) != len) exit(1);
    fclose(f);
    remember(p);
    return p;
}

static unsigned char *read_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *b = malloc(1 << 20);
    *len = fread(b, 1, 1 << 20, f);
    fclose(f);
    return b;
}

/* A safetensors file with the given header text and `data_len` bytes of data. */
static const char *st_file(const char *name, const char *json, size_t data_len)
{
    size_t jl = strlen(json);
    unsigned char *b = calloc(1, 8 + jl + data_len + 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)jl >> (8 * i));
    memcpy(b + 8, json, jl);
    for (size_t i = 0; i < data_len; i++) b[8 + jl + i] = (unsigned char)i;
    const char *p = write_bytes(name, b, 8 + jl + data_len);
    free(b);
    return p;
}

/* A .npy file: version major.0, header text `dict` (+ '\n'), `data_len` bytes of data. */
static const char *npy_file(const char *name, int major, const char *dict, size_t data_len)
{
    size_t dl = strlen(dict), pre = major == 1 ? 10 : 12;
    size_t hl = dl + 1;
    unsigned char *b = calloc(1, pre + hl + data_len + 1);
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (unsigned char)major;
    b[7] = 0;
    for (size_t i = 0; i < pre - 8; i++) b[8 + i] = (unsigned char)(hl >> (8 * i));
    memcpy(b + pre, dict, dl);
    b[pre + dl] = '\n';
    for (size_t i = 0; i < data_len; i++) b[pre + hl + i] = (unsigned char)(i + 1);
    const char *p = write_bytes(name, b, pre + hl + data_len);
    free(b);
    return p;
}

/* Expects failure with `want`, and a message naming `needle` (usually the file name). */
#define CHECK_FAIL_MSG(call, want, needle)                                                         \
    do {                                                                                           \
        CHECK_FAIL(call, want);                                                                    \
        if (!strstr(xattn_last_error(), (needle))) {                                               \
            tu_failures++;                                                                         \
            fprintf(stderr, "%s:%d: message \"%s\" lacks \"%s\"\n", __FILE__, __LINE__,            \
                    xattn_last_error(), (needle));                                                 \
        }                                                                                          \
        tu_checks++;                                                                               \
        CHECK(strchr(xattn_last_error(), '\n') == NULL);                                           \
    } while (0)

static xattn_status st_open_close(const char *path)
{
    xattn_safetensors *st = NULL;
    xattn_status s = xattn_st_open(path, &st);
    if (s == XATTN_OK)
        xattn_st_close(st);
    else if (st)
        s = XATTN_ERR_ARG; /* out must stay NULL on failure */
    return s;
}

static xattn_status npy_load_free(const char *path)
{
    xattn_array a;
    xattn_status s = xattn_npy_load(path, &a);
    if (s != XATTN_OK && a.data) s = XATTN_ERR_ARG;
    xattn_array_free(&a);
    return s;
}

static int same_float(float a, float b)
{
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return a == b && signbit(a) == signbit(b);
}

/* ---- dtypes and conversion -------------------------------------------------------------- */

static void test_dtypes(void)
{
    static const char *names[] = {"F32", "F64", "F16", "BF16", "BOOL",
                                  "U8",  "I8",  "I16", "I32",  "I64"};
    static const size_t sizes[] = {4, 8, 2, 2, 1, 1, 1, 2, 4, 8};
    for (int i = 0; i < XATTN_DTYPE_COUNT; i++) {
        CHECK(strcmp(xattn_dtype_name((xattn_dtype)i), names[i]) == 0);
        CHECK(xattn_dtype_size((xattn_dtype)i) == sizes[i]);
    }
    CHECK(xattn_dtype_size(XATTN_DTYPE_COUNT) == 0);
    CHECK(xattn_dtype_name((xattn_dtype)99) != NULL);

    xattn_array a = {0};
    CHECK(xattn_array_numel(&a) == 1); /* 0-d */
    a.ndim = 3;
    a.shape[0] = 2, a.shape[1] = 3, a.shape[2] = 4;
    CHECK(xattn_array_numel(&a) == 24);
    a.shape[1] = 0;
    CHECK(xattn_array_numel(&a) == 0);
    a.shape[1] = -1;
    CHECK(xattn_array_numel(&a) < 0);
    a.shape[0] = a.shape[1] = a.shape[2] = INT64_C(1) << 32;
    CHECK(xattn_array_numel(&a) < 0);
    CHECK(xattn_array_numel(NULL) == 0);
    xattn_array_free(NULL);
}

static xattn_array make(xattn_dtype t, const void *src, int64_t n)
{
    xattn_array a = {0};
    a.dtype = t;
    a.ndim = 1;
    a.shape[0] = n;
    size_t bytes = (size_t)n * xattn_dtype_size(t);
    a.data = malloc(bytes ? bytes : 1);
    memcpy(a.data, src, bytes);
    return a;
}

static void check_to_f32(const char *what, xattn_dtype t, const void *src, const float *want,
                         int64_t n)
{
    xattn_array a = make(t, src, n);
    CHECK_OK(xattn_array_convert(&a, XATTN_F32));
    CHECK(a.dtype == XATTN_F32 && a.ndim == 1 && a.shape[0] == n);
    const float *got = a.data;
    for (int64_t i = 0; i < n; i++) {
        tu_checks++;
        if (!same_float(got[i], want[i])) {
            tu_failures++;
            fprintf(stderr, "%s[%lld]: got %.9g, want %.9g\n", what, (long long)i, got[i], want[i]);
        }
    }
    xattn_array_free(&a);
    CHECK(a.data == NULL && a.ndim == 0);
}

static void test_convert(void)
{
    /* F16: zeros, subnormals, normals, extremes, inf, nan */
    const uint16_t h[] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00, 0xc000,
                          0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x3555, 0x8001, 0xfbff};
    const float hf[] = {0.0f, -0.0f,           0x1p-24f,  1023 * 0x1p-24f, 0x1p-14f,
                        1.0f, -2.0f,           65504.0f,  INFINITY,        -INFINITY,
                        NAN,  0.333251953125f, -0x1p-24f, -65504.0f};
    check_to_f32("f16", XATTN_F16, h, hf, 14);

    const uint16_t bf[] = {0x3f80, 0xc040, 0x7f80, 0xff80, 0x7fc0, 0x0001, 0x8000, 0x4049};
    const float bff[] = {1.0f, -3.0f, INFINITY, -INFINITY, NAN, 0x1p-133f, -0.0f, 3.140625f};
    check_to_f32("bf16", XATTN_BF16, bf, bff, 8);

    const double d[] = {1.0 / 3.0,         1e300,   -1e300, -0.0, NAN, 1e-50, 1.0 + 0x1p-24,
                        1.0 + 3 * 0x1p-24, 65504.0, -2.5};
    const float df[] = {(float)(1.0 / 3.0), INFINITY, -INFINITY, -0.0f, NAN, 0.0f, 1.0f,
                        1.0f + 0x1p-22f,    65504.0f, -2.5f};
    check_to_f32("f64", XATTN_F64, d, df, 10);

    const int8_t i8[] = {-128, -1, 0, 127};
    const float i8f[] = {-128, -1, 0, 127};
    check_to_f32("i8", XATTN_I8, i8, i8f, 4);
    const uint8_t u8[] = {0, 1, 200, 255};
    const float u8f[] = {0, 1, 200, 255};
    check_to_f32("u8", XATTN_U8, u8, u8f, 4);
    const int16_t i16[] = {-32768, 32767, -5};
    const float i16f[] = {-32768, 32767, -5};
    check_to_f32("i16", XATTN_I16, i16, i16f, 3);
    const int32_t i32[] = {16777217, -7, INT32_MIN};
    const float i32f[] = {16777216.0f, -7, -2147483648.0f};
    check_to_f32("i32", XATTN_I32, i32, i32f, 3);
    const int64_t i64[] = {INT64_C(1) << 40, -3, INT64_MAX};
    const float i64f[] = {0x1p40f, -3, 0x1p63f};
    check_to_f32("i64", XATTN_I64, i64, i64f, 3);
    const uint8_t bo[] = {0, 1, 2, 255};
    const float bof[] = {0, 1, 1, 1};
    check_to_f32("bool", XATTN_BOOL, bo, bof, 4);
    const float f[] = {1.5f, -0.0f, NAN};
    check_to_f32("f32", XATTN_F32, f, f, 3);

    /* to BOOL: any integer or bool source, nonzero = true */
    const int32_t bi[] = {0, 5, -1, 256};
    xattn_array a = make(XATTN_I32, bi, 4);
    CHECK_OK(xattn_array_convert(&a, XATTN_BOOL));
    CHECK(a.dtype == XATTN_BOOL);
    CHECK(memcmp(a.data, "\0\1\1\1", 4) == 0);
    xattn_array_free(&a);
    const int64_t bl[] = {0, INT64_C(1) << 40, INT64_MIN};
    a = make(XATTN_I64, bl, 3);
    CHECK_OK(xattn_array_convert(&a, XATTN_BOOL));
    CHECK(memcmp(a.data, "\0\1\1", 3) == 0);
    xattn_array_free(&a);
    a = make(XATTN_BOOL, bo, 4);
    CHECK_OK(xattn_array_convert(&a, XATTN_BOOL));
    CHECK(memcmp(a.data, "\0\1\1\1", 4) == 0);
    xattn_array_free(&a);
    a = make(XATTN_U8, u8, 4);
    CHECK_OK(xattn_array_convert(&a, XATTN_BOOL));
    CHECK(memcmp(a.data, "\0\1\1\1", 4) == 0);
    xattn_array_free(&a);

    /* refused conversions leave the array untouched */
    a = make(XATTN_F32, f, 3);
    CHECK_FAIL(xattn_array_convert(&a, XATTN_BOOL), XATTN_ERR_UNSUPPORTED);
    CHECK_FAIL(xattn_array_convert(&a, XATTN_F16), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_array_convert(&a, (xattn_dtype)42), XATTN_ERR_ARG);
    CHECK(a.dtype == XATTN_F32 && ((float *)a.data)[0] == 1.5f);
    xattn_array_free(&a);
    CHECK_FAIL(xattn_array_convert(NULL, XATTN_F32), XATTN_ERR_ARG);

    /* empty and 0-d arrays */
    xattn_array e = {0};
    e.dtype = XATTN_F16;
    e.ndim = 2;
    e.shape[0] = 0;
    e.shape[1] = 5;
    CHECK_OK(xattn_array_convert(&e, XATTN_F32));
    CHECK(e.dtype == XATTN_F32);
    xattn_array_free(&e);
    xattn_array z = {0};
    z.dtype = XATTN_F64;
    double zv = -4.25;
    z.data = malloc(8);
    memcpy(z.data, &zv, 8);
    CHECK_OK(xattn_array_convert(&z, XATTN_F32));
    CHECK(z.ndim == 0 && ((float *)z.data)[0] == -4.25f);
    xattn_array_free(&z);
}

/* ---- round trips ------------------------------------------------------------------------ */

typedef struct sample {
    xattn_dtype t;
    int ndim;
    int64_t shape[XATTN_MAX_DIMS];
    unsigned char data[256];
} sample;

/* One sample per dtype plus 0-d, 8-d and empty shapes. */
static int make_samples(sample *s)
{
    int n = 0;
    const int64_t shapes[][XATTN_MAX_DIMS + 1] = {
        {2, 2, 3}, {1, 5}, {0}, {8, 1, 2, 1, 2, 1, 1, 2, 1}, {3, 0, 2, 7}, {2, 3, 1},
    };
    for (int t = 0; t < XATTN_DTYPE_COUNT; t++) {
        for (int k = 0; k < 6; k++) {
            sample *x = &s[n++];
            memset(x, 0, sizeof *x);
            x->t = (xattn_dtype)t;
            x->ndim = (int)shapes[k][0];
            for (int d = 0; d < x->ndim; d++) x->shape[d] = shapes[k][d + 1];
            for (size_t b = 0; b < sizeof x->data; b++) x->data[b] = (unsigned char)(b * 37 + t);
            if (t == XATTN_BOOL)
                for (size_t b = 0; b < sizeof x->data; b++)
                    x->data[b] = (unsigned char)(b % 3 == 0);
        }
    }
    return n;
}

static int64_t sample_numel(const sample *x)
{
    int64_t n = 1;
    for (int d = 0; d < x->ndim; d++) n *= x->shape[d];
    return n;
}

static void test_st_roundtrip(void)
{
    static sample s[64];
    int ns = make_samples(s);
    xattn_st_entry e[64];
    char names[64][32];
    for (int i = 0; i < ns; i++) {
        /* names out of alphabetical order, so offset order != name order */
        snprintf(names[i], sizeof names[i], "t%02d.%s", (ns - i) * 7 % 100,
                 xattn_dtype_name(s[i].t));
        e[i].name = names[i];
        e[i].dtype = s[i].t;
        e[i].ndim = s[i].ndim;
        memcpy(e[i].shape, s[i].shape, sizeof e[i].shape);
        e[i].data = s[i].data;
    }
    const char *meta[] = {"format", "pt", "heads", "8", "empty", ""};
    const char *p = tpath("round.safetensors");
    remember(p);
    CHECK_OK(xattn_st_save(p, e, (size_t)ns, meta, 3));

    size_t len;
    unsigned char *raw = read_bytes(p, &len);
    CHECK(raw && len > 8);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)raw[i] << (8 * i);
    CHECK(hl % 8 == 0 && raw[8] == '{' && hl + 8 <= len);

    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(p, &st));
    if (!st) {
        free(raw);
        return;
    }
    CHECK(strcmp(xattn_st_path(st), p) == 0);
    CHECK(xattn_st_count(st) == (size_t)ns);
    CHECK(xattn_st_meta_count(st) == 3);
    CHECK(xattn_st_meta_get(st, "heads") && strcmp(xattn_st_meta_get(st, "heads"), "8") == 0);
    CHECK(xattn_st_meta_get(st, "empty") && xattn_st_meta_get(st, "empty")[0] == '\0');
    CHECK(xattn_st_meta_get(st, "nope") == NULL);
    CHECK(strcmp(xattn_st_meta_key(st, 0), "format") == 0);
    CHECK(strcmp(xattn_st_meta_value(st, 0), "pt") == 0);
    CHECK(xattn_st_meta_key(st, 3) == NULL);
    for (int i = 0; i < ns; i++) {
        long idx = xattn_st_find(st, names[i]);
        CHECK(idx >= 0);
        if (idx < 0) continue;
        CHECK(strcmp(xattn_st_name(st, (size_t)idx), names[i]) == 0);
        CHECK(idx == i); /* offset order is the save order, empty tensors included */
        xattn_dtype t;
        int nd;
        int64_t shape[XATTN_MAX_DIMS];
        CHECK_OK(xattn_st_info(st, (size_t)idx, &t, &nd, shape));
        CHECK(t == s[i].t && nd == s[i].ndim);
        CHECK(memcmp(shape, s[i].shape, sizeof(int64_t) * (size_t)nd) == 0);

        xattn_array got, want = {0};
        CHECK_OK(xattn_st_get(st, names[i], XATTN_F32, &got));
        want.dtype = s[i].t;
        want.ndim = s[i].ndim;
        memcpy(want.shape, s[i].shape, sizeof want.shape);
        want.data = malloc(sizeof s[i].data);
        memcpy(want.data, s[i].data, sizeof s[i].data);
        CHECK_OK(xattn_array_convert(&want, XATTN_F32));
        int64_t n = sample_numel(&s[i]);
        CHECK(got.dtype == XATTN_F32 && got.ndim == s[i].ndim && xattn_array_numel(&got) == n);
        for (int64_t k = 0; k < n; k++)
            CHECK(same_float(((float *)got.data)[k], ((float *)want.data)[k]));
        xattn_array_free(&got);
        xattn_array_free(&want);

        if (s[i].t >= XATTN_BOOL) {
            CHECK_OK(xattn_st_get(st, names[i], XATTN_BOOL, &got));
            CHECK(got.dtype == XATTN_BOOL && xattn_array_numel(&got) == n);
            size_t es = xattn_dtype_size(s[i].t);
            for (int64_t k = 0; k < n; k++) {
                int nz = 0;
                for (size_t b = 0; b < es; b++) nz |= s[i].data[(size_t)k * es + b];
                CHECK(((uint8_t *)got.data)[k] == (nz != 0));
            }
            xattn_array_free(&got);
        } else {
            CHECK_FAIL_MSG(xattn_st_get(st, names[i], XATTN_BOOL, &got), XATTN_ERR_UNSUPPORTED,
                           names[i]);
        }
    }
    xattn_array tmp;
    CHECK_FAIL_MSG(xattn_st_get(st, "missing.weight", XATTN_F32, &tmp), XATTN_ERR_NOT_FOUND,
                   "no tensor named 'missing.weight'");
    CHECK(strstr(xattn_last_error(), "round.safetensors") != NULL);
    CHECK_FAIL(xattn_st_get(st, names[0], XATTN_F16, &tmp), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_st_get(st, names[0], XATTN_I32, &tmp), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_st_info(st, (size_t)ns, NULL, NULL, NULL), XATTN_ERR_ARG);
    CHECK(xattn_st_find(st, "missing") == -1);
    CHECK(xattn_st_name(st, (size_t)ns) == NULL);
    xattn_st_close(st);

    /* the same bytes from memory */
    st = NULL;
    CHECK_OK(xattn_st_parse(raw, len, "mem.safetensors", &st));
    CHECK(st && xattn_st_count(st) == (size_t)ns &&
          strcmp(xattn_st_path(st), "mem.safetensors") == 0);
    xattn_st_close(st);
    free(raw);

    /* no metadata: no __metadata__ key written */
    p = tpath("nometa.safetensors");
    remember(p);
    CHECK_OK(xattn_st_save(p, e, 2, NULL, 0));
    raw = read_bytes(p, &len);
    CHECK(raw && len >= 8);
    if (raw) {
        int found = 0;
        for (size_t i = 0; i + 12 <= len; i++) found |= memcmp(raw + i, "__metadata__", 12) == 0;
        CHECK(!found);
    }
    free(raw);
    CHECK_OK(xattn_st_open(p, &st));
    CHECK(st && xattn_st_meta_count(st) == 0 && xattn_st_count(st) == 2);
    xattn_st_close(st);

    /* no tensors at all */
    p = tpath("empty.safetensors");
    remember(p);
    CHECK_OK(xattn_st_save(p, NULL, 0, NULL, 0));
    CHECK_OK(xattn_st_open(p, &st));
    CHECK(st && xattn_st_count(st) == 0);
    xattn_st_close(st);

    /* writer argument checks */
    xattn_st_entry dup[2] = {e[0], e[1]};
    dup[1].name = dup[0].name;
    CHECK_FAIL_MSG(xattn_st_save(tpath("dup.safetensors"), dup, 2, NULL, 0), XATTN_ERR_ARG,
                   "dup.safetensors");
    dup[1] = e[1];
    dup[1].data = NULL;
    CHECK_FAIL(xattn_st_save(tpath("null.safetensors"), dup, 2, NULL, 0), XATTN_ERR_ARG);
    dup[1] = e[1];
    dup[1].shape[0] = -1;
    dup[1].ndim = 1;
    CHECK_FAIL(xattn_st_save(tpath("neg.safetensors"), dup, 2, NULL, 0), XATTN_ERR_ARG);
    const char *dmeta[] = {"k", "1", "k", "2"};
    CHECK_FAIL(xattn_st_save(tpath("dmeta.safetensors"), e, 1, dmeta, 2), XATTN_ERR_ARG);
    CHECK_FAIL_MSG(xattn_st_save("/nonexistent-dir/x/out.safetensors", e, 1, NULL, 0), XATTN_ERR_IO,
                   "out.safetensors");
    CHECK(access(tpath("dup.safetensors"), F_OK) != 0);
}

static void test_npy_roundtrip(void)
{
    static sample s[64];
    int ns = make_samples(s);
    for (int i = 0; i < ns; i++) {
        char name[64];
        snprintf(name, sizeof name, "a%d_%s.npy", i, xattn_dtype_name(s[i].t));
        const char *p = tpath(name);
        remember(p);
        xattn_array a = {0};
        a.dtype = s[i].t;
        a.ndim = s[i].ndim;
        memcpy(a.shape, s[i].shape, sizeof a.shape);
        a.data = s[i].data;
        if (s[i].t == XATTN_BF16) {
            CHECK_FAIL_MSG(xattn_npy_save(p, &a), XATTN_ERR_UNSUPPORTED, name);
            continue;
        }
        CHECK_OK(xattn_npy_save(p, &a));
        size_t len;
        unsigned char *raw = read_bytes(p, &len);
        CHECK(raw != NULL);
        if (!raw) continue;
        size_t hl = (size_t)raw[8] | ((size_t)raw[9] << 8);
        size_t nbytes = (size_t)sample_numel(&s[i]) * xattn_dtype_size(s[i].t);
        CHECK(memcmp(raw, "\x93NUMPY\x01\x00", 8) == 0);
        CHECK((10 + hl) % 64 == 0 && raw[10 + hl - 1] == '\n' && len == 10 + hl + nbytes);
        char hdr[256] = {0};
        memcpy(hdr, raw + 10, hl < 255 ? hl : 255);
        if (s[i].ndim == 0) CHECK(strstr(hdr, "'shape': ()") != NULL);
        if (s[i].ndim == 1) CHECK(strstr(hdr, "'shape': (5,)") != NULL);
        if (s[i].ndim == 2 && s[i].shape[0] == 2) CHECK(strstr(hdr, "(2, 3)") != NULL);
        if (s[i].ndim == 8) CHECK(strstr(hdr, "(1, 2, 1, 2, 1, 1, 2, 1)") != NULL);
        free(raw);

        xattn_array b;
        CHECK_OK(xattn_npy_load(p, &b));
        CHECK(b.dtype == s[i].t && b.ndim == s[i].ndim);
        CHECK(memcmp(b.shape, s[i].shape, sizeof(int64_t) * (size_t)b.ndim) == 0);
        CHECK(nbytes == 0 || memcmp(b.data, s[i].data, nbytes) == 0);
        xattn_array_free(&b);
    }
    xattn_array bad = {0};
    bad.dtype = XATTN_F32;
    bad.ndim = 1;
    bad.shape[0] = 4;
    CHECK_FAIL(xattn_npy_save(tpath("nodata.npy"), &bad), XATTN_ERR_ARG);
    bad.ndim = 9;
    CHECK_FAIL(xattn_npy_save(tpath("ndim.npy"), &bad), XATTN_ERR_ARG);
    float one = 1;
    xattn_array ok = {0};
    ok.data = &one;
    CHECK_FAIL_MSG(xattn_npy_save("/nonexistent-dir/y.npy", &ok), XATTN_ERR_IO, "y.npy");
}

/* Hand-written headers that must be accepted. */
static void test_npy_variants(void)
{
    struct {
        int major;
        const char *dict;
        xattn_dtype t;
        int ndim;
        int64_t d0, numel;
    } ok[] = {
        {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", XATTN_F32, 2, 2, 6},
        {2, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", XATTN_F64, 1, 3, 3},
        {3, "{'descr': '<i2', 'fortran_order': False, 'shape': (3,)}", XATTN_I16, 1, 3, 3},
        {1, "{\"shape\": (4,) ,\"descr\":\"|u1\",\"fortran_order\":False}", XATTN_U8, 1, 4, 4},
        {1, "  { 'fortran_order' : False , 'shape' : ( 2 , 2 , ) , 'descr' : '=f2' , }   ",
         XATTN_F16, 2, 2, 4},
        {1, "{'descr': '|b1', 'fortran_order': False, 'shape': (), }", XATTN_BOOL, 0, 0, 1},
        {1, "{'descr': '>i1', 'fortran_order': False, 'shape': (5L,), }", XATTN_I8, 1, 5, 5},
        {1, "{'descr': '<i8', 'fortran_order': True, 'shape': (1, 3), }", XATTN_I64, 2, 1, 3},
        {1, "{'descr': '<i4', 'fortran_order': True, 'shape': (0, 3), }", XATTN_I32, 2, 0, 0},
        {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", XATTN_F32, 1, 2, 2},
        {1, "{'descr': 'f4', 'fortran_order': False, 'shape': (2,), }", XATTN_F32, 1, 2, 2},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "ok%zu.npy", i);
        const char *p = npy_file(name, ok[i].major, ok[i].dict,
                                 (size_t)ok[i].numel * xattn_dtype_size(ok[i].t));
        xattn_array a;
        xattn_status s = xattn_npy_load(p, &a);
        CHECK_OK(s);
        if (s != XATTN_OK) {
            fprintf(stderr, "  header: %s\n", ok[i].dict);
            continue;
        }
        CHECK(a.dtype == ok[i].t && a.ndim == ok[i].ndim && xattn_array_numel(&a) == ok[i].numel);
        if (ok[i].ndim > 0) CHECK(a.shape[0] == ok[i].d0);
        if (ok[i].t == XATTN_BOOL) CHECK(((uint8_t *)a.data)[0] == 1); /* byte 0x01 */
        xattn_array_free(&a);
    }
}

/* ---- malformed files -------------------------------------------------------------------- */

static void test_st_broken(void)
{
    const char *p;
    p = write_bytes("empty.st", "", 0);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "empty.st");
    p = write_bytes("seven.st", "\x02\0\0\0\0\0\0", 7);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "seven.st");
    p = write_bytes("hlen.st", "\xff\0\0\0\0\0\0\0{}", 10);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "hlen.st");
    p = write_bytes("hlen64.st", "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "hlen64.st");
    p = write_bytes("hzero.st", "\0\0\0\0\0\0\0\0", 8);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "hzero.st");
    p = st_file("notjson.st", "{\"a\": ", 0);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "notjson.st");
    p = st_file("garbage.st", "{} x", 0);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "garbage.st");
    p = st_file("array.st", "[1, 2]", 0);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "array.st");
    p = st_file("entry.st", "{\"w\": 5}", 0);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "entry.st");

#define T(name, json, dlen, status, needle)                                                        \
    do {                                                                                           \
        const char *p_ = st_file(name, json, dlen);                                                \
        CHECK_FAIL_MSG(st_open_close(p_), status, name);                                           \
        CHECK_FAIL_MSG(st_open_close(p_), status, needle);                                         \
    } while (0)
    T("dtype.st",
      "{\"to_q.weight\": {\"dtype\": \"Q7\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 1,
      XATTN_ERR_UNSUPPORTED, "'Q7'");
    T("dtype2.st",
      "{\"to_q.weight\": {\"dtype\": \"U32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
      XATTN_ERR_UNSUPPORTED, "to_q.weight");
    T("dtype3.st", "{\"w\": {\"dtype\": 4, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
      XATTN_ERR_FORMAT, "'w'");
    T("nodtype.st", "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, XATTN_ERR_FORMAT,
      "dtype");
    T("noshape.st", "{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, XATTN_ERR_FORMAT,
      "shape");
    T("shapeobj.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": 4, \"data_offsets\": [0, 4]}}", 4,
      XATTN_ERR_FORMAT, "shape");
    T("neg.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4,
      XATTN_ERR_FORMAT, "negative");
    T("frac.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4,
      XATTN_ERR_FORMAT, "not an integer");
    T("strdim.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [\"1\"], \"data_offsets\": [0, 4]}}", 4,
      XATTN_ERR_FORMAT, "shape[0]");
    T("huge.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1e300], \"data_offsets\": [0, 4]}}", 4,
      XATTN_ERR_FORMAT, "too large");
    T("nine.st",
      "{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 4]}}", 4,
      XATTN_ERR_UNSUPPORTED, "9 dimensions");
    T("ovf.st",
      "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296], "
      "\"data_offsets\": [0, 4]}}",
      4, XATTN_ERR_FORMAT, "overflows");
    T("ovf2.st",
      "{\"w\": {\"dtype\": \"I64\", \"shape\": [4294967296, 1073741824], "
      "\"data_offsets\": [0, 4]}}",
      4, XATTN_ERR_FORMAT, "overflows");
    T("past.st",
      "{\"to_q.weight\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 999999]}}",
      4096, XATTN_ERR_FORMAT,
      "tensor 'to_q.weight': data_offsets [0, 999999] past end of data (4096 bytes)");
    T("past2.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", 8,
      XATTN_ERR_FORMAT, "past end");
    T("overlap.st",
      "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
      " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
      12, XATTN_ERR_FORMAT, "overlap");
    T("overlap2.st",
      "{\"b\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [2, 4]},"
      " \"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
      12, XATTN_ERR_FORMAT, "overlap");
    T("size.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", 16,
      XATTN_ERR_FORMAT, "needs 12");
    T("order.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}", 16,
      XATTN_ERR_FORMAT, "begin after end");
    T("offs3.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 16,
      XATTN_ERR_FORMAT, "data_offsets");
    T("offs1.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4]}}", 16,
      XATTN_ERR_FORMAT, "data_offsets");
    T("offsneg.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 16,
      XATTN_ERR_FORMAT, "data_offsets[0]");
    T("nooffs.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 16, XATTN_ERR_FORMAT,
      "data_offsets");
    T("dup.st",
      "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
      " \"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
      8, XATTN_ERR_FORMAT, "'w' appears twice");
    T("meta.st", "{\"__metadata__\": {\"heads\": 8}}", 0, XATTN_ERR_FORMAT, "heads");
    T("meta2.st", "{\"__metadata__\": [\"x\"]}", 0, XATTN_ERR_FORMAT, "__metadata__");
    T("meta3.st", "{\"__metadata__\": {\"a\": \"1\"}, \"__metadata__\": {}}", 0, XATTN_ERR_FORMAT,
      "__metadata__");
    T("ctrl.st", "{\"a\\nb\": {\"dtype\": \"XX\", \"shape\": [], \"data_offsets\": [0, 4]}}", 4,
      XATTN_ERR_UNSUPPORTED, "a?b");
#undef T

    /* accepted oddities: trailing spaces, gaps, empty tensors anywhere, 0-d */
    xattn_safetensors *st = NULL;
    p = st_file("fine.st",
                "{\"b\": {\"dtype\": \"U8\", \"shape\": [0, 3], \"data_offsets\": [2, 2]},"
                " \"a\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [0, 4]},"
                " \"c\": {\"dtype\": \"I16\", \"shape\": [2], \"data_offsets\": [8, 12]},"
                " \"__metadata__\": {\"k\": \"v\"}}    \n",
                12);
    CHECK_OK(xattn_st_open(p, &st));
    if (st) {
        CHECK(xattn_st_count(st) == 3);
        CHECK(strcmp(xattn_st_name(st, 0), "a") == 0);
        CHECK(strcmp(xattn_st_name(st, 1), "b") == 0);
        CHECK(strcmp(xattn_st_name(st, 2), "c") == 0);
        CHECK(strcmp(xattn_st_meta_get(st, "k"), "v") == 0);
        xattn_array a;
        CHECK_OK(xattn_st_get(st, "c", XATTN_F32, &a));
        /* bytes 8..11 are 08 09 0a 0b: i16 0x0908, 0x0b0a */
        CHECK(a.ndim == 1 && ((float *)a.data)[0] == 0x0908 && ((float *)a.data)[1] == 0x0b0a);
        xattn_array_free(&a);
        CHECK_OK(xattn_st_get(st, "b", XATTN_BOOL, &a));
        CHECK(a.ndim == 2 && a.shape[1] == 3 && xattn_array_numel(&a) == 0);
        xattn_array_free(&a);
        xattn_st_close(st);
    }

    xattn_safetensors *o = (xattn_safetensors *)1;
    CHECK_FAIL_MSG(xattn_st_open(tpath("does-not-exist.safetensors"), &o), XATTN_ERR_IO,
                   "does-not-exist.safetensors");
    CHECK(o == NULL);
    CHECK_FAIL_MSG(xattn_st_open(g_dir, &o), XATTN_ERR_IO, g_dir);
    CHECK_FAIL(xattn_st_open(NULL, &o), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_st_parse(NULL, 5, "x", &o), XATTN_ERR_ARG);
    CHECK_FAIL_MSG(xattn_st_parse("", 0, NULL, &o), XATTN_ERR_FORMAT, "<memory>");
}

/* The first local header of a zip archive whose first entry is `entry`, then a few bytes. */
static size_t zip_start(unsigned char *b, const char *entry)
{
    size_t n = strlen(entry);
    memset(b, 0, 30);
    memcpy(b, "PK\3\4", 4);
    b[26] = (unsigned char)n;
    memcpy(b + 30, entry, n);
    memcpy(b + 30 + n, "\x80\x02}q\0.", 6);
    return 30 + n + 6;
}

/* Another format's checkpoint given as safetensors: one line naming the format. */
static void test_st_foreign(void)
{
    const char *torch_msg =
        "this is a PyTorch pickle checkpoint (torch.save), not safetensors: save "
        "it with safetensors.torch.save_file(model.state_dict(), "
        "'model.safetensors')";
    unsigned char b[128];
    xattn_safetensors *o = (xattn_safetensors *)1;
    size_t n = zip_start(b, "archive/data.pkl");
    const char *p = write_bytes("model.pt", b, n);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, torch_msg);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "model.pt: this is");
    CHECK_FAIL_MSG(xattn_st_parse(b, n, "mem.pth", &o), XATTN_ERR_FORMAT,
                   "mem.pth: this is a PyTorch");
    CHECK(o == NULL);
    CHECK_FAIL_MSG(xattn_st_parse(b, 4, "cut.pt", &o), XATTN_ERR_FORMAT, torch_msg);
    /* legacy torch.save: pickle protocol 2, the magic number first */
    p = write_bytes("legacy.pt", "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, torch_msg);
    CHECK_FAIL_MSG(xattn_st_parse("\x80\x04\x95", 3, "p4.pkl", &o), XATTN_ERR_FORMAT, torch_msg);
    n = zip_start(b, "a.npy");
    CHECK_FAIL_MSG(xattn_st_parse(b, n, "a.npz", &o), XATTN_ERR_FORMAT,
                   "a.npz: this is a NumPy .npz");
    n = zip_start(b, "notes.txt");
    CHECK_FAIL_MSG(xattn_st_parse(b, n, "x.zip", &o), XATTN_ERR_FORMAT,
                   "x.zip: this is a zip archive");
    /* not a pickle: 0x80 0x02 also starts a valid header of 640 bytes */
    char json[641];
    memset(json, ' ', 640);
    memcpy(json, "{}", 2);
    json[640] = '\0';
    p = st_file("hlen640.st", json, 0);
    CHECK_OK(st_open_close(p));
    CHECK_FAIL_MSG(xattn_st_parse("\x80\x01\0\0\0\0\0\0", 8, "p1.st", &o), XATTN_ERR_FORMAT,
                   "past end of file");
}

static void test_npy_broken(void)
{
    const char *p;
    p = write_bytes("magic.npy", "\x93NUMPX\x01\x00\x10\x00{}", 12);
    CHECK_FAIL_MSG(npy_load_free(p), XATTN_ERR_FORMAT, "magic.npy");
    p = write_bytes("empty.npy", "", 0);
    CHECK_FAIL_MSG(npy_load_free(p), XATTN_ERR_FORMAT, "empty.npy");
    p = write_bytes("short.npy", "\x93NUMPY\x01\x00\x10", 9);
    CHECK_FAIL_MSG(npy_load_free(p), XATTN_ERR_FORMAT, "short.npy");
    p = write_bytes("short2.npy", "\x93NUMPY\x02\x00\x10\x00", 10);
    CHECK_FAIL_MSG(npy_load_free(p), XATTN_ERR_FORMAT, "short2.npy");
    p = write_bytes("hlen.npy", "\x93NUMPY\x01\x00\x00\x01{'descr'", 18);
    CHECK_FAIL_MSG(npy_load_free(p), XATTN_ERR_FORMAT, "hlen.npy");
    p = write_bytes("hlen2.npy", "\x93NUMPY\x02\x00\xff\xff\xff\xff{'descr'", 20);
    CHECK_FAIL_MSG(npy_load_free(p), XATTN_ERR_FORMAT, "hlen2.npy");
    p = write_bytes("ver.npy", "\x93NUMPY\x04\x00\x02\x00{}", 12);
    CHECK_FAIL_MSG(npy_load_free(p), XATTN_ERR_UNSUPPORTED, "ver.npy");

#define N(name, dict, dlen, status, needle)                                                        \
    do {                                                                                           \
        const char *p_ = npy_file(name, 1, dict, dlen);                                            \
        CHECK_FAIL_MSG(npy_load_free(p_), status, name);                                           \
        CHECK_FAIL_MSG(npy_load_free(p_), status, needle);                                         \
    } while (0)
    N("trunc.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 20,
      XATTN_ERR_FORMAT, "trunc.npy: truncated: expected 24 data bytes, found 20");
    N("trail.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 25,
      XATTN_ERR_FORMAT, "trailing");
    N("be.npy", "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24,
      XATTN_ERR_UNSUPPORTED,
      "be.npy: big-endian data ('>f4') is not supported; convert with "
      "arr.astype('<f4')");
    N("be8.npy", "{'descr': '>i8', 'fortran_order': False, 'shape': (1,), }", 8,
      XATTN_ERR_UNSUPPORTED, "astype('<i8')");
    N("fortran.npy", "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24,
      XATTN_ERR_UNSUPPORTED, "ascontiguousarray");
    N("u4.npy", "{'descr': '<u4', 'fortran_order': False, 'shape': (2,), }", 8,
      XATTN_ERR_UNSUPPORTED, "'<u4'");
    N("c8.npy", "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", 16,
      XATTN_ERR_UNSUPPORTED, "'<c8'");
    N("nobo.npy", "{'descr': '|f4', 'fortran_order': False, 'shape': (2,), }", 8,
      XATTN_ERR_UNSUPPORTED, "'|f4'");
    N("obj.npy", "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", 16,
      XATTN_ERR_UNSUPPORTED, "object");
    N("rec.npy", "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8,
      XATTN_ERR_UNSUPPORTED, "structured");
    N("shape1.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", 8,
      XATTN_ERR_FORMAT, "shape");
    N("shape2.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", 8,
      XATTN_ERR_FORMAT, "negative");
    N("shape3.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3", 8, XATTN_ERR_FORMAT,
      "shape");
    N("shape4.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], }", 24,
      XATTN_ERR_FORMAT, "shape");
    N("shape5.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }",
      8, XATTN_ERR_FORMAT, "too large");
    N("shape6.npy",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
      8, XATTN_ERR_FORMAT, "overflows");
    N("shape7.npy",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1), }", 4,
      XATTN_ERR_UNSUPPORTED, "8 dimensions");
    N("shape8.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (,), }", 4, XATTN_ERR_FORMAT,
      "shape");
    N("shape9.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2,,), }", 8,
      XATTN_ERR_FORMAT, "shape");
    N("fo.npy", "{'descr': '<f4', 'fortran_order': maybe, 'shape': (2,), }", 8, XATTN_ERR_FORMAT,
      "fortran_order");
    N("nokey.npy", "{'descr': '<f4', 'shape': (2,), }", 8, XATTN_ERR_FORMAT, "fortran_order");
    N("extra.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", 8,
      XATTN_ERR_FORMAT, "unknown key");
    N("twice.npy", "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", 8,
      XATTN_ERR_FORMAT, "twice");
    N("nodict.npy", "'descr': '<f4'", 8, XATTN_ERR_FORMAT, "expected '{'");
    N("after.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} xyz", 8,
      XATTN_ERR_FORMAT, "after");
    N("quote.npy", "{'descr: '<f4', 'fortran_order': False, 'shape': (2,)}", 8, XATTN_ERR_FORMAT,
      "quote.npy");
    N("open.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2,),", 8, XATTN_ERR_FORMAT,
      "unterminated");
#undef N
    CHECK_FAIL_MSG(npy_load_free(tpath("missing.npy")), XATTN_ERR_IO, "missing.npy");
    xattn_array a;
    CHECK_FAIL(xattn_npy_parse(NULL, 3, "x", &a), XATTN_ERR_ARG);
    CHECK_FAIL_MSG(xattn_npy_parse("abc", 3, NULL, &a), XATTN_ERR_FORMAT, "<memory>");
    CHECK_FAIL(xattn_npy_load(NULL, &a), XATTN_ERR_ARG);
}

/* Headers built to exhaust the parser: deep nesting, huge numbers, huge names. */
static void test_hostile(void)
{
    const size_t deep = 200000;
    char *json = malloc(2 * deep + 64);
    /* [[[[...]]]] and {"a":{"a":...}} far past any sane nesting */
    memset(json, '[', deep);
    memset(json + deep, ']', deep);
    json[2 * deep] = '\0';
    const char *p = st_file("bomb.st", json, 0);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "bomb.st: header is not valid JSON");
    size_t k = 0;
    for (size_t i = 0; i < deep / 8; i++, k += 5) memcpy(json + k, "{\"a\":", 5);
    json[k++] = '1';
    memset(json + k, '}', deep / 8);
    json[k + deep / 8] = '\0';
    p = st_file("bomb2.st", json, 0);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "bomb2.st");
    /* nesting inside a tensor's shape */
    k = (size_t)sprintf(json, "{\"w\": {\"dtype\": \"F32\", \"shape\": ");
    memset(json + k, '[', 5000);
    memset(json + k + 5000, ']', 5000);
    sprintf(json + k + 10000, ", \"data_offsets\": [0, 0]}}");
    p = st_file("bomb3.st", json, 0);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "bomb3.st");

    /* offsets at and past 2^53 and near INT64_MAX, as exact integers */
    p = st_file("i64.st",
                "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": "
                "[9223372036854775799, 9223372036854775807]}}",
                8);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "data_offsets[0] is too large");
    p = st_file("u64.st",
                "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": "
                "[0, 18446744073709551615]}}",
                8);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "data_offsets[1] is too large");
    p = st_file("p53.st",
                "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": "
                "[9007199254740984, 9007199254740992]}}",
                8);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "past end of data");
    p = st_file("shape53.st",
                "{\"w\": {\"dtype\": \"F64\", \"shape\": [9007199254740992], \"data_offsets\": "
                "[0, 8]}}",
                8);
    CHECK_FAIL(st_open_close(p), XATTN_ERR_FORMAT);
    p = write_bytes("hlen63.st", "\0\0\0\0\0\0\0\x80{}", 10);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_FORMAT, "header length 9223372036854775808");

    /* a 100 KB tensor name with control characters: the message stays short and one line */
    const size_t nl = 100000;
    k = (size_t)sprintf(json, "{\"");
    for (size_t i = 0; i < nl; i++) {
        if (i % 7 == 3) { /* JSON "\n": a newline in the name */
            json[k++] = '\\';
            json[k++] = 'n';
        } else {
            json[k++] = 'x';
        }
    }
    sprintf(json + k, "\": {\"dtype\": \"F99\", \"shape\": [1], \"data_offsets\": [0, 4]}}");
    p = st_file("longname.st", json, 4);
    CHECK_FAIL_MSG(st_open_close(p), XATTN_ERR_UNSUPPORTED, "xxx?xxx");
    CHECK(strlen(xattn_last_error()) < 400);

    /* .npy: a shape far beyond the file, and a version-2 header length past the end */
    p = npy_file("tera.npy", 1,
                 "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }", 16);
    CHECK_FAIL_MSG(npy_load_free(p), XATTN_ERR_FORMAT,
                   "tera.npy: truncated: expected 4000000000000 data bytes, found 16");
    p = npy_file("tera2.npy", 2,
                 "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
                 8);
    CHECK_FAIL_MSG(npy_load_free(p), XATTN_ERR_FORMAT, "tera2.npy");
    p = npy_file("zero_huge.npy", 1,
                 "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 0), }",
                 0);
    xattn_array a;
    CHECK_OK(xattn_npy_load(p, &a)); /* an empty array of a huge nominal shape is valid */
    CHECK(xattn_array_numel(&a) == 0 && a.shape[0] == 4611686018427387904LL);
    CHECK_OK(xattn_array_convert(&a, XATTN_F32));
    xattn_array_free(&a);
    free(json);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/xattn_test_io_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_dtypes();
    test_convert();
    test_st_roundtrip();
    test_npy_roundtrip();
    test_npy_variants();
    test_st_broken();
    test_st_foreign();
    test_npy_broken();
    test_hostile();
    for (int i = 0; i < g_nmade; i++) remove(g_made[i]);
    if (rmdir(g_dir) != 0) fprintf(stderr, "note: could not remove %s\n", g_dir);
    return tu_finish("test_io");
}
