/* replay_main.c — runs a fuzz target without libFuzzer: every file named on
 * the command line, or found (one level deep) in a directory named there, is
 * passed once to LLVMFuzzerTestOneInput. Linked with each tests/fuzz/fuzz_*.c
 * by the Makefile so that `make test` replays the seed corpora and the kept
 * crash reproducers with the ordinary (or the SANITIZE=1) build. Exits 0 when
 * every input ran; a broken invariant or a sanitizer report ends it earlier
 * with a non-zero status. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional one-time setup some targets define (as libFuzzer would call it). */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "replay: %s: cannot open\n", path); return -1; }
    size_t cap = 4096, n = 0, got;
    uint8_t *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0)
        if ((n += got) == cap) buf = realloc(buf, cap *= 2);
    fclose(f);
    if (!buf) { fprintf(stderr, "replay: %s: out of memory\n", path); return -1; }
    /* an exact-size copy, so that reads past the input's end are caught by ASan */
    uint8_t *exact = malloc(n ? n : 1);
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 0;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Files of a directory in name order (a stable replay order for messages). */
static int run_dir(const char *dir, int *count)
{
    DIR *d = opendir(dir);
    if (!d) { fprintf(stderr, "replay: %s: cannot open\n", dir); return -1; }
    char **names = NULL;
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        names = realloc(names, (n + 1) * sizeof *names);
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        names[n] = malloc(len);
        snprintf(names[n++], len, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, by_name);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
            if (run_file(names[i])) rc = -1;
            else ++*count;
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    int count = 0, rc = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) continue;   /* a target may have no regressions yet */
        if (S_ISDIR(st.st_mode)) rc |= run_dir(argv[i], &count);
        else if (run_file(argv[i])) rc = -1;
        else count++;
    }
    printf("%s: %d inputs replayed\n", argv[0], count);
    return rc ? 1 : 0;
}
