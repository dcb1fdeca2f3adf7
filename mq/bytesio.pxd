# cython: language_level=3
"""Unaligned little-endian loads and stores, shared by every compiled codec and engine.
memcpy of a constant size compiles to one move; the host is checked to be little-endian where
these are used (mq/_frame.pyx raises ImportError otherwise)."""
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef inline uint64_t rd64(const unsigned char* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v

cdef inline int64_t rdi64(const unsigned char* p) noexcept nogil:
    cdef int64_t v
    memcpy(&v, p, 8)
    return v

cdef inline uint32_t rd32(const unsigned char* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v

cdef inline uint16_t rd16(const unsigned char* p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v

cdef inline void wr64(unsigned char* p, uint64_t v) noexcept nogil:
    memcpy(p, &v, 8)

cdef inline void wri64(unsigned char* p, int64_t v) noexcept nogil:
    memcpy(p, &v, 8)

cdef inline void wr32(unsigned char* p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)

cdef inline void wr16(unsigned char* p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)
