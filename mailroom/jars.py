"""Fetch the JVM artifacts (Kafka broker + Log4j2, Flink Kafka connector) from Maven Central.

Runs `mvn dependency:copy-dependencies` on mailroom/jvm/pom.xml into <cache>/jars/, once:
a marker with the pom's hash makes later calls free.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

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
    return settings.jar_dir


if __name__ == "__main__":
    print(fetch(Settings.from_env()))
