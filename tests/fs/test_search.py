"""
Tests for ``codebuddy.fs.search``: fuzzy path search (the ``@`` popup) and content search.

Every test runs over a real temporary tree; ``run_blocking`` runs the work synchronously.
Content-search tests run twice, with ripgrep and with the Python fallback.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from codebuddy.fs import search as search_module
from codebuddy.fs.search import (
    MAX_LINE_CHARS,
    MAX_MATCHES_PER_FILE,
    ContentResults,
    FileSearch,
    SearchItem,
    _fold,
    glob_to_regex,
)
from codebuddy.web.errors import ApiError

RG = search_module._find_rg()
WEBUI_EXCLUDES = "node_modules,**/.git,**/dist,**/build,**/.next,**/coverage"


def run_now(fn: Any, *args: Any) -> Deferred[Any]:
    """A synchronous stand-in for deferToThreadPool."""
    return maybeDeferred(fn, *args)


def make_tree(root: str, files: dict[str, str | bytes]) -> None:
    """Create ``files`` (relative path -> content) under ``root``."""
    for rel, content in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        with open(path, "wb") as f:
            f.write(data)


def is_subsequence(needle: str, haystack: str) -> bool:
    it = iter(haystack)
    return all(c in it for c in needle)


class TreeMixin(SynchronousTestCase):
    """A fresh temporary root (outside any git checkout, so no parent .gitignore applies)."""

    rg_path: str | None = RG

    def setUp(self) -> None:
        self.root = tempfile.mkdtemp(prefix="cb-search-")
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)

    def searcher(self, **kwargs: Any) -> FileSearch:
        kwargs.setdefault("rg_path", self.rg_path or "")
        return FileSearch(run_now, **kwargs)

    def search(self, query: str | None, limit: int = 50, **kwargs: Any) -> list[SearchItem]:
        result: list[SearchItem] = self.successResultOf(self.searcher(**kwargs).search(self.root, query, limit))
        return result

    def rels(self, query: str | None, limit: int = 50, files_only: bool = False) -> list[str]:
        return [i.relative_path for i in self.search(query, limit) if not files_only or i.type == "file"]


class FuzzyRankingTests(TreeMixin):
    """Ranking of the fuzzy search (same with or without rg)."""

    def test_tiers(self) -> None:
        """Exact name, then name.ext, name prefix, name contains, name subsequence, path contains, path subsequence."""
        make_tree(
            self.root,
            {
                "lib/main": "",
                "src/main.py": "",
                "src/mainframe.py": "",
                "docs/domain.md": "",
                "x/mxaxixn.txt": "",
                "main2/zz.txt": "",
                "m/a/i/n.txt": "",
            },
        )
        self.assertEqual(
            self.rels("main", files_only=True),
            [
                "lib/main",
                "src/main.py",
                "src/mainframe.py",
                "docs/domain.md",
                "x/mxaxixn.txt",
                "main2/zz.txt",
                "m/a/i/n.txt",
            ],
        )

    def test_exact_name_first_even_when_deep(self) -> None:
        """An exact base-name match ranks first, even deep in the tree and against shorter paths."""
        make_tree(self.root, {"a/b/c/d/e/config": "", "configure.ac": "", "conf/fig.txt": "", "config.yaml": ""})
        self.assertEqual(self.rels("config", files_only=True)[:2], ["a/b/c/d/e/config", "config.yaml"])

    def test_name_prefix_beats_deep_subsequence(self) -> None:
        """A base name starting with the query beats one that contains it, which beats a scattered path."""
        make_tree(self.root, {"b/u/t/x.txt": "", "rebut.md": "", "deep/er/Button.tsx": ""})
        self.assertEqual(self.rels("but", files_only=True), ["deep/er/Button.tsx", "rebut.md", "b/u/t/x.txt"])

    def test_consecutive_beats_scattered(self) -> None:
        """Among base names holding the query as a subsequence, consecutive characters score higher."""
        make_tree(self.root, {"axbxc.txt": "", "abxc.txt": ""})
        self.assertEqual(self.rels("abc"), ["abxc.txt", "axbxc.txt"])
        # Even when the consecutive pair leaves a longer gap (and the path is longer).
        make_tree(self.root, {"xabxxxxc.txt": "", "xaxbxc.txt": ""})
        self.assertEqual(self.rels("abc")[-2:], ["xabxxxxc.txt", "xaxbxc.txt"])

    def test_word_boundaries(self) -> None:
        """Characters at word starts (after _ - . /, camelCase humps) beat characters inside words."""
        make_tree(self.root, {"qfqqbq.py": "", "foo_bar.py": ""})
        self.assertEqual(self.rels("fb")[0], "foo_bar.py")
        make_tree(self.root, {"fooBar.ts": ""})
        first_two = self.rels("fb")[:2]
        self.assertEqual(sorted(first_two), ["fooBar.ts", "foo_bar.py"])
        self.assertEqual(self.rels("fb")[-1], "qfqqbq.py")

    def test_boundary_beats_inner_occurrence_in_path(self) -> None:
        """For path matches, a query spelled by directory initials ranks above scattered inner letters."""
        make_tree(self.root, {"src/components/Button.tsx": "", "xsxrxcxcxbx/zz.tsx": ""})
        self.assertEqual(self.rels("scb", files_only=True), ["src/components/Button.tsx", "xsxrxcxcxbx/zz.tsx"])

    def test_base_name_over_directory(self) -> None:
        """A match in the base name ranks above the same letters in a directory name."""
        make_tree(self.root, {"src/components/Button.tsx": "", "docs/compare.md": ""})
        ranked = self.rels("comp")
        self.assertEqual(set(ranked[:2]), {"src/components", "docs/compare.md"})
        self.assertEqual(ranked[2], "src/components/Button.tsx")

    def test_shorter_path_breaks_ties(self) -> None:
        """Equal matches rank the shorter path first, then by path."""
        make_tree(self.root, {"aaaa/util.py": "", "a/util.py": "", "b/util.py": ""})
        self.assertEqual(self.rels("util.py"), ["a/util.py", "b/util.py", "aaaa/util.py"])

    def test_scores_descend(self) -> None:
        """Results come sorted by score, best first, with scores that say so."""
        make_tree(self.root, {"x/readme.md": "", "README": "", "r/e/a/d/m/e.txt": ""})
        items = self.search("readme")
        scores = [i.score for i in items]
        self.assertEqual(scores, sorted(scores, reverse=True))
        self.assertGreater(scores[0], scores[-1])

    def test_smart_case(self) -> None:
        """Lowercase queries ignore case; a query with a capital letter matches case exactly."""
        make_tree(self.root, {"README.md": "", "readme.txt": "", "ReadMe.rst": ""})
        self.assertEqual(sorted(self.rels("readme")), ["README.md", "ReadMe.rst", "readme.txt"])
        self.assertEqual(self.rels("README"), ["README.md"])
        self.assertEqual(self.rels("RM"), ["ReadMe.rst", "README.md"])

    def test_limit(self) -> None:
        """At most ``limit`` results, the best ones."""
        make_tree(self.root, {f"file{i:02}.txt": "" for i in range(30)})
        make_tree(self.root, {"file.txt": ""})
        items = self.search("file", limit=5)
        self.assertEqual(len(items), 5)
        self.assertEqual(items[0].relative_path, "file.txt")
        self.assertEqual(self.search("file", limit=0), [])

    def test_directories_found(self) -> None:
        """Directories holding files are candidates too, with type "directory" and absolute paths."""
        make_tree(self.root, {"src/components/Button.tsx": ""})
        first = self.search("components")[0]
        self.assertEqual(
            first,
            SearchItem(
                path=os.path.join(self.root, "src/components"),
                name="components",
                type="directory",
                score=first.score,
                relative_path="src/components",
            ),
        )
        button = [i for i in self.search("button") if i.name == "Button.tsx"][0]
        self.assertEqual((button.type, button.path), ("file", os.path.join(self.root, "src/components/Button.tsx")))

    def test_empty_query_lists_shallow_files_first(self) -> None:
        """No query (or a blank one): files only, by depth then path, score 0."""
        make_tree(self.root, {"z.txt": "", "a/b.txt": "", "a/c/d.txt": "", "b.txt": "", "a/a.txt": ""})
        expected = ["b.txt", "z.txt", "a/a.txt", "a/b.txt", "a/c/d.txt"]
        for query in (None, "", "  "):
            items = self.search(query)
            self.assertEqual([i.relative_path for i in items], expected)
            self.assertEqual({(i.type, i.score) for i in items}, {("file", 0.0)})
        self.assertEqual([i.relative_path for i in self.search(None, limit=3)], expected[:3])

    def test_query_is_stripped(self) -> None:
        """Blanks around the query are ignored."""
        make_tree(self.root, {"main.py": "", "other.txt": ""})
        self.assertEqual(self.rels("  main "), ["main.py"])

    def test_odd_queries(self) -> None:
        """Queries with NUL, lone surrogates, newlines or regex syntax find what they spell, without errors."""
        make_tree(self.root, {"a(b).txt": "", "plain.txt": ""})
        for query in ("\0", "\ud800", "a\nb", "(", "\\", "[^]", "a(b)"):
            items = self.search(query)
            self.assertEqual([i.relative_path for i in items], ["a(b).txt"] if query in ("(", "a(b)") else [])

    def test_no_match(self) -> None:
        """A query that is no subsequence of any path finds nothing."""
        make_tree(self.root, {"main.py": ""})
        self.assertEqual(self.search("zzz"), [])

    def test_regex_characters_are_literal(self) -> None:
        """Regex metacharacters in the query match themselves."""
        make_tree(self.root, {"a.b[c]*.txt": "", "abc.txt": ""})
        self.assertEqual(self.rels("[c]*"), ["a.b[c]*.txt"])
        self.assertEqual(self.rels(".b["), ["a.b[c]*.txt"])

    def test_many_matches_still_finds_best(self) -> None:
        """With more matches than are scored one by one, the best tiers still come first."""
        files: dict[str, str | bytes] = {f"d{i // 100}/event{i}.txt": "" for i in range(2500)}
        files["deep/down/e"] = ""
        files["zz/e.md"] = ""
        long_dir = "a-rather/long/directory/path/that/is/longer/than/the/others"
        files[f"{long_dir}/event.test.ts"] = ""
        files[f"{long_dir}/x/event"] = ""
        make_tree(self.root, files)
        self.assertEqual(self.rels("e", limit=3, files_only=True)[:2], ["deep/down/e", "zz/e.md"])
        top = self.search("event7", limit=3)
        self.assertEqual(top[0].relative_path, "d0/event7.txt")
        # Exact and name.ext matches survive the cut even with the longest paths.
        self.assertEqual(
            self.rels("event", limit=2, files_only=True), [f"{long_dir}/x/event", f"{long_dir}/event.test.ts"]
        )

    def test_greek_final_sigma(self) -> None:
        """Case-insensitive search treats a word-final capital sigma like any sigma."""
        make_tree(self.root, {"ΟΔΟΣ/χάρτης.txt": "", "other.txt": ""})
        self.assertEqual(self.rels("οδοσ"), ["ΟΔΟΣ", "ΟΔΟΣ/χάρτης.txt"])
        self.assertEqual(self.rels("ΟΔΟΣ"), ["ΟΔΟΣ", "ΟΔΟΣ/χάρτης.txt"])

    def test_missing_root(self) -> None:
        """A root that does not exist is NOT_FOUND."""
        d = self.searcher().search(os.path.join(self.root, "nope"), "x")
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "NOT_FOUND")

    def test_root_is_a_file(self) -> None:
        """A root that is a file is PATH_NOT_DIRECTORY."""
        make_tree(self.root, {"f.txt": ""})
        d = self.searcher().search(os.path.join(self.root, "f.txt"), "x")
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "PATH_NOT_DIRECTORY")

    def test_too_long_query(self) -> None:
        """A query over the length bound is BAD_REQUEST."""
        d = self.searcher().search(self.root, "x" * 5000)
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "BAD_REQUEST")

    def test_work_runs_in_run_blocking(self) -> None:
        """search and search_content only hand work to run_blocking; nothing runs on the calling thread."""
        calls: list[tuple[Any, ...]] = []

        def record(fn: Any, *args: Any) -> Deferred[Any]:
            calls.append((fn, *args))
            return Deferred()

        fs = FileSearch(record, rg_path="")
        missing = os.path.join(self.root, "missing")
        d1 = fs.search(missing, "x")
        d2 = fs.search_content(missing, "x")
        self.assertNoResult(d1)
        self.assertNoResult(d2)
        self.assertEqual(len(calls), 2)
        with self.assertRaises(ApiError):
            calls[0][0](*calls[0][1:])

    def test_non_utf8_names(self) -> None:
        """Names that are not UTF-8 are found, decoded with surrogate escapes that map back to the same bytes."""
        raw = os.path.join(os.fsencode(self.root), b"caf\xe9-menu.txt")
        with open(raw, "wb") as f:
            f.write(b"x")
        os.makedirs(os.path.join(os.fsencode(self.root), b"d\xff"))
        with open(os.path.join(os.fsencode(self.root), b"d\xff", b"inner.txt"), "wb") as f:
            f.write(b"x")
        items = self.search("menu")
        self.assertEqual([i.name for i in items], [os.fsdecode(b"caf\xe9-menu.txt")])
        self.assertEqual(os.fsencode(items[0].path), raw)
        inner = self.search("inner")
        self.assertEqual(inner[0].relative_path, os.fsdecode(b"d\xff/inner.txt"))
        self.assertIn(os.fsdecode(b"d\xff"), [i.relative_path for i in self.search("d")])
        self.assertEqual(len(self.search(None)), 2)

    def test_symlinks_not_followed(self) -> None:
        """Symlinks are not listed (rg does not follow them), so a link loop is harmless."""
        make_tree(self.root, {"real/file.txt": ""})
        os.symlink(self.root, os.path.join(self.root, "real", "loop"))
        os.symlink("file.txt", os.path.join(self.root, "real", "alias.txt"))
        self.assertEqual(self.rels(None), ["real/file.txt"])


class FuzzyRankingFallbackTests(FuzzyRankingTests):
    """The same ranking tests with the Python walker instead of rg."""

    rg_path = None


class IgnoreTests(TreeMixin):
    """What the candidate list leaves out."""

    def setUp(self) -> None:
        super().setUp()
        make_tree(
            self.root,
            {
                ".gitignore": "*.log\nbuild/\n!keep.log\n/rootonly.txt\n",
                "sub/.ignore": "secret*\n",
                "a.log": "",
                "keep.log": "",
                "build/out.js": "",
                "src/build.txt": "",
                "rootonly.txt": "",
                "src/rootonly.txt": "",
                "sub/secret.txt": "",
                "sub/public.txt": "",
                "keep.js": "",
                ".hidden.js": "",
                ".git/config": "",
                ".git/HEAD": "",
                "vendor/lib/.git": "gitdir: ../../.git/modules/lib",
                "vendor/other/.git/objects/ab/cdef": "",
                "vendor/lib/a.git/kept.txt": "",
                ".github/workflows/ci.yml": "",
            },
        )

    def check_ignores(self, fs: FileSearch) -> set[str]:
        items = self.successResultOf(fs.search(self.root, None, 1000))
        rels = {i.relative_path for i in items}
        self.assertEqual(
            rels,
            {
                ".gitignore",
                "keep.log",
                "src/build.txt",
                "src/rootonly.txt",
                "sub/.ignore",
                "sub/public.txt",
                "keep.js",
                ".hidden.js",
                "vendor/lib/a.git/kept.txt",
                ".github/workflows/ci.yml",
            },
        )
        return rels

    def test_gitignore_with_rg(self) -> None:
        """With rg: .gitignore and .ignore are respected (no git repository needed), hidden files kept, .git not."""
        if RG is None:
            self.skipTest("rg is not installed")
        self.check_ignores(self.searcher(rg_path=RG))
        self.assertEqual(self.rels("config"), [])

    def test_gitignore_with_fallback(self) -> None:
        """The fallback walker reads the same ignore files (negation, anchoring, directory-only rules)."""
        self.check_ignores(self.searcher(rg_path=""))

    def test_fallback_skips_node_modules(self) -> None:
        """The fallback walker never enters node_modules or __pycache__, even when nothing ignores them."""
        make_tree(self.root, {"node_modules/pkg/index.js": "", "web/node_modules/x.js": "", "__pycache__/m.pyc": ""})
        rels = {i.relative_path for i in self.successResultOf(self.searcher(rg_path="").search(self.root, "", 1000))}
        self.assertFalse([r for r in rels if "node_modules" in r or "__pycache__" in r], rels)

    def test_max_files(self) -> None:
        """At most max_files files are read, with rg and without."""
        for rg in (RG, "") if RG else ("",):
            fs = self.searcher(rg_path=rg, max_files=3)
            self.assertEqual(len(self.successResultOf(fs.search(self.root, None, 100))), 3)


class ListingBoundTests(TreeMixin):
    """Listing the files stops at the time bound."""

    def test_list_timeout(self) -> None:
        """A listing that runs out of time keeps what it found and is marked truncated (rg and walker)."""
        make_tree(self.root, {f"d{i}/f{j}.txt": "" for i in range(5) for j in range(5)})
        for rg in (RG, "") if RG else ("",):
            fs = self.searcher(rg_path=rg, list_timeout=-1)
            self.assertLess(len(self.successResultOf(fs.search(self.root, None, 100))), 25)
            self.assertTrue(fs._cache[self.root].truncated)
            fs = self.searcher(rg_path=rg)
            self.assertEqual(len(self.successResultOf(fs.search(self.root, None, 100))), 25)
            self.assertFalse(fs._cache[self.root].truncated)


class CacheTests(TreeMixin):
    """The candidate list is cached per root for cache_ttl seconds."""

    def test_ttl(self) -> None:
        """A new file stays invisible within the TTL and shows up once it has passed."""
        clock = Clock()
        fs = self.searcher(clock=clock, cache_ttl=2.0)
        make_tree(self.root, {"old.txt": ""})
        self.assertEqual(self.successResultOf(fs.search(self.root, "newfile")), [])
        make_tree(self.root, {"newfile.txt": ""})
        clock.advance(1.9)
        self.assertEqual(self.successResultOf(fs.search(self.root, "newfile")), [])
        clock.advance(0.2)
        found = self.successResultOf(fs.search(self.root, "newfile"))
        self.assertEqual([i.relative_path for i in found], ["newfile.txt"])

    def test_callable_clock_and_invalidate(self) -> None:
        """A plain callable works as the clock; invalidate() forgets a root at once."""
        now = [100.0]
        fs = self.searcher(clock=lambda: now[0], cache_ttl=10.0)
        self.assertEqual(self.successResultOf(fs.search(self.root, "late")), [])
        make_tree(self.root, {"late.txt": ""})
        self.assertEqual(self.successResultOf(fs.search(self.root, "late")), [])
        fs.invalidate(self.root)
        self.assertEqual(len(self.successResultOf(fs.search(self.root, "late"))), 1)

    def test_expired_lists_are_dropped(self) -> None:
        """Once expired, a root's list is dropped at the next search of any root (its memory is freed)."""
        clock = Clock()
        fs = self.searcher(clock=clock, cache_ttl=2.0)
        first, second = os.path.join(self.root, "one"), os.path.join(self.root, "two")
        make_tree(first, {"a.txt": ""})
        make_tree(second, {"b.txt": ""})
        self.successResultOf(fs.search(first, "a"))
        clock.advance(1)
        self.successResultOf(fs.search(second, "b"))
        self.assertEqual(set(fs._cache), {first, second})
        clock.advance(1.5)
        self.successResultOf(fs.search(second, "b"))
        self.assertEqual(set(fs._cache), {second})

    def test_cache_is_per_root(self) -> None:
        """Each root has its own candidates; the cache holds a bounded number of roots."""
        clock = Clock()
        fs = self.searcher(clock=clock, cache_ttl=100.0)
        roots = []
        for i in range(search_module.MAX_CACHED_ROOTS + 2):
            root = os.path.join(self.root, f"r{i}")
            make_tree(root, {f"only{i}.txt": ""})
            roots.append(root)
            found = self.successResultOf(fs.search(root, "only"))
            self.assertEqual([x.name for x in found], [f"only{i}.txt"])
        self.assertEqual(len(fs._cache), search_module.MAX_CACHED_ROOTS)


class NarrowingTests(TreeMixin):
    """Typing on reuses the previous query's matches; the answers stay those of a fresh search."""

    def test_typing_and_backspace(self) -> None:
        """Queries typed key by key, with backspaces and case changes, answer like independent searches."""
        make_tree(
            self.root,
            {"src/Button.tsx": "", "src/butter.md": "", "bus/ut/x.txt": "", "about.txt": "", "b.txt": "", "BUT": ""},
        )
        cached = self.searcher(cache_ttl=1e9)
        for query in ("b", "bu", "but", "butt", "bu", "bux", "BU", "BUT", "but", "t", "tb"):
            fresh = self.searcher(cache_ttl=0)
            self.assertEqual(
                self.successResultOf(cached.search(self.root, query, 50)),
                self.successResultOf(fresh.search(self.root, query, 50)),
                query,
            )
        self.assertEqual(
            [i.relative_path for i in self.successResultOf(cached.search(self.root, "butt"))][:1], ["src/butter.md"]
        )


class FallbackParityTests(TreeMixin):
    """Without rg the fallback walker gives the same results on an ordinary tree."""

    def test_same_top_results(self) -> None:
        """The top results of several queries are identical with rg and with the walker."""
        if RG is None:
            self.skipTest("rg is not installed")
        make_tree(
            self.root,
            {
                ".gitignore": "dist/\n",
                "dist/bundle.js": "",
                "src/components/Button.tsx": "",
                "src/components/ButtonGroup.tsx": "",
                "src/utils/format.ts": "",
                "src/index.ts": "",
                "docs/compare.md": "",
                "README.md": "",
                "tests/test_button.py": "",
                ".github/workflows/ci.yml": "",
            },
        )
        with_rg = self.searcher(rg_path=RG)
        without = self.searcher(rg_path="")
        for query in (None, "btn", "comp", "src", "ci", "Button", "index", "md", "xyz"):
            a = self.successResultOf(with_rg.search(self.root, query, 5))
            b = self.successResultOf(without.search(self.root, query, 5))
            self.assertEqual(a, b, query)

    def test_broken_rg_falls_back(self) -> None:
        """An rg path that cannot run makes both searches use the Python fallbacks."""
        make_tree(self.root, {"main.py": "needle\n"})
        fs = self.searcher(rg_path=os.path.join(self.root, "no-such-rg"))
        self.assertEqual([i.name for i in self.successResultOf(fs.search(self.root, "main"))], ["main.py"])
        self.assertIsNone(fs.rg_path)
        fs = self.searcher(rg_path=os.path.join(self.root, "no-such-rg"))
        found = self.successResultOf(fs.search_content(self.root, "needle"))
        self.assertEqual([m.line for m in found.results], [1])


class PropertyTests(SynchronousTestCase):
    """Random trees and queries."""

    names = st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=10
    ).filter(lambda s: s not in (".", "..") and len(os.fsencode(s)) < 200)

    @settings(max_examples=60)
    @given(
        tree=st.lists(st.lists(names, min_size=1, max_size=3), min_size=0, max_size=8),
        queries=st.lists(st.text(max_size=8), min_size=1, max_size=4),
        use_rg=st.booleans(),
    )
    def test_results_match_query(self, tree: list[list[str]], queries: list[str], use_rg: bool) -> None:
        """
        search never raises, every result holds the (smart-case) query as a subsequence of its path,
        and a cached searcher fed the queries key by key answers what a fresh one does.
        """
        root = tempfile.mkdtemp(prefix="cb-search-prop-")
        try:
            for parts in tree:
                try:
                    make_tree(root, {os.path.join(*parts): "x"})
                except OSError:
                    pass  # a file where a directory is wanted, or the reverse
            rg = (RG or "") if use_rg else ""
            fresh = FileSearch(run_now, rg_path=rg, cache_ttl=0)
            cached = FileSearch(run_now, rg_path=rg, cache_ttl=1e9)
            typed = [q[:n] for q in queries for n in range(1, len(q) + 1)]  # as typed, key by key
            for query in queries + typed:
                items = self.successResultOf(fresh.search(root, query, 20))
                self.assertEqual(self.successResultOf(cached.search(root, query, 20)), items)
                # Both ways of scanning the cached list (every path, or the paths holding the
                # query's rarest character) find the same paths.
                for share in (0.0, 1.0):
                    with mock.patch.object(search_module, "_rarest", lambda b, q, s=share: (q[0], s)):
                        self.assertEqual(self.successResultOf(fresh.search(root, query, 20)), items)
                q = query.strip()
                self.assertLessEqual(len(items), 20)
                for item in items:
                    self.assertEqual(item.path, os.path.join(root, item.relative_path))
                    self.assertEqual(item.name, item.relative_path.rsplit("/", 1)[-1])
                    self.assertIn(item.type, ("file", "directory"))
                    if _fold(q) == q:
                        self.assertTrue(is_subsequence(q, _fold(item.relative_path)), (q, item))
                    else:
                        self.assertTrue(is_subsequence(q, item.relative_path), (q, item))
                scores = [i.score for i in items]
                self.assertEqual(scores, sorted(scores, reverse=True))
        finally:
            shutil.rmtree(root, ignore_errors=True)


class ContentSearchTests(TreeMixin):
    """Content search with rg (skipped without it); FallbackContentSearchTests runs the same without."""

    def setUp(self) -> None:
        super().setUp()
        if self.rg_path is None and type(self) is ContentSearchTests:
            self.skipTest("rg is not installed")

    def content(self, query: str, **kwargs: Any) -> ContentResults:
        result: ContentResults = self.successResultOf(self.searcher().search_content(self.root, query, **kwargs))
        return result

    def hits(self, query: str, **kwargs: Any) -> list[tuple[str, int]]:
        return [(os.path.relpath(m.path, self.root), m.line) for m in self.content(query, **kwargs).results]

    def error(self, query: str, **kwargs: Any) -> ApiError:
        d = self.searcher().search_content(self.root, query, **kwargs)
        error: ApiError = self.failureResultOf(d, ApiError).value
        return error

    def test_absolute_paths_lines_and_columns(self) -> None:
        """Each hit has the absolute path, 1-based line, 1-based byte column and the line without newline."""
        make_tree(self.root, {"dir/a.txt": "first\n  needle here\r\né needle\n"})
        found = self.content("needle")
        self.assertEqual(found.truncated, False)
        path = os.path.join(self.root, "dir/a.txt")
        self.assertEqual(
            [(m.path, m.line, m.column, m.text) for m in found.results],
            [(path, 2, 3, "  needle here"), (path, 3, 4, "é needle")],
        )

    def test_fixed_strings_by_default(self) -> None:
        """The query is a fixed string unless is_regex; then it is a regex."""
        make_tree(self.root, {"a.txt": "a.c\nabc\n"})
        self.assertEqual(self.hits("a.c"), [("a.txt", 1)])
        self.assertEqual(self.hits("a.c", is_regex=True), [("a.txt", 1), ("a.txt", 2)])
        self.assertEqual(self.hits("^ab", is_regex=True), [("a.txt", 2)])

    def test_case(self) -> None:
        """Case-insensitive by default; case_sensitive matches case exactly."""
        make_tree(self.root, {"a.txt": "Hello\nhello\nHELLO\n"})
        self.assertEqual([line for _p, line in self.hits("hello")], [1, 2, 3])
        self.assertEqual([line for _p, line in self.hits("Hello", case_sensitive=True)], [1])

    def test_whole_word(self) -> None:
        """whole_word only reports the query standing alone."""
        make_tree(self.root, {"a.txt": "foobar\nfoo bar\nbarfoo\nx foo_y\n(foo)\n"})
        self.assertEqual([line for _p, line in self.hits("foo", whole_word=True)], [2, 5])
        self.assertEqual(len(self.hits("foo")), 5)

    def test_include_and_exclude_globs(self) -> None:
        """Comma-separated include globs keep only matching files; exclude globs drop files and directories."""
        make_tree(
            self.root,
            {
                "a.py": "needle\n",
                "b.js": "needle\n",
                "sub/c.py": "needle\n",
                "node_modules/d.py": "needle\n",
                "web/dist/e.py": "needle\n",
                "coverage/f.js": "needle\n",
            },
        )
        self.assertEqual(
            sorted(p for p, _ in self.hits("needle", include_glob="*.py")),
            ["a.py", "node_modules/d.py", "sub/c.py", "web/dist/e.py"],
        )
        self.assertEqual(
            sorted(p for p, _ in self.hits("needle", exclude_glob=WEBUI_EXCLUDES)), ["a.py", "b.js", "sub/c.py"]
        )
        self.assertEqual(
            sorted(
                p for p, _ in self.hits("needle", include_glob="*.py, *.js", exclude_glob="sub,node_modules,**/dist")
            ),
            ["a.py", "b.js", "coverage/f.js"],
        )
        self.assertEqual(sorted(p for p, _ in self.hits("needle", include_glob="sub/*.py")), ["sub/c.py"])

    def test_max_results_truncates(self) -> None:
        """Reaching max_results stops the search and says truncated; fewer hits are not truncated."""
        make_tree(self.root, {f"f{i}.txt": "needle\n" for i in range(10)})
        found = self.content("needle", max_results=3)
        self.assertEqual((len(found.results), found.truncated), (3, True))
        found = self.content("needle", max_results=10)
        self.assertEqual((len(found.results), found.truncated), (10, True))
        found = self.content("needle", max_results=11)
        self.assertEqual((len(found.results), found.truncated), (10, False))
        self.assertEqual([os.path.basename(m.path) for m in found.results], sorted(f"f{i}.txt" for i in range(10)))

    def test_per_file_cap(self) -> None:
        """One file reports at most MAX_MATCHES_PER_FILE lines, so other files still show up."""
        make_tree(self.root, {"big.txt": "needle\n" * (MAX_MATCHES_PER_FILE + 50), "small.txt": "needle\n"})
        found = self.content("needle", max_results=1000)
        self.assertEqual(len(found.results), MAX_MATCHES_PER_FILE + 1)
        self.assertFalse(found.truncated)

    def test_invalid_regex(self) -> None:
        """An invalid regex is BAD_REQUEST with the regex engine's message."""
        make_tree(self.root, {"a.txt": "x\n"})
        error = self.error("a(", is_regex=True)
        self.assertEqual(error.code, "BAD_REQUEST")
        self.assertIn("regex parse error", error.message)
        self.assertEqual(self.hits("a(", is_regex=False), [])

    def test_empty_query(self) -> None:
        """An empty query is BAD_REQUEST, as is a query with a newline or a bad max_results."""
        self.assertEqual(self.error("").code, "BAD_REQUEST")
        self.assertEqual(self.error("a\nb").code, "BAD_REQUEST")
        self.assertEqual(self.error("a", max_results=0).code, "BAD_REQUEST")

    def test_missing_root_and_file_root(self) -> None:
        """A missing root is NOT_FOUND; a file as root is PATH_NOT_DIRECTORY."""
        make_tree(self.root, {"f.txt": "x\n"})
        d = self.searcher().search_content(os.path.join(self.root, "nope"), "x")
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "NOT_FOUND")
        d = self.searcher().search_content(os.path.join(self.root, "f.txt"), "x")
        self.assertEqual(self.failureResultOf(d, ApiError).value.code, "PATH_NOT_DIRECTORY")

    def test_binary_files_skipped(self) -> None:
        """Files with a NUL byte are not searched."""
        make_tree(self.root, {"bin.dat": b"\x00\x01needle\n", "text.txt": "needle\n"})
        self.assertEqual(self.hits("needle"), [("text.txt", 1)])

    def test_hidden_and_ignored(self) -> None:
        """Hidden files are searched; .git and .gitignored files are not."""
        make_tree(
            self.root,
            {".env": "needle\n", ".git/config": "needle\n", ".gitignore": "out/\n", "out/x.txt": "needle\n"},
        )
        self.assertEqual(self.hits("needle"), [(".env", 1)])

    def test_query_starting_with_dash(self) -> None:
        """A query that looks like an option is still a query."""
        make_tree(self.root, {"a.txt": "x --force y\n"})
        self.assertEqual(self.hits("--force"), [("a.txt", 1)])

    def test_long_line_is_cut_around_the_match(self) -> None:
        """A very long line comes back as at most MAX_LINE_CHARS characters that include the match."""
        make_tree(self.root, {"min.js": "a" * 3000 + "needle" + "b" * 3000 + "\n"})
        (match,) = self.content("needle").results
        self.assertLessEqual(len(match.text), MAX_LINE_CHARS)
        self.assertIn("needle", match.text)
        self.assertEqual(match.column, 3001)

    def test_non_utf8_content_and_names(self) -> None:
        """Invalid UTF-8 in a line or a file name does not break the search; the path maps back to its bytes."""
        raw = os.path.join(os.fsencode(self.root), b"n\xffame.txt")
        with open(raw, "wb") as f:
            f.write(b"caf\xe9 needle\n")
        (match,) = self.content("needle").results
        self.assertEqual(os.fsencode(match.path), raw)
        self.assertEqual((match.line, match.column), (1, 6))
        self.assertTrue(match.text.endswith(" needle"))

    def test_unencodable_query(self) -> None:
        """A query with a lone surrogate (possible in JSON) is BAD_REQUEST, not a crash."""
        make_tree(self.root, {"a.txt": "x\n"})
        self.assertEqual(self.error("a\ud800").code, "BAD_REQUEST")
        self.assertEqual(self.error("a", include_glob="\ud800").code, "BAD_REQUEST")
        self.assertEqual(self.error("a\0b").code, "BAD_REQUEST")

    def test_time_bound(self) -> None:
        """When the time bound passes the search stops and reports truncated instead of failing."""
        make_tree(self.root, {f"f{i}.txt": "needle\n" for i in range(5)})
        fs = self.searcher(content_timeout=-1)
        found = self.successResultOf(fs.search_content(self.root, "needle"))
        self.assertTrue(found.truncated)
        self.assertLess(len(found.results), 5)


class FallbackContentSearchTests(ContentSearchTests):
    """The content-search tests with the Python fallback."""

    rg_path = None


class ContentPropertyTests(TreeMixin):
    """Random content queries, with rg (when installed) and with the fallback."""

    @settings(max_examples=40)
    @given(query=st.text(min_size=1, max_size=6), is_regex=st.booleans(), flags=st.tuples(st.booleans(), st.booleans()))
    def test_random_queries(self, query: str, is_regex: bool, flags: tuple[bool, bool]) -> None:
        """Any query either finds well-formed hits or is BAD_REQUEST; nothing else goes wrong."""
        if not os.listdir(self.root):
            make_tree(
                self.root,
                {"a.txt": "Hello (world) [x] *star* ünïcode ß\n\tTabbed line\n", "sub/b.py": "def f(x):\n  return x\n"},
            )
        case_sensitive, whole_word = flags
        for rg in (RG, "") if RG else ("",):
            d = self.searcher(rg_path=rg).search_content(
                self.root, query, is_regex=is_regex, case_sensitive=case_sensitive, whole_word=whole_word
            )
            failures: list[Any] = []
            d.addErrback(failures.append)
            result = self.successResultOf(d)
            if failures:
                failures[0].trap(ApiError)
                self.assertEqual(failures[0].value.code, "BAD_REQUEST")
                continue
            for match in result.results:
                self.assertTrue(match.path.startswith(self.root + "/"))
                self.assertGreaterEqual(match.line, 1)
                self.assertGreaterEqual(match.column, 1)
                self.assertNotIn("\n", match.text)
                if not is_regex and case_sensitive:
                    self.assertIn(query, match.text)


class GlobTests(SynchronousTestCase):
    """The glob translation used by the fallbacks."""

    def test_translation(self) -> None:
        """``*`` and ``?`` stay within a path segment, ``**`` crosses segments, classes and escapes work."""
        cases = [
            ("*.py", "a.py", True),
            ("*.py", "d/a.py", False),
            ("**/dist", "dist", True),
            ("**/dist", "a/b/dist", True),
            ("src/**", "src/a/b", True),
            ("a?c", "abc", True),
            ("a?c", "a/c", False),
            ("[!a]x", "bx", True),
            ("[!a]x", "ax", False),
            ("[ab]x", "bx", True),
            ("\\*x", "*x", True),
            ("\\*x", "ax", False),
            ("[unclosed", "[unclosed", True),
        ]
        for glob, path, expected in cases:
            self.assertEqual(re.fullmatch(glob_to_regex(glob), path, re.DOTALL) is not None, expected, (glob, path))
