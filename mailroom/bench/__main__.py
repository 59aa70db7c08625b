"""`python -m mailroom.bench --group-id G`: one peer process (see mailroom.bench.peer)."""

import sys

from mailroom.bench.peer import peer_main

if __name__ == "__main__":
    sys.exit(peer_main())
