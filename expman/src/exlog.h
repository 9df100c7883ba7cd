/* exlog.h: a bounded single-producer/single-consumer byte ring and the native
 * writer thread that drains it into checksummed frames.
 *
 * Ownership: the producer side (exlog_reserve/exlog_commit and the producer
 * counters) is used only with the GIL held, so any number of Python threads
 * act as one producer. The writer thread owns `tail`, the frame buffers and
 * the file descriptors while it runs; it never touches Python. The mutex
 * guards only the wake/flush/stop handshake, never the hot path or I/O.
 *
 * The on-disk format is described in docs/format.md.
 *
 * Ring invariants (every reserve/commit/abandon path keeps them):
 *   I1  tail <= done <= head and head - tail <= cap; head and tail only grow,
 *       and each is written by one side only (head: producer, tail: writer).
 *   I2  [tail, head) is a sequence of whole records; each record's size is a
 *       multiple of 8, at least 8 (a SKIP) or EXLOG_REC_HEADER (any other
 *       kind), and never crosses the end of the ring: a record that would is
 *       preceded by a SKIP filling the ring to its end.
 *   I3  At most one reservation is open at a time, and between exlog_reserve
 *       and exlog_commit/exlog_abandon the producer never lets another
 *       producer run (under Python: the GIL is not released). A reservation
 *       is either committed (head moves past its SKIP and record together) or
 *       abandoned (w->skip back to 0, head unchanged); nothing of it leaks
 *       into a later commit.
 *   I4  w->skip is 0 whenever no reservation is open.
 *   I5  One record is at most a quarter of the ring, and the capacity is at
 *       most EXLOG_MAX_CAPACITY, so frame lengths fit in a u32.
 * The writer re-checks I2 for every record it drains (exlog_rec_valid): a
 * record that breaks it is a producer bug, reported as an EPROTO write error,
 * and everything published after it is dropped instead of being misread.
 */
#ifndef EXLOG_H
#define EXLOG_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "exlog_port.h"
#include "exwatch.h"

#define EXLOG_REC_SKIP 0u   /* filler up to the end of the ring */
#define EXLOG_REC_KEY 1u    /* n = key id; payload = UTF-8 name */
#define EXLOG_REC_ROW 2u    /* n = point count; payload = n u32 ids (8-aligned), n f64 values */
#define EXLOG_REC_EVENT 3u  /* payload = one JSON line for events.jsonl */

#define EXLOG_FILE_MAGIC "EXPMANMB"
#define EXLOG_FORMAT_VERSION 1u
#define EXLOG_HEADER_SIZE 16
#define EXLOG_FRAME_OVERHEAD 12
#define EXLOG_REC_HEADER 32u              /* sizeof(exlog_rec) */
#define EXLOG_MIN_CAPACITY 4096u
#define EXLOG_MAX_CAPACITY (1ull << 30)   /* 1 GiB: frames stay far below 4 GiB */
/* Every payload record starts with a varint h whose low bits say what follows:
 * h&1 == 1: key definition, id = h>>1;  h&3 == 0: row of n = h>>2 points with
 * their ids;  h&3 == 2: row of n = h>>2 points with the previous row's ids. */
#define EXLOG_KEY_DEF 1u
#define EXLOG_ROW 0u
#define EXLOG_ROW_SAME_KEYS 2u

typedef struct {
    uint32_t size;   /* whole record, header included, multiple of 8 */
    uint32_t kind;
    uint32_t n;
    uint32_t len;    /* payload bytes that matter (names, events) */
    int64_t step;
    int64_t t_ns;
} exlog_rec;

typedef struct {
    uint64_t rows_written, rows_dropped;
    uint64_t events_written, events_dropped;
    uint64_t bytes_written, frames_written;
    uint64_t write_errors;
    int last_errno;
} exlog_stats;

/* Per key id: what the rows on disk hold (the run summary, docs/format.md). */
typedef struct {
    uint64_t count, nans;
    int64_t first_step, last_step, last_t_us;
    double first, last;         /* the values logged first and last */
    double min, max;            /* over non-NaN values, +-inf included; valid if count > nans */
} exlog_keysum;

typedef struct exlog {
    /* ring: producer writes at head, writer reads at tail; both only grow */
    unsigned char *ring;
    uint64_t cap, mask;
    volatile uint64_t head;     /* published by the producer (release) */
    volatile uint64_t tail;     /* published by the writer (release) */
    volatile uint64_t done;     /* ring position fully written or dropped */
    uint64_t kick_at;           /* producer: wake the writer past this head */
    uint64_t skip;              /* producer: filler bytes the next commit adds */

    /* writer configuration and state */
    int fd_metrics, fd_events;
    int64_t flush_ms, heartbeat_ms;
    uint64_t metrics_good, events_good;   /* file sizes up to the last good frame */
    unsigned char *frame, *events;
    size_t frame_len, events_len;
    uint64_t frame_rows, frame_events;
    int64_t last_io_ms;
    /* key definitions encoded into the current frame, and those whose frame
     * failed to write: rewritten (as a frame of their own) before any later
     * frame, so rows written after a failure never use an undefined id */
    unsigned char *fkeys, *lost_keys;
    size_t fkeys_len, fkeys_cap, lost_len, lost_cap;

    /* handshake */
    exlog_mutex mu;
    exlog_cond wake_cv;         /* writer waits here */
    exlog_cond done_cv;         /* producers waiting for space or flush */
    int kicked, stopping, running;
    int finished;               /* the writer drained, synced and is exiting */
    exlog_thread thread;

    /* results, published by the writer */
    volatile int error_seq;     /* bumps on every I/O error */
    exlog_stats stats;          /* guarded by mu */

    /* test-only fault injection: fail every Nth write / fsync with errno */
    uint64_t fault_write_every, fault_fsync_every, n_writes, n_fsyncs;
    int fault_errno;
    volatile int paused;        /* test-only: the writer drains nothing while set */
    int unlinked;               /* writer: the metrics file was deleted under us */

    /* run summary: rows of the frame being built are staged in fsum and merged
     * into sum only once their frame is on disk (sum_mu; never the producer's) */
    exlog_keysum *sum, *fsum;
    uint32_t *ftouched;         /* ids staged in the current frame */
    size_t sum_cap, fsum_cap, ntouched;
    uint64_t sum_bytes;         /* metrics.bin size the summary covers */
    uint64_t sum_last;          /* offset of the last frame it covers (0: none) */
    int sum_broken;             /* an allocation failed: no summary (sum_mu) */
    int stage_broken;           /* writer-private: staging failed, publish at settle */
    exlog_mutex sum_mu;

    /* fsync cadence (0: only at stop) */
    int64_t fsync_ms, last_sync_ms;
    int sync_dirty;

    /* The loss record (docs/format.md): a fixed-size file, preallocated by the
     * Python side, that the writer rewrites in place and fsyncs as soon as it
     * loses rows or events or a write fails, so the loss is on disk before
     * anything else is (a full disk, a SIGKILL). -1: none. */
    int fd_loss;
    uint64_t loss_base[3];      /* rows, events, write errors of earlier sessions */
    uint64_t loss_said[3];      /* what the record on disk says (writer-private) */
    /* drops decided by the producer (on_full="drop", block_timeout): it
     * publishes its running totals here, the writer records them */
    volatile uint64_t producer_rows_dropped, producer_events_dropped;

    /* The per-point watchdogs (exwatch.h), fed every row this thread frames;
     * idle until the Python side enables them. */
    exwatch *watch;
} exlog;

/* Lifecycle. exlog_new returns NULL on allocation failure or when capacity is
 * above EXLOG_MAX_CAPACITY (it is rounded up to a power of two >= 4 KiB). */
exlog *exlog_new(uint64_t capacity, int64_t flush_ms, int64_t heartbeat_ms);
int exlog_start(exlog *w, int fd_metrics, uint64_t metrics_size, int fd_events,
                uint64_t events_size);
void exlog_stop(exlog *w);          /* drain, fsync, join; idempotent */
/* exlog_stop with a bound: ask the writer to stop and wait at most timeout_ms
 * (-1: forever) for it to finish. 1: stopped and joined; 0: the writer is still
 * busy (a stalled disk); it stops on its own later, and w must then be leaked,
 * never freed, with its files left open. */
int exlog_stop_timed(exlog *w, int64_t timeout_ms);
void exlog_free(exlog *w);
void exlog_kick(exlog *w);          /* wake the writer now */
/* Wait until everything before `target` is written or dropped, or timeout_ms
 * passes (-1: forever). Returns 1 when reached, 0 on timeout. */
int exlog_wait_done(exlog *w, uint64_t target, int64_t timeout_ms);
/* Wait until `size` bytes are free or timeout_ms passes. Returns 1 if free. */
int exlog_wait_space(exlog *w, uint64_t size, int64_t timeout_ms);
void exlog_get_stats(exlog *w, exlog_stats *out);
/* Test hooks: stall the writer (paused=1: it still drains on stop; paused=2:
 * it ignores stop too, like a frozen filesystem); fail every Nth write / fsync
 * with err (ENOSPC / EIO when 0). */
void exlog_test_pause(exlog *w, int paused);
void exlog_test_fault(exlog *w, uint64_t write_every, uint64_t fsync_every, int err);

/* The loss record: its size, and before exlog_start, the open file and what
 * earlier sessions of the run lost (rows, events, write errors). */
#define EXLOG_LOSS_RECORD_SIZE 512
void exlog_set_loss(exlog *w, int fd, uint64_t rows, uint64_t events, uint64_t errors);
/* Format the record (exactly EXLOG_LOSS_RECORD_SIZE bytes: JSON padded with
 * spaces, ending in a newline) into out. */
void exlog_loss_record(unsigned char *out, uint64_t rows, uint64_t events, uint64_t errors,
                       int last_errno, int64_t wall_ns);
/* Producer side: publish its running totals of dropped rows and events. */
void exlog_note_producer_drops(exlog *w, uint64_t rows, uint64_t events);

/* Before exlog_start: fsync both files every ms milliseconds while data arrives. */
void exlog_set_fsync(exlog *w, int64_t ms);
/* Copy up to cap entries of the summary (index = key id) and the metrics size
 * they cover. Returns the number of ids known, or -1 if the summary is broken. */
int64_t exlog_summary_copy(exlog *w, exlog_keysum *out, uint64_t cap, uint64_t *bytes,
                           uint64_t *last_frame);

uint32_t exlog_crc32(uint32_t crc, const unsigned char *p, size_t n);
/* crc32(A + B) from crc32(A), crc32(B) and len(B), in O(log len(B)): lets a
 * reader check the CRC of any byte range from prefix CRCs (linear scans). */
uint32_t exlog_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
/* 1 if the record at r (with `avail` bytes published behind it) keeps the
 * ring invariants for a ring of capacity cap; 0 if it is garbage. */
int exlog_rec_valid(const exlog_rec *r, uint64_t avail, uint64_t room_to_end, uint64_t cap);
/* Encode a file header into out[EXLOG_HEADER_SIZE]. */
void exlog_file_header(unsigned char *out);

/* ---- producer side: call with the GIL held ------------------------------ */
static inline uint64_t exlog_align8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

/* Contiguous room for a record of `size` bytes (a multiple of 8), or NULL
 * when the ring is full. May write a SKIP record to wrap around; the SKIP is
 * published by exlog_commit or forgotten by exlog_abandon (invariant I3). */
static inline unsigned char *exlog_reserve(exlog *w, uint64_t size) {
    uint64_t head = w->head;
    uint64_t off = head & w->mask;
    uint64_t room_to_end = w->cap - off;
    uint64_t used = head - exlog_load_u64(&w->tail);
    uint64_t need = size <= room_to_end ? size : size + room_to_end;
    if (used + need > w->cap) return NULL;
    if (size > room_to_end) {
        exlog_rec *skip = (exlog_rec *)(w->ring + off);
        skip->size = (uint32_t)room_to_end;   /* only size and kind are read */
        skip->kind = EXLOG_REC_SKIP;
        w->skip = room_to_end;                /* published by exlog_commit */
        off = 0;
    }
    return w->ring + off;
}

/* Publish a record written into the room exlog_reserve returned. Wakes the
 * writer only when the ring passes half full, never per call. */
static inline void exlog_commit(exlog *w, uint64_t size) {
    uint64_t head = w->head + w->skip + size;
    w->skip = 0;
    exlog_store_u64(&w->head, head);
    if (head >= w->kick_at) {
        w->kick_at = head + w->cap / 2;
        exlog_kick(w);
    }
}

/* Give back an open reservation without publishing anything (invariant I3). */
static inline void exlog_abandon(exlog *w) { w->skip = 0; }

#endif /* EXLOG_H */
