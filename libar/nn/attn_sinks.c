/* attn_sinks.c — attention with sinks, separate q/k and v widths and a given
 * scale (see attn_sinks.h). Loops over rows rather than ops.c's blocked
 * sgemm: the families that need it are tested at small sizes first; a
 * blocked version is a speed change with the same tests. */
#include "attn_sinks.h"

#include <math.h>
#include <string.h>

/* Eight partial sums so the compiler can vectorize (any summation order is
 * within the same error bound). */
static float dot(const float *a, const float *b, int n)
{
    float p[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) p[j] += a[i + j] * b[i + j];
    float s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static int first_key(int t, int window)
{
    return (window > 0 && t - window + 1 > 0) ? t - window + 1 : 0;
}

/* One query row: P row [T] (zeros outside [s0, t]) and out row [DV]. */
static void attend_row(float *out, float *P, const float *qt, const float *kh, const float *vh, long ks, long vs,
                       const float *sink, int t, int T, int DK, int DV, float scale, int window)
{
    int s0 = first_key(t, window);
    float mx = sink ? *sink : -INFINITY;
    for (int s = s0; s <= t; s++) {
        P[s] = dot(qt, kh + s * ks, DK) * scale;
        mx = P[s] > mx ? P[s] : mx;
    }
    float sum = sink ? expf(*sink - mx) : 0;
    for (int s = s0; s <= t; s++) sum += P[s] = expf(P[s] - mx);
    float inv = 1.0f / sum;
    memset(P, 0, sizeof(float) * s0);
    memset(P + t + 1, 0, sizeof(float) * (T - t - 1));
    memset(out, 0, sizeof(float) * DV);
    for (int s = s0; s <= t; s++) {
        P[s] *= inv;
        const float *vr = vh + s * vs;
        for (int i = 0; i < DV; i++) out[i] += P[s] * vr[i];
    }
}

void ar_attn_sinks_forward(float *out, float *att, const float *q, const float *k, const float *v,
                           const float *sinks, int B, int T, int NH, int NKV, int DK, int DV, float scale,
                           int window)
{
    int group = NH / NKV;
    long qs = (long)NH * DK, ks = (long)NKV * DK, vs = (long)NKV * DV, os = (long)NH * DV;
#pragma omp parallel
    {
        float row[att ? 1 : T]; /* P's row when it is not kept */
#pragma omp for collapse(2) schedule(dynamic)
        for (int bh = 0; bh < B * NH; bh++)
            for (int t = 0; t < T; t++) {
                int b = bh / NH, h = bh % NH, g = h / group;
                float *P = att ? att + ((long)bh * T + t) * T : row;
                attend_row(out + ((long)b * T + t) * os + (long)h * DV, P, q + ((long)b * T + t) * qs + (long)h * DK,
                           k + (long)b * T * ks + (long)g * DK, v + (long)b * T * vs + (long)g * DV, ks, vs,
                           sinks ? sinks + h : NULL, t, T, DK, DV, scale, window);
            }
    }
}

/* Backward of query head h of sequence b into dq (its own rows) and dk, dv
 * (its kv head's rows, shared with the group: the caller's task owns them). */
static void head_backward(float *dq, float *dk, float *dv, float *dsink, const float *dout, const float *P,
                          const float *q, const float *k, const float *v, long qs, long ks, long vs, long os, int T,
                          int DK, int DV, float scale)
{
    for (int t = 0; t < T; t++) {
        const float *Pt = P + (long)t * T, *dot_ = dout + t * os;
        /* dP_ts = dout_t . v_s; rho = sum_s P_ts dP_ts; dz_ts = P_ts (dP_ts - rho) */
        double rho = 0, mass = 0;
        float dP[t + 1];
        for (int s = 0; s <= t; s++)
            if (Pt[s] != 0) dP[s] = dot(dot_, v + s * vs, DV), rho += (double)Pt[s] * dP[s], mass += Pt[s];
        for (int s = 0; s <= t; s++) {
            if (Pt[s] == 0) continue;
            float dz = Pt[s] * (dP[s] - (float)rho) * scale;
            const float *ks_ = k + s * ks, *qt = q + t * qs;
            float *dqt = dq + t * qs, *dks = dk + s * ks, *dvs = dv + s * vs;
            for (int i = 0; i < DK; i++) dqt[i] += dz * ks_[i], dks[i] += dz * qt[i];
            for (int i = 0; i < DV; i++) dvs[i] += Pt[s] * dot_[i];
        }
        *dsink -= (float)((1 - mass) * rho);
    }
}

void ar_attn_sinks_backward(float *dq, float *dk, float *dv, float *dsinks, const float *dout, const float *att,
                            const float *q, const float *k, const float *v, int B, int T, int NH, int NKV,
                            int DK, int DV, float scale)
{
    int group = NH / NKV;
    long qs = (long)NH * DK, ks = (long)NKV * DK, vs = (long)NKV * DV, os = (long)NH * DV;
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int g = 0; g < NKV; g++)
            for (int h = g * group; h < (g + 1) * group; h++) {
                long qo = (long)b * T * qs + (long)h * DK;
                float ds = 0; /* this sequence's share; sequences run in parallel */
                head_backward(dq + qo, dk + (long)b * T * ks + (long)g * DK, dv + (long)b * T * vs + (long)g * DV,
                              &ds, dout + (long)b * T * os + (long)h * DV, att + ((long)b * NH + h) * T * T,
                              q + qo, k + (long)b * T * ks + (long)g * DK, v + (long)b * T * vs + (long)g * DV, qs,
                              ks, vs, os, T, DK, DV, scale);
                if (dsinks) {
#pragma omp atomic
                    dsinks[h] += ds;
                }
            }
}
