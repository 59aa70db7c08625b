"""Time units: every duration and timestamp in Mailroom is a whole number of milliseconds (`*_ms`).

>>> DAY_MS // HOUR_MS, HOUR_MS // MINUTE_MS
(24, 60)
"""

import time

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
DAY_S = DAY_MS // SECOND_MS


def now_ms() -> int:
    """Now, in epoch milliseconds UTC (the unit of every record timestamp)."""
    return int(time.time() * 1000)
