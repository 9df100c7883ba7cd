"""Cython declarations of the portable C writer (src/exlog.h); C holds no Python objects."""

from libc.stdint cimport uint32_t, int64_t, uint64_t

cdef extern from "src/exwatch.h" nogil:
    ctypedef struct exwatch:
        pass
    ctypedef struct exwatch_rule:
        uint32_t kind
        double k
        uint32_t window, min_points
        int direction
        int maximize
        double delta
        int64_t patience
    ctypedef struct exwatch_alert:
        uint32_t rule, key
        int64_t step
        double value, ref, dev
        int64_t best_step
        double best
    enum:
        EXWATCH_NAN, EXWATCH_SPIKE, EXWATCH_PLATEAU, EXWATCH_UP, EXWATCH_DOWN, EXWATCH_BOTH
        EXWATCH_MAX_RULES, EXWATCH_ALERTS, EXWATCH_RECENT
    int exwatch_set_rules(exwatch *x, const exwatch_rule *rules, uint32_t n)
    int exwatch_bind(exwatch *x, uint32_t key, int progress, const uint32_t *rules, uint32_t n)
    void exwatch_enable(exwatch *x)
    size_t exwatch_take_alerts(exwatch *x, exwatch_alert *out, size_t cap, uint64_t *lost)
    size_t exwatch_take_steps(exwatch *x, int64_t *steps, int64_t *t_ns, size_t cap)

cdef extern from "src/exlog.h" nogil:
    ctypedef struct exlog_rec:
        uint32_t size
        uint32_t kind
        uint32_t n
        uint32_t len
        int64_t step
        int64_t t_ns
    ctypedef struct exlog_stats:
        uint64_t rows_written, rows_dropped
        uint64_t events_written, events_dropped
        uint64_t bytes_written, frames_written
        uint64_t write_errors
        int last_errno
    ctypedef struct exlog_keysum:
        uint64_t count, nans
        int64_t first_step, last_step, last_t_us
        double first, last, min, max
    ctypedef struct exlog:
        uint64_t cap
        uint64_t head
        int error_seq
        exwatch *watch
    const char *EXLOG_FILE_MAGIC   # 8 bytes, no NUL in the file
    enum:
        EXLOG_REC_KEY, EXLOG_REC_ROW, EXLOG_REC_EVENT
        EXLOG_HEADER_SIZE, EXLOG_FORMAT_VERSION, EXLOG_KEY_DEF, EXLOG_ROW_SAME_KEYS
        EXLOG_LOSS_RECORD_SIZE, EXLOG_REC_HEADER, EXLOG_FRAME_OVERHEAD
    unsigned long long EXLOG_MAX_CAPACITY
    exlog *exlog_new(uint64_t capacity, int64_t flush_ms, int64_t heartbeat_ms)
    int exlog_start(exlog *w, int fd_metrics, uint64_t metrics_size, int fd_events,
                    uint64_t events_size)
    void exlog_stop(exlog *w)
    int exlog_stop_timed(exlog *w, int64_t timeout_ms)
    void exlog_free(exlog *w)
    int exlog_wait_done(exlog *w, uint64_t target, int64_t timeout_ms)
    int exlog_wait_space(exlog *w, uint64_t size, int64_t timeout_ms)
    void exlog_get_stats(exlog *w, exlog_stats *out)
    uint32_t exlog_crc32(uint32_t crc, const unsigned char *p, size_t n)
    uint32_t exlog_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
    void exlog_file_header(unsigned char *out)
    uint64_t exlog_align8(uint64_t n)
    unsigned char *exlog_reserve(exlog *w, uint64_t size)
    void exlog_commit(exlog *w, uint64_t size)
    void exlog_abandon(exlog *w)
    int exlog_load_int(const int *p)
    void exlog_store_int(int *p, int v)
    uint64_t exlog_load_u64(const uint64_t *p)
    int64_t exlog_wall_ns()
    void exlog_set_fsync(exlog *w, int64_t ms)
    void exlog_set_loss(exlog *w, int fd, uint64_t rows, uint64_t events, uint64_t errors)
    void exlog_loss_record(unsigned char *out, uint64_t rows, uint64_t events, uint64_t errors,
                           int last_errno, int64_t wall_ns)
    void exlog_note_producer_drops(exlog *w, uint64_t rows, uint64_t events)
    int64_t exlog_summary_copy(exlog *w, exlog_keysum *out, uint64_t cap, uint64_t *bytes,
                               uint64_t *last_frame)
    # test hooks (exlog.c): stall the writer; fail every Nth write / fsync
    void exlog_test_pause(exlog *w, int paused)
    void exlog_test_fault(exlog *w, uint64_t write_every, uint64_t fsync_every, int err)
