/* chat_template.h — a model's chat template (the Jinja2 text in
 * tokenizer_config.json "chat_template") rendered in C, giving the text
 * Hugging Face transformers' apply_chat_template(tokenize=False) gives.
 *
 * The template runs in a Jinja2 subset, the environment transformers sets up:
 * trim_blocks and lstrip_blocks on, one trailing newline of the source
 * dropped, raise_exception(msg) and namespace(...) as globals, tojson with
 * non-ASCII kept, loop controls (break/continue). Variables: messages,
 * add_generation_prompt, tools and documents (none), and the special tokens
 * of tokenizer_config.json (bos_token, eos_token, unk_token, pad_token).
 *
 * The subset: {{ }}, {% %} and {# #} with - and + whitespace control;
 * statements if/elif/else, for (with "if" filter, else, unpacking a, b),
 * set (a name, an attribute of a namespace, or a block {% set x %}..{% endset %}),
 * break, continue, generation (rendered as its body); literals (strings with
 * Python escapes, integers, floats, true/false/none, lists, dicts); operators
 * or and not, == != < > <= >= in "not in", + - * / // % **, ~, x if c else y,
 * indexing, slicing [a:b:c], attributes; filters trim length count tojson
 * upper lower default/d items join list first last string reject select
 * rejectattr selectattr replace safe map(attribute=); tests defined undefined none string
 * number integer float boolean true false mapping iterable sequence
 * equalto eq ne odd even in; string methods strip lstrip rstrip startswith
 * endswith split replace upper lower; dict methods items keys values get.
 * Anything else (macro, include, an unknown filter, ...) is refused with an
 * error naming the template and the construct, at parse time where it can
 * be seen there. Strings are UTF-8; length, indexing and slicing count code
 * points as Python does; upper/lower change ASCII letters only. */
#ifndef AR_CHAT_TEMPLATE_H
#define AR_CHAT_TEMPLATE_H
#include <stddef.h>

typedef struct ar_chat_template ar_chat_template;

/* The template raised: raise_exception(...), or an operation Jinja2 would
 * raise on (an undefined value's attribute, adding a string to none, ...).
 * AutoRound catches these and retries without system messages. */
#define AR_CHAT_RAISED 1

/* Parse src[0..len) (name is used in errors, e.g. the file it came from).
 * NULL with ar_error "NAME:LINE: ..." on a syntax error or a construct
 * outside the subset. */
ar_chat_template *ar_chat_template_parse(const char *src, size_t len, const char *name);

/* The chat template of model_dir/tokenizer_config.json ("chat_template": a
 * string, or a list of {name, template} of which "default" is taken), with
 * its bos/eos/unk/pad tokens. NULL with ar_error when the file or the entry
 * is missing ("DIR/tokenizer_config.json: no chat_template") or the template
 * does not parse. */
ar_chat_template *ar_chat_template_load(const char *model_dir);

/* Set a string variable the template sees (e.g. "bos_token"); 0 or -1. */
int ar_chat_template_set_var(ar_chat_template *t, const char *name, const char *value);

/* Render messages_json (a JSON list of {"role", "content", ...} objects).
 * 0 with *out a malloc'd NUL-terminated string of *len bytes; AR_CHAT_RAISED
 * with ar_error "NAME: MESSAGE" when the template raised; -1 with ar_error on
 * any other failure (an unsupported method or filter met at run time, bad
 * JSON, out of memory). */
int ar_chat_template_render(const ar_chat_template *t, const char *messages_json, int add_generation_prompt,
                            char **out, size_t *len);

void ar_chat_template_free(ar_chat_template *t);

#endif
