/* exwatch.c: nan, spike and plateau over each row the writer frames (exwatch.h).
 * Each function mirrors its twin in expman/watch/engine.py, point by point. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "exwatch.h"

#define MAD_SIGMA 1.4826      /* engine._MAD_SIGMA */

typedef struct { int64_t step; double best; } improvement;

/* One rule watching one key. */
typedef struct {
    uint32_t rule;
    int armed;                  /* nan, plateau: fire at the next bad point */
    /* spike */
    uint64_t seen, quiet_until;
    int judged;                 /* the current block has a reference */
    double med, scale;
    double *win;                /* the last `window` finite points, circular */
    double *sorted;             /* the same points, in order */
    uint32_t win_len, win_pos;
    /* plateau: the best so far (negated for mode max), and the improvements
     * still in reach, [lo, n) of imp, sorted by step */
    double best;
    int64_t max_step;
    improvement *imp;
    size_t imp_lo, imp_n, imp_cap;
} series;

typedef struct {
    int bound, progress;
    uint32_t n;
    series *s;
} keywatch;

struct exwatch {
    exlog_mutex mu;
    volatile int on;
    exwatch_rule rules[EXWATCH_MAX_RULES];
    uint32_t nrules;
    keywatch *keys;
    size_t keys_cap;
    int held;                   /* writer: it holds mu across rows (exwatch_release) */
    uint32_t held_rows;
    exwatch_alert *alerts;
    size_t nalerts;
    uint64_t lost;
    int64_t last_step;          /* engine._Progress.last_step */
    int64_t rsteps[EXWATCH_RECENT], rtimes[EXWATCH_RECENT];
    uint64_t changes, taken;
};

exwatch *exwatch_new(void) {
    exwatch *x = (exwatch *)calloc(1, sizeof(exwatch));
    if (!x) return NULL;
    if (exlog_mutex_init(&x->mu) != 0) { free(x); return NULL; }
    x->last_step = -1;
    return x;
}

static void series_free(series *s) {
    free(s->win);
    free(s->sorted);
    free(s->imp);
}

void exwatch_free(exwatch *x) {
    size_t i;
    uint32_t j;
    if (!x) return;
    for (i = 0; i < x->keys_cap; i++) {
        for (j = 0; j < x->keys[i].n; j++) series_free(&x->keys[i].s[j]);
        free(x->keys[i].s);
    }
    free(x->keys);
    free(x->alerts);
    exlog_mutex_destroy(&x->mu);
    free(x);
}

static int rule_ok(const exwatch_rule *r) {
    switch (r->kind) {
    case EXWATCH_NAN: return 1;
    case EXWATCH_SPIKE:
        return r->k > 0 && r->window >= 3 && r->window <= EXWATCH_MAX_WINDOW &&
               r->min_points >= 3 && r->direction >= EXWATCH_UP && r->direction <= EXWATCH_BOTH;
    case EXWATCH_PLATEAU: return r->delta >= 0 && r->patience >= 1;
    default: return 0;
    }
}

int exwatch_set_rules(exwatch *x, const exwatch_rule *rules, uint32_t n) {
    uint32_t i;
    if (exlog_load_int(&x->on) || x->nrules || n > EXWATCH_MAX_RULES) return -1;
    for (i = 0; i < n; i++)
        if (!rule_ok(&rules[i])) return (int)i + 1;
    memcpy(x->rules, rules, n * sizeof *rules);
    x->nrules = n;
    return 0;
}

void exwatch_enable(exwatch *x) {
    exlog_mutex_lock(&x->mu);
    if (!x->alerts) x->alerts = (exwatch_alert *)malloc(EXWATCH_ALERTS * sizeof(exwatch_alert));
    if (x->alerts) exlog_store_int(&x->on, 1);
    exlog_mutex_unlock(&x->mu);
}

int exwatch_bind(exwatch *x, uint32_t key, int progress, const uint32_t *rules, uint32_t n) {
    keywatch *k;
    series *s = NULL;
    uint32_t j;
    int err = 0;
    for (j = 0; j < n; j++)
        if (rules[j] >= x->nrules) return EINVAL;
    if (key >= ((uint32_t)1 << 26)) return EINVAL;    /* exlog's bound on key ids too */
    exlog_mutex_lock(&x->mu);
    if (key >= x->keys_cap) {
        size_t c = x->keys_cap ? x->keys_cap : 64;
        keywatch *a;
        while (c <= key) c *= 2;
        a = (keywatch *)realloc(x->keys, c * sizeof(keywatch));
        if (!a) { err = ENOMEM; goto out; }
        memset(a + x->keys_cap, 0, (c - x->keys_cap) * sizeof(keywatch));
        x->keys = a;
        x->keys_cap = c;
    }
    k = &x->keys[key];
    if (k->bound) goto out;
    if (n) {
        s = (series *)calloc(n, sizeof(series));
        if (!s) { err = ENOMEM; goto out; }
    }
    for (j = 0; j < n; j++) {
        const exwatch_rule *r = &x->rules[rules[j]];
        s[j].rule = rules[j];
        s[j].armed = 1;
        s[j].best = INFINITY;
        s[j].max_step = INT64_MIN;
        if (r->kind == EXWATCH_SPIKE) {
            s[j].win = (double *)malloc(r->window * sizeof(double));
            s[j].sorted = (double *)malloc(r->window * sizeof(double));
            if (!s[j].win || !s[j].sorted) err = ENOMEM;
        }
    }
    if (err) {
        for (j = 0; j < n; j++) series_free(&s[j]);
        free(s);
        goto out;
    }
    k->s = s;
    k->n = n;
    k->progress = progress;
    k->bound = 1;
out:
    if (err) x->lost += 1;            /* a key left unwatched: said as a loss */
    exlog_mutex_unlock(&x->mu);
    return err;
}

/* ---- alerts ---------------------------------------------------------------- */
static exwatch_alert *push(exwatch *x, uint32_t rule, uint32_t key, int64_t step, double v) {
    exwatch_alert *a;
    if (x->nalerts >= EXWATCH_ALERTS) { x->lost += 1; return NULL; }
    a = &x->alerts[x->nalerts++];
    memset(a, 0, sizeof *a);
    a->rule = rule;
    a->key = key;
    a->step = step;
    a->value = v;
    return a;
}

size_t exwatch_take_alerts(exwatch *x, exwatch_alert *out, size_t cap, uint64_t *lost) {
    size_t n;
    exlog_mutex_lock(&x->mu);
    n = x->nalerts < cap ? x->nalerts : cap;
    if (n) {
        memcpy(out, x->alerts, n * sizeof *out);
        memmove(x->alerts, x->alerts + n, (x->nalerts - n) * sizeof *out);
        x->nalerts -= n;
    }
    *lost = x->lost;
    exlog_mutex_unlock(&x->mu);
    return n;
}

size_t exwatch_take_steps(exwatch *x, int64_t *steps, int64_t *t_ns, size_t cap) {
    uint64_t from, i;
    size_t n = 0;
    exlog_mutex_lock(&x->mu);
    from = x->taken;
    if (x->changes - from > EXWATCH_RECENT) from = x->changes - EXWATCH_RECENT;
    if (x->changes - from > cap) from = x->changes - cap;
    for (i = from; i < x->changes; i++, n++) {
        steps[n] = x->rsteps[i % EXWATCH_RECENT];
        t_ns[n] = x->rtimes[i % EXWATCH_RECENT];
    }
    x->taken = x->changes;
    exlog_mutex_unlock(&x->mu);
    return n;
}

/* ---- the rules ---------------------------------------------------------------- */
static int is_finite(double v) { return isfinite(v) != 0; }

/* nan: the first non-finite point of a run of them (engine._nan). */
static void eval_nan(exwatch *x, series *s, uint32_t key, int64_t step, double v) {
    int bad = !is_finite(v);
    if (bad && s->armed) push(x, s->rule, key, step, v);
    s->armed = !bad;
}

/* The index of the first of a[0..n) not below v (sorted a): a binary search
 * without branches on the data (noisy points mispredict every one). */
static uint32_t lower_bound(const double *a, uint32_t n, double v) {
    const double *base = a;
    if (n == 0) return 0;
    while (n > 1) {
        uint32_t half = n / 2;
        base = base[half] < v ? base + half : base;
        n -= half;
    }
    return (uint32_t)(base - a) + (base[0] < v);
}

/* Median of the sorted a[0..n), n >= 1, as engine._padded_median: the mean of
 * the ((n-1)/2)-th and (n/2)-th smallest. */
static double sorted_median(const double *a, uint32_t n) {
    return (a[(n - 1) / 2] + a[n / 2]) / 2;
}

/* Median of |a[i] - m| over the sorted a[0..n): the distances below m and those
 * above it are two sorted runs outward from m; merging them up to the middle
 * gives the same two order statistics as sorting every distance. */
static double sorted_mad(const double *a, uint32_t n, double m) {
    uint32_t p = lower_bound(a, n, m), want = n / 2, r;
    uint32_t li = p, ri = p;          /* next below: a[li - 1]; next above: a[ri] */
    double d = 0, lo = 0;
    for (r = 0; r <= want; r++) {
        if (ri < n && (li == 0 || a[ri] - m <= m - a[li - 1])) d = a[ri++] - m;
        else d = m - a[--li];
        if (r == (n - 1) / 2) lo = d;
    }
    return (lo + d) / 2;
}

/* spike (engine._spike): a block of window/4 points shares the reference of
 * the `window` finite points before it; judged once the block starts at
 * min_points; quiet for `window` points after a spike. */
static void eval_spike(exwatch *x, const exwatch_rule *r, series *s, uint32_t key,
                       int64_t step, double v) {
    uint64_t g = s->seen, block = r->window / 4 ? r->window / 4 : 1;
    uint32_t i, j, n;
    if (!is_finite(v)) return;
    if (g % block == 0) {
        s->judged = g >= r->min_points;
        if (s->judged) {
            s->med = sorted_median(s->sorted, s->win_len);
            s->scale = MAD_SIGMA * sorted_mad(s->sorted, s->win_len, s->med);
        }
    }
    if (s->judged && s->scale > 1e-12 * fmax(fabs(s->med), 1e-300)) {
        double dev = (v - s->med) / s->scale;
        int hit = r->direction == EXWATCH_UP ? dev > r->k
                : r->direction == EXWATCH_DOWN ? dev < -r->k : fabs(dev) > r->k;
        if (hit && !(s->quiet_until > g)) {
            exwatch_alert *a;
            s->quiet_until = g + r->window;
            a = push(x, s->rule, key, step, v);
            if (a) { a->ref = s->med; a->dev = dev; }
        }
    }
    /* v enters the window and its sorted copy; once full, the oldest point leaves
     * (one shift of the points between the two) */
    n = s->win_len;
    if (n < r->window) {
        i = lower_bound(s->sorted, n, v);
        memmove(s->sorted + i + 1, s->sorted + i, (n - i) * sizeof(double));
        s->sorted[i] = v;
        s->win_len = n + 1;
    } else {
        double old = s->win[s->win_pos];
        i = lower_bound(s->sorted, n, old);           /* sorted[i] == old */
        if (v > old) {
            j = lower_bound(s->sorted, n, v);
            memmove(s->sorted + i, s->sorted + i + 1, (j - 1 - i) * sizeof(double));
            s->sorted[j - 1] = v;
        } else if (v < old) {
            j = lower_bound(s->sorted, i, v);
            memmove(s->sorted + j + 1, s->sorted + j, (i - j) * sizeof(double));
            s->sorted[j] = v;
        }
    }
    s->win[s->win_pos] = v;
    s->win_pos = s->win_pos + 1 == r->window ? 0 : s->win_pos + 1;
    s->seen = g + 1;
}

/* Index of the last improvement at a step <= at, or -1 (a binary search). */
static ptrdiff_t last_at(const series *s, int64_t at) {
    size_t lo = s->imp_lo, hi = s->imp_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->imp[mid].step <= at) lo = mid + 1;
        else hi = mid;
    }
    return lo == s->imp_lo ? -1 : (ptrdiff_t)lo - 1;
}

/* plateau (engine._plateau): the best now against the best as of step -
 * patience; no better by delta is a plateau, said once until an improvement. */
static void eval_plateau(exwatch *x, const exwatch_rule *r, series *s, uint32_t key,
                         int64_t step, double v) {
    double u = r->maximize ? -v : v;
    int64_t back, reach;
    ptrdiff_t k;
    int cond = 0;
    if (!is_finite(v)) return;
    if (u < s->best) {
        s->best = u;
        if (s->imp_n == s->imp_cap) {
            size_t c = s->imp_cap ? s->imp_cap * 2 : 16;
            improvement *a;
            if (s->imp_lo && s->imp_lo >= s->imp_n / 4) {   /* reuse the pruned ones' room */
                memmove(s->imp, s->imp + s->imp_lo, (s->imp_n - s->imp_lo) * sizeof(improvement));
                s->imp_n -= s->imp_lo;
                s->imp_lo = 0;
            } else {
                a = (improvement *)realloc(s->imp, c * sizeof(improvement));
                if (!a) { x->lost += 1; return; }
                s->imp = a;
                s->imp_cap = c;
            }
        }
        s->imp[s->imp_n].step = step;
        s->imp[s->imp_n].best = u;
        s->imp_n += 1;
    }
    /* keep the improvements still in reach and the last one before them */
    if (step > s->max_step) s->max_step = step;
    reach = s->max_step < INT64_MIN + r->patience ? INT64_MIN : s->max_step - r->patience;
    while (s->imp_lo + 1 < s->imp_n && s->imp[s->imp_lo + 1].step <= reach) s->imp_lo += 1;
    back = step < INT64_MIN + r->patience ? INT64_MIN : step - r->patience;
    if (back == reach)                /* steps that only grow: no search */
        k = s->imp_lo < s->imp_n && s->imp[s->imp_lo].step <= back ? (ptrdiff_t)s->imp_lo : -1;
    else
        k = last_at(s, back);
    if (k >= 0) cond = s->best >= s->imp[k].best - r->delta;
    if (cond && s->armed) {
        ptrdiff_t j = last_at(s, step);
        exwatch_alert *a = push(x, s->rule, key, step, v);
        if (a) {
            a->best_step = j >= 0 ? s->imp[j].step : step;
            a->best = r->maximize ? -s->best : s->best;
        }
    }
    s->armed = !cond;
}

void exwatch_row(exwatch *x, int64_t step, int64_t t_ns, const uint32_t *ids,
                 const double *vals, uint32_t n) {
    uint32_t i, j;
    int progress = 0;
    if (!exlog_load_int(&x->on)) return;
    if (!x->held) {
        exlog_mutex_lock(&x->mu);
        x->held = 1;
    }
    for (i = 0; i < n; i++) {
        keywatch *k = ids[i] < x->keys_cap ? &x->keys[ids[i]] : NULL;
        if (!k || !k->bound) { progress = 1; continue; }   /* unknown: counts, unjudged */
        progress |= k->progress;
        for (j = 0; j < k->n; j++) {
            series *s = &k->s[j];
            const exwatch_rule *r = &x->rules[s->rule];
            if (r->kind == EXWATCH_NAN) eval_nan(x, s, ids[i], step, vals[i]);
            else if (r->kind == EXWATCH_SPIKE) eval_spike(x, r, s, ids[i], step, vals[i]);
            else eval_plateau(x, r, s, ids[i], step, vals[i]);
        }
    }
    if (progress && step != x->last_step) {
        x->rsteps[x->changes % EXWATCH_RECENT] = step;
        x->rtimes[x->changes % EXWATCH_RECENT] = t_ns;
        x->changes += 1;
        x->last_step = step;
    }
    if (++x->held_rows >= EXWATCH_ROWS_HELD) exwatch_release(x);
}

void exwatch_release(exwatch *x) {
    if (!x->held) return;
    x->held = 0;
    x->held_rows = 0;
    exlog_mutex_unlock(&x->mu);
}
