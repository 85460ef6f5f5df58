/* hf_folder.h — the file-level chores of writing a Hugging Face model folder:
 * a temporary folder beside the destination, side files (tokenizer,
 * generation config, ...) copied from the source model, config.json with a
 * quantization_config, and the final rename. */
#ifndef AR_HF_FOLDER_H
#define AR_HF_FOLDER_H
#include <cJSON.h>

/* Create the temporary folder "<out_dir>.tmp-<pid>" for out_dir, which must
 * not exist or be an empty directory. Returns its malloc'd path, or NULL with
 * ar_error ("out: already exists and is not empty"). */
char *hf_folder_begin(const char *out_dir);

/* Copy the side files of model folder src into dst: every regular file whose
 * name ends in .json, .jinja, .tiktoken or .model, plus merges.txt and
 * vocab.txt, except config.json, quantization configs and safetensors
 * indexes (those are rewritten). 0 or -1 with ar_error. */
int hf_folder_copy_side_files(const char *src, const char *dst);

/* Write dst/config.json: src/config.json with "quantization_config": qcfg
 * appended (when qcfg is not NULL) and, when dtype is not NULL, the top-level
 * "torch_dtype" set to it (and "dtype" too where present), as AutoRound's
 * save_model does. Everything else is kept byte for byte. Fails if the source
 * config already has a quantization_config, unless replace is set (the
 * source's FP8 weights were widened): then it is dropped first. */
int hf_folder_write_config(const char *src, const char *dst, const cJSON *qcfg, const char *dtype, int replace);

/* Write dir/name as indented JSON (json.dump indent=2 layout). */
int hf_folder_write_json(const char *dir, const char *name, const cJSON *obj);

/* Rename tmp to out_dir (replacing an empty out_dir). 0 or -1 with ar_error. */
int hf_folder_commit(const char *tmp, const char *out_dir);

/* Delete the flat folder dir and every file in it (NULL is fine). */
void hf_folder_remove(const char *dir);

/* Read a whole file into a NUL-terminated malloc'd buffer; NULL with ar_error. */
char *hf_read_file(const char *path, size_t *len);

#endif
