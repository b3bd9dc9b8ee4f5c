/* PNG heat-maps: xattn_png_heatmap (see xattn.h).
 *
 * The picture is drawn in plain C into an RGB buffer (colour map, box filter, frame, ticks,
 * a built-in bitmap font of 5x7 glyphs plus 2 descender rows), encoded in memory by libpng, and
 * written to "<path>.tmp", then renamed over path, so a failure never leaves a half-written PNG
 * under the final name (libpng errors, caught with setjmp, become XATTN_ERR_IO naming path).
 *
 * Layout (s = text scale: 2 when max_side >= 512, else 1):
 *
 *            title (centred over the map)
 *   y   ticks +-------------------------+   +--+ - vmax    b
 *   l   0   - |                         |   |  |           a
 *   a   5   - |   map: W x H pixels     |   |  | - mid     r label (rotated)
 *   b         |                         |   |  |
 *   e         +-------------------------+   +--+ - vmin
 *   l           |    |    |    |    |        [] NaN   (grey swatch, only if a cell is NaN)
 *               0    5    10   15   20
 *                      x label
 *
 * W x H: the longer side is max_side; the shorter follows the map's aspect ratio but is at least
 * min(128, max_side). Row 0 is at the top. Tick k sits at the centre of cell k and reads
 * k * tick scale. The y label is drawn rotated (bottom to top) beside the tick labels, or
 * horizontally above the map when it is longer than the map is tall; the bar label is drawn
 * rotated to the right of the bar's tick labels, cut to the map's height.
 */
#include "io/io_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef XATTN_HAVE_PNG

#include <png.h>
#include <setjmp.h>

#define HM_DEFAULT_SIDE 768
#define HM_MIN_SIDE_ARG 64   /* smallest max_side accepted                        */
#define HM_MAX_SIDE_ARG 4096 /* largest max_side accepted                         */
#define HM_MIN_SIDE     128  /* a thin map's shorter side is at least this         */
#define HM_MAX_CELLS    ((int64_t)1 << 40)

typedef struct rgb {
    uint8_t r, g, b;
} rgb;

static const rgb HM_INK = {0, 0, 0};
static const rgb HM_NAN = {153, 153, 153};

/* ---------------------------------------------------------------------------------------- */
/* Colour map: viridis-like, 17 control points at t = 0, 1/16, ..., 1, linearly interpolated */
/* ---------------------------------------------------------------------------------------- */

static const uint8_t HM_CMAP[17][3] = {
    {68, 1, 84},    {72, 26, 108},  {71, 47, 125},  {65, 68, 135},  {59, 82, 139},  {51, 99, 141},
    {44, 114, 142}, {38, 130, 142}, {33, 145, 140}, {31, 160, 136}, {40, 174, 128}, {63, 188, 115},
    {94, 201, 98},  {132, 212, 75}, {173, 220, 48}, {216, 226, 25}, {253, 231, 37},
};

static rgb cmap(double t)
{
    if (!(t > 0)) t = 0; /* NaN too */
    if (t > 1) t = 1;
    double p = t * 16.0;
    int i = (int)p;
    if (i > 15) i = 15;
    double f = p - i;
    rgb c;
    c.r = (uint8_t)lrint(HM_CMAP[i][0] + f * (HM_CMAP[i + 1][0] - HM_CMAP[i][0]));
    c.g = (uint8_t)lrint(HM_CMAP[i][1] + f * (HM_CMAP[i + 1][1] - HM_CMAP[i][1]));
    c.b = (uint8_t)lrint(HM_CMAP[i][2] + f * (HM_CMAP[i + 1][2] - HM_CMAP[i][2]));
    return c;
}

/* ---------------------------------------------------------------------------------------- */
/* Canvas and text                                                                          */
/* ---------------------------------------------------------------------------------------- */

typedef struct canvas {
    uint8_t *px; /* w * h * 3 */
    int w, h;
} canvas;

static void fill_rect(canvas *cv, int x, int y, int w, int h, rgb c)
{
    int x1 = x + w, y1 = y + h;
    if (x < 0) x = 0;
    if (y < 0) y = 0;
    if (x1 > cv->w) x1 = cv->w;
    if (y1 > cv->h) y1 = cv->h;
    for (int yy = y; yy < y1; yy++) {
        uint8_t *p = cv->px + ((size_t)yy * (size_t)cv->w + (size_t)x) * 3;
        for (int xx = x; xx < x1; xx++, p += 3) {
            p[0] = c.r;
            p[1] = c.g;
            p[2] = c.b;
        }
    }
}

/* 1-pixel outline just outside the rectangle (x, y, w, h). */
static void frame_rect(canvas *cv, int x, int y, int w, int h)
{
    fill_rect(cv, x - 1, y - 1, w + 2, 1, HM_INK);
    fill_rect(cv, x - 1, y + h, w + 2, 1, HM_INK);
    fill_rect(cv, x - 1, y, 1, h, HM_INK);
    fill_rect(cv, x + w, y, 1, h, HM_INK);
}

/* Printable ASCII, 5 columns (bit 4 = left) by 9 rows: 7 above the baseline, 2 for descenders. */
#define GLYPH_W    5
#define GLYPH_H    7 /* cap height       */
#define GLYPH_ROWS 9 /* with descenders  */
#define GLYPH_ADV  6 /* advance          */
static const uint8_t HM_FONT[95][GLYPH_ROWS] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /*   */
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04, 0x00, 0x00}, /* ! */
    {0x0a, 0x0a, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* " */
    {0x0a, 0x0a, 0x1f, 0x0a, 0x1f, 0x0a, 0x0a, 0x00, 0x00}, /* # */
    {0x04, 0x0f, 0x14, 0x0e, 0x05, 0x1e, 0x04, 0x00, 0x00}, /* $ */
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03, 0x00, 0x00}, /* % */
    {0x0c, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0d, 0x00, 0x00}, /* & */
    {0x04, 0x04, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* quote */
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02, 0x00, 0x00}, /* ( */
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08, 0x00, 0x00}, /* ) */
    {0x00, 0x04, 0x15, 0x0e, 0x15, 0x04, 0x00, 0x00, 0x00}, /* * */
    {0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00, 0x00, 0x00}, /* + */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x06, 0x02, 0x04}, /* , */
    {0x00, 0x00, 0x00, 0x0e, 0x00, 0x00, 0x00, 0x00, 0x00}, /* - */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c, 0x00, 0x00}, /* . */
    {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00, 0x00, 0x00}, /* / */
    {0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e, 0x00, 0x00}, /* 0 */
    {0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e, 0x00, 0x00}, /* 1 */
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f, 0x00, 0x00}, /* 2 */
    {0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e, 0x00, 0x00}, /* 3 */
    {0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02, 0x00, 0x00}, /* 4 */
    {0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e, 0x00, 0x00}, /* 5 */
    {0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e, 0x00, 0x00}, /* 6 */
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08, 0x00, 0x00}, /* 7 */
    {0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e, 0x00, 0x00}, /* 8 */
    {0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c, 0x00, 0x00}, /* 9 */
    {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00, 0x00, 0x00}, /* : */
    {0x00, 0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x04, 0x08}, /* ; */
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02, 0x00, 0x00}, /* < */
    {0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00, 0x00, 0x00}, /* = */
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08, 0x00, 0x00}, /* > */
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04, 0x00, 0x00}, /* ? */
    {0x0e, 0x11, 0x01, 0x0d, 0x15, 0x15, 0x0e, 0x00, 0x00}, /* @ */
    {0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11, 0x00, 0x00}, /* A */
    {0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e, 0x00, 0x00}, /* B */
    {0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e, 0x00, 0x00}, /* C */
    {0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c, 0x00, 0x00}, /* D */
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f, 0x00, 0x00}, /* E */
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10, 0x00, 0x00}, /* F */
    {0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f, 0x00, 0x00}, /* G */
    {0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11, 0x00, 0x00}, /* H */
    {0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e, 0x00, 0x00}, /* I */
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c, 0x00, 0x00}, /* J */
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11, 0x00, 0x00}, /* K */
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f, 0x00, 0x00}, /* L */
    {0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11, 0x00, 0x00}, /* M */
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x00, 0x00}, /* N */
    {0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e, 0x00, 0x00}, /* O */
    {0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10, 0x00, 0x00}, /* P */
    {0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d, 0x00, 0x00}, /* Q */
    {0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11, 0x00, 0x00}, /* R */
    {0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e, 0x00, 0x00}, /* S */
    {0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x00}, /* T */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e, 0x00, 0x00}, /* U */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04, 0x00, 0x00}, /* V */
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a, 0x00, 0x00}, /* W */
    {0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11, 0x00, 0x00}, /* X */
    {0x11, 0x11, 0x0a, 0x04, 0x04, 0x04, 0x04, 0x00, 0x00}, /* Y */
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f, 0x00, 0x00}, /* Z */
    {0x0e, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0e, 0x00, 0x00}, /* [ */
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00, 0x00, 0x00}, /* backslash */
    {0x0e, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0e, 0x00, 0x00}, /* ] */
    {0x04, 0x0a, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* ^ */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f}, /* _ */
    {0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* ` */
    {0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f, 0x00, 0x00}, /* a */
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e, 0x00, 0x00}, /* b */
    {0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e, 0x00, 0x00}, /* c */
    {0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f, 0x00, 0x00}, /* d */
    {0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e, 0x00, 0x00}, /* e */
    {0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08, 0x00, 0x00}, /* f */
    {0x00, 0x00, 0x0f, 0x11, 0x11, 0x11, 0x0f, 0x01, 0x0e}, /* g */
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00, 0x00}, /* h */
    {0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e, 0x00, 0x00}, /* i */
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c}, /* j */
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12, 0x00, 0x00}, /* k */
    {0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e, 0x00, 0x00}, /* l */
    {0x00, 0x00, 0x1a, 0x15, 0x15, 0x15, 0x15, 0x00, 0x00}, /* m */
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00, 0x00}, /* n */
    {0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e, 0x00, 0x00}, /* o */
    {0x00, 0x00, 0x1e, 0x11, 0x11, 0x11, 0x1e, 0x10, 0x10}, /* p */
    {0x00, 0x00, 0x0f, 0x11, 0x11, 0x11, 0x0f, 0x01, 0x01}, /* q */
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10, 0x00, 0x00}, /* r */
    {0x00, 0x00, 0x0f, 0x10, 0x0e, 0x01, 0x1e, 0x00, 0x00}, /* s */
    {0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06, 0x00, 0x00}, /* t */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d, 0x00, 0x00}, /* u */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04, 0x00, 0x00}, /* v */
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a, 0x00, 0x00}, /* w */
    {0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x00, 0x00}, /* x */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x11, 0x0f, 0x01, 0x0e}, /* y */
    {0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f, 0x00, 0x00}, /* z */
    {0x03, 0x04, 0x04, 0x08, 0x04, 0x04, 0x03, 0x00, 0x00}, /* { */
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x00}, /* | */
    {0x18, 0x04, 0x04, 0x02, 0x04, 0x04, 0x18, 0x00, 0x00}, /* } */
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00, 0x00, 0x00}, /* ~ */
};

/* Glyph index of byte c; UTF-8 continuation bytes give -1 (skipped), other bytes outside
 * printable ASCII draw as '?'. */
static int glyph_of(unsigned char c)
{
    if (c >= 0x80 && c < 0xc0) return -1;
    if (c < 32 || c > 126) return '?' - 32;
    return c - 32;
}

static int text_glyphs(const char *s)
{
    int n = 0;
    for (; *s; s++)
        if (glyph_of((unsigned char)*s) >= 0) n++;
    return n;
}

/* Width in pixels of s at `scale` (no trailing gap). */
static int text_width(const char *s, int scale)
{
    int n = text_glyphs(s);
    return n ? (n * GLYPH_ADV - 1) * scale : 0;
}

/* Copies s into buf, cut with "..." so that it is at most max_px wide at `scale`. */
static const char *fit_text(const char *s, int max_px, int scale, char *buf, size_t cap)
{
    size_t n = strlen(s);
    if (n >= cap) n = cap - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (text_width(buf, scale) <= max_px) return buf;
    while (n > 0) {
        n--;
        if (glyph_of((unsigned char)buf[n]) < 0) continue; /* inside a UTF-8 sequence */
        /* drop the lead byte at n too, then try "..." after buf[0 .. n) */
        if (n + 4 > cap) continue;
        memcpy(buf + n, "...", 4);
        if (text_width(buf, scale) <= max_px) return buf;
    }
    buf[0] = '\0';
    return buf;
}

static void draw_glyph(canvas *cv, int x, int y, int g, int scale, int up, rgb c)
{
    for (int row = 0; row < GLYPH_ROWS; row++) {
        uint8_t bits = HM_FONT[g][row];
        for (int col = 0; col < GLYPH_W; col++) {
            if (!(bits & (0x10 >> col))) continue;
            if (up) /* rotated 90 degrees counter-clockwise: glyph rows run left to right */
                fill_rect(cv, x + row * scale, y - (col + 1) * scale, scale, scale, c);
            else
                fill_rect(cv, x + col * scale, y + row * scale, scale, scale, c);
        }
    }
}

/* Draws s with the top-left of its first glyph cell at (x, y). */
static void draw_text(canvas *cv, int x, int y, const char *s, int scale, rgb c)
{
    for (; *s; s++) {
        int g = glyph_of((unsigned char)*s);
        if (g < 0) continue;
        draw_glyph(cv, x, y, g, scale, 0, c);
        x += GLYPH_ADV * scale;
    }
}

/* Draws s rotated to read bottom to top: the text starts at y_bottom and the tops of the glyphs
 * face left, at column x. */
static void draw_text_up(canvas *cv, int x, int y_bottom, const char *s, int scale, rgb c)
{
    int y = y_bottom;
    for (; *s; s++) {
        int g = glyph_of((unsigned char)*s);
        if (g < 0) continue;
        draw_glyph(cv, x, y, g, scale, 1, c);
        y -= GLYPH_ADV * scale;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Ticks                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* The label of tick k on an axis whose cells stand for k * scale (scale 0: 1). */
static void tick_label(char *buf, size_t cap, int64_t k, double scale)
{
    if (scale == 0 || scale == 1) {
        snprintf(buf, cap, "%lld", (long long)k);
        return;
    }
    double v = (double)k * scale;
    if (fabs(v) < 1e15 && v == nearbyint(v))
        snprintf(buf, cap, "%lld", (long long)v);
    else
        snprintf(buf, cap, "%.4g", v);
}

/* Smallest step in {1, 2, 5} x 10^k whose ticks are at least min_gap pixels apart on an axis
 * of n cells drawn over len pixels. */
static int64_t tick_step(int64_t n, int len, int min_gap)
{
    static const int64_t m[3] = {1, 2, 5};
    for (int64_t p = 1; p <= ((int64_t)1 << 50); p *= 10)
        for (int i = 0; i < 3; i++) {
            int64_t step = m[i] * p;
            if ((double)step * len / (double)n >= min_gap || step >= n) return step;
        }
    return n;
}

/* Pixel offset of the centre of cell k of n drawn over len pixels. */
static int cell_centre(int64_t k, int64_t n, int len)
{
    return (int)(((2 * k + 1) * (int64_t)len) / (2 * n));
}

/* The ticks of an axis of n cells drawn over len pixels: the multiples of step, plus the last
 * index n - 1 when it is at least min_gap pixels beyond the last multiple. */
typedef struct axis_ticks {
    int64_t n, step, n_mult, last; /* last: the index of the final tick */
} axis_ticks;

static axis_ticks make_ticks(int64_t n, int len, int min_gap)
{
    axis_ticks t;
    t.n = n;
    t.step = tick_step(n, len, min_gap);
    t.n_mult = (n - 1) / t.step + 1;
    t.last = (t.n_mult - 1) * t.step;
    if (n - 1 > t.last && cell_centre(n - 1, n, len) - cell_centre(t.last, n, len) >= min_gap)
        t.last = n - 1;
    return t;
}

/* Index of tick k (k = 0, 1, ...), or -1 past the last. */
static int64_t tick_at(const axis_ticks *t, int64_t k)
{
    if (k < t->n_mult) return k * t->step;
    if (k == t->n_mult && t->last != (t->n_mult - 1) * t->step) return t->last;
    return -1;
}

/* Width in pixels of the label of cell k. */
static int label_width(int64_t k, double scale, int s)
{
    char buf[32];
    tick_label(buf, sizeof buf, k, scale);
    return text_width(buf, s);
}

/* Width of the widest label of an axis's ticks. */
static int ticks_width(const axis_ticks *t, double scale, int s)
{
    int w = 0;
    for (int64_t k = 0;; k++) {
        int64_t i = tick_at(t, k);
        if (i < 0) break;
        w = XA_MAX(w, label_width(i, scale, s));
    }
    return w;
}

/* ---------------------------------------------------------------------------------------- */
/* Encoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

typedef struct membuf {
    uint8_t *data;
    size_t len, cap;
} membuf;

typedef struct png_err_state {
    char msg[200];
} png_err_state;

static void hm_png_error(png_structp png, png_const_charp msg)
{
    png_err_state *e = (png_err_state *)png_get_error_ptr(png);
    if (e) snprintf(e->msg, sizeof e->msg, "%s", msg ? msg : "unknown error");
    png_longjmp(png, 1);
}

static void hm_png_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

static void hm_png_write(png_structp png, png_bytep data, size_t n)
{
    membuf *m = (membuf *)png_get_io_ptr(png);
    if (n > m->cap - m->len) {
        size_t cap = m->cap ? m->cap : 65536;
        while (cap - m->len < n) {
            if (cap > SIZE_MAX / 2) png_error(png, "PNG too large");
            cap *= 2;
        }
        uint8_t *d = (uint8_t *)realloc(m->data, cap);
        if (!d) png_error(png, "out of memory");
        m->data = d;
        m->cap = cap;
    }
    memcpy(m->data + m->len, data, n);
    m->len += n;
}

static void hm_png_flush(png_structp png) { (void)png; }

/* Encodes the canvas as an 8-bit RGB PNG into *out. rows: h row pointers. */
static xattn_status encode_png(const char *path, const canvas *cv, png_bytep *rows, membuf *out,
                               png_err_state *err)
{
    png_structp png =
        png_create_write_struct(PNG_LIBPNG_VER_STRING, err, hm_png_error, hm_png_warning);
    if (!png) return xa_error(XATTN_ERR_NOMEM, "%s: cannot start the PNG encoder", path);
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return xa_error(XATTN_ERR_NOMEM, "%s: cannot start the PNG encoder", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return xa_error(XATTN_ERR_IO, "%s: PNG encoding failed: %s", path, err->msg);
    }
    png_set_write_fn(png, out, hm_png_write, hm_png_flush);
    png_set_IHDR(png, info, (png_uint_32)cv->w, (png_uint_32)cv->h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_set_compression_level(png, 9);
    static char key[] = "Software", val[] = "xattn";
    png_text text;
    memset(&text, 0, sizeof text);
    text.compression = PNG_TEXT_COMPRESSION_NONE;
    text.key = key;
    text.text = val;
    png_set_text(png, info, &text, 1);
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    return XATTN_OK;
}

/* Encodes the canvas and writes it to path. */
static xattn_status write_canvas(const char *path, const canvas *cv)
{
    png_bytep *rows = malloc((size_t)cv->h * sizeof *rows);
    if (!rows) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory for a picture", path);
    for (int y = 0; y < cv->h; y++) rows[y] = cv->px + (size_t)y * (size_t)cv->w * 3;
    membuf out = {NULL, 0, 0};
    png_err_state err = {""};
    xattn_status st = encode_png(path, cv, rows, &out, &err);
    if (st == XATTN_OK) {
        xa_io_part part = {out.data, out.len};
        st = xa_io_write_file(path, &part, 1);
    }
    free(out.data);
    free(rows);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Rendering                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Averages map (rows, cols) into a grid of gr x gc cells: rows (cols) are grouped into blocks
 * of consecutive rows when there are more rows than pixels (gr = H), and kept one by one
 * otherwise (gr = rows). NaN values are left out of a mean; a block of NaNs only is NaN. */
static xattn_status reduce_map(const char *path, const float *map, int64_t rows, int64_t cols,
                               int W, int H, float **grid_out, int *gr_out, int *gc_out)
{
    const int gr = rows > H ? H : (int)rows;
    const int gc = cols > W ? W : (int)cols;
    float *grid = (float *)malloc((size_t)gr * (size_t)gc * sizeof(float));
    double *sum = (double *)malloc((size_t)gc * sizeof(double));
    int64_t *cnt = (int64_t *)malloc((size_t)gc * sizeof(int64_t));
    if (!grid || !sum || !cnt) {
        free(grid);
        free(sum);
        free(cnt);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory drawing a %d x %d heat-map", path, W,
                        H);
    }
    int64_t r = 0;
    for (int g = 0; g < gr; g++) {
        /* rows of block g: [r, r_end) */
        int64_t r_end = rows > H ? ((int64_t)(g + 1) * rows) / H : r + 1;
        memset(sum, 0, (size_t)gc * sizeof(double));
        memset(cnt, 0, (size_t)gc * sizeof(int64_t));
        for (; r < r_end; r++) {
            const float *src = map + r * cols;
            if (cols <= W) {
                for (int c = 0; c < gc; c++)
                    if (!isnan(src[c])) {
                        sum[c] += src[c];
                        cnt[c]++;
                    }
            } else {
                for (int x = 0; x < gc; x++) {
                    int64_t c0 = ((int64_t)x * cols) / W, c1 = ((int64_t)(x + 1) * cols) / W;
                    double s = 0;
                    int64_t k = 0;
                    for (int64_t c = c0; c < c1; c++)
                        if (!isnan(src[c])) {
                            s += src[c];
                            k++;
                        }
                    sum[x] += s;
                    cnt[x] += k;
                }
            }
        }
        float *dst = grid + (size_t)g * (size_t)gc;
        for (int c = 0; c < gc; c++) dst[c] = cnt[c] ? (float)(sum[c] / (double)cnt[c]) : NAN;
    }
    free(sum);
    free(cnt);
    *grid_out = grid;
    *gr_out = gr;
    *gc_out = gc;
    return XATTN_OK;
}

typedef struct layout {
    int s; /* text scale                                   */
    int img_w, img_h;
    int x0, y0, W, H; /* map interior                                 */
    int bx, bw;       /* colour bar interior: x, width (y0, H shared) */
    int tick;         /* tick length                                  */
    int title_y;      /* top of the title line (-1: none)             */
    int ylab_mode;    /* 0 none, 1 rotated, 2 horizontal above the map */
    int ylab_x, ylab_y;
    int xlab_y;
    int xtick_lab_y;     /* top of the x tick labels                     */
    int ytick_lab_right; /* right edge of the y tick labels              */
    axis_ticks xt, yt;
    double xscale, yscale; /* tick label of cell k: k * scale (0: k)        */
    int blab_x, blab_y;    /* bar label: column and bottom end (rotated)    */
    int blab_s;            /* bar label's text scale                        */
    char title[256], xlab[256], ylab[256], blab[256];
    char bar_lab[3][32]; /* vmax, mid, vmin ("" when vmin == vmax except mid) */
} layout;

static void map_size(int64_t rows, int64_t cols, int side, int *W, int *H)
{
    const int min_side = side < HM_MIN_SIDE ? side : HM_MIN_SIDE;
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

static void plan(layout *L, int64_t rows, int64_t cols, int side, const xattn_heatmap_opts *o,
                 double vmin, double vmax)
{
    const int s = side >= 512 ? 2 : 1;
    const int cw = GLYPH_ADV * s, gh = GLYPH_H * s, lh = GLYPH_ROWS * s;
    const int M = 10 * s, pad = 4 * s;
    L->s = s;
    L->tick = 4 * s;
    map_size(rows, cols, side, &L->W, &L->H);
    const int W = L->W, H = L->H;

    /* ticks: x labels need their width plus two glyphs of room; y labels three line heights */
    L->xscale = o ? o->x_tick_scale : 0;
    L->yscale = o ? o->y_tick_scale : 0;
    int xlw = label_width(cols - 1, L->xscale, s);
    for (int it = 0; it < 4; it++) { /* the widest label of the chosen ticks sets the gap */
        L->xt = make_ticks(cols, W, xlw + 2 * cw);
        int w = ticks_width(&L->xt, L->xscale, s);
        if (w <= xlw) break;
        xlw = w;
    }
    L->yt = make_ticks(rows, H, 3 * gh);
    const int ylw = ticks_width(&L->yt, L->yscale, s);

    /* colour bar labels */
    if (vmin == vmax) {
        L->bar_lab[0][0] = L->bar_lab[2][0] = '\0';
        snprintf(L->bar_lab[1], sizeof L->bar_lab[1], "%.3g", vmin);
    } else {
        snprintf(L->bar_lab[0], sizeof L->bar_lab[0], "%.3g", vmax);
        /* the middle value rounded to a thousandth of the range's decade, so that a range
         * like [-0.99999, 1] gives "0" rather than "5e-06" */
        double span = vmax - vmin, mid = vmin + 0.5 * span;
        double q = pow(10.0, floor(log10(span)) - 2);
        if (isfinite(q) && q > 0 && isfinite(mid / q)) mid = nearbyint(mid / q) * q;
        if (mid == 0) mid = 0; /* no "-0" */
        snprintf(L->bar_lab[1], sizeof L->bar_lab[1], "%.3g", mid);
        snprintf(L->bar_lab[2], sizeof L->bar_lab[2], "%.3g", vmin);
    }
    int blw = 0;
    for (int i = 0; i < 3; i++) blw = XA_MAX(blw, text_width(L->bar_lab[i], s));

    /* y label: rotated beside the tick labels if it fits along the map, else horizontal */
    const char *ylab = o && o->y_label ? o->y_label : "";
    const char *xlab = o && o->x_label ? o->x_label : "";
    const char *title = o && o->title ? o->title : "";
    const char *blab = o && o->bar_label ? o->bar_label : "";
    L->ylab_mode = 0;
    if (ylab[0]) {
        L->ylab_mode = text_width(ylab, s) <= H ? 1 : 2;
    }

    /* horizontal extents, before any widening for long texts */
    int left = M;
    if (L->ylab_mode == 1) left += GLYPH_ROWS * s + pad;
    left += ylw + 3 * s + L->tick + 1;
    int x0 = left; /* map interior */
    /* the last x tick label may hang past the map's right edge */
    int hang =
        cell_centre(L->xt.last, cols, W) + (label_width(L->xt.last, L->xscale, s) + 1) / 2 - W;
    int gap = XA_MAX(8 * s, hang + pad + 1);
    int bx = x0 + W + 1 + gap + 1;
    L->bw = 12 * s;
    int right_bar = L->bw + 1 + 4 * s + 3 * s + blw;
    /* a bar label longer than the bar is drawn at half size if that fits, else cut */
    L->blab_s = s > 1 && text_width(blab, s) > H && text_width(blab, 1) <= H ? 1 : s;
    if (blab[0]) right_bar += pad + GLYPH_ROWS * L->blab_s;
    int right_nan = gh + 1 + 2 * s + text_width("NaN", s);
    int content_w = bx - 1 + XA_MAX(right_bar, right_nan) + 1 + M;

    /* long texts widen the picture (up to max_side more), then are cut to fit */
    int need = XA_MAX(text_width(title, s), text_width(xlab, s));
    if (L->ylab_mode == 2) need = XA_MAX(need, text_width(ylab, s));
    int img_w = content_w;
    if (need + 2 * M > img_w) img_w = XA_MIN(need + 2 * M, content_w + side);
    int shift = (img_w - content_w) / 2;
    L->img_w = img_w;
    L->x0 = x0 + shift;
    L->bx = bx + shift;
    fit_text(title, img_w - 2 * M, s, L->title, sizeof L->title);
    fit_text(xlab, img_w - 2 * M, s, L->xlab, sizeof L->xlab);
    fit_text(ylab, L->ylab_mode == 2 ? img_w - 2 * M : H, s, L->ylab, sizeof L->ylab);
    fit_text(blab, H, L->blab_s, L->blab, sizeof L->blab);
    L->blab_x = L->bx + L->bw + 1 + 4 * s + 3 * s + blw + pad;

    /* vertical extents */
    int y = M;
    L->title_y = -1;
    if (L->title[0]) {
        L->title_y = y;
        y += lh + 2 * pad;
    }
    if (L->ylab_mode == 2) {
        L->ylab_x = XA_MAX(M, L->x0 - 1 - L->tick - 3 * s - ylw);
        if (L->ylab_x + text_width(L->ylab, s) > img_w - M) L->ylab_x = M;
        L->ylab_y = y;
        y += lh + 2 * pad;
    }
    L->y0 = y + 1;
    L->blab_y = L->y0 + (H + text_width(L->blab, L->blab_s)) / 2; /* bottom end */
    L->ytick_lab_right = L->x0 - 1 - L->tick - 3 * s;
    if (L->ylab_mode == 1) {
        L->ylab_x = L->ytick_lab_right - ylw - pad - GLYPH_ROWS * s;
        L->ylab_y = L->y0 + (H + text_width(L->ylab, s)) / 2; /* bottom end */
    }
    y = L->y0 + H + 1 + L->tick + 2 * s;
    L->xtick_lab_y = y;
    y += gh;
    L->xlab_y = -1;
    if (L->xlab[0]) {
        y += 2 * pad;
        L->xlab_y = y;
        y += lh;
    }
    L->img_h = y + M;
}

/* x of a text of width tw centred at cx, kept inside the picture's margins. */
static int centred(const layout *L, int cx, int tw)
{
    int x = cx - tw / 2;
    int M = 10 * L->s;
    if (x + tw > L->img_w - M) x = L->img_w - M - tw;
    if (x < M) x = M;
    return x;
}

static void draw_decorations(canvas *cv, const layout *L, int64_t rows, int64_t cols, int any_nan)
{
    const int s = L->s, gh = GLYPH_H * s;
    char buf[32];
    frame_rect(cv, L->x0, L->y0, L->W, L->H);
    /* x ticks and labels */
    for (int64_t k = 0;; k++) {
        int64_t i = tick_at(&L->xt, k);
        if (i < 0) break;
        int px = L->x0 + cell_centre(i, cols, L->W);
        fill_rect(cv, px, L->y0 + L->H + 1, 1, L->tick, HM_INK);
        tick_label(buf, sizeof buf, i, L->xscale);
        int tw = text_width(buf, s);
        draw_text(cv, px - tw / 2, L->xtick_lab_y, buf, s, HM_INK);
    }
    /* y ticks and labels */
    for (int64_t k = 0;; k++) {
        int64_t i = tick_at(&L->yt, k);
        if (i < 0) break;
        int py = L->y0 + cell_centre(i, rows, L->H);
        fill_rect(cv, L->x0 - 1 - L->tick, py, L->tick, 1, HM_INK);
        tick_label(buf, sizeof buf, i, L->yscale);
        int tw = text_width(buf, s);
        draw_text(cv, L->ytick_lab_right - tw, py - gh / 2, buf, s, HM_INK);
    }
    /* title, axis labels */
    if (L->title_y >= 0)
        draw_text(cv, centred(L, L->x0 + L->W / 2, text_width(L->title, s)), L->title_y, L->title,
                  s, HM_INK);
    if (L->xlab_y >= 0)
        draw_text(cv, centred(L, L->x0 + L->W / 2, text_width(L->xlab, s)), L->xlab_y, L->xlab, s,
                  HM_INK);
    if (L->ylab_mode == 1)
        draw_text_up(cv, L->ylab_x, L->ylab_y, L->ylab, s, HM_INK);
    else if (L->ylab_mode == 2)
        draw_text(cv, L->ylab_x, L->ylab_y, L->ylab, s, HM_INK);

    /* colour bar: vmax at the top row, vmin at the bottom row */
    for (int y = 0; y < L->H; y++) {
        double t = L->H > 1 ? 1.0 - (double)y / (double)(L->H - 1) : 0.5;
        fill_rect(cv, L->bx, L->y0 + y, L->bw, 1, cmap(t));
    }
    frame_rect(cv, L->bx, L->y0, L->bw, L->H);
    const int ty[3] = {L->y0, L->y0 + (L->H - 1) / 2, L->y0 + L->H - 1};
    for (int i = 0; i < 3; i++) {
        if (!L->bar_lab[i][0]) continue;
        fill_rect(cv, L->bx + L->bw + 1, ty[i], 4 * s, 1, HM_INK);
        draw_text(cv, L->bx + L->bw + 1 + 4 * s + 3 * s, ty[i] - gh / 2, L->bar_lab[i], s, HM_INK);
    }
    if (L->blab[0]) draw_text_up(cv, L->blab_x, L->blab_y, L->blab, L->blab_s, HM_INK);
    if (any_nan) { /* grey swatch under the bar */
        int sy = L->xtick_lab_y;
        fill_rect(cv, L->bx, sy, gh, gh, HM_NAN);
        frame_rect(cv, L->bx, sy, gh, gh);
        draw_text(cv, L->bx + gh + 1 + 2 * s, sy, "NaN", s, HM_INK);
    }
}

xattn_status xattn_png_heatmap(const char *path, const float *map, int64_t rows, int64_t cols,
                               const xattn_heatmap_opts *opts)
{
    if (!path || !path[0])
        return xa_error(XATTN_ERR_ARG, "xattn_png_heatmap: path is NULL or empty");
    if (!map) return xa_error(XATTN_ERR_ARG, "%s: heat-map data is NULL", path);
    if (rows < 1 || cols < 1)
        return xa_error(XATTN_ERR_ARG,
                        "%s: heat-map shape (%lld, %lld): rows and columns must be >= 1", path,
                        (long long)rows, (long long)cols);
    int64_t numel;
    if (xa_mul_ok(rows, cols, &numel) != 0 || numel > HM_MAX_CELLS)
        return xa_error(XATTN_ERR_ARG,
                        "%s: heat-map shape (%lld, %lld) is too large (limit %lld cells)", path,
                        (long long)rows, (long long)cols, (long long)HM_MAX_CELLS);
    int side = opts && opts->max_side ? opts->max_side : HM_DEFAULT_SIDE;
    if (side < HM_MIN_SIDE_ARG || side > HM_MAX_SIDE_ARG)
        return xa_error(XATTN_ERR_ARG, "%s: heat-map max_side %d is out of range [%d, %d]", path,
                        side, HM_MIN_SIDE_ARG, HM_MAX_SIDE_ARG);
    if (opts && (!(opts->x_tick_scale >= 0) || !(opts->y_tick_scale >= 0) ||
                 !isfinite(opts->x_tick_scale) || !isfinite(opts->y_tick_scale)))
        return xa_error(XATTN_ERR_ARG, "%s: heat-map tick scales (%g, %g) must be finite and >= 0",
                        path, opts->x_tick_scale, opts->y_tick_scale);
    double vmin, vmax;
    if (opts && opts->fixed_range) {
        vmin = opts->vmin;
        vmax = opts->vmax;
        if (!isfinite(vmin) || !isfinite(vmax) || vmin > vmax)
            return xa_error(
                XATTN_ERR_ARG,
                "%s: heat-map range [%g, %g] is not a finite interval with vmin <= vmax", path,
                vmin, vmax);
    } else {
        vmin = INFINITY;
        vmax = -INFINITY;
        for (int64_t i = 0; i < numel; i++) {
            float v = map[i];
            if (!isfinite(v)) continue;
            if (v < vmin) vmin = v;
            if (v > vmax) vmax = v;
        }
        if (vmin > vmax) vmin = vmax = 0; /* no finite value */
    }

    layout *L = (layout *)calloc(1, sizeof *L);
    if (!L) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", path);
    plan(L, rows, cols, side, opts, vmin, vmax);

    xattn_status st = XATTN_OK;
    float *grid = NULL;
    int gr = 0, gc = 0;
    canvas cv = {NULL, L->img_w, L->img_h};
    cv.px = (uint8_t *)malloc((size_t)cv.w * (size_t)cv.h * 3);
    if (!cv.px) {
        st = xa_error(XATTN_ERR_NOMEM, "%s: out of memory for a %d x %d picture", path, cv.w, cv.h);
        goto done;
    }
    memset(cv.px, 255, (size_t)cv.w * (size_t)cv.h * 3);
    if ((st = reduce_map(path, map, rows, cols, L->W, L->H, &grid, &gr, &gc)) != XATTN_OK)
        goto done;

    /* the map: grid cells enlarged (nearest) to W x H */
    int any_nan = 0;
    const double span = vmax - vmin;
    for (int y = 0; y < L->H; y++) {
        int g_r = rows > L->H ? y : (int)(((int64_t)y * rows) / L->H);
        const float *grow = grid + (size_t)g_r * (size_t)gc;
        uint8_t *p = cv.px + ((size_t)(L->y0 + y) * (size_t)cv.w + (size_t)L->x0) * 3;
        for (int x = 0; x < L->W; x++, p += 3) {
            int g_c = cols > L->W ? x : (int)(((int64_t)x * cols) / L->W);
            float v = grow[g_c];
            rgb c;
            if (isnan(v)) {
                c = HM_NAN;
                any_nan = 1;
            } else if (span > 0) {
                c = cmap(((double)v - vmin) / span);
            } else {
                c = v > vmax ? cmap(1) : v < vmin ? cmap(0) : cmap(0.5);
            }
            p[0] = c.r;
            p[1] = c.g;
            p[2] = c.b;
        }
    }
    draw_decorations(&cv, L, rows, cols, any_nan);
    st = write_canvas(path, &cv);

done:
    free(cv.px);
    free(grid);
    free(L);
    if (st == XATTN_OK) xa_clear_error();
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Curves                                                                                   */
/* ---------------------------------------------------------------------------------------- */

#define CV_W 720
#define CV_H 440
#define CV_L 90 /* plot area margins */
#define CV_R 24
#define CV_T 40
#define CV_B 64

static const rgb CV_LINE = {31, 119, 180};

static void put_px(canvas *cv, int x, int y, rgb c)
{
    if (x < 0 || y < 0 || x >= cv->w || y >= cv->h) return;
    uint8_t *p = cv->px + ((size_t)y * (size_t)cv->w + (size_t)x) * 3;
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
}

/* A 2-pixel line from (x0, y0) to (x1, y1) (Bresenham). */
static void draw_line(canvas *cv, int x0, int y0, int x1, int y1, rgb c)
{
    const int dx = x1 > x0 ? x1 - x0 : x0 - x1, dy = -(y1 > y0 ? y1 - y0 : y0 - y1);
    const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int e = dx + dy;
    for (;;) {
        put_px(cv, x0, y0, c);
        put_px(cv, x0, y0 + 1, c);
        if (x0 == x1 && y0 == y1) break;
        const int e2 = 2 * e;
        if (e2 >= dy) e += dy, x0 += sx;
        if (e2 <= dx) e += dx, y0 += sy;
    }
}

xattn_status xattn_png_curve(const char *path, const float *y, int64_t n, const xattn_curve_opts *o)
{
    if (!path || !y) return xa_error(XATTN_ERR_ARG, "xattn_png_curve: path and y are required");
    if (n < 1 || n > ((int64_t)1 << 40))
        return xa_error(XATTN_ERR_ARG, "%s: a curve of %lld points", path, (long long)n);
    const int logy = o && o->log_y;
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(y[i]) || (logy && y[i] <= 0)) continue;
        const double v = logy ? log10((double)y[i]) : (double)y[i];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    if (!(lo <= hi))
        return xa_error(XATTN_ERR_ARG, "%s: the curve has no %s value", path,
                        logy ? "finite positive" : "finite");
    if (hi - lo < 1e-12) lo -= 0.5, hi += 0.5;
    const double pad = 0.04 * (hi - lo);
    lo -= pad, hi += pad;
    canvas cv = {NULL, CV_W, CV_H};
    cv.px = malloc((size_t)CV_W * CV_H * 3);
    if (!cv.px) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory for the picture", path);
    memset(cv.px, 255, (size_t)CV_W * CV_H * 3);
    const int pw = CV_W - CV_L - CV_R, ph = CV_H - CV_T - CV_B;
    frame_rect(&cv, CV_L, CV_T, pw, ph);
    char buf[64];
    for (int k = 0; k <= 4; k++) { /* y ticks */
        const double v = lo + (hi - lo) * k / 4.0;
        const int py = CV_T + ph - (int)lround(ph * (double)k / 4.0);
        fill_rect(&cv, CV_L - 5, py, 5, 1, HM_INK);
        snprintf(buf, sizeof buf, "%.3g", logy ? pow(10.0, v) : v);
        draw_text(&cv, CV_L - 8 - text_width(buf, 1), py - GLYPH_H / 2, buf, 1, HM_INK);
    }
    for (int k = 0; k <= 4; k++) { /* x ticks: point numbers, from 1 */
        const int64_t i = n > 1 ? (int64_t)llround((double)(n - 1) * k / 4.0) : 0;
        const int px = CV_L + (n > 1 ? (int)(pw * (double)i / (double)(n - 1)) : pw / 2);
        fill_rect(&cv, px, CV_T + ph, 1, 5, HM_INK);
        snprintf(buf, sizeof buf, "%lld", (long long)(i + 1));
        draw_text(&cv, px - text_width(buf, 1) / 2, CV_T + ph + 9, buf, 1, HM_INK);
    }
    int prev_x = 0, prev_y = 0, have = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(y[i]) || (logy && y[i] <= 0)) {
            have = 0;
            continue;
        }
        const double v = logy ? log10((double)y[i]) : (double)y[i];
        const int px = CV_L + (n > 1 ? (int)(pw * (double)i / (double)(n - 1)) : pw / 2);
        const int py = CV_T + ph - (int)lround(ph * (v - lo) / (hi - lo));
        if (have)
            draw_line(&cv, prev_x, prev_y, px, py, CV_LINE);
        else
            put_px(&cv, px, py, CV_LINE);
        prev_x = px, prev_y = py, have = 1;
    }
    if (o && o->title) {
        const char *t = fit_text(o->title, CV_W - 20, 2, buf, sizeof buf);
        draw_text(&cv, (CV_W - text_width(t, 2)) / 2, 10, t, 2, HM_INK);
    }
    if (o && o->x_label) {
        const char *t = fit_text(o->x_label, pw, 1, buf, sizeof buf);
        draw_text(&cv, CV_L + (pw - text_width(t, 1)) / 2, CV_H - 22, t, 1, HM_INK);
    }
    if (o && o->y_label) {
        const char *t = fit_text(o->y_label, ph, 1, buf, sizeof buf);
        draw_text_up(&cv, 12, CV_T + (ph + text_width(t, 1)) / 2, t, 1, HM_INK);
    }
    const xattn_status st = write_canvas(path, &cv);
    free(cv.px);
    if (st == XATTN_OK) xa_clear_error();
    return st;
}

#else /* !XATTN_HAVE_PNG */

xattn_status xattn_png_curve(const char *path, const float *y, int64_t n, const xattn_curve_opts *o)
{
    (void)y;
    (void)n;
    (void)o;
    return xa_error(XATTN_ERR_UNSUPPORTED,
                    "%s: cannot write a PNG curve: xattn was built without libpng",
                    path ? path : "(null)");
}

xattn_status xattn_png_heatmap(const char *path, const float *map, int64_t rows, int64_t cols,
                               const xattn_heatmap_opts *opts)
{
    (void)map;
    (void)rows;
    (void)cols;
    (void)opts;
    return xa_error(XATTN_ERR_UNSUPPORTED,
                    "%s: cannot write a PNG heat-map: xattn was built without libpng",
                    path ? path : "(null)");
}

#endif
