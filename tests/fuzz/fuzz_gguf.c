/* fuzz_gguf.c — GGUF files through ar_gguf_open. For an accepted file every
 * metadata value is read back through the accessors (string arrays included)
 * and every small tensor is dequantized, so an accepted header must describe
 * values and data that lie inside the file. */
#include "fuzz.h"
#include "gguf.h"

static void read_kvs(const ar_gguf *g)
{
    for (size_t i = 0; i < ar_gguf_n_kv(g); i++) {
        const ar_gguf_kv *kv = ar_gguf_kv_at(g, i);
        if (!kv || !kv->key) fuzz_fail("KV without a key");
        if (ar_gguf_find_kv(g, kv->key) == NULL) fuzz_fail("KV not found by its own key");
        (void)ar_gguf_kv_int(kv);
        (void)ar_gguf_kv_float(kv);
        if (kv->type != AR_GGUF_ARRAY) continue;
        for (uint64_t j = 0; j < kv->n && j < 4096; j++) {
            const char *s;
            uint64_t len;
            if (kv->elem_type == AR_GGUF_STRING) {
                if (ar_gguf_kv_arr_str(g, kv, j, &s, &len)) fuzz_fail("string element unreadable");
                volatile char sink = len ? s[len - 1] : 0;   /* touch its last byte */
                (void)sink;
            } else {
                (void)ar_gguf_kv_arr_float(kv, j);
                (void)ar_gguf_kv_arr_int(kv, j);
            }
        }
    }
}

static void read_tensors(const ar_gguf *g)
{
    for (size_t i = 0; i < ar_gguf_n_tensors(g); i++) {
        const ar_gguf_tensor *t = ar_gguf_tensor_at(g, i);
        if (ar_gguf_find_tensor(g, t->name) != t) fuzz_fail("tensor not found by its own name");
        int64_t n = ar_gguf_tensor_numel(t);
        if (n < 1) fuzz_fail("tensor with no elements accepted");
        if (n > (1 << 20)) continue;
        float *dst = malloc(sizeof(float) * (size_t)n);
        fuzz_clear_error();
        if (ar_gguf_tensor_f32(t, dst)) fuzz_expect_message();
        free(dst);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_clear_error();
    ar_gguf *g = ar_gguf_open(fuzz_file("model.gguf", data, size));
    if (!g) { fuzz_expect_message(); return 0; }
    read_kvs(g);
    read_tensors(g);
    ar_gguf_close(g);
    return 0;
}
