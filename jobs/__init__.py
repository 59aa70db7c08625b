"""PyFlink jobs: each module wires sources, operators and sinks; the logic lives in udfs/."""
