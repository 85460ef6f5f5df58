/* fixture.h — helpers shared by the unit test binaries (tests/unit/fixture.c
 * is linked into every one of them by the Makefile's TESTLIB rule): where the
 * shared models are, whole files and JSON read in, scratch folders, and a
 * small bf16 safetensors "model" folder. Failures are Criterion assertions,
 * so they end the calling test with the file named. */
#ifndef AR_TEST_FIXTURE_H
#define AR_TEST_FIXTURE_H

#include <cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* $AR_SHARED, or ../shared when it is unset or empty (DEVELOPERS.md). */
const char *fx_shared(void);

/* dir = "$AR_SHARED/models/<model>" (cap bytes). */
void fx_model_dir(char *dir, size_t cap, const char *model);

/* The whole file at path, malloc'd (caller frees) with a NUL after its
 * bytes so text can be used as a string; void * so binary callers take it
 * as float or bytes. *len receives the size unless len is NULL. Asserts it
 * opens and reads. */
void *fx_slurp(const char *path, size_t *len);

/* The file at path parsed as JSON (caller cJSON_Delete's); asserts it parses. */
cJSON *fx_load_json(const char *path);

/* mkdtemp on tmpl (a "...XXXXXX" buffer, rewritten in place); asserts success. */
void fx_make_tmp(char *tmpl);

/* rm -rf dir; asserts the command succeeds. */
void fx_rm_rf(const char *dir);

/* "dir/name" in one of four static buffers used in turn, so a call may
 * take up to four such paths at once. */
char *fx_path_in(const char *dir, const char *name);

/* Writes text as the file dir/name (created or truncated). */
void fx_write_text(const char *dir, const char *name, const char *text);

/* One tensor of a fixture model: its name and a 1-D or 2-D shape. */
typedef struct {
    const char *name;
    int nd;
    int64_t s[2];
} fx_tensor;

/* Creates the folder dir holding the n tensors as bf16 in one safetensors
 * file; element j of tensor i is value(i, j) rounded to bf16. */
void fx_write_bf16_model(const char *dir, const fx_tensor *t, size_t n, float (*value)(size_t i, size_t j));

#endif
