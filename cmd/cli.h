/* cli.h — what every ar tool shares on the command line: error exits, flag
 * parsing with range checks, progress on stderr, outputs written under a
 * temporary name and renamed when complete.
 *
 * Exit codes (documented in ar(7)): 0 success, 1 bad input or runtime failure,
 * 2 bad usage (unknown flag, value out of range). */
#ifndef AR_CLI_H
#define AR_CLI_H
#include <stdio.h>

enum { CLI_EXIT_OK = 0, CLI_EXIT_FAIL = 1, CLI_EXIT_USAGE = 2 };

/* Name used as the "tool: " prefix of messages; set by cli_init. */
extern const char *cli_tool;
/* 1 with --quiet, 2 with --verbose, else 1 when stderr is a terminal or --progress given, 0 otherwise. */
extern int cli_progress;

/* Remember the tool name. Call first in main. */
void cli_init(const char *tool);

/* Print "tool: message" and exit 1 (bad input / runtime failure). */
_Noreturn void cli_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print "tool: <libar's last error>" and exit 1. */
_Noreturn void cli_die_lib(void);
/* Print "tool: message" plus a hint to run --help, exit 2 (usage). */
_Noreturn void cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Flag matching for loops over argv. If argv[*i] is `flag VALUE` or `flag=VALUE`,
 * return VALUE (advancing *i past it); otherwise NULL. A flag without its value is
 * a usage error. */
const char *cli_value(int argc, char **argv, int *i, const char *flag);
/* Parse an integer / float flag value in [lo, hi] or die with a usage error. */
long   cli_long(const char *flag, const char *val, long lo, long hi);
double cli_double(const char *flag, const char *val, double lo, double hi);

/* Handle the common flags --quiet, --verbose, --progress; returns 1 if argv[i] was one. */
int cli_common_flag(const char *arg);

/* The flags that ar-calib, ar-tune, ar-scheme and ar-pack spell alike:
 * --help/-h (usage to stdout, exit 0), the common flags, -i/--input FILE (only
 * where in is not NULL), -o/out_flag FILE and --model DIR, storing the values
 * in *in, *out and *model. Returns 1 when argv[*i] was one of them (*i past
 * its value), else 0 so the tool goes on with its own flags. */
int cli_io_flag(int argc, char **argv, int *i, const char *usage, const char *out_flag,
                const char **in, const char **out, const char **model);

/* Atomic output. cli_out_open("x.bin") opens "x.bin.tmp.PID" for writing (or
 * stdout for NULL or "-", refusing a terminal when binary is set). cli_out_commit
 * closes and renames it into place; cli_out_abort removes it. An atexit hook
 * removes any uncommitted temporary file, so a failure never leaves a file that
 * looks complete. */
FILE *cli_out_open(const char *path, int binary);
void  cli_out_commit(FILE *f);
void  cli_out_abort(FILE *f);

/* Interruption: on SIGINT, SIGTERM or SIGHUP the first of cli_out_open or
 * cli_out_guard installs a handler that removes the uncommitted temporary
 * outputs and then dies of the same signal (exit status 128+N in a shell).
 * cli_out_guard(path) extends this to outputs a library writes under its own
 * temporary names: every sibling of path named "<basename of path>.tmp*"
 * (a file, or a directory with the files in it) is removed, which covers the
 * exporters' "DIR.tmp-PID" folders and the GGUF writer's "FILE.tmp" and
 * "FILE.tmp.data". The handler uses only async-signal-safe calls. SIGKILL
 * cannot be caught: it leaves those *.tmp* names, never a final name. */
void  cli_out_guard(const char *path);

/* Progress line on stderr: "tool: what i/n  elapsed 12.3s  ETA 40.1s  extra".
 * Silent unless cli_progress. t0 from cli_now(). */
double cli_now(void);
void cli_progress_line(const char *what, int i, int n, double t0, const char *extra);

#endif
