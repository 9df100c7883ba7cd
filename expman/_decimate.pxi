"""Min/max decimation for charts (included by _core.pyx; used by expman.dashboard).

A chart of P pixels cannot show more than a few points per pixel, but it must
not lose a spike: each pixel's bucket keeps its first, last, minimum and
maximum point (and one NaN, drawn as a gap), so the drawn envelope is exactly
that of every point. The global minimum and maximum are the extremes of their
buckets, and the first and last point are always kept. Few points: all of them.
"""

from libc.stdlib cimport qsort


cdef int _cmp_index(const void *a, const void *b) noexcept nogil:
    cdef Py_ssize_t x = (<const Py_ssize_t *>a)[0], y = (<const Py_ssize_t *>b)[0]
    return (x > y) - (x < y)


cdef Py_ssize_t _decimate_into(const double[:] x, const double[:] y, Py_ssize_t pixels,
                               Py_ssize_t *buckets, Py_ssize_t *out) noexcept nogil:
    """Fill out with the kept indices, sorted and unique; returns how many.
    buckets holds 5 * pixels slots (first, last, min, max, nan), out 5 * pixels + 2."""
    cdef Py_ssize_t n = x.shape[0], i, b, k = 0, j
    cdef Py_ssize_t *first = buckets
    cdef Py_ssize_t *last = buckets + pixels
    cdef Py_ssize_t *lo = buckets + 2 * pixels
    cdef Py_ssize_t *hi = buckets + 3 * pixels
    cdef Py_ssize_t *nan = buckets + 4 * pixels
    cdef double xmin = 0.0, xmax = 0.0, scale, v, xi
    cdef bint seen = False
    for i in range(5 * pixels):
        buckets[i] = -1
    for i in range(n):
        xi = x[i]
        if xi == xi and xi - xi == 0.0:         # finite
            if not seen or xi < xmin:
                xmin = xi
            if not seen or xi > xmax:
                xmax = xi
            seen = True
    scale = pixels / (xmax - xmin) if xmax > xmin else 0.0
    for i in range(n):
        xi = x[i]
        if xi == xi and xi - xi == 0.0:
            b = <Py_ssize_t>((xi - xmin) * scale)
            if b >= pixels:
                b = pixels - 1
            elif b < 0:
                b = 0
        else:
            b = 0
        if first[b] < 0:
            first[b] = i
        last[b] = i
        v = y[i]
        if v != v:
            if nan[b] < 0:
                nan[b] = i
            continue
        if lo[b] < 0 or v < y[lo[b]]:
            lo[b] = i
        if hi[b] < 0 or v > y[hi[b]]:
            hi[b] = i
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


def decimate_minmax(const double[:] x not None, const double[:] y not None, Py_ssize_t pixels):
    """Indices (an ``array('q')``, ascending) of the points to draw for a chart
    ``pixels`` wide: per x-bucket first, last, min, max and a NaN; every index
    when there are at most 4 points per pixel. x need not be sorted."""
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
