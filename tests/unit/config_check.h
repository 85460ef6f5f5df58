/* config_check.h — config.json parsing checks shared by the unit tests
 * (test_config, test_gemma, …): one place that says what a refusal must
 * look like. */
#ifndef AR_TEST_CONFIG_CHECK_H
#define AR_TEST_CONFIG_CHECK_H
#include "config.h"

/* json parsed as "t/config.json" with flags (0 or AR_CONFIG_*); the test
 * fails, printing the error, when it is refused. */
ar_config cc_parse(const char *json, int flags);

/* The test fails unless parsing json as "t/config.json" with flags is
 * refused with a one-line error that names the file and contains want. */
void cc_refused(const char *json, const char *want, int flags);
#endif
