/* test_checkpoint.c — checkpoint directories: fresh/resume/mismatch decisions
 * from the manifest, replayed records byte-identical to a direct write, chain
 * state round trips and size checks, states a kill can leave (a block file
 * not yet committed, stray temporaries), the directory lock, and the digests. */
#include "hash.h"
#include "checkpoint.h"
#include "error.h"
#include "fixture.h"
#include "stream.h"
#include <criterion/criterion.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_dir[64];   /* short: every path built from it fits PATH_MAX */

static void make_dir(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/ar-test-ckpt-XXXXXX");
    cr_assert(mkdtemp(g_dir));
}

static void remove_dir(void)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(checkpoint, .init = make_dir, .fini = remove_dir);

static const char settings[] = "{\"iters\":10,\"seed\":42,\"scheme\":\"W4A16\"}";

static void path_in(char *p, const char *name) { snprintf(p, PATH_MAX, "%s/%s", g_dir, name); }

static void spit(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* The records block b writes: two tensors whose payloads depend on b. */
static void write_block_records(ar_stream_writer *w, int b)
{
    uint8_t codes[6 * 40];
    float scale[6];
    for (int i = 0; i < 240; i++) codes[i] = (uint8_t)(i * 7 + b);
    for (int i = 0; i < 6; i++) scale[i] = 0.5f * i + b;
    char name[64];
    int64_t s2[2] = {6, 40}, s1[1] = {6};
    snprintf(name, sizeof name, "model.layers.%d.q.qweight", b);
    cr_assert_eq(ar_stream_write_tensor(w, name, AR_U8, 2, s2, "{\"bits\":4}", codes), 0);
    snprintf(name, sizeof name, "model.layers.%d.q.scale", b);
    cr_assert_eq(ar_stream_write_tensor(w, name, AR_F32, 1, s1, "{}", scale), 0);
}

/* Tune "block" b through the checkpoint and commit it with chain arrays. */
static void finish_block(ar_checkpoint *ck, int b, const ar_ckpt_array *arr, int n)
{
    ar_stream_writer *w = ar_ckpt_block_begin(ck, b);
    cr_assert(w, "%s", ar_last_error());
    write_block_records(w, b);
    cr_assert_eq(ar_ckpt_block_end(ck, w), 0, "%s", ar_last_error());
    cr_assert_eq(ar_ckpt_commit(ck, b, arr, n), 0, "%s", ar_last_error());
}

Test(checkpoint, fresh_then_resume_then_mismatch)
{
    ar_checkpoint *ck = ar_ckpt_open(g_dir, settings, 4, NULL);
    cr_assert(ck, "%s", ar_last_error());
    cr_assert_eq(ar_ckpt_next_block(ck), 0);
    finish_block(ck, 0, NULL, 0);
    ar_ckpt_close(ck);

    /* same settings (keys in another order): resume after block 0 */
    int mismatch = -1;
    ck = ar_ckpt_open(g_dir, "{\"scheme\":\"W4A16\",\"seed\":42,\"iters\":10}", 4, &mismatch);
    cr_assert(ck, "%s", ar_last_error());
    cr_assert_eq(mismatch, 0);
    cr_assert_eq(ar_ckpt_next_block(ck), 1);
    ar_ckpt_close(ck);

    struct { const char *settings; int nblocks; const char *want; } bad[] = {
        {"{\"iters\":11,\"seed\":42,\"scheme\":\"W4A16\"}", 4, "iters differs (checkpoint 10, this run 11)"},
        {"{\"iters\":10,\"seed\":42,\"scheme\":\"W2A16\"}", 4, "scheme differs (checkpoint \"W4A16\", this run \"W2A16\")"},
        {"{\"iters\":10,\"seed\":42,\"scheme\":\"W4A16\",\"lr\":0.1}", 4, "lr differs (checkpoint unset"},
        {"{\"iters\":10,\"scheme\":\"W4A16\"}", 4, "seed differs (checkpoint has it"},
        {settings, 5, "nblocks differs (checkpoint 4, this run 5)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mismatch = -1;
        cr_assert_null(ar_ckpt_open(g_dir, bad[i].settings, bad[i].nblocks, &mismatch), "case %zu opened", i);
        cr_assert_eq(mismatch, 1, "case %zu", i);
        cr_assert(strstr(ar_last_error(), bad[i].want), "case %zu: %s", i, ar_last_error());
        cr_assert(strstr(ar_last_error(), "manifest.json"), "%s", ar_last_error());
    }
    /* a refused run changed nothing: the original settings still resume */
    ck = ar_ckpt_open(g_dir, settings, 4, NULL);
    cr_assert(ck);
    cr_assert_eq(ar_ckpt_next_block(ck), 1);
    ar_ckpt_close(ck);
}

/* The first run dies in block 0: its manifest already ties the directory. */
Test(checkpoint, manifest_written_before_the_first_block)
{
    ar_checkpoint *ck = ar_ckpt_open(g_dir, settings, 3, NULL);
    cr_assert(ck);
    ar_ckpt_close(ck);
    int mismatch;
    cr_assert_null(ar_ckpt_open(g_dir, "{\"iters\":1,\"seed\":42,\"scheme\":\"W4A16\"}", 3, &mismatch));
    cr_assert_eq(mismatch, 1);
}

/* Replaying blocks gives the bytes of writing the same records directly
 * (exact on any machine: stored bytes copied, no arithmetic). */
Test(checkpoint, replay_is_byte_identical)
{
    ar_checkpoint *ck = ar_ckpt_open(g_dir, settings, 3, NULL);
    cr_assert(ck);
    for (int b = 0; b < 3; b++) finish_block(ck, b, NULL, 0);

    FILE *fa = tmpfile(), *fb = tmpfile();
    ar_stream_writer *wa = ar_stream_writer_open(fa, "direct", 3), *wb = ar_stream_writer_open(fb, "replayed", 3);
    cr_assert_eq(ar_stream_write_meta(wa, "{\"ar\":\"tune\"}"), 0);
    cr_assert_eq(ar_stream_write_meta(wb, "{\"ar\":\"tune\"}"), 0);
    for (int b = 0; b < 3; b++) {
        write_block_records(wa, b);
        cr_assert_eq(ar_ckpt_replay_block(ck, b, wb), 0, "%s", ar_last_error());
    }
    cr_assert_eq(ar_stream_writer_close(wa), 0);
    cr_assert_eq(ar_stream_writer_close(wb), 0);
    long na = ftell(fa), nb = ftell(fb);
    cr_assert_eq(na, nb);
    char *a = malloc(na), *bb = malloc(nb);
    rewind(fa); rewind(fb);
    cr_assert_eq(fread(a, 1, na, fa), (size_t)na);
    cr_assert_eq(fread(bb, 1, nb, fb), (size_t)nb);
    cr_assert_eq(memcmp(a, bb, na), 0, "replayed stream differs from the direct one");
    free(a); free(bb); fclose(fa); fclose(fb);
    ar_ckpt_close(ck);
}

Test(checkpoint, chain_round_trip_and_checks)
{
    uint16_t xfp[300], xq[300];
    for (int i = 0; i < 300; i++) xfp[i] = (uint16_t)(i * 31), xq[i] = (uint16_t)(i * 17 + 5);
    ar_checkpoint *ck = ar_ckpt_open(g_dir, settings, 4, NULL);
    cr_assert(ck);
    cr_assert_neq(ar_ckpt_load_chain(ck, NULL, 0), 0, "a chain loaded before any block finished");
    ar_ckpt_array save0[2] = {{"x_fp", xfp, sizeof xfp, 0}, {"x_q", NULL, sizeof xq, 0}};
    finish_block(ck, 0, save0, 2);              /* block 0: no quantized chain yet */
    ar_ckpt_array save1[2] = {{"x_fp", xfp, sizeof xfp, 0}, {"x_q", xq, sizeof xq, 0}};
    finish_block(ck, 1, save1, 2);
    ar_ckpt_close(ck);

    char p[PATH_MAX];
    path_in(p, "chain-0000.bin");
    cr_assert_neq(access(p, F_OK), 0, "the superseded chain file was kept");
    ck = ar_ckpt_open(g_dir, settings, 4, NULL);
    cr_assert_eq(ar_ckpt_next_block(ck), 2);
    uint16_t back[300] = {0};
    ar_ckpt_array load[2] = {{"x_fp", back, sizeof back, 0}, {"x_q", NULL, sizeof xq, 0}};
    cr_assert_eq(ar_ckpt_load_chain(ck, load, 2), 0, "%s", ar_last_error());
    cr_assert(load[0].present && load[1].present);
    cr_assert_eq(memcmp(back, xfp, sizeof xfp), 0);
    cr_assert_eq(memcmp(load[1].data, xq, sizeof xq), 0);
    free(load[1].data);

    /* another size than the run needs (another nsamples) */
    ar_ckpt_array wrong[2] = {{"x_fp", NULL, 2 * sizeof xfp, 0}, {"x_q", NULL, sizeof xq, 0}};
    cr_assert_neq(ar_ckpt_load_chain(ck, wrong, 2), 0);
    cr_assert(strstr(ar_last_error(), "'x_fp' holds 600 bytes"), "%s", ar_last_error());
    /* an array the run does not know */
    ar_ckpt_array only_fp[1] = {{"x_fp", back, sizeof back, 0}};
    cr_assert_neq(ar_ckpt_load_chain(ck, only_fp, 1), 0);

    /* a truncated chain file is caught by the size check */
    path_in(p, "chain-0001.bin");
    size_t n;
    char *raw = fx_slurp(p, &n);
    spit(p, raw, n - 1);
    ar_ckpt_array again[2] = {{"x_fp", back, sizeof back, 0}, {"x_q", xq, sizeof xq, 0}};
    cr_assert_neq(ar_ckpt_load_chain(ck, again, 2), 0);
    cr_assert(strstr(ar_last_error(), "chain-0001.bin"), "%s", ar_last_error());
    free(raw);
    ar_ckpt_close(ck);
}

/* A kill after the block file was renamed but before the commit: the block is
 * not finished, is redone, and its file is replaced. Stray temporaries from
 * kills mid-write are ignored. */
Test(checkpoint, states_a_kill_leaves)
{
    ar_checkpoint *ck = ar_ckpt_open(g_dir, settings, 3, NULL);
    finish_block(ck, 0, NULL, 0);
    ar_stream_writer *w = ar_ckpt_block_begin(ck, 1);
    write_block_records(w, 7);                   /* what the killed run wrote */
    cr_assert_eq(ar_ckpt_block_end(ck, w), 0);
    ar_ckpt_close(ck);                           /* "killed" before commit */

    char p[PATH_MAX];
    path_in(p, "manifest.json.tmp");
    spit(p, "{\"version\":1,\"nbl", 16);           /* a manifest cut mid-write */
    path_in(p, "chain-0001.bin.tmp");
    spit(p, "ARCH", 4);

    ck = ar_ckpt_open(g_dir, settings, 3, NULL);
    cr_assert(ck, "%s", ar_last_error());
    cr_assert_eq(ar_ckpt_next_block(ck), 1);
    cr_assert_neq(ar_ckpt_replay_block(ck, 1, NULL), 0, "an uncommitted block was replayed");
    finish_block(ck, 1, NULL, 0);                /* redone: its own records replace block 7's */
    FILE *f = tmpfile();
    ar_stream_writer *out = ar_stream_writer_open(f, "out", 1);
    cr_assert_eq(ar_ckpt_replay_block(ck, 1, out), 0);
    cr_assert_eq(ar_stream_writer_close(out), 0);
    rewind(f);
    ar_stream_reader *r = ar_stream_reader_open(f, "out");
    ar_record rec;
    cr_assert_eq(ar_stream_next(r, &rec), 1);
    cr_assert_str_eq(rec.name, "model.layers.1.q.qweight");
    ar_stream_reader_close(r);
    fclose(f);
    ar_ckpt_close(ck);

    /* a corrupt manifest is an error naming it, not a fresh start */
    path_in(p, "manifest.json");
    spit(p, "{\"version\":1}", 13);
    int mismatch = -1;
    cr_assert_null(ar_ckpt_open(g_dir, settings, 3, &mismatch));
    cr_assert_eq(mismatch, 0);
    cr_assert(strstr(ar_last_error(), "manifest.json: not a checkpoint manifest"), "%s", ar_last_error());
}

Test(checkpoint, directory_lock)
{
    ar_checkpoint *a = ar_ckpt_open(g_dir, settings, 3, NULL);
    cr_assert(a);
    int mismatch = -1;
    cr_assert_null(ar_ckpt_open(g_dir, settings, 3, &mismatch));
    cr_assert_eq(mismatch, 0);
    cr_assert(strstr(ar_last_error(), "in use"), "%s", ar_last_error());
    ar_ckpt_close(a);
    ar_checkpoint *b = ar_ckpt_open(g_dir, settings, 3, NULL);
    cr_assert(b, "lock not released: %s", ar_last_error());
    ar_ckpt_close(b);
}

Test(checkpoint, fnv_in_pieces_equals_whole)
{
    const char txt[] = "the quick brown fox jumps over the lazy dog";
    uint64_t h = AR_FNV1A64_INIT;
    for (size_t i = 0; i < sizeof txt - 1; i += 5)
        h = ar_fnv1a64_update(h, txt + i, sizeof txt - 1 - i < 5 ? sizeof txt - 1 - i : 5);
    cr_assert_eq(h, ar_fnv1a64_update(AR_FNV1A64_INIT, txt, sizeof txt - 1));
    /* published FNV-1a 64 test vector: "a" -> af63dc4c8601ec8c */
    cr_assert_eq(ar_fnv1a64_update(AR_FNV1A64_INIT, "a", 1), 0xaf63dc4c8601ec8cull);
}

/* A safetensors file: u64 header length, header JSON, data. */
static void write_st(const char *name, const char *header, size_t data_bytes)
{
    char p[PATH_MAX];
    path_in(p, name);
    size_t hl = strlen(header), n = 8 + hl + data_bytes;
    uint8_t *buf = calloc(1, n);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    spit(p, buf, n);
    free(buf);
}

Test(checkpoint, model_digest)
{
    char p[PATH_MAX], d0[17], d1[17], d2[17], d3[17];
    cr_assert_neq(ar_ckpt_model_digest(g_dir, d0), 0, "no config.json must fail");
    path_in(p, "config.json");
    spit(p, "{\"hidden_size\":8}", 17);
    write_st("model.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    cr_assert_eq(ar_ckpt_model_digest(g_dir, d0), 0, "%s", ar_last_error());
    cr_assert_eq(ar_ckpt_model_digest(g_dir, d1), 0);
    cr_assert_str_eq(d0, d1);
    write_st("model.safetensors", "{\"w\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]}}", 8);
    cr_assert_eq(ar_ckpt_model_digest(g_dir, d2), 0);
    cr_assert_str_neq(d0, d2, "a changed safetensors header kept the digest");
    spit(p, "{\"hidden_size\":9}", 17);
    cr_assert_eq(ar_ckpt_model_digest(g_dir, d3), 0);
    cr_assert_str_neq(d2, d3, "a changed config.json kept the digest");
    write_st("model.safetensors", "{\"w\":{\"dtype\":\"F16\",", 0);   /* header past the end */
    spit(p, "{}", 2);
    path_in(p, "model.safetensors");
    FILE *f = fopen(p, "r+b");
    uint8_t big[8] = {0xff, 0xff, 0xff, 0, 0, 0, 0, 0};
    fwrite(big, 1, 8, f);
    fclose(f);
    cr_assert_neq(ar_ckpt_model_digest(g_dir, d3), 0);
    cr_assert(strstr(ar_last_error(), "model.safetensors"), "%s", ar_last_error());
}
