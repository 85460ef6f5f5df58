/* fixture.c — helpers shared by the unit tests (fixture.h). */
#include "fixture.h"

#include "dtype.h"
#include "safetensors_writer.h"
#include <criterion/criterion.h>
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
