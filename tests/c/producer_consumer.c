/* producer_consumer.c: drive the C core (exlog.c) without Python.
 *
 * Usage: producer_consumer METRICS_PATH EVENTS_PATH N [rows|keys|garbage]
 *
 * One producer thread (main) pushes three KEY records, N ROW records of one
 * to three points and an EVENT every 1000 rows through a 4 KiB ring (the
 * smallest, so it wraps and fills many times), waiting for space when full.
 * The writer thread drains it into METRICS_PATH and EVENTS_PATH. Then it
 * flushes, stops, and prints the writer's counters as `key=value` lines for
 * tests/test_portable_c.py, which verifies every frame with zlib.crc32.
 *
 * Mode `keys` (issue 15 item 4): KEYS_THREADS threads, serialised by one
 * mutex as Python threads are by the GIL, each define the same KEYS_N long
 * names (900 bytes, nearly a quarter of the 4 KiB ring, so it wraps on almost
 * every record) and log a row with each, N times over. A thread that finds the
 * ring full releases the mutex, waits for space, and on return first re-checks
 * whether another thread defined the key meanwhile: then it abandons the
 * reservation it may hold (exlog_abandon), exactly as _core.pyx does. Every
 * key must be defined once, every row written once (checked by the test with
 * the reference reader), under TSan too.
 *
 * In mode `rows` the writer's watchdogs (exwatch.c) watch too: nan and spike on
 * `acc`, a plateau on `loss` (which only grows: it fires once, at step
 * PC_PATIENCE, with its best at step 0); the producer takes their alerts and
 * new steps while the writer evaluates (under TSan: no race).
 *
 * Mode `garbage` (item 16): a record of size 0 is published; the writer must
 * report it and stop, never spin.
 *
 * Compiled with -Wall -Wextra -Werror natively and with MinGW for Windows, so
 * both branches of exlog_port.h are built. Exit status 0 means every record
 * was accepted and reported written.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include "exlog.h"

#ifdef _WIN32
#  include <sys/stat.h>
#  define PC_OPEN(path) _open((path), _O_WRONLY | _O_CREAT | _O_TRUNC | _O_BINARY, \
                              _S_IREAD | _S_IWRITE)
#  define PC_CLOSE(fd) _close(fd)
#else
#  define PC_OPEN(path) open((path), O_WRONLY | O_CREAT | O_TRUNC, 0644)
#  define PC_CLOSE(fd) close(fd)
#endif

#define PC_REC_HEADER 32u
#define PC_PATIENCE 100

/* The watchdogs of mode rows: rules, bindings (key 2 stays unwatched). */
static int watch_setup(exwatch *x) {
    exwatch_rule rules[3];             /* nan, spike, plateau */
    uint32_t acc_rules[2], loss_rules[1];
    memset(rules, 0, sizeof rules);
    rules[0].kind = EXWATCH_NAN;
    rules[1].kind = EXWATCH_SPIKE;
    rules[1].k = 8;
    rules[1].window = 50;
    rules[1].min_points = 20;
    rules[1].direction = EXWATCH_BOTH;
    rules[2].kind = EXWATCH_PLATEAU;
    rules[2].patience = PC_PATIENCE;
    rules[1].window = 2;               /* invalid: refused, and nothing is set */
    if (exwatch_set_rules(x, rules, 3) != 2) return 1;
    rules[1].window = 50;
    if (exwatch_set_rules(x, rules, 3) != 0 || exwatch_set_rules(x, rules, 3) != -1)
        return 1;                      /* all at once, and only once */
    acc_rules[0] = 0;
    acc_rules[1] = 1;
    loss_rules[0] = 2;
    if (exwatch_bind(x, 0, 1, loss_rules, 1) || exwatch_bind(x, 1, 1, acc_rules, 2)) return 1;
    exwatch_enable(x);
    return 0;
}

/* Take what the watchdogs found; count the alerts and remember the last step. */
static void watch_take(exwatch *x, exwatch_alert *alerts, size_t *n_alerts, int64_t *last) {
    int64_t steps[EXWATCH_RECENT], times[EXWATCH_RECENT];
    uint64_t lost;
    size_t got = exwatch_take_alerts(x, alerts + *n_alerts, 4 - *n_alerts, &lost);
    size_t m = exwatch_take_steps(x, steps, times, EXWATCH_RECENT);
    *n_alerts += got;
    if (m) *last = steps[m - 1];
}

static int fail(const char *what) {
    fprintf(stderr, "producer_consumer: %s\n", what);
    return 1;
}

/* Reserve `size` bytes, waiting for the writer while the ring is full. */
static unsigned char *reserve(exlog *w, uint64_t size) {
    unsigned char *p;
    int tries = 0;
    while ((p = exlog_reserve(w, size)) == NULL) {
        exlog_wait_space(w, size, 1000);
        if (++tries > 10000) return NULL;   /* the writer is stuck: give up */
    }
    return p;
}

static int put_key(exlog *w, uint32_t id, const char *name) {
    uint32_t len = (uint32_t)strlen(name);
    uint64_t size = PC_REC_HEADER + exlog_align8(len);
    unsigned char *p = reserve(w, size);
    exlog_rec *r = (exlog_rec *)p;
    if (!p) return -1;
    r->size = (uint32_t)size;
    r->kind = EXLOG_REC_KEY;
    r->n = id;
    r->len = len;
    r->step = 0;
    r->t_ns = 0;
    memcpy(p + PC_REC_HEADER, name, len);
    exlog_commit(w, size);
    return 0;
}

static int put_row(exlog *w, int64_t step, uint32_t npts) {
    uint64_t ids_bytes = exlog_align8(4u * (uint64_t)npts);
    uint64_t size = PC_REC_HEADER + ids_bytes + 8u * (uint64_t)npts;
    unsigned char *p = reserve(w, size);
    exlog_rec *r = (exlog_rec *)p;
    uint32_t k;
    if (!p) return -1;
    r->size = (uint32_t)size;
    r->kind = EXLOG_REC_ROW;
    r->n = npts;
    r->len = 0;
    r->step = step;
    r->t_ns = exlog_wall_ns();
    for (k = 0; k < npts; k++) {
        uint32_t id = k;
        double v = (double)step + (double)k / 4.0;   /* exact in binary */
        memcpy(p + PC_REC_HEADER + 4u * k, &id, 4);
        memcpy(p + PC_REC_HEADER + ids_bytes + 8u * k, &v, 8);
    }
    exlog_commit(w, size);
    return 0;
}

static int put_event(exlog *w, int64_t step) {
    char line[64];
    int len = snprintf(line, sizeof line, "{\"step\":%lld}\n", (long long)step);
    uint64_t size = PC_REC_HEADER + exlog_align8((uint64_t)len);
    unsigned char *p = reserve(w, size);
    exlog_rec *r = (exlog_rec *)p;
    if (!p) return -1;
    r->size = (uint32_t)size;
    r->kind = EXLOG_REC_EVENT;
    r->n = 0;
    r->len = (uint32_t)len;
    r->step = 0;
    r->t_ns = 0;
    memcpy(p + PC_REC_HEADER, line, (size_t)len);
    exlog_commit(w, size);
    return 0;
}

/* ---- mode keys: concurrent definitions of the same names ----------------- */
#define KEYS_THREADS 4
#define KEYS_N 12
#define KEYS_NAME_LEN 900

typedef struct {
    exlog *w;
    exlog_mutex gil;            /* the producers' one lock, like the GIL */
    int defined[KEYS_N];        /* guarded by gil: the key's id, or -1 */
    int next_id;
    long long rounds;
    int failed;
} keys_shared;

typedef struct { keys_shared *sh; int t; } keys_arg;

static void key_name(char *out, int i) {
    memset(out, 'x', KEYS_NAME_LEN);
    out[0] = (char)('A' + i);
}

/* With sh->gil held: reserve, waiting with the lock released while the ring is
 * full. After every wait `*again` tells the caller the world may have changed. */
static unsigned char *reserve_released(keys_shared *sh, uint64_t size, int *waited) {
    unsigned char *p;
    int tries = 0;
    *waited = 0;
    while ((p = exlog_reserve(sh->w, size)) == NULL) {
        exlog_mutex_unlock(&sh->gil);
        exlog_wait_space(sh->w, size, 1000);
        exlog_mutex_lock(&sh->gil);
        *waited = 1;
        if (++tries > 10000) return NULL;
    }
    return p;
}

static void keys_worker(void *arg) {
    keys_arg *a = (keys_arg *)arg;
    keys_shared *sh = a->sh;
    char name[KEYS_NAME_LEN];
    long long r;
    int i, waited;
    for (r = 0; r < sh->rounds; r++) {
        for (i = 0; i < KEYS_N; i++) {
            uint64_t ksize = PC_REC_HEADER + exlog_align8(KEYS_NAME_LEN);
            uint64_t rsize = PC_REC_HEADER + 8u + 8u;
            unsigned char *p;
            exlog_rec *rec;
            uint32_t id;
            double v = (double)a->t;
            exlog_mutex_lock(&sh->gil);
            while (sh->defined[i] < 0) {
                key_name(name, i);
                p = reserve_released(sh, ksize, &waited);
                if (!p) { sh->failed = 1; break; }
                if (sh->defined[i] >= 0) { exlog_abandon(sh->w); break; }   /* lost the race */
                rec = (exlog_rec *)p;
                rec->size = (uint32_t)ksize;
                rec->kind = EXLOG_REC_KEY;
                rec->n = (uint32_t)sh->next_id;
                rec->len = KEYS_NAME_LEN;
                rec->step = 0;
                rec->t_ns = 0;
                memcpy(p + PC_REC_HEADER, name, KEYS_NAME_LEN);
                exlog_commit(sh->w, ksize);
                sh->defined[i] = sh->next_id++;
            }
            id = (uint32_t)sh->defined[i];
            p = sh->failed ? NULL : reserve_released(sh, rsize, &waited);
            if (!p) { sh->failed = 1; exlog_mutex_unlock(&sh->gil); return; }
            rec = (exlog_rec *)p;
            rec->size = (uint32_t)rsize;
            rec->kind = EXLOG_REC_ROW;
            rec->n = 1;
            rec->len = 0;
            rec->step = r;
            rec->t_ns = exlog_wall_ns();
            memcpy(p + PC_REC_HEADER, &id, 4);
            memcpy(p + PC_REC_HEADER + 8, &v, 8);
            exlog_commit(sh->w, rsize);
            exlog_mutex_unlock(&sh->gil);
        }
    }
}

static int run_keys(exlog *w, long long rounds) {
    keys_shared sh;
    keys_arg args[KEYS_THREADS];
    exlog_thread threads[KEYS_THREADS];
    int i;
    memset(&sh, 0, sizeof sh);
    sh.w = w;
    sh.rounds = rounds;
    for (i = 0; i < KEYS_N; i++) sh.defined[i] = -1;
    if (exlog_mutex_init(&sh.gil) != 0) return fail("mutex");
    for (i = 0; i < KEYS_THREADS; i++) {
        args[i].sh = &sh;
        args[i].t = i;
        if (exlog_thread_start(&threads[i], keys_worker, &args[i]) != 0) return fail("thread");
    }
    for (i = 0; i < KEYS_THREADS; i++) exlog_thread_join(threads[i]);
    exlog_mutex_destroy(&sh.gil);
    if (sh.failed) return fail("keys: the writer made no room");
    printf("keys_defined=%d\n", sh.next_id);
    return 0;
}

/* ---- mode garbage: a record of size 0 ------------------------------------ */
static int run_garbage(exlog *w) {
    unsigned char *p;
    exlog_rec *rec;
    if (put_key(w, 0, "loss") || put_row(w, 0, 1)) return fail("garbage: no room");
    p = reserve(w, 64);
    if (!p) return fail("garbage: no room");
    rec = (exlog_rec *)p;
    memset(p, 0, 64);               /* size 0: the writer would spin on it */
    rec->kind = EXLOG_REC_ROW;
    exlog_commit(w, 64);
    if (put_row(w, 1, 1)) return fail("garbage: no room");
    return 0;
}

int main(int argc, char **argv) {
    unsigned char header[EXLOG_HEADER_SIZE];
    exlog_stats st;
    exlog *w;
    int fd_m, fd_e, reached;
    long long i, n, n_events = 0;
    const char *mode = argc > 4 ? argv[4] : "rows";
    exlog_keysum sums[3];
    uint64_t sum_bytes = 0, sum_last = 0;
    int k;
    exwatch_alert alerts[4];
    size_t n_alerts = 0;
    int64_t last_step = -1;

    if (argc != 4 && argc != 5) return fail("usage: producer_consumer METRICS EVENTS N [rows|keys|garbage]");
    n = atoll(argv[3]);
    if (exlog_crc32(0, (const unsigned char *)"123456789", 9) != 0xCBF43926u)
        return fail("crc32 check value is wrong");

    fd_m = PC_OPEN(argv[1]);
    fd_e = PC_OPEN(argv[2]);
    if (fd_m < 0 || fd_e < 0) return fail("cannot open the output files");
    exlog_file_header(header);
    if (EXLOG_WRITE(fd_m, header, EXLOG_HEADER_SIZE) != EXLOG_HEADER_SIZE)
        return fail("cannot write the header");

    w = exlog_new(4096, 5, 10000);
    if (!w) return fail("exlog_new failed");
    exlog_set_fsync(w, 1);     /* the fsync cadence runs too (under TSan: no race) */
    if (exlog_start(w, fd_m, EXLOG_HEADER_SIZE, fd_e, 0) != 0) return fail("exlog_start failed");

    if (strcmp(mode, "keys") == 0) {
        if (run_keys(w, n)) return 1;
        n = n * KEYS_THREADS * KEYS_N;
    } else if (strcmp(mode, "garbage") == 0) {
        if (run_garbage(w)) return 1;
    } else {
        if (watch_setup(w->watch)) return fail("the watchdogs' set-up failed");
        if (put_key(w, 0, "loss") || put_key(w, 1, "acc") || put_key(w, 2, "lr"))
            return fail("put_key: the writer made no room");
        for (i = 0; i < n; i++) {
            if (put_row(w, i, (uint32_t)(i % 3) + 1u)) return fail("put_row: the writer made no room");
            if (i % 1000 == 0) {
                if (put_event(w, i)) return fail("put_event: the writer made no room");
                n_events++;
            }
            if (i % 500 == 0 && exlog_summary_copy(w, sums, 3, &sum_bytes, &sum_last) < 0)
                return fail("the summary broke");   /* read while the writer updates it */
            if (i % 500 == 250) watch_take(w->watch, alerts, &n_alerts, &last_step);
        }
    }

    reached = exlog_wait_done(w, w->head, 30000);
    exlog_stop(w);
    exlog_stop(w);   /* idempotent */
    exlog_get_stats(w, &st);
    if (strcmp(mode, "rows") == 0 && exlog_summary_copy(w, sums, 3, &sum_bytes, &sum_last) < 3)
        return fail("no summary of 3 keys");
    if (strcmp(mode, "rows") == 0) {
        watch_take(w->watch, alerts, &n_alerts, &last_step);
        if (n > PC_PATIENCE && (n_alerts != 1 || alerts[0].rule != 2 || alerts[0].key != 0 ||
                                alerts[0].step != PC_PATIENCE || alerts[0].best_step != 0))
            return fail("the watchdogs' alerts are not the one plateau expected");
        if (last_step != n - 1) return fail("the watchdogs did not see the last step");
        printf("watch_ok=1\n");
    }
    exlog_free(w);
    PC_CLOSE(fd_m);
    PC_CLOSE(fd_e);

    printf("flushed=%d\n", reached);
    printf("rows_written=%llu\n", (unsigned long long)st.rows_written);
    printf("rows_dropped=%llu\n", (unsigned long long)st.rows_dropped);
    printf("events_written=%llu\n", (unsigned long long)st.events_written);
    printf("frames_written=%llu\n", (unsigned long long)st.frames_written);
    printf("bytes_written=%llu\n", (unsigned long long)st.bytes_written);
    printf("write_errors=%llu\n", (unsigned long long)st.write_errors);
    if (!reached) return fail("exlog_wait_done timed out");
    if (strcmp(mode, "garbage") == 0)   /* the first row made it; the garbage was reported */
        return st.write_errors >= 1 && st.rows_written >= 1 ? 0 : fail("garbage went unreported");
    if ((long long)st.rows_written != n || st.rows_dropped || st.write_errors ||
        (long long)st.events_written != n_events)
        return fail("the writer's counters do not add up");
    if (strcmp(mode, "rows") != 0) return 0;
    /* row i logs keys 0..i%3 with value i + k/4: check the writer's summary */
    for (k = 0; k < 3; k++) {
        long long count = 0, first = -1, last = -1;
        for (i = 0; i < n; i++)
            if (i % 3 >= k) { count++; if (first < 0) first = i; last = i; }
        if ((long long)sums[k].count != count || sums[k].nans || sums[k].first_step != first ||
            sums[k].last_step != last || sums[k].min != first + k / 4.0 ||
            sums[k].max != last + k / 4.0 || sums[k].last != last + k / 4.0 ||
            sums[k].first != first + k / 4.0)
            return fail("the summary disagrees with what was logged");
    }
    if (sum_bytes != EXLOG_HEADER_SIZE + st.bytes_written)
        return fail("the summary does not cover the whole file");
    if (sum_last < EXLOG_HEADER_SIZE || sum_last + EXLOG_FRAME_OVERHEAD >= sum_bytes)
        return fail("the summary's last frame is not inside the file");
    printf("summary_ok=1\n");
    return 0;
}
