/* checkpoint.h — save and restore a block-by-block run between blocks, so a
 * killed quantization resumes at its first unfinished block.
 *
 * A checkpoint directory holds:
 *   manifest.json     {"version":1,"nblocks":N,"last_block":k,"settings":{...}}
 *                     settings: every value that determines the results (the
 *                     caller's JSON object, compared field by field on reopen);
 *                     last_block: the last finished block, -1 before the first.
 *   block-NNNN.ars    the records block NNNN wrote, as a tensor stream
 *                     (ar-stream(5)); replayed into the output on resume.
 *   chain-NNNN.bin    the state carried into the next block (named byte arrays:
 *                     the activations chains), for the last finished block only.
 *   lock              flock(2)ed while a run uses the directory.
 * Every file is written under a ".tmp" name, fsync'ed, renamed into place and
 * the directory fsync'ed, and the manifest is replaced last, so a kill at any
 * moment leaves either the previous or the next consistent state.
 *
 * Chain file layout (little-endian): "ARCHAIN1", u32 block, u32 count, then per
 * array a 32-byte NUL-padded name and u64 nbytes, then the payloads in order.
 * Its size is checked against the header on load. */
#ifndef AR_CHECKPOINT_H
#define AR_CHECKPOINT_H
#include "stream.h"
#include <stddef.h>
#include <stdint.h>

#define AR_CKPT_VERSION  1
#define AR_CKPT_NAME_MAX 32     /* bytes of a chain array name, NUL included */

typedef struct ar_checkpoint ar_checkpoint;

/* One named byte array of the chain state. On load, data NULL asks for a
 * malloc'd buffer (the caller frees it); present tells whether the file had it. */
typedef struct {
    const char *name;
    void *data;
    size_t nbytes;
    int present;
} ar_ckpt_array;

/* Open (creating when missing) checkpoint directory dir for a run of nblocks
 * blocks determined by settings_json, a JSON object. No manifest: a fresh run
 * (a manifest with last_block -1 is written now, so a later run with other
 * settings is refused even if this one dies in its first block). A manifest
 * with equal settings and nblocks: resume. Otherwise NULL with ar_error naming
 * the first field that differs and both values, e.g.
 * "ck/manifest.json: iters differs (checkpoint 10, this run 11)", and
 * *mismatch (when not NULL) set to 1; it is 0 after any other failure (no
 * directory, unreadable manifest, another process holding the directory). */
ar_checkpoint *ar_ckpt_open(const char *dir, const char *settings_json, int nblocks, int *mismatch);

/* The first unfinished block: 0 for a fresh run, nblocks when all are done. */
int ar_ckpt_next_block(const ar_checkpoint *ck);

/* Start block's record file; write the block's records to the returned writer
 * and pass it to ar_ckpt_block_end. NULL with ar_error. */
ar_stream_writer *ar_ckpt_block_begin(ar_checkpoint *ck, int block);

/* Close the writer from ar_ckpt_block_begin and move the file into place
 * (fsync, rename). The block is not finished until ar_ckpt_commit. */
int ar_ckpt_block_end(ar_checkpoint *ck, ar_stream_writer *w);

/* Write every record of finished block's file to out, with the same calls
 * (name, dtype, shape, attributes text, payload) that made them, so out gets
 * the bytes an uninterrupted run would have written. Memory: one record. */
int ar_ckpt_replay_block(const ar_checkpoint *ck, int block, ar_stream_writer *out);

/* Mark block finished: save the chain arrays (those with data != NULL) as the
 * state after it, then the manifest, then drop the previous chain file. */
int ar_ckpt_commit(ar_checkpoint *ck, int block, const ar_ckpt_array *arrays, int n);

/* Load the chain state of the last finished block into arrays: each one the
 * file holds must have exactly the requested nbytes; the file may hold no
 * other. An error when no block is finished yet. */
int ar_ckpt_load_chain(const ar_checkpoint *ck, ar_ckpt_array *arrays, int n);

/* Release the lock and free ck (files stay). NULL is allowed. */
void ar_ckpt_close(ar_checkpoint *ck);

/* Digest (16 hex digits) of what identifies a model folder's weights without
 * reading them: config.json, model.safetensors.index.json when present, and
 * the size and header of every *.safetensors file (names, dtypes, shapes,
 * offsets). A changed weight value of the same shape is not detected. */
int ar_ckpt_model_digest(const char *dir, char hex[17]);

#endif
