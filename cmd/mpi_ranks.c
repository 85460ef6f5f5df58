/* mpi_ranks.c — ar_reducer over MPI_COMM_WORLD (mpi_ranks.h). The library
 * asks for three collectives, an all-gather of byte counts known to every
 * rank, an all-to-all and a broadcast; each is split into calls of at most
 * 1 GiB, as MPI counts are ints. */
#include "mpi_ranks.h"
#include "cli.h"
#include "error.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The launchers' variables that say "you are one of several ranks". */
static int launched_size(void)
{
    const char *v[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"};
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        const char *s = getenv(v[i]);
        if (s && *s) return atoi(s);
    }
    return getenv("PMIX_RANK") ? 2 : 1;
}

#ifdef AR_HAVE_MPI
#include <mpi.h>

enum { PIECE = 1 << 30 };
static ar_reducer world;
static int finished;

static int mpi_fail(const char *what, int err)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(err, msg, &len);
    return ar_error("MPI %s: %s", what, msg);
}

/* In rounds: every rank sends the next piece of its counts (at most 1 GiB
 * in all per round, as MPI counts are ints; 0 bytes once it has sent all). */
static int mpi_allgather(void *ctx, const void *send, void *recv, const size_t *counts)
{
    (void)ctx;
    int n = world.size;
    size_t piece = ((size_t)PIECE / n) & ~(size_t)7, most = 0, tmpsz = 0;
    int *cnt = malloc(sizeof(int) * n), *dsp = malloc(sizeof(int) * n);
    size_t *base = malloc(sizeof(size_t) * n);
    for (int r = 0; base && r < n; r++) {
        base[r] = r ? base[r - 1] + counts[r - 1] : 0;
        most = counts[r] > most ? counts[r] : most;
        tmpsz += counts[r] < piece ? counts[r] : piece;
    }
    char *tmp = malloc(tmpsz + 1);
    int rc = !cnt || !dsp || !base || !tmp ? ar_error("out of memory for an all-gather") : 0;
    for (size_t done = 0; !rc && (done == 0 || done < most); done += piece) {
        int tot = 0;
        for (int r = 0; r < n; r++) {
            size_t c = counts[r] > done ? counts[r] - done : 0;
            cnt[r] = (int)(c < piece ? c : piece);
            dsp[r] = tot, tot += cnt[r];
        }
        int err = MPI_Allgatherv((const char *)send + (cnt[world.rank] ? done : 0), cnt[world.rank], MPI_BYTE, tmp,
                                 cnt, dsp, MPI_BYTE, MPI_COMM_WORLD);
        if (err != MPI_SUCCESS) rc = mpi_fail("all-gather", err);
        for (int r = 0; !rc && r < n; r++) memcpy((char *)recv + base[r] + done, tmp + dsp[r], cnt[r]);
    }
    free(tmp); free(cnt); free(dsp); free(base);
    return rc;
}

/* In rounds, as the all-gather: each round moves the next piece of every
 * (sender, receiver) pair's bytes, at most 1 GiB in all, packed through
 * buffers so that every MPI count and displacement is an int. */
static int mpi_alltoall(void *ctx, const void *send, const size_t *scounts, void *recv, const size_t *rcounts)
{
    (void)ctx;
    int n = world.size;
    size_t piece = ((size_t)PIECE / n) & ~(size_t)7, most = 0;
    int *sc = malloc(sizeof(int) * n), *sd = malloc(sizeof(int) * n), *rc_ = malloc(sizeof(int) * n),
        *rd = malloc(sizeof(int) * n);
    size_t *sbase = malloc(sizeof(size_t) * n), *rbase = malloc(sizeof(size_t) * n);
    char *stmp = malloc((size_t)n * piece + 1), *rtmp = malloc((size_t)n * piece + 1);
    int rc = !sc || !sd || !rc_ || !rd || !sbase || !rbase || !stmp || !rtmp ? ar_error("out of memory for an all-to-all") : 0;
    for (int r = 0; !rc && r < n; r++) {
        sbase[r] = r ? sbase[r - 1] + scounts[r - 1] : 0;
        rbase[r] = r ? rbase[r - 1] + rcounts[r - 1] : 0;
        most = scounts[r] > most ? scounts[r] : most;
        most = rcounts[r] > most ? rcounts[r] : most;
    }
    /* every rank runs the same rounds: the largest count over all ranks */
    unsigned long long m = most;
    if (!rc) {
        int err = MPI_Allreduce(MPI_IN_PLACE, &m, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
        if (err != MPI_SUCCESS) rc = mpi_fail("all-to-all sizes", err);
    }
    for (size_t done = 0; !rc && (done == 0 || done < m); done += piece) {
        int st = 0, rt = 0;
        for (int r = 0; r < n; r++) {
            size_t c = scounts[r] > done ? scounts[r] - done : 0, d = rcounts[r] > done ? rcounts[r] - done : 0;
            sc[r] = (int)(c < piece ? c : piece), sd[r] = st, st += sc[r];
            rc_[r] = (int)(d < piece ? d : piece), rd[r] = rt, rt += rc_[r];
            memcpy(stmp + sd[r], (const char *)send + sbase[r] + done, sc[r]);
        }
        int err = MPI_Alltoallv(stmp, sc, sd, MPI_BYTE, rtmp, rc_, rd, MPI_BYTE, MPI_COMM_WORLD);
        if (err != MPI_SUCCESS) rc = mpi_fail("all-to-all", err);
        for (int r = 0; !rc && r < n; r++) memcpy((char *)recv + rbase[r] + done, rtmp + rd[r], rc_[r]);
    }
    free(sc), free(sd), free(rc_), free(rd), free(sbase), free(rbase), free(stmp), free(rtmp);
    return rc;
}

static int mpi_bcast(void *ctx, void *buf, size_t n, int root)
{
    (void)ctx;
    for (size_t done = 0; done < n; done += PIECE) {
        int c = (int)(n - done < PIECE ? n - done : PIECE);
        int err = MPI_Bcast((char *)buf + done, c, MPI_BYTE, root, MPI_COMM_WORLD);
        if (err != MPI_SUCCESS) return mpi_fail("broadcast", err);
    }
    return 0;
}

/* An exit before mpi_ranks_finish (cli_die, an error return) ends every
 * rank: the others would wait in the next collective for ever. */
static void abort_job(void)
{
    if (finished) return;
    fprintf(stderr, "%s: rank %d of %d stopped: ending the job\n", cli_tool, world.rank, world.size);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

ar_reducer *mpi_ranks_start(int *argc, char ***argv)
{
    if (launched_size() <= 1) return NULL;
    int err = MPI_Init(argc, argv);
    if (err != MPI_SUCCESS) { mpi_fail("init", err); cli_die_lib(); }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &world.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world.size);
    world.allgather = mpi_allgather;
    world.bcast = mpi_bcast;
    world.alltoall = mpi_alltoall;
    atexit(abort_job);
    if (world.size == 1) { finished = 1; MPI_Finalize(); return NULL; }
    return &world;
}

int mpi_ranks_gather(ar_reducer *rd, double v, double *out)
{
    int err = MPI_Gather(&v, 1, MPI_DOUBLE, out, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    (void)rd;
    return err == MPI_SUCCESS ? 0 : mpi_fail("gather", err);
}

void mpi_ranks_finish(ar_reducer *rd)
{
    if (!rd || finished) return;
    finished = 1;
    MPI_Finalize();
}

#else

ar_reducer *mpi_ranks_start(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    int n = launched_size();
    if (n > 1)
        cli_die("started as one of %d ranks, but this build has no MPI (install libopenmpi-dev, make deps, "
                "and rebuild)", n);
    return NULL;
}

int mpi_ranks_gather(ar_reducer *rd, double v, double *out)
{
    (void)rd, (void)v, (void)out;
    return ar_error("no MPI in this build");
}

void mpi_ranks_finish(ar_reducer *rd) { (void)rd; }

#endif
