"""The layers and the habits the code relies on, checked on the code itself (R-NF-1, R-NF-2).

* The pure core (``randomizer.domain``) and the two libraries below the application
  (``keys``, ``audit``) load neither the web framework nor the database layer, nor each
  other: checked by importing each in a clean interpreter.
* One transaction boundary: ``commit(`` and ``engine.begin(`` appear only in
  ``randomizer/db.py``; one lock order: ``with_for_update`` appears only in
  ``randomizer/locks.py``.
* The request schemas do not reach into the services.

Each check has a twin that plants what it looks for and shows that it is found, so no check
passes for want of looking.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("randomizer", "keys", "audit")
#: The web framework, the database layer and their kin.
FRAMEWORKS = ("flask", "flask_smorest", "werkzeug", "marshmallow", "sqlalchemy", "alembic")

COMMIT = re.compile(r"\bcommit\(|['\"]\s*COMMIT\b", re.IGNORECASE)
ENGINE_BEGIN = re.compile(r"\bengine\.begin\(")
ROW_LOCK = re.compile(r"\bwith_for_update\b|\bFOR UPDATE\b")


# Imports ----------------------------------------------------------------------------------


def loaded_by(statement: str) -> set[str]:
    """The names in ``sys.modules`` after ``statement`` runs in a fresh interpreter.

    The interpreter starts in the repository's root, so it imports this checkout.
    """
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def under(modules: set[str], *packages: str) -> set[str]:
    """The modules that are one of ``packages`` or inside one of them."""
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)}


def test_the_domain_loads_no_framework_no_database_no_keys_and_no_audit():
    loaded = loaded_by("import randomizer.domain")

    assert "randomizer.domain" in loaded
    assert under(loaded, *FRAMEWORKS, "cryptography", "keys", "audit") == set()


def test_keys_loads_no_framework_no_database_and_nothing_of_the_application():
    loaded = loaded_by("import keys")

    assert "keys" in loaded
    assert under(loaded, *FRAMEWORKS, "randomizer", "audit") == set()


def test_audit_loads_no_framework_no_database_and_nothing_of_the_application():
    loaded = loaded_by("import audit")

    assert "audit" in loaded
    assert under(loaded, *FRAMEWORKS, "randomizer", "keys") == set()


def test_the_import_check_sees_what_an_import_loads():
    loaded = loaded_by("import randomizer.api")

    assert {"flask", "sqlalchemy", "marshmallow", "keys", "audit"} <= loaded
    assert under(loaded, "randomizer.services")
    assert under({"flask", "flask_smorest", "flasky", "keys.sealing"}, "flask", "keys") == {
        "flask",
        "keys.sealing",
    }


def imported_names(source: str) -> set[str]:
    """Every module an ``import`` anywhere in ``source`` names (``from a import b``: a, a.b)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_schemas_do_not_import_the_services():
    source = (ROOT / "randomizer" / "schemas.py").read_text(encoding="utf-8")

    assert under(imported_names(source), "randomizer.services") == set()
    assert under(loaded_by("import randomizer.schemas"), "randomizer.services") == set()


def test_the_schema_check_finds_a_planted_import_even_inside_a_function():
    for planted in (
        "from randomizer.services import participants\n",
        "from randomizer import services\n",
        "def f():\n    import randomizer.services.users as users\n",
    ):
        assert under(imported_names(planted), "randomizer.services"), planted


# Patterns in the source -------------------------------------------------------------------


def sources_matching(pattern: re.Pattern[str], root: Path = ROOT) -> set[str]:
    """The Python files of ``randomizer/``, ``keys/`` and ``audit/`` whose text matches."""
    return {
        path.relative_to(root).as_posix()
        for package in PACKAGES
        for path in (root / package).rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    }


@pytest.mark.requirement("R-NF-2")
def test_only_randomizer_db_commits():
    """One transaction boundary: a commit call appears in randomizer/db.py and nowhere else.

    The pattern is a call of ``commit`` itself (``session.commit()``; ``self._commit(`` is
    excluded by the word boundary, like ``before_commit(`` which only registers a
    callback) or a ``COMMIT`` statement in SQL text.
    """
    assert sources_matching(COMMIT) == {"randomizer/db.py"}


@pytest.mark.requirement("R-NF-2")
def test_only_randomizer_db_begins_a_transaction_on_the_engine():
    assert sources_matching(ENGINE_BEGIN) == {"randomizer/db.py"}


@pytest.mark.requirement("R-NF-1")
def test_only_randomizer_locks_takes_row_locks():
    assert sources_matching(ROW_LOCK) == {"randomizer/locks.py"}


def test_the_source_checks_find_planted_calls_and_only_those(tmp_path):
    planted = {
        "randomizer/services/commits.py": "session.commit()\n",
        "keys/commits.py": 'connection.exec_driver_sql("COMMIT")\n',
        "audit/begins.py": "with self.engine.begin() as connection:\n    pass\n",
        "randomizer/services/locks.py": "select(Kit).with_for_update(skip_locked=True)\n",
        "audit/locks.py": 'text("SELECT 1 FROM kit FOR UPDATE")\n',
        "randomizer/innocent.py": (
            "self._commit(session)\nbefore_commit(session, 'x', f)\n"
            "connection.begin()\n# the commitment, for updates\n"
        ),
        "elsewhere/ignored.py": "session.commit()\n",
    }
    for name, text in planted.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")

    assert sources_matching(COMMIT, tmp_path) == {
        "randomizer/services/commits.py",
        "keys/commits.py",
    }
    assert sources_matching(ENGINE_BEGIN, tmp_path) == {"audit/begins.py"}
    assert sources_matching(ROW_LOCK, tmp_path) == {
        "randomizer/services/locks.py",
        "audit/locks.py",
    }
