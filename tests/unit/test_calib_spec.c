/* test_calib_spec.c — AutoRound's dataset syntax as ar_calib_spec_parse reads
 * it (auto_round/calib_dataset.py, _get_dataset_impl: "," between datasets,
 * ":" between options, key=value), and its refusals. The sampling itself is
 * checked end to end in tests/e2e/calib_mix.test.sh. */
#include "calib.h"
#include "error.h"

#include <criterion/criterion.h>
#include <string.h>

Test(calib_spec, plain_file)
{
    ar_calib_spec s;
    cr_assert_eq(ar_calib_spec_parse("data/book.txt", &s), 0, "%s", ar_last_error());
    cr_assert_eq(s.n, 1);
    cr_expect_str_eq(s.src[0].path, "data/book.txt");
    cr_expect_eq(s.src[0].num, -1);
    cr_expect_eq(s.src[0].concat, 0);
    cr_expect_eq(s.src[0].chat, 0);
    cr_expect_null(s.src[0].system_prompt);
    ar_calib_spec_free(&s);
}

Test(calib_spec, options)
{
    ar_calib_spec s;
    cr_assert_eq(ar_calib_spec_parse("a.jsonl:num=64:apply_chat_template,b.txt:num=8,c.jsonl:concat=true:"
                                     "apply_chat_template=False,d.jsonl:system_prompt=Be brief.,e.jsonl:concat=false",
                                     &s), 0, "%s", ar_last_error());
    cr_assert_eq(s.n, 5);
    cr_expect_str_eq(s.src[0].path, "a.jsonl");
    cr_expect_eq(s.src[0].num, 64);
    cr_expect_eq(s.src[0].chat, 1);
    cr_expect_eq(s.src[1].num, 8);
    cr_expect_str_eq(s.src[1].path, "b.txt");
    cr_expect_eq(s.src[2].concat, 1);
    cr_expect_eq(s.src[2].chat, 0);
    cr_expect_str_eq(s.src[3].system_prompt, "Be brief.");
    cr_expect_eq(s.src[3].chat, 1, "system_prompt= implies the chat template, as in AutoRound");
    cr_expect_eq(s.src[4].concat, 0);
    ar_calib_spec_free(&s);
    cr_assert_eq(ar_calib_spec_parse("x.jsonl:system_prompt=", &s), 0);
    cr_expect_str_eq(s.src[0].system_prompt, "");
    ar_calib_spec_free(&s);
}

Test(calib_spec, refusals)
{
    static const struct { const char *spec, *msg; } bad[] = {
        {"a.jsonl:num=", "num= is not a positive integer"},
        {"a.jsonl:num=0", "num=0 is not a positive integer"},
        {"a.jsonl:num=12x", "num=12x is not a positive integer"},
        {"a.jsonl:num", "num= is not a positive integer"},
        {"a.jsonl:concat=maybe", "concat=maybe is not true or false"},
        {"a.jsonl:split=train", "split= selects a split of a hub dataset; a.jsonl is a local file"},
        {"a.jsonl:seqlen=5", "unknown option 'seqlen'"},
        {"a.jsonl,,b.txt", "an empty file name"},
        {":num=3", "an empty file name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ar_calib_spec s;
        cr_expect_eq(ar_calib_spec_parse(bad[i].spec, &s), -1, "%s accepted", bad[i].spec);
        cr_expect(strstr(ar_last_error(), bad[i].msg), "%s: '%s' lacks '%s'", bad[i].spec, ar_last_error(), bad[i].msg);
        cr_expect(strstr(ar_last_error(), bad[i].spec), "%s: error does not name the spec", bad[i].spec);
        cr_expect_null(s.src);
    }
}
