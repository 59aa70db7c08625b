"""`mlflow server` in one process: `python -m mailroom.mlflow_server --registry DIR <mlflow server options>`.

The registry's database is prepared first (WAL mode, MLflow's schema, an old layout imported), here rather than in
the process that starts the stack, which would keep MLflow loaded (~165 MB) for nothing. Then `mlflow server`
prepares the server's environment and would start uvicorn as a child and wait for it: two interpreters with MLflow
loaded (~245 MB each). Here it replaces itself with that uvicorn instead (exec, same pid), so the pid the stack
tracks is the server's and the server costs one interpreter.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import mlflow.server
from mlflow.cli import cli

from models.registry import Registry


def _exec_server(cmd: list[str], *, extra_env: dict[str, str] | None = None, **_ignored) -> None:
    """In place of mlflow's `_exec_cmd(cmd, extra_env=..., synchronous=False)`: become the server."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, {**os.environ, **(extra_env or {})})


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m mailroom.mlflow_server", description=__doc__.splitlines()[0])
    parser.add_argument("--registry", metavar="DIR", required=True, help="the model registry the server serves")
    args, server_options = parser.parse_known_args(argv)
    if not callable(getattr(mlflow.server, "_exec_cmd", None)):
        raise SystemExit(f"mlflow {mlflow.__version__} starts its server differently: run `mlflow server` instead")
    Registry(Path(args.registry)).prepare()
    mlflow.server._exec_cmd = _exec_server
    cli.main(["server", *server_options], prog_name="mlflow")


if __name__ == "__main__":
    main(sys.argv[1:])
