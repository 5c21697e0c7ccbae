"""Summaries of `py-spy record --format raw` output (collapsed stacks with counts).

`python -m bench.profile FILE` prints where a server process spent its samples:
by package of the innermost frame (self time) and the heaviest functions, self and
inclusive.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def _package(path: str) -> str:
    """`chat.hub`, `uvicorn`, `asyncio`, ... for a frame's file."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/chat/" in path:
        rest = path.rsplit("/chat/", 1)[1].removesuffix(".py").replace("/", ".")
        return "chat." + rest
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return rest.split("/", 1)[0].removesuffix(".py")
    return path or "?"


def _parse(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "?"
    return m.group("func"), m.group("file")


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    total = 0
    by_pkg: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            f
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        func, file = _parse(frames[-1])
        by_pkg[_package(file)] += n
        self_fn[f"{func} ({_package(file)})"] += n
        seen = set()
        for f in frames:
            func, file = _parse(f)
            key = f"{func} ({_package(file)})"
            if key not in seen:
                seen.add(key)
                incl_fn[key] += n

    def pct(c: Counter[str]) -> list[list[Any]]:
        return [[k, round(100 * v / total, 1)] for k, v in c.most_common(top)] if total else []

    return {
        "samples": total,
        "self_by_package_pct": pct(by_pkg),
        "self_by_function_pct": pct(self_fn),
        "inclusive_by_function_pct": pct(incl_fn),
    }


def main() -> None:
    for arg in sys.argv[1:]:
        s = summarize(Path(arg))
        print(f"{arg}: {s['samples']} samples")
        for title in ("self_by_package_pct", "self_by_function_pct", "inclusive_by_function_pct"):
            print(f"  {title}:")
            for name, p in s[title]:
                print(f"    {p:5.1f}%  {name}")


if __name__ == "__main__":
    main()
