#include "cli.h"
#include "error.h"
#include "runtime.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *cli_tool = "ar";
int cli_progress = -1;

/* Re-execute ourselves once with OPENBLAS_CORETYPE set when OpenBLAS loaded
 * slow fallback kernels (ar_blas_better_coretype); argv comes from
 * /proc/self/cmdline. A value already in the environment is never changed,
 * and on any failure we carry on with the kernels we have. */
static void fix_blas_kernels(void)
{
    if (getenv("OPENBLAS_CORETYPE")) return;
    const char *want = ar_blas_better_coretype();
    if (!want) return;
    FILE *f = fopen("/proc/self/cmdline", "rb");
    if (!f) return;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    if (n == 0 || n == sizeof buf - 1) return;
    buf[n] = 0;
    enum { MAXARG = 1024 };
    static char *args[MAXARG + 1];
    int argc = 0;
    for (size_t i = 0; i < n && argc < MAXARG; i += strlen(buf + i) + 1) args[argc++] = buf + i;
    if (argc == MAXARG) return;
    args[argc] = NULL;
    setenv("OPENBLAS_CORETYPE", want, 1);
    execv("/proc/self/exe", args);
}

void cli_init(const char *tool)
{
    fix_blas_kernels();
    cli_tool = tool;
    if (cli_progress < 0) cli_progress = isatty(2) ? 1 : 0;
}

static void vmsg(const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: ", cli_tool);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void cli_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg(fmt, ap);
    va_end(ap);
    exit(CLI_EXIT_FAIL);
}

void cli_die_lib(void) { cli_die("%s", ar_last_error()); }

void cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg(fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: run '%s --help' for usage\n", cli_tool, cli_tool);
    exit(CLI_EXIT_USAGE);
}

const char *cli_value(int argc, char **argv, int *i, const char *flag)
{
    const char *a = argv[*i];
    size_t n = strlen(flag);
    if (strncmp(a, flag, n)) return NULL;
    if (a[n] == '=') return a + n + 1;
    if (a[n] != 0) return NULL;
    if (*i + 1 >= argc) cli_usage_error("%s needs a value", flag);
    return argv[++*i];
}

long cli_long(const char *flag, const char *val, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno || end == val || *end) cli_usage_error("%s: '%s' is not an integer", flag, val);
    if (v < lo || v > hi) cli_usage_error("%s: %ld is out of range [%ld, %ld]", flag, v, lo, hi);
    return v;
}

double cli_double(const char *flag, const char *val, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end) cli_usage_error("%s: '%s' is not a number", flag, val);
    if (!(v >= lo && v <= hi)) cli_usage_error("%s: %g is out of range [%g, %g]", flag, v, lo, hi);
    return v;
}

int cli_common_flag(const char *arg)
{
    if (!strcmp(arg, "--quiet") || !strcmp(arg, "-q")) { cli_progress = 0; return 1; }
    if (!strcmp(arg, "--verbose") || !strcmp(arg, "-v")) { cli_progress = 2; return 1; }
    if (!strcmp(arg, "--progress")) { cli_progress = 1; return 1; }
    return 0;
}

int cli_io_flag(int argc, char **argv, int *i, const char *usage, const char *out_flag,
                const char **in, const char **out, const char **model)
{
    const char *v, *s = argv[*i];
    if (!strcmp(s, "--help") || !strcmp(s, "-h")) { fputs(usage, stdout); exit(CLI_EXIT_OK); }
    if (cli_common_flag(s)) return 1;
    if (in && ((v = cli_value(argc, argv, i, "-i")) || (v = cli_value(argc, argv, i, "--input")))) *in = v;
    else if ((v = cli_value(argc, argv, i, "-o")) || (v = cli_value(argc, argv, i, out_flag))) *out = v;
    else if ((v = cli_value(argc, argv, i, "--model"))) *model = v;
    else return 0;
    return 1;
}

/* Atomic output: at most a few open at once per process. The signal handler
 * reads tmp, so a slot's tmp is set before use and cleared before it is freed. */
enum { MAX_OUTS = 16 };
static struct { FILE *f; char *volatile tmp; char *final; } outs[MAX_OUTS];
static int outs_hooked;

static void outs_cleanup(void)
{
    for (int k = 0; k < MAX_OUTS; k++)
        if (outs[k].f && outs[k].tmp) unlink(outs[k].tmp);
}

/* Outputs written by libraries under "<final>.tmp*" names (cli_out_guard):
 * parent directory and base name, split when registered because the handler
 * may not allocate. */
enum { MAX_GUARDS = 16 };
static struct { char dir[4096], base[256]; volatile sig_atomic_t used; } guards[MAX_GUARDS];
static int signals_hooked;

/* Call fn(dfd, name, arg) for each entry of the open directory dfd, in passes
 * until a pass changes nothing (removing while listing can skip entries).
 * fn returns 1 when it removed the entry. Async-signal-safe. */
static void each_entry(int dfd, int (*fn)(int, const char *, const void *), const void *arg)
{
    char buf[4096];
    for (int pass = 0, removed = 1; removed && pass < 64; pass++) {
        removed = 0;
        lseek(dfd, 0, SEEK_SET);
        for (ssize_t n; (n = getdents64(dfd, buf, sizeof buf)) > 0;)
            for (ssize_t off = 0; off < n;) {
                struct dirent64 *e = (struct dirent64 *)(buf + off);
                off += e->d_reclen;
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) removed |= fn(dfd, e->d_name, arg);
            }
    }
}

static int unlink_file_at(int dfd, const char *name, const void *arg)
{
    (void)arg;
    return unlinkat(dfd, name, 0) == 0;
}

/* Remove name in directory dfd: a file, or a directory and the files in it
 * (the writers' temporary folders are flat). Async-signal-safe. */
static int remove_entry_at(int dfd, const char *name, const void *arg)
{
    (void)arg;
    if (unlinkat(dfd, name, 0) == 0) return 1;
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return 0;
    each_entry(fd, unlink_file_at, NULL);
    close(fd);
    return unlinkat(dfd, name, AT_REMOVEDIR) == 0;
}

/* Remove an entry whose name starts with "<base>.tmp" (base is arg). */
static int remove_if_tmp_of(int dfd, const char *name, const void *arg)
{
    const char *base = arg;
    size_t bl = strlen(base);
    return !strncmp(name, base, bl) && !strncmp(name + bl, ".tmp", 4) && remove_entry_at(dfd, name, NULL);
}

/* SIGINT/SIGTERM/SIGHUP: remove what is not committed, then die of the signal
 * (the handler resets the default action itself, so raise terminates). */
static void on_fatal_signal(int sig)
{
    for (int k = 0; k < MAX_OUTS; k++) {
        char *t = outs[k].tmp;
        if (t) unlink(t);
    }
    for (int k = 0; k < MAX_GUARDS; k++) {
        if (!guards[k].used) continue;
        int fd = open(guards[k].dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) continue;
        each_entry(fd, remove_if_tmp_of, guards[k].base);
        close(fd);
    }
    /* Back to the default action only now: with SA_RESETHAND a second copy of
     * the signal (timeout(1) sends one to the process and one to its group)
     * reaching another thread killed the process before the unlinks. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

/* Install on_fatal_signal once, leaving alone signals the caller ignores
 * (nohup's SIGHUP, SIGINT of a background job). */
static void hook_signals(void)
{
    if (signals_hooked) return;
    signals_hooked = 1;
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) {
        struct sigaction old, sa;
        memset(&sa, 0, sizeof sa);
        if (sigaction(sigs[i], NULL, &old) || old.sa_handler == SIG_IGN) continue;
        sa.sa_handler = on_fatal_signal;
        sa.sa_flags = 0;
        sigfillset(&sa.sa_mask);
        sigaction(sigs[i], &sa, NULL);
    }
}

void cli_out_guard(const char *path)
{
    if (!path || !strcmp(path, "-")) return;
    int k = 0;
    while (k < MAX_GUARDS && guards[k].used) k++;
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t dl = slash ? (size_t)(slash - path) : 0;
    if (k == MAX_GUARDS || !*base || dl + 2 > sizeof guards[k].dir || strlen(base) >= sizeof guards[k].base) return;
    if (!slash) strcpy(guards[k].dir, ".");
    else if (dl == 0) strcpy(guards[k].dir, "/");
    else { memcpy(guards[k].dir, path, dl); guards[k].dir[dl] = 0; }
    strcpy(guards[k].base, base);
    guards[k].used = 1;
    hook_signals();
}

FILE *cli_out_open(const char *path, int binary)
{
    if (!path || !strcmp(path, "-")) {
        if (binary && isatty(1)) cli_die("refusing to write binary data to a terminal (use -o FILE or a pipe)");
        return stdout;
    }
    int k = 0;
    while (k < MAX_OUTS && outs[k].f) k++;
    if (k == MAX_OUTS) cli_die("too many open outputs");
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    /* Name the file for the signal handler and hook it before the file exists,
     * so no moment leaves an unguarded temporary file behind. */
    outs[k].tmp = tmp;
    hook_signals();
    FILE *f = fopen(tmp, "wb");
    if (!f) { outs[k].tmp = NULL; cli_die("%s: cannot create: %s", path, strerror(errno)); }
    outs[k].f = f; outs[k].final = strdup(path);
    if (!outs_hooked) { atexit(outs_cleanup); outs_hooked = 1; }
    return f;
}

static int out_slot(FILE *f)
{
    for (int k = 0; k < MAX_OUTS; k++) if (outs[k].f == f) return k;
    return -1;
}

void cli_out_commit(FILE *f)
{
    int k = out_slot(f);
    if (k < 0) { /* stdout */
        if (fflush(f) || ferror(f)) cli_die("write error on standard output");
        return;
    }
    if (fflush(f) || ferror(f) || fclose(f)) {
        outs[k].f = NULL;
        unlink(outs[k].tmp);
        cli_die("%s: write error: %s", outs[k].final, strerror(errno));
    }
    if (rename(outs[k].tmp, outs[k].final)) cli_die("%s: cannot rename into place: %s", outs[k].final, strerror(errno));
    char *tmp = outs[k].tmp;
    outs[k].tmp = NULL;                 /* before the free: the signal handler reads it */
    free(tmp); free(outs[k].final);
    outs[k].f = NULL; outs[k].final = NULL;
}

void cli_out_abort(FILE *f)
{
    int k = out_slot(f);
    if (k < 0) return;
    fclose(f);
    char *tmp = outs[k].tmp;
    unlink(tmp);
    outs[k].tmp = NULL;                 /* before the free: the signal handler reads it */
    free(tmp); free(outs[k].final);
    outs[k].f = NULL; outs[k].final = NULL;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void cli_progress_line(const char *what, int i, int n, double t0, const char *extra)
{
    if (cli_progress <= 0) return;
    double el = cli_now() - t0;
    double eta = i > 0 ? el / i * (n - i) : 0;
    fprintf(stderr, "%s: %s %d/%d  elapsed %.1fs  ETA %.1fs%s%s\n", cli_tool, what, i, n, el, eta,
            extra ? "  " : "", extra ? extra : "");
}
