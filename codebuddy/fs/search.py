"""
File search for the ``@`` mention popup (fuzzy, by path) and the search panel (by content).

Both searches do all their blocking work (running ``rg``, walking, scoring) inside the
``run_blocking`` callable they are given (the daemon passes ``deferToThreadPool``), so the
reactor thread never waits on the disk.

**Fuzzy search** (:meth:`FileSearch.search`)

* Candidates are the files ``rg --files --hidden --no-require-git .`` lists under the root
  (``.gitignore``/``.ignore``/``.rgignore`` respected even outside a git repository; hidden files
  included; symlinks not followed), minus ``.git`` (dropped from the listing, see
  :data:`_RG_FILES_ARGS`), plus every directory that contains one of them, so ``@src/comp`` can
  pick a directory too. Empty directories are not candidates. At most ``max_files`` files are
  read per root, and the listing stops after ``list_timeout`` seconds.
* Without ``rg`` a Python walker is used instead: slower, reads ``.gitignore``/``.ignore``/
  ``.rgignore`` files inside the root only (not those of parent directories, not git's global
  excludes), and always skips ``.git``, ``node_modules`` and a few well-known cache directories
  (:data:`FALLBACK_SKIP_DIRS`).
* The file list is cached per root for ``cache_ttl`` seconds, so typing in the popup (a request
  every 150 ms) does not walk the tree each time: a new file shows up at most ``cache_ttl``
  seconds after it is created. The list is kept as one NUL-separated string (and its case-folded
  copy): ~7 MB for 100k files, and cheap to build. Up to :data:`MAX_CACHED_ROOTS` roots are
  kept; expired lists are dropped at the next search. A query that extends the previous one
  (the user typed on) only re-filters the previous matches.
* Matching is fzf-like with smart case: the query (leading/trailing blanks stripped) must be a
  subsequence of the relative path, case-insensitively unless it contains an uppercase letter.
  Results rank in tiers: exact base name, base name = query + extension, base-name prefix,
  query inside the base name, subsequence inside the base name, query inside the path,
  subsequence of the path. Inside a tier an fzf-style score rewards consecutive characters,
  characters at word boundaries (after ``/ _ - .`` or a blank, camelCase humps, digits) and a
  match at the start of the base name; shorter paths break ties, then the path itself.
* Speed: one regex without backtracking scans the cached string (every path once, in C), or,
  when a query character is rare, only the paths holding it are checked; directories are
  derived from the matching files (a matching directory is a prefix of matching paths). Only
  a few candidates are scored in Python: when more than ``max(200, 4 * limit)`` paths match,
  whole tiers are taken best first (computed with ``str`` methods and regexes, at C speed) and
  the last tier that does not fit contributes its shortest paths.
* An empty query lists the shallowest files first (``(depth, path)`` order), score 0.
* Paths are text decoded with ``os.fsdecode`` (surrogate escapes for non-UTF-8 bytes), so they
  round-trip to the same bytes; serialise them with ``ensure_ascii`` JSON.

**Content search** (:meth:`FileSearch.search_content`) runs ``rg --json`` (fixed strings unless
``is_regex``, case and whole-word flags as asked, ``--hidden``, ``.git`` excluded, include and
exclude globs relative to the root as rg's ``--glob`` reads them), stops reading once
``max_results`` lines matched (at most :data:`MAX_MATCHES_PER_FILE` per file) or
``content_timeout`` passed, kills ``rg`` then, and answers the hits sorted by path and line
(``truncated`` says it stopped early). Without ``rg`` a Python walker with ``re`` gives the same
shape (binary files, i.e. with a NUL byte, skipped; Python's regex dialect). An invalid regex,
an empty query, a NUL or a lone surrogate in the query or globs are ``BAD_REQUEST``.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from itertools import compress, repeat
from operator import add, not_, or_
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from codebuddy.fs.paths import mapped_errors
from codebuddy.web.errors import ApiError

FILE = "file"
DIRECTORY = "directory"

#: Directories the fallback walker never enters (rg reads ``.gitignore`` instead).
FALLBACK_SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "__pycache__",
        ".venv",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".next",
        ".cache",
        ".gradle",
        ".idea",
    }
)
#: Ignore files the fallback walker reads in every directory.
IGNORE_FILES = (".gitignore", ".ignore", ".rgignore")
#: Content search: matching lines reported per file at most.
MAX_MATCHES_PER_FILE = 100
#: Content search: characters of a matching line returned at most (a window around the match).
MAX_LINE_CHARS = 500
#: Content search: hard upper bound on ``max_results``.
MAX_CONTENT_RESULTS = 10_000
#: Queries longer than this are refused (400).
MAX_QUERY_CHARS = 1024
#: Roots whose candidate lists are cached at once (least recently used evicted).
MAX_CACHED_ROOTS = 4

# rg --files: hidden files but not .git, ignore files even outside a git repository, NUL-separated.
# ``.git`` is dropped afterwards (_drop_git): a ``--glob '!.git'`` costs rg ~30% more on a
# 100k-file tree (every path goes through the override matcher), more than listing a .git.
# The explicit ``.`` makes rg ~20% faster than no path (it then strips "./" from every path).
_RG_FILES_ARGS = ("--no-config", "--files", "--null", "--hidden", "--no-require-git", "--no-messages", "--", ".")
# rg --json lines longer than this (a match on a huge minified line) are skipped, not parsed.
_MAX_JSON_LINE = 8 << 20
# The fallback content search does not read files larger than this.
_MAX_FALLBACK_FILE = 64 << 20
# A query character found in fewer paths than this share is looked up path by path (~2 µs a path
# in Python) instead of scanning every path with one regex (~0.3 µs a path in C).
_RARE_SHARE = 0.1
# When more paths match than this, only this many (best tiers, then shortest) are scored.
_SCORE_BUDGET = 200

# fzf's scoring constants (src/algo/algo.go).
_SCORE_MATCH = 16
_SCORE_GAP_START = -3
_SCORE_GAP_EXTENSION = -1
_BONUS_BOUNDARY = 8
_BONUS_BOUNDARY_SLASH = 9
_BONUS_BOUNDARY_WHITE = 10
_BONUS_NON_WORD = 8
_BONUS_CAMEL = 7
_BONUS_CONSECUTIVE = 4
_BONUS_IN_NAME = 2
_FIRST_CHAR_MULTIPLIER = 2

# Tiers (higher is better); the tier dominates the score.
_TIER_PATH_FUZZY = 0
_TIER_PATH_CONTAINS = 1
_TIER_NAME_FUZZY = 2
_TIER_NAME_CONTAINS = 3
_TIER_NAME_PREFIX = 4
_TIER_NAME_STEM = 5
_TIER_NAME_EXACT = 6
_TIER_WEIGHT = 100_000.0

_WHITE = frozenset(" \t")


@attrs.frozen
class SearchItem:
    """One fuzzy-search result."""

    path: str = attrs.field(metadata={"doc": "Absolute path (inserted after @, opened with files/download)"})
    name: str
    type: str = attrs.field(metadata={"doc": '"file" or "directory"'})
    score: float = attrs.field(metadata={"doc": "Higher is better"})
    relative_path: str = attrs.field(metadata={"doc": "Path relative to the searched directory"})


@attrs.frozen
class ContentMatch:
    """One line that matched a content search."""

    path: str = attrs.field(metadata={"doc": "Absolute path of the file"})
    line: int = attrs.field(metadata={"doc": "1-based line number"})
    column: int = attrs.field(metadata={"doc": "1-based byte column of the first match on the line"})
    text: str = attrs.field(metadata={"doc": "The line without its newline (at most 500 characters around the match)"})


@attrs.frozen
class ContentResults:
    """What a content search found."""

    results: list[ContentMatch]
    truncated: bool = attrs.field(metadata={"doc": "True when maxResults (or the time bound) stopped the search"})


# --------------------------------------------------------------------------------------------
# Case folding and scoring


def _fold(text: str) -> str:
    """Lowercase ``text`` without changing its length (so positions line up with the original)."""
    low = text.lower()
    if len(low) != len(text):
        low = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    return low.replace("ς", "σ") if "ς" in low else low


def _is_subsequence(needle: str, haystack: str) -> bool:
    it = iter(haystack)
    return all(c in it for c in needle)


def _bonus(orig: str, pos: int) -> int:
    """fzf's bonus for matching the character at ``pos`` (word starts, humps, delimiters)."""
    if pos == 0:
        return _BONUS_BOUNDARY_WHITE
    char = orig[pos]
    prev = orig[pos - 1]
    if prev == "/":
        return _BONUS_BOUNDARY_SLASH
    if prev in _WHITE:
        return _BONUS_BOUNDARY_WHITE
    if not prev.isalnum():
        return _BONUS_BOUNDARY if char.isalnum() else _BONUS_NON_WORD
    if not char.isalnum():
        return _BONUS_NON_WORD
    if prev.islower() and char.isupper():
        return _BONUS_CAMEL
    if char.isdigit() and not prev.isdigit():
        return _BONUS_CAMEL
    return 0


def _alignment_score(orig: str, positions: list[int], name_start: int) -> int:
    score = 0
    prev = -2
    chunk_bonus = 0
    for i, pos in enumerate(positions):
        bonus = _bonus(orig, pos)
        if i == 0:
            score += _SCORE_MATCH + bonus * _FIRST_CHAR_MULTIPLIER
            chunk_bonus = bonus
        elif pos == prev + 1:
            chunk_bonus = max(chunk_bonus, bonus, _BONUS_CONSECUTIVE)
            score += _SCORE_MATCH + chunk_bonus
        else:
            gap = pos - prev - 1
            score += _SCORE_MATCH + bonus + _SCORE_GAP_START + _SCORE_GAP_EXTENSION * (gap - 1)
            chunk_bonus = bonus
        if pos >= name_start:
            score += _BONUS_IN_NAME
        prev = pos
    return score


def _subsequence_regex(query: str) -> re.Pattern[str]:
    """``a[^b]*b[^c]*c``: whether ``query`` is a subsequence, at C speed and without backtracking."""
    chars = [re.escape(c) for c in query]
    body = "".join(f"{c}[^{nxt}]*+" for c, nxt in zip(chars, chars[1:], strict=False)) + chars[-1]
    return re.compile(body, re.DOTALL)


def _contiguous(text: str, orig: str, query: str, lo: int) -> list[int] | None:
    """``query`` in one piece in ``text[lo:]``, on a word boundary if it occurs on one."""
    first = start = text.find(query, lo)
    while start >= 0 and not _bonus(orig, start):
        start = text.find(query, start + 1)
    if start < 0:
        start = first
    return None if start < 0 else list(range(start, start + len(query)))


def _scattered(text: str, orig: str, query: str, lo: int) -> list[list[int]]:
    """Two placements of a subsequence ``query`` in ``text[lo:]``: right-most, and boundary-greedy."""
    n = len(query)
    last = [0] * n  # the latest feasible position of every query character
    end = len(text)
    for i in range(n - 1, -1, -1):
        end = text.rfind(query[i], lo, end)
        if end < 0:
            return []
        last[i] = end
    # Forward: the next character if it matches, else the first occurrence on a word boundary,
    # else the first occurrence (never past the latest feasible position).
    greedy: list[int] = []
    cur = lo
    for i, char in enumerate(query):
        limit = last[i] + 1
        if greedy and cur < limit and text.startswith(char, cur):
            pos = cur
        else:
            first = pos = text.find(char, cur, limit)
            while pos >= 0 and not _bonus(orig, pos):
                pos = text.find(char, pos + 1, limit)
            if pos < 0:
                pos = first
        greedy.append(pos)
        cur = pos + 1
    return [last, greedy]


def _tier(text: str, name: str, query: str, fuzzy: re.Pattern[str]) -> int:
    if name == query:
        return _TIER_NAME_EXACT
    if name.startswith(query):
        return _TIER_NAME_STEM if name[len(query)] == "." else _TIER_NAME_PREFIX
    if query in name:
        return _TIER_NAME_CONTAINS
    if fuzzy.search(name):
        return _TIER_NAME_FUZZY
    if query in text:
        return _TIER_PATH_CONTAINS
    return _TIER_PATH_FUZZY


def score_path(text: str, orig: str, query: str, fuzzy: re.Pattern[str] | None = None) -> float:
    """
    The score of the relative path ``orig`` for ``query``, which must be a subsequence of it.

    ``text`` is ``orig`` case-folded (and ``query`` folded) for a case-insensitive search, or
    ``orig`` itself; ``fuzzy`` is ``_subsequence_regex(query)`` when the caller has it.
    """
    name_start = text.rfind("/") + 1
    tier = _tier(text, text[name_start:], query, fuzzy or _subsequence_regex(query))
    if tier >= _TIER_NAME_PREFIX:
        placements = [list(range(name_start, name_start + len(query)))]
    else:
        lo = name_start if tier >= _TIER_NAME_FUZZY else 0
        piece = _contiguous(text, orig, query, lo) if tier in (_TIER_NAME_CONTAINS, _TIER_PATH_CONTAINS) else None
        placements = [piece] if piece is not None else _scattered(text, orig, query, lo)
    fine = max(_alignment_score(orig, positions, name_start) for positions in placements)
    return tier * _TIER_WEIGHT + fine - min(len(orig), 9999) / 10_000


def _smallest(indices: list[int], key: list[int], paths: list[str], room: int) -> list[int]:
    """The ``room`` indices with the smallest ``key[i]``, ties broken by path (whatever the input order)."""
    if len(indices) <= room:
        return indices
    if room <= 0:
        return []
    keys = list(map(key.__getitem__, indices))
    bound = heapq.nsmallest(room, keys)[-1]
    below = list(compress(indices, map(bound.__gt__, keys)))
    at = list(compress(indices, map(bound.__eq__, keys)))
    return below + heapq.nsmallest(room - len(below), at, key=paths.__getitem__)


# --------------------------------------------------------------------------------------------
# Globs and ignore files (fallback walker)


def glob_to_regex(glob: str) -> str:
    """A gitignore-style glob as a regex body: ``*`` and ``?`` stop at ``/``, ``**`` crosses it."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        char = glob[i]
        if char == "*":
            if glob.startswith("**", i):
                if glob.startswith("**/", i):
                    out.append("(?:.*/)?")
                    i += 3
                else:
                    out.append(".*")
                    i += 2
                continue
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            close = glob.find("]", i + 2 if glob.startswith(("[!", "[^"), i) else i + 1)
            if close < 0:
                out.append(re.escape(char))
            else:
                body = glob[i + 1 : close]
                negate = body[:1] in ("!", "^")
                if negate:
                    body = body[1:]
                body = body.replace("\\", "\\\\").replace("[", "\\[")
                out.append(f"[{'^' if negate else ''}{body}]")
                i = close
        elif char == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


@attrs.frozen
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    anchored: bool

    def matches(self, rel: str, name: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        return self.regex.fullmatch(rel if self.anchored else name) is not None


def _compile_rule(line: str) -> _Rule | None:
    """One line of a gitignore file (or one --glob), or None for blanks, comments and junk."""
    line = line.rstrip("\n\r")
    if not line.endswith("\\ "):
        line = line.rstrip(" ")
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate:
        line = line[1:]
    elif line.startswith(("\\!", "\\#")):
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line
    line = line.lstrip("/")
    try:
        regex = re.compile(glob_to_regex(line), re.DOTALL)
    except re.error:
        return None
    return _Rule(regex, negate, dir_only, anchored)


@attrs.frozen
class _IgnoreFile:
    base: str  # relative directory holding the file ('' for the root)
    rules: tuple[_Rule, ...]

    def decision(self, rel: str, name: str, is_dir: bool) -> bool | None:
        """True: ignored, False: re-included, None: no rule matched."""
        sub = rel[len(self.base) + 1 :] if self.base else rel
        for rule in reversed(self.rules):
            if rule.matches(sub, name, is_dir):
                return not rule.negate
        return None


def _read_ignore_files(directory: str, base: str) -> list[_IgnoreFile]:
    found = []
    for name in IGNORE_FILES:
        try:
            with open(os.path.join(directory, name), encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read(1 << 20).splitlines()
        except OSError:
            continue
        rules = tuple(r for r in map(_compile_rule, lines) if r is not None)
        if rules:
            found.append(_IgnoreFile(base, rules))
    return found


class _Overrides:
    """rg's ``--glob`` semantics: the last matching glob wins; include globs always win over ignore files."""

    def __init__(self, include: list[str], exclude: list[str]):
        self.rules: list[_Rule] = []
        for glob in include:
            rule = _compile_rule(glob)
            if rule is not None:
                self.rules.append(rule)
        for glob in exclude:
            rule = _compile_rule("!" + glob.lstrip("!"))
            if rule is not None:
                self.rules.append(rule)
        self.has_include = any(not r.negate for r in self.rules)

    def decision(self, rel: str, name: str, is_dir: bool) -> bool | None:
        """True: skip, False: keep regardless of ignore files, None: no opinion."""
        for rule in reversed(self.rules):
            if rule.matches(rel, name, is_dir):
                return rule.negate
        if self.has_include and not is_dir:
            return True
        return None


def walk_files(
    root: str,
    *,
    skip_dirs: frozenset[str] = FALLBACK_SKIP_DIRS,
    overrides: _Overrides | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[str]:
    """
    Relative paths of the regular files under ``root`` (symlinks not followed), hidden ones
    included, skipping ``skip_dirs`` and what ignore files inside ``root`` exclude.
    """
    stack: list[tuple[str, str, list[_IgnoreFile]]] = [(root, "", _read_ignore_files(root, ""))]
    while stack and not should_stop():
        directory, rel_dir, ignores = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            name = entry.name
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = not is_dir and entry.is_file(follow_symlinks=False)
            except OSError:
                continue
            if not (is_dir or is_file):
                continue
            if name == ".git" or (is_dir and name in skip_dirs):
                continue
            skip = overrides.decision(rel, name, is_dir) if overrides is not None else None
            if skip is None:
                for ignore in ignores:
                    decided = ignore.decision(rel, name, is_dir)
                    if decided is not None:
                        skip = decided
            if skip:
                continue
            if is_dir:
                subdirs.append((entry.path, rel))
            else:
                yield rel
        for path, rel in reversed(subdirs):
            stack.append((path, rel, ignores + _read_ignore_files(path, rel)))


# --------------------------------------------------------------------------------------------
# The candidate cache


def _fold_blob(text: str) -> str:
    """``text`` (NUL-separated paths) case-folded, each path keeping its length."""
    low = text.lower()
    if len(low) != len(text):
        low = "\0".join(map(_fold, text.split("\0")))
    return low.replace("ς", "σ") if "ς" in low else low


def _blob_regex(query: str) -> re.Pattern[str]:
    """
    Finds, in a NUL-separated blob, each path holding ``query`` as a subsequence (group 1): one
    attempt per path, scanning it once (possessive classes: the earliest placement, no backtracking).
    """
    body = "".join(f"[^{c}\\0]*+{c}" for c in map(re.escape, query))
    return re.compile(f"\\0\\./({body}[^\\0]*+)", re.DOTALL)


def _rarest(blob: str, query: str) -> tuple[str, float]:
    """The query's rarest character in ``blob`` (sampled), with its estimated count per path."""
    if len(blob) <= 1 << 18:
        sample = blob
    else:  # 16 slices of 16 KiB spread over the blob
        step = len(blob) // 16
        sample = "".join(blob[i * step : i * step + (1 << 14)] for i in range(16))
    counts = {char: sample.count(char) for char in set(query)}
    rare = min(counts, key=lambda c: (counts[c], c))
    return rare, counts[rare] / max(sample.count("\0"), 1)


def _drop_git(data: bytes) -> bytes:
    """``data`` (NUL-terminated relative paths) without ``.git`` and what is inside one."""
    blob = b"\0" + data
    spans = []
    pos = blob.find(b".git")
    while pos >= 0:
        after = blob[pos + 4 : pos + 5]
        if blob[pos - 1 : pos] in (b"\0", b"/") and after in (b"\0", b"/"):
            start = blob.rfind(b"\0", 0, pos)
            end = blob.find(b"\0", pos + 4)
            spans.append((start, end))
            pos = end
        pos = blob.find(b".git", pos + 1)
    if not spans:
        return data
    kept = []
    done = 0
    for start, end in spans:
        kept.append(blob[done:start])
        done = end
    kept.append(blob[done:])
    return b"".join(kept)[1:]


@attrs.frozen
class _Matches:
    """Paths matching one query: files first, then directories (search-space text and original)."""

    query: str
    insensitive: bool
    texts: list[str]
    paths: list[str]
    n_files: int

    def narrowed(self, query: str, fuzzy: re.Pattern[str]) -> _Matches:
        """The subset matching ``query``, which extends this one's query."""
        keep = list(map(fuzzy.search, self.texts))
        n_files = sum(map(bool, keep[: self.n_files]))
        return _Matches(
            query, self.insensitive, list(compress(self.texts, keep)), list(compress(self.paths, keep)), n_files
        )


@attrs.define
class _Candidates:
    """
    The cached file list of one root: relative paths joined as ``\0./a\0./b/c\0`` (``text``,
    what ``rg --files --null .`` prints) and the same case-folded (``folded``, same offsets).
    Two strings instead of lists of strings make loading cheap; a search scans them with one
    regex.
    """

    loaded_at: float
    text: str
    truncated: bool
    _folded: str | None = None
    _files: list[str] | None = None
    _shallow: tuple[int, list[int]] | None = None
    # The previous query's matches: a query that extends it (the user typed on) only filters those.
    _last: _Matches | None = None

    # Lazy values are computed by whichever thread needs them first; racing threads compute the
    # same value, so no lock is needed.

    def folded(self) -> str:
        if self._folded is None:
            self._folded = _fold_blob(self.text)
        return self._folded

    def files(self) -> list[str]:
        if self._files is None:
            self._files = self.text.replace("\0./", "\0")[1:-1].split("\0") if len(self.text) > 1 else []
        return self._files

    def matching(self, query: str, insensitive: bool, fuzzy: re.Pattern[str]) -> _Matches:
        """The files and directories holding ``query`` as a subsequence."""
        last = self._last
        if last is not None and last.insensitive == insensitive and _is_subsequence(last.query, query):
            found = last.narrowed(query, fuzzy)
        else:
            found = self._scan(query, insensitive, fuzzy)
        self._last = found
        return found

    def _scan(self, query: str, insensitive: bool, fuzzy: re.Pattern[str]) -> _Matches:
        text = self.text
        blob = self.folded() if insensitive else text
        texts: list[str] = []
        paths: list[str] = []
        add_text, add_path = texts.append, paths.append
        rare, share = _rarest(blob, query)
        if share < _RARE_SHARE:
            # Visit only the paths holding the query's rarest character.
            find, rfind = blob.find, blob.rfind
            pos = find(rare, 1)
            while pos >= 0:
                start = rfind("\0", 0, pos) + 3  # past "\0./"
                end = find("\0", pos)
                candidate = blob[start:end]
                if fuzzy.search(candidate):
                    add_text(candidate)
                    add_path(text[start:end])
                pos = find(rare, end)
        else:
            # Where each matching path ends, where it starts (after "\0./"), then the slices:
            # C-level maps only, no Python code per path, and no objects kept per path but ints.
            ends = list(map(re.Match.end, _blob_regex(query).finditer(blob), repeat(1)))
            starts = list(map(add, map(blob.rfind, repeat("\0"), repeat(0), ends), repeat(3)))
            texts += map(blob.__getitem__, map(slice, starts, ends))
            paths += map(text.__getitem__, map(slice, starts, ends))
        # A directory matching the query is an ancestor of matching files (its path is a prefix
        # of theirs), so only those are tested.
        parents = {p.rpartition("/")[0] for p in paths}
        parents.discard("")
        directories: set[str] = set()
        for parent in parents:
            while parent and parent not in directories:
                directories.add(parent)
                parent = parent.rpartition("/")[0]
        n_files = len(paths)
        for directory in sorted(directories):
            folded = _fold(directory) if insensitive else directory
            if fuzzy.search(folded):
                texts.append(folded)
                paths.append(directory)
        return _Matches(query, insensitive, texts, paths, n_files)

    def shallow_files(self, limit: int) -> list[str]:
        """The first ``limit`` files in (depth, path) order."""
        shallow = self._shallow
        if shallow is None or shallow[0] < limit:
            files = self.files()
            depths = [p.count("/") for p in files]
            picked = _smallest(list(range(len(files))), depths, files, limit)
            picked.sort(key=lambda i: (depths[i], files[i]))
            shallow = self._shallow = (limit, picked)
        files = self.files()
        return [files[i] for i in shallow[1][:limit]]


def _preselect(texts: list[str], paths: list[str], query: str, fuzzy: re.Pattern[str], budget: int) -> list[int]:
    """
    ``budget`` indices of many matches: whole tiers, best first (computed with ``str`` methods
    and regexes, at C speed), then the shortest paths of the first tier that does not fit (ties
    by path, so the choice does not depend on the listing order).
    """
    picked: list[int] = []
    lengths: list[int] = []

    def fits(group: list[int]) -> bool:
        """Take ``group`` whole if the budget allows, else its shortest paths, and say so."""
        room = budget - len(picked)
        if len(group) < room:
            picked.extend(group)
            return True
        if not lengths:
            lengths.extend(map(len, paths))
        picked.extend(_smallest(group, lengths, paths, room))
        return False

    rest = list(range(len(texts)))
    names = [t.rpartition("/")[2] for t in texts]
    rest_names = names
    # Base names starting with the query: the name itself, name + extension, then the others.
    mask = list(map(str.startswith, rest_names, repeat(query)))
    prefixed = list(compress(rest, mask))
    prefixed_names = list(map(names.__getitem__, prefixed))
    is_exact = list(map(query.__eq__, prefixed_names))
    is_stem = list(map(str.startswith, prefixed_names, repeat(query + ".")))
    exact = list(compress(prefixed, is_exact))
    stems = list(compress(prefixed, is_stem))
    others = list(compress(prefixed, map(not_, map(or_, is_exact, is_stem))))
    if not (fits(exact) and fits(stems) and fits(others)):
        return picked
    keep = list(map(not_, mask))
    rest = list(compress(rest, keep))
    rest_names = list(compress(rest_names, keep))
    # Then the query inside the base name, as a subsequence of it, inside the path.
    for on_names, contiguous in ((True, True), (True, False), (False, True)):
        strings = rest_names if on_names else list(map(texts.__getitem__, rest))
        if contiguous:
            found: list[Any] = list(map(str.__contains__, strings, repeat(query)))
        else:
            found = list(map(fuzzy.search, strings))
        if not fits(list(compress(rest, found))):
            return picked
        keep = list(map(not_, found))
        rest = list(compress(rest, keep))
        if on_names:
            rest_names = list(compress(rest_names, keep))
    fits(rest)
    return picked


def _item(root: str, rel: str, kind: str, score: float) -> SearchItem:
    return SearchItem(
        path=os.path.join(root, rel), name=rel.rpartition("/")[2], type=kind, score=score, relative_path=rel
    )


def _find_rg() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "rg")
    if os.access(beside, os.X_OK) and os.path.isfile(beside):
        return beside
    return shutil.which("rg")


def _check_directory(root: str) -> None:
    with mapped_errors(root):
        st = os.stat(root)
        if not stat.S_ISDIR(st.st_mode):
            raise ApiError("PATH_NOT_DIRECTORY", f"Path is not a directory: {root}")
        os.scandir(root).close()


class _Deadline:
    """Kills a process when a wall-clock bound passes (from a timer thread)."""

    def __init__(self, proc: subprocess.Popen[bytes], seconds: float):
        self.expired = False
        self._proc = proc
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        if seconds <= 0:
            self._fire()
        else:
            self._timer.start()

    def _fire(self) -> None:
        self.expired = True
        try:
            self._proc.kill()
        except OSError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()


def _scratch_file() -> IO[bytes]:
    """An anonymous file in memory (memfd) where possible, else a temporary file."""
    if hasattr(os, "memfd_create"):
        try:
            return os.fdopen(os.memfd_create("codebuddy-rg-files", os.MFD_CLOEXEC), "w+b")
        except OSError:
            pass
    return tempfile.TemporaryFile()


class _OutputWatch:
    """
    Kills ``proc`` when its output file holds ``max_names`` NUL-terminated names or when
    ``seconds`` pass (a thread checking every 50 ms).
    """

    def __init__(self, proc: subprocess.Popen[bytes], fd: int, max_names: int, seconds: float):
        self.stopped_rg = False
        self._proc, self._fd, self._max_names = proc, fd, max_names
        self._give_up = time.monotonic() + seconds
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="codebuddy-rg-watch", daemon=True)
        if seconds <= 0:
            self._kill()
            self._done.set()
        self._thread.start()

    def _run(self) -> None:
        counted = names = 0
        while not self.stopped_rg:
            size = os.fstat(self._fd).st_size
            if size > counted:
                names += os.pread(self._fd, size - counted, counted).count(b"\0")
                counted = size
            if names >= self._max_names or time.monotonic() > self._give_up:
                self._kill()
                return
            if self._done.wait(0.05):
                return

    def _kill(self) -> None:
        self.stopped_rg = True
        try:
            self._proc.kill()
        except OSError:
            pass

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _finish(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``proc`` (if still running) and reap it."""
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass
    if proc.stdout is not None:
        proc.stdout.close()
    proc.wait()


# --------------------------------------------------------------------------------------------


class FileSearch:
    """
    Fuzzy path search and content search under a directory.

    ``run_blocking(fn, *args) -> Deferred`` runs ``fn`` off the reactor thread. ``rg_path``:
    the ripgrep executable; ``None`` looks beside ``sys.executable`` (the PyPI ``ripgrep``
    wheel), then on ``PATH``; ``""`` (or nothing found) uses the Python fallbacks. ``clock`` is
    an ``IReactorTime`` or a ``() -> float``; ``time.monotonic`` by default.
    """

    log = Logger()

    def __init__(
        self,
        run_blocking: Callable[..., Deferred[Any]],
        *,
        rg_path: str | None = None,
        clock: Any = None,
        cache_ttl: float = 2.0,
        max_files: int = 500_000,
        content_timeout: float = 30.0,
        list_timeout: float = 30.0,
    ):
        self._run_blocking = run_blocking
        self.rg_path: str | None = _find_rg() if rg_path is None else (rg_path or None)
        if clock is None:
            self._now: Callable[[], float] = time.monotonic
        elif hasattr(clock, "seconds"):
            self._now = clock.seconds
        else:
            self._now = clock
        self.cache_ttl = cache_ttl
        self.max_files = max_files
        self.content_timeout = content_timeout
        self.list_timeout = list_timeout
        self._cache: OrderedDict[str, _Candidates] = OrderedDict()
        self._lock = threading.Lock()
        self._root_locks: dict[str, threading.Lock] = {}

    # ---------------------------------------------------------------- fuzzy search

    def search(self, root: str, query: str | None, limit: int = 50) -> Deferred[list[SearchItem]]:
        """The best ``limit`` files and directories under ``root`` for ``query`` (see the module doc)."""
        return self._run_blocking(self._search, root, query, limit)

    def invalidate(self, root: str | None = None) -> None:
        """Forget the cached candidates of ``root`` (of every root when ``None``)."""
        with self._lock:
            if root is None:
                self._cache.clear()
            else:
                self._cache.pop(os.path.normpath(root), None)

    def _search(self, root: str, query: str | None, limit: int) -> list[SearchItem]:
        root = os.path.normpath(root)
        query = (query or "").strip()
        if len(query) > MAX_QUERY_CHARS:
            raise ApiError("BAD_REQUEST", f"query is longer than {MAX_QUERY_CHARS} characters")
        _check_directory(root)
        if limit <= 0:
            return []
        cands = self._candidates(root)
        if not query:
            return [_item(root, rel, FILE, 0.0) for rel in cands.shallow_files(limit)]
        if "\0" in query:
            return []  # no path holds a NUL (and NUL separates the paths in the cache)
        folded_query = _fold(query)
        insensitive = folded_query == query  # smart case: insensitive unless the query has capitals
        fuzzy = _subsequence_regex(query)
        found = cands.matching(query, insensitive, fuzzy)
        texts, paths = found.texts, found.paths
        candidates: list[int] | range = range(len(texts))
        budget = max(_SCORE_BUDGET, 4 * limit)
        if len(texts) > budget:
            candidates = _preselect(texts, paths, query, fuzzy, budget)
        scored = [(score_path(texts[i], paths[i], query, fuzzy), i) for i in candidates]
        best = heapq.nsmallest(limit, scored, key=lambda si: (-si[0], paths[si[1]]))
        return [_item(root, paths[i], FILE if i < found.n_files else DIRECTORY, score) for score, i in best]

    def _candidates(self, root: str) -> _Candidates:
        with self._lock:
            cached = self._fresh(root)
            if cached is not None:
                return cached
            root_lock = self._root_locks.setdefault(root, threading.Lock())
        with root_lock:  # one walk per root at a time; the others wait for its result
            with self._lock:
                cached = self._fresh(root)
            if cached is not None:
                return cached
            cands = self._list_files(root, self._now())
            with self._lock:
                self._cache[root] = cands
                self._cache.move_to_end(root)
                while len(self._cache) > MAX_CACHED_ROOTS:
                    self._cache.popitem(last=False)
                for other in [r for r in self._root_locks if r not in self._cache]:
                    del self._root_locks[other]
            return cands

    def _fresh(self, root: str) -> _Candidates | None:
        """The unexpired candidates of ``root``; expired lists of every root are dropped (memory)."""
        now = self._now()
        for other in [r for r, c in self._cache.items() if now - c.loaded_at >= self.cache_ttl]:
            del self._cache[other]
        cached = self._cache.get(root)
        if cached is not None:
            self._cache.move_to_end(root)
        return cached

    def _list_files(self, root: str, started: float) -> _Candidates:
        if self.rg_path is not None:
            try:
                return self._rg_files(self.rg_path, root, started)
            except OSError as exc:
                self.log.warn("rg could not run ({error}); using the Python walker", error=exc)
                self.rg_path = None
        files: list[str] = []
        give_up = time.monotonic() + self.list_timeout
        truncated = False
        for rel in walk_files(root, should_stop=lambda: time.monotonic() > give_up):
            if len(files) >= self.max_files:
                truncated = True
                break
            files.append(rel)
        text = "\0" + "".join(f"./{p}\0" for p in files)
        return _Candidates(started, text, truncated or time.monotonic() > give_up)

    def _rg_files(self, rg: str, root: str, started: float) -> _Candidates:
        # rg writes into a memory file read once it exits: through a pipe, the reader would
        # wake up for every 8 KiB rg writes (a pipe costs ~10% more on one CPU).
        with _scratch_file() as out:
            proc = subprocess.Popen(
                [rg, *_RG_FILES_ARGS], cwd=os.fsencode(root), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            watch = _OutputWatch(proc, out.fileno(), self.max_files, self.list_timeout)
            try:
                proc.wait()
            finally:
                watch.stop()
            data = os.pread(out.fileno(), os.fstat(out.fileno()).st_size, 0)
        data = _drop_git(data[: data.rfind(b"\0") + 1])  # a partial name if rg was killed
        truncated = watch.stopped_rg
        # Each name takes at least 4 bytes ("./x\0"): only a long output needs counting.
        if len(data) >= 4 * self.max_files and data.count(b"\0") >= self.max_files:
            data = b"\0".join(data.split(b"\0", self.max_files)[: self.max_files]) + b"\0"
            truncated = True
        return _Candidates(started, "\0" + os.fsdecode(data), truncated)

    # ---------------------------------------------------------------- content search

    def search_content(
        self,
        root: str,
        query: str,
        *,
        is_regex: bool = False,
        case_sensitive: bool = False,
        whole_word: bool = False,
        include_glob: str | None = None,
        exclude_glob: str | None = None,
        max_results: int = 200,
    ) -> Deferred[ContentResults]:
        """Lines under ``root`` matching ``query`` (see the module doc); globs are comma-separated."""
        return self._run_blocking(
            self._search_content,
            root,
            query,
            is_regex,
            case_sensitive,
            whole_word,
            include_glob,
            exclude_glob,
            max_results,
        )

    def _search_content(
        self,
        root: str,
        query: str,
        is_regex: bool,
        case_sensitive: bool,
        whole_word: bool,
        include_glob: str | None,
        exclude_glob: str | None,
        max_results: int,
    ) -> ContentResults:
        if not query:
            raise ApiError("BAD_REQUEST", "query must not be empty", [{"field": "query", "message": "required"}])
        if "\n" in query or "\r" in query:
            raise ApiError("BAD_REQUEST", "query must be a single line", [{"field": "query", "message": "newline"}])
        if max_results < 1:
            raise ApiError("BAD_REQUEST", "maxResults must be at least 1", [{"field": "maxResults", "message": "< 1"}])
        max_results = min(max_results, MAX_CONTENT_RESULTS)
        for field, text in (("query", query), ("includeGlob", include_glob), ("excludeGlob", exclude_glob)):
            if not _passable(text or ""):
                message = f"{field} contains a NUL byte or a lone surrogate"
                raise ApiError("BAD_REQUEST", message, [{"field": field, "message": "invalid text"}])
        root = os.path.normpath(root)
        _check_directory(root)
        include = _split_globs(include_glob)
        exclude = _split_globs(exclude_glob)
        if self.rg_path is not None:
            try:
                found, truncated = self._rg_content(
                    self.rg_path, root, query, is_regex, case_sensitive, whole_word, include, exclude, max_results
                )
            except OSError as exc:
                self.log.warn("rg could not run ({error}); using the Python search", error=exc)
                self.rg_path = None
            else:
                found.sort(key=lambda m: (m.path, m.line))
                return ContentResults(found, truncated)
        found, truncated = self._python_content(
            root, query, is_regex, case_sensitive, whole_word, include, exclude, max_results
        )
        found.sort(key=lambda m: (m.path, m.line))
        return ContentResults(found, truncated)

    def _rg_content(
        self,
        rg: str,
        root: str,
        query: str,
        is_regex: bool,
        case_sensitive: bool,
        whole_word: bool,
        include: list[str],
        exclude: list[str],
        max_results: int,
    ) -> tuple[list[ContentMatch], bool]:
        argv = [rg, "--no-config", "--json", "--no-messages", "--hidden", "--no-require-git"]
        argv += ["--max-columns", str(MAX_LINE_CHARS), "--max-columns-preview"]
        argv += ["--max-count", str(min(MAX_MATCHES_PER_FILE, max_results))]
        argv.append("--case-sensitive" if case_sensitive else "--ignore-case")
        if not is_regex:
            argv.append("--fixed-strings")
        if whole_word:
            argv.append("--word-regexp")
        argv += ["--glob", "!.git"]
        for glob in include:
            argv += ["--glob", glob]
        for glob in exclude:
            argv += ["--glob", "!" + glob.lstrip("!")]
        argv += ["--regexp", query, "--", root]
        found: list[ContentMatch] = []
        truncated = False
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(
                [os.fsencode(a) for a in argv],
                cwd=os.fsencode(root),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
            )
            deadline = _Deadline(proc, self.content_timeout)
            try:
                assert proc.stdout is not None
                for raw in _bounded_lines(proc.stdout):
                    if not raw.startswith(b'{"type":"match"'):
                        continue
                    match = _parse_rg_match(raw)
                    if match is None:
                        continue
                    found.append(match)
                    if len(found) >= max_results:
                        truncated = True
                        break
            finally:
                deadline.cancel()
                _finish(proc)
            if deadline.expired:
                truncated = True
            if proc.returncode == 2 and not found and not deadline.expired:
                errors.seek(0)
                message = errors.read(4096).decode("utf-8", "replace").strip()
                message = "\n".join(line.removeprefix("rg: ") for line in message.splitlines())
                if message:
                    raise ApiError("BAD_REQUEST", message)
        return found, truncated

    def _python_content(
        self,
        root: str,
        query: str,
        is_regex: bool,
        case_sensitive: bool,
        whole_word: bool,
        include: list[str],
        exclude: list[str],
        max_results: int,
    ) -> tuple[list[ContentMatch], bool]:
        body = query if is_regex else re.escape(query)
        if whole_word:
            body = f"(?<!\\w)(?:{body})(?!\\w)"
        try:
            pattern = re.compile(body, 0 if case_sensitive else re.IGNORECASE)
        except (re.error, OverflowError, RecursionError) as exc:
            message = f"regex parse error: {exc}"
            raise ApiError("BAD_REQUEST", message, [{"field": "query", "message": message}]) from None
        started = time.monotonic()
        per_file = min(MAX_MATCHES_PER_FILE, max_results)
        found: list[ContentMatch] = []
        expired = False

        def too_late() -> bool:
            nonlocal expired
            expired = expired or time.monotonic() - started > self.content_timeout
            return expired

        overrides = _Overrides(include, exclude)
        for rel in walk_files(root, skip_dirs=frozenset({".git"}), overrides=overrides, should_stop=too_late):
            path = os.path.join(root, rel)
            for match in _search_file(path, pattern, per_file):
                found.append(match)
                if len(found) >= max_results:
                    return found, True
            if too_late():
                break
        return found, expired


def _passable(text: str) -> bool:
    """Whether ``text`` can be an argument of a process (no NUL, encodable with surrogateescape)."""
    try:
        return b"\0" not in os.fsencode(text)
    except UnicodeEncodeError:
        return False


def _split_globs(globs: str | None) -> list[str]:
    if not globs:
        return []
    return [g.strip() for g in globs.split(",") if g.strip()]


def _bounded_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Lines of ``stream``; lines longer than ``_MAX_JSON_LINE`` are dropped whole."""
    while True:
        line = stream.readline(_MAX_JSON_LINE)
        if not line:
            return
        if line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):  # too long: skip to the end of it
            line = stream.readline(_MAX_JSON_LINE)


def _rg_text(field: dict[str, Any]) -> bytes:
    if "text" in field:
        return str(field["text"]).encode("utf-8", "surrogatepass")
    return base64.b64decode(field.get("bytes", ""))


def _parse_rg_match(raw: bytes) -> ContentMatch | None:
    try:
        data = json.loads(raw)["data"]
        path = os.fsdecode(_rg_text(data["path"]))
        line_bytes = _rg_text(data["lines"])
        submatches = data.get("submatches") or [{"start": 0}]
        start = int(submatches[0]["start"])
        line_number = int(data["line_number"])
    except (ValueError, KeyError, TypeError, IndexError, binascii.Error):
        return None
    return ContentMatch(path=path, line=line_number, column=start + 1, text=_excerpt(line_bytes, start))


def _excerpt(line: bytes, start: int) -> str:
    """The line as text, without its newline, cut to ``MAX_LINE_CHARS`` around byte ``start``."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    text = line.decode("utf-8", "replace")
    if len(text) <= MAX_LINE_CHARS:
        return text
    at = len(line[:start].decode("utf-8", "replace"))
    begin = 0 if at < MAX_LINE_CHARS - 100 else at - 100
    return text[begin : begin + MAX_LINE_CHARS]


def _search_file(path: str, pattern: re.Pattern[str], per_file: int) -> Iterator[ContentMatch]:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > _MAX_FALLBACK_FILE:
                return
            data = f.read()
    except OSError:
        return
    if b"\0" in data:
        return
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines[-1] == "":
        lines.pop()  # the end of the last line, not a line
    count = 0
    for number, line in enumerate(lines, 1):
        match = pattern.search(line.removesuffix("\r"))
        if match is None:
            continue
        line_bytes = line.encode("utf-8", "surrogateescape")
        start = len(line[: match.start()].encode("utf-8", "surrogateescape"))
        yield ContentMatch(path=path, line=number, column=start + 1, text=_excerpt(line_bytes, start))
        count += 1
        if count >= per_file:
            return
