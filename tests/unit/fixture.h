/* fixture.h — helpers shared by the unit test binaries (tests/unit/fixture.c
 * is linked into every one of them by the Makefile's TESTLIB rule): where the
 * shared models are, whole files and JSON read in, scratch folders, and a
 * small bf16 safetensors "model" folder. Failures are Criterion assertions,
 * so they end the calling test with the file named. */
#ifndef AR_TEST_FIXTURE_H
#define AR_TEST_FIXTURE_H

#include <cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* $AR_SHARED, or ../shared when it is unset or empty (DEVELOPERS.md). */
const char *fx_shared(void);

/* dir = "$AR_SHARED/models/<model>" (cap bytes). */
void fx_model_dir(char *dir, size_t cap, const char *model);

/* The whole file at path, malloc'd (caller frees) with a NUL after its
 * bytes so text can be used as a string; void * so binary callers take it
 * as float or bytes. *len receives the size unless len is NULL. Asserts it
 * opens and reads. */
void *fx_slurp(const char *path, size_t *len);

/* The file at path parsed as JSON (caller cJSON_Delete's); asserts it parses. */
cJSON *fx_load_json(const char *path);

/* mkdtemp on tmpl (a "...XXXXXX" buffer, rewritten in place); asserts success. */
void fx_make_tmp(char *tmpl);

/* rm -rf dir; asserts the command succeeds. */
void fx_rm_rf(const char *dir);

/* "dir/name" in one of four static buffers used in turn, so a call may
 * take up to four such paths at once. */
char *fx_path_in(const char *dir, const char *name);

/* Writes text as the file dir/name (created or truncated). */
void fx_write_text(const char *dir, const char *name, const char *text);

/* One tensor of a fixture model: its name and a 1-D or 2-D shape. */
typedef struct {
    const char *name;
    int nd;
    int64_t s[2];
} fx_tensor;

/* Creates the folder dir holding the n tensors as bf16 in one safetensors
 * file; element j of tensor i is value(i, j) rounded to bf16. */
void fx_write_bf16_model(const char *dir, const fx_tensor *t, size_t n, float (*value)(size_t i, size_t j));

/* ---- Error bounds: the tolerance of every floating-point check ------------
 *
 * A check of an f32 computation against a reference takes its tolerance from
 * an error bound of that computation, evaluated on the test's own data, never
 * from a tuned constant. The model (N. J. Higham, Accuracy and Stability of
 * Numerical Algorithms, 2nd ed., SIAM 2002):
 *
 *  - every f32 operation rounds to nearest: fl(a op b) = (a op b)(1 + d),
 *    |d| <= u = 2^-24 (§2.2); an f32 store of a double result likewise;
 *  - a dot product of length n, summed in ANY order (sequential, reversed,
 *    pairwise, split over 8 or 16 SIMD lanes and reduced at the end, with or
 *    without FMA) satisfies |fl(a.b) - a.b| <= gamma_n * sum |a_i b_i|,
 *    gamma_n = n u / (1 - n u) (Lemma 3.1 and eq. (3.5), §3.1): each product
 *    passes through at most n roundings whatever the summation tree. A sum
 *    of n terms is within gamma_{n-1} * sum |t_i|. So one bound covers every
 *    BLAS kernel (Haswell, SkylakeX, Zen, ...) and every thread split;
 *  - libm's expf, logf, sinf, cosf, powf are within 1 ulp (relative 2u);
 *    powf(b, x) is bounded as exp(x ln b) (the same value, a larger bound);
 *  - composite computations carry a bound through each operation with the
 *    fx_ev rules below (running error analysis, §3.3): the reference is
 *    evaluated in double on the same f32 inputs, and alongside each value a
 *    bound on how far the f32 computation can be from it.
 *
 * A check passes when |got - want| <= FX_SAFETY * bound. FX_SAFETY = 2 covers
 * the second-order terms the rules drop and the double reference's own
 * rounding (2^-53 per operation, ~1e-9 of a typical f32 bound). The bounds
 * are worst cases (typical errors are ~sqrt(n) u, not n u) yet stay sharp:
 * a missing term, a wrong index or a wrong formula moves a result by O(1)
 * relative, thousands of bounds away (test_fixture.c shows both sides). */

#define FX_U 0x1p-24     /* unit roundoff of IEEE binary32 */
#define FX_SAFETY 2.0

/* How the fx_ev rules run (fx_set_mode): FX_BOUNDS (the default) carry the
 * bounds and check that divisors and arguments stay valid; FX_VALUES only the
 * exact values (a reference run whose bounds are not wanted); FX_MCA perturbs
 * every result as an f32 rounding might (Monte Carlo arithmetic, below). */
enum { FX_BOUNDS, FX_VALUES, FX_MCA };
extern int fx_mode_;
extern uint64_t fx_rng_;
void fx_set_mode(int mode, uint64_t seed);

/* v times 1 + k u r, r uniform in [-1, 1) from the counter *ctr
 * (splitmix64: successive draws do not wait on each other). */
static inline double fx_perturb_(double v, double k, uint64_t *ctr)
{
    uint64_t z = (*ctr += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull, z = (z ^ (z >> 27)) * 0x94D049BB133111EBull, z ^= z >> 31;
    return v * (1 + k * FX_U * ((double)(int64_t)z * 0x1p-63));
}

/* One draw, two relative perturbations u r1, u r2 (32 bits each): for a
 * product and the addition that takes it in, the Monte Carlo hot path. */
static inline void fx_perturb2_(double *d1, double *d2, uint64_t *ctr)
{
    uint64_t z = (*ctr += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull, z = (z ^ (z >> 27)) * 0x94D049BB133111EBull, z ^= z >> 31;
    *d1 = 1 + FX_U * ((double)(int32_t)(uint32_t)z * 0x1p-31);
    *d2 = 1 + FX_U * ((double)(int32_t)(uint32_t)(z >> 32) * 0x1p-31);
}

/* The value an operation returns: exact, or under FX_MCA perturbed (k = 1
 * for arithmetic, 2 for libm). */
static inline double fx_out_(double v, double k)
{
    return fx_mode_ != FX_MCA ? v : fx_perturb_(v, k, &fx_rng_);
}

/* Fails the calling test with a printf-style message (the rules' checks). */
void fx_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* gamma_n = n u / (1 - n u) for u = FX_U (asserts n u < 1/2). */
static inline double fx_gamma(double n)
{
    if (!(n >= 0 && n * FX_U < 0.5)) fx_fail("gamma_%g: n u must stay below 1/2", n);
    return n * FX_U / (1 - n * FX_U);
}

/* gamma_n for double computations (u = 2^-53): sums the library does in
 * double, compared with a double reference. */
static inline double fx_gamma_d(double n)
{
    if (!(n >= 0 && n * 0x1p-53 < 0.5)) fx_fail("gamma_%g: n u must stay below 1/2", n);
    return n * 0x1p-53 / (1 - n * 0x1p-53);
}

/* gamma_n * sum_i |a[i*sa] * b[i*sb]|: the bound on the f32 rounding error of
 * a length-n dot product of these f32 vectors, in any summation order. */
double fx_dot_bound(const float *a, long sa, const float *b, long sb, long n);

/* A value of a reference computation in double and a bound on how far the
 * f32 computation of the same expression can be from it (v exact on the
 * f32 inputs; e >= 0). */
typedef struct { double v, e; } fx_ev;

static inline fx_ev fx_exact(double v) { return (fx_ev){v, 0}; }

/* The rules, each rigorous to first order (second-order terms kept where
 * cheap); "rounded" adds u times the largest magnitude the result can have,
 * |v| + e. libm functions add 2u (1 ulp). */
static inline double fx_rnd_(double v, double e) { return FX_U * (fabs(v) + e); }

/* a + b, rounded */
static inline fx_ev fx_add(fx_ev a, fx_ev b)
{
    double v = a.v + b.v, e = a.e + b.e;
    return (fx_ev){fx_out_(v, 1), e + fx_rnd_(v, e)};
}

/* a - b, rounded */
static inline fx_ev fx_sub(fx_ev a, fx_ev b)
{
    double v = a.v - b.v, e = a.e + b.e;
    return (fx_ev){fx_out_(v, 1), e + fx_rnd_(v, e)};
}

/* a * b, rounded */
static inline fx_ev fx_mul(fx_ev a, fx_ev b)
{
    double v = a.v * b.v, e = fabs(a.v) * b.e + fabs(b.v) * a.e + a.e * b.e;
    return (fx_ev){fx_out_(v, 1), e + fx_rnd_(v, e)};
}

/* a / b, rounded; asserts |b| > e_b */
static inline fx_ev fx_div(fx_ev a, fx_ev b)
{
    if (fx_mode_ == FX_BOUNDS && !(fabs(b.v) > b.e)) fx_fail("fx_div: the divisor %g may be 0 (bound %g)", b.v, b.e);
    double v = a.v / b.v, e = (a.e + fabs(v) * b.e) / (fabs(b.v) - b.e);
    return (fx_ev){fx_out_(v, 1), e + fx_rnd_(v, e)};
}

/* sqrtf (correctly rounded); asserts a - e_a >= 0. sqrt is concave: the
 * lower side moves it most. */
static inline fx_ev fx_sqrt(fx_ev a)
{
    if (fx_mode_ == FX_BOUNDS && !(a.v - a.e >= 0)) fx_fail("fx_sqrt: the argument %g may be negative (bound %g)", a.v, a.e);
    double v = sqrt(a.v), e = v - sqrt(fmax(a.v - a.e, 0));
    return (fx_ev){fx_out_(v, 1), e + fx_rnd_(v, e)};
}

/* expf: 1 ulp */
static inline fx_ev fx_exp(fx_ev a)
{
    double v = exp(a.v), e = v * expm1(a.e);
    return (fx_ev){fx_out_(v, 2), e + 2 * fx_rnd_(v, e)};
}

/* logf: 1 ulp; asserts a - e_a > 0 (log is concave: the lower side) */
static inline fx_ev fx_log(fx_ev a)
{
    if (fx_mode_ == FX_BOUNDS && !(a.v - a.e > 0)) fx_fail("fx_log: the argument %g may be <= 0 (bound %g)", a.v, a.e);
    double v = log(a.v), e = a.v > a.e ? log(a.v / (a.v - a.e)) : INFINITY;
    return (fx_ev){fx_out_(v, 2), e + 2 * fx_rnd_(v, e)};
}

/* cosf, sinf: 1 ulp; |d cos| <= |sin| e + e^2/2 (and <= 2) */
static inline fx_ev fx_cos(fx_ev a)
{
    double v = cos(a.v), e = fmin(2, fabs(sin(a.v)) * a.e + a.e * a.e / 2);
    return (fx_ev){fx_out_(v, 2), e + 2 * fx_rnd_(v, e)};
}

static inline fx_ev fx_sin(fx_ev a)
{
    double v = sin(a.v), e = fmin(2, fabs(cos(a.v)) * a.e + a.e * a.e / 2);
    return (fx_ev){fx_out_(v, 2), e + 2 * fx_rnd_(v, e)};
}

/* an f32 store of a double-computed a */
static inline fx_ev fx_round(fx_ev a) { return (fx_ev){fx_out_(a.v, 1), a.e + fx_rnd_(a.v, a.e)}; }

/* a * c with c an exact power of two or -1 (no rounding) */
static inline fx_ev fx_scale(fx_ev a, double c) { return (fx_ev){a.v * c, a.e * fabs(c)}; }

/* A sum of terms in any order: add each term (with its own bound: a
 * product made with fx_mul already carries its rounding), then fx_acc_sum
 * gives the value and e = sum e_i + gamma_{n-1} (sum |t_i| + sum e_i). */
typedef struct { double v, e, mag; long n; } fx_acc;
static inline void fx_acc_add(fx_acc *s, fx_ev t)
{
    s->v = fx_out_(s->v + t.v, 1), s->e += t.e, s->mag += fabs(t.v), s->n++;
}
static inline fx_ev fx_acc_sum(const fx_acc *s)
{
    double g = s->n > 1 ? fx_gamma((double)(s->n - 1)) : 0;
    return (fx_ev){s->v, s->e + g * (s->mag + s->e)};
}

/* ---- Monte Carlo arithmetic: where bounds compound past use ------------
 *
 * A worst-case bound carried through many layers grows by each layer's
 * gain in absolute values: through one decoder block it reaches ~3e-3
 * relative, and after three stories260K layers it exceeds the values
 * themselves. Tests that compare the end result of a whole network with a
 * reference computed elsewhere (another implementation, another code path)
 * therefore use an estimate, computed from the same data: the fx_ev
 * reference of the computation run again FX_MCA_RUNS times under FX_MCA,
 * each run one random f32-like rounding of every operation (Monte Carlo
 * arithmetic: D. S. Parker, "Monte Carlo Arithmetic", UCLA 1997; the same
 * idea as CESTAC, J. Vignes 1993). The largest deviation of any output of
 * any run from the exact values measures how rounding errors grow on this
 * data; the tolerance is FX_MCA_FACTOR times it (a maximum over many outputs
 * is stable from run to run; 10 leaves room for the f32 kernel's own
 * summation order and the runs' spread). Composite computations are also
 * checked stage by stage with rigorous bounds where their intermediates are
 * at hand (refblock.h). */
#define FX_MCA_RUNS 4
#define FX_MCA_FACTOR 10.0

/* run(ctx, out) computes n outputs with fx_ev rules. Returns FX_MCA_FACTOR
 * times the largest |out - exact| over FX_MCA_RUNS randomly rounded runs;
 * exact (may be NULL) receives the exact outputs. Restores FX_BOUNDS. */
double fx_mca_tolerance(void (*run)(void *ctx, double *out), void *ctx, long n, double *exact);

/* The same per output: tol[i] = FX_MCA_FACTOR times output i's largest
 * deviation (for outputs of different scales, few enough that a maximum
 * over FX_MCA_RUNS runs is not small by chance for any of them). */
void fx_mca_tolerances(void (*run)(void *ctx, double *out), void *ctx, long n, double *exact, double *tol);

/* |got - want| <= FX_SAFETY * bound (a NaN anywhere is outside). */
int fx_within(double got, double want, double bound);

/* Asserts fx_within; the failure message is the printf-style what, then
 * got, want, |got - want| and the bound. */
void fx_assert_within(double got, double want, double bound, const char *what, ...)
    __attribute__((format(printf, 4, 5)));

/* fx_assert_within for each of n f32 results against double references,
 * bound[i] each (the message names what[i]). */
void fx_assert_all_within(const float *got, const double *want, const double *bound, long n, const char *what);

/* How many of the n results are outside their bound: for the checks that a
 * deliberately perturbed result (a dropped term, a shifted index) is caught. */
long fx_count_outside(const float *got, const double *want, const double *bound, long n);

/* Central difference of a double function with an error bound: fp, fm =
 * f(x + h), f(x - h); fp2, fm2 = f(x + 2h), f(x - 2h); fmag >= the magnitude
 * of the terms f sums (|f| when it sums none). Returns (fp - fm) / 2h; *err =
 * |D(h) - D(2h)| (its truncation error is (D(2h) - D(h)) / 3 to leading order,
 * Richardson) + 2^-40 fmag / h (the double evaluations' rounding, each within
 * 2^13 ulps of fmag, over the step). */
double fx_central_diff(double fp, double fm, double fp2, double fm2, double h, double fmag, double *err);

#endif
