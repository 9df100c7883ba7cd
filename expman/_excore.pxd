"""Cython declarations of the core's C helpers (src/excore.h)."""

from cpython.object cimport PyObject


cdef extern from "src/excore.h":
    bint excore_same_str(PyObject *a, PyObject *b)
    PyObject *excore_nb_float(PyObject *v)
    PyObject *excore_type(PyObject *v)
    bint excore_heap_type(PyObject *t)
    bint excore_compact_int(PyObject *v, double *out)
    void excore_advise_huge(void *p, size_t n)
    double excore_raw(PyObject *o, int how)
    Py_ssize_t excore_raw_size(int how)
    enum:
        EXCORE_NB_FLOAT
        EXCORE_FLOAT_SUB
        EXCORE_F4
        EXCORE_I1
        EXCORE_I2
        EXCORE_I4
        EXCORE_I8
        EXCORE_U1
        EXCORE_U2
        EXCORE_U4
        EXCORE_U8
