"""What the documentation, the example configuration and the help say is
what is built (issue 10, point 8): no feature promised before it exists,
no example that disagrees with the README's walkthrough, and an install
that prints no deprecation warning.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support.harness import gateway_env, run_in_process

ROOT = Path(__file__).resolve().parents[2]
#: Where the console will live (DESIGN.md: gateway/web/console/); until then
#: nothing may say there is one.
CONSOLE_PACKAGES = (ROOT / "gateway" / "web" / "console", ROOT / "gateway" / "console")
#: Installing builds a wheel; on a shared machine with PyPI for the build
#: requirements, this is ample.
BUILD_TIMEOUT = 300


def test_nothing_promises_a_web_console_before_there_is_one() -> None:
    if any(package.is_dir() for package in CONSOLE_PACKAGES):
        return  # built: the words may say so
    for path in (ROOT / "README.md", ROOT / "config" / "gateway.toml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert "console" not in line.lower(), f"{path.name}:{number}: {line.strip()}"


def test_serve_help_says_what_the_http_listener_serves() -> None:
    result = run_in_process(["serve", "--help"], cwd=ROOT, env=gateway_env())
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps the help
    match = re.search(r"--http-listen HOST:PORT (.*?)\(replaces http\.listen\)", text)
    assert match is not None, text
    served = match.group(1)
    for path in ("/api/v1", "/metrics", "/healthz"):
        assert path in served, served


def test_the_api_examples_use_the_address_of_the_readme_walkthrough() -> None:
    readme = (ROOT / "README.md").read_text()
    (walkthrough,) = re.findall(r"scripts/serve --sip-listen \S+ --http-listen (\S+) ", readme)
    api = (ROOT / "docs" / "api.md").read_text()
    assignments = re.findall(r"^API=(\S+)", api, flags=re.MULTILINE)
    assert assignments == [f"http://{walkthrough}/api/v1"]
    assert "127.0.0.1:8080" not in api


def test_installing_prints_no_deprecation_warning(tmp_path: Path) -> None:
    """The project's metadata as setuptools reads it (a wheel of the
    project's pyproject.toml and README, the packages left empty)."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copy(ROOT / "README.md", project)
    for package in ("gateway", "sip", "admission"):
        (project / package).mkdir()
        (project / package / "__init__.py").touch()
        (project / package / "py.typed").touch()
    (project / "gateway" / "store" / "migrations").mkdir(parents=True)
    (project / "gateway" / "store" / "migrations" / "script.py.mako").touch()
    license_field = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert license_field == "Apache-2.0"  # an SPDX expression (PEP 639), not a table
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path), "."],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    warnings = [line for line in output.splitlines() if "Warning" in line or "deprecat" in line]
    assert warnings == [], "\n".join(warnings)
