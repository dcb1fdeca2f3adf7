# cython: language_level=3
"""What mq._frame offers compiled callers: the sequenced frame check, in C."""
from libc.stdint cimport uint64_t


cdef Py_ssize_t scan_frame(const unsigned char* p, Py_ssize_t n, uint64_t* first) except -1
