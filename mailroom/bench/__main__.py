"""`python -m mailroom.bench --group-id G`: one peer process (see mailroom.bench.peer)."""

import sys

from mailroom.bench.peer import peer_main

sys.exit(peer_main())
