/* tasks.h — zero- and few-shot benchmark tasks scored the way
 * lm-eval-harness 0.4 scores them with its Hugging Face model: the same
 * prompts, continuations, target delimiter, few-shot examples and metrics,
 * read from local JSONL files instead of the Hugging Face hub.
 *
 * Tasks (lm-eval's names and definitions):
 *   lambada_openai  context = text up to its last space, continuation = " " +
 *                   the last word; acc = the continuation is the greedy one,
 *                   perplexity = exp(-mean ll) (stderr: lm-eval's bootstrap)
 *   piqa            "Question: {goal}\nAnswer:" + " " + sol1|sol2; acc, acc_norm
 *   hellaswag       "{activity_label}: {ctx_a} {Ctx_b}" and the endings, both
 *                   through lm-eval's preprocess (" [title]" -> ". ", "[...]"
 *                   removed, double spaces halved); acc, acc_norm
 *   arc_easy, arc_challenge
 *                   "Question: {question}\nAnswer:" + " " + each choices.text;
 *                   gold = choices.label.index(answerKey); acc, acc_norm
 *   winogrande      partial evaluation: one context per option (the sentence
 *                   up to "_" + the option), continuation " " + the rest of the
 *                   sentence after "_", stripped; acc
 *   mmlu            "{question.strip()}\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:"
 *                   + " A".." D", after the description "The following are
 *                   multiple choice questions (with answers) about {subject}.\n\n";
 *                   acc per subject ("mmlu_<subject>", --limit per subject, as
 *                   lm-eval's one task per subject) and over all rows ("mmlu":
 *                   lm-eval's size-weighted group acc; its stderr is the plain
 *                   one over all rows, not lm-eval's pooled group estimate)
 * acc takes the choice of highest log-likelihood, acc_norm of highest
 * log-likelihood per character of the choice (lm-eval divides by len(str),
 * code points); ties go to the first. stderr of a mean is the sample standard
 * deviation / sqrt(n), as lm-eval reports it.
 *
 * Files, in opts.data_dir: <task>.jsonl holds the evaluated rows (one JSON
 * object a line, with the Hugging Face dataset's fields); few-shot examples
 * come, as lm-eval takes them, from <task>.train.jsonl (piqa, hellaswag,
 * arc_*, winogrande), <task>.dev.jsonl (mmlu: the first N rows of the same
 * subject) or the evaluated rows themselves (lambada_openai). Few-shot draws
 * use CPython's random.Random(fewshot_seed).sample, in document order, one
 * generator per task, excluding the evaluated document where lm-eval does
 * (piqa, hellaswag, winogrande: a row whose JSON prints identically).
 *
 * Requests are tokenized as lm-eval's _encode_pair does: trailing whitespace
 * of the context moves to the continuation, context + continuation is
 * encoded whole (with the tokenizer's default special tokens, none when the
 * context starts with the BOS token's text) and split at the length of the
 * context's own encoding; an empty context is the BOS id (EOS without one). */
#ifndef AR_TASKS_H
#define AR_TASKS_H
#include "loglik.h"
#include "tokenizer.h"
#include <stdint.h>
#include <stdio.h>

typedef struct {
    const char *tasks;       /* comma-separated task names */
    const char *data_dir;    /* folder of <task>.jsonl files */
    int num_fewshot;         /* examples before each document (lm-eval's --num_fewshot; default 0) */
    long limit;              /* score only the first limit documents of each task; 0 = all */
    int batch;               /* requests per forward (default 16) */
    int max_length;          /* tokens of context + continuation kept (from the left); 0 = the
                                config's max_position_embeddings, else 2048, as lm-eval's HF model */
    uint64_t fewshot_seed;   /* lm-eval's --seed for few-shot sampling (default 1234) */
    long bootstrap_iters;    /* resamples for the perplexity stderr (default 100000; 0 = none) */
    FILE *samples;           /* when not NULL: one JSON line per document (lls, greedy, metrics) */
    void (*progress)(void *arg, const char *task, int done, int total); /* may be NULL */
    void *progress_arg;
} ar_tasks_opts;

/* The defaults above. */
void ar_tasks_opts_default(ar_tasks_opts *o);

/* 0 when name is a task this module knows. */
int ar_task_known(const char *name);

/* Run every task of o->tasks on m (CPU), or on gpu where it gives what the
 * task needs (log-likelihoods without the greedy check). Returns a malloc'd
 * JSON text shaped like lm-eval's results:
 *   {"results": {"piqa": {"alias": "piqa", "acc,none": .., "acc_stderr,none": ..,
 *                "acc_norm,none": .., "acc_norm_stderr,none": ..}, ...},
 *    "n-samples": {"piqa": {"original": N, "effective": n}}, "config": {...}}
 * NULL with ar_error naming the file and the problem (unknown task, missing
 * file, malformed row "DIR/piqa.jsonl:7: field 'goal' is missing or not a string"). */
char *ar_tasks_run(const ar_tasks_opts *o, ar_model *m, ar_model_gpu *gpu, ar_tokenizer *tok);

/* A text table of the results in json (from ar_tasks_run) on f: one line per
 * task and metric, "task  metric  value  ± stderr  n". */
void ar_tasks_print_table(FILE *f, const char *json);

#endif
