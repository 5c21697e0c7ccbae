"""The project's hand-written SQL, found on disk and loaded once.

`sql/queries/*.sql` hold named queries (`-- name: insert_message`) and
`sql/migrations/NNNN_name.sql` the schema, applied in order by `migrate.py`.
`QUERIES[name]` is read at import time by `store/`, so a misspelt name fails
when the server starts, not when a request first needs it.
"""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """The SQL this code was built with.

    An installed wheel carries the top-level `sql/` inside the package as
    `chat/sqlfiles` (see pyproject.toml); a checkout or an editable install
    reads `sql/` beside the package.
    """
    here = Path(__file__).resolve().parent
    for path in (here / "sqlfiles", here.parent / "sql"):
        if (path / "migrations").is_dir():
            return path
    raise RuntimeError(f"no SQL folder in {here} or beside it: the package is incomplete")


def parse_queries(text: str, origin: str = "<text>") -> dict[str, str]:
    """Split a file of `-- name: x` blocks into {name: sql}."""
    parts = _NAME.split(text)
    # Above the first name only comments may stand: SQL there would have no name.
    if any(not line.strip().startswith("--") for line in parts[0].splitlines() if line.strip()):
        raise RuntimeError(f"{origin}: SQL before the first `-- name:` line has no name")
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise RuntimeError(f"{origin}: query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";").strip()
    return queries


def load_queries(folder: Path | None = None) -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in sorted((folder or sql_dir() / "queries").glob("*.sql")):
        for name, text in parse_queries(path.read_text(encoding="utf-8"), str(path)).items():
            if name in queries:
                raise RuntimeError(f"{path}: query {name!r} is defined in two files")
            queries[name] = text
    return queries


def migrations(folder: Path | None = None) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration, in order; numbering must have no gaps."""
    found = []
    for path in sorted((folder or sql_dir() / "migrations").glob("*.sql")):
        match = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", path.name)
        if not match:
            raise RuntimeError(f"{path.name}: migrations are named NNNN_name.sql")
        found.append((int(match[1]), match[2], path.read_text(encoding="utf-8")))
    for expected, (version, name, _) in enumerate(found, 1):
        if version != expected:
            raise RuntimeError(f"migration {version:04d}_{name} breaks the sequence at {expected}")
    return found


QUERIES = load_queries()
