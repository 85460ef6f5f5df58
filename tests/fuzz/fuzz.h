/* fuzz.h — helpers shared by the fuzz targets in tests/fuzz/fuzz_<name>.c.
 *
 * Each target defines LLVMFuzzerTestOneInput and is built two ways:
 *  - with clang -fsanitize=fuzzer,address,undefined by `make fuzz`, which runs
 *    libFuzzer over tests/fuzz/corpus/<name>/;
 *  - with the normal compiler and replay_main.c by `make test`, which feeds it
 *    every file of tests/fuzz/corpus/<name>/ and tests/fuzz/regressions/<name>/
 *    (crash reproducers kept as regression inputs).
 * Beyond "does not crash", targets check what a caller relies on: a failing
 * call leaves a non-empty error message, a succeeding one returns values that
 * respect the documented invariants. A broken invariant calls fuzz_fail, which
 * aborts, so libFuzzer saves the input and the replay exits non-zero. */
#ifndef AR_FUZZ_H
#define AR_FUZZ_H
#include "error.h"
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Print why and abort (a crash for libFuzzer, a failure for the replay). */
static inline _Noreturn void fuzz_fail(const char *why)
{
    fprintf(stderr, "fuzz invariant broken: %s (last error: \"%s\")\n", why, ar_last_error());
    abort();
}

/* Forget the previous message so that a failure without one is noticed. */
static inline void fuzz_clear_error(void) { ar_error("%s", ""); }

/* A call failed: its message must exist (tools print it as the only line).
 * With AR_FUZZ_VERBOSE set the message is printed, to see what inputs are
 * rejected for (e.g. that the seeds are accepted). */
static inline void fuzz_expect_message(void)
{
    if (!ar_last_error()[0]) fuzz_fail("call failed without an error message");
    if (getenv("AR_FUZZ_VERBOSE")) fprintf(stderr, "rejected: %s\n", ar_last_error());
}

/* The fuzz input as a NUL-terminated heap string (embedded NULs stay; parsers
 * of text then see it cut at the first one, as they would a file). */
static inline char *fuzz_cstr(const uint8_t *data, size_t n)
{
    char *s = malloc(n + 1);
    if (!s) fuzz_fail("out of memory");
    memcpy(s, data, n);
    s[n] = 0;
    return s;
}

static char fuzz_dir_path[256];

/* atexit hook: remove the scratch directory and the flat files in it. */
static inline void fuzz_dir_remove(void)
{
    DIR *d = opendir(fuzz_dir_path);
    if (!d) return;
    char path[600];
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", fuzz_dir_path, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(fuzz_dir_path);
}

/* Directory for this process's scratch files: /dev/shm when present (no disk
 * writes per input), else /tmp. Created on first use and removed at exit;
 * files in it are overwritten per input, so they never accumulate. */
static inline const char *fuzz_dir(void)
{
    if (!fuzz_dir_path[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "%s/ar-fuzz-XXXXXX", base);
        if (!mkdtemp(fuzz_dir_path)) fuzz_fail("cannot create a scratch directory");
        atexit(fuzz_dir_remove);
    }
    return fuzz_dir_path;
}

/* Write data to fuzz_dir()/name (replacing it) and return the path, for
 * readers that take a path (mmap'd safetensors and GGUF, tokenizer.json,
 * datasets whose kind is chosen by their file name). */
static inline const char *fuzz_file(const char *name, const uint8_t *data, size_t n)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) fuzz_fail("cannot write a scratch file");
    return path;
}

/* Remove fuzz_dir()/name (between inputs, so one input's file cannot leak into the next). */
static inline void fuzz_unlink(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    unlink(path);
}

#endif
