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
from cpython.array cimport array, clone, resize
from cpython.exc cimport PyErr_CheckSignals

import errno as _errno
import os as _os
import time as _time
import warnings as _warnings


from expman.errors import (
    CorruptRunError, ExpmanTypeError, ExpmanValueError, RunClosedError, WriterError,
)

from cpython.object cimport PyObject

cdef extern from "Python.h":
    bint PyDict_Next(object d, Py_ssize_t *pos, PyObject **key, PyObject **value)
    Py_ssize_t PyDict_Size(object d)
    bint PyFloat_CheckExact(PyObject *o)
    double PyFloat_AS_DOUBLE(PyObject *o)
    bint PyLong_CheckExact(PyObject *o)
    bint PyUnicode_CheckExact(PyObject *o)
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1
    void Py_INCREF(PyObject *o)
    void Py_XDECREF(PyObject *o)
    void Py_DECREF(PyObject *o)
    bint PyFloat_Check(PyObject *o)
    double PyLong_AsDouble(PyObject *o)
    PyObject *PyErr_Occurred()
    void PyErr_Clear()

from expman._excore cimport *
from expman._exlog cimport *

FORMAT_VERSION = EXLOG_FORMAT_VERSION
HEADER_SIZE = EXLOG_HEADER_SIZE

cdef enum:
    KEY_CACHE = 64        # positions remembered by identity, see log_metrics
    MAX_KEY_BYTES = 4096

cdef enum State:
    NEW = 0
    OPEN = 1
    CLOSED = 2
    FORKED = 3

cdef enum OnFull:
    BLOCK = 0
    DROP = 1

cdef enum Put:            # what _put_blob did
    PUT_RETRY = 0         # waited with the GIL released: re-derive, then retry
    PUT_DONE = 1
    PUT_DROPPED = 2       # no room, by on_full / block_timeout

cdef enum:
    NO_ID = 0xFFFFFFFF    # a key not (yet) in the stream
    MAX_KEYS = 0xFFFFFFFE # ids are u32 and NO_ID is reserved


def file_header():
    """The 16 bytes every metrics file starts with."""
    cdef unsigned char out[EXLOG_HEADER_SIZE]
    exlog_file_header(out)
    return bytes(out[:EXLOG_HEADER_SIZE])


def loss_record(uint64_t rows, uint64_t events, uint64_t errors, int last_errno=0,
                int64_t wall_ns=0):
    """The loss record's bytes exactly as the writer writes them (expman.loss)."""
    cdef unsigned char out[EXLOG_LOSS_RECORD_SIZE]
    exlog_loss_record(out, rows, events, errors, last_errno, wall_ns)
    return bytes(out[:EXLOG_LOSS_RECORD_SIZE])


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
    cdef uint64_t _accepted, _dropped_full, _events, _events_dropped_full
    cdef uint64_t _seq_base         # records of earlier sessions (resume): events' seq goes on
    cdef int64_t _next_id           # -1: derive from _keys (a resumed run's ids may have gaps)
    cdef bint _stalled              # _stop timed out: the writer still owns its files
    cdef int _state, _on_full, _err_seen, _raise_errors
    cdef double _block_timeout
    cdef object _metrics_path
    cdef object _watch_match        # expman.watch's key matcher once watching natively
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._keys = {}
        self._last_step = -1
        self._next_id = -1

    def __dealloc__(self):
        cdef int i
        for i in range(KEY_CACHE):
            Py_XDECREF(self._ckey[i])
        if self._w is not NULL:
            if self._state == FORKED or self._stalled:
                return      # the parent's writer, or one stuck on a frozen disk: leak it
            with nogil:
                exlog_free(self._w)   # drains and joins if still running
            self._w = NULL

    # ---- set-up (called once by Experiment) ---------------------------------
    def _start(self, int fd_metrics, uint64_t metrics_size, int fd_events,
               uint64_t events_size, *, metrics_path, buffer_size,
               double flush_interval, double heartbeat_interval, on_full,
               on_error, double block_timeout, dict keys=None, last_step=None,
               uint64_t seq_base=0, fsync_interval=None, int loss_fd=-1,
               tuple loss_base=(0, 0, 0)):
        """Start the writer on already-open files (the Python side owns paths).

        ``loss_fd``: the preallocated loss record (expman.loss), rewritten in
        place by the writer; ``loss_base``: rows, events and write errors that
        earlier sessions of the run recorded there."""
        if self._state != NEW:
            raise RunClosedError("this run was started already")
        if on_full not in ("block", "drop"):
            raise ExpmanValueError(f"on_full must be 'block' or 'drop', got {on_full!r}")
        if on_error not in ("raise", "warn"):
            raise ExpmanValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        if not isinstance(buffer_size, int) or not 0 <= buffer_size <= EXLOG_MAX_CAPACITY:
            raise ExpmanValueError(
                f"buffer_size must be at most {EXLOG_MAX_CAPACITY} (1 GiB), got {buffer_size}")
        self._on_full = BLOCK if on_full == "block" else DROP
        self._raise_errors = on_error == "raise"
        self._block_timeout = block_timeout
        self._metrics_path = metrics_path
        if keys:
            self._keys = {str(k): int(v) for k, v in keys.items()}
        if last_step is not None:
            self._last_step = last_step
        self._seq_base = seq_base
        self._w = exlog_new(buffer_size, <int64_t>(flush_interval * 1000),
                            <int64_t>(heartbeat_interval * 1000))
        if self._w is NULL:
            raise MemoryError("expman: cannot allocate the metrics buffer")
        if loss_fd >= 0:
            exlog_set_loss(self._w, loss_fd, loss_base[0], loss_base[1], loss_base[2])
        if fsync_interval is not None:
            exlog_set_fsync(self._w, max(<int64_t>(fsync_interval * 1000), 1))
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
        _log_row(self, metrics, step, True, -1)

    def _log_at(self, dict metrics not None, step, int64_t time_us):
        """Log one row that keeps its own wall-clock time (microseconds since
        the Unix epoch, >= 0), for importers (Experiment.log_metrics_at); off
        the hot path, otherwise exactly log_metrics."""
        if time_us < 0 or time_us > 0x7FFFFFFFFFFFFFFF // 1000:
            raise ExpmanValueError(f"_log_at: time_us must be in [0, 2**63 // 1000], got {time_us}")
        _log_row(self, metrics, step, True, time_us * 1000)

    def _log_side(self, dict metrics not None, step):
        """Log one row at an explicit step without reading or advancing the
        ``step=None`` counter: background loggers (the system sampler) must not
        move the user's step sequence."""
        if step is None:
            raise ExpmanTypeError("_log_side: step must be an int, not None")
        _log_row(self, metrics, step, False, -1)

    cdef uint32_t _lookup(self, object key, Py_ssize_t i) except? 0xFFFFFFFE:
        """Id of a known key (caching it at dict position i), or 0xFFFFFFFF."""
        if not isinstance(key, str):
            raise ExpmanTypeError(
                f"log_metrics: metric names must be str, got {type(key).__name__} ({key!r})")
        found = self._keys.get(key)
        if found is None:
            _check_new_name(key)    # every new name of a call, before any is defined
            return 0xFFFFFFFF
        if i < KEY_CACHE and PyUnicode_CheckExact(<PyObject *>key):
            Py_XDECREF(self._ckey[i])
            Py_INCREF(<PyObject *>key)
            self._ckey[i] = <PyObject *>key
            self._cid[i] = found
        return found

    cdef uint32_t _define_key(self, str key) except? 0xFFFFFFFE:
        """Assign the next id and put the definition in the stream, atomically.

        Returns NO_ID when the ring had no room and on_full / block_timeout say
        drop: the caller drops the record that needed the key."""
        cdef bytes name = _check_new_name(key)
        cdef int put
        # which watchdogs watch it: asked now, while Python code may still run
        watching = None if self._watch_match is None else self._watch_match(str(key))
        while True:
            found = self._keys.get(key)
            if found is not None:       # defined by another thread while we waited
                return found
            if self._next_id < 0:
                self._next_id = max(self._keys.values(), default=-1) + 1
            if self._next_id >= MAX_KEYS:
                raise ExpmanValueError(
                    f"log_metrics: cannot define metric {key[:40]!r}: a run holds at most "
                    f"{MAX_KEYS} metric names")
            put = self._put_blob(EXLOG_REC_KEY, <uint32_t>self._next_id, name)
            if put == PUT_DROPPED:
                return NO_ID
            if put == PUT_DONE:
                if watching is not None:    # bound before any thread can use the id
                    self._watch_bind(<uint32_t>self._next_id, key, watching, False)
                self._keys[str(key)] = self._next_id
                self._next_id += 1
                return self._keys[key]

    cdef unsigned char *_reserve_slow(self, uint64_t size, bint is_row) except? NULL:
        """The ring is full: wait for the writer (GIL released) or drop, by policy.

        Every producer path comes here, so on_full="drop" and block_timeout hold
        for rows, key definitions and events alike. Returns an open reservation
        (commit or abandon it before the GIL is released again) or NULL: drop."""
        cdef unsigned char *p
        cdef int64_t slice_ms
        if self._on_full == DROP:
            return NULL
        start = _time.monotonic()
        while True:
            slice_ms = 50
            if self._block_timeout >= 0:
                slice_ms = max(1, min(50, <int64_t>((start + self._block_timeout
                                                       - _time.monotonic()) * 1000) + 1))
            with nogil:
                exlog_wait_space(self._w, size, slice_ms)
            if self._state != OPEN:
                self._raise_state()
            p = exlog_reserve(self._w, size)
            if p is not NULL:
                return p
            PyErr_CheckSignals()
            waited = _time.monotonic() - start
            if self._block_timeout >= 0 and waited >= self._block_timeout:
                what = "a record" if is_row else "an event or a metric name (and its record)"
                _warnings.warn(
                    f"expman: the writer made no room for {waited:.1f} s (block_timeout); "
                    f"dropping {what} (counted in stats())", RuntimeWarning, stacklevel=3)
                return NULL

    # ---- events, flush, close -----------------------------------------------
    def _log_event(self, dict event not None):
        """Append one JSON line to events.jsonl, stamped with the metrics sequence.

        Honours on_full / block_timeout like a row: a dropped event is counted in
        stats()["events_dropped"]."""
        cdef int put
        if self._state != OPEN:
            self._raise_state()
        import orjson as _orjson      # not at module import: `import expman` stays fast
        while True:
            event["seq"] = self._seq_base + self._accepted
            put = self._put_blob(EXLOG_REC_EVENT, 0,
                                 _orjson.dumps(event, option=_orjson.OPT_APPEND_NEWLINE))
            if put != PUT_RETRY:
                self._events += 1
                if put == PUT_DROPPED:
                    self._events_dropped_full += 1
                    exlog_note_producer_drops(self._w, self._dropped_full,
                                              self._events_dropped_full)
                return

    cdef int _put_blob(self, uint32_t kind, uint32_t n, bytes payload) except -1:
        """Append a key or event record. PUT_RETRY after waiting for room with the
        GIL released (the caller re-derives what may have changed and retries),
        PUT_DROPPED when the policy gave up."""
        cdef uint64_t size = EXLOG_REC_HEADER + exlog_align8(len(payload))
        cdef unsigned char *p
        cdef exlog_rec *rec
        if 4 * size > self._w.cap:
            _too_large(size, self._w.cap)
        if self._state != OPEN:
            self._raise_state()
        p = exlog_reserve(self._w, size)
        if p is NULL:
            if self._reserve_slow(size, False) is NULL:
                return PUT_DROPPED
            # the world moved while we waited (another thread may have defined
            # this key): give the reservation back, unused (exlog.h, I3)
            exlog_abandon(self._w)
            return PUT_RETRY
        rec = <exlog_rec *>p
        rec.size = <uint32_t>size
        rec.kind = kind
        rec.n = n
        rec.len = <uint32_t>len(payload)
        rec.step = 0
        rec.t_ns = 0
        memcpy(p + EXLOG_REC_HEADER, <char *>payload, len(payload))
        exlog_commit(self._w, size)
        return PUT_DONE

    def flush(self, timeout=None):
        """Return once everything logged before the call is handed to the OS.

        Raises the writer's error if it failed since the last report; returns
        False if ``timeout`` (seconds) passed first.
        """
        cdef uint64_t target
        cdef int64_t slice_ms
        cdef int reached = 0
        if self._state != OPEN:
            self._raise_state()
        target = self._w.head
        deadline = None if timeout is None else _time.monotonic() + timeout
        while True:     # in slices, so Ctrl-C works while a disk stalls
            slice_ms = 100
            if deadline is not None:
                slice_ms = max(0, min(100, <int64_t>((deadline - _time.monotonic()) * 1000)))
            with nogil:
                reached = exlog_wait_done(self._w, target, slice_ms)
            if reached or (deadline is not None and _time.monotonic() >= deadline):
                break
            PyErr_CheckSignals()
        if self._err_seen != exlog_load_int(&self._w.error_seq):
            self._report_writer_error()
        return bool(reached)

    def _stop(self, timeout=None):
        """Drain, fsync and join the writer. Idempotent; a no-op in a forked child.

        Waits at most ``timeout`` seconds (default: block_timeout, at least 5 s;
        no limit when block_timeout < 0), then raises WriterError(ETIMEDOUT): a
        stalled disk must not hang close(). The writer then keeps its files and
        finishes on its own; a later call waits again. Returns True when this
        call did the stopping.
        """
        cdef int64_t ms
        cdef int stopped
        if self._state == OPEN:
            self._state = CLOSED
        elif not self._stalled:
            return False
        if timeout is None:
            timeout = max(self._block_timeout, 5.0) if self._block_timeout >= 0 else -1.0
        ms = <int64_t>(timeout * 1000) if timeout >= 0 else -1
        with nogil:
            stopped = exlog_stop_timed(self._w, ms)
        self._stalled = not stopped
        if self._stalled:
            raise WriterError(
                _errno.ETIMEDOUT,
                f"expman writer: still writing after {timeout:.1f} s at close (a stalled disk "
                "or frozen filesystem?); its files stay open and it finishes on its own "
                "if the disk recovers", str(self._metrics_path))
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
            "events_dropped": st.events_dropped + self._events_dropped_full,
            "write_errors": st.write_errors,
            "last_errno": st.last_errno,
            "bytes_written": st.bytes_written,
            "frames": st.frames_written,
            "keys": len(self._keys),
        }

    def _set_last_step(self, int64_t step):
        """Make ``step=None`` take ``step + 1`` next (a rewind: -1 means 0). Off the
        hot path; the caller has drained the ring first (expman.experiment.rewind)."""
        if step < -1:
            raise ExpmanValueError(f"_set_last_step: {step} is below -1")
        self._last_step = step

    @property
    def last_step(self):
        """The step of the last accepted record, or None."""
        return None if self._last_step < 0 else self._last_step

    def _summary(self):
        """What the writer has put on disk, per metric: ``(metrics_bytes, {name:
        (count, nans, first_step, last_step, last_time_us, first, last, min, max)},
        last_frame_offset)``,
        or None when the writer could not keep a summary. Off the hot path: one
        copy under a lock the producer never takes."""
        cdef int64_t n
        cdef uint64_t nbytes = 0, cap, last_frame = 0
        cdef exlog_keysum *out
        cdef exlog_keysum *e
        cdef Py_ssize_t i
        if self._w is NULL or self._state == FORKED:
            return None
        while True:
            n = exlog_summary_copy(self._w, NULL, 0, &nbytes, &last_frame)
            if n < 0:
                return None
            cap = <uint64_t>n
            out = <exlog_keysum *>malloc((cap + 1) * sizeof(exlog_keysum))
            if out is NULL:
                raise MemoryError()
            try:
                n = exlog_summary_copy(self._w, out, cap, &nbytes, &last_frame)
                if n < 0:
                    return None
                if <uint64_t>n > cap:
                    continue              # the table grew between the two calls
                names = {kid: name for name, kid in self._keys.items()}
                result = {}
                for i in range(<Py_ssize_t>cap):
                    e = &out[i]
                    if e.count and i in names:
                        result[names[i]] = (e.count, e.nans, e.first_step, e.last_step,
                                            e.last_t_us, e.first, e.last, e.min, e.max)
                return nbytes, result, last_frame
            finally:
                free(out)

    # ---- the per-point watchdogs in the writer thread (src/exwatch.h) ----------------
    def _native_watch(self, list rules not None, match not None):
        """Evaluate per-point rules in the writer thread, on every row it frames
        (expman.watch.live; docs/watch.md). ``rules``: one tuple per rule,
        ``(kind, k, window, min_points, direction, maximize, delta, patience)``
        with kind 1 nan, 2 spike, 3 plateau and direction 1 up, 2 down, 3 both;
        their indices name them in alerts. ``match(name) -> (progress, [index,
        ...])``: whether the key's rows are the rank's progress and which rules
        watch it; called now for each key and at each new key's definition."""
        cdef exwatch_rule r[EXWATCH_MAX_RULES]
        cdef uint32_t n = 0
        cdef int bad
        if self._state != OPEN:
            self._raise_state()
        if self._watch_match is not None:
            raise ExpmanValueError("this run's writer is watching already")
        if len(rules) > EXWATCH_MAX_RULES:
            raise ExpmanValueError(f"at most {EXWATCH_MAX_RULES} per-point rules (nan, spike, "
                                   f"plateau) on a run, got {len(rules)}")
        for spec in rules:
            (r[n].kind, r[n].k, r[n].window, r[n].min_points, r[n].direction, r[n].maximize,
             r[n].delta, r[n].patience) = spec
            n += 1
        bad = exwatch_set_rules(self._w.watch, r, n)
        if bad > 0:
            raise ExpmanValueError(f"a per-point rule the writer cannot take: {rules[bad - 1]!r} "
                                   "(a spike window is at most 1,000,000 points)")
        if bad < 0:
            raise ExpmanValueError("this run's writer has its rules already")
        self._watch_match = match
        for name, kid in list(self._keys.items()):
            self._watch_bind(<uint32_t>kid, name, match(name), True)
        exwatch_enable(self._w.watch)

    cdef int _watch_bind(self, uint32_t kid, str name, tuple found, bint strict) except -1:
        """Bind a key id to what ``match`` answered for it; runs no Python code. A
        failure raises when ``strict``, else the writer counts it with lost alerts
        (inside a key's definition, which must not fail half-way)."""
        cdef uint32_t idx[EXWATCH_MAX_RULES]
        cdef uint32_t n = 0
        cdef int err
        cdef list which = found[1]
        for i in which[:EXWATCH_MAX_RULES]:
            idx[n] = <uint32_t>i
            n += 1
        err = exwatch_bind(self._w.watch, kid, 1 if found[0] is True else 0, idx, n)
        if err and strict:
            raise OSError(err, f"expman: cannot watch metric {name!r}: {_os.strerror(err)}")
        return 0

    def _native_watch_take(self):
        """What the writer's watchdogs found since the last call: ``(alerts,
        steps, times, lost)``; an alert is ``(rule, metric, step, value, ref,
        dev, best_step, best)``, ``steps``/``times`` (Unix seconds) the rank's
        new steps in the order logged (the newest EXWATCH_RECENT), ``lost`` the
        alerts dropped so far (a full queue)."""
        cdef exwatch_alert *buf
        cdef int64_t st[EXWATCH_RECENT]
        cdef int64_t tn[EXWATCH_RECENT]
        cdef size_t n, m, i
        cdef uint64_t lost = 0
        if self._w is NULL or self._watch_match is None or self._state == FORKED:
            return [], [], [], 0        # (a forked child: the writer's mutex may be held)
        buf = <exwatch_alert *>malloc(EXWATCH_ALERTS * sizeof(exwatch_alert))
        if buf is NULL:
            raise MemoryError()
        try:
            with nogil:
                n = exwatch_take_alerts(self._w.watch, buf, EXWATCH_ALERTS, &lost)
                m = exwatch_take_steps(self._w.watch, st, tn, EXWATCH_RECENT)
            alerts = []
            if n:
                names = {kid: name for name, kid in self._keys.items()}
                for i in range(n):
                    a = &buf[i]
                    alerts.append((a.rule, names.get(a.key, f"#{a.key}"), a.step, a.value,
                                   a.ref, a.dev, a.best_step, a.best))
            return alerts, [st[i] for i in range(m)], [tn[i] / 1e9 for i in range(m)], lost
        finally:
            free(buf)

    def _pause_writer(self, int paused):
        """Test hook: stall the writer (1: it still drains on close; 2: it ignores
        close too, like a frozen filesystem)."""
        exlog_test_pause(self._w, paused)

    def _set_fault(self, uint64_t write_every=0, uint64_t fsync_every=0, int err=0):
        """Test hook: fail every Nth write / fsync of the writer with ``err``."""
        if self._state != OPEN:
            self._raise_state()
        exlog_test_fault(self._w, write_every, fsync_every, err)


cdef inline int _log_row(Core self, dict metrics, object step, bint advance,
                         int64_t t_ns) except -1:
    """The body of log_metrics, _log_at and _log_side; ``advance``: step=None counts
    and moves; ``t_ns``: the row's time (ns since the epoch), or -1 for now."""
    cdef Py_ssize_t pos = 0, n = PyDict_Size(metrics), i = 0, j
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
    cdef object key = None, value = None     # owned, on the lookup path only

    if self._state != OPEN:
        self._raise_state()
    if self._err_seen != exlog_load_int(&self._w.error_seq):
        self._report_writer_error()
    if step is None:
        _check_next_step(self)      # again when taken: converting may let other threads run
        s = -1                      # taken below, with the GIL held up to the commit
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
        if i >= n:
            # a value's __float__ added keys: stop before writing past the buffers
            raise RuntimeError("log_metrics: the dict changed size during the call")
        if i < KEY_CACHE and (k == self._ckey[i] or (
                PyUnicode_CheckExact(k) and self._ckey[i] is not NULL
                and excore_same_str(k, self._ckey[i]))):
            ids[i] = self._cid[i]       # the same text at the same position: no lookup
        else:
            # A lookup can run Python code (a str subclass's __hash__/__eq__, and
            # str() its __str__) that empties the dict: own the key and value
            # from here on, never the dict's borrowed pointers.
            key = <object>k
            value = <object>v
            v = <PyObject *>value
            ids[i] = self._lookup(key, i)
            if ids[i] == 0xFFFFFFFF:
                if fresh is None:
                    fresh = []
                fresh.append(i)
                fresh.append(str.__str__(key))  # a str subclass is stored as plain str
            k = <PyObject *>key
        if PyFloat_CheckExact(v):
            vals[i] = PyFloat_AS_DOUBLE(v)
        else:
            vals[i] = _value_fast(<object>k, v)
        i += 1
    if i != n:
        raise RuntimeError("log_metrics: the dict changed size during the call")

    ids_bytes = exlog_align8(4 * <uint64_t>n)
    size = EXLOG_REC_HEADER + ids_bytes + 8 * <uint64_t>n
    if 4 * size > self._w.cap:
        _too_large(size, self._w.cap)
    # valid: define new keys first so the stream never uses an unknown id
    if fresh is not None:
        for j in range(0, len(fresh), 2):
            ids[<Py_ssize_t>fresh[j]] = self._define_key(fresh[j + 1])
            if ids[<Py_ssize_t>fresh[j]] == NO_ID:     # no room for it: on_full says drop
                _copy_key_events(self, fresh[:j])
                if step is None:
                    s = _check_next_step(self)
                self._accepted += 1
                self._dropped_full += 1
                exlog_note_producer_drops(self._w, self._dropped_full, self._events_dropped_full)
                if advance:
                    self._last_step = s
                return 0
        _copy_key_events(self, fresh)

    if self._state != OPEN:
        # validation can run Python code (a __float__) during which another
        # thread may close the run: never commit after the writer stopped
        self._raise_state()
    p = exlog_reserve(self._w, size)
    if p is NULL:
        p = self._reserve_slow(size, True)
        if p is NULL:
            if step is None:
                s = _check_next_step(self)
            self._accepted += 1
            self._dropped_full += 1
            exlog_note_producer_drops(self._w, self._dropped_full, self._events_dropped_full)
            if advance:
                self._last_step = s
            return 0
    if step is None:
        # every value is converted and the room reserved: from here to the
        # commit no Python code runs and the GIL is held, so no other thread
        # takes this step (issue 26: tensors' __float__ releases the GIL)
        if self._last_step == 0x7FFFFFFFFFFFFFFF:
            exlog_abandon(self._w)
            _check_next_step(self)
        s = self._last_step + 1
    rec = <exlog_rec *>p
    rec.size = <uint32_t>size
    rec.kind = EXLOG_REC_ROW
    rec.n = <uint32_t>n
    rec.len = 0
    rec.step = s
    rec.t_ns = exlog_wall_ns() if t_ns < 0 else t_ns
    memcpy(p + EXLOG_REC_HEADER, ids, 4 * n)
    memcpy(p + EXLOG_REC_HEADER + ids_bytes, vals, 8 * n)
    exlog_commit(self._w, size)
    self._accepted += 1
    if advance:
        self._last_step = s
    return 0


cdef inline int64_t _check_next_step(Core self) except -1:
    """The step step=None takes now, or ExpmanValueError past 2**63-1."""
    if self._last_step == 0x7FFFFFFFFFFFFFFF:
        raise ExpmanValueError("log_metrics: step=None after step 2**63-1 would overflow")
    return self._last_step + 1


cdef int _copy_key_events(Core self, list fresh) except -1:
    """Each key definition also goes to events.jsonl, so salvage can name the
    points of a frame whose defining frame was destroyed (docs/format.md)."""
    cdef Py_ssize_t j
    for j in range(1, len(fresh), 2):
        name = fresh[j]
        self._log_event({"kind": "key", "id": self._keys[name], "name": name,
                         "time": exlog_wall_ns() / 1e9})
    return 0


# Numeric static (C) types learned on first use by _to_double, each with how to
# read it: numpy.float64 as the float it subclasses, numpy's other scalars
# straight from their value field, anything else through its own nb_float.
# Static types are never freed, so the pointers stay valid without a reference.
cdef enum:
    NUM_TYPES = 16
cdef PyObject *_num_types[NUM_TYPES]
cdef int _num_how[NUM_TYPES]
cdef int _n_num_types = 0


cdef inline double _value_fast(object key, PyObject *v) except? -1.0:
    """A value other than an exact float: exact ints and learned numeric types
    without the generic float() path; anything else (and every error) through
    _to_double."""
    cdef PyObject *tp
    cdef PyObject *f
    cdef double d
    cdef int j
    if PyLong_CheckExact(v):
        if excore_compact_int(v, &d):
            return d
        d = PyLong_AsDouble(v)
        if d != -1.0 or PyErr_Occurred() is NULL:
            return d
        PyErr_Clear()                 # too large: _to_double says so, naming the key
    else:
        tp = excore_type(v)
        for j in range(_n_num_types):
            if _num_types[j] == tp:
                if _num_how[j] != EXCORE_NB_FLOAT:
                    return excore_raw(v, _num_how[j])
                value = <object>v     # owned: nb_float may run code that drops the dict's
                f = excore_nb_float(v)    # reference (kept until we return)
                if f is not NULL:
                    if PyFloat_Check(f):
                        d = PyFloat_AS_DOUBLE(f)
                        Py_DECREF(f)
                        return d
                    Py_DECREF(f)
                else:
                    PyErr_Clear()
                break
        if PyFloat_Check(v) and (excore_heap_type(tp) or _n_num_types == NUM_TYPES):
            return PyFloat_AS_DOUBLE(v)   # a float subclass defined in Python
    value = <object>v                 # owned: a __float__ may drop the dict's reference,
    kept = key                        # and the key's with it
    return _to_double(kept, value)


_NUMPY_HOW = {("f", 4): EXCORE_F4, ("i", 1): EXCORE_I1, ("i", 2): EXCORE_I2,
              ("i", 4): EXCORE_I4, ("i", 8): EXCORE_I8, ("u", 1): EXCORE_U1,
              ("u", 2): EXCORE_U2, ("u", 4): EXCORE_U4, ("u", 8): EXCORE_U8}


cdef int _how_to_read(object tp, object value, double d) except -1:
    """How _value_fast may read this static type's values: as a float, straight
    from a numpy scalar's value field (only when its name, object size and this
    value all agree with the declared layout), or else through nb_float."""
    cdef int how
    if issubclass(tp, float):
        return EXCORE_FLOAT_SUB
    dtype = getattr(value, "dtype", None)
    if (tp.__module__ == "numpy" and dtype is not None
            and type(dtype).__module__.startswith("numpy")):
        how = _NUMPY_HOW.get((getattr(dtype, "kind", None), getattr(dtype, "itemsize", None)),
                             EXCORE_NB_FLOAT)
        if (how != EXCORE_NB_FLOAT and tp.__basicsize__ == excore_raw_size(how)
                and excore_raw(<PyObject *>value, how) == d):
            return how
    return EXCORE_NB_FLOAT


cdef double _to_double(object key, object value) except? -1.0:
    """float(value) for anything numeric, or a TypeError naming the key."""
    global _n_num_types
    if isinstance(value, (str, bytes, bytearray)) or value is None:
        raise ExpmanTypeError(
            f"log_metrics: value for {key!r} must be a number, got {type(value).__name__} ({value!r:.60})")
    if isinstance(value, complex) or getattr(getattr(value, "dtype", None), "kind", None) == "c":
        # numpy's complex scalars convert to their real part with only a warning;
        # Python's complex refuses: refuse both, the same way (never learned below)
        raise ExpmanTypeError(
            f"log_metrics: value for {key!r} must be a real number, got {type(value).__name__} "
            f"({value!r:.60}): log its real and imaginary parts as two metrics")
    tp = type(value)
    if getattr(value, "requires_grad", False) and hasattr(value, "detach"):
        value = value.detach()        # a torch tensor in the graph: no warning, same number
    try:
        d = float(value)
    except OverflowError:
        raise ExpmanValueError(
            f"log_metrics: value for {key!r} is too large for a float64: {value!r:.60}") from None
    except (TypeError, ValueError, RuntimeError) as e:
        if getattr(value, "size", None) == 1 and hasattr(value, "item"):
            # one rule for one element: numpy's [3.0] as torch's tensor([3.0]) (never learned)
            item = value.item()
            if not isinstance(item, (str, bytes)):
                try:
                    return float(item)
                except (TypeError, ValueError, OverflowError):
                    pass
        raise ExpmanTypeError(
            f"log_metrics: value for {key!r} must be a number (or an array or tensor of "
            f"one element), got {type(value).__name__} ({value!r:.60}): {e}") from None
    if (_n_num_types < NUM_TYPES and not (tp.__flags__ & (1 << 9))   # Py_TPFLAGS_HEAPTYPE
            and hasattr(tp, "__float__")
            and not hasattr(tp, "detach")
            and type(value) is tp and d == d):      # a NaN cannot check a layout: learn later
        for j in range(_n_num_types):
            if _num_types[j] == <PyObject *>tp:
                break
        else:
            _num_how[_n_num_types] = _how_to_read(tp, value, d)
            _num_types[_n_num_types] = <PyObject *>tp
            _n_num_types += 1
    return d


cdef bytes _check_new_name(object key):
    """A new metric name's UTF-8 bytes, or ExpmanValueError naming it: empty,
    not encodable, too long, or holding a control character (C0, DEL, C1), which
    would reach terminals and CSV headers raw."""
    cdef Py_UCS4 ch
    if not key:
        raise ExpmanValueError("log_metrics: metric names must not be empty")
    for ch in key:
        if ch < 0x20 or 0x7F <= ch <= 0x9F:
            raise ExpmanValueError(
                f"log_metrics: metric name {key[:60]!r} contains the control character "
                f"U+{<int>ch:04X}")
    try:
        name = key.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ExpmanValueError(f"log_metrics: metric name {key[:60]!r} is not valid UTF-8: {e}") from None
    if len(name) > MAX_KEY_BYTES:
        raise ExpmanValueError(
            f"log_metrics: metric name {key[:40]!r}... is {len(name)} bytes, max {MAX_KEY_BYTES}")
    return name


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
