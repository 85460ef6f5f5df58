/* export_formats.c — the export formats by name. The one file that knows
 * every format: the driver (export.c) and the format files only know the
 * ar_export_format interface, so neither depends on the other. */
#include "export_impl.h"
#include "error.h"
#include <string.h>

const char *const ar_export_formats[] = {"auto_round", "auto_gptq", "auto_awq", "llm_compressor", "fake", NULL};

const ar_export_format *ar_export_format_find(const char *name) {
    static const ar_export_format *const all[] = {&ar_fmt_auto_round, &ar_fmt_auto_gptq, &ar_fmt_auto_awq, &ar_fmt_fake,
                                                  &ar_fmt_llm_compressor};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (name && !strcmp(all[i]->name, name)) return all[i];
    return NULL;
}

ar_export *ar_export_open(const char *model_dir, const char *out_dir, const ar_export_opts *opts) {
    const ar_export_format *f = ar_export_format_find(opts->format);
    if (!f) {
        ar_error("unknown export format '%s' (auto_round, auto_gptq, auto_awq, llm_compressor, fake)",
                 opts->format ? opts->format : "");
        return NULL;
    }
    return ar_export_open_format(f, model_dir, out_dir, opts);
}
