/* loglik.h — log-likelihood of continuations given contexts, in batches, the
 * way lm-eval-harness's Hugging Face model scores its `loglikelihood`
 * requests: the tokens context + continuation, keeping only the last
 * max_length + 1 (truncated from the left), the input is all but the last of
 * them, and the continuation's tokens are scored by the logits of the
 * positions before them: ll = sum of log-softmax, greedy = every continuation
 * token is the argmax of its row.
 *
 * Requests are sorted by length (longest first) and cut into batches of up to
 * `batch`; each batch is right-padded to its longest sequence (the forward is
 * causal, so padding after a sequence does not change it). */
#ifndef AR_LOGLIK_H
#define AR_LOGLIK_H
#include "model.h"
#include "model_cuda.h"
#include <stdint.h>

typedef struct {
    const int32_t *ctx, *cont;  /* token ids; ncont >= 1 */
    int nctx, ncont;
} ar_ll_request;

/* Score n requests with m (or with gpu when not NULL and greedy is NULL: the
 * GPU forward gives the log-likelihood but not the argmax). ll[n] gets the
 * log-likelihoods (double), greedy[n] (may be NULL) 1 where the continuation
 * is the greedy one. progress (may be NULL) is called after each batch with
 * the requests done so far. 0, or -1 with ar_error (a continuation longer than
 * max_length, out of memory, a forward failure). */
int ar_loglik(ar_model *m, ar_model_gpu *gpu, const ar_ll_request *r, int n, int max_length, int batch,
              double *ll, int *greedy, void (*progress)(void *arg, int done, int total), void *arg);

#endif
