/* fixture.c — helpers shared by the unit tests (fixture.h). */
#include "fixture.h"

#include "dtype.h"
#include "safetensors_writer.h"
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

const char *fx_shared(void)
{
    const char *s = getenv("AR_SHARED");
    return s && *s ? s : "../shared";
}

void fx_model_dir(char *dir, size_t cap, const char *model)
{
    snprintf(dir, cap, "%s/models/%s", fx_shared(), model);
}

void *fx_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    cr_assert(buf && fread(buf, 1, (size_t)n, f) == (size_t)n, "cannot read %s", path);
    fclose(f);
    buf[n] = 0;
    if (len) *len = (size_t)n;
    return buf;
}

cJSON *fx_load_json(const char *path)
{
    char *buf = fx_slurp(path, NULL);
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    cr_assert(j, "%s: bad JSON", path);
    return j;
}

void fx_make_tmp(char *tmpl)
{
    cr_assert(mkdtemp(tmpl), "mkdtemp %s", tmpl);
}

void fx_rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
}

char *fx_path_in(const char *dir, const char *name)
{
    static char path[4][2048];
    static int k;
    char *p = path[k++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", dir, name);
    return p;
}

void fx_write_text(const char *dir, const char *name, const char *text)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    cr_assert(f, "cannot create %s", p);
    fputs(text, f);
    fclose(f);
}

void fx_write_bf16_model(const char *dir, const fx_tensor *t, size_t n, float (*value)(size_t i, size_t j))
{
    cr_assert_eq(mkdir(dir, 0755), 0, "mkdir %s", dir);
    ar_stw *w = ar_stw_open(dir, 0);
    cr_assert(w, "ar_stw_open %s", dir);
    for (size_t i = 0; i < n; i++) {
        size_t count = (size_t)t[i].s[0] * (t[i].nd == 2 ? t[i].s[1] : 1);
        uint16_t *v = malloc(count * sizeof *v);
        for (size_t j = 0; j < count; j++) v[j] = ar_f32_to_bf16(value(i, j));
        cr_assert_eq(ar_stw_put(w, t[i].name, AR_BF16, t[i].nd, t[i].s, v), 0);
        free(v);
    }
    cr_assert_eq(ar_stw_close(w), 0);
}

/* ---- error bounds (fixture.h derives them) -------------------------------- */

int fx_mode_ = FX_BOUNDS;
uint64_t fx_rng_ = 1;

void fx_set_mode(int mode, uint64_t seed)
{
    fx_mode_ = mode;
    fx_rng_ = seed * 0x9E3779B97F4A7C15ull + 1;
}

double fx_mca_tolerance(void (*run)(void *ctx, double *out), void *ctx, long n, double *exact)
{
    double *ex = exact ? exact : malloc(sizeof(double) * n), *out = malloc(sizeof(double) * n), dev = 0;
    fx_set_mode(FX_VALUES, 0);
    run(ctx, ex);
    for (int k = 1; k <= FX_MCA_RUNS; k++) {
        fx_set_mode(FX_MCA, (uint64_t)k);
        run(ctx, out);
        for (long i = 0; i < n; i++) dev = fmax(dev, fabs(out[i] - ex[i]));
    }
    fx_set_mode(FX_BOUNDS, 0);
    if (!exact) free(ex);
    free(out);
    cr_assert(isfinite(dev), "fx_mca_tolerance: a run diverged");
    return FX_MCA_FACTOR * dev;
}

void fx_mca_tolerances(void (*run)(void *ctx, double *out), void *ctx, long n, double *exact, double *tol)
{
    double *ex = exact ? exact : malloc(sizeof(double) * n), *out = malloc(sizeof(double) * n);
    fx_set_mode(FX_VALUES, 0);
    run(ctx, ex);
    for (long i = 0; i < n; i++) tol[i] = 0;
    for (int k = 1; k <= FX_MCA_RUNS; k++) {
        fx_set_mode(FX_MCA, (uint64_t)k);
        run(ctx, out);
        for (long i = 0; i < n; i++) tol[i] = fmax(tol[i], fabs(out[i] - ex[i]));
    }
    fx_set_mode(FX_BOUNDS, 0);
    for (long i = 0; i < n; i++) {
        cr_assert(isfinite(tol[i]), "fx_mca_tolerances: a run diverged");
        tol[i] *= FX_MCA_FACTOR;
    }
    if (!exact) free(ex);
    free(out);
}

void fx_fail(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cr_assert_fail("%s", msg);
    abort(); /* not reached: a failed assertion ends the test */
}

double fx_dot_bound(const float *a, long sa, const float *b, long sb, long n)
{
    double mag = 0;
    for (long i = 0; i < n; i++) mag += fabs((double)a[i * sa] * b[i * sb]);
    return fx_gamma((double)n) * mag;
}

int fx_within(double got, double want, double bound)
{
    return fabs(got - want) <= FX_SAFETY * bound;
}

void fx_assert_within(double got, double want, double bound, const char *what, ...)
{
    if (fx_within(got, want, bound)) return;
    char msg[512];
    va_list ap;
    va_start(ap, what);
    vsnprintf(msg, sizeof msg, what, ap);
    va_end(ap);
    cr_assert_fail("%s: got %.9g, want %.9g, |diff| %.3g > %g x bound %.3g", msg, got, want, fabs(got - want),
                   FX_SAFETY, bound);
}

void fx_assert_all_within(const float *got, const double *want, const double *bound, long n, const char *what)
{
    for (long i = 0; i < n; i++)
        if (!fx_within(got[i], want[i], bound[i])) fx_assert_within(got[i], want[i], bound[i], "%s[%ld]", what, i);
}

long fx_count_outside(const float *got, const double *want, const double *bound, long n)
{
    long c = 0;
    for (long i = 0; i < n; i++) c += !fx_within(got[i], want[i], bound[i]);
    return c;
}

double fx_central_diff(double fp, double fm, double fp2, double fm2, double h, double fmag, double *err)
{
    double d = (fp - fm) / (2 * h), d2 = (fp2 - fm2) / (4 * h);
    *err = fabs(d - d2) + 0x1p-40 * fmag / h;
    return d;
}
