"""The `mailroom` command line. Every subcommand has --help; errors say what to do next."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys

from rich.console import Console
from rich.table import Table

from config.settings import ENV_VARS, ConfigError, Settings
from mailroom import accuracy, bench, deadletters, demo, feedback, inbox, judge, models_cli, produce, retrainer, soak
from mailroom.dashboard import app as dashboard

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def _settings_help() -> str:
    return "environment variables: " + ", ".join(sorted(ENV_VARS.values()))


# --- stack -----------------------------------------------------------------------------------


def _supervise(stack, interval: float) -> int:
    """`stack supervise`: repair the stack every `interval` s until SIGTERM or Ctrl-C; say what was started again."""
    import threading
    import time

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    console.print(f"supervising the stack every {interval:g} s (Ctrl-C stops)")
    try:
        while not stopping.wait(interval):
            for name in stack.repair():
                console.print(f"{time.strftime('%H:%M:%S')} started {name} again")
    except KeyboardInterrupt:
        pass
    return 0


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from mailroom.stack import Stack, StackError

    if args.action == "env":
        for name, value in settings.compose_env().items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    try:
        stack = Stack(settings, args.taskmanagers, args.slots)
        if args.action == "up":
            result = stack.up(with_flink=args.flink)
            started = ", ".join(result["started"]) or "nothing (all running)"
            console.print(f"started: {started}; topics created: {len(result['topics_created'])}")
        elif args.action == "supervise":
            return _supervise(stack, args.interval)
        elif args.action == "down":
            stopped = stack.down()
            console.print(f"stopped: {', '.join(stopped) or 'nothing (none was running)'}")
            return 0
    except StackError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 1
    statuses = stack.status()
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        table = Table(title="Mailroom stack")
        for col in ("service", "state", "where", "pid", "rss MB", "log"):
            table.add_column(col)
        for s in statuses:
            state = "[green]up[/green]" if s.running else "[red]down[/red]"
            table.add_row(s.name, state, s.detail, str(s.pid or "-"), str(s.rss_mb or "-"), str(s.log or "-"))
        console.print(table)
    # `status` exits 0 only if Kafka, Redis, the MLflow server and Prometheus run (handy in scripts)
    if args.action == "status":
        return 0 if all(s.running for s in statuses if s.name not in ("flink", "dashboard")) else 3
    return 0


# --- run -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from mailroom.stack import StackError

    def stop(signum, _frame):  # unwind, so the demo stops the jobs it started (the default would just end this process)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        if args.scenario == "drift":
            from pathlib import Path

            from mailroom import scenario

            config = scenario.ScenarioConfig(**({} if args.seed is None else {"seed": args.seed}))
            figures = scenario.run_drift(settings, config, drift_file=Path(args.drift_file) if args.drift_file else None,
                                         plot_path=Path(args.plot) if args.plot else None)
            return 0 if figures["outcome"] == "closed" else 1
        report = demo.run(settings, count=args.count, rate=args.rate, scan_share=args.scan_share, drift=args.drift, seed=args.seed)
    except (StackError, RuntimeError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 1
    return 0 if report["arrived"] + sum(report["dead_letters"].values()) >= report["documents"] else 1


def cmd_job(args: argparse.Namespace, settings: Settings) -> int:
    from mailroom.stack import FlinkCluster
    from mailroom.submit import run_in_foreground

    extra = list(args.job_args) + (["--parallelism", str(args.parallelism)] if args.parallelism else [])
    if args.cluster and not FlinkCluster(settings).status().running:
        err.print("[red]error:[/red] the Flink session cluster is not running: start it with `mailroom stack up --flink`.")
        return 1
    where = f"the session cluster ({settings.flink_rest_url}, detached)" if args.cluster else "the embedded MiniCluster (Ctrl-C stops it)"
    console.print(f"running jobs.{args.name} on {where}")
    return run_in_foreground(settings, f"jobs.{args.name}", extra, cluster=args.cluster, detached=args.cluster)


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.topics import TOPICS
    from schemas.units import DAY_MS

    table = Table(title="Declared topics (schemas/topics.py)")
    for col in ("topic", "partitions", "retention (days)", "purpose"):
        table.add_column(col)
    for t in TOPICS:
        table.add_row(t.name(settings.topic_prefix), str(t.partitions), f"{t.retention_ms / DAY_MS:g}", t.purpose)
    console.print(table)
    return 0


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailroom",
        description="Streaming document classification on Kafka, Redis and PyFlink.",
        epilog=_settings_help(),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="start, stop or inspect Kafka, Redis, the MLflow server, Prometheus and the Flink session cluster",
                           description="Run the local stack: a KRaft Kafka broker and Redis on 127.0.0.1 (password required), "
                           "the MLflow server (UI + REST) over the model registry, the Prometheus server (metrics and alert rules), optionally a standalone Flink session cluster. `up` is idempotent; `down` stops only what `up` started.",
                           epilog=_settings_help())
    stack.add_argument("action", choices=["up", "down", "status", "env", "supervise"], help="up: start what is missing and create topics; "
                       "down: stop what up started; status: check each service for real (exit 3 if Kafka, Redis, MLflow or Prometheus is down); "
                       "env: print the secrets docker-compose.yml needs as shell exports (eval \"$(mailroom stack env)\" && docker compose up -d); "
                       "supervise: until stopped, start again what crashed and the TaskManagers a running session cluster misses")
    stack.add_argument("--interval", type=float, default=5.0, metavar="S", help="with supervise: seconds between checks (default %(default)s)")
    stack.add_argument("--flink", action="store_true", help="with up: also start the Flink session cluster (REST + web UI), or "
                       "bring a running one back to its declared shape (a killed TaskManager is started again)")
    stack.add_argument("--taskmanagers", type=int, metavar="N", help="with up --flink: TaskManager processes (default: the running "
                       "cluster's, else MAILROOM_FLINK_TASKMANAGERS, 1); jobs spread over them with `mailroom job --cluster --parallelism N`")
    stack.add_argument("--slots", type=int, metavar="S", help="with up --flink: slots per TaskManager (default MAILROOM_FLINK_SLOTS, 1: "
                       "thread-mode Python shares one interpreter per TaskManager)")
    stack.add_argument("--json", action="store_true", help="print the status as JSON")
    stack.set_defaults(func=cmd_stack)

    run = sub.add_parser("run", help="the whole pipeline end to end on the embedded default (what `make run` does)",
                         description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--count", type=int, default=600, help="generated documents to send (default %(default)s)")
    run.add_argument("--rate", type=float, default=30.0, help="documents per second offered (default %(default)s)")
    run.add_argument("--scan-share", type=float, default=0.3, help="share of scanned documents (default %(default)s)")
    run.add_argument("--drift", action="store_true", help="simulate drift: departments now call invoice-like documents offers")
    run.add_argument("--seed", type=int, default=None, help="generator and feedback seed (default: random)")
    run.add_argument("--scenario", choices=["drift"], help="drift: the learning loop end to end (mailroom/scenario.py): a normal stream, "
                     "then documents the champion has not learned, late feedback; alert, retraining, shadow, judge, promotion, recovery")
    run.add_argument("--drift-file", metavar="FILE", help="with --scenario drift: labelled documents (JSONL, the ../shared/data/real "
                     "text format) as the drift, instead of the generated billing disputes")
    run.add_argument("--plot", metavar="PNG", help="with --scenario drift: where the macro-F1 plot goes (default: in the run's directory)")
    run.set_defaults(func=cmd_run)

    job = sub.add_parser("job", help="run one Flink job (router, scoring, accuracy) embedded or on the session cluster",
                         usage="%(prog)s [-h] [--cluster] [--parallelism N] {router,scoring,accuracy} [-- JOB ARGS]",
                         description="Run a job on the embedded MiniCluster (in the foreground; Ctrl-C or SIGTERM stops it and "
                         "its JVM), or submit it to the standalone session cluster with --cluster (detached; watch it in the "
                         "Flink web UI). Arguments after `--` go to the job: `mailroom job scoring -- --help` lists them.")
    job.add_argument("name", choices=["router", "scoring", "accuracy"], help="which job")
    job.add_argument("--cluster", action="store_true", help="submit to the session cluster (`mailroom stack up --flink` first)")
    job.add_argument("--parallelism", type=int, metavar="N", help="operator parallelism (default: flink-conf/config.yaml)")
    job.set_defaults(func=cmd_job, usage_error=job.error)

    topics = sub.add_parser("topics", help="list the declared Kafka topics", description="List the topics declared in schemas/topics.py.")
    topics.set_defaults(func=cmd_topics)

    for module in (produce, deadletters, models_cli, feedback, inbox, accuracy, bench, judge, retrainer, dashboard, soak):
        module.register(sub)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse a command line. For `mailroom job`, everything after the first `--` goes to the job untouched."""
    job_args: list[str] = []
    if argv[:1] == ["job"] and "--" in argv:
        split = argv.index("--")
        argv, job_args = argv[:split], argv[split + 1:]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "job":
        if unknown:
            args.usage_error(f"unrecognized arguments: {' '.join(unknown)}; arguments for the job itself go after `--`, "
                             f"e.g. `mailroom job {args.name} -- {' '.join(unknown)}`")
        args.job_args = job_args
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 2
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
