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

double fx_gamma(double n)
{
    cr_assert(n >= 0 && n * FX_U < 0.5, "gamma_%g: n u must stay below 1/2", n);
    return n * FX_U / (1 - n * FX_U);
}

double fx_dot_bound(const float *a, long sa, const float *b, long sb, long n)
{
    double mag = 0;
    for (long i = 0; i < n; i++) mag += fabs((double)a[i * sa] * b[i * sb]);
    return fx_gamma((double)n) * mag;
}

/* u times the largest magnitude a result with value v and bound e can have. */
static double rnd(double v, double e) { return FX_U * (fabs(v) + e); }

fx_ev fx_add(fx_ev a, fx_ev b)
{
    double v = a.v + b.v, e = a.e + b.e;
    return (fx_ev){v, e + rnd(v, e)};
}

fx_ev fx_sub(fx_ev a, fx_ev b)
{
    double v = a.v - b.v, e = a.e + b.e;
    return (fx_ev){v, e + rnd(v, e)};
}

fx_ev fx_mul(fx_ev a, fx_ev b)
{
    double v = a.v * b.v, e = fabs(a.v) * b.e + fabs(b.v) * a.e + a.e * b.e;
    return (fx_ev){v, e + rnd(v, e)};
}

fx_ev fx_div(fx_ev a, fx_ev b)
{
    cr_assert(fabs(b.v) > b.e, "fx_div: the divisor %g may be 0 (bound %g)", b.v, b.e);
    double v = a.v / b.v, e = (a.e + fabs(v) * b.e) / (fabs(b.v) - b.e);
    return (fx_ev){v, e + rnd(v, e)};
}

fx_ev fx_sqrt(fx_ev a)
{
    cr_assert(a.v - a.e >= 0, "fx_sqrt: the argument %g may be negative (bound %g)", a.v, a.e);
    double v = sqrt(a.v), e = v - sqrt(a.v - a.e);   /* the larger side: sqrt is concave */
    return (fx_ev){v, e + rnd(v, e)};
}

fx_ev fx_exp(fx_ev a)
{
    double v = exp(a.v), e = v * expm1(a.e);
    return (fx_ev){v, e + 2 * rnd(v, e)};
}

fx_ev fx_log(fx_ev a)
{
    cr_assert(a.v - a.e > 0, "fx_log: the argument %g may be <= 0 (bound %g)", a.v, a.e);
    double v = log(a.v), e = log(a.v / (a.v - a.e));  /* the larger side: log is concave */
    return (fx_ev){v, e + 2 * rnd(v, e)};
}

fx_ev fx_cos(fx_ev a)
{
    double v = cos(a.v), e = fmin(2, fabs(sin(a.v)) * a.e + a.e * a.e / 2);
    return (fx_ev){v, e + 2 * rnd(v, e)};
}

fx_ev fx_sin(fx_ev a)
{
    double v = sin(a.v), e = fmin(2, fabs(cos(a.v)) * a.e + a.e * a.e / 2);
    return (fx_ev){v, e + 2 * rnd(v, e)};
}

fx_ev fx_round(fx_ev a) { return (fx_ev){a.v, a.e + rnd(a.v, a.e)}; }

fx_ev fx_scale(fx_ev a, double c) { return (fx_ev){a.v * c, a.e * fabs(c)}; }

fx_ev fx_acc_sum(const fx_acc *s)
{
    double g = s->n > 1 ? fx_gamma((double)(s->n - 1)) : 0;
    return (fx_ev){s->v, s->e + g * (s->mag + s->e)};
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
