/* spill.c — file-backed arrays (see spill.h). */
#include "spill.h"
#include "error.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The live arrays: a run keeps a handful (the chains), so a small table. */
#define SPILL_MAX 64
static struct {
    void *p;
    size_t bytes;
    int fd;
} spills[SPILL_MAX];
static pthread_mutex_t spill_mu = PTHREAD_MUTEX_INITIALIZER;

/* A new file under dir that no other process sees: O_TMPFILE where the file
 * system has it, else a named temporary file unlinked at once. */
static int open_unlinked(const char *dir)
{
#ifdef O_TMPFILE
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0) return fd;
#endif
    char path[4096];
    if (snprintf(path, sizeof path, "%s/ar-spill-XXXXXX", dir) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd2 = mkstemp(path);
    if (fd2 >= 0) unlink(path);
    return fd2;
}

static int slot_of(const void *p)
{
    for (int i = 0; i < SPILL_MAX; i++) if (p && spills[i].p == p) return i;
    return -1;
}

void *ar_spill_alloc(const char *dir, size_t bytes)
{
    if (!dir || !*dir) dir = ".";
    if (bytes == 0) bytes = 1;
    int fd = open_unlinked(dir);
    if (fd < 0) return ar_error("%s: cannot make a spill file: %s", dir, strerror(errno)), NULL;
    if (ftruncate(fd, (off_t)bytes)) {
        ar_error("%s: cannot size a spill file to %zu bytes: %s", dir, bytes, strerror(errno));
        close(fd);
        return NULL;
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        ar_error("%s: cannot map a spill file of %zu bytes: %s", dir, bytes, strerror(errno));
        close(fd);
        return NULL;
    }
    pthread_mutex_lock(&spill_mu);
    int s = -1;
    for (int i = 0; i < SPILL_MAX && s < 0; i++) if (!spills[i].p) s = i;
    if (s >= 0) spills[s].p = p, spills[s].bytes = bytes, spills[s].fd = fd;
    pthread_mutex_unlock(&spill_mu);
    if (s < 0) {
        munmap(p, bytes);
        close(fd);
        return ar_error("%s: more than %d spilled arrays at once", dir, SPILL_MAX), NULL;
    }
    return p;
}

int ar_spill_owns(const void *p)
{
    pthread_mutex_lock(&spill_mu);
    int s = slot_of(p);
    pthread_mutex_unlock(&spill_mu);
    return s >= 0;
}

int ar_spill_release(void *p, size_t off, size_t len)
{
    pthread_mutex_lock(&spill_mu);
    int s = slot_of(p);
    size_t bytes = s >= 0 ? spills[s].bytes : 0;
    int fd = s >= 0 ? spills[s].fd : -1;
    pthread_mutex_unlock(&spill_mu);
    if (s < 0 || off >= bytes || len == 0) return 0;
    if (len > bytes - off) len = bytes - off;
    /* whole pages: those partly outside the range are written back and
     * dropped too, which is harmless (the file holds their bytes) */
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t a = off / pg * pg, e = (off + len + pg - 1) / pg * pg;
    if (e > (bytes + pg - 1) / pg * pg) e = (bytes + pg - 1) / pg * pg;
    char *base = (char *)p + a;
    if (msync(base, e - a, MS_SYNC)) return ar_error("spill file: write-back failed: %s", strerror(errno));
    /* out of this process's page tables, then out of the page cache */
    madvise(base, e - a, MADV_DONTNEED);
    posix_fadvise(fd, (off_t)a, (off_t)(e - a), POSIX_FADV_DONTNEED);
    return 0;
}

void ar_spill_free(void *p)
{
    if (!p) return;
    pthread_mutex_lock(&spill_mu);
    int s = slot_of(p);
    if (s >= 0) {
        munmap(spills[s].p, spills[s].bytes);
        close(spills[s].fd);
        spills[s].p = NULL;
    }
    pthread_mutex_unlock(&spill_mu);
}
