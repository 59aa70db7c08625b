"""Configuration: the one Settings object and the Flink configuration built from it. A leaf: imports no other Mailroom package."""
