/* PNG heat-maps (xattn_png_heatmap): writes maps of several shapes into a temporary directory,
 * reads them back with libpng's png_image API and checks the picture's design: the map area's
 * size, the colour bar's ends, where a lone hot cell lands, NaN cells, box filtering of large
 * maps; then the argument and I/O errors. */
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Reading the pictures back needs libpng in the test too: XATTN_HAVE_PNG (or XATTN_NO_PNG) when
 * the build says so, else whether <png.h> is there. */
#if defined(XATTN_HAVE_PNG)
#define TEST_HAVE_PNG_H 1
#elif !defined(XATTN_NO_PNG) && defined(__has_include)
#if __has_include(<png.h>)
#define TEST_HAVE_PNG_H 1
#endif
#endif

#ifdef TEST_HAVE_PNG_H
#include <png.h>

/* The design the library documents (src/io/png.c): viridis ends, NaN grey, map area size. */
static const unsigned char CMAP_LO[3] = {68, 1, 84};
static const unsigned char CMAP_HI[3] = {253, 231, 37};
static const unsigned char CMAP_MID[3] = {33, 145, 140};
static const unsigned char NAN_GREY[3] = {153, 153, 153};
static const unsigned char INK[3] = {0, 0, 0};
static const unsigned char WHITE[3] = {255, 255, 255};

static void expected_area(int64_t rows, int64_t cols, int side, int *W, int *H)
{
    int min_side = side < 128 ? side : 128;
    if (cols >= rows) {
        *W = side;
        *H = (int)lrint((double)side * (double)rows / (double)cols);
        if (*H < min_side) *H = min_side;
    } else {
        *H = side;
        *W = (int)lrint((double)side * (double)cols / (double)rows);
        if (*W < min_side) *W = min_side;
    }
}

typedef struct picture {
    unsigned char *rgb;
    int w, h;
    int x0, y0, W, H; /* map area (inside its frame) */
    int bx, bw;       /* colour bar (inside its frame), rows y0 .. y0 + H */
} picture;

static const unsigned char *at(const picture *p, int x, int y)
{
    static const unsigned char outside[3] = {1, 2, 3};
    if (x < 0 || y < 0 || x >= p->w || y >= p->h) return outside;
    return p->rgb + ((size_t)y * (size_t)p->w + (size_t)x) * 3;
}

static int is(const unsigned char *c, const unsigned char *want)
{
    return c[0] == want[0] && c[1] == want[1] && c[2] == want[2];
}

static void free_picture(picture *p)
{
    free(p->rgb);
    memset(p, 0, sizeof *p);
}

/* Reads path and finds the map's and the colour bar's frames: the map's top edge is the first
 * row holding a black run of 40 pixels or more (text never does), the longest such run. */
static int read_picture(const char *path, picture *p)
{
    memset(p, 0, sizeof *p);
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&im, path)) {
        fprintf(stderr, "%s: cannot read back: %s\n", path, im.message);
        return -1;
    }
    im.format = PNG_FORMAT_RGB;
    p->w = (int)im.width;
    p->h = (int)im.height;
    p->rgb = (unsigned char *)malloc(PNG_IMAGE_SIZE(im));
    if (!p->rgb || !png_image_finish_read(&im, NULL, p->rgb, 0, NULL)) {
        fprintf(stderr, "%s: cannot decode: %s\n", path, im.message);
        png_image_free(&im);
        free_picture(p);
        return -1;
    }
    for (int y = 0; y < p->h && !p->W; y++) {
        int best = 0, best_x = 0;
        for (int x = 0; x < p->w;) {
            int e = x;
            while (e < p->w && is(at(p, e, y), INK)) e++;
            if (e - x > best) {
                best = e - x;
                best_x = x;
            }
            x = e > x ? e : x + 1;
        }
        if (best >= 40) {
            p->x0 = best_x + 1;
            p->W = best - 2;
            p->y0 = y + 1;
        }
    }
    if (!p->W) {
        fprintf(stderr, "%s: no map frame found\n", path);
        free_picture(p);
        return -1;
    }
    int e = p->y0 - 1;
    while (e < p->h && is(at(p, p->x0 - 1, e), INK)) e++;
    p->H = e - p->y0 - 1;
    /* colour bar: the next frame to the right, on the map's middle row */
    int ym = p->y0 + p->H / 2, x = p->x0 + p->W + 1;
    while (x < p->w && !is(at(p, x, ym), INK)) x++;
    p->bx = x + 1;
    x = p->bx;
    while (x < p->w && !is(at(p, x, ym), INK)) x++;
    p->bw = x - p->bx;
    return 0;
}

/* Pixel at the centre of cell (r, c) of a map (rows, cols) enlarged to the map area. */
static const unsigned char *cell(const picture *p, int64_t r, int64_t c, int64_t rows, int64_t cols)
{
    int x = p->x0 + (int)(((2 * c + 1) * p->W) / (2 * cols));
    int y = p->y0 + (int)(((2 * r + 1) * p->H) / (2 * rows));
    return at(p, x, y);
}

/* Checks the map area's size and the colour bar's ends; returns 0 if the picture is usable. */
static int check_layout(const char *what, const picture *p, int64_t rows, int64_t cols, int side)
{
    int W, H;
    expected_area(rows, cols, side, &W, &H);
    int ok = p->W == W && p->H == H;
    CHECK(ok);
    if (!ok) {
        fprintf(stderr, "%s: map area %d x %d, expected %d x %d\n", what, p->W, p->H, W, H);
        return -1;
    }
    CHECK(p->x0 + W + 1 < p->bx && p->bw >= 10 && p->bx + p->bw < p->w);
    CHECK(is(at(p, p->bx + p->bw / 2, p->y0), CMAP_HI));            /* top: the maximum  */
    CHECK(is(at(p, p->bx + p->bw / 2, p->y0 + p->H - 1), CMAP_LO)); /* bottom: minimum */
    CHECK(is(at(p, p->bx, p->y0 - 1), INK) && is(at(p, p->bx - 1, p->y0 + H / 2), INK));
    /* a white margin all round */
    CHECK(is(at(p, 0, 0), WHITE) && is(at(p, p->w - 1, p->h - 1), WHITE));
    /* text above (title) and below (tick labels, x label) the map */
    int above = 0, below = 0;
    for (int y = 0; y < p->y0 - 1; y++)
        for (int x = 0; x < p->w; x++) above += is(at(p, x, y), INK);
    for (int y = p->y0 + H + 1; y < p->h; y++)
        for (int x = 0; x < p->x0 + W; x++) below += is(at(p, x, y), INK);
    CHECK(above > 50);
    CHECK(below > 100);
    return 0;
}

/* 1 if a NaN-grey pixel lies below the colour bar (the NaN legend). */
static int nan_legend(const picture *p)
{
    for (int y = p->y0 + p->H + 1; y < p->h; y++)
        for (int x = p->bx - 1; x < p->w; x++)
            if (is(at(p, x, y), NAN_GREY)) return 1;
    return 0;
}

static char tmpdir[256];

static const char *out_path(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    return buf;
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static int tmp_left(const char *path)
{
    char t[600];
    snprintf(t, sizeof t, "%s.tmp", path);
    return exists(t);
}

static const xattn_heatmap_opts OPTS = {
    .title = "test map", .x_label = "key / context position j", .y_label = "query position i"};

/* 1 x 1: one colour, the middle of the map (vmin == vmax). */
static void test_one_cell(void)
{
    const char *path = out_path("one.png");
    float v = 0.25f;
    CHECK_OK(xattn_png_heatmap(path, &v, 1, 1, &OPTS));
    CHECK(!tmp_left(path));
    picture p;
    if (read_picture(path, &p)) {
        CHECK(0);
        return;
    }
    if (!check_layout("1x1", &p, 1, 1, 768)) {
        CHECK(is(at(&p, p.x0, p.y0), CMAP_MID));
        CHECK(is(at(&p, p.x0 + p.W - 1, p.y0 + p.H - 1), CMAP_MID));
        CHECK(is(cell(&p, 0, 0, 1, 1), CMAP_MID));
        CHECK(!nan_legend(&p));
    }
    free_picture(&p);
}

/* A thin map along x or y: the shorter side is clamped, a hot cell shows near its place. */
static void test_thin(int64_t rows, int64_t cols, int64_t hot)
{
    char name[64];
    snprintf(name, sizeof name, "thin_%lldx%lld.png", (long long)rows, (long long)cols);
    const char *path = out_path(name);
    int64_t n = rows * cols;
    float *m = (float *)calloc((size_t)n, sizeof(float));
    m[hot] = 1.0f;
    CHECK_OK(xattn_png_heatmap(path, m, rows, cols, &OPTS));
    picture p;
    if (read_picture(path, &p)) {
        CHECK(0);
        free(m);
        return;
    }
    if (!check_layout(name, &p, rows, cols, 768)) {
        /* the pixel line holding `hot` is within a pixel of hot * len / n; far away it is 0 */
        int along_x = cols > 1, len = along_x ? p.W : p.H;
        int pos = (int)((hot * len) / n), found = 0;
        for (int d = -1; d <= 1; d++) {
            int x = along_x ? p.x0 + pos + d : p.x0 + p.W / 2;
            int y = along_x ? p.y0 + p.H / 2 : p.y0 + pos + d;
            found |= !is(at(&p, x, y), CMAP_LO);
        }
        CHECK(found);
        for (int d = 4; d < 20; d++) {
            int x = along_x ? p.x0 + pos + d : p.x0 + p.W / 2;
            int y = along_x ? p.y0 + p.H / 2 : p.y0 + pos + d;
            CHECK(is(at(&p, x, y), CMAP_LO));
        }
        CHECK(!nan_legend(&p));
    }
    free_picture(&p);
    free(m);
}

/* 37 x 53, enlarged: one hot cell at its exact place, NaN cells grey, the NaN legend. */
static void test_hot_cell_with_nans(void)
{
    const int64_t R = 37, C = 53;
    const char *path = out_path("hot.png");
    float m[37 * 53];
    for (int i = 0; i < R * C; i++) m[i] = 0.0f;
    m[20 * C + 30] = 1.0f;
    m[0] = NAN;
    m[10 * C + 5] = NAN;
    m[36 * C + 52] = NAN;
    CHECK_OK(xattn_png_heatmap(path, m, R, C, &OPTS));
    picture p;
    if (read_picture(path, &p)) {
        CHECK(0);
        return;
    }
    if (!check_layout("37x53", &p, R, C, 768)) {
        CHECK(is(cell(&p, 20, 30, R, C), CMAP_HI));
        CHECK(is(cell(&p, 20, 29, R, C), CMAP_LO));
        CHECK(is(cell(&p, 20, 31, R, C), CMAP_LO));
        CHECK(is(cell(&p, 19, 30, R, C), CMAP_LO));
        CHECK(is(cell(&p, 21, 30, R, C), CMAP_LO));
        CHECK(is(cell(&p, 0, 0, R, C), NAN_GREY));
        CHECK(is(cell(&p, 10, 5, R, C), NAN_GREY));
        CHECK(is(cell(&p, 36, 52, R, C), NAN_GREY));
        CHECK(is(cell(&p, 36, 51, R, C), CMAP_LO));
        CHECK(nan_legend(&p));
        /* the hot cell's block of pixels is exactly the cell: its corners are hot, the pixels
         * just outside are not */
        int xa = p.x0 + (int)((30 * p.W + C - 1) / C), xb = p.x0 + (int)((31 * p.W + C - 1) / C);
        int yc = p.y0 + (int)((41 * p.H) / (2 * R));
        CHECK(is(at(&p, xa, yc), CMAP_HI) && is(at(&p, xb - 1, yc), CMAP_HI));
        CHECK(is(at(&p, xa - 1, yc), CMAP_LO) && is(at(&p, xb, yc), CMAP_LO));
    }
    free_picture(&p);
}

/* 2000 x 3000, averaged down to 768 x 512 with a fixed range [0, 1]: alternating columns
 * average to mid colours (never an end colour, as nearest sampling would give); halves 0 and 1
 * keep their colours; a lone hot cell shows as one dim pixel, not as a hot one. */
static void test_large(void)
{
    const int64_t R = 2000, C = 3000;
    const char *path = out_path("large.png");
    float *m = (float *)malloc((size_t)(R * C) * sizeof(float));
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++)
            m[r * C + c] = r < R / 2 ? (float)(c & 1) : (float)(c >= C / 2);
    m[1500 * C + 600] = 1.0f;
    xattn_heatmap_opts o = OPTS;
    o.fixed_range = 1;
    o.vmin = 0.0f;
    o.vmax = 1.0f;
    CHECK_OK(xattn_png_heatmap(path, m, R, C, &o));
    picture p;
    if (read_picture(path, &p)) {
        CHECK(0);
        free(m);
        return;
    }
    if (!check_layout("2000x3000", &p, R, C, 768)) {
        int ends = 0;
        for (int y = 0; y < p.H / 2; y++)
            for (int x = 0; x < p.W; x++) {
                const unsigned char *c = at(&p, p.x0 + x, p.y0 + y);
                ends += is(c, CMAP_LO) || is(c, CMAP_HI);
            }
        CHECK(ends == 0);
        CHECK(is(at(&p, p.x0 + p.W / 4, p.y0 + 3 * p.H / 4), CMAP_LO));
        CHECK(is(at(&p, p.x0 + 3 * p.W / 4, p.y0 + 3 * p.H / 4), CMAP_HI));
        int hx = (int)((600 * p.W) / C), hy = (int)((1500 * p.H) / R), lit = 0, dim = 0;
        for (int dy = -2; dy <= 2; dy++)
            for (int dx = -2; dx <= 2; dx++) {
                const unsigned char *c = at(&p, p.x0 + hx + dx, p.y0 + hy + dy);
                if (!is(c, CMAP_LO)) {
                    lit++;
                    dim += !is(c, CMAP_HI) && !is(c, NAN_GREY);
                }
            }
        CHECK(lit == 1 && dim == 1);
        CHECK(!nan_legend(&p));
    }
    free_picture(&p);
    free(m);
}

/* max_side: a smaller picture, same design. */
static void test_max_side(void)
{
    const char *path = out_path("small.png");
    float m[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    xattn_heatmap_opts o = OPTS;
    o.max_side = 200;
    CHECK_OK(xattn_png_heatmap(path, m, 3, 4, &o));
    picture p;
    if (read_picture(path, &p)) {
        CHECK(0);
        return;
    }
    if (!check_layout("3x4 at 200", &p, 3, 4, 200)) {
        CHECK(is(cell(&p, 0, 0, 3, 4), CMAP_LO));
        CHECK(is(cell(&p, 2, 3, 3, 4), CMAP_HI));
    }
    free_picture(&p);
    /* no labels at all, and a write over the existing file */
    xattn_heatmap_opts bare = {.max_side = 100};
    CHECK_OK(xattn_png_heatmap(path, m, 3, 4, &bare));
    if (read_picture(path, &p) == 0) {
        int W, H;
        expected_area(3, 4, 100, &W, &H);
        CHECK(p.W == W && p.H == H);
        free_picture(&p);
    } else {
        CHECK(0);
    }
}

static void test_errors(void)
{
    float m[4] = {0, 1, 2, 3};
    char bad[600];
    snprintf(bad, sizeof bad, "%s/no_such_dir/out.png", tmpdir);
    CHECK_FAIL(xattn_png_heatmap(bad, m, 2, 2, &OPTS), XATTN_ERR_IO);
    CHECK(strstr(xattn_last_error(), "no_such_dir/out.png") != NULL);
    CHECK(!exists(bad) && !tmp_left(bad));
    /* the path is a directory: the rename fails, the temporary file is removed */
    CHECK_FAIL(xattn_png_heatmap(tmpdir, m, 2, 2, &OPTS), XATTN_ERR_IO);
    CHECK(strstr(xattn_last_error(), tmpdir) != NULL);
    CHECK(!tmp_left(tmpdir));

    const char *path = out_path("err.png");
    CHECK_FAIL(xattn_png_heatmap(path, m, 0, 2, &OPTS), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "err.png") != NULL);
    CHECK_FAIL(xattn_png_heatmap(path, m, 2, 0, &OPTS), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_png_heatmap(path, m, -1, 2, &OPTS), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_png_heatmap(path, m, INT64_MAX / 2, 4, &OPTS), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_png_heatmap(path, m, (int64_t)1 << 30, (int64_t)1 << 30, &OPTS),
               XATTN_ERR_ARG);
    CHECK_FAIL(xattn_png_heatmap(path, NULL, 2, 2, &OPTS), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_png_heatmap(NULL, m, 2, 2, &OPTS), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_png_heatmap("", m, 2, 2, &OPTS), XATTN_ERR_ARG);
    xattn_heatmap_opts o = OPTS;
    o.max_side = 10;
    CHECK_FAIL(xattn_png_heatmap(path, m, 2, 2, &o), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "max_side") != NULL);
    o.max_side = 100000;
    CHECK_FAIL(xattn_png_heatmap(path, m, 2, 2, &o), XATTN_ERR_ARG);
    o.max_side = -5;
    CHECK_FAIL(xattn_png_heatmap(path, m, 2, 2, &o), XATTN_ERR_ARG);
    o = OPTS;
    o.fixed_range = 1;
    o.vmin = NAN;
    o.vmax = 1;
    CHECK_FAIL(xattn_png_heatmap(path, m, 2, 2, &o), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "range") != NULL);
    o.vmin = 0;
    o.vmax = INFINITY;
    CHECK_FAIL(xattn_png_heatmap(path, m, 2, 2, &o), XATTN_ERR_ARG);
    o.vmin = 2;
    o.vmax = 1;
    CHECK_FAIL(xattn_png_heatmap(path, m, 2, 2, &o), XATTN_ERR_ARG);
    CHECK(!exists(path) && !tmp_left(path));
    /* NULL opts: defaults; all-NaN and infinite values are drawn, not refused */
    float odd[4] = {NAN, INFINITY, -INFINITY, NAN};
    CHECK_OK(xattn_png_heatmap(path, odd, 2, 2, NULL));
    CHECK(exists(path) && !tmp_left(path));
    float nans[3] = {NAN, NAN, NAN};
    CHECK_OK(xattn_png_heatmap(path, nans, 1, 3, NULL));
    /* a title longer than the picture and bytes outside ASCII are cut / replaced, not fatal */
    char longt[1200];
    memset(longt, 'W', sizeof longt - 1);
    longt[sizeof longt - 1] = '\0';
    memcpy(longt, "caf\xc3\xa9 \x01\n", 8);
    o = OPTS;
    o.title = longt;
    o.x_label = longt;
    o.y_label = longt;
    CHECK_OK(xattn_png_heatmap(path, m, 2, 2, &o));
    picture p;
    if (read_picture(path, &p) == 0) {
        CHECK(p.w <= 2 * 768 + 400);
        free_picture(&p);
    } else {
        CHECK(0);
    }
}

static void remove_tree(void)
{
    static const char *names[] = {"one.png",   "thin_1x1000.png", "thin_1000x1.png", "hot.png",
                                  "large.png", "small.png",       "err.png"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) remove(out_path(names[i]));
    if (rmdir(tmpdir) != 0) fprintf(stderr, "note: %s not removed: %s\n", tmpdir, strerror(errno));
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/xattn_png.XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "test_png: mkdtemp %s: %s\n", tmpdir, strerror(errno));
        return 1;
    }
    float v = 0.5f;
    xattn_status s = xattn_png_heatmap(out_path("probe.png"), &v, 1, 1, NULL);
    remove(out_path("probe.png"));
    if (s == XATTN_ERR_UNSUPPORTED) { /* library built without libpng */
        CHECK(strstr(xattn_last_error(), "libpng") != NULL);
        printf("test_png: xattn built without libpng; only the UNSUPPORTED path checked\n");
        remove_tree();
        return tu_finish("test_png");
    }
    CHECK_OK(s);
    test_one_cell();
    test_thin(1, 1000, 700);
    test_thin(1000, 1, 250);
    test_hot_cell_with_nans();
    test_large();
    test_max_side();
    test_errors();
    remove_tree();
    return tu_finish("test_png");
}

#else /* no libpng here: check the call, and the file's signature if the library wrote one */

int main(void)
{
    char dir[] = "/tmp/xattn_png.XXXXXX", path[64];
    if (!mkdtemp(dir)) {
        fprintf(stderr, "test_png: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    snprintf(path, sizeof path, "%s/one.png", dir);
    float v = 0.5f;
    xattn_status s = xattn_png_heatmap(path, &v, 1, 1, NULL);
    if (s == XATTN_ERR_UNSUPPORTED) {
        CHECK(strstr(xattn_last_error(), "libpng") != NULL);
    } else {
        CHECK_OK(s);
        unsigned char sig[8] = {0};
        FILE *f = fopen(path, "rb");
        CHECK(f && fread(sig, 1, 8, f) == 8 && !memcmp(sig, "\x89PNG\r\n\x1a\n", 8));
        if (f) fclose(f);
    }
    remove(path);
    rmdir(dir);
    CHECK_FAIL(xattn_png_heatmap(path, &v, 0, 1, NULL),
               s == XATTN_ERR_UNSUPPORTED ? XATTN_ERR_UNSUPPORTED : XATTN_ERR_ARG);
    printf("test_png: libpng not available to the test; pictures not read back\n");
    return tu_finish("test_png");
}

#endif
