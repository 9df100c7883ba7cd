# cython: language_level=3
"""expman's compiled core (private).

``Core.log_metrics`` turns a dict of numbers into C values and appends one
record to a bounded ring (exlog.h); a native writer thread drains the ring into
checksummed frames. ``decode_metrics`` reads those frames back into columns.
Everything else lives in the Python layer. The C declarations are in
``_exlog.pxd``; the decoder, the read side's one compiled part, is in
``_decode.pxi`` (one extension, split by idea).
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

from expman._exlog cimport *

FORMAT_VERSION = EXLOG_FORMAT_VERSION
HEADER_SIZE = EXLOG_HEADER_SIZE

cdef enum:
    KEY_CACHE = 64        # positions remembered by identity, see log_metrics
    REC_HEADER = 32       # sizeof(exlog_rec)
    MAX_KEY_BYTES = 4096

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
        exlog_test_pause(self._w, paused)

    def _set_fault(self, uint64_t write_every=0, uint64_t fsync_every=0, int err=0):
        """Test hook: fail every Nth write / fsync of the writer with ``err``."""
        if self._state != OPEN:
            self._raise_state()
        exlog_test_fault(self._w, write_every, fsync_every, err)


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


include "_decode.pxi"
include "_decimate.pxi"
