/* test_spill.c — file-backed arrays (spill.h): zero-filled at first, bytes
 * written through the pointer survive a release (written back and dropped
 * from memory, read again from the file), the file is gone from the
 * directory at once, ownership is known, and a directory that cannot hold
 * the file fails with an error naming it. */
#include "error.h"
#include "spill.h"
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    cr_assert(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

Test(spill, round_trip_through_release)
{
    char dir[] = "/tmp/ar-test-spill-XXXXXX";
    cr_assert(mkdtemp(dir));
    const size_t n = (3u << 20) + 123;   /* not a whole number of pages */
    uint16_t *p = ar_spill_alloc(dir, n * sizeof *p);
    cr_assert(p, "%s", ar_last_error());
    cr_assert(ar_spill_owns(p));
    cr_assert_eq(dir_entries(dir), 0, "the spill file is visible in its directory");
    for (size_t i = 0; i < n; i++) cr_assert_eq(p[i], 0);
    for (size_t i = 0; i < n; i++) p[i] = (uint16_t)(i * 2654435761u >> 7);
    /* a range that starts and ends inside pages, then the whole array */
    cr_assert_eq(ar_spill_release(p, 1001, 777777), 0);
    cr_assert_eq(ar_spill_release(p, 0, n * sizeof *p), 0);
    for (size_t i = 0; i < n; i++) cr_assert_eq(p[i], (uint16_t)(i * 2654435761u >> 7), "element %zu", i);
    ar_spill_free(p);
    cr_assert_not(ar_spill_owns(p));
    cr_assert_eq(rmdir(dir), 0);
}

Test(spill, not_spilled_and_errors)
{
    char buf[64] = {0};
    cr_assert_not(ar_spill_owns(buf));
    cr_assert_eq(ar_spill_release(buf, 0, sizeof buf), 0, "release of a plain array is a no-op");
    ar_spill_free(NULL);
    cr_assert_null(ar_spill_alloc("/nonexistent/ar-spill-dir", 4096));
    cr_assert(strstr(ar_last_error(), "/nonexistent/ar-spill-dir"), "%s", ar_last_error());
}
