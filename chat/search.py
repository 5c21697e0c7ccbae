"""Full-text search of messages: the query syntax, its translation to a tsquery, and highlights.

The syntax is the contract's (docs/protocol.md, "Search"): words are all
required, `"quoted words"` are a phrase, `-word` or `-"a phrase"` excludes,
`or` between two terms means either, `word*` is a prefix. `parse` turns the
text into the input of PostgreSQL's `to_tsquery('simple', ...)` with every
word inside a quoted operand, so nothing a user types can act as a tsquery
operator; PostgreSQL then splits and lower-cases each operand exactly as it
did the message bodies, which Python could not reproduce (`e-mail`, URLs,
which letters have a lower case). Parsing is pure; `search` is the use case
the HTTP route calls: access, then one store call.

A highlight is a list of `[start, end)` ranges of code points into `body`, not
marked-up text, so a client renders it with text nodes and cannot be made to
interpret anything in a message as markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from msgspec import Struct, field

from .errors import invalid
from .protocol import Message, User

if TYPE_CHECKING:  # the store knows asyncpg; this module only calls it
    from .store import Store

# Longer queries are refused: no one types them, and they only cost the database.
MAX_QUERY_CHARS = 500
MAX_TERMS = 32
# The markers PostgreSQL's ts_headline puts around matched words (sql/queries/search.sql).
# Private-use code points: a body that holds them has them swapped for U+FFFD in
# the text given to ts_headline, so every marker found is one PostgreSQL put there.
START, STOP = "\ue000", "\ue001"


@dataclass(frozen=True, slots=True)
class Term:
    """One word, prefix or phrase of a query, perhaps excluded."""

    text: str
    phrase: bool = False
    prefix: bool = False
    negated: bool = False

    def tsquery(self) -> str:
        operand = quote(self.text) + (":*" if self.prefix else "")
        return "!" + operand if self.negated else operand


def quote(text: str) -> str:
    """A tsquery operand holding `text` literally: in quotes, `\\` and `'` escaped."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def terms(q: str) -> list[list[Term]]:
    """The query as groups that must all match, each a list of alternatives (`or`)."""
    groups: list[list[Term]] = []
    join_next = False  # the previous token was `or`
    i, n = 0, len(q)
    while i < n:
        if q[i].isspace():
            i += 1
            continue
        negated = False
        if q[i] == "-" and i + 1 < n and not q[i + 1].isspace():
            negated = True
            i += 1
        if q[i] == '"':
            end = q.find('"', i + 1)
            end = n if end < 0 else end
            text = q[i + 1 : end].strip()
            i = end + 1
            term = Term(text, phrase=True, negated=negated) if text else None
        else:
            start = i
            while i < n and not q[i].isspace() and q[i] != '"':
                i += 1
            word = q[start:i]
            if not negated and word.lower() == "or":
                join_next = bool(groups)
                continue
            stem = word.rstrip("*")
            term = Term(stem, prefix=stem != word, negated=negated) if stem.strip("-") else None
        if term is None:
            continue  # an empty phrase or a bare operator: nothing to look for
        if join_next:
            groups[-1].append(term)
        else:
            groups.append([term])
        join_next = False
    return groups


def parse(q: str) -> str:
    """The `to_tsquery('simple', ...)` input for `q`; `invalid` if it has nothing to find."""
    if len(q) > MAX_QUERY_CHARS:
        raise invalid(f"`q` must be at most {MAX_QUERY_CHARS} characters")
    if "\x00" in q:
        raise invalid("`q` must not contain a NUL character")
    groups = terms(q)
    if not groups:
        raise invalid("`q` has no word to search for")
    if sum(len(g) for g in groups) > MAX_TERMS:
        raise invalid(f"`q` may have at most {MAX_TERMS} words and phrases")
    parts = []
    for group in groups:
        inner = " | ".join(t.tsquery() for t in group)
        parts.append(f"( {inner} )" if len(group) > 1 else inner)
    return " & ".join(parts)


def highlight(body: str | None, headline: str | None) -> list[tuple[int, int]]:
    """The `[start, end)` code-point ranges that ts_headline marked in `body`.

    Empty when the headline's text is not the body's (then the ranges could be
    wrong, and no highlight beats a wrong one).
    """
    if body is None or headline is None:
        return []
    ranges: list[tuple[int, int]] = []
    plain: list[str] = []
    at = 0
    start = -1
    for char in headline:
        if char == START:
            start = at
        elif char == STOP:
            if start >= 0 and at > start:
                ranges.append((start, at))
            start = -1
        else:
            plain.append(char)
            at += 1
    masked = body.replace(START, "\ufffd").replace(STOP, "\ufffd")
    return ranges if "".join(plain) == masked else []


class Hit(Message):
    """A message as search returns it: every message field, plus the matched ranges."""

    highlight: list[tuple[int, int]] = field(default_factory=list)


class HitsOut(Struct):
    messages: list[Hit]


async def search(
    store: Store, user: User, q: str, room: int | None, before: int | None, limit: int
) -> list[Hit]:
    """Messages matching `q` in the caller's rooms (or `room`), newest first."""
    found = await store.search(user.id, parse(q), room, before, limit)
    hits = []
    for message, headline in found:
        fields = {name: getattr(message, name) for name in message.__struct_fields__}
        hits.append(Hit(**fields, highlight=highlight(message.body, headline)))
    return hits
