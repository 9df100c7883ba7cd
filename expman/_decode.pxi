"""Decoding metrics files into columns (included by _core.pyx; see docs/format.md)."""

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
        if bytes(data[:8]) != EXLOG_FILE_MAGIC[:8]:
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
