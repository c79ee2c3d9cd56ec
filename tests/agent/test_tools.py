"""Tests for ``codebuddy.agent.tools``: every tool's success and error paths; Bash on the real reactor."""

from __future__ import annotations

import os
import re
import select
import signal
import stat
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, maybeDeferred
from twisted.python.failure import Failure

from codebuddy.agent.tools import (
    BASH_MAX_CHARS,
    GLOB_MAX_RESULTS,
    KINDS,
    LS_MAX_ENTRIES,
    READ_MAX_LINE_CHARS,
    BashTool,
    CancelToken,
    EditTool,
    GlobTool,
    GrepTool,
    LSTool,
    ReadTool,
    Tool,
    ToolContext,
    ToolResult,
    WriteTool,
    default_tools,
    tool_schemas,
)
from codebuddy.process.manager import ManagedProcess, ProcessManager
from codebuddy.process.spawn import Spawner

WAIT = 10


def sync_blocking(fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    return maybeDeferred(fn, *args, **kwargs)


class Hook:
    """A before_change hook recording each path and what the file held at that moment."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, bytes | None]] = []

    def __call__(self, path: Path) -> None:
        self.calls.append((path, path.read_bytes() if path.exists() else None))


def context(cwd: Path, **kwargs: Any) -> ToolContext:
    return ToolContext(cwd=cwd, session_id="session-1", run_blocking=sync_blocking, **kwargs)


def run(tool: Tool, ctx: ToolContext, input: Any) -> ToolResult:
    """Run a tool whose blocking work is synchronous: the result is there at once."""
    results: list[Any] = []
    Deferred.fromCoroutine(tool.run(ctx, input)).addBoth(results.append)
    assert results, "the tool did not finish synchronously"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    result = results[0]
    assert isinstance(result, ToolResult)
    return result


# --------------------------------------------------------------------------- schemas and inputs


def test_schemas_are_openai_function_tools() -> None:
    """tool_schemas gives OpenAI chat-completions tools; names, kinds and required fields are consistent."""
    tools = default_tools()
    schemas = tool_schemas(tools)
    assert [s["function"]["name"] for s in schemas] == ["Read", "Write", "Edit", "LS", "Glob", "Grep", "Bash"]
    for tool, schema in zip(tools, schemas, strict=True):
        assert schema["type"] == "function"
        assert set(schema["function"]) == {"name", "description", "parameters"}
        parameters = schema["function"]["parameters"]
        assert parameters["type"] == "object"
        assert set(parameters.get("required", [])) <= set(parameters["properties"])
        assert schema["function"]["description"]
        assert tool.kind in KINDS
    read_only = {t.name for t in tools if t.is_read_only}
    assert read_only == {"Read", "LS", "Glob", "Grep"}


@pytest.mark.parametrize(
    ("tool", "input", "message"),
    [
        (ReadTool(), {}, "missing required parameter 'file_path'"),
        (ReadTool(), {"file_path": 3}, "parameter 'file_path' must be a string, got a number"),
        (ReadTool(), {"file_path": "x", "limit": "10"}, "parameter 'limit' must be an integer, got a string"),
        (ReadTool(), {"file_path": "x", "limit": 0}, "parameter 'limit' must be at least 1"),
        (EditTool(), {"file_path": "x", "old_string": "a"}, "missing required parameter 'new_string'"),
        (EditTool(), {"file_path": "x", "old_string": "a", "new_string": "b", "replace_all": "yes"},
         "parameter 'replace_all' must be a boolean"),
        (GrepTool(), {"pattern": "x", "output_mode": "lines"}, "parameter 'output_mode' must be one of"),
        (LSTool(), {"ignore": ["a", 1]}, "parameter 'ignore[1]' must be a string"),
        (BashTool(), {"command": None}, "missing required parameter 'command'"),
        (WriteTool(), ["not", "an", "object"], "the input must be a JSON object, got an array"),
    ],
)
def test_invalid_input_is_an_error_result(tmp_path: Path, tool: Tool, input: Any, message: str) -> None:
    """Bad input never raises: an is_error result names the parameter and the problem."""
    result = run(tool, context(tmp_path), input)
    assert result.is_error
    assert message in result.output
    assert result.output.startswith(tool.name + ": ")


def test_titles_and_permission_keys(tmp_path: Path) -> None:
    """Titles name what is done; permission keys are the path (default '.') or the command."""
    assert ReadTool().title({"file_path": "a.py", "offset": 10, "limit": 5}) == "Read a.py (lines 10-14)"
    assert ReadTool().permission_key({"file_path": "a.py"}) == "a.py"
    assert WriteTool().permission_key({"file_path": "/x/y"}) == "/x/y"
    assert LSTool().permission_key({}) == "."
    assert GrepTool().permission_key({"pattern": "x", "path": "src"}) == "src"
    assert GlobTool().permission_key({"pattern": "/etc/**/*.conf"}) == "/etc"
    assert GlobTool().permission_key({"pattern": "*.py"}) == "."
    assert BashTool().permission_key({"command": "npm test"}) == "npm test"
    assert BashTool().title({"command": "npm test", "description": "Run the tests"}) == "Run the tests"
    assert BashTool().title({"command": "ls   -la"}) == "ls -la"


# --------------------------------------------------------------------------- Read


def test_read_numbers_lines_like_cat_n(tmp_path: Path) -> None:
    """Read shows every line with its number, cat -n style; CRLF endings are dropped; reads call no hook."""
    (tmp_path / "a.txt").write_bytes(b"alpha\r\nbeta\n\ngamma")
    hook = Hook()
    result = run(ReadTool(), context(tmp_path, before_change=hook), {"file_path": "a.txt"})
    assert not result.is_error
    assert result.output == "     1\talpha\n     2\tbeta\n     3\t\n     4\tgamma"
    assert result.locations == [str(tmp_path / "a.txt")]
    assert hook.calls == []


def test_read_range_and_continuation_note(tmp_path: Path) -> None:
    """offset (1-based) and limit select lines; a note says where to continue; offset 0 reads from 1."""
    (tmp_path / "n.txt").write_text("".join(f"line {i}\n" for i in range(1, 101)))
    ctx = context(tmp_path)
    result = run(ReadTool(), ctx, {"file_path": "n.txt", "offset": 10, "limit": 3})
    lines = result.output.split("\n")
    assert lines[:3] == ["    10\tline 10", "    11\tline 11", "    12\tline 12"]
    assert "continue with offset=13" in lines[3]
    assert result.metadata["startLine"] == 10 and result.metadata["endLine"] == 12
    tail = run(ReadTool(), ctx, {"file_path": "n.txt", "offset": 99})
    assert tail.output == "    99\tline 99\n   100\tline 100"
    assert run(ReadTool(), ctx, {"file_path": "n.txt", "offset": 0, "limit": 1}).output.startswith("     1\tline 1\n")
    past = run(ReadTool(), ctx, {"file_path": "n.txt", "offset": 500})
    assert not past.is_error and "has 100 lines; offset 500 is past its end" in past.output


def test_read_default_limit_is_2000_lines(tmp_path: Path) -> None:
    """Without limit, 2000 lines are shown, then a note."""
    (tmp_path / "big.txt").write_text("x\n" * 2500)
    result = run(ReadTool(), context(tmp_path), {"file_path": "big.txt"})
    lines = result.output.split("\n")
    assert lines[1999] == "  2000\tx"
    assert "continue with offset=2001" in lines[2000]
    assert len(lines) == 2001


def test_read_cuts_long_lines_and_caps_output(tmp_path: Path) -> None:
    """Lines over 2000 characters are cut with a marker; output stops at the size cap with a note."""
    (tmp_path / "long.txt").write_text("y" * 10_000 + "\nshort\n")
    result = run(ReadTool(), context(tmp_path), {"file_path": "long.txt"})
    first, second = result.output.split("\n")
    assert first == "     1\t" + "y" * READ_MAX_LINE_CHARS + " … [line truncated]"
    assert second == "     2\tshort"
    (tmp_path / "wide.txt").write_text(("z" * 1500 + "\n") * 1000)  # ~1.5 MB
    capped = run(ReadTool(), context(tmp_path), {"file_path": "wide.txt"})
    assert len(capped.output) < 270_000
    match = re.search(r"output capped at 256 KiB; continue with offset=(\d+)", capped.output)
    assert match is not None
    assert capped.metadata["endLine"] == int(match.group(1)) - 1


def test_read_errors(tmp_path: Path) -> None:
    """Missing files, directories, binary files and FIFOs are refused with a clear message."""
    ctx = context(tmp_path)
    (tmp_path / "bin.dat").write_bytes(b"PK\x03\x04\x00\x00binary")
    (tmp_path / "empty.txt").write_bytes(b"")
    missing = run(ReadTool(), ctx, {"file_path": "nope.txt"})
    assert missing.is_error and missing.output == f"File does not exist: {tmp_path / 'nope.txt'}"
    directory = run(ReadTool(), ctx, {"file_path": "."})
    assert directory.is_error and "is a directory" in directory.output and "LS" in directory.output
    binary = run(ReadTool(), ctx, {"file_path": "bin.dat"})
    assert binary.is_error and "is a binary file" in binary.output
    empty = run(ReadTool(), ctx, {"file_path": "empty.txt"})
    assert not empty.is_error and empty.output == "(the file is empty)"
    os.mkfifo(tmp_path / "fifo")
    fifo = run(ReadTool(), ctx, {"file_path": "fifo"})  # would block in open() if it were opened
    assert fifo.is_error and "not a regular file" in fifo.output
    fifo_edit = run(EditTool(), ctx, {"file_path": "fifo", "old_string": "a", "new_string": "b"})
    assert fifo_edit.is_error and "not a regular file" in fifo_edit.output


def test_read_resolves_home_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """~ is the user's home; absolute paths are used as they are (no confinement at this level)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.md").write_text("hi\n")
    monkeypatch.setenv("HOME", str(home))
    workspace = tmp_path / "ws"
    workspace.mkdir()
    assert run(ReadTool(), context(workspace), {"file_path": "~/notes.md"}).output == "     1\thi"
    assert run(ReadTool(), context(workspace), {"file_path": str(home / "notes.md")}).output == "     1\thi"
    assert run(ReadTool(), context(workspace), {"file_path": "../home/notes.md"}).output == "     1\thi"


# --------------------------------------------------------------------------- Write


def test_write_creates_parents_and_calls_the_hook_first(tmp_path: Path) -> None:
    """Write creates missing directories; before_change sees the path before the file exists."""
    hook = Hook()
    ctx = context(tmp_path, before_change=hook)
    result = run(WriteTool(), ctx, {"file_path": "a/b/c.txt", "content": "one\ntwo\n"})
    target = tmp_path / "a" / "b" / "c.txt"
    assert not result.is_error
    assert target.read_text() == "one\ntwo\n"
    assert hook.calls == [(target, None)]
    assert result.diff == {"path": str(target), "oldText": None, "newText": "one\ntwo\n"}
    assert result.locations == [str(target)]
    assert result.output == f"Created {target} (2 lines)"
    assert result.metadata["created"] is True


def test_write_replaces_atomically_and_keeps_the_mode(tmp_path: Path) -> None:
    """Overwriting keeps the file's mode; the hook sees the old content; no temp files are left."""
    target = tmp_path / "run.sh"
    target.write_text("old\n")
    target.chmod(0o751)
    hook = Hook()
    result = run(WriteTool(), context(tmp_path, before_change=hook), {"file_path": str(target), "content": "new\n"})
    assert not result.is_error
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o751
    assert hook.calls == [(target, b"old\n")]
    assert result.diff == {"path": str(target), "oldText": "old\n", "newText": "new\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.sh"]


def test_write_through_a_symlink_changes_the_target(tmp_path: Path) -> None:
    """A symlink stays a symlink; its target gets the content (and is what the hook is told)."""
    real = tmp_path / "real.txt"
    real.write_text("a")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    hook = Hook()
    run(WriteTool(), context(tmp_path, before_change=hook), {"file_path": "link.txt", "content": "b"})
    assert link.is_symlink() and real.read_text() == "b"
    assert hook.calls == [(real, b"a")]


def test_write_waits_for_a_deferred_hook(tmp_path: Path) -> None:
    """A hook returning a Deferred (a checkpoint being taken) is awaited before the write."""
    gate: Deferred[None] = Deferred()
    results: list[Any] = []
    ctx = context(tmp_path, before_change=lambda path: gate)
    Deferred.fromCoroutine(WriteTool().run(ctx, {"file_path": "f.txt", "content": "x"})).addBoth(results.append)
    assert results == [] and not (tmp_path / "f.txt").exists()
    gate.callback(None)
    assert len(results) == 1 and not results[0].is_error
    assert (tmp_path / "f.txt").read_text() == "x"


def test_write_errors(tmp_path: Path) -> None:
    """Writing onto a directory, or below a file, fails clearly and calls no hook."""
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("")
    hook = Hook()
    ctx = context(tmp_path, before_change=hook)
    onto_dir = run(WriteTool(), ctx, {"file_path": "d", "content": "x"})
    assert onto_dir.is_error and "it is a directory" in onto_dir.output
    below_file = run(WriteTool(), ctx, {"file_path": "f/x.txt", "content": "x"})
    assert below_file.is_error and "not a directory" in below_file.output
    assert hook.calls == []


def test_a_failing_hook_stops_the_write(tmp_path: Path) -> None:
    """If the checkpoint hook fails, nothing is written and the tool reports an error."""

    def broken(path: Path) -> None:
        raise OSError(28, "No space left on device")

    result = run(WriteTool(), context(tmp_path, before_change=broken), {"file_path": "f.txt", "content": "x"})
    assert result.is_error and "No space left on device" in result.output
    assert not (tmp_path / "f.txt").exists()


# --------------------------------------------------------------------------- Edit


def test_edit_replaces_one_occurrence(tmp_path: Path) -> None:
    """A unique old_string is replaced; the hook sees the old content; the diff has both texts."""
    target = tmp_path / "app.py"
    target.write_text("def f():\n    return 1\n\ndef g():\n    return 2\n")
    target.chmod(0o640)
    hook = Hook()
    result = run(EditTool(), context(tmp_path, before_change=hook),
                 {"file_path": "app.py", "old_string": "return 2", "new_string": "return 3"})
    assert not result.is_error
    assert target.read_text() == "def f():\n    return 1\n\ndef g():\n    return 3\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert hook.calls == [(target, b"def f():\n    return 1\n\ndef g():\n    return 2\n")]
    assert result.diff == {"path": str(target), "oldText": "def f():\n    return 1\n\ndef g():\n    return 2\n",
                           "newText": "def f():\n    return 1\n\ndef g():\n    return 3\n"}
    assert "replaced 1 occurrence" in result.output
    assert "     5\t    return 3" in result.output  # the changed region, numbered
    assert result.metadata["replacements"] == 1


def test_edit_zero_and_several_matches_fail_clearly(tmp_path: Path) -> None:
    """No match: 'old_string not found in <path>'. Two matches without replace_all: says how many and what to do."""
    target = tmp_path / "x.txt"
    target.write_text("a = 1\nb = 1\n")
    hook = Hook()
    ctx = context(tmp_path, before_change=hook)
    none = run(EditTool(), ctx, {"file_path": "x.txt", "old_string": "c = 1", "new_string": "c = 2"})
    assert none.is_error and none.output.startswith(f"old_string not found in {target}")
    several = run(EditTool(), ctx, {"file_path": "x.txt", "old_string": "= 1", "new_string": "= 2"})
    assert several.is_error
    assert f"old_string occurs 2 times in {target}" in several.output
    assert "add surrounding context" in several.output and "replace_all" in several.output
    assert target.read_text() == "a = 1\nb = 1\n"
    assert hook.calls == []


def test_edit_replace_all(tmp_path: Path) -> None:
    """replace_all replaces every occurrence and says how many."""
    target = tmp_path / "x.txt"
    target.write_text("foo bar foo\nfoo\n")
    result = run(EditTool(), context(tmp_path),
                 {"file_path": "x.txt", "old_string": "foo", "new_string": "baz", "replace_all": True})
    assert target.read_text() == "baz bar baz\nbaz\n"
    assert "replaced 3 occurrences" in result.output and result.metadata["replacements"] == 3


def test_edit_other_errors_and_creation(tmp_path: Path) -> None:
    """Identical strings, missing files and binary files are errors; an empty old_string creates a file."""
    ctx = context(tmp_path)
    same = run(EditTool(), ctx, {"file_path": "x", "old_string": "a", "new_string": "a"})
    assert same.is_error and "identical" in same.output
    missing = run(EditTool(), ctx, {"file_path": "nope.txt", "old_string": "a", "new_string": "b"})
    assert missing.is_error and missing.output.startswith(f"File does not exist: {tmp_path / 'nope.txt'}")
    (tmp_path / "blob").write_bytes(b"\x00\x01a")
    binary = run(EditTool(), ctx, {"file_path": "blob", "old_string": "a", "new_string": "b"})
    assert binary.is_error and "binary" in binary.output
    created = run(EditTool(), ctx, {"file_path": "new/file.txt", "old_string": "", "new_string": "hello\n"})
    assert not created.is_error and (tmp_path / "new" / "file.txt").read_text() == "hello\n"
    assert created.diff is not None and created.diff["oldText"] is None
    exists = run(EditTool(), ctx, {"file_path": "new/file.txt", "old_string": "", "new_string": "again"})
    assert exists.is_error and "already exists" in exists.output


def test_edit_keeps_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    """Bytes outside the edited text survive unchanged, even when they are not valid UTF-8."""
    target = tmp_path / "latin.txt"
    target.write_bytes(b"caf\xe9\nold\n")
    run(EditTool(), context(tmp_path), {"file_path": "latin.txt", "old_string": "old", "new_string": "new"})
    assert target.read_bytes() == b"caf\xe9\nnew\n"


# --------------------------------------------------------------------------- LS


def test_ls_sorted_with_directory_slashes_and_ignore(tmp_path: Path) -> None:
    """Entries sorted by name, directories with '/', hidden ones included, ignore globs drop names."""
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").write_text("")
    (tmp_path / "c.log").write_text("")
    ctx = context(tmp_path)
    assert run(LSTool(), ctx, {}).output == ".hidden\na/\nb.txt\nc.log"
    assert run(LSTool(), ctx, {"path": str(tmp_path), "ignore": ["*.log", ".*"]}).output == "a/\nb.txt"
    (tmp_path / "a" / "x").write_text("")
    assert run(LSTool(), ctx, {"path": "a"}).output == "x"


def test_ls_cap_and_errors(tmp_path: Path) -> None:
    """At most 1000 entries with a note; missing paths, files and empty directories are reported."""
    many = tmp_path / "many"
    many.mkdir()
    for i in range(LS_MAX_ENTRIES + 5):
        (many / f"f{i:05}").write_text("")
    result = run(LSTool(), context(tmp_path), {"path": "many"})
    lines = result.output.split("\n")
    assert len(lines) == LS_MAX_ENTRIES + 1 and lines[-1] == "… [5 more entries not shown]"
    assert lines[0] == "f00000"
    (tmp_path / "empty").mkdir()
    assert run(LSTool(), context(tmp_path), {"path": "empty"}).output == "(empty directory)"
    missing = run(LSTool(), context(tmp_path), {"path": "nope"})
    assert missing.is_error and "does not exist" in missing.output
    (tmp_path / "file").write_text("")
    not_dir = run(LSTool(), context(tmp_path), {"path": "file"})
    assert not_dir.is_error and "not a directory" in not_dir.output


# --------------------------------------------------------------------------- Glob


def _touch(path: Path, mtime: float, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


def test_glob_newest_first_respecting_gitignore(tmp_path: Path) -> None:
    """Results are sorted by mtime (newest first); .gitignore'd files and .git are skipped; hidden files are not."""
    _touch(tmp_path / ".gitignore", 1000, "build/\n")
    old = _touch(tmp_path / "src" / "old.py", 1_000_000)
    new = _touch(tmp_path / "src" / "deep" / "new.py", 3_000_000)
    mid = _touch(tmp_path / ".tools" / "mid.py", 2_000_000)
    _touch(tmp_path / "build" / "gen.py", 4_000_000)
    _touch(tmp_path / ".git" / "hook.py", 5_000_000)
    _touch(tmp_path / "readme.md", 6_000_000)
    ctx = context(tmp_path)
    result = run(GlobTool(), ctx, {"pattern": "**/*.py"})
    assert result.output.split("\n") == [str(new), str(mid), str(old)]
    assert run(GlobTool(), ctx, {"pattern": "*.py"}).output.split("\n") == [str(new), str(mid), str(old)]
    assert run(GlobTool(), ctx, {"pattern": "src/*.py"}).output == str(old)
    assert run(GlobTool(), ctx, {"pattern": "*.py", "path": "src/deep"}).output == str(new)
    assert run(GlobTool(), ctx, {"pattern": str(tmp_path / "src") + "/**/*.py"}).output.split("\n") == [
        str(new), str(old)]
    assert run(GlobTool(), ctx, {"pattern": "*.rs"}).output == "No files found"


def test_glob_cap_and_errors(tmp_path: Path) -> None:
    """At most 100 results (the newest) with a note; a missing directory is an error."""
    for i in range(GLOB_MAX_RESULTS + 5):
        _touch(tmp_path / f"f{i:03}.txt", 1_000_000 + i)
    result = run(GlobTool(), context(tmp_path), {"pattern": "*.txt"})
    lines = result.output.split("\n")
    assert len(lines) == GLOB_MAX_RESULTS + 1 and "truncated" in lines[-1]
    assert lines[0] == str(tmp_path / f"f{GLOB_MAX_RESULTS + 4:03}.txt")
    assert result.metadata == {"numFiles": GLOB_MAX_RESULTS + 5, "truncated": True}
    missing = run(GlobTool(), context(tmp_path), {"pattern": "*", "path": "nope"})
    assert missing.is_error and "does not exist" in missing.output


def test_glob_without_ripgrep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without rg a Python walk gives the same answer for simple trees."""
    monkeypatch.setattr("codebuddy.agent.tools.find_rg", lambda: None)
    _touch(tmp_path / ".gitignore", 1000, "skip/\n")
    a = _touch(tmp_path / "a.py", 2_000_000)
    b = _touch(tmp_path / "pkg" / "b.py", 3_000_000)
    _touch(tmp_path / "skip" / "c.py", 4_000_000)
    ctx = context(tmp_path)
    assert run(GlobTool(), ctx, {"pattern": "**/*.py"}).output.split("\n") == [str(b), str(a)]
    assert run(GlobTool(), ctx, {"pattern": "pkg/*.py"}).output == str(b)


# --------------------------------------------------------------------------- Grep


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _touch(tmp_path / ".gitignore", 1000, "ignored.py\n")
    _touch(tmp_path / "a.py", 2_000_000, "import os\n\ndef main():\n    return os.getcwd()\n")
    _touch(tmp_path / "lib" / "b.py", 3_000_000, "DEF = 1\ndef helper():\n    pass\n")
    _touch(tmp_path / "notes.md", 4_000_000, "def in markdown\n")
    _touch(tmp_path / "ignored.py", 5_000_000, "def hidden():\n")
    return tmp_path


def test_grep_files_with_matches_newest_first(tree: Path) -> None:
    """The default mode lists matching files, newest first, skipping .gitignore'd ones."""
    result = run(GrepTool(), context(tree), {"pattern": "def "})
    assert result.output.split("\n") == ["Found 3 files", str(tree / "notes.md"), str(tree / "lib" / "b.py"),
                                         str(tree / "a.py")]
    assert result.metadata["numFiles"] == 3


def test_grep_content_with_numbers_context_and_case(tree: Path) -> None:
    """content mode: path:line:text, -C context lines (path-line-text), -i folds case, glob/type filters."""
    ctx = context(tree)
    content = run(GrepTool(), ctx, {"pattern": "^def", "output_mode": "content", "glob": "lib/*.{py,txt}"})
    assert content.output.split("\n") == [f"{tree}/lib/b.py:2:def helper():"]
    plain = run(GrepTool(), ctx, {"pattern": "^def", "output_mode": "content", "type": "py", "-n": False})
    assert plain.output.split("\n") == [f"{tree}/a.py:def main():", f"{tree}/lib/b.py:def helper():"]
    context_lines = run(GrepTool(), ctx, {"pattern": "main", "output_mode": "content", "-C": 1})
    assert context_lines.output.split("\n") == [f"{tree}/a.py-2-", f"{tree}/a.py:3:def main():",
                                                f"{tree}/a.py-4-    return os.getcwd()"]
    folded = run(GrepTool(), ctx, {"pattern": "^def", "-i": True, "output_mode": "content", "path": "lib"})
    assert folded.output.split("\n") == [f"{tree}/lib/b.py:1:DEF = 1", f"{tree}/lib/b.py:2:def helper():"]


def test_grep_count_head_limit_and_file_path(tree: Path) -> None:
    """count mode gives matches per file and a total; head_limit keeps the first lines; path may be a file."""
    ctx = context(tree)
    counts = run(GrepTool(), ctx, {"pattern": "(?i)def", "output_mode": "count", "type": "py"})
    assert counts.output.split("\n") == [f"{tree}/a.py:1", f"{tree}/lib/b.py:2", "", "Found 3 matches in 2 files"]
    assert counts.metadata["numMatches"] == 3
    limited = run(GrepTool(), ctx, {"pattern": "def ", "head_limit": 1})
    assert limited.output.split("\n") == ["Found 3 files", str(tree / "notes.md"),
                                         "… [showing the first 1 of 3 lines (head_limit)]"]
    one_file = run(GrepTool(), ctx, {"pattern": "return", "path": "a.py", "output_mode": "content"})
    assert one_file.output == f"{tree}/a.py:4:    return os.getcwd()"


def test_grep_errors_and_no_matches(tree: Path) -> None:
    """An invalid regex and a missing path are errors; no match is not."""
    ctx = context(tree)
    bad = run(GrepTool(), ctx, {"pattern": "(unclosed"})
    assert bad.is_error and "regex parse error" in bad.output
    missing = run(GrepTool(), ctx, {"pattern": "x", "path": "nope"})
    assert missing.is_error and "does not exist" in missing.output
    none = run(GrepTool(), ctx, {"pattern": "zzz_not_there"})
    assert not none.is_error and none.output == "No matches found"


def test_grep_output_is_bounded(tmp_path: Path) -> None:
    """A search matching very many lines is cut with a note (never more than the cap)."""
    (tmp_path / "many.txt").write_text("match this line please\n" * 20_000)
    result = run(GrepTool(), context(tmp_path), {"pattern": "match", "output_mode": "content"})
    assert len(result.output) < 31_000
    assert "output cut at 30000 characters" in result.output


# --------------------------------------------------------------------------- CancelToken


def test_cancel_token() -> None:
    """Callbacks run once on cancel; unregistered ones do not; late registrations run at once."""
    token = CancelToken()
    calls: list[str] = []
    token.on_cancel(lambda: calls.append("a"))
    remove = token.on_cancel(lambda: calls.append("b"))
    remove()
    assert not token.cancelled
    token.cancel()
    token.cancel()
    assert calls == ["a"] and token.cancelled
    token.on_cancel(lambda: calls.append("late"))
    assert calls == ["a", "late"]


# --------------------------------------------------------------------------- Bash (real processes)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def manager(tmp_path: Path) -> Any:
    spawner = Spawner(_reactor(), environ={"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(tmp_path)},
                      default_cwd=str(tmp_path), kill_grace=0.5)
    spawner.startService()
    processes = ProcessManager(spawner, str(tmp_path), _reactor())
    processes.startService()
    yield processes
    processes.stopService()
    for child in spawner.children():
        child.signal(signal.SIGKILL)


async def bash(ctx: ToolContext, input: dict[str, Any]) -> ToolResult:
    result = await ensureDeferred(BashTool().run(ctx, input)).addTimeout(WAIT, _reactor())
    assert isinstance(result, ToolResult)
    return result


def gone(pid: int) -> bool:
    """Whether the process has terminated (or terminates within WAIT seconds: a SIGKILLed process may
    still be on its way out). A pidfd becomes readable exactly when the process has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], WAIT)
        return bool(readable)
    finally:
        os.close(fd)


def group_gone(pgid: int) -> bool:
    """Every process of the group has terminated."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return all(gone(pid) for pid in members)


class OutputWaiter:
    """Fires once a process's output contains ``needle``."""

    def __init__(self, proc: ManagedProcess, needle: bytes) -> None:
        self.needle = needle
        self.data = b""
        self.done: Deferred[bytes] = Deferred()
        self.sub = proc.buffer.subscribe(self, 0)
        self.data_available()

    def data_available(self) -> None:
        for chunk in self.sub.take(1 << 20).chunks:
            self.data += chunk.data
        if self.needle in self.data and not self.done.called:
            self.sub.cancel()
            self.done.callback(self.data)

    def buffer_closed(self) -> None:
        pass

    def lagged(self, next_offset: int) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_bash_output_exit_code_and_cwd(tmp_path: Path, manager: ProcessManager) -> None:
    """stdout and stderr come back together; a non-zero exit is appended and is an error; cwd is ctx.cwd."""
    work = tmp_path / "work"
    work.mkdir()
    ctx = context(work, processes=manager, env={"GREETING": "hello"})
    ok = await bash(ctx, {"command": 'echo "$GREETING"; pwd; echo oops >&2'})
    assert not ok.is_error
    # two pipes: stderr's line may come before or after stdout's
    assert sorted(ok.output.split("\n")) == sorted(["hello", str(work), "oops"])
    assert ok.output.index("hello") < ok.output.index(str(work))
    assert ok.metadata["exitCode"] == 0
    failed = await bash(ctx, {"command": "echo partial; exit 3"})
    assert failed.is_error and failed.output == "partial\nExit code: 3"
    quiet = await bash(ctx, {"command": "true"})
    assert quiet.output == "(no output)" and not quiet.is_error
    listed = [p for p in manager.processes() if p.pid == ok.metadata["pid"]]
    assert listed and listed[0].tag is not None and listed[0].tag.startswith("agent-bash-")


@pytest_twisted.ensureDeferred
async def test_bash_output_cap_keeps_head_and_tail(tmp_path: Path, manager: ProcessManager) -> None:
    """Long output is cut to 30000 characters: the start and the end with a marker between."""
    ctx = context(tmp_path, processes=manager)
    result = await bash(ctx, {"command": "seq 1 100000"})
    assert not result.is_error
    assert len(result.output) <= BASH_MAX_CHARS + 100
    assert result.output.startswith("1\n2\n3\n")
    assert result.output.endswith("99999\n100000")
    assert re.search(r"\n… \[\d+ bytes of output omitted\] …\n", result.output)
    assert result.metadata["truncated"] is True


@pytest_twisted.ensureDeferred
async def test_bash_timeout_kills_the_process_group(tmp_path: Path, manager: ProcessManager) -> None:
    """On timeout the command and its background children are killed; the result says so."""
    ctx = context(tmp_path, processes=manager)
    result = await bash(ctx, {"command": "sleep 30 & echo bg=$!; sleep 30", "timeout": 1000})
    assert result.is_error
    assert result.output.startswith("Command timed out after 1000 ms")
    assert result.metadata["timedOut"] is True
    background = int(re.search(r"bg=(\d+)", result.output).group(1))  # type: ignore[union-attr]
    assert gone(background)
    assert gone(result.metadata["pid"])
    assert group_gone(result.metadata["pid"])


@pytest_twisted.ensureDeferred
async def test_bash_cancel_kills_at_once(tmp_path: Path, manager: ProcessManager) -> None:
    """Cancelling through ctx.cancel SIGKILLs the whole group now (no grace period)."""
    ctx = context(tmp_path, processes=manager)
    running = ensureDeferred(BashTool().run(ctx, {"command": "sleep 30 & echo bg=$!; sleep 30"}))
    proc = manager.processes()[-1]
    seen = await OutputWaiter(proc, b"\n").done.addTimeout(WAIT, _reactor())
    background = int(re.search(rb"bg=(\d+)", seen).group(1))  # type: ignore[union-attr]
    ctx.cancel.cancel()
    result = await running.addTimeout(WAIT, _reactor())
    assert result.is_error and result.output.startswith("Command was cancelled")
    assert result.metadata["cancelled"] is True and result.metadata["signal"] == signal.SIGKILL
    assert gone(background) and group_gone(proc.pid)


@pytest_twisted.ensureDeferred
async def test_bash_cancelling_the_call_kills_the_group(tmp_path: Path, manager: ProcessManager) -> None:
    """Cancelling the Deferred of run() (how a run cancels a tool) also kills the group at once."""
    ctx = context(tmp_path, processes=manager)
    running = ensureDeferred(BashTool().run(ctx, {"command": "sleep 30 & echo bg=$!; sleep 30"}))
    proc = manager.processes()[-1]
    seen = await OutputWaiter(proc, b"\n").done.addTimeout(WAIT, _reactor())
    background = int(re.search(rb"bg=(\d+)", seen).group(1))  # type: ignore[union-attr]
    running.cancel()
    with pytest.raises(CancelledError):
        await running
    info = await proc.ended().addTimeout(WAIT, _reactor())
    assert info.signal == signal.SIGKILL
    assert gone(background) and group_gone(proc.pid)


@pytest_twisted.ensureDeferred
async def test_bash_errors_without_starting(tmp_path: Path, manager: ProcessManager) -> None:
    """No process manager, a cancelled context, a missing cwd or an empty command: an error, nothing runs."""
    assert "not available" in (await bash(context(tmp_path), {"command": "true"})).output
    ctx = context(tmp_path, processes=manager)
    ctx.cancel.cancel()
    before = len(manager.processes())
    cancelled = await bash(ctx, {"command": "true"})
    assert cancelled.is_error and "cancelled before it started" in cancelled.output
    missing = await bash(context(tmp_path / "nope", processes=manager), {"command": "true"})
    assert missing.is_error and "Could not start the command" in missing.output
    empty = await bash(context(tmp_path, processes=manager), {"command": "  "})
    assert empty.is_error and "must not be empty" in empty.output
    assert len(manager.processes()) == before


def test_searches_leave_out_files_the_rules_keep_from_reads(tree: Path) -> None:
    """``hidden`` (a Read deny rule) removes a file from Glob and from every Grep mode, output shapes kept."""
    ctx = context(tree, hidden=lambda path: path.name == "a.py")
    files = run(GrepTool(), ctx, {"pattern": "def "})
    assert files.output.split("\n") == ["Found 2 files", str(tree / "notes.md"), str(tree / "lib" / "b.py")]
    content = run(GrepTool(), ctx, {"pattern": "def|main", "output_mode": "content", "-C": 1, "type": "py"})
    assert str(tree / "a.py") not in content.output
    assert f"{tree}/lib/b.py:2:def helper():" in content.output.split("\n")
    shown = run(GrepTool(), context(tree), {"pattern": "def|main", "output_mode": "content", "-C": 1, "type": "py"})
    assert [line for line in shown.output.split("\n") if "/a.py" not in line and line != "--"] == [
        line for line in content.output.split("\n") if line != "--"]
    count = run(GrepTool(), ctx, {"pattern": "def", "output_mode": "count", "type": "py"})
    assert count.output.split("\n")[0] == f"{tree}/lib/b.py:1"
    glob = run(GlobTool(), ctx, {"pattern": "**/*.py"})
    assert glob.output.split("\n") == [str(tree / "lib" / "b.py")]
