# cython: language_level=3
"""C layout of the CrossEngine (the design in data). Indices are int32 into pools; -1 = none."""
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


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
    # next, acct_next and id_slot side by side: a resting order sets all three to -1, two
    # stores (8 and 4 bytes) where there were three
    int32_t acct_next        # this account's live orders in order-id order (cancel all)
    int32_t id_slot          # its slot in the id map, exact: kept when a deletion's backward
                             # shift or a grow moves it
    int32_t acct_prev
    int32_t acct_slot        # a hint: its account's slot in the account map when it was entered
                             # (account entries stay; a grow moves them: checked on use)


cdef struct Level:
    int64_t price
    uint64_t total           # sum of leaves of its orders
    uint32_t count           # number of orders
    uint8_t side
    uint8_t linked           # 1 while in its side's level map and rung (0 in the free list)
    uint16_t tick            # its tick in its rung (0 .. 2**RB - 1)
    int32_t head             # oldest order (matched first)
    int32_t tail             # newest order
    int32_t next_free        # free-list link
    int32_t rung             # its rung in its side's rung pool (while live)
    uint64_t mark            # command number that last listed it as touched
    # to 64 bytes (engine.pyx checks): levels[lv] is then a shift, not a multiply by 48 (two
    # instructions), in every level-map probe and FIFO append
    char pad[16]


cdef struct Slot:
    uint64_t k1              # key part 1 (order id, client order id, or account)
    uint64_t k2              # key part 2 (account for the client map, else 0)
    int32_t v1               # value (order index, or account list head)
    int32_t v2               # second value (account list tail)
    uint32_t n               # the account's resting orders (account map only; else 0)
    uint8_t used
    uint8_t shard            # the account's route bit (account map only): account % n_shards,
                             # 63 for LIQ_ACCOUNT; set when the account enters the map


cdef struct Table:
    Slot* slots
    uint64_t mask            # capacity - 1 (capacity is a power of two)
    uint64_t limit           # capacity / 2: at this many keys, one more grows it first
    int shift                # 64 - log2(capacity): a multiplicative hash's top bits index it
    uint64_t mul             # the odd multiplier, from the process's hash seed (seed_hashes)
    int64_t room             # keys it takes before one more grows it: limit less its keys
                             # (table_size), so that the grow test is one compare with 0


cdef struct Touched:
    int64_t price
    int32_t level            # the level it was when touched (used while still live there)
    uint8_t side


cdef struct Buf:
    unsigned char* data      # owner's bytes while apply_frame writes its output frame, else malloc'd
    unsigned char* w         # where the next byte goes: data + the length written
    unsigned char* end       # data + the capacity
    unsigned char* rec       # the header of the output record being written (apply_frame), or
                             # NULL; a grow moves it with the data
    PyObject* owner          # the bytes object data lives in (apply_frame), or NULL


cdef enum:
    LB = 128                 # keys per block of a side's ordered rung index
    RB = 9                   # a rung spans 2**RB side ticks,
    RW = 8                   # RW words of 64 bits (RW * 64 == 1 << RB)
    RC = 8                   # entries of a side's cache of rungs


cdef struct LBlock:
    int32_t n                # keys in use, keys[0 .. n-1] ascending
    int64_t keys[LB]         # sort keys (rung keys)
    int32_t lv[LB]           # their values (rung indices)


cdef struct Tree:
    # Keys in ascending order, the last one the largest: a two-level blocked array (a B+tree
    # of height two). An insert costs a search over the block firsts and a move of at most LB
    # keys inside one block.
    LBlock** blocks          # ascending: every key of blocks[b] < every key of blocks[b + 1]
    int64_t* firsts          # firsts[b] = blocks[b].keys[0], side by side for the search
    int32_t nb               # blocks in use
    int32_t cap              # capacity of blocks and firsts
    int32_t n                # keys


cdef struct Rung:
    # The occupied ticks of 2**RB consecutive side ticks: tick (key << RB) | (w << 6) | b has
    # a live level iff bit b of words[w] is set; bit w of summary iff words[w] != 0.
    uint64_t summary
    int64_t key              # side tick >> RB; in the free list, the next free rung
    uint64_t words[RW]


cdef struct RSlot:
    int64_t key              # a rung key (>= 0), or -1: empty
    int32_t rung             # that rung's index in the side's pool


cdef struct Side:
    # A side's levels. Side ticks order them: price / tick_size for bids, 2**62 minus that for
    # asks, so the best level has the largest on either side. A level is found by price in the
    # level map (an exact hash of the side's live levels); the rungs, bitmaps of the occupied
    # ticks allocated as levels need them, order the levels: a hash of rung keys finds a
    # tick's rung, and an ordered index of the rung keys gives the next best rung when one
    # empties and walks the side.
    int32_t* lmap            # price -> level: open addressing over level indices (-1: empty),
    uint64_t lmap_mask       # keyed by the level's price; capacity - 1 (a power of two),
    int lmap_shift           # 64 - log2(capacity); load <= 1/2
    uint64_t grow_reads      # slots or levels the level map's grows have read (index_stats)
    Tree tree                # the live rungs' keys, ascending; values: rung indices
    Rung* rungs              # the rung pool
    int32_t rungs_cap
    int32_t free_rung        # free list through Rung.key, -1: none
    RSlot* map               # rung key -> rung: open addressing, linear probing, load <= 1/2
    uint64_t map_mask        # capacity - 1 (a power of two)
    int map_shift            # 64 - log2(capacity)
    uint64_t mul             # odd multiplier of both hashes (the tables' seeded one)
    # rungs found or opened lately, by key & (RC - 1) (consecutive rungs, the ones near the
    # touch, in distinct entries): key (-1: none) and index
    int64_t rc_key[RC]
    int32_t rc_rung[RC]
    int32_t n                # levels
    int32_t best             # the best level, -1 when the side is empty
    int64_t best_key         # side_key of the best level's price; CE_KEY_NONE (INT64_MIN,
                             # below every key) when the side is empty
    # to 256 bytes (engine.pyx checks): &sides[s] is then a shift, not a multiply by 224
    # (four instructions), on every order's level lookup and crossing test
    char pad[32]
