/* tune_ep.c — expert parallel in the tuning pipeline (docs/mpi.md, "Expert
 * parallel"): which linears are other ranks' routed experts, and the
 * owner-to-all broadcast of a routed expert's output for the writer. */
#include "error.h"
#include "tune_impl.h"

#include <stdlib.h>

int tn_ep_other(const tn_run *r, int i)
{
    int e = r->ep ? ar_block_desc_expert(&r->bd, i) : -1, e0, e1;
    if (e < 0) return 0;
    ar_moe_ep_range(ar_block_desc_nexperts(&r->bd), r->ep->rank, r->ep->size, &e0, &e1);
    return e < e0 || e >= e1;
}

int tn_ep_share(const tn_run *r, int i, const ar_quant_spec *qs, const ar_quant_out *mine, ar_quant_out *o,
                float *gs, const ar_quant_out **use)
{
    ar_reducer *rd = r->o->reduce;
    int E = ar_block_desc_nexperts(&r->bd), e = ar_block_desc_expert(&r->bd, i), owner = 0, e0, e1;
    for (;; owner++) {   /* the rank whose share holds e */
        ar_moe_ep_range(E, owner, rd->size, &e0, &e1);
        if (e < e1 || owner + 1 == rd->size) break;
    }
    size_t nel = (size_t)r->bd.lin[i].n_out * r->bd.lin[i].k_in;
    size_t ng = (size_t)r->bd.lin[i].n_out * ar_quant_ngroups(r->bd.lin[i].k_in, qs->group_size);
    int own = owner == rd->rank;
    ar_quant_out b = own ? *mine : (ar_quant_out){malloc(nel * 4), malloc(nel), malloc(ng * 4), malloc(ng * 4)};
    *o = own ? (ar_quant_out){0} : b;   /* the caller frees what was allocated here, never mine */
    *use = own ? mine : o;
    if (!b.wq || !b.codes || !b.scale || !b.zp) return ar_error("out of memory for an expert's output");
    int rc = rd->bcast(rd->ctx, b.wq, nel * 4, owner) || rd->bcast(rd->ctx, b.codes, nel, owner) ||
             rd->bcast(rd->ctx, b.scale, ng * 4, owner) || rd->bcast(rd->ctx, b.zp, ng * 4, owner) ||
             rd->bcast(rd->ctx, gs, sizeof *gs, owner);
    return rc ? -1 : 0;
}
