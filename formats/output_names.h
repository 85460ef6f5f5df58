/* output_names.h — where AutoRound 0.16.1 puts what it writes, and what
 * llama.cpp's converter calls a GGUF file: the names of `auto-round`'s default
 * layout and of `ar-pack --layout autoround` (man auto-round(1), "OUTPUT
 * LAYOUT").
 *
 * AutoRound (auto_round/compressors/base.py, _get_export_dir; utils.py,
 * _get_save_folder_name) writes under --output_dir OUT:
 *   OUT/<model>-w<bits>g<group>/           a format of an integer scheme
 *   OUT/<model>-<dtype>-w<bits>g<group>/   MX/NV/FP schemes ("mxfp", "nvfp", "fp", "mxint")
 *   OUT/<model>-w<bits>a<act bits>/        group_size <= 0 ("afp<act bits>" when activations are FP)
 *   OUT/<model>-w<bits>g<g>x<g>/           2-D groups (FP8_BLOCK)
 *   OUT/<model>-gguf/                      when the format list names a GGUF format
 * <model> being the last component of the model path; a path whose last
 * component is only dots gives OUT/w<bits><suffix> (OUT itself for GGUF).
 * Several formats in one run each get a subfolder named after the format's
 * resolved backend, ':' and '_' as '-' ("auto-round-auto-gptq", "fake",
 * "gguf-q4-k-m"). A GGUF output is a folder holding one file named by
 * llama.cpp's naming convention (gguf-py's naming_convention): <Basename or
 * name>[-<size label>][-<finetune>][-<version>]-<FTYPE>.gguf. */
#ifndef AR_OUTPUT_NAMES_H
#define AR_OUTPUT_NAMES_H
#include "tuned_stream.h"
#include <stddef.h>
#include <stdint.h>

/* The formats of `formats` (a comma list) that AutoRound writes in the same
 * run as format `fmt`: the whole list, unless it mixes GGUF formats with
 * others than "fake", which AutoRound refuses ("GGUF format is not compatible
 * with other formats"); then the GGUF formats form one run and the others
 * another, as two AutoRound runs would. Writes the run's comma list to out.
 * 0, or -1 with ar_error when out is too small. */
int ar_autoround_run_formats(const char *formats, const char *fmt, char *out, size_t cap);

/* The folder, relative to AutoRound's --output_dir, that format `fmt` is
 * written to in a run of formats `run` (ar_autoround_run_formats) for the
 * model at model_path, whose scheme is a (the stream's global attributes;
 * mixed_bits: some layers use other bit widths). "" for --output_dir itself.
 * A GGUF format's folder holds the file ar_gguf_file_name names.
 * 0, or -1 with ar_error (out too small, or a format this library does not know). */
int ar_autoround_output_dir(const char *model_path, const char *run, const char *fmt, const ar_tuned_attrs *a,
                            int mixed_bits, char *out, size_t cap);

/* The parameter count and expert layout of a GGUF file as gguf-py's
 * GGUFWriter.get_total_parameter_count sees them. */
typedef struct {
    int64_t total, shared, expert;
    int64_t expert_count;
} ar_gguf_param_count;

/* Count the tensors of the GGUF file at path. 0, or -1 with ar_error. */
int ar_gguf_count_params(const char *path, ar_gguf_param_count *pc);

/* gguf-py's size label: "260K", "20M", "8.0B", "8x7.2B" for experts. */
void ar_gguf_size_label(const ar_gguf_param_count *pc, char *out, size_t cap);

/* llama.cpp's name ("tiny-llama-20M-Q4_K_M.gguf") for a GGUF file of mix
 * `ftype_name` ("Q4_K_M", as in gguf-py's LlamaFileType without MOSTLY_) made
 * from the model at model_path: gguf-py's Metadata heuristics over the
 * README.md front matter's name keys, config.json's "_name_or_path" and the
 * folder name, the general name being the last path component (as AutoRound
 * passes it), and the size label from pc when none of those gives one.
 * 0, or -1 with ar_error (out too small). */
int ar_gguf_file_name(const char *model_path, const ar_gguf_param_count *pc, const char *ftype_name, char *out,
                      size_t cap);

#endif
