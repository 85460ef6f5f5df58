/* config_check.c — see config_check.h. */
#include "config_check.h"

#include <criterion/criterion.h>
#include <string.h>

#include "error.h"

ar_config cc_parse(const char *json, int flags)
{
    ar_config c;
    cr_assert_eq(ar_config_parse_flags(&c, json, "t/config.json", flags), 0, "%s", ar_last_error());
    return c;
}

void cc_refused(const char *json, const char *want, int flags)
{
    ar_config c;
    cr_assert_eq(ar_config_parse_flags(&c, json, "t/config.json", flags), -1, "accepted (%s): %s", want, json);
    const char *e = ar_last_error();
    cr_assert(strstr(e, want), "'%s' lacks '%s'", e, want);
    cr_assert(strstr(e, "t/config.json"), "'%s' lacks the path", e);
    cr_assert(!strchr(e, '\n'), "'%s' is not one line", e);
}
