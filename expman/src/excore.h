/* excore.h: the compiled core's few C helpers that Cython cannot spell
 * cheaply (the hot loop's string compare, reading numpy scalars in place,
 * huge-page advice for the decoder). Needs Python.h first; declared for
 * Cython in _excore.pxd. Holds no state. */
#ifndef EXCORE_H
#define EXCORE_H

#include <stdint.h>
#include <string.h>

/* The hot loop's two comparisons that Cython cannot spell cheaply. */
static inline int excore_same_str(PyObject *a, PyObject *b) {
    /* Equal text of two exact str, without a dict lookup. Both are dict keys,
     * so their hashes are cached: hash and length reject a different key at
     * once. An equal key costs one compare of its bytes in 8-byte words, the
     * last word overlapping (keys are short: usually one or two words). */
    PyASCIIObject *x = (PyASCIIObject *)a, *y = (PyASCIIObject *)b;
    const unsigned char *p, *q;
    size_t n;
    uint64_t u, v;
    uint32_t s, t;
    if (x->hash != y->hash || x->length != y->length)
        return 0;                 /* an uncached hash (-1) falls to the lookup */
    n = (size_t)x->length;
    if (x->state.ascii && x->state.compact && y->state.ascii && y->state.compact) {
        p = (const unsigned char *)(x + 1);      /* compact ASCII: text follows */
        q = (const unsigned char *)(y + 1);
    } else {
        if (!PyUnicode_IS_COMPACT(a) || !PyUnicode_IS_COMPACT(b)
                || PyUnicode_KIND(a) != PyUnicode_KIND(b))
            return 0;
        p = (const unsigned char *)PyUnicode_DATA(a);
        q = (const unsigned char *)PyUnicode_DATA(b);
        n *= (size_t)PyUnicode_KIND(a);
    }
    if (n >= 8) {
        for (; n > 8; n -= 8, p += 8, q += 8) {
            memcpy(&u, p, 8);
            memcpy(&v, q, 8);
            if (u != v) return 0;
        }
        memcpy(&u, p + n - 8, 8);
        memcpy(&v, q + n - 8, 8);
        return u == v;
    }
    if (n >= 4) {
        memcpy(&s, p, 4);
        memcpy(&t, q, 4);
        if (s != t) return 0;
        memcpy(&s, p + n - 4, 4);
        memcpy(&t, q + n - 4, 4);
        return s == t;
    }
    while (n--)
        if (*p++ != *q++) return 0;
    return 1;
}
static inline PyObject *excore_nb_float(PyObject *v) {
    /* the type's own float conversion, without float()'s generic machinery */
    PyNumberMethods *nm = Py_TYPE(v)->tp_as_number;
    return (nm && nm->nb_float) ? nm->nb_float(v) : NULL;
}
static inline PyObject *excore_type(PyObject *v) { return (PyObject *)Py_TYPE(v); }

/* Ask for transparent huge pages on a large buffer the decoder is about to
 * fill: one page fault per 2 MiB instead of per 4 KiB (as numpy does for its
 * arrays). Linux only; a no-op elsewhere and wherever it is refused. */
#if defined(__linux__)
#include <sys/mman.h>
#endif
static inline void excore_advise_huge(void *p, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)1 << 21;
    uintptr_t a = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    uintptr_t b = ((uintptr_t)p + n) & ~(huge - 1);
    if (n >= 4 * huge && b > a)
        (void)madvise((void *)a, (size_t)(b - a), MADV_HUGEPAGE);
#else
    (void)p; (void)n;
#endif
}
static inline int excore_compact_int(PyObject *v, double *out) {
    /* An exact int of one machine word, read in place where CPython says how
     * (3.12+); elsewhere 0, and the caller asks PyLong_AsDouble. */
#if PY_VERSION_HEX >= 0x030C0000
    if (PyUnstable_Long_IsCompact((PyLongObject *)v)) {
        *out = (double)PyUnstable_Long_CompactValue((PyLongObject *)v);
        return 1;
    }
#else
    (void)v; (void)out;
#endif
    return 0;
}
static inline int excore_heap_type(PyObject *t) {
    return PyType_HasFeature((PyTypeObject *)t, Py_TPFLAGS_HEAPTYPE);
}

/* numpy's scalar objects are {PyObject_HEAD; T obval;}: its public C API
 * (PyArrayScalar_VAL). Declared here so reading one needs no numpy headers;
 * _to_double checks name, size and value before a type may use them. One
 * list of the widths makes the structs, the enum and both switches. */
#define EXCORE_SCALARS(X) X(F4, float) X(I1, int8_t) X(I2, int16_t) \
    X(I4, int32_t) X(I8, int64_t) X(U1, uint8_t) X(U2, uint16_t) \
    X(U4, uint32_t) X(U8, uint64_t)
#define EXCORE_STRUCT(k, T) typedef struct { PyObject_HEAD T obval; } excore_s##k;
#define EXCORE_ENUM(k, T) EXCORE_##k,
#define EXCORE_READ(k, T) case EXCORE_##k: return (double)((excore_s##k *)o)->obval;
#define EXCORE_SIZE(k, T) case EXCORE_##k: return (Py_ssize_t)sizeof(excore_s##k);
EXCORE_SCALARS(EXCORE_STRUCT)
enum { EXCORE_NB_FLOAT = 0, EXCORE_FLOAT_SUB, EXCORE_SCALARS(EXCORE_ENUM) };
static inline double excore_raw(PyObject *o, int how) {
    switch (how) {
    case EXCORE_FLOAT_SUB: return PyFloat_AS_DOUBLE(o);
    EXCORE_SCALARS(EXCORE_READ)
    default: return 0.0;          /* never: _how_to_read gives only the above */
    }
}
static inline Py_ssize_t excore_raw_size(int how) {
    switch (how) {
    EXCORE_SCALARS(EXCORE_SIZE)
    default: return -1;
    }
}

#endif /* EXCORE_H */
