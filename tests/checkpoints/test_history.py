"""The pure side of file history: backup names, snapshot items and their fold, line counts."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from codebuddy.checkpoints.history import (
    Backup,
    Fold,
    backup_name,
    line_stats,
    path_hash,
    snapshot_item,
    valid_backup_name,
)


def fold(*items: dict) -> Fold:
    result = Fold()
    for item in items:
        result.line(json.dumps(item).encode())
    return result


def test_backup_name_is_sha256_prefix_and_version() -> None:
    path = "/home/u/app/src/main.ts"
    digest = hashlib.sha256(path.encode()).hexdigest()
    assert path_hash(path) == digest[:16]
    assert backup_name(path, 1) == digest[:16] + "@v1"
    assert backup_name(path, 12) == digest[:16] + "@v12"
    assert path_hash("/tmp/caf\udce9") == hashlib.sha256(b"/tmp/caf\xe9").hexdigest()[:16]


def test_valid_backup_names() -> None:
    assert valid_backup_name("0123456789abcdef@v1")
    for bad in ("", ".", "..", "../x", "a/b", ".hidden", "a\0b", "a\\b"):
        assert not valid_backup_name(bad), bad


def test_snapshot_item_shape() -> None:
    item = snapshot_item("m1", {"/a": Backup("h@v1", 1, "T"), "/b": Backup(None, 1, "U")}, False, "NOW", "fix it")
    assert item == {
        "type": "file-history-snapshot",
        "messageId": "m1",
        "snapshot": {
            "messageId": "m1",
            "trackedFileBackups": {
                "/a": {"backupFileName": "h@v1", "version": 1, "backupTime": "T"},
                "/b": {"backupFileName": None, "version": 1, "backupTime": "U"},
            },
            "timestamp": "NOW",
        },
        "isSnapshotUpdate": False,
        "label": "fix it",
    }
    assert "label" not in snapshot_item("m1", {}, True, "NOW")


def test_fold_updates_replace_and_order_is_kept() -> None:
    result = fold(
        snapshot_item("m1", {}, False, "2025-06-15T15:06:40.000Z"),
        snapshot_item("m2", {}, False, "2025-06-15T15:07:40.000Z"),
        snapshot_item("m1", {"/a": Backup("x@v1", 1, "T")}, True, "2025-06-15T15:08:40.000Z"),
    )
    assert list(result.snapshots) == ["m1", "m2"]
    first = result.snapshots["m1"]
    assert first.created_at == 1_750_000_000_000  # the first item's time, not the update's
    assert dict(first.backups) == {"/a": Backup("x@v1", 1, "T")}


def test_fold_reads_codebuddy_items() -> None:
    """Items CodeBuddy wrote: no label (the user message's text is used), relative keys, odd entries."""
    result = fold(
        {"type": "message", "role": "user", "id": "u1", "cwd": "/w",
         "content": [{"type": "input_text", "text": "<system-reminder>x</system-reminder>  Add   a test"}]},
        {"type": "file-history-snapshot", "messageId": "u1", "cwd": "/w", "timestamp": "2025-06-15T15:06:40Z",
         "snapshot": {"messageId": "u1", "trackedFileBackups": {
             "src/a.py": {"backupFileName": "abc@v1", "version": 1, "backupTime": "t"},
             "/w/new.py": {"backupFileName": None, "version": 1},
             "/w/evil": {"backupFileName": "../../etc/passwd", "version": 1},
             "/w/bad-version": {"backupFileName": "x@v1", "version": "1"},
             "/w/not-an-object": 5}},
         "isSnapshotUpdate": False},
    )
    snapshot = result.snapshots["u1"]
    assert result.label_of(snapshot) == "Add a test"
    assert snapshot.cwd == "/w"
    assert dict(snapshot.backups) == {"/w/src/a.py": Backup("abc@v1", 1, "t"), "/w/new.py": Backup(None, 1, "")}


def test_fold_skips_noise() -> None:
    result = Fold()
    for raw in (b"", b"not json", b'{"type":"file-history-snapshot"}', b'{"type":"file-history-snapshot",'
                b'"snapshot":{"messageId":5}}', b'[1,2]', b'{"role":"user","content":"no id"}'):
        result.line(raw)
    assert result.snapshots == {} and result.labels == {}


def test_label_prefers_the_snapshot_label_and_shortens() -> None:
    long = "word " * 40
    result = fold({"type": "message", "role": "user", "id": "m", "content": "from the message"},
                  snapshot_item("m", {}, False, "2025-06-15T15:06:40.000Z", long))
    label = result.label_of(result.snapshots["m"])
    assert len(label) <= 80 and label.endswith("…") and label.startswith("word word")


def test_line_stats() -> None:
    assert line_stats(None, b"a\nb\n") == (2, 0)
    assert line_stats(b"a\nb\n", None) == (0, 2)
    assert line_stats(b"a\nb\nc\n", b"a\nB\nc\nd\n") == (2, 1)
    assert line_stats(b"same", b"same") == (0, 0)
    assert line_stats(b"\0binary", b"\0other") == (0, 0)
    assert line_stats(None, b"") == (0, 0)


def test_line_stats_of_big_files_counts_the_multiset_difference() -> None:
    old = b"".join(b"line %d\n" % i for i in range(200_000))
    new = old.replace(b"line 5\n", b"five\n").replace(b"line 7\n", b"") + b"tail\n"
    assert len(old) > 1 << 20
    assert line_stats(old, new) == (2, 2)


@given(st.lists(st.sampled_from(["a", "b", "c", ""]), max_size=12),
       st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=12))
def test_line_stats_agrees_with_unified_diff(old: list[str], new: list[str]) -> None:
    import difflib

    a = "".join(x + "\n" for x in old).encode()
    b = "".join(x + "\n" for x in new).encode()
    diff = list(difflib.unified_diff(old, new, lineterm="", n=0))[2:]
    plus = sum(1 for line in diff if line.startswith("+"))
    minus = sum(1 for line in diff if line.startswith("-"))
    assert line_stats(a, b) == (plus, minus)
