/* test_chat_template.c — the Jinja2-subset renderer against renderings
 * computed by Jinja2 itself in transformers' environment
 * (tests/fixtures/chat_templates/unit_cases.json, written by
 * tools/gen_chat_template_cases.py), and its refusals: constructs outside the
 * subset, malformed templates, a tokenizer_config without a chat template.
 * The real templates are checked against transformers in
 * tests/e2e/chat_template.test.sh. */
#include "chat_template.h"
#include "error.h"
#include "fixture.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CASES "tests/fixtures/chat_templates/unit_cases.json"

static int render(const char *src, const char *msgs, char **out)
{
    ar_chat_template *t = ar_chat_template_parse(src, strlen(src), "t.jinja");
    cr_assert(t, "parse of %s: %s", src, ar_last_error());
    cr_assert_eq(ar_chat_template_set_var(t, "bos_token", "<s>"), 0);
    cr_assert_eq(ar_chat_template_set_var(t, "eos_token", "</s>"), 0);
    size_t len;
    int rc = ar_chat_template_render(t, msgs, 1, out, &len);
    if (rc == 0) cr_assert_eq(strlen(*out), len);
    ar_chat_template_free(t);
    return rc;
}

Test(chat_template, matches_jinja2)
{
    cJSON *j = fx_load_json(CASES);
    char *msgs = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "messages"));
    const cJSON *c;
    int n = 0, nerr = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases")) {
        const char *src = cJSON_GetObjectItem(c, "t")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(c, "want");
        char *out = NULL;
        int rc = render(src, msgs, &out);
        if (want) {
            cr_assert_eq(rc, 0, "%s: %s", src, ar_last_error());
            cr_expect_str_eq(out, want->valuestring, "template %s", src);
        } else {
            cr_expect_eq(rc, AR_CHAT_RAISED, "%s should raise (Jinja2: %s), gave %d", src,
                         cJSON_GetObjectItem(c, "err")->valuestring, rc);
            nerr++;
        }
        free(out);
        n++;
    }
    cr_assert_geq(n, 15);
    cr_assert_geq(nerr, 3);
    free(msgs);
    cJSON_Delete(j);
}

/* Constructs outside the subset are refused when the template is parsed,
 * with the template's name, the line and the construct. */
Test(chat_template, refuses_unsupported)
{
    static const struct { const char *src, *msg; } bad[] = {
        {"{% macro m() %}x{% endmacro %}", "t.jinja:1: unsupported statement 'macro'"},
        {"a\n{{ x|wordwrap }}", "t.jinja:2: unsupported filter 'wordwrap'"},
        {"{{ x is divisibleby 3 }}", "t.jinja:1: unsupported test 'divisibleby'"},
        {"{{ strftime_now('%d') }}", "t.jinja:1: unsupported function 'strftime_now'"},
        {"{% include 'x' %}", "unsupported statement 'include'"},
        {"{% if x %}never closed", "'if' without 'endif'"},
        {"{% endfor %}", "unexpected 'endfor'"},
        {"{{ 'open", "unclosed {{"},
        {"{{ 1 + }}", "unexpected 'end of tag'"},
        {"{# never closed", "unclosed comment"},
        {NULL, "expression nested more than 200 deep"},
        {NULL, "statements nested more than 200 deep"},
    };
    static char deep_expr[4096], deep_stmt[16384];
    {
        char *w = deep_expr;
        w += sprintf(w, "{{ ");
        for (int i = 0; i < 1000; i++) *w++ = '(';
        *w++ = '1';
        for (int i = 0; i < 1000; i++) *w++ = ')';
        sprintf(w, " }}");
        w = deep_stmt;
        for (int i = 0; i < 1000; i++) w += sprintf(w, "{%% if 1 %%}");
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *src = bad[i].src ? bad[i].src : strstr(bad[i].msg, "expression") ? deep_expr : deep_stmt;
        ar_chat_template *t = ar_chat_template_parse(src, strlen(src), "t.jinja");
        cr_expect_null(t, "%.60s parsed", src);
        cr_expect(strstr(ar_last_error(), bad[i].msg), "%.60s: error '%s' lacks '%s'", src, ar_last_error(),
                  bad[i].msg);
        ar_chat_template_free(t);
    }
}

/* A method outside the subset met at run time is a failure (-1), not a
 * raise the caller could retry around. */
Test(chat_template, unsupported_method_fails)
{
    char *out = NULL;
    cr_assert_eq(render("{{ messages[0].content.title() }}", "[{\"role\":\"user\",\"content\":\"a\"}]", &out), -1);
    cr_expect(strstr(ar_last_error(), "unsupported method 'title'"), "%s", ar_last_error());
    cr_assert_eq(render("{{ raise_exception('boom') }}", "[]", &out), AR_CHAT_RAISED);
    cr_expect(strstr(ar_last_error(), "t.jinja:1: raise_exception: boom"), "%s", ar_last_error());
    cr_assert_eq(render("x", "{\"not\": \"a list\"}", &out), -1);
    /* Jinja's sandbox refuses ranges over 100000 items (a raise) */
    cr_assert_eq(render("{% for i in range(200000) %}{% endfor %}", "[]", &out), AR_CHAT_RAISED);
    cr_assert_eq(render("{{ 'ab' * 100000000 }}", "[]", &out), -1);
}

/* Jinja drops one trailing newline of the source and reads \r\n as \n. */
Test(chat_template, newlines)
{
    char *out = NULL;
    cr_assert_eq(render("a\r\nb\n\n", "[]", &out), 0);
    cr_expect_str_eq(out, "a\nb\n");
    free(out);
}

Test(chat_template, load_from_tokenizer_config)
{
    char dir[] = "/tmp/ar_ct_XXXXXX";
    fx_make_tmp(dir);
    fx_write_text(dir, "tokenizer_config.json", "{\"bos_token\": \"<s>\"}");
    cr_expect_null(ar_chat_template_load(dir));
    cr_expect(strstr(ar_last_error(), "tokenizer_config.json: no chat_template"), "%s", ar_last_error());
    fx_write_text(dir, "tokenizer_config.json",
                  "{\"bos_token\": {\"content\": \"<B>\"}, \"eos_token\": \"<E>\", \"chat_template\": "
                  "[{\"name\": \"tool_use\", \"template\": \"T\"}, {\"name\": \"default\", "
                  "\"template\": \"{{ bos_token }}{{ messages[0].content }}{{ eos_token }}\"}]}");
    ar_chat_template *t = ar_chat_template_load(dir);
    cr_assert(t, "%s", ar_last_error());
    char *out;
    size_t len;
    cr_assert_eq(ar_chat_template_render(t, "[{\"role\":\"user\",\"content\":\"hi\"}]", 0, &out, &len), 0);
    cr_expect_str_eq(out, "<B>hi<E>");
    free(out);
    ar_chat_template_free(t);
    fx_write_text(dir, "tokenizer_config.json", "{\"chat_template\": \"{% for %}\"}");
    cr_expect_null(ar_chat_template_load(dir));
    cr_expect(strstr(ar_last_error(), "tokenizer_config.json:chat_template:1: expected a name"), "%s", ar_last_error());
    fx_rm_rf(dir);
}
