/* fuzz_safetensors.c — safetensors files and sharded-model index files.
 *
 * Input whose first byte is '{' is a model.safetensors.index.json placed next
 * to one small valid shard ("a.safetensors", tensors "x" and "y"); anything
 * else is a .safetensors file. Every tensor the reader accepts is widened
 * (when it is a float type and small), so an accepted header must describe
 * data that really lies inside the mapping. */
#include "fuzz.h"
#include "safetensors.h"

/* A valid shard for the index mode: x F32 [2], y F16 [1,2]. */
static void write_shard(void)
{
    static const char hdr[] = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                              "\"y\":{\"dtype\":\"F16\",\"shape\":[1,2],\"data_offsets\":[8,12]}}";
    uint8_t buf[8 + sizeof hdr - 1 + 12] = {0};
    buf[0] = (uint8_t)(sizeof hdr - 1);
    memcpy(buf + 8, hdr, sizeof hdr - 1);
    fuzz_file("a.safetensors", buf, sizeof buf);
}

/* Read every small float tensor, whole and by rows. */
static void read_all(const ar_safetensors *st)
{
    for (size_t i = 0; i < ar_st_count(st); i++) {
        const ar_st_tensor *t = ar_st_at(st, i);
        if (!t || ar_st_find(st, t->name) != t) fuzz_fail("tensor not found by its own name");
        if (t->numel > (1 << 20) || (t->dtype != AR_F32 && t->dtype != AR_F16 && t->dtype != AR_BF16)) continue;
        float *dst = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
        fuzz_clear_error();
        if (ar_st_read_f32(st, t->name, dst, (size_t)t->numel)) fuzz_fail("accepted float tensor unreadable");
        int64_t rows = t->ndim ? t->shape[0] : 1;
        if (rows > 1 && ar_st_read_rows_f32(st, t->name, rows - 1, 1, dst)) fuzz_fail("last row unreadable");
        if (!ar_st_read_rows_f32(st, t->name, rows, 1, dst)) fuzz_fail("row past the end accepted");
        free(dst);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ar_safetensors *st;
    fuzz_clear_error();
    if (size && data[0] == '{') {
        write_shard();
        fuzz_file("model.safetensors.index.json", data, size);
        st = ar_st_open_dir(fuzz_dir());
        fuzz_unlink("model.safetensors.index.json");
    } else {
        st = ar_st_open_file(fuzz_file("model.safetensors", data, size));
    }
    if (!st) { fuzz_expect_message(); return 0; }
    read_all(st);
    ar_st_close(st);
    return 0;
}
