/* exwatch.h: the per-point watchdog rules (nan, spike, plateau; docs/watch.md),
 * evaluated by the native writer thread on every row it frames: no Python, no
 * GIL, nothing added to the producer's hot path.
 *
 * The Python side (expman.watch) declares the rules, and for each key id which
 * rules watch it and whether its rows count as progress (it alone matches
 * names and globs, at the key's definition, before any row uses the id). The
 * writer feeds each row (exwatch_row); the Python watcher takes the alerts and
 * the rank's new steps at its own pace (exwatch_take_*). One mutex guards the
 * state: the writer holds it across up to EXWATCH_ROWS_HELD rows (a lock per
 * row would cost as much as the rules) and lets go before any I/O
 * (exwatch_release); the Python side takes it briefly.
 *
 * expman/watch/engine.py is the reference: the same points give the same
 * alerts (same points, steps and reference values), which tests/test_watch.py
 * checks on planted faults.
 */
#ifndef EXWATCH_H
#define EXWATCH_H

#include <stdint.h>
#include <stddef.h>
#include "exlog_port.h"

#define EXWATCH_NAN 1u
#define EXWATCH_SPIKE 2u
#define EXWATCH_PLATEAU 3u

#define EXWATCH_UP 1
#define EXWATCH_DOWN 2
#define EXWATCH_BOTH 3

#define EXWATCH_MAX_RULES 64u
#define EXWATCH_MAX_WINDOW 1000000u
#define EXWATCH_ALERTS 4096u      /* alerts held between two takes; more are counted lost */
#define EXWATCH_RECENT 512u       /* new steps held between two takes (the newest) */
#define EXWATCH_ROWS_HELD 256u    /* rows evaluated under one hold of the mutex */

typedef struct {
    uint32_t kind;              /* EXWATCH_NAN, _SPIKE, _PLATEAU */
    /* spike */
    double k;
    uint32_t window, min_points;
    int direction;              /* EXWATCH_UP, _DOWN, _BOTH */
    /* plateau */
    int maximize;               /* mode max: higher is better */
    double delta;
    int64_t patience;
} exwatch_rule;

typedef struct {
    uint32_t rule, key;         /* the rule's index (exwatch_set_rules), the key id */
    int64_t step;
    double value;               /* the point */
    double ref, dev;            /* spike: the window's median, robust deviations */
    int64_t best_step;          /* plateau: the step of the best value */
    double best;                /* plateau: the best value (in the metric's sign) */
} exwatch_alert;

typedef struct exwatch exwatch;

exwatch *exwatch_new(void);          /* NULL when out of memory */
void exwatch_free(exwatch *x);
/* Declare the rules, all or none (their indices name them in bindings and
 * alerts), once, before exwatch_enable. 0; i + 1 when rules[i] is invalid; -1
 * when rules were set already or n > EXWATCH_MAX_RULES. */
int exwatch_set_rules(exwatch *x, const exwatch_rule *rules, uint32_t n);
/* Key `key` is watched by `n` rules (indices) and its rows count as the rank's
 * progress (or not: the sampler's series). A key bound already keeps its state.
 * 0, EINVAL or ENOMEM. */
int exwatch_bind(exwatch *x, uint32_t key, int progress, const uint32_t *rules, uint32_t n);
void exwatch_enable(exwatch *x);
/* Writer thread: one row (n points). A no-op until enabled. May leave the
 * mutex held for the next row: the writer calls exwatch_release before it
 * writes or waits. */
void exwatch_row(exwatch *x, int64_t step, int64_t t_ns, const uint32_t *ids,
                 const double *vals, uint32_t n);
void exwatch_release(exwatch *x);
/* Move up to cap alerts out (oldest first); *lost: alerts dropped so far
 * (the queue was full, or a key or series could not allocate). Returns the count. */
size_t exwatch_take_alerts(exwatch *x, exwatch_alert *out, size_t cap, uint64_t *lost);
/* The new steps (a change of step in the order logged, rows that count as
 * progress) since the last take, at most EXWATCH_RECENT, the newest. */
size_t exwatch_take_steps(exwatch *x, int64_t *steps, int64_t *t_ns, size_t cap);

#endif /* EXWATCH_H */
