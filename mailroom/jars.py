"""Fetch the JVM artifacts (Kafka broker + Log4j2, Flink Kafka connector) from Maven Central and
build the project's own (the loopback Prometheus reporter, mailroom/jvm/reporter/).

Runs `mvn dependency:copy-dependencies` on mailroom/jvm/pom.xml into <cache>/jars/, once:
a marker with the pom's hash makes later calls free. The reporter is compiled with `javac` into
<cache>/jars/reporter/, its jar named by the hash of its sources: rebuilt only when they change.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from config.flinkconf import REPORTER_SOURCES, flink_home, loopback_reporter_path, prometheus_reporter_jar
from config.settings import Settings

POM = Path(__file__).parent / "jvm" / "pom.xml"
PROFILES = ("broker", "connector")


def fetch(settings: Settings, quiet: bool = False) -> Path:
    """Make sure <cache>/jars/{broker,connector} hold the jars the pom names; return the folder."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    for profile in PROFILES:
        target = settings.jar_dir / profile
        marker = target / f".fetched-{digest}"
        if marker.exists():
            continue
        if not shutil.which("mvn"):
            raise SystemExit("Maven (mvn) is needed to fetch the Kafka and Flink connector jars from Maven Central: apt-get install -y maven")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        if not quiet:
            print(f"fetching {profile} jars from Maven Central into {target} ...", file=sys.stderr)
        cmd = ["mvn", "-q", "-B", "-f", str(POM), f"-P{profile}", "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={target}"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"mvn failed to fetch the {profile} jars:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        marker.touch()
    build_reporter(settings, quiet)
    return settings.jar_dir


def _run(cmd: list[str], what: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def build_reporter(settings: Settings, quiet: bool = False) -> Path:
    """Compile the loopback Prometheus reporter against Flink's prometheus plugin and flink-dist; return its jar."""
    jar = loopback_reporter_path(settings)
    if jar.exists():
        return jar
    for tool in ("javac", "jar"):
        if not shutil.which(tool):
            raise SystemExit(f"The JDK's {tool} is needed to build the loopback Prometheus reporter: apt-get install -y openjdk-17-jdk-headless")
    if not quiet:
        print(f"building {jar.name} into {jar.parent} ...", file=sys.stderr)
    classpath = [prometheus_reporter_jar(), *sorted((flink_home() / "lib").glob("flink-dist-*.jar"))]
    with tempfile.TemporaryDirectory() as tmp:
        classes = Path(tmp) / "classes"
        shutil.copytree(REPORTER_SOURCES / "main" / "resources", classes)
        sources = sorted(str(p) for p in (REPORTER_SOURCES / "main" / "java").rglob("*.java"))
        _run(["javac", "--release", "17", "-nowarn", "-cp", ":".join(map(str, classpath)), "-d", str(classes), *sources], "javac")
        built = Path(tmp) / jar.name
        _run(["jar", "--create", "--file", str(built), "-C", str(classes), "."], "jar")
        jar.parent.mkdir(parents=True, exist_ok=True)
        for old in jar.parent.glob("mailroom-prometheus-loopback-*.jar"):
            old.unlink()
        shutil.move(built, jar)  # whole, or not at all: a half-written jar never has the final name
    return jar


if __name__ == "__main__":
    print(fetch(Settings.from_env()))
