/* exlog.c: the writer thread, the frame encoder and CRC-32.
 *
 * Frame = u32 payload length | u32 CRC-32 of those 4 bytes | payload |
 *         u32 CRC-32 of the payload, all little-endian (docs/format.md).
 * A failed write is cut back to the last good frame (ftruncate) and its
 * records are counted as dropped; the next frame tries again.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include "exlog.h"

#ifdef EPROTO
#  define EXLOG_EBADREC EPROTO   /* a record in the ring breaks invariant I2 */
#else
#  define EXLOG_EBADREC EIO
#endif

/* ---- little-endian helpers ------------------------------------------------ */
static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}
static void put_f64(unsigned char *p, double d) {
    uint64_t v;
    int i;
    memcpy(&v, &d, 8);
    for (i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static size_t put_varint(unsigned char *p, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) { p[n++] = (unsigned char)(v | 0x80); v >>= 7; }
    p[n++] = (unsigned char)v;
    return n;
}
static uint64_t zigzag(int64_t v) {
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}
/* a - b modulo 2**64, as the format defines deltas: never signed overflow */
static int64_t delta64(int64_t a, int64_t b) {
    uint64_t d = (uint64_t)a - (uint64_t)b;
    return d <= (uint64_t)INT64_MAX ? (int64_t)d : -(int64_t)(~d) - 1;
}

/* ---- CRC-32 (IEEE, the one zlib computes), slicing by 8 ------------------- */
static uint32_t crc_table[8][256];
static volatile int crc_ready = 0;

static void crc_init(void) {
    uint32_t i, j, c;
    for (i = 0; i < 256; i++) {
        c = i;
        for (j = 0; j < 8; j++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (i = 0; i < 256; i++) {
        c = crc_table[0][i];
        for (j = 1; j < 8; j++) { c = crc_table[0][c & 0xff] ^ (c >> 8); crc_table[j][i] = c; }
    }
    exlog_store_int(&crc_ready, 1);
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint32_t exlog_crc32(uint32_t crc, const unsigned char *p, size_t n) {
    if (!exlog_load_int(&crc_ready)) crc_init();   /* idempotent: same table */
    crc = ~crc;
    while (n >= 8) {
        uint32_t a = crc ^ le32(p), b = le32(p + 4);
        crc = crc_table[7][a & 0xff] ^ crc_table[6][(a >> 8) & 0xff] ^
              crc_table[5][(a >> 16) & 0xff] ^ crc_table[4][a >> 24] ^
              crc_table[3][b & 0xff] ^ crc_table[2][(b >> 8) & 0xff] ^
              crc_table[1][(b >> 16) & 0xff] ^ crc_table[0][b >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- CRC-32 of concatenations ---------------------------------------------
 * CRC-32 is linear over GF(2): crc(A + B) = crc(A) * x^(8 len(B)) mod P xor
 * crc(B), in the reflected bit order the table uses. gf2_mul multiplies two
 * such polynomials modulo P; crc_pow[k][d] = x^(8 * d * 16^k) mod P, so a
 * shift by any length takes one product per nonzero hex digit of it. */
static uint32_t crc_pow[16][16];
static volatile int crc_pow_ready = 0;

static uint32_t gf2_mul(uint32_t a, uint32_t b) {
    uint32_t prod = 0;
    int i;
    for (i = 31; i >= 0; i--) {       /* branch-free: the bits are random */
        prod ^= b & (0u - ((a >> i) & 1u));
        b = (b >> 1) ^ (0xEDB88320u & (0u - (b & 1u)));
    }
    return prod;
}

static void crc_pow_init(void) {
    uint32_t unit = 0x00800000u;      /* x^8: one byte, reflected */
    int k, d;
    for (k = 0; k < 16; k++) {
        crc_pow[k][0] = 0x80000000u;  /* x^0 */
        for (d = 1; d < 16; d++) crc_pow[k][d] = gf2_mul(crc_pow[k][d - 1], unit);
        unit = gf2_mul(crc_pow[k][15], unit);   /* x^(8 * 16^(k+1)) */
    }
    exlog_store_int(&crc_pow_ready, 1);
}

uint32_t exlog_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
    int k;
    if (!exlog_load_int(&crc_pow_ready)) crc_pow_init();   /* idempotent: same table */
    for (k = 0; len_b; len_b >>= 4, k++)
        if (len_b & 15u) crc_a = gf2_mul(crc_pow[k][len_b & 15u], crc_a);
    return crc_a ^ crc_b;
}

int exlog_rec_valid(const exlog_rec *r, uint64_t avail, uint64_t room_to_end, uint64_t cap) {
    uint64_t size, body;
    if (avail < 8 || room_to_end < 8) return 0;
    size = r->size;
    if (size < 8 || (size & 7u) || size > avail || size > room_to_end) return 0;
    if (r->kind == EXLOG_REC_SKIP) return size == room_to_end;
    if (size < EXLOG_REC_HEADER || size > cap / 4) return 0;
    body = size - EXLOG_REC_HEADER;
    switch (r->kind) {
    case EXLOG_REC_ROW:
        return (uint64_t)r->n <= body / 8 &&
               exlog_align8(4u * (uint64_t)r->n) + 8u * (uint64_t)r->n == body;
    case EXLOG_REC_KEY:
    case EXLOG_REC_EVENT:
        return (uint64_t)r->len <= body && exlog_align8(r->len) == body;
    default:
        return 0;
    }
}

void exlog_file_header(unsigned char *out) {
    memcpy(out, EXLOG_FILE_MAGIC, 8);
    put_u32(out + 8, EXLOG_FORMAT_VERSION);
    put_u32(out + 12, 0);
}

/* ---- lifecycle ------------------------------------------------------------ */
exlog *exlog_new(uint64_t capacity, int64_t flush_ms, int64_t heartbeat_ms) {
    exlog *w;
    uint64_t cap = EXLOG_MIN_CAPACITY;
    if (capacity > EXLOG_MAX_CAPACITY) return NULL;   /* and the loop below ends */
    while (cap < capacity) cap <<= 1;
    w = (exlog *)calloc(1, sizeof(exlog));
    if (!w) return NULL;
    w->ring = (unsigned char *)malloc(cap);
    /* Encoded records are never larger than their ring form, and the writer
     * emits a frame whenever half a ring is pending: cap bytes always suffice. */
    w->frame = (unsigned char *)malloc(cap + EXLOG_FRAME_OVERHEAD);
    w->events = (unsigned char *)malloc(cap);
    w->watch = exwatch_new();
    if (!w->ring || !w->frame || !w->events || !w->watch) { exlog_free(w); return NULL; }
    w->cap = cap;
    w->mask = cap - 1;
    w->kick_at = cap / 2;
    w->flush_ms = flush_ms > 0 ? flush_ms : 1;
    w->heartbeat_ms = heartbeat_ms > 0 ? heartbeat_ms : 10000;
    w->fd_metrics = w->fd_events = w->fd_loss = -1;
    crc_init();
    if (exlog_mutex_init(&w->mu) != 0) { exlog_free(w); return NULL; }
    if (exlog_cond_init(&w->wake_cv) != 0) { exlog_mutex_destroy(&w->mu); exlog_free(w); return NULL; }
    if (exlog_cond_init(&w->done_cv) != 0) {
        exlog_cond_destroy(&w->wake_cv); exlog_mutex_destroy(&w->mu); exlog_free(w); return NULL;
    }
    if (exlog_mutex_init(&w->sum_mu) != 0) {
        exlog_cond_destroy(&w->done_cv); exlog_cond_destroy(&w->wake_cv);
        exlog_mutex_destroy(&w->mu); exlog_free(w); return NULL;
    }
    w->running = -1;   /* sync objects exist, thread not started */
    return w;
}

void exlog_free(exlog *w) {
    if (!w) return;
    if (w->running == 1) exlog_stop(w);
    if (w->running != 0) {
        exlog_mutex_destroy(&w->sum_mu);
        exlog_cond_destroy(&w->done_cv);
        exlog_cond_destroy(&w->wake_cv);
        exlog_mutex_destroy(&w->mu);
    }
    free(w->ring);
    free(w->frame);
    free(w->events);
    free(w->fkeys);
    free(w->lost_keys);
    free(w->sum);
    free(w->fsum);
    free(w->ftouched);
    exwatch_free(w->watch);
    free(w);
}

void exlog_kick(exlog *w) {
    exlog_mutex_lock(&w->mu);
    w->kicked = 1;
    exlog_cond_broadcast(&w->wake_cv);
    exlog_mutex_unlock(&w->mu);
}

void exlog_get_stats(exlog *w, exlog_stats *out) {
    exlog_mutex_lock(&w->mu);
    *out = w->stats;
    exlog_mutex_unlock(&w->mu);
}

void exlog_test_pause(exlog *w, int paused) { exlog_store_int(&w->paused, paused); }

void exlog_test_fault(exlog *w, uint64_t write_every, uint64_t fsync_every, int err) {
    w->fault_errno = err;
    w->fault_fsync_every = fsync_every;
    w->fault_write_every = write_every;
}

/* ---- I/O ------------------------------------------------------------------ */
static int io_fault(uint64_t every, uint64_t *counter) {
    if (!every) return 0;
    *counter += 1;
    return (*counter % every) == 0;
}

/* Write all of buf at the end of the good part of the file. On failure cut the
 * file back to *good, so a partial frame never stays on disk. */
static int write_all(exlog *w, int fd, uint64_t *good, const unsigned char *buf, size_t n) {
    size_t off = 0;
    int err = 0;
    if (w->unlinked) return ENOENT;     /* writing on would only feed a deleted file */
    if (io_fault(w->fault_write_every, &w->n_writes)) {
        /* emulate a short write followed by a failure */
        size_t part = n / 2;
        if (part && EXLOG_WRITE(fd, buf, part) < 0) err = errno;
        err = w->fault_errno ? w->fault_errno : ENOSPC;
    }
    while (!err && off < n) {
        size_t chunk = n - off > 0x40000000u ? 0x40000000u : n - off;
        long r = (long)EXLOG_WRITE(fd, buf + off, chunk);
        if (r < 0) {
            if (errno == EINTR) continue;
            err = errno ? errno : EIO;
        } else if (r == 0) {
            err = ENOSPC;
        } else {
            off += (size_t)r;
        }
    }
    if (err) {
        /* best effort: both calls may fail too (a vanished folder) */
        if (EXLOG_TRUNCATE(fd, *good) != 0) { /* keep the first error */ }
        if (EXLOG_SEEK(fd, *good) < 0) { /* next write reports */ }
        return err;
    }
    *good += n;
    return 0;
}

static int sync_fd(exlog *w, int fd) {
    if (io_fault(w->fault_fsync_every, &w->n_fsyncs))
        return w->fault_errno ? w->fault_errno : EIO;
    if (EXLOG_FSYNC(fd) != 0) return errno ? errno : EIO;
    return 0;
}


/* ---- the loss record ----------------------------------------------------- */
void exlog_loss_record(unsigned char *out, uint64_t rows, uint64_t events, uint64_t errors,
                       int last_errno, int64_t wall_ns) {
    char text[EXLOG_LOSS_RECORD_SIZE];
    int n = snprintf(text, sizeof text,
                     "{\"format\": 1, \"rows_dropped\": %llu, \"events_dropped\": %llu, "
                     "\"write_errors\": %llu, \"last_errno\": %d, \"time\": %lld.%06lld}",
                     (unsigned long long)rows, (unsigned long long)events,
                     (unsigned long long)errors, last_errno,
                     (long long)(wall_ns / 1000000000), (long long)(wall_ns / 1000 % 1000000));
    if (n < 0 || n >= EXLOG_LOSS_RECORD_SIZE) n = 0;   /* never: the fields are bounded */
    memset(out, ' ', EXLOG_LOSS_RECORD_SIZE);
    memcpy(out, text, (size_t)n);
    out[EXLOG_LOSS_RECORD_SIZE - 1] = '\n';
}

void exlog_set_loss(exlog *w, int fd, uint64_t rows, uint64_t events, uint64_t errors) {
    w->fd_loss = fd;
    w->loss_base[0] = w->loss_said[0] = rows;
    w->loss_base[1] = w->loss_said[1] = events;
    w->loss_base[2] = w->loss_said[2] = errors;
}

void exlog_note_producer_drops(exlog *w, uint64_t rows, uint64_t events) {
    exlog_store_u64(&w->producer_rows_dropped, rows);
    exlog_store_u64(&w->producer_events_dropped, events);
}

/* Rewrite the loss record in place if the totals moved since it was written:
 * same offset, same size, so it needs no new blocks on a full disk; fsynced
 * before anything else, so a SIGKILL right after still finds it. A failed
 * rewrite is tried again on the next call. */
static void note_loss(exlog *w) {
    unsigned char rec[EXLOG_LOSS_RECORD_SIZE];
    uint64_t now[3];
    int last_errno;
    if (w->fd_loss < 0) return;
    exlog_mutex_lock(&w->mu);
    now[0] = w->loss_base[0] + w->stats.rows_dropped;
    now[1] = w->loss_base[1] + w->stats.events_dropped;
    now[2] = w->loss_base[2] + w->stats.write_errors;
    last_errno = w->stats.last_errno;
    exlog_mutex_unlock(&w->mu);
    now[0] += exlog_load_u64(&w->producer_rows_dropped);
    now[1] += exlog_load_u64(&w->producer_events_dropped);
    if (!memcmp(now, w->loss_said, sizeof now)) return;
    exlog_loss_record(rec, now[0], now[1], now[2], last_errno, exlog_wall_ns());
    if (EXLOG_SEEK(w->fd_loss, 0) < 0) return;
    if (EXLOG_WRITE(w->fd_loss, rec, sizeof rec) != (long)sizeof rec) return;
    if (EXLOG_FSYNC(w->fd_loss) != 0) return;
    memcpy(w->loss_said, now, sizeof now);
}

/* Writer thread only. The loss record is rewritten before the error is
 * published: whoever learns of the error (flush, close) finds it on disk. */
static void record_error(exlog *w, int err) {
    exwatch_release(w->watch);          /* never held across I/O */
    exlog_mutex_lock(&w->mu);
    w->stats.write_errors += 1;
    w->stats.last_errno = err;
    exlog_mutex_unlock(&w->mu);
    note_loss(w);
    exlog_store_int(&w->error_seq, exlog_load_int(&w->error_seq) + 1);
}

/* ---- run summary ---------------------------------------------------------- */
/* The writer sees every row: it keeps per key id what a full decode would find
 * (by expman.readmodel's rule: min/max over every non-NaN value, infinities
 * included; ties keep the first value seen),
 * so listing never has to decode (docs/format.md, summary.json). Rows are staged
 * per frame and merged only when their frame reached the file, so a failed write
 * (disk full) leaves the summary equal to what the file holds. */

void exlog_set_fsync(exlog *w, int64_t ms) { w->fsync_ms = ms > 0 ? ms : 0; }

/* Grow *arr (entries of size sz, zero-filled) to hold index id; 0 or ENOMEM. */
static int sum_grow(void **arr, size_t *cap, size_t sz, uint64_t id) {
    size_t c = *cap ? *cap : 16;
    unsigned char *a;
    if (id < *cap) return 0;
    if (id >= ((uint64_t)1 << 26)) return ENOMEM;   /* 64 M keys: not a real run */
    while (c <= id) c *= 2;
    a = (unsigned char *)realloc(*arr, c * sz);
    if (!a) return ENOMEM;
    memset(a + *cap * sz, 0, (c - *cap) * sz);
    *arr = a;
    *cap = c;
    return 0;
}

static void sum_stage(exlog *w, uint32_t id, int64_t step, int64_t t_us, double v) {
    exlog_keysum *e;
    if (w->stage_broken) return;
    if (id >= w->fsum_cap) {
        void *t = w->ftouched;
        if (sum_grow((void **)&w->fsum, &w->fsum_cap, sizeof(exlog_keysum), id)) {
            w->stage_broken = 1;
            return;
        }
        t = realloc(t, w->fsum_cap * sizeof(uint32_t));
        if (!t) { w->stage_broken = 1; return; }
        w->ftouched = (uint32_t *)t;
    }
    e = &w->fsum[id];
    if (!e->count) {
        w->ftouched[w->ntouched++] = id;
        e->first_step = step;
        e->first = v;
    }
    e->count += 1;
    if (v != v) {
        e->nans += 1;
    } else if (e->count - e->nans == 1) {
        e->min = e->max = v;
    } else {
        if (v < e->min) e->min = v;
        if (v > e->max) e->max = v;
    }
    e->last_step = step;
    e->last_t_us = t_us;
    e->last = v;
}

/* The staged frame is on disk (ok) or dropped: merge it, or forget it. */
static void sum_settle(exlog *w, int ok) {
    size_t i;
    exlog_mutex_lock(&w->sum_mu);
    if (w->stage_broken) w->sum_broken = 1;     /* published under the lock */
    for (i = 0; i < w->ntouched; i++) {
        uint32_t id = w->ftouched[i];
        exlog_keysum *s = &w->fsum[id], *m;
        if (ok && !w->sum_broken &&
            sum_grow((void **)&w->sum, &w->sum_cap, sizeof(exlog_keysum), id) == 0) {
            m = &w->sum[id];
            if (s->count > s->nans) {
                if (m->count == m->nans) { m->min = s->min; m->max = s->max; }
                else {
                    if (s->min < m->min) m->min = s->min;
                    if (s->max > m->max) m->max = s->max;
                }
            }
            if (!m->count) { m->first_step = s->first_step; m->first = s->first; }
            m->count += s->count;
            m->nans += s->nans;
            m->last_step = s->last_step;
            m->last_t_us = s->last_t_us;
            m->last = s->last;
        } else if (ok) {
            w->sum_broken = 1;
        }
        memset(s, 0, sizeof *s);
    }
    w->ntouched = 0;
    if (ok) {
        w->sum_bytes = w->metrics_good;
        w->sum_last = w->metrics_good - ((uint64_t)w->frame_len + EXLOG_FRAME_OVERHEAD);
    }
    exlog_mutex_unlock(&w->sum_mu);
}

int64_t exlog_summary_copy(exlog *w, exlog_keysum *out, uint64_t cap, uint64_t *bytes,
                           uint64_t *last_frame) {
    int64_t n;
    exlog_mutex_lock(&w->sum_mu);
    if (w->sum_broken) {
        n = -1;
    } else {
        n = (int64_t)w->sum_cap;
        if (out && cap && w->sum_cap) memcpy(out, w->sum, (size_t)(cap < w->sum_cap ? cap : w->sum_cap) * sizeof *out);
        *bytes = w->sum_bytes;
        *last_frame = w->sum_last;
    }
    exlog_mutex_unlock(&w->sum_mu);
    return n;
}

/* ---- encoding ------------------------------------------------------------- */
/* What the previous row of the current frame was; all zero at a frame start. */
typedef struct {
    int64_t step, t_us;
    const uint32_t *ids;        /* in the ring, stable until the frame is emitted */
    uint32_t n;
} delta_state;

static void encode_row(exlog *w, const exlog_rec *r, delta_state *ds) {
    unsigned char *p = w->frame + EXLOG_FRAME_OVERHEAD - 4 + w->frame_len;
    const uint32_t *ids = (const uint32_t *)(r + 1);
    const double *vals = (const double *)((const unsigned char *)ids + exlog_align8(4u * r->n));
    int64_t t_us = r->t_ns / 1000;
    int same = ds->ids && ds->n == r->n && memcmp(ds->ids, ids, 4u * r->n) == 0;
    size_t k = 0;
    uint32_t i;
    k += put_varint(p + k, ((uint64_t)r->n << 2) | (same ? EXLOG_ROW_SAME_KEYS : EXLOG_ROW));
    k += put_varint(p + k, zigzag(delta64(r->step, ds->step)));
    k += put_varint(p + k, zigzag(delta64(t_us, ds->t_us)));
    for (i = 0; i < r->n; i++) {
        if (!same) k += put_varint(p + k, ids[i]);
        put_f64(p + k, vals[i]);
        k += 8;
        sum_stage(w, ids[i], r->step, t_us, vals[i]);
    }
    exwatch_row(w->watch, r->step, r->t_ns, ids, vals, r->n);
    ds->step = r->step;
    ds->t_us = t_us;
    ds->ids = ids;
    ds->n = r->n;
    w->frame_len += k;
    w->frame_rows += 1;
}

/* Append n bytes to a growable buffer; 0 on success, ENOMEM if it cannot grow. */
static int buf_append(unsigned char **buf, size_t *len, size_t *cap, const unsigned char *p,
                      size_t n) {
    if (*len + n > *cap) {
        size_t c = *cap ? *cap : 256;
        unsigned char *b;
        while (c < *len + n) c *= 2;
        b = (unsigned char *)realloc(*buf, c);
        if (!b) return ENOMEM;
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    return 0;
}

static void encode_key(exlog *w, const exlog_rec *r) {
    unsigned char *p = w->frame + EXLOG_FRAME_OVERHEAD - 4 + w->frame_len;
    size_t k = 0;
    k += put_varint(p + k, ((uint64_t)r->n << 1) | EXLOG_KEY_DEF);
    k += put_varint(p + k, r->len);
    memcpy(p + k, (const unsigned char *)(r + 1), r->len);
    w->frame_len += k + r->len;
    /* remembered until its frame is on disk (see emit) */
    if (buf_append(&w->fkeys, &w->fkeys_len, &w->fkeys_cap, p, k + r->len))
        record_error(w, ENOMEM);
}

/* Write the key definitions a failed frame took with it, as a frame of their own. */
static int write_lost_keys(exlog *w) {
    size_t len = w->lost_len;
    unsigned char *f = (unsigned char *)malloc(len + EXLOG_FRAME_OVERHEAD);
    int err;
    if (!f) return ENOMEM;
    put_u32(f, (uint32_t)len);
    put_u32(f + 4, exlog_crc32(0, f, 4));
    memcpy(f + 8, w->lost_keys, len);
    put_u32(f + 8 + len, exlog_crc32(0, f + 8, len));
    err = write_all(w, w->fd_metrics, &w->metrics_good, f, len + EXLOG_FRAME_OVERHEAD);
    free(f);
    if (!err) {
        exlog_mutex_lock(&w->mu);
        w->stats.bytes_written += (uint64_t)len + EXLOG_FRAME_OVERHEAD;
        w->stats.frames_written += 1;
        exlog_mutex_unlock(&w->mu);
        w->lost_len = 0;
    }
    return err;
}

/* Frame what is encoded and append it; then append pending events. */
static void emit(exlog *w) {
    int err;
    if (w->frame_len) {
        unsigned char *f = w->frame;
        uint32_t len = (uint32_t)w->frame_len;
        put_u32(f, len);
        put_u32(f + 4, exlog_crc32(0, f, 4));
        put_u32(f + 8 + len, exlog_crc32(0, f + 8, len));
        /* keys lost with an earlier frame go first; if they cannot, this frame
         * (whose rows may use them) is dropped too */
        err = w->lost_len ? write_lost_keys(w) : 0;
        if (!err)
            err = write_all(w, w->fd_metrics, &w->metrics_good, f, (size_t)len + EXLOG_FRAME_OVERHEAD);
        if (err && w->fkeys_len &&
            buf_append(&w->lost_keys, &w->lost_len, &w->lost_cap, w->fkeys, w->fkeys_len))
            record_error(w, ENOMEM);
        sum_settle(w, !err);
        if (!err) w->sync_dirty = 1;
        w->fkeys_len = 0;
        exlog_mutex_lock(&w->mu);
        if (err) {
            w->stats.rows_dropped += w->frame_rows;
        } else {
            w->stats.rows_written += w->frame_rows;
            w->stats.bytes_written += (uint64_t)len + EXLOG_FRAME_OVERHEAD;
            w->stats.frames_written += 1;
        }
        exlog_mutex_unlock(&w->mu);
        if (err) record_error(w, err);
        w->frame_len = 0;
        w->frame_rows = 0;
    }
    if (w->events_len) {
        err = write_all(w, w->fd_events, &w->events_good, w->events, w->events_len);
        exlog_mutex_lock(&w->mu);
        if (err) w->stats.events_dropped += w->frame_events;
        else w->stats.events_written += w->frame_events;
        exlog_mutex_unlock(&w->mu);
        if (!err) w->sync_dirty = 1;
        if (err) record_error(w, err);
        w->events_len = 0;
        w->frame_events = 0;
    }
    w->last_io_ms = exlog_mono_ms();
}

/* Drain everything published so far. Returns the new tail. */
static uint64_t drain(exlog *w) {
    uint64_t head = exlog_load_u64(&w->head);
    uint64_t tail = w->tail;
    uint64_t half = w->cap / 2;
    delta_state ds = {0, 0, NULL, 0};
    while (tail < head) {
        const exlog_rec *r = (const exlog_rec *)(w->ring + (tail & w->mask));
        if (!exlog_rec_valid(r, head - tail, w->cap - (tail & w->mask), w->cap)) {
            /* a producer bug broke invariant I2: never read on through garbage
             * (a size of 0 would spin, a bad length would copy past a buffer);
             * drop what is published and say so */
            record_error(w, EXLOG_EBADREC);
            tail = head;
            break;
        }
        switch (r->kind) {
        case EXLOG_REC_ROW: encode_row(w, r, &ds); break;
        case EXLOG_REC_KEY: encode_key(w, r); break;
        case EXLOG_REC_EVENT:
            memcpy(w->events + w->events_len, (const unsigned char *)(r + 1), r->len);
            w->events_len += r->len;
            w->frame_events += 1;
            break;
        default: break;   /* SKIP */
        }
        tail += r->size;
        if (w->frame_len >= half || w->events_len >= half) {
            /* ring space is free as soon as it is encoded */
            exlog_store_u64(&w->tail, tail);
            exwatch_release(w->watch);
            emit(w);
            ds.step = 0;
            ds.t_us = 0;
            ds.ids = NULL;
            ds.n = 0;
            exlog_mutex_lock(&w->mu);
            exlog_store_u64(&w->done, tail);
            exlog_cond_broadcast(&w->done_cv);
            exlog_mutex_unlock(&w->mu);
        }
    }
    exlog_store_u64(&w->tail, tail);
    exwatch_release(w->watch);
    emit(w);
    exlog_mutex_lock(&w->mu);
    exlog_store_u64(&w->done, tail);
    exlog_cond_broadcast(&w->done_cv);
    exlog_mutex_unlock(&w->mu);
    return tail;
}

/* A run folder deleted under a running writer leaves writes succeeding into an
 * unlinked file: notice it (POSIX; Windows refuses to delete open files) and
 * report ENOENT, so the loop learns within a flush interval, not at close.
 * Returns 1 when this call noticed it. */
static int check_unlinked(exlog *w) {
#ifndef _WIN32
    struct stat st;
    if (!w->unlinked && fstat(w->fd_metrics, &st) == 0 && st.st_nlink == 0) {
        w->unlinked = 1;
        record_error(w, ENOENT);
        return 1;
    }
#else
    (void)w;
#endif
    return 0;
}

/* Drain, then look for a deleted file. Rows and events written by this drain
 * may have gone into the deleted file (the check before it passed, so at
 * least the earlier ones reached a linked file): they are in no file, so they
 * count as dropped, not written. Later drains fail with ENOENT outright. */
static void drain_checked(exlog *w) {
    uint64_t rows0, events0, rows, events;
    exlog_mutex_lock(&w->mu);
    rows0 = w->stats.rows_written;
    events0 = w->stats.events_written;
    exlog_mutex_unlock(&w->mu);
    drain(w);
    if (check_unlinked(w)) {
        exlog_mutex_lock(&w->mu);
        rows = w->stats.rows_written - rows0;
        events = w->stats.events_written - events0;
        w->stats.rows_written -= rows;
        w->stats.rows_dropped += rows;
        w->stats.events_written -= events;
        w->stats.events_dropped += events;
        exlog_mutex_unlock(&w->mu);
    }
}

/* fsync_interval: make what was written survive a power loss, at most every
 * fsync_ms. Only this thread waits for the disk; producers keep appending to
 * the ring (they wait only if it fills, as for any slow write). */
static int sync_due(exlog *w) {
    return w->fsync_ms && w->sync_dirty && exlog_mono_ms() - w->last_sync_ms >= w->fsync_ms;
}

static void sync_on_cadence(exlog *w) {
    int err;
    if (!sync_due(w)) return;
    w->sync_dirty = 0;
    err = sync_fd(w, w->fd_metrics);
    if (!err) err = sync_fd(w, w->fd_events);
    if (err) record_error(w, err);
    w->last_sync_ms = exlog_mono_ms();
}

static void writer_main(void *arg) {
    exlog *w = (exlog *)arg;
    int stopping = 0;
    w->last_io_ms = exlog_mono_ms();
    w->last_sync_ms = w->last_io_ms;
    while (!stopping) {
        exlog_mutex_lock(&w->mu);
        if (!w->kicked && !w->stopping) exlog_cond_wait_ms(&w->wake_cv, &w->mu, w->flush_ms);
        w->kicked = 0;
        stopping = w->stopping;
        exlog_mutex_unlock(&w->mu);

        if (exlog_load_int(&w->paused) && !stopping) {
            continue;                       /* test hook: a stalled writer */
        } else if (exlog_load_u64(&w->head) != w->tail) {
            drain_checked(w);
            sync_on_cadence(w);
        } else if (sync_due(w)) {
            sync_on_cadence(w);
        } else if (exlog_mono_ms() - w->last_io_ms >= w->heartbeat_ms) {
            /* idle: move the metrics file's mtime so readers see we are alive */
            if (EXLOG_TOUCH(w->fd_metrics) != 0) { /* a heartbeat is best effort */ }
            w->last_io_ms = exlog_mono_ms();
        }
        note_loss(w);
    }
    /* test hook: a frozen filesystem does not thaw because we want to stop */
    while (exlog_load_int(&w->paused) == 2) {
        exlog_mutex_lock(&w->mu);
        exlog_cond_wait_ms(&w->wake_cv, &w->mu, 10);
        exlog_mutex_unlock(&w->mu);
    }
    /* stop was requested and everything published before it is drained */
    drain_checked(w);
    {
        int err = sync_fd(w, w->fd_metrics);
        if (!err) err = sync_fd(w, w->fd_events);
        if (err) record_error(w, err);
    }
    note_loss(w);
    exlog_mutex_lock(&w->mu);
    w->finished = 1;
    exlog_cond_broadcast(&w->done_cv);
    exlog_mutex_unlock(&w->mu);
}

int exlog_start(exlog *w, int fd_metrics, uint64_t metrics_size, int fd_events,
                uint64_t events_size) {
    w->fd_metrics = fd_metrics;
    w->fd_events = fd_events;
    w->metrics_good = metrics_size;
    w->events_good = events_size;
    w->sum_bytes = metrics_size;
    exlog_mutex_lock(&w->mu);
    if (exlog_thread_start(&w->thread, writer_main, w) != 0) {
        exlog_mutex_unlock(&w->mu);
        return -1;
    }
    w->running = 1;
    exlog_mutex_unlock(&w->mu);
    return 0;
}

void exlog_stop(exlog *w) {
    exlog_stop_timed(w, -1);
}

int exlog_stop_timed(exlog *w, int64_t timeout_ms) {
    int64_t deadline = exlog_mono_ms() + timeout_ms;
    int finished;
    if (w->running != 1) return 1;
    exlog_mutex_lock(&w->mu);
    w->stopping = 1;
    exlog_cond_broadcast(&w->wake_cv);
    while (!(finished = w->finished)) {
        int64_t left = timeout_ms < 0 ? 100 : deadline - exlog_mono_ms();
        if (left <= 0) break;
        exlog_cond_wait_ms(&w->done_cv, &w->mu, left < 100 ? left : 100);
    }
    exlog_mutex_unlock(&w->mu);
    if (!finished) return 0;
    exlog_thread_join(w->thread);
    exlog_mutex_lock(&w->mu);
    w->running = 2;
    exlog_mutex_unlock(&w->mu);
    return 1;
}

static int is_done(exlog *w, uint64_t target) {
    return exlog_load_u64(&w->done) >= target;
}

static int has_space(exlog *w, uint64_t size) {
    /* room for the record plus a worst-case wrap */
    return exlog_load_u64(&w->head) - exlog_load_u64(&w->tail) + 2 * size <= w->cap;
}

/* Wake the writer, then wait (at most timeout_ms; -1: no limit) until ready(w, arg)
 * or the writer stops. Returns ready's last answer. */
static int wait_for(exlog *w, int (*ready)(exlog *, uint64_t), uint64_t arg, int64_t timeout_ms) {
    int64_t deadline = exlog_mono_ms() + timeout_ms;
    int ok;
    exlog_mutex_lock(&w->mu);
    w->kicked = 1;
    exlog_cond_broadcast(&w->wake_cv);
    while (!(ok = ready(w, arg)) && w->running == 1) {
        int64_t left = timeout_ms < 0 ? 100 : deadline - exlog_mono_ms();
        if (left <= 0) break;
        exlog_cond_wait_ms(&w->done_cv, &w->mu, left < 100 ? left : 100);
    }
    exlog_mutex_unlock(&w->mu);
    return ok;
}

int exlog_wait_done(exlog *w, uint64_t target, int64_t timeout_ms) {
    return wait_for(w, is_done, target, timeout_ms);
}

int exlog_wait_space(exlog *w, uint64_t size, int64_t timeout_ms) {
    return wait_for(w, has_space, size, timeout_ms);
}
