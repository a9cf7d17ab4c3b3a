"""The commands README.md shows, run as a reader would run them.

- The standalone-verifier recipe of "The verifiable audit trail" is taken from README.md
  itself and run with bash, unchanged, against a real ``sealroom serve``: if the README's
  commands stop working, this fails, whatever the code's own tests say.
- ``make run`` twice on one instance directory serves the same demo the second time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ELIGIBLE, IN_CI, make_trial_database
from tests.randomizer.served import HttpClient, Server, free_port

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
#: The venv's bin (not resolved: its python is a symlink out of the venv).
VENV_BIN = Path(sys.executable).parent
VERIFIER_SECTION = "## The verifiable audit trail"
#: What identifies the recipe among the section's code blocks.
RECIPE_MARKERS = (
    "sealroom audit export --out log.jsonl",
    "$API/audit/checkpoint > checkpoint.txt",
    "python audit/verify_standalone.py",
)
FENCED_SH = re.compile(
    r"^(?P<indent>[ \t]*)```sh[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)


def readme_section(title: str) -> str:
    """The text of README.md's ``## title`` section, up to the next ``## `` heading."""
    text = README.read_text(encoding="utf-8")
    start = text.find(f"\n{title}\n")
    if start < 0:
        pytest.fail(f"README.md has no {title!r} section any more")
    following = text.find("\n## ", start + len(title) + 2)
    return text[start : following if following >= 0 else len(text)]


def standalone_verifier_recipe() -> str:
    """The ```sh block of the verifiable-audit-trail section that runs the standalone verifier."""
    blocks = [
        textwrap.dedent(match["body"])
        for match in FENCED_SH.finditer(readme_section(VERIFIER_SECTION))
    ]
    recipes = [b for b in blocks if all(marker in b for marker in RECIPE_MARKERS)]
    if len(recipes) != 1:
        pytest.fail(
            f"README.md's {VERIFIER_SECTION!r} section should hold exactly one ```sh block "
            f"with {' / '.join(RECIPE_MARKERS)}; it holds {len(recipes)} "
            f"(of {len(blocks)} ```sh blocks). Was the recipe removed or reworded?"
        )
    return recipes[0]


def require_curl() -> None:
    """The recipe needs curl: outside CI a machine without it skips; CI must have it."""
    if shutil.which("curl") is None:
        message = "curl is not installed; README.md's recipe uses it"
        if IN_CI:
            pytest.fail(f"{message} (CI must install it)")
        pytest.skip(message)


def path_with_venv_first() -> str:
    assert (VENV_BIN / "sealroom").exists(), f"no sealroom in {VENV_BIN}: run pytest from the venv"
    assert (VENV_BIN / "python").exists(), f"no python in {VENV_BIN}"
    return os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])


def screening(number: str) -> dict[str, Any]:
    return {
        "screening_number": number,
        "site": "101",
        "screened_on": datetime.now(UTC).date().isoformat(),
        "strata": {"prior_ig": "no"},
    }


# The standalone verifier's recipe -------------------------------------------------------------


def test_the_readme_holds_the_standalone_verifier_recipe() -> None:
    recipe = standalone_verifier_recipe()

    lines = recipe.splitlines()
    assert lines[0] == "sealroom audit export --out log.jsonl"
    assert lines[1].startswith("curl ") and lines[1].endswith("> checkpoint.txt")
    assert lines[2].startswith("python audit/verify_standalone.py ")
    # Dedenting kept the block's own layout: its continuation line is still one.
    assert lines[2].endswith("\\")


@pytest.mark.slow
@pytest.mark.requirement("R-AUD")
def test_the_readmes_standalone_verifier_recipe_passes_as_written(
    scratch: Any, backend: str, tmp_path: Path
) -> None:
    require_curl()
    recipe = standalone_verifier_recipe()
    instance = tmp_path / "instance"
    instance.mkdir()
    trial = make_trial_database(scratch, backend, instance)
    server = Server(trial, instance, workers=1).start()
    try:
        # Something worth auditing first: a screening and a randomisation.
        assert (
            server.client.post("/participants", "coordinator-101", screening("101-0001"))[0] == 201
        )
        status, body = server.client.post(
            "/participants/101-0001/randomize",
            "coordinator-101",
            {"weight_kg": 70, "eligibility": ELIGIBLE},
        )
        assert status == 201, body

        # An inspector's directory holding only the verifier (the repository's own file),
        # so `python audit/verify_standalone.py` resolves as written and nothing else does.
        work = tmp_path / "inspector"
        (work / "audit").mkdir(parents=True)
        shutil.copyfile(
            REPO / "audit" / "verify_standalone.py", work / "audit" / "verify_standalone.py"
        )
        env = {
            **os.environ,
            "PATH": path_with_venv_first(),
            "TOKEN": trial.tokens["coordinator-101"],
            "API": f"{server.client.base}/api/v1",
            "SEALROOM_DATABASE_URL": trial.url,
            "SEALROOM_INSTANCE_DIR": str(instance),
            "SEALROOM_KEYS_DIR": str(trial.settings.keys_dir),
            "SEALROOM_LOG_LEVEL": "WARNING",
        }
        env.pop("SEALROOM_MASTER_KEY", None)
        result = subprocess.run(
            ["bash", "-x", "-e", "-u", "-o", "pipefail", "-c", recipe],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        server.stop()

    report = f"recipe:\n{recipe}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, report
    assert "OK: " in result.stdout, report
    assert "FAILED" not in result.stdout + result.stderr, report
    # The export ends with its own export.created entry, exactly at the size of the
    # checkpoint fetched after it: nothing is left uncovered.
    exported = (work / "log.jsonl").read_bytes().splitlines()
    checkpoint_size = int((work / "checkpoint.txt").read_text(encoding="utf-8").split("\n")[1])
    assert len(exported) == checkpoint_size, report
    assert json.loads(exported[-1])["action"] == "export.created"
    assert "came later" not in result.stdout, report
    assert f"OK: {checkpoint_size} entries" in result.stdout, report


# make run, twice --------------------------------------------------------------------------


class MakeRun:
    """``make run`` from the repository's root, in its own process group."""

    def __init__(self, instance: Path, log: Path) -> None:
        self.instance = instance
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        # Only SEALROOM_INSTANCE_DIR decides where the demo lives: no database URL, keys
        # directory or master key of the caller's, and no make of the caller's (make test).
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("SEALROOM_") and key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")
        }
        return {**env, "SEALROOM_INSTANCE_DIR": str(self.instance)}

    def start(self, timeout: float) -> HttpClient:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["make", "run", "HOST=127.0.0.1", f"PORT={self.port}"],
                cwd=REPO,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout  # the first run may (re)install into .venv
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/v1/health", timeout=2) as answer:
                    assert json.loads(answer.read()) == {"status": "ok"}
                    break
            except (OSError, urllib.error.URLError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"make run did not serve {base}:\n{self.output()}")
                time.sleep(0.5)
        tokens = json.loads((self.instance / "tokens.json").read_text(encoding="utf-8"))
        return HttpClient(base, {t["user"]: t["token"] for t in tokens})

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """SIGTERM make, sealroom serve and gunicorn's workers; SIGKILL what is left at 30 s."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.process.poll()
            try:
                os.killpg(group, 0)  # is any process of the group left?
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None


def snapshot(directory: Path) -> dict[str, int] | None:
    """Every file under ``directory`` with its mtime, or None when it does not exist."""
    if not directory.exists():
        return None
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*")}


@pytest.mark.slow
def test_make_run_twice_serves_the_existing_demo_the_second_time(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        if IN_CI:
            pytest.fail("make is not installed (CI must have it)")
        pytest.skip("make is not installed")
    repo_instance = snapshot(REPO / "instance")
    instance = tmp_path / "instance"
    log = tmp_path / "make-run.log"

    first = MakeRun(instance, log)
    try:
        client = first.start(timeout=600)
        tokens_before = (instance / "tokens.json").read_bytes()
        status, body = client.post("/participants", "coordinator-101", screening("101-0001"))
        assert status == 201, body
    finally:
        first.stop()
    first_output = first.output()
    assert "List seed" in first_output, first_output

    second = MakeRun(instance, tmp_path / "make-run-again.log")
    try:
        client = second.start(timeout=300)
        status, _type, raw = client.request(
            "GET", "/api/v1/participants/101-0001", "coordinator-101"
        )
    finally:
        second.stop()

    output = second.output()
    assert "already holds a trial: keeping it" in output, output
    assert "List seed" not in output, output  # no new trial, no new seed
    assert (instance / "tokens.json").read_bytes() == tokens_before
    assert status == 200, raw  # the same token still works...
    participant = json.loads(raw)
    assert (participant["screening_number"], participant["site"]) == ("101-0001", "101")
    assert participant["status"] == "screened"  # ...and the participant is still there
    assert (instance / "sealroom.db").is_file()
    assert snapshot(REPO / "instance") == repo_instance, "make run wrote to ./instance"
