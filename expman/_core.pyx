# cython: language_level=3
"""expman's compiled core (private).

``Core.log_metrics`` turns a dict of numbers into C values and appends one
record to a bounded ring (exlog.h); a native writer thread drains the ring into
checksummed frames. ``decode_metrics`` reads those frames back into columns.
Everything else lives in the Python layer.
"""

from libc.stdint cimport uint32_t, int64_t, uint64_t
from libc.string cimport memcpy
from libc.stdlib cimport malloc, realloc, free
from cpython.array cimport array, clone
from cpython.exc cimport PyErr_CheckSignals

import errno as _errno
import os as _os
import warnings as _warnings


from expman.errors import (
    CorruptRunError, ExpmanTypeError, ExpmanValueError, RunClosedError, WriterError,
)

cdef extern from "Python.h":
    ctypedef struct PyObject
    bint PyDict_Next(object d, Py_ssize_t *pos, PyObject **key, PyObject **value)
    Py_ssize_t PyDict_Size(object d)
    bint PyFloat_CheckExact(PyObject *o)
    double PyFloat_AS_DOUBLE(PyObject *o)
    bint PyLong_CheckExact(PyObject *o)
    bint PyUnicode_CheckExact(PyObject *o)
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1
    void Py_INCREF(PyObject *o)
    void Py_XDECREF(PyObject *o)

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
    ctypedef struct exlog:
        uint64_t cap
        uint64_t head
        uint64_t fault_write_every, fault_fsync_every
        int fault_errno
        int paused
        int error_seq
    enum:
        EXLOG_REC_KEY, EXLOG_REC_ROW, EXLOG_REC_EVENT
        EXLOG_HEADER_SIZE, EXLOG_FORMAT_VERSION, EXLOG_KEY_DEF, EXLOG_ROW_SAME_KEYS
    exlog *exlog_new(uint64_t capacity, int64_t flush_ms, int64_t heartbeat_ms)
    int exlog_start(exlog *w, int fd_metrics, uint64_t metrics_size, int fd_events,
                    uint64_t events_size)
    void exlog_stop(exlog *w)
    void exlog_free(exlog *w)
    int exlog_wait_done(exlog *w, uint64_t target, int64_t timeout_ms)
    int exlog_wait_space(exlog *w, uint64_t size, int64_t timeout_ms)
    void exlog_get_stats(exlog *w, exlog_stats *out)
    uint32_t exlog_crc32(uint32_t crc, const unsigned char *p, size_t n)
    void exlog_file_header(unsigned char *out)
    uint64_t exlog_align8(uint64_t n)
    unsigned char *exlog_reserve(exlog *w, uint64_t size)
    void exlog_commit(exlog *w, uint64_t size)
    int exlog_load_int(const int *p)
    void exlog_store_int(int *p, int v)
    uint64_t exlog_load_u64(const uint64_t *p)
    int64_t exlog_wall_ns()

FORMAT_VERSION = EXLOG_FORMAT_VERSION
HEADER_SIZE = EXLOG_HEADER_SIZE

DEF KEY_CACHE = 64        # positions remembered by identity, see log_metrics
DEF REC_HEADER = 32       # sizeof(exlog_rec)
DEF MAX_KEY_BYTES = 4096

cdef enum State:
    NEW = 0
    OPEN = 1
    CLOSED = 2
    FORKED = 3

cdef enum OnFull:
    BLOCK = 0
    DROP = 1


def file_header():
    """The 16 bytes every metrics file starts with."""
    cdef unsigned char out[EXLOG_HEADER_SIZE]
    exlog_file_header(out)
    return bytes(out[:EXLOG_HEADER_SIZE])


def crc32(const unsigned char[::1] data not None, uint32_t crc=0):
    """CRC-32 as the writer computes it (equal to zlib.crc32)."""
    return exlog_crc32(crc, &data[0] if data.shape[0] else NULL, data.shape[0])


cdef class Core:
    """The hot half of an Experiment: key table, ring producer, writer thread."""

    cdef exlog *_w
    cdef dict _keys                 # metric name -> id
    cdef PyObject *_ckey[KEY_CACHE]  # owned refs: key seen at dict position i
    cdef uint32_t _cid[KEY_CACHE]
    cdef int64_t _last_step
    cdef uint64_t _accepted, _dropped_full, _events
    cdef int _state, _on_full, _err_seen, _raise_errors
    cdef double _block_timeout
    cdef object _metrics_path
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._keys = {}
        self._last_step = -1

    def __dealloc__(self):
        cdef int i
        for i in range(KEY_CACHE):
            Py_XDECREF(self._ckey[i])
        if self._w is not NULL:
            if self._state == FORKED:
                return      # the parent's writer: its locks may be held; leak it
            with nogil:
                exlog_free(self._w)   # drains and joins if still running
            self._w = NULL

    # ---- set-up (called once by Experiment) ---------------------------------
    def _start(self, int fd_metrics, uint64_t metrics_size, int fd_events,
               uint64_t events_size, *, metrics_path, uint64_t buffer_size,
               double flush_interval, double heartbeat_interval, on_full,
               on_error, double block_timeout, dict keys=None, last_step=None):
        """Start the writer on already-open files (the Python side owns paths)."""
        if self._state != NEW:
            raise RunClosedError("this run was started already")
        if on_full not in ("block", "drop"):
            raise ExpmanValueError(f"on_full must be 'block' or 'drop', got {on_full!r}")
        if on_error not in ("raise", "warn"):
            raise ExpmanValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        self._on_full = BLOCK if on_full == "block" else DROP
        self._raise_errors = on_error == "raise"
        self._block_timeout = block_timeout
        self._metrics_path = metrics_path
        if keys:
            self._keys = {str(k): int(v) for k, v in keys.items()}
        if last_step is not None:
            self._last_step = last_step
        self._w = exlog_new(buffer_size, <int64_t>(flush_interval * 1000),
                            <int64_t>(heartbeat_interval * 1000))
        if self._w is NULL:
            raise MemoryError("expman: cannot allocate the metrics buffer")
        if exlog_start(self._w, fd_metrics, metrics_size, fd_events, events_size) != 0:
            exlog_free(self._w)
            self._w = NULL
            raise OSError(_errno.EAGAIN, "expman: cannot start the writer thread")
        self._state = OPEN

    # ---- the hot path --------------------------------------------------------
    def log_metrics(self, dict metrics not None, step=None):
        """Log numbers for one step. ``step=None`` means the last step + 1.

        Validates the whole call before storing anything; never waits for I/O.
        """
        cdef Py_ssize_t pos = 0, n = PyDict_Size(metrics), i = 0
        cdef PyObject *k
        cdef PyObject *v
        cdef int64_t s
        cdef int overflow = 0
        cdef uint32_t ids_stack[KEY_CACHE]
        cdef double vals_stack[KEY_CACHE]
        cdef uint32_t *ids = ids_stack
        cdef double *vals = vals_stack
        cdef list fresh = None
        cdef object buf = None
        cdef unsigned char *p
        cdef uint64_t size, ids_bytes
        cdef exlog_rec *rec

        if self._state != OPEN:
            self._raise_state()
        if self._err_seen != exlog_load_int(&self._w.error_seq):
            self._report_writer_error()
        if step is None:
            if self._last_step == 0x7FFFFFFFFFFFFFFF:
                raise ExpmanValueError("log_metrics: step=None after step 2**63-1 would overflow")
            s = self._last_step + 1
        else:
            s = -1
            if PyLong_CheckExact(<PyObject *>step):
                s = PyLong_AsLongLongAndOverflow(step, &overflow)
            if s < 0 or overflow:
                s = _coerce_step(step)
        if n > KEY_CACHE:
            buf = bytearray(n * 12)
            vals = <double *><char *>buf
            ids = <uint32_t *>(<char *>buf + n * 8)

        while PyDict_Next(metrics, &pos, &k, &v):
            if i < KEY_CACHE and k == self._ckey[i]:
                ids[i] = self._cid[i]
            else:
                ids[i] = self._lookup(<object>k, i)
                if ids[i] == 0xFFFFFFFF:
                    if fresh is None:
                        fresh = []
                    fresh.append(i)
                    fresh.append(str(<object>k))   # a str subclass is stored as plain str
            if PyFloat_CheckExact(v):
                vals[i] = PyFloat_AS_DOUBLE(v)
            else:
                vals[i] = _to_double(<object>k, <object>v)
            i += 1
        if i != n:
            raise RuntimeError("log_metrics: the dict changed size during the call")

        ids_bytes = exlog_align8(4 * <uint64_t>n)
        size = REC_HEADER + ids_bytes + 8 * <uint64_t>n
        if 4 * size > self._w.cap:
            _too_large(size, self._w.cap)
        # valid: define new keys first so the stream never uses an unknown id
        if fresh is not None:
            for i in range(0, len(fresh), 2):
                ids[<Py_ssize_t>fresh[i]] = self._define_key(fresh[i + 1])

        if self._state != OPEN:
            # validation can run Python code (a __float__) during which another
            # thread may close the run: never commit after the writer stopped
            self._raise_state()
        p = exlog_reserve(self._w, size)
        if p is NULL:
            p = self._reserve_slow(size, True)
            if p is NULL:
                self._accepted += 1
                self._dropped_full += 1
                self._last_step = s
                return
        rec = <exlog_rec *>p
        rec.size = <uint32_t>size
        rec.kind = EXLOG_REC_ROW
        rec.n = <uint32_t>n
        rec.len = 0
        rec.step = s
        rec.t_ns = exlog_wall_ns()
        memcpy(p + REC_HEADER, ids, 4 * n)
        memcpy(p + REC_HEADER + ids_bytes, vals, 8 * n)
        exlog_commit(self._w, size)
        self._accepted += 1
        self._last_step = s

    cdef uint32_t _lookup(self, object key, Py_ssize_t i) except? 0xFFFFFFFE:
        """Id of a known key (caching it at dict position i), or 0xFFFFFFFF."""
        if not isinstance(key, str):
            raise ExpmanTypeError(
                f"log_metrics: metric names must be str, got {type(key).__name__} ({key!r})")
        found = self._keys.get(key)
        if found is None:
            if not key:
                raise ExpmanValueError("log_metrics: metric names must not be empty")
            return 0xFFFFFFFF
        if i < KEY_CACHE and PyUnicode_CheckExact(<PyObject *>key):
            Py_XDECREF(self._ckey[i])
            Py_INCREF(<PyObject *>key)
            self._ckey[i] = <PyObject *>key
            self._cid[i] = found
        return found

    cdef uint32_t _define_key(self, str key) except? 0xFFFFFFFE:
        """Assign the next id and put the definition in the stream, atomically."""
        cdef bytes name
        try:
            name = key.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ExpmanValueError(f"log_metrics: metric name {key!r} is not valid UTF-8: {e}") from None
        if len(name) > MAX_KEY_BYTES:
            raise ExpmanValueError(
                f"log_metrics: metric name {key[:40]!r}... is {len(name)} bytes, max {MAX_KEY_BYTES}")
        while True:
            found = self._keys.get(key)
            if found is not None:       # defined by another thread while we waited
                return found
            new_id = len(self._keys)
            if self._put_blob(EXLOG_REC_KEY, new_id, name):
                self._keys[str(key)] = new_id
                return new_id

    cdef unsigned char *_reserve_slow(self, uint64_t size, bint may_drop) except? NULL:
        """The ring is full: wait for the writer (GIL released) or drop, by policy."""
        cdef unsigned char *p
        cdef int ok
        cdef int64_t slice_ms = 50
        if may_drop and self._on_full == DROP:
            return NULL
        waited = 0.0
        while True:
            with nogil:
                ok = exlog_wait_space(self._w, size, slice_ms)
            if self._state != OPEN:
                self._raise_state()
            p = exlog_reserve(self._w, size)
            if p is not NULL:
                return p
            PyErr_CheckSignals()
            waited += slice_ms / 1000.0
            if may_drop and self._block_timeout >= 0 and waited >= self._block_timeout:
                _warnings.warn(
                    f"expman: the writer made no room for {waited:.1f} s; dropping a record "
                    "(counted in stats()['dropped'])", RuntimeWarning, stacklevel=3)
                return NULL

    # ---- events, flush, close -----------------------------------------------
    def _log_event(self, dict event not None):
        """Append one JSON line to events.jsonl, stamped with the metrics sequence."""
        if self._state != OPEN:
            self._raise_state()
        import orjson as _orjson      # not at module import: `import expman` stays fast
        while True:
            event["seq"] = self._accepted
            if self._put_blob(EXLOG_REC_EVENT, 0,
                              _orjson.dumps(event, option=_orjson.OPT_APPEND_NEWLINE)):
                self._events += 1
                return

    cdef bint _put_blob(self, uint32_t kind, uint32_t n, bytes payload) except -1:
        """Append a key or event record; False after waiting for room (with the GIL
        released, so the caller re-derives what may have changed and retries)."""
        cdef uint64_t size = REC_HEADER + exlog_align8(len(payload))
        cdef unsigned char *p
        cdef exlog_rec *rec
        if 4 * size > self._w.cap:
            _too_large(size, self._w.cap)
        if self._state != OPEN:
            self._raise_state()
        p = exlog_reserve(self._w, size)
        if p is NULL:
            self._reserve_slow(size, False)
            return False
        rec = <exlog_rec *>p
        rec.size = <uint32_t>size
        rec.kind = kind
        rec.n = n
        rec.len = <uint32_t>len(payload)
        rec.step = 0
        rec.t_ns = 0
        memcpy(p + REC_HEADER, <char *>payload, len(payload))
        exlog_commit(self._w, size)
        return True

    def flush(self, timeout=None):
        """Return once everything logged before the call is handed to the OS.

        Raises the writer's error if it failed since the last report; returns
        False if ``timeout`` (seconds) passed first.
        """
        cdef uint64_t target
        cdef int64_t ms = -1 if timeout is None else <int64_t>(timeout * 1000)
        cdef int reached
        if self._state != OPEN:
            self._raise_state()
        target = self._w.head
        with nogil:
            reached = exlog_wait_done(self._w, target, ms)
        if self._err_seen != exlog_load_int(&self._w.error_seq):
            self._report_writer_error()
        return bool(reached)

    def _stop(self):
        """Drain, fsync and join the writer. Idempotent; a no-op in a forked child.

        Returns True when this call did the stopping.
        """
        if self._state != OPEN:
            return False
        self._state = CLOSED
        with nogil:
            exlog_stop(self._w)
        return True

    def _after_fork_child(self):
        """In a forked child the writer thread does not exist: refuse to log."""
        if self._state == OPEN:
            self._state = FORKED

    def _pending_error(self):
        """The writer's unreported error as a WriterError, or None (and mark it seen)."""
        cdef exlog_stats st
        cdef int seq
        if self._w is NULL or self._state == FORKED:
            return None
        seq = exlog_load_int(&self._w.error_seq)
        if seq == self._err_seen:
            return None
        self._err_seen = seq
        exlog_get_stats(self._w, &st)
        code = st.last_errno or _errno.EIO
        return WriterError(code, f"expman writer: {_os.strerror(code)} "
                                 f"({st.write_errors} failed writes, "
                                 f"{st.rows_dropped + self._dropped_full} records dropped)",
                           str(self._metrics_path))

    cdef int _report_writer_error(self) except -1:
        err = self._pending_error()
        if err is None:
            return 0
        if self._raise_errors:
            raise err
        _warnings.warn(str(err), RuntimeWarning, stacklevel=3)
        return 0

    cdef int _raise_state(self) except -1:
        if self._state == FORKED:
            raise RunClosedError(
                f"this run belongs to process {self._owner_pid()}; a forked child cannot "
                "log to it: start an Experiment of its own in the child")
        if self._state == NEW:
            raise RunClosedError("this run was never started")
        raise RunClosedError("this run is closed; start a new Experiment (or resume=True)")

    def _owner_pid(self):
        return getattr(self, "_pid", "?")

    def stats(self):
        """Counters: accepted = written + dropped + pending, always."""
        cdef exlog_stats st
        if self._state == FORKED:
            self._raise_state()     # the writer's mutex may be held forever here
        if self._w is NULL:
            return {"accepted": 0, "written": 0, "dropped": 0, "pending": 0,
                    "events": 0, "events_written": 0, "events_dropped": 0,
                    "write_errors": 0, "bytes_written": 0, "frames": 0, "keys": 0}
        exlog_get_stats(self._w, &st)
        dropped = st.rows_dropped + self._dropped_full
        return {
            "accepted": self._accepted,
            "written": st.rows_written,
            "dropped": dropped,
            "pending": self._accepted - st.rows_written - dropped,
            "events": self._events,
            "events_written": st.events_written,
            "events_dropped": st.events_dropped,
            "write_errors": st.write_errors,
            "last_errno": st.last_errno,
            "bytes_written": st.bytes_written,
            "frames": st.frames_written,
            "keys": len(self._keys),
        }

    @property
    def last_step(self):
        """The step of the last accepted record, or None."""
        return None if self._last_step < 0 else self._last_step

    def _pause_writer(self, bint paused):
        """Test hook: stall the writer (it still drains on close)."""
        exlog_store_int(&self._w.paused, paused)

    def _set_fault(self, uint64_t write_every=0, uint64_t fsync_every=0, int err=0):
        """Test hook: fail every Nth write / fsync of the writer with ``err``."""
        if self._state != OPEN:
            self._raise_state()
        self._w.fault_errno = err
        self._w.fault_fsync_every = fsync_every
        self._w.fault_write_every = write_every


cdef double _to_double(object key, object value) except? -1.0:
    """float(value) for anything numeric, or a TypeError naming the key."""
    if isinstance(value, (str, bytes, bytearray)) or value is None:
        raise ExpmanTypeError(
            f"log_metrics: value for {key!r} must be a number, got {type(value).__name__} ({value!r:.60})")
    try:
        return float(value)
    except OverflowError:
        raise ExpmanValueError(
            f"log_metrics: value for {key!r} is too large for a float64: {value!r:.60}") from None
    except (TypeError, ValueError) as e:
        raise ExpmanTypeError(
            f"log_metrics: value for {key!r} must be a number, got "
            f"{type(value).__name__} ({value!r:.60}): {e}") from None


cdef int _too_large(uint64_t size, uint64_t cap) except -1:
    """One record may fill at most a quarter of the ring (the writer relies on it)."""
    raise ExpmanValueError(
        f"a record of {size} bytes is too large for a {cap}-byte buffer (max {cap // 4}); "
        "log fewer keys per call, a shorter message, or raise buffer_size")


cdef int64_t _coerce_step(object step) except -1:
    if isinstance(step, bool) or not hasattr(type(step), "__index__"):
        raise ExpmanTypeError(
            f"log_metrics: step must be a non-negative int or None, got {type(step).__name__} ({step!r:.60})")
    value = step.__index__()
    if value < 0 or value > 0x7FFFFFFFFFFFFFFF:
        raise ExpmanValueError(f"log_metrics: step must be between 0 and 2**63-1, got {value}")
    return value


# ---- reading ------------------------------------------------------------------

cdef struct Vec:
    char *data
    Py_ssize_t len, cap      # in bytes

cdef int vec_reserve(Vec *v, Py_ssize_t extra) except -1 nogil:
    """Room for `extra` more bytes, so a frame's points are stored without checks."""
    cdef Py_ssize_t cap
    cdef char *d
    if v.len + extra > v.cap:
        cap = v.cap * 2 if v.cap else 4096
        while cap < v.len + extra:
            cap *= 2
        d = <char *>realloc(v.data, cap)
        if d is NULL:
            with gil:
                raise MemoryError()
        v.data = d
        v.cap = cap
    return 0


cdef inline uint32_t get_u32(const unsigned char *p) noexcept nogil:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)

cdef inline double get_f64(const unsigned char *p) noexcept nogil:
    cdef uint64_t u = 0
    cdef int j
    cdef double d
    for j in range(8):
        u |= (<uint64_t>p[j]) << (8 * j)
    memcpy(&d, &u, 8)
    return d

cdef inline Py_ssize_t get_varint(const unsigned char *p, Py_ssize_t n, uint64_t *out) noexcept nogil:
    """Bytes used, or -1 if truncated or longer than 10 bytes."""
    cdef uint64_t v = 0
    cdef Py_ssize_t k = 0
    cdef int shift = 0
    while k < n and k < 10:
        v |= (<uint64_t>(p[k] & 0x7F)) << shift
        if p[k] < 0x80:
            out[0] = v
            return k + 1
        shift += 7
        k += 1
    return -1

cdef inline int64_t unzigzag(uint64_t v) noexcept nogil:
    return <int64_t>(v >> 1) ^ -<int64_t>(v & 1)


cdef int frame_ok(const unsigned char *d, Py_ssize_t n, Py_ssize_t pos) noexcept nogil:
    """1 if a whole valid frame starts at pos, 0 if not, -1 if it may be torn (runs past EOF)."""
    cdef uint32_t length
    if n - pos < 8:
        return -1
    length = get_u32(d + pos)
    if exlog_crc32(0, d + pos, 4) != get_u32(d + pos + 4):
        return 0
    if <Py_ssize_t>length > n - pos - 12:
        return -1
    if exlog_crc32(0, d + pos + 8, length) != get_u32(d + pos + 8 + length):
        return -1 if pos + 12 + <Py_ssize_t>length == n else 0
    return 1


cdef struct Long:
    Vec ids, steps, times, values


cdef int decode_payload(const unsigned char *p, Py_ssize_t n, Long *out, dict keys,
                        uint64_t *rows) except -1:
    """Decode one checksummed payload. Returns 1 if well formed, 0 if not
    (then `out` is rolled back to where it was)."""
    cdef Py_ssize_t k = 0, used, mark_ids = out.ids.len, mark_vals = out.values.len
    cdef Py_ssize_t mark_steps = out.steps.len, mark_times = out.times.len
    cdef uint64_t u, h, npts, kid, j, nrows = 0, prev_n = 0
    cdef Py_ssize_t row_start, prev_start = -1   # where the previous row's ids are in out
    cdef bint same
    cdef int64_t step = 0, t_us = 0
    cdef double t, val
    cdef list new_keys = []
    cdef Py_ssize_t most = n // 8 + 1       # a point takes at least 8 payload bytes
    vec_reserve(&out.ids, 4 * most)
    vec_reserve(&out.steps, 8 * most)
    vec_reserve(&out.times, 8 * most)
    vec_reserve(&out.values, 8 * most)
    while k < n:
        used = get_varint(p + k, n - k, &h)
        if used < 0: break
        k += used
        if h & EXLOG_KEY_DEF:
            used = get_varint(p + k, n - k, &u)
            if used < 0 or <uint64_t>(n - k - used) < u: break
            k += used
            new_keys.append((h >> 1, (<const char *>p)[k:k + u].decode("utf-8", "replace")))
            k += u
            continue
        npts = h >> 2
        same = (h & 3) == EXLOG_ROW_SAME_KEYS
        if same and (prev_start < 0 or npts != prev_n):
            break                               # nothing (or something else) to repeat
        used = get_varint(p + k, n - k, &u)
        if used < 0: break
        k += used
        step += unzigzag(u)
        used = get_varint(p + k, n - k, &u)
        if used < 0: break
        k += used
        t_us += unzigzag(u)
        t = t_us / 1e6
        row_start = out.ids.len // 4
        for j in range(npts):
            if same:
                kid = (<uint32_t *>out.ids.data)[prev_start + j]
            else:
                used = get_varint(p + k, n - k, &kid)
                if used < 0 or kid > <uint64_t>0xFFFFFFFFU:
                    used = -1
                    break
                k += used
            if k + 8 > n:
                used = -1
                break
            val = get_f64(p + k)
            k += 8
            (<uint32_t *>(out.ids.data + out.ids.len))[0] = <uint32_t>kid
            (<int64_t *>(out.steps.data + out.steps.len))[0] = step
            (<double *>(out.times.data + out.times.len))[0] = t
            (<double *>(out.values.data + out.values.len))[0] = val
            out.ids.len += 4
            out.steps.len += 8
            out.times.len += 8
            out.values.len += 8
        if used < 0: break
        prev_start = row_start
        prev_n = npts
        nrows += 1
    if k != n:
        out.ids.len = mark_ids
        out.steps.len = mark_steps
        out.times.len = mark_times
        out.values.len = mark_vals
        return 0
    for kid_obj, name in new_keys:
        keys[kid_obj] = name
    rows[0] += nrows
    return 1


def decode_metrics(const unsigned char[::1] data not None, Py_ssize_t offset=0,
                   dict keys=None, bint salvage=False):
    """Decode a metrics file (or its tail from ``offset``, a frame boundary).

    Returns ``(columns, keys, report)``: columns maps a metric name to a tuple
    of array.array (steps 'q', times 'd' seconds, values 'd') in logged order;
    keys maps id -> name (pass it back with ``offset`` to read a tail);
    report counts frames, rows, points, torn and corrupt bytes, and ``end``,
    the offset after the last intact frame.
    """
    cdef const unsigned char *d = &data[0] if data.shape[0] else NULL
    cdef Py_ssize_t n = data.shape[0], pos = offset, start, end_ok
    cdef Long out
    cdef uint64_t rows = 0, frames = 0, corrupt = 0, torn = 0, unknown = 0
    cdef uint32_t length
    cdef int ok
    cdef list corrupt_at = []
    if keys is None:
        keys = {}
    else:
        keys = dict(keys)
    report = {}
    if offset == 0:
        if n < EXLOG_HEADER_SIZE:
            report.update(frames=0, rows=0, points=0, torn_bytes=n, corrupt_bytes=0,
                          corrupt_at=[], unknown_points=0, end=0)
            return {}, keys, report
        if bytes(data[:8]) != b"EXPMANMB":
            if not salvage:
                raise CorruptRunError("not an expman metrics file (bad magic)")
            # salvage: a damaged header (a zeroed first block) must not hide the
            # frames after it; only a valid magic with another version is refused
            corrupt_at.append(0)
            corrupt += EXLOG_HEADER_SIZE
        elif get_u32(d + 8) != EXLOG_FORMAT_VERSION:
            raise CorruptRunError(f"unsupported metrics format version {get_u32(d + 8)}")
        pos = EXLOG_HEADER_SIZE
    long_init(&out)
    end_ok = pos
    try:
        while pos < n:
            ok = frame_ok(d, n, pos)
            if ok == 1:
                length = get_u32(d + pos)
                if decode_payload(d + pos + 8, length, &out, keys, &rows):
                    frames += 1
                    pos += 12 + length
                    end_ok = pos
                    continue
            if (ok == -1 and not _any_valid_frame_after(d, n, pos + 1)) or _all_zero(d + pos, n - pos):
                torn = n - pos         # the last frame was cut short by a crash
                break
            # damaged in the middle: report, and with salvage resynchronise
            corrupt_at.append(pos)
            if not salvage:
                corrupt += n - pos
                break
            start = pos
            pos += 1
            while pos < n and frame_ok(d, n, pos) != 1:
                pos += 1
            corrupt += pos - start
        columns = _group(&out, keys, &unknown)
    finally:
        free(out.ids.data)
        free(out.steps.data)
        free(out.times.data)
        free(out.values.data)
    report.update(frames=frames, rows=rows, points=sum(len(c[0]) for c in columns.values()),
                  torn_bytes=torn, corrupt_bytes=corrupt, corrupt_at=corrupt_at,
                  unknown_points=unknown, end=end_ok)
    return columns, keys, report


cdef void long_init(Long *out) noexcept:
    out.ids.data = out.steps.data = out.times.data = out.values.data = NULL
    out.ids.len = out.steps.len = out.times.len = out.values.len = 0
    out.ids.cap = out.steps.cap = out.times.cap = out.values.cap = 0


cdef bint _all_zero(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """Zeros to the end: space a crash allocated but never filled (a torn tail)."""
    cdef Py_ssize_t i
    for i in range(n):
        if p[i]:
            return False
    return True


cdef bint _any_valid_frame_after(const unsigned char *d, Py_ssize_t n, Py_ssize_t pos) noexcept:
    """A torn tail has nothing valid behind it; anything valid later means damage."""
    while pos < n - 12:
        if frame_ok(d, n, pos) == 1:
            return True
        pos += 1
    return False


cdef dict _group(Long *out, dict keys, uint64_t *unknown):
    """Scatter the long columns into one (steps, times, values) per key."""
    cdef Py_ssize_t npts = out.ids.len // 4, i, nkeys = 0
    cdef const uint32_t *ids = <const uint32_t *>out.ids.data
    cdef const int64_t *steps = <const int64_t *>out.steps.data
    cdef const double *times = <const double *>out.times.data
    cdef const double *values = <const double *>out.values.data
    cdef uint32_t kid
    cdef array tmpl_q = array("q"), tmpl_d = array("d"), col
    cdef Py_ssize_t *counts
    cdef int64_t **ps
    cdef double **pt
    cdef double **pv
    cdef dict result = {}
    for kid in keys:
        if kid + 1 > nkeys:
            nkeys = kid + 1
    counts = <Py_ssize_t *>malloc((nkeys + 1) * sizeof(Py_ssize_t))
    ps = <int64_t **>malloc((nkeys + 1) * sizeof(void *))
    pt = <double **>malloc((nkeys + 1) * sizeof(void *))
    pv = <double **>malloc((nkeys + 1) * sizeof(void *))
    try:
        if counts is NULL or ps is NULL or pt is NULL or pv is NULL:
            raise MemoryError()
        for i in range(nkeys + 1):
            counts[i] = -1              # -1: id never defined
        for kid in keys:
            counts[kid] = 0
        for i in range(npts):
            kid = ids[i]
            if kid < nkeys and counts[kid] >= 0:
                counts[kid] += 1
            else:
                unknown[0] += 1
        for kid in sorted(keys):
            cols = (clone(tmpl_q, counts[kid], False), clone(tmpl_d, counts[kid], False),
                    clone(tmpl_d, counts[kid], False))
            result[keys[kid]] = cols
            ps[kid] = <int64_t *>(<array>cols[0]).data.as_voidptr
            pt[kid] = <double *>(<array>cols[1]).data.as_voidptr
            pv[kid] = <double *>(<array>cols[2]).data.as_voidptr
            counts[kid] = 0             # now the fill position
        with nogil:
            for i in range(npts):
                kid = ids[i]
                if kid >= nkeys or counts[kid] < 0:
                    continue
                ps[kid][counts[kid]] = steps[i]
                pt[kid][counts[kid]] = times[i]
                pv[kid][counts[kid]] = values[i]
                counts[kid] += 1
        return result
    finally:
        free(counts)
        free(ps)
        free(pt)
        free(pv)
