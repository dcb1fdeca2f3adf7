"""One seed for the whole test run: SEQEX_SEED, or the clock when it is unset. Randomised
schedules (the crash campaigns, the garbage-input tests) derive theirs from it, and the header of
every run prints it, so any failure replays with SEQEX_SEED=N."""
import os
import time

SEED = int(os.environ.get("SEQEX_SEED") or time.time_ns() // 1000 % 1_000_000)

# The seeds of one crash campaign: SEQEX_CAMPAIGN_COUNT of them (20 unless set) from SEED on.
CAMPAIGN_SEEDS = [SEED + k for k in range(int(os.environ.get("SEQEX_CAMPAIGN_COUNT", "20")))]
