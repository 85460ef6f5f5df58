/* attn_sinks.h — causal self-attention with the options ops.h's
 * ar_attention_forward lacks, for gpt-oss and DeepSeek MLA: a per-head
 * sink logit, a query/key width different from the value width, and the
 * softmax scale as an argument. Flat f32 buffers, llm.c style, as ops.h.
 *
 * Semantics (transformers 5.25 models/gpt_oss/modeling_gpt_oss.py
 * eager_attention_forward L225-255): for query t of head h, scores
 * z_s = scale q_t . k_s over the visible keys s (causal; with window > 0
 * only t - window < s <= t, the sliding_attention layers), then one more
 * logit, sinks[h], joins the softmax and its column is dropped:
 *   P_ts = exp(z_s - m) / (sum_s' exp(z_s' - m) + exp(sinks[h] - m)),
 *   m = max(max_s z_s, sinks[h]); out_t = sum_s P_ts v_s.
 * So a row of P sums to 1 - p_sink <= 1: the sink absorbs mass. sinks NULL
 * is the plain softmax (DeepSeek MLA, which passes DK != DV and its own
 * scale). Query head h reads key/value head h / (NH / NKV). */
#ifndef AR_ATTN_SINKS_H
#define AR_ATTN_SINKS_H

/* q [B, T, NH, DK], k [B, T, NKV, DK], v [B, T, NKV, DV] -> out [B, T, NH, DV]
 * (overwritten; must not alias the inputs); sinks [NH] or NULL.
 * att [B, NH, T, T] receives P for the backward (entries outside the mask
 * exactly 0), or is NULL (inference). */
void ar_attn_sinks_forward(float *out, float *att, const float *q, const float *k, const float *v,
                           const float *sinks, int B, int T, int NH, int NKV, int DK, int DV, float scale,
                           int window);

/* Given dout [B, T, NH, DV] and the forward's att: dq [B, T, NH, DK] +=,
 * dk [B, T, NKV, DK] +=, dv [B, T, NKV, DV] +=, and dsinks [NH] += (optional,
 * NULL when the sinks stay fixed, as in tuning): dL/dsink_h =
 * -sum_t p_sink(t) sum_s P_ts dP_ts with p_sink = 1 - sum_s P_ts. The mask
 * lives in the zeros of att. Parallel over (sequence, key/value head), so
 * no scratch is needed. */
void ar_attn_sinks_backward(float *dq, float *dk, float *dv, float *dsinks, const float *dout, const float *att,
                            const float *q, const float *k, const float *v, int B, int T, int NH, int NKV,
                            int DK, int DV, float scale);
#endif
