# cython: language_level=3
"""C layout of the CrossEngine (the design in data). Indices are int32 into pools; -1 = none."""
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t


cdef struct Order:
    int64_t price            # price units, > 0, a multiple of tick_size
    uint64_t leaves          # lots still open, > 0 while in the book
    uint64_t filled          # lots filled so far (amend keeps it: total = leaves + filled)
    uint64_t order_id        # symbol_id << 40 | counter, counter in 1 .. 2**40-1; never 0
    uint64_t client_order_id # the client's id, unique per account among live orders
    uint32_t account
    uint8_t side             # '1' buy, '2' sell
    uint8_t flags            # bit0 reduce-only (passed through), bit1 post-only
    uint8_t stp              # self-trade prevention mode, 0..4
    uint8_t live             # 1 while in the book; 0 in the free list
    int32_t level            # index into the level pool
    int32_t prev             # FIFO neighbours within the level
    int32_t next             # (also the free-list link when not live)
    int32_t acct_prev        # this account's live orders in order-id order (cancel all)
    int32_t acct_next
    int32_t acct_slot        # a hint: its account's slot in the account map when it was entered
                             # (account entries stay; a grow moves them: checked on use)
    int32_t id_slot          # its slot in the id map, exact: kept when a deletion's backward
                             # shift or a grow moves it


cdef struct Level:
    int64_t price
    uint64_t total           # sum of leaves of its orders
    uint32_t count           # number of orders
    uint8_t side
    int32_t head             # oldest order (matched first)
    int32_t tail             # newest order
    int32_t next_free        # free-list link
    uint64_t mark            # command number that last listed it as touched


cdef struct Slot:
    uint64_t k1              # key part 1 (order id, client order id, or account)
    uint64_t k2              # key part 2 (account for the client map, else 0)
    int32_t v1               # value (order index, or account list head)
    int32_t v2               # second value (account list tail)
    uint32_t n               # the account's resting orders (account map only; else 0)
    uint8_t used


cdef struct Table:
    Slot* slots
    uint64_t mask            # capacity - 1 (capacity is a power of two)
    uint64_t limit           # capacity / 2: at this many keys, one more grows it first
    int shift                # 64 - log2(capacity): a multiplicative hash's top bits index it
    uint64_t mul             # the odd multiplier, from the process's hash seed (seed_hashes)
    uint64_t size


cdef struct Touched:
    int64_t price
    int32_t level            # the level it was when touched (used while still live there)
    uint8_t side


cdef struct Buf:
    unsigned char* data      # owner's bytes while apply_frame writes its output frame, else malloc'd
    Py_ssize_t len
    Py_ssize_t cap
    PyObject* owner          # the bytes object data lives in (apply_frame), or NULL


cdef enum:
    LB = 128                 # level keys per block of a side's ordered index


cdef struct LBlock:
    int32_t n                # keys in use, keys[0 .. n-1] ascending
    int64_t keys[LB]         # sort keys (price for bids, -price for asks)
    int32_t lv[LB]           # their level indices


cdef struct Side:
    # The side's levels ordered by key, best last: a two-level blocked array (a B+tree of
    # height two). A new level costs a search over the block firsts and a move of at most LB
    # keys inside one block, whatever the number of levels; the best is the last key of the
    # last block.
    LBlock** blocks          # ascending: every key of blocks[b] < every key of blocks[b + 1]
    int64_t* firsts          # firsts[b] = blocks[b].keys[0], side by side for the search
    int32_t nb               # blocks in use
    int32_t cap              # capacity of blocks and firsts
    int32_t n                # levels
