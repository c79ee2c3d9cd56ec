"""fs/stat, fs/list, fs/mkdir, fs/remove, fs/move through the API (E2B envd semantics)."""

from __future__ import annotations

import os
import shutil
import stat
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from codebuddy.fs.entries import go_file_mode, rfc3339_ns
from tests.fs.helpers import FsFixture
from tests.helpers import ApiTestCase


class FsTestCase(ApiTestCase):
    def setUp(self) -> None:
        self.api = FsFixture()
        self.addCleanup(self.api.cleanup)
        self.ws = self.api.workspace

    def post(self, path: str, body: object) -> tuple[int, object, object]:
        return self.api.json("POST", path, json=body)


class SpecExampleTests(FsTestCase):
    def test_stat_tmp(self) -> None:
        """The spec's example: POST /api/v1/fs/stat {"path": "/tmp"}."""
        entry = self.assertData(self.post("/api/v1/fs/stat", {"path": "/tmp"}))["entry"]
        self.assertEqual((entry["name"], entry["type"], entry["path"]), ("tmp", "directory", "/tmp"))

    def test_list_tmp_depth_2(self) -> None:
        """The spec's example: POST /api/v1/fs/list {"path": "/tmp", "depth": 2}."""
        entries = self.assertData(self.post("/api/v1/fs/list", {"path": "/tmp", "depth": 2}))["entries"]
        self.assertTrue(all(e["path"].startswith("/tmp/") for e in entries))
        self.assertTrue(all(e["path"].count("/") <= 3 for e in entries))

    def test_mkdir_tmp_new_dir(self) -> None:
        """The spec's example: POST /api/v1/fs/mkdir {"path": "/tmp/new-dir"}."""
        shutil.rmtree("/tmp/new-dir", ignore_errors=True)
        self.addCleanup(shutil.rmtree, "/tmp/new-dir", True)
        entry = self.assertData(self.post("/api/v1/fs/mkdir", {"path": "/tmp/new-dir"}))["entry"]
        self.assertEqual((entry["path"], entry["type"]), ("/tmp/new-dir", "directory"))
        self.assertTrue(os.path.isdir("/tmp/new-dir"))


class StatTests(FsTestCase):
    def test_entry_fields(self) -> None:
        """EntryInfo carries envd's fields with envd's values."""
        target = self.ws / "a.txt"
        target.write_bytes(b"hello")
        os.chmod(target, 0o640)
        os.utime(target, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
        entry = self.assertData(self.post("/api/v1/fs/stat", {"path": str(target)}))["entry"]
        self.assertEqual(entry["name"], "a.txt")
        self.assertEqual(entry["type"], "file")
        self.assertEqual(entry["path"], str(target))
        self.assertEqual(entry["size"], 5)
        self.assertEqual(entry["mode"], 0o640)
        self.assertEqual(entry["permissions"], "-rw-r-----")
        self.assertEqual(entry["modifiedTime"], "2023-11-14T22:13:20.123456789Z")
        self.assertFalse(entry["isSymlink"])
        self.assertNotIn("symlinkTarget", entry)
        self.assertTrue(entry["owner"] and entry["group"])

    def test_relative_and_home(self) -> None:
        """Relative paths resolve against the workspace, ~ against the home directory."""
        (self.ws / "rel.txt").write_text("x")
        (self.api.home / "h.txt").write_text("y")
        self.assertEqual(self.assertData(self.post("/api/v1/fs/stat", {"path": "rel.txt"}))["entry"]["path"],
                         str(self.ws / "rel.txt"))
        self.assertEqual(self.assertData(self.post("/api/v1/fs/stat", {"path": "~/h.txt"}))["entry"]["path"],
                         str(self.api.home / "h.txt"))
        self.assertEqual(self.assertData(self.post("/api/v1/fs/stat", {"path": "sub/../rel.txt"}))["entry"]["name"],
                         "rel.txt")

    def test_symlinks(self) -> None:
        """A link has its target's type, isSymlink and the resolved target; a dangling one is 'unknown'."""
        (self.ws / "dir").mkdir()
        os.symlink(self.ws / "dir", self.ws / "link")
        os.symlink(self.ws / "missing", self.ws / "dangling")
        link = self.assertData(self.post("/api/v1/fs/stat", {"path": "link"}))["entry"]
        self.assertEqual((link["type"], link["isSymlink"]), ("directory", True))
        self.assertEqual(link["symlinkTarget"], str(self.ws / "dir"))
        self.assertTrue(link["permissions"].startswith("L"))
        dangling = self.assertData(self.post("/api/v1/fs/stat", {"path": "dangling"}))["entry"]
        self.assertEqual((dangling["type"], dangling["isSymlink"], dangling["mode"]), ("unknown", True, 0))

    def test_errors(self) -> None:
        """Missing path 404 NOT_FOUND; no path 400 PATH_REQUIRED; NUL byte 400."""
        self.assertError(self.post("/api/v1/fs/stat", {"path": str(self.ws / "nope")}), 404, "NOT_FOUND")
        self.assertError(self.post("/api/v1/fs/stat", {}), 400, "PATH_REQUIRED")
        self.assertError(self.post("/api/v1/fs/stat", {"path": ""}), 400, "PATH_REQUIRED")
        self.assertError(self.post("/api/v1/fs/stat", {"path": "a\u0000b"}), 400, "BAD_REQUEST")
        self.assertError(self.post("/api/v1/fs/stat", {"path": 7}), 400, "BAD_REQUEST")

    def test_permission_denied(self) -> None:
        """An OS permission error is 403 PERMISSION_DENIED."""
        with mock.patch("os.lstat", side_effect=PermissionError(13, "Permission denied")):
            self.assertError(self.post("/api/v1/fs/stat", {"path": "/root/x"}), 403, "PERMISSION_DENIED")


class ListTests(FsTestCase):
    def setUp(self) -> None:
        super().setUp()
        for rel in ("b/x/deep/f.txt", "a/one.txt", "a/two.txt", "c.txt"):
            path = self.ws / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rel)
        os.symlink(self.ws / "a", self.ws / "link-to-a")

    def names(self, depth: int | None = None, path: str | None = None) -> list[str]:
        body: dict[str, object] = {"path": path or str(self.ws)}
        if depth is not None:
            body["depth"] = depth
        entries = self.assertData(self.post("/api/v1/fs/list", body))["entries"]
        return [os.path.relpath(e["path"], self.ws) for e in entries]

    def test_default_depth_one(self) -> None:
        """Without depth only direct children are listed, in byte order."""
        self.assertEqual(self.names(), ["a", "b", "c.txt", "link-to-a"])
        self.assertEqual(self.names(0), self.names(1))

    def test_depth_preorder(self) -> None:
        """Deeper listings are pre-order: each directory followed by its children; links not entered."""
        self.assertEqual(
            self.names(3),
            ["a", "a/one.txt", "a/two.txt", "b", "b/x", "b/x/deep", "c.txt", "link-to-a"],
        )

    def test_types_for_web_ui(self) -> None:
        """Entry types are the strings the Web UI reads."""
        entries = self.assertData(self.post("/api/v1/fs/list", {"path": str(self.ws)}))["entries"]
        types = {e["name"]: e["type"] for e in entries}
        self.assertEqual(types, {"a": "directory", "b": "directory", "c.txt": "file", "link-to-a": "directory"})

    def test_list_errors(self) -> None:
        """Listing a file is 400 PATH_NOT_DIRECTORY; a missing dir 404; negative depth 400."""
        self.assertError(self.post("/api/v1/fs/list", {"path": str(self.ws / "c.txt")}), 400, "PATH_NOT_DIRECTORY")
        self.assertError(self.post("/api/v1/fs/list", {"path": str(self.ws / "zz")}), 404, "NOT_FOUND")
        self.assertError(self.post("/api/v1/fs/list", {"path": str(self.ws), "depth": -1}), 400, "BAD_REQUEST")

    def test_unreadable_subdirectory_skipped(self) -> None:
        """An unreadable subdirectory is listed but not entered (the listing does not fail)."""
        real_scandir = os.scandir

        def scandir(path: str) -> object:
            if str(path).endswith("/b"):
                raise PermissionError(13, "Permission denied")
            return real_scandir(path)

        with mock.patch("os.scandir", scandir):
            self.assertIn("b", self.names(2))


class MkdirRemoveMoveTests(FsTestCase):
    def test_mkdir_parents_and_conflicts(self) -> None:
        """mkdir creates parents; an existing directory is 409 ALREADY_EXISTS; a file parent is 400."""
        self.assertData(self.post("/api/v1/fs/mkdir", {"path": "p/q/r"}))
        self.assertTrue((self.ws / "p/q/r").is_dir())
        self.assertError(self.post("/api/v1/fs/mkdir", {"path": "p/q/r"}), 409, "ALREADY_EXISTS")
        (self.ws / "f").write_text("x")
        self.assertError(self.post("/api/v1/fs/mkdir", {"path": "f"}), 409, "ALREADY_EXISTS")
        self.assertError(self.post("/api/v1/fs/mkdir", {"path": "f/sub"}), 400, "PATH_NOT_DIRECTORY")

    def test_remove(self) -> None:
        """remove deletes files, links (not their targets) and trees; a missing path is fine."""
        (self.ws / "t/u").mkdir(parents=True)
        (self.ws / "t/u/f").write_text("x")
        (self.ws / "keep").write_text("k")
        os.symlink(self.ws / "keep", self.ws / "ln")
        for name in ("t", "ln", "never-existed"):
            self.assertEqual(self.assertData(self.post("/api/v1/fs/remove", {"path": name})), {})
        self.assertFalse((self.ws / "t").exists())
        self.assertFalse(os.path.lexists(self.ws / "ln"))
        self.assertTrue((self.ws / "keep").exists())
        self.assertError(self.post("/api/v1/fs/remove", {}), 400, "PATH_REQUIRED")

    def test_move(self) -> None:
        """move renames, creates destination parents, replaces a file, answers the new entry."""
        (self.ws / "src.txt").write_text("new")
        (self.ws / "old.txt").write_text("old")
        entry = self.assertData(self.post("/api/v1/fs/move", {"source": "src.txt", "destination": "d/e/moved.txt"}))
        self.assertEqual(entry["entry"]["path"], str(self.ws / "d/e/moved.txt"))
        self.assertEqual((self.ws / "d/e/moved.txt").read_text(), "new")
        self.assertData(self.post("/api/v1/fs/move", {"source": "d/e/moved.txt", "destination": "old.txt"}))
        self.assertEqual((self.ws / "old.txt").read_text(), "new")

    def test_move_errors(self) -> None:
        """A missing source is 404; missing fields are PATH_REQUIRED; moving a dir into itself is 400."""
        self.assertError(self.post("/api/v1/fs/move", {"source": "nope", "destination": "x"}), 404, "NOT_FOUND")
        error = self.assertError(self.post("/api/v1/fs/move", {"destination": "x"}), 400, "PATH_REQUIRED")
        self.assertIn("source", error["message"])
        (self.ws / "dd").mkdir()
        self.assertError(self.post("/api/v1/fs/move", {"source": "dd", "destination": "dd/inner"}), 400, "BAD_REQUEST")


class FormatTests(ApiTestCase):
    def test_go_file_mode(self) -> None:
        """Permissions strings follow Go's FileMode.String()."""
        self.assertEqual(go_file_mode(stat.S_IFREG | 0o644), "-rw-r--r--")
        self.assertEqual(go_file_mode(stat.S_IFDIR | 0o755), "drwxr-xr-x")
        self.assertEqual(go_file_mode(stat.S_IFLNK | 0o777), "Lrwxrwxrwx")
        self.assertEqual(go_file_mode(stat.S_IFDIR | stat.S_ISVTX | 0o777), "dtrwxrwxrwx")
        self.assertEqual(go_file_mode(stat.S_IFREG | stat.S_ISUID | 0o755), "urwxr-xr-x")
        self.assertEqual(go_file_mode(stat.S_IFCHR | 0o666), "Dcrw-rw-rw-")

    def test_timestamps(self) -> None:
        """Timestamps use 0, 3, 6 or 9 fraction digits like protobuf JSON."""
        self.assertEqual(rfc3339_ns(1_700_000_000_000_000_000), "2023-11-14T22:13:20Z")
        self.assertEqual(rfc3339_ns(1_700_000_000_500_000_000), "2023-11-14T22:13:20.500Z")
        self.assertEqual(rfc3339_ns(1_700_000_000_000_001_000), "2023-11-14T22:13:20.000001Z")
        self.assertIsNone(rfc3339_ns(0))


class PathPropertyTests(ApiTestCase):
    @settings(max_examples=150)
    @given(
        st.lists(
            st.one_of(
                st.sampled_from(["/", ".", "..", " ", "~", "-", "\\", "%", "\u00e9", "\U0001f600", "a", "~root"]),
                st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
            ),
            max_size=10,
        ).map("".join)
        | st.builds(lambda n: "x" * n, st.integers(min_value=200, max_value=5000)),
        st.sampled_from(["/api/v1/fs/stat", "/api/v1/fs/list", "/api/v1/fs/remove"]),
    )
    def test_no_500(self, raw: str, endpoint: str) -> None:
        """No path shape (unicode, spaces, .., huge names) produces a 500, and nothing outside is removed."""
        api = FsFixture()
        try:
            sentinel = api.workspace / "sentinel"
            sentinel.write_text("x")
            body = {"path": raw if endpoint != "/api/v1/fs/remove" else "sub/" + raw.replace("..", "_")}
            status, result, _r = api.json("POST", endpoint, json=body)
            self.assertLess(status, 500, result)
            if status >= 400:
                self.assertIn("code", result["error"])
            self.assertTrue(sentinel.exists())
        finally:
            api.cleanup()


class EntryDictTests(FsTestCase):
    def test_fast_form_matches_model(self) -> None:
        """The listing's direct dicts equal the EntryInfo model's wire form for every kind of entry."""
        from codebuddy.fs.entries import entry_dict, entry_from_stat
        from codebuddy.web.json import unstructure

        (self.ws / "f").write_text("x")
        (self.ws / "d").mkdir()
        os.mkfifo(self.ws / "p")
        os.symlink(self.ws / "f", self.ws / "l")
        os.chmod(self.ws / "d", 0o1777)
        for name in ("f", "d", "p", "l"):
            path = str(self.ws / name)
            st = os.lstat(path)
            self.assertEqual(entry_dict(path, st, name), unstructure(entry_from_stat(path, st, name)), name)

    def test_json_listing_matches_dicts(self) -> None:
        """The listing's JSON text is exactly the JSON of its dicts (unicode and links included)."""
        import json

        from codebuddy.fs.ops import list_dir, list_dir_json

        (self.ws / "caf\u00e9 \"q\"\\.txt").write_text("x")
        (self.ws / "sub").mkdir()
        (self.ws / "sub" / "\U0001f600").write_text("y")
        os.symlink(self.ws / "sub", self.ws / "link")
        os.mkfifo(self.ws / "fifo")
        self.assertEqual(json.loads(list_dir_json(str(self.ws), 2)), {"data": {"entries": list_dir(str(self.ws), 2)}})
