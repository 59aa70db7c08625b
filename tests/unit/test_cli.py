"""mailroom/cli.py without a stack: the subcommands README.md names exist and have --help, the
`mailroom job` command line, loud failure of a missing command module, no cli <-> demo cycle."""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys

import pytest

from config.settings import PROJECT_DIR, Settings
from mailroom import cli, demo
from mailroom.models_cli import train_config
from mailroom.submit import job_command


def _readme_commands() -> list[list[str]]:
    """The command lines of README.md's Commands block, each split at ` | ` into alternatives (word lists)."""
    readme = (PROJECT_DIR / "README.md").read_text()
    block = re.search(r"## Commands\n+```sh\n(.*?)```", readme, re.S).group(1)
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    return [[alt.split() for alt in line.removeprefix(".venv/bin/mailroom").split(" | ")] for line in lines if line]


def _exits_ok(argv: list[str]) -> bool:
    with pytest.raises(SystemExit) as done:
        cli.build_parser().parse_args(argv)
    return done.value.code == 0


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _readme_subcommands() -> set[str]:
    """Top-level subcommands README.md names: each line's first word, and each further alternative's first word that is
    not an option or an action of the line's command (`stack status | down`)."""
    names = set()
    for first, *others in _readme_commands():
        if first[0].startswith("-"):
            continue  # `mailroom --help`
        names.add(first[0])
        names.update(alt[0] for alt in others if not alt[0].startswith("-") and alt[0] not in _choices(first[0]))
    return names


def _choices(command: str) -> set[str]:
    """The values the first positional argument of `command` accepts (stack: up, down, status)."""
    positionals = [a for a in _subcommands()[command]._actions if not a.option_strings and a.choices]
    return set(positionals[0].choices) if positionals else set()


def test_every_readme_subcommand_exists_and_has_help(capsys):
    documented = _readme_subcommands()
    assert {"stack", "run", "job", "produce", "dead-letters", "generate", "train", "models", "feedback", "accuracy", "bench",
            "bench-models", "topics"} <= documented  # the block was read, not skipped
    missing = documented - set(_subcommands())
    assert not missing, f"README.md names subcommands the parser lacks: {sorted(missing)}"
    for name in sorted(documented):
        assert _exits_ok([name, "--help"]), name
    assert "usage: mailroom topics" in capsys.readouterr().out


def test_every_subcommand_is_documented_in_readme():
    undocumented = set(_subcommands()) - _readme_subcommands()
    assert not undocumented, f"add these to README.md's Commands block: {sorted(undocumented)}"


def test_every_nested_action_has_help():
    for name, parser in _subcommands().items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for nested in action.choices:
                    assert _exits_ok([name, nested, "--help"]), f"{name} {nested}"


@pytest.mark.parametrize("argv, cluster, parallelism, job_args", [
    (["job", "router", "--cluster"], True, None, []),
    (["job", "--cluster", "router"], True, None, []),
    (["job", "scoring", "--parallelism", "2", "--", "--batch-size", "64"], False, 2, ["--batch-size", "64"]),
    (["job", "--parallelism", "3", "accuracy", "--cluster", "--", "--bounded", "--", "x"], True, 3, ["--bounded", "--", "x"]),
    (["job", "scoring", "--", "--help"], False, None, ["--help"]),
    (["job", "router"], False, None, []),
])
def test_job_command_line(argv, cluster, parallelism, job_args):
    args = cli.parse_args(argv)
    assert (args.func, args.cluster, args.parallelism, args.job_args) == (cli.cmd_job, cluster, parallelism, job_args)


def test_an_embedded_job_starts_its_jvm_with_the_embedded_options(tmp_path, monkeypatch):
    monkeypatch.delenv("JVM_ARGS", raising=False)
    settings = Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path), "MAILROOM_EMBEDDED_JVM_OPTS": "-Xms32m -Xmx300m"})
    assert job_command(settings, "jobs.router", [])[1]["JVM_ARGS"] == "-Xms32m -Xmx300m"
    assert "JVM_ARGS" not in job_command(settings, "jobs.router", [], cluster=True)[1]  # the cluster sizes its own JVMs


def test_job_refuses_an_unknown_flag_before_the_separator(capsys):
    with pytest.raises(SystemExit) as done:
        cli.parse_args(["job", "scoring", "--batch-size", "64"])
    assert done.value.code == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "unrecognized arguments: --batch-size 64" in error and "`mailroom job scoring -- --batch-size 64`" in error


def test_other_commands_still_refuse_unknown_arguments(capsys):
    with pytest.raises(SystemExit) as done:
        cli.parse_args(["topics", "--", "--bogus"])
    assert done.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_job_passes_its_arguments_and_parallelism_to_the_job(monkeypatch):
    calls = []
    monkeypatch.setattr("mailroom.submit.run_in_foreground", lambda settings, module, args, **kw: calls.append((module, args, kw)) or 0)
    assert cli.cmd_job(cli.parse_args(["job", "scoring", "--parallelism", "2", "--", "--batch-size", "64"]), Settings.from_env({})) == 0
    assert calls == [("jobs.scoring", ["--batch-size", "64", "--parallelism", "2"], {"cluster": False, "detached": False})]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_DIR, timeout=60)


def test_a_missing_command_module_fails_loudly():
    result = _python("import sys; sys.modules['mailroom.deadletters'] = None; import mailroom.cli")  # as if the file were gone
    assert result.returncode != 0 and "ModuleNotFoundError: import of mailroom.deadletters" in result.stderr


@pytest.mark.parametrize("module", ["demo", "models_cli"])
def test_no_import_of_the_cli_from_what_it_imports(module):
    tree = ast.parse((PROJECT_DIR / "mailroom" / f"{module}.py").read_text())  # function bodies too: lazy imports count
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not {name for name in imported if name == "mailroom.cli" or name.startswith("mailroom.cli.")}


def test_demo_trains_only_the_missing_champions(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "train_models", lambda config, registry_dir: calls.append((config, registry_dir)) or {k: 1 for k in config.kinds})
    settings = Settings.from_env({}, run_dir=tmp_path, registry_dir=tmp_path / "registry")
    assert demo.ensure_champions(settings) == ["text", "scan", "image"]
    config, registry_dir = calls[0]
    assert registry_dir == tmp_path / "registry" and config.kinds == ("text", "scan", "image") and not config.quick and config.generated == 3000
    assert config.ocr_cache_dir == settings.cache_dir / "ocr"  # page texts shared with the scoring job

    monkeypatch.setattr(demo, "train_models", lambda config, registry_dir: {"text": 1, "scan": 1, "image": None})  # image failed ONNX parity
    with pytest.raises(RuntimeError, match="no image model"):
        demo.ensure_champions(settings)


def test_in_child_runs_apart_and_raises_here():
    assert demo.in_child(os.getpid) != os.getpid()
    with pytest.raises(ValueError, match="invalid literal"):
        demo.in_child(int, "not a number")


def test_train_config_defaults_follow_mailroom_train(tmp_path):
    assert (train_config().generated, train_config().real_cap_per_source) == (3000, 1200)
    quick = train_config(quick=True, real=False, kinds=("image",), seed=3)
    assert (quick.generated, quick.real_cap_per_source, quick.real_dir, quick.kinds, quick.seed) == (300, 150, None, ("image",), 3)
    assert train_config(real_dir=tmp_path, real_cap=0).real_cap_per_source is None  # 0 = all
    with pytest.raises(ValueError, match="use --no-real"):
        train_config(real_dir=tmp_path / "nowhere")
