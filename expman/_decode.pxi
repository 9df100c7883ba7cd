"""Decoding metrics files into columns (included by _core.pyx; see docs/format.md).

A metrics file may be damaged, crafted or written by another process, so the
decoder promises, for any bytes (docs/durability.md, "Hostile input"):

- memory: every allocation is bounded by the data's size (points need 8 bytes
  each, key ids are mapped to dense slots, never used as array indexes);
- time: O(n log n) for n bytes. Each byte is decoded at most once; the search
  for the next valid frame after damage checks every offset at most once, and
  checks a candidate's payload CRC in O(log n) from prefix CRCs (CRC-32 is
  linear, exlog_crc32_combine) instead of re-reading the payload;
- meaning: a key definition with an id >= 2**32, a name that is empty or not
  UTF-8, an id already bound to another name, or a name already bound to
  another id makes its frame corrupt (repeating an identical definition is
  allowed). A row id with no definition is counted in ``unknown_points``.
"""



cdef struct Vec:
    char *data
    Py_ssize_t len, cap      # in bytes
    PyObject *arr            # NULL: data is malloc'd; else the array.array that owns it

cdef int vec_reserve(Vec *v, Py_ssize_t extra) except -1:
    """Room for `extra` more bytes, so a frame's points are stored without checks."""
    cdef Py_ssize_t cap
    cdef char *d
    if v.len + extra > v.cap:
        cap = v.cap * 2 if v.cap else 4096
        if cap < v.len + extra:
            cap = v.len + extra
        if v.arr is not NULL:
            resize(<array>v.arr, cap // (<array>v.arr).ob_descr.itemsize + 1)
            v.data = (<array>v.arr).data.as_chars
            v.cap = cap
        else:
            d = <char *>realloc(v.data, cap)
            if d is NULL:
                raise MemoryError()
            v.data = d
            v.cap = cap
        excore_advise_huge(v.data, <size_t>v.cap)
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
    """Bytes used, or -1 if truncated, longer than 10 bytes or above 2**64-1."""
    cdef uint64_t v = 0
    cdef Py_ssize_t k = 0
    cdef int shift = 0
    while k < n and k < 10:
        if k == 9 and p[k] > 1:
            return -1                   # the 10th byte holds only bit 63
        v |= (<uint64_t>(p[k] & 0x7F)) << shift
        if p[k] < 0x80:
            out[0] = v
            return k + 1
        shift += 7
        k += 1
    return -1

cdef inline int64_t unzigzag(uint64_t v) noexcept nogil:
    return <int64_t>((v >> 1) ^ (<uint64_t>0 - (v & 1)))

cdef inline int64_t add_wrap(int64_t a, int64_t b) noexcept nogil:
    """a + b modulo 2**64: the format's delta arithmetic, never signed overflow."""
    return <int64_t>(<uint64_t>a + <uint64_t>b)


# ---- finding frames ------------------------------------------------------------------

cdef enum:
    CHUNK = 64            # prefix CRCs are kept every CHUNK bytes (n / 16 bytes of memory)
    DIRECT_CRC = 1024     # payloads up to this size are simply checksummed


cdef struct Scan:
    const unsigned char *d
    Py_ssize_t n
    uint32_t *chunk_crc   # crc32(d[0 : i*CHUNK]), built at the first damage; NULL before
    Py_ssize_t nv_from, nv_at   # no valid frame starts in [nv_from, nv_at); nv_at is valid or n
    Py_ssize_t last_nonzero     # index of the last nonzero byte, -1 if none


cdef int scan_prepare(Scan *s) except -1:
    """Prefix CRCs and the zero tail: O(n) once, so damage costs no rescans."""
    cdef Py_ssize_t i, nchunks
    cdef uint32_t crc = 0
    if s.chunk_crc is not NULL:
        return 0
    nchunks = s.n // CHUNK + 1
    s.chunk_crc = <uint32_t *>malloc(nchunks * sizeof(uint32_t))
    if s.chunk_crc is NULL:
        raise MemoryError()
    with nogil:
        s.chunk_crc[0] = 0
        for i in range(1, nchunks):
            crc = exlog_crc32(crc, s.d + (i - 1) * CHUNK, CHUNK)
            s.chunk_crc[i] = crc
        i = s.n - 1
        while i >= 0 and s.d[i] == 0:
            i -= 1
        s.last_nonzero = i
    return 0


cdef inline uint32_t prefix_crc(const Scan *s, Py_ssize_t a) noexcept nogil:
    """crc32(d[0:a]) from the nearest chunk checkpoint."""
    cdef Py_ssize_t c = a // CHUNK
    return exlog_crc32(s.chunk_crc[c], s.d + c * CHUNK, a - c * CHUNK)


cdef inline uint32_t range_crc(const Scan *s, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """crc32(d[a:b]): directly when short or before any damage, else in O(log n)."""
    if s.chunk_crc is NULL or b - a <= DIRECT_CRC:
        return exlog_crc32(0, s.d + a, b - a)
    # prefix(b) = combine(prefix(a), crc(a:b), b-a) = shift(prefix(a)) ^ crc(a:b)
    return prefix_crc(s, b) ^ exlog_crc32_combine(prefix_crc(s, a), 0, b - a)


cdef int frame_ok(const Scan *s, Py_ssize_t pos) noexcept nogil:
    """1 if a whole valid frame starts at pos, 0 if not, -1 if it may be torn (runs past EOF)."""
    cdef const unsigned char *d = s.d
    cdef Py_ssize_t n = s.n
    cdef uint32_t length = 0
    if n - pos < 8:
        return -1
    length = get_u32(d + pos)
    if exlog_crc32(0, d + pos, 4) != get_u32(d + pos + 4):
        return 0
    if <Py_ssize_t>length > n - pos - EXLOG_FRAME_OVERHEAD:
        return -1
    if range_crc(s, pos + 8, pos + 8 + length) != get_u32(d + pos + 8 + length):
        return -1 if pos + EXLOG_FRAME_OVERHEAD + <Py_ssize_t>length == n else 0
    return 1


cdef Py_ssize_t next_valid(Scan *s, Py_ssize_t start) noexcept nogil:
    """The first offset >= start where a whole valid frame starts, or n.

    Callers ask with growing `start`; the answer is remembered, so every offset
    is checked at most once per decode."""
    cdef Py_ssize_t pos
    if s.nv_from <= start <= s.nv_at:
        return s.nv_at
    pos = start
    while pos <= s.n - EXLOG_FRAME_OVERHEAD and frame_ok(s, pos) != 1:
        pos += 1
    if pos > s.n - EXLOG_FRAME_OVERHEAD:
        pos = s.n
    s.nv_from = start
    s.nv_at = pos
    return pos


# ---- decoding payloads ---------------------------------------------------------------

cdef struct Long:
    Vec ids, steps, times, values


cdef int decode_payload(const unsigned char *p, Py_ssize_t n, Long *out, dict keys,
                        dict names, uint64_t *rows) except -1:
    """Decode one checksummed payload. Returns 1 if well formed, 0 if not
    (then `out`, `keys` and `names` are as they were)."""
    cdef Py_ssize_t k = 0, used, mark_ids = out.ids.len, mark_vals = out.values.len
    cdef Py_ssize_t mark_steps = out.steps.len, mark_times = out.times.len
    cdef uint64_t u, h, npts, kid, j, nrows = 0, prev_n = 0
    cdef Py_ssize_t row_start, prev_start = -1   # where the previous row's ids are in out
    cdef bint same, bad = False, complete = False
    cdef int64_t step = 0, t_us = 0
    cdef double t, val
    cdef dict new_ids = {}, new_names = {}      # this frame's definitions, kept if it is whole
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
            if not _define(h >> 1, p + k, <Py_ssize_t>u, keys, names, new_ids, new_names):
                bad = True
                break
            k += u
            continue
        npts = h >> 2
        same = (h & 3) == EXLOG_ROW_SAME_KEYS
        if same and (prev_start < 0 or npts != prev_n):
            break                               # nothing (or something else) to repeat
        used = get_varint(p + k, n - k, &u)
        if used < 0: break
        k += used
        step = add_wrap(step, unzigzag(u))
        used = get_varint(p + k, n - k, &u)
        if used < 0: break
        k += used
        t_us = add_wrap(t_us, unzigzag(u))
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
    else:
        complete = True                         # no record broke off
    if bad or not complete or k != n:
        out.ids.len = mark_ids
        out.steps.len = mark_steps
        out.times.len = mark_times
        out.values.len = mark_vals
        return 0
    keys.update(new_ids)
    names.update(new_names)
    rows[0] += nrows
    return 1


cdef bint _define(uint64_t kid, const unsigned char *p, Py_ssize_t n, dict keys, dict names,
                  dict new_ids, dict new_names) except -1:
    """Stage one key definition; False if it makes the frame corrupt (docs/format.md)."""
    if kid > <uint64_t>0xFFFFFFFFU or n == 0:
        return False
    try:
        name = (<const char *>p)[:n].decode("utf-8")
    except UnicodeDecodeError:
        return False
    key = <object>kid
    bound = new_ids.get(key, keys.get(key))
    if bound is not None:
        return bound == name            # the same definition again is harmless
    if name in new_names or name in names:
        return False                    # one name, two ids: never merged
    new_ids[key] = name
    new_names[name] = key
    return True


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
    cdef Py_ssize_t n = data.shape[0], pos = offset, start, end_ok, nxt
    cdef Long out
    cdef Scan scan
    cdef uint64_t rows = 0, frames = 0, corrupt = 0, torn = 0, unknown = 0
    cdef uint32_t length = 0
    cdef int ok
    cdef list corrupt_at = []
    cdef dict names
    if offset != 0 and not EXLOG_HEADER_SIZE <= offset <= n:
        raise ExpmanValueError(
            f"decode_metrics: offset {offset} is not 0 or within the data "
            f"({EXLOG_HEADER_SIZE}..{n})")
    keys, names = _checked_keys(keys)
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
    # room for every point the data can hold (8 bytes each at least), reserved
    # once: pages never written are never touched, and no frame moves the columns.
    # steps, times and values live in arrays that become a metric's columns as
    # they are when all points are one metric's (see _group)
    cdef array steps_a = clone(array("q"), 0, False)
    cdef array times_a = clone(array("d"), 0, False)
    cdef array values_a = clone(array("d"), 0, False)
    out.steps.arr = <PyObject *>steps_a
    out.times.arr = <PyObject *>times_a
    out.values.arr = <PyObject *>values_a
    if n > pos:
        vec_reserve(&out.ids, 4 * ((n - pos) // 8 + 1))
        vec_reserve(&out.steps, 8 * ((n - pos) // 8 + 1))
        vec_reserve(&out.times, 8 * ((n - pos) // 8 + 1))
        vec_reserve(&out.values, 8 * ((n - pos) // 8 + 1))
    scan.d = d
    scan.n = n
    scan.chunk_crc = NULL
    scan.nv_from = scan.nv_at = -1
    scan.last_nonzero = -1
    end_ok = pos
    try:
        while pos < n:
            ok = frame_ok(&scan, pos)
            if ok == 1:
                length = get_u32(d + pos)
                if decode_payload(d + pos + 8, length, &out, keys, names, &rows):
                    frames += 1
                    pos += EXLOG_FRAME_OVERHEAD + length
                    end_ok = pos
                    continue
            scan_prepare(&scan)
            if pos > scan.last_nonzero or (ok == -1 and next_valid(&scan, pos + 1) == n):
                torn = n - pos         # the last frame was cut short by a crash
                break
            # damaged in the middle: report, and with salvage resynchronise
            corrupt_at.append(pos)
            if not salvage:
                corrupt += n - pos
                break
            if ok == 1:
                # checksums hold but the payload breaks the format: the frame is
                # one corrupt unit (decoding inside it again could not end linearly)
                nxt = pos + EXLOG_FRAME_OVERHEAD + length
            else:
                nxt = next_valid(&scan, pos + 1)
            corrupt += nxt - pos
            pos = nxt
        columns = _group(&out, keys, &unknown)
    finally:
        free(out.ids.data)          # the other columns belong to their arrays
        free(scan.chunk_crc)
    report.update(frames=frames, rows=rows, points=sum(len(c[0]) for c in columns.values()),
                  torn_bytes=torn, corrupt_bytes=corrupt, corrupt_at=corrupt_at,
                  unknown_points=unknown, end=end_ok)
    return columns, keys, report


cdef tuple _checked_keys(dict keys):
    """A copy of a caller's key table and its reverse, or ExpmanValueError."""
    cdef dict out = {}, names = {}
    if keys is None:
        return out, names
    for kid, name in keys.items():
        if (not isinstance(kid, int) or isinstance(kid, bool) or not 0 <= kid <= 0xFFFFFFFF
                or not isinstance(name, str)):
            raise ExpmanValueError(
                f"decode_metrics: keys must map ids 0..2**32-1 to names, got {kid!r}: {name!r:.60}")
        if name in names:
            raise ExpmanValueError(
                f"decode_metrics: keys binds the name {name!r:.60} to two ids ({names[name]}, {kid})")
        out[int(kid)] = name
        names[name] = int(kid)
    return out, names


cdef void long_init(Long *out) noexcept:
    out.ids.data = out.steps.data = out.times.data = out.values.data = NULL
    out.ids.len = out.steps.len = out.times.len = out.values.len = 0
    out.ids.cap = out.steps.cap = out.times.cap = out.values.cap = 0
    out.ids.arr = out.steps.arr = out.times.arr = out.values.arr = NULL


cdef inline Py_ssize_t slot_of(uint32_t kid, const Py_ssize_t *direct, Py_ssize_t ndirect,
                               const uint32_t *sorted_ids, Py_ssize_t nkeys) noexcept nogil:
    """The dense slot of a defined id, or -1: a table when ids are dense, else a binary search."""
    cdef Py_ssize_t lo = 0, hi = nkeys, mid
    if direct is not NULL:
        return direct[kid] if kid < <uint64_t>ndirect else -1
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_ids[mid] < kid:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < nkeys and sorted_ids[lo] == kid else -1


cdef dict _group(Long *out, dict keys, uint64_t *unknown):
    """Scatter the long columns into one (steps, times, values) per key.

    Memory is proportional to the number of keys and points, never to the
    size of an id: ids map to dense slots."""
    cdef Py_ssize_t npts = out.ids.len // 4, i, s, nkeys = len(keys), ndirect = 0, whole = -1
    cdef const uint32_t *ids = <const uint32_t *>out.ids.data
    cdef const int64_t *steps = <const int64_t *>out.steps.data
    cdef const double *times = <const double *>out.times.data
    cdef const double *values = <const double *>out.values.data
    cdef array tmpl_q = array("q"), tmpl_d = array("d")
    cdef list order = sorted(keys)
    cdef uint32_t *sorted_ids = <uint32_t *>malloc((nkeys + 1) * sizeof(uint32_t))
    cdef Py_ssize_t *direct = NULL
    cdef Py_ssize_t *counts = <Py_ssize_t *>malloc((nkeys + 1) * sizeof(Py_ssize_t))
    cdef int64_t **ps = <int64_t **>malloc((nkeys + 1) * sizeof(void *))
    cdef double **pt = <double **>malloc((nkeys + 1) * sizeof(void *))
    cdef double **pv = <double **>malloc((nkeys + 1) * sizeof(void *))
    cdef dict result = {}
    try:
        if sorted_ids is NULL or counts is NULL or ps is NULL or pt is NULL or pv is NULL:
            raise MemoryError()
        for i in range(nkeys):
            sorted_ids[i] = <uint32_t>order[i]
            counts[i] = 0
        if nkeys and sorted_ids[nkeys - 1] < 4 * <uint64_t>nkeys + 1024:
            ndirect = sorted_ids[nkeys - 1] + 1
            direct = <Py_ssize_t *>malloc(ndirect * sizeof(Py_ssize_t))
            if direct is NULL:
                raise MemoryError()
            for i in range(ndirect):
                direct[i] = -1
            for i in range(nkeys):
                direct[sorted_ids[i]] = i
        with nogil:
            for i in range(npts):
                s = slot_of(ids[i], direct, ndirect, sorted_ids, nkeys)
                if s >= 0:
                    counts[s] += 1
                else:
                    unknown[0] += 1
        for i in range(nkeys):
            if npts and counts[i] == npts:
                # every point is this metric's: the long columns are its columns,
                # trimmed, and there is nothing to scatter
                for col in (<array>out.steps.arr, <array>out.times.arr, <array>out.values.arr):
                    resize(<array>col, npts)
                whole = i
                result[keys[order[i]]] = (<array>out.steps.arr, <array>out.times.arr,
                                          <array>out.values.arr)
                continue
            cols = (clone(tmpl_q, counts[i], False), clone(tmpl_d, counts[i], False),
                    clone(tmpl_d, counts[i], False))
            result[keys[order[i]]] = cols     # names are unique (decode_payload, _checked_keys)
            ps[i] = <int64_t *>(<array>cols[0]).data.as_voidptr
            pt[i] = <double *>(<array>cols[1]).data.as_voidptr
            pv[i] = <double *>(<array>cols[2]).data.as_voidptr
            excore_advise_huge(ps[i], 8 * <size_t>counts[i])
            excore_advise_huge(pt[i], 8 * <size_t>counts[i])
            excore_advise_huge(pv[i], 8 * <size_t>counts[i])
            counts[i] = 0             # now the fill position
        if whole >= 0:
            return result
        with nogil:
            for i in range(npts):
                s = slot_of(ids[i], direct, ndirect, sorted_ids, nkeys)
                if s < 0:
                    continue
                ps[s][counts[s]] = steps[i]
                pt[s][counts[s]] = times[i]
                pv[s][counts[s]] = values[i]
                counts[s] += 1
        return result
    finally:
        free(sorted_ids)
        free(direct)
        free(counts)
        free(ps)
        free(pt)
        free(pv)
