"""Min/max decimation for charts (included by _core.pyx; used by expman.dashboard).

A chart of P pixels cannot show more than a few points per pixel, but it must
not lose a spike: each pixel's bucket keeps its first, last, minimum and
maximum point (and one NaN, drawn as a gap), so the drawn envelope is exactly
that of every point. The global minimum and maximum are the extremes of their
buckets, and the first and last point are always kept. Few points: all of them.
"""

from libc.stdlib cimport qsort

ctypedef fused xcoord:       # steps (int64) are bucketed as they are, without a float copy
    double
    int64_t


cdef int _cmp_index(const void *a, const void *b) noexcept nogil:
    cdef Py_ssize_t x = (<const Py_ssize_t *>a)[0], y = (<const Py_ssize_t *>b)[0]
    return (x > y) - (x < y)


cdef inline void _merge(Py_ssize_t *buckets, Py_ssize_t pixels, Py_ssize_t b, Py_ssize_t first,
                        Py_ssize_t last, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t nan,
                        const double *y) noexcept nogil:
    """Fold one run of points of bucket b into its slots (first, last, min, max, nan).
    Runs come in index order, so the first run's first and the last run's last win."""
    cdef Py_ssize_t *slot = buckets + b
    if slot[0] < 0:
        slot[0] = first
    slot[pixels] = last
    if lo >= 0 and (slot[2 * pixels] < 0 or y[lo] < y[slot[2 * pixels]]):
        slot[2 * pixels] = lo
    if hi >= 0 and (slot[3 * pixels] < 0 or y[hi] > y[slot[3 * pixels]]):
        slot[3 * pixels] = hi
    if nan >= 0 and slot[4 * pixels] < 0:
        slot[4 * pixels] = nan


cdef Py_ssize_t _decimate_into(const xcoord[::1] x, const double[::1] y, Py_ssize_t pixels,
                               Py_ssize_t *buckets, Py_ssize_t *out) noexcept nogil:
    """Fill out with the kept indices, sorted and unique; returns how many.
    buckets holds 5 * pixels slots (first, last, min, max, nan), out 5 * pixels + 2."""
    cdef Py_ssize_t n = x.shape[0], i, b = 0, k = 0, j, cur
    cdef Py_ssize_t c_first = -1, c_last = -1, c_lo = -1, c_hi = -1, c_nan = -1
    cdef double xmin = 0.0, xmax = 0.0, scale, v, xi, lo_v = 0.0, hi_v = 0.0
    cdef bint seen = False
    for i in range(5 * pixels):
        buckets[i] = -1
    for i in range(n):
        xi = <double>x[i]
        if xi == xi and xi - xi == 0.0:         # finite
            if not seen or xi < xmin:
                xmin = xi
            if not seen or xi > xmax:
                xmax = xi
            seen = True
    scale = pixels / (xmax - xmin) if xmax > xmin else 0.0
    # Points of one bucket usually come in a row (x sorted): keep the bucket being
    # filled in locals and merge it into the arrays when the bucket changes.
    cur = -1
    for i in range(n + 1):
        if i < n:
            xi = <double>x[i]
            if xi == xi and xi - xi == 0.0:
                b = <Py_ssize_t>((xi - xmin) * scale)
                if b >= pixels:
                    b = pixels - 1
                elif b < 0:
                    b = 0
            else:
                b = 0
        if i == n or b != cur:
            if cur >= 0:
                _merge(buckets, pixels, cur, c_first, c_last, c_lo, c_hi, c_nan, &y[0])
            if i == n:
                break
            cur = b
            c_first = i
            c_lo = c_hi = c_nan = -1
        c_last = i
        v = y[i]
        if v != v:
            if c_nan < 0:
                c_nan = i
        else:
            if c_lo < 0 or v < lo_v:
                c_lo = i
                lo_v = v
            if c_hi < 0 or v > hi_v:
                c_hi = i
                hi_v = v
    out[k] = 0
    out[k + 1] = n - 1
    k = 2
    for i in range(5 * pixels):
        if buckets[i] >= 0:
            out[k] = buckets[i]
            k += 1
    qsort(out, k, sizeof(Py_ssize_t), _cmp_index)
    j = 0
    for i in range(k):
        if i == 0 or out[i] != out[j - 1]:
            out[j] = out[i]
            j += 1
    return j


def decimate_minmax(const xcoord[::1] x not None, const double[::1] y not None, Py_ssize_t pixels):
    """Indices (an ``array('q')``, ascending) of the points to draw for a chart
    ``pixels`` wide: per x-bucket first, last, min, max and a NaN; every index
    when there are at most 4 points per pixel. x (float64 or int64) need not be sorted."""
    cdef Py_ssize_t n = x.shape[0], k, i
    cdef Py_ssize_t *buckets
    cdef Py_ssize_t *out
    cdef array result
    if y.shape[0] != n:
        raise ExpmanValueError(f"decimate_minmax: x has {n} points but y has {y.shape[0]}")
    if pixels < 1 or pixels > 1_000_000:
        raise ExpmanValueError(f"decimate_minmax: pixels must be 1..1000000, got {pixels}")
    if n <= 4 * pixels:
        result = clone(array("q"), n, False)
        for i in range(n):
            result.data.as_longlongs[i] = i
        return result
    buckets = <Py_ssize_t *>malloc(5 * pixels * sizeof(Py_ssize_t))
    out = <Py_ssize_t *>malloc((5 * pixels + 2) * sizeof(Py_ssize_t))
    if buckets is NULL or out is NULL:
        free(buckets)
        free(out)
        raise MemoryError()
    try:
        with nogil:
            k = _decimate_into(x, y, pixels, buckets, out)
        result = clone(array("q"), k, False)
        for i in range(k):
            result.data.as_longlongs[i] = out[i]
    finally:
        free(buckets)
        free(out)
    return result
