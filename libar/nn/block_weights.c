/* block_weights.c — the pointer arrays of ar_block_weights (block.h): one
 * allocation holds w[nlinear] then b[nlinear]. */
#include "block.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

int ar_block_weights_init(ar_block_weights *w, int nlinear)
{
    memset(w, 0, sizeof *w);
    float **p = calloc(2 * (size_t)(nlinear > 0 ? nlinear : 1), sizeof *p);
    if (!p) return ar_error("out of memory for the weights of %d linears", nlinear);
    w->nlinear = nlinear;
    w->w = p;
    w->b = p + nlinear;
    return 0;
}

void ar_block_weights_release(ar_block_weights *w)
{
    free(w->w);
    memset(w, 0, sizeof *w);
}

void ar_block_weights_borrow(ar_block_weights *view, const ar_block_weights *src)
{
    float **w = view->w, **b = view->b;
    *view = *src;
    view->w = w, view->b = b;
    memcpy(w, src->w, sizeof *w * (size_t)src->nlinear);
    memcpy(b, src->b, sizeof *b * (size_t)src->nlinear);
}

int ar_block_weights_view(ar_block_weights *dst, const ar_block_weights *src)
{
    if (ar_block_weights_init(dst, src->nlinear)) return -1;
    ar_block_weights_borrow(dst, src);
    return 0;
}

float **ar_block_norm_slot(ar_block_weights *w, int s)
{
    float **slot[AR_NNORM_SLOTS] = {&w->attn_norm, &w->mlp_norm, &w->q_norm, &w->k_norm,
                                    &w->attn_post_norm, &w->mlp_post_norm};
    return slot[s];
}
