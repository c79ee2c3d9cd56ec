"""The checkpoint store on a real temporary home and workspace."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codebuddy.checkpoints.history import backup_name, snapshot_item
from codebuddy.checkpoints.models import (
    Checkpoint,
    FileChange,
    FileDiff,
    InvalidScope,
    MissingBackup,
    NoCheckpoints,
    NotTracked,
    UnknownCheckpoint,
)
from codebuddy.checkpoints.store import CheckpointStore
from codebuddy.sessions.store import InvalidSessionId, SessionStore, UnknownSession
from tests.checkpoints.helpers import T0, Agent, ManualClock

SID = "sess-1"


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return Agent(tmp_path / "home", workspace, SID)


def h(path: Path | str) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- begin and before_change


def test_begin_records_a_checkpoint(agent: Agent) -> None:
    clock = agent.clock
    clock.now, clock.step = T0, 0.0
    label = "<system-reminder>x</system-reminder>  Fix   the parser\nplease "
    checkpoint = agent.store.begin(SID, agent.cwd, "m1", label)
    assert checkpoint == Checkpoint("m1", "Fix the parser please", int(T0 * 1000), agent.cwd, [])
    [item] = agent.items()
    assert item == {
        "sessionId": SID, "cwd": agent.cwd, "timestamp": "2025-06-15T15:06:40.000Z",
        "type": "file-history-snapshot", "messageId": "m1",
        "snapshot": {"messageId": "m1", "trackedFileBackups": {}, "timestamp": "2025-06-15T15:06:40.000Z"},
        "isSnapshotUpdate": False, "label": "Fix the parser please"}
    # the transcript lands where the sessions area looks for it
    assert agent.transcript() == agent.sessions.transcript_path(SID, agent.cwd)
    # beginning the same message again changes nothing
    assert agent.store.begin(SID, agent.cwd, "m1", "other") == checkpoint
    assert len(agent.items()) == 1


def test_first_touch_saves_the_original_once_per_checkpoint(agent: Agent) -> None:
    source = agent.workspace / "src" / "main.ts"
    source.parent.mkdir()
    source.write_text("original\n")
    os.chmod(source, 0o640)
    agent.say("m1", "edit main")
    agent.write("src/main.ts", "first edit\n")
    agent.write("src/main.ts", "second edit\n")  # same checkpoint: no new backup
    assert agent.backups() == [f"{h(source)}@v1"]
    backup = agent.history() / f"{h(source)}@v1"
    assert backup.read_text() == "original\n"
    assert stat.S_IMODE(backup.stat().st_mode) == 0o640
    assert stat.S_IMODE(agent.history().stat().st_mode) == 0o700
    [begin, update] = agent.snapshots()
    assert begin["isSnapshotUpdate"] is False and update["isSnapshotUpdate"] is True
    assert update["messageId"] == update["snapshot"]["messageId"] == "m1"
    entry = update["snapshot"]["trackedFileBackups"][str(source)]
    assert entry == {"backupFileName": f"{h(source)}@v1", "version": 1, "backupTime": entry["backupTime"]}
    assert entry["backupTime"].endswith("Z")
    assert update["cwd"] == agent.cwd and update["sessionId"] == SID


def test_a_new_checkpoint_carries_tracked_files(agent: Agent) -> None:
    (agent.workspace / "a.txt").write_text("a0\n")
    (agent.workspace / "b.txt").write_text("b0\n")
    agent.say("m1", "one")
    agent.write("a.txt", "a1\n")
    agent.write("b.txt", "b0\n")  # touched but left as it was
    agent.say("m2", "two")
    a, b = str(agent.workspace / "a.txt"), str(agent.workspace / "b.txt")
    snapshot = agent.snapshots()[-1]["snapshot"]["trackedFileBackups"]
    assert snapshot[a]["backupFileName"] == f"{h(a)}@v2" and snapshot[a]["version"] == 2
    assert snapshot[b]["backupFileName"] == f"{h(b)}@v1"  # unchanged: the same backup
    assert (agent.history() / f"{h(a)}@v2").read_text() == "a1\n"
    agent.write("a.txt", "a2\n")  # tracked by m2 already: nothing new
    assert agent.backups() == sorted([f"{h(a)}@v1", f"{h(a)}@v2", f"{h(b)}@v1"])
    assert [s["isSnapshotUpdate"] for s in agent.snapshots()] == [False, True, True, False]


def test_created_and_deleted_files(agent: Agent) -> None:
    (agent.workspace / "old.txt").write_text("x\ny\n")
    agent.say("m1", "make and remove")
    agent.write("new/file.py", "print(1)\n")
    agent.delete("old.txt")
    entries = agent.snapshots()[-1]["snapshot"]["trackedFileBackups"]
    new = str(agent.workspace / "new" / "file.py")
    assert entries[new]["backupFileName"] is None and entries[new]["version"] == 1
    assert agent.store.file_changes(SID) == [
        FileChange(new, "created", 1, 0), FileChange(str(agent.workspace / "old.txt"), "deleted", 0, 2)]
    assert agent.store.diff(SID, new) == FileDiff(new, None, "print(1)\n")
    assert agent.store.diff(SID, str(agent.workspace / "old.txt")).new_text == ""


def test_before_change_ignores_what_it_cannot_track(agent: Agent) -> None:
    agent.store.before_change(SID, agent.workspace / "x")  # no transcript yet
    agent.sessions.append(SID, agent.cwd, [{"type": "message", "role": "user", "content": "no checkpoint"}])
    agent.store.before_change(SID, agent.workspace / "x")  # no checkpoint yet
    assert not agent.history().exists()
    agent.say("m1", "dir")
    (agent.workspace / "d").mkdir()
    agent.store.before_change(SID, agent.workspace / "d")  # a directory
    assert len(agent.snapshots()) == 1
    with pytest.raises(ValueError):
        agent.store.before_change(SID, Path("relative.txt"))
    with pytest.raises(InvalidSessionId):
        agent.store.begin("../x", agent.cwd, "m", "t")


def test_concurrent_first_touches_all_recorded(agent: Agent) -> None:
    names = [f"f{i}.txt" for i in range(16)]
    for name in names:
        (agent.workspace / name).write_text(name)
    agent.say("m1", "many")
    threads = [threading.Thread(target=agent.store.before_change, args=(SID, agent.workspace / n)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tracked = agent.snapshots()[-1]["snapshot"]["trackedFileBackups"]
    assert sorted(tracked) == sorted(str(agent.workspace / n) for n in names)
    assert len(agent.backups()) == 16


def test_another_process_writing_is_seen(agent: Agent) -> None:
    """A second store (another process) on the same home: appends are read on, rewrites reread."""
    reader = CheckpointStore(agent.home, SessionStore(agent.home))
    agent.say("m1", "one")
    assert [c.id for c in reader.checkpoints(SID)] == ["m1"]
    agent.write("a.txt", "a\n")
    assert reader.checkpoints(SID)[0].files == [str(agent.workspace / "a.txt")]
    agent.say("m2", "two")
    assert [c.id for c in reader.checkpoints(SID)] == ["m2", "m1"]
    agent.store.revert_to(SID, "m2", "Conversation")  # a rewrite (new inode)
    assert [c.id for c in reader.checkpoints(SID)] == ["m1"]


# --------------------------------------------------------------------------- listing


def test_checkpoints_list_changes_per_checkpoint(agent: Agent) -> None:
    (agent.workspace / "a.txt").write_text("1\n2\n3\n")
    agent.clock.step = 0.0
    agent.clock.now = T0
    agent.say("m1", "first")
    agent.write("a.txt", "1\n2\n3\n4\n")  # +1
    agent.write("b.txt", "b\nb\n")  # created: +2
    agent.reply("done")
    agent.clock.now = T0 + 60
    agent.say("m2", "second")
    agent.write("a.txt", "one\n2\n3\n4\n")  # +1 -1
    agent.clock.now = T0 + 120
    agent.say("m3", "third: nothing changes")
    listed = agent.store.checkpoints(SID)
    a, b = str(agent.workspace / "a.txt"), str(agent.workspace / "b.txt")
    assert [(c.id, c.label, c.created_at, c.files, c.additions, c.deletions) for c in listed] == [
        ("m3", "third: nothing changes", (T0 + 120) * 1000, [], 0, 0),
        ("m2", "second", (T0 + 60) * 1000, [a], 1, 1),
        ("m1", "first", T0 * 1000, [a, b], 3, 0),
    ]
    # a change on disk after the latest checkpoint belongs to it (even one not made by a tool)
    Path(b).write_text("b\n")
    assert agent.store.checkpoints(SID)[0].files == [b]
    assert agent.store.checkpoints(SID)[0].deletions == 1
    assert agent.store.file_changes(SID, "m1") == [FileChange(a, "modified", 1, 0), FileChange(b, "created", 2, 0)]
    with pytest.raises(UnknownCheckpoint):
        agent.store.file_changes(SID, "nope")


def test_checkpoints_of_unknown_and_empty_sessions(agent: Agent) -> None:
    with pytest.raises(UnknownSession):
        agent.store.checkpoints("nobody")
    agent.sessions.append(SID, agent.cwd, [{"type": "message", "role": "user", "content": "hi"}])
    assert agent.store.checkpoints(SID) == []
    assert agent.store.file_changes(SID) == []
    with pytest.raises(InvalidSessionId):
        agent.store.checkpoints("../etc")


def test_a_transcript_written_by_codebuddy(agent: Agent) -> None:
    """Snapshot items without our label, paths relative to the cwd, a backup we did not write."""
    path = agent.workspace / "lib.py"
    path.write_text("new\n")
    agent.history().mkdir(parents=True)
    (agent.history() / f"{h(path)}@v1").write_text("old\n")
    agent.sessions.append(SID, agent.cwd, [
        {"type": "message", "role": "user", "id": "u-1", "content": [{"type": "input_text", "text": "Refactor lib"}]},
        {"type": "file-history-snapshot", "messageId": "u-1", "isSnapshotUpdate": False,
         "snapshot": {"messageId": "u-1", "timestamp": "2025-06-15T15:06:40.000Z", "trackedFileBackups": {
             "lib.py": {"backupFileName": f"{h(path)}@v1", "version": 1, "backupTime": "2025-06-15T15:06:41.000Z"}}}},
    ])
    [info] = agent.store.checkpoints(SID)
    assert (info.id, info.label, info.created_at, info.files, info.additions, info.deletions) == (
        "u-1", "Refactor lib", int(T0 * 1000), [str(path)], 1, 1)
    assert agent.store.diff(SID, "lib.py") == FileDiff("lib.py", "old\n", "new\n")


# --------------------------------------------------------------------------- diff


def test_diff_compares_the_latest_checkpoint_with_the_disk(agent: Agent) -> None:
    (agent.workspace / "a.txt").write_text("v0\n")
    agent.say("m1", "one")
    path = agent.write("a.txt", "v1\n")
    assert agent.store.diff(SID, str(path)) == FileDiff(str(path), "v0\n", "v1\n")
    agent.say("m2", "two")
    assert agent.store.diff(SID, str(path)) == FileDiff(str(path), "v1\n", "v1\n")
    agent.write("a.txt", "v2\n")
    assert agent.store.diff(SID, str(path)) == FileDiff(str(path), "v1\n", "v2\n")
    # the path forms a client may send
    assert agent.store.diff(SID, "a.txt").old_text == "v1\n"
    assert agent.store.diff(SID, "file://" + str(path)).new_text == "v2\n"
    assert agent.store.diff(SID, str(agent.workspace) + "/./a.txt").path.endswith("/./a.txt")


def test_diff_errors(agent: Agent) -> None:
    agent.say("m1", "one")
    path = agent.write("a.txt", "x")
    with pytest.raises(NotTracked) as caught:
        agent.store.diff(SID, str(agent.workspace / "other.txt"))
    assert caught.value.paths == [str(agent.workspace / "other.txt")]
    for bad in ("", "a\0b"):
        with pytest.raises(NotTracked):
            agent.store.diff(SID, bad)
    with pytest.raises(UnknownSession):
        agent.store.diff("nobody", str(path))
    agent.write("b.txt", "b")
    (agent.workspace / "c.txt").write_text("c")
    agent.write("c.txt", "c2")
    for backup in agent.backups():
        (agent.history() / backup).unlink()
    with pytest.raises(MissingBackup):
        agent.store.diff(SID, str(agent.workspace / "c.txt"))


def test_diff_of_bytes_that_are_not_utf8(agent: Agent) -> None:
    path = agent.workspace / "latin1.txt"
    path.write_bytes(b"caf\xe9\n")
    agent.say("m1", "one")
    agent.store.before_change(SID, path)
    path.write_bytes(b"caf\xc3\xa9\n")
    assert agent.store.diff(SID, str(path)) == FileDiff(str(path), "caf\ufffd\n", "café\n")


# --------------------------------------------------------------------------- revert by paths


def test_revert_paths(agent: Agent) -> None:
    (agent.workspace / "a.txt").write_text("a0\n")
    os.chmod(agent.workspace / "a.txt", 0o600)
    agent.say("m1", "one")
    a = agent.write("a.txt", "a1\n")
    agent.say("m2", "two")
    agent.write("a.txt", "a2\n")
    created = agent.write("sub/new.txt", "n\n")
    os.chmod(a, 0o644)
    reverted = agent.store.revert_paths(SID, [str(a), "sub/new.txt", str(a)])
    assert reverted == [str(a), "sub/new.txt"]  # as given, once each
    assert a.read_text() == "a1\n"  # the start of the latest checkpoint
    assert stat.S_IMODE(a.stat().st_mode) == 0o600  # its mode then
    assert not created.exists()  # created by the agent: deleted
    assert agent.store.revert_paths(SID, [str(a)]) == [str(a)]  # again: nothing left to do
    assert a.read_text() == "a1\n"


def test_revert_paths_is_all_or_nothing(agent: Agent) -> None:
    agent.say("m1", "one")
    a = agent.write("a.txt", "a1\n")
    with pytest.raises(NotTracked) as caught:
        agent.store.revert_paths(SID, [str(a), "/not/tracked", ""])
    assert caught.value.paths == ["/not/tracked", ""]
    assert a.exists()
    with pytest.raises(UnknownSession):
        agent.store.revert_paths("nobody", [str(a)])
    assert not (agent.home / "file-history" / "nobody").exists()


def test_revert_restores_through_a_symlink_and_into_missing_folders(agent: Agent) -> None:
    target = agent.workspace / "real.txt"
    target.write_text("r0")
    link = agent.workspace / "link.txt"
    link.symlink_to(target)
    (agent.workspace / "d").mkdir()
    (agent.workspace / "d" / "f.txt").write_text("f0")
    agent.say("m1", "one")
    agent.write("link.txt", "r1")
    agent.write("d/f.txt", "f1")
    (agent.workspace / "d" / "f.txt").unlink()
    (agent.workspace / "d").rmdir()
    agent.store.revert_paths(SID, [str(link), str(agent.workspace / "d" / "f.txt")])
    assert link.is_symlink() and target.read_text() == "r0"
    assert (agent.workspace / "d" / "f.txt").read_text() == "f0"


# --------------------------------------------------------------------------- revert to a checkpoint


def three_turns(agent: Agent) -> dict[str, Path]:
    """a: edited in m1 and m3; b: created in m2; c: deleted in m3; d: created in m1; a title in between."""
    ws = agent.workspace
    (ws / "a.txt").write_text("a0\n")
    (ws / "c.txt").write_text("c0\n")
    agent.say("m1", "one")
    agent.write("a.txt", "a1\n")
    agent.write("d.txt", "d1\n")
    agent.reply("r1")
    agent.say("m2", "two")
    agent.write("b.txt", "b2\n")
    agent.reply("r2")
    agent.sessions.rename(SID, "My title")
    agent.say("m3", "three")
    agent.write("a.txt", "a3\n")
    agent.delete("c.txt")
    agent.reply("r3")
    return {name: ws / f"{name}.txt" for name in "abcd"}


def disk(files: dict[str, Path]) -> dict[str, str | None]:
    return {name: path.read_text() if path.exists() else None for name, path in files.items()}


def test_revert_code_to_each_checkpoint(agent: Agent) -> None:
    files = three_turns(agent)
    before = agent.transcript().read_bytes()
    result = agent.store.revert_to(SID, "m3", "Code")
    assert disk(files) == {"a": "a1\n", "b": "b2\n", "c": "c0\n", "d": "d1\n"}
    assert (result.checkpoint_id, result.scope, result.removed_messages) == ("m3", "Code", 0)
    assert sorted(result.reverted_files) == [str(files["a"]), str(files["c"])] and result.deleted_files == []
    result = agent.store.revert_to(SID, "m2", "Code")
    assert disk(files) == {"a": "a1\n", "b": None, "c": "c0\n", "d": "d1\n"}
    assert result.reverted_files == [str(files["b"])] == result.deleted_files
    result = agent.store.revert_to(SID, None, "Code")  # the earliest
    assert result.checkpoint_id == "m1"
    assert disk(files) == {"a": "a0\n", "b": None, "c": "c0\n", "d": None}
    assert agent.transcript().read_bytes() == before  # the conversation is untouched
    # forward again: the later checkpoints still know what their files were
    agent.store.revert_to(SID, "m3", "Code")
    assert disk(files) == {"a": "a1\n", "b": "b2\n", "c": "c0\n", "d": "d1\n"}


def test_revert_conversation(agent: Agent) -> None:
    files = three_turns(agent)
    original = agent.transcript().read_bytes()
    inode = agent.transcript().stat().st_ino
    agent.clock.now = T0 + 500
    agent.clock.step = 0
    result = agent.store.revert_to(SID, "m2", "Conversation")
    assert (result.checkpoint_id, result.scope, result.reverted_files, result.removed_messages) == (
        "m2", "Conversation", [], 4)
    assert disk(files) == {"a": "a3\n", "b": "b2\n", "c": None, "d": "d1\n"}  # the code is untouched
    items = agent.items()
    assert agent.transcript().stat().st_ino != inode  # replaced, not rewritten in place
    assert stat.S_IMODE(agent.transcript().stat().st_mode) == 0o600
    messages = [(i["role"], i["content"][0]["text"]) for i in items if i.get("type") == "message"]
    assert messages == [("user", "one"), ("assistant", "r1")]
    assert [i["customTitle"] for i in items if i.get("type") == "custom-title"] == ["My title"]  # kept
    # the old transcript is kept in the session's file history
    saved = agent.history() / f"{SID}.jsonl.bak-{int((T0 + 500) * 1000)}"
    assert saved.read_bytes() == original
    # the session list and history agree with the new transcript
    [row] = agent.sessions.rows()
    assert (row["id"], row["messageCount"], row["name"]) == (SID, 2, "My title")
    assert [r.user_input for r in agent.sessions.history(SID).requests] == ["one"]
    # m1 is the latest checkpoint now; files first changed in m2/m3 stay tracked by it
    [info] = agent.store.checkpoints(SID)
    assert info.id == "m1"
    assert sorted(info.files) == sorted(str(p) for p in files.values())
    agent.store.revert_to(SID, None, "Code")
    assert disk(files) == {"a": "a0\n", "b": None, "c": "c0\n", "d": None}


def test_revert_code_and_conversation(agent: Agent) -> None:
    files = three_turns(agent)
    result = agent.store.revert_to(SID, "m3", "CodeAndConversation")
    assert disk(files) == {"a": "a1\n", "b": "b2\n", "c": "c0\n", "d": "d1\n"}
    assert result.removed_messages == 2 and sorted(result.reverted_files) == [str(files["a"]), str(files["c"])]
    assert [c.id for c in agent.store.checkpoints(SID)] == ["m2", "m1"]
    assert [r.user_input for r in agent.sessions.history(SID).requests] == ["one", "two"]
    # the agent goes on
    agent.say("m3b", "three again")
    agent.write("a.txt", "a3b\n")
    assert agent.store.diff(SID, str(files["a"])) == FileDiff(str(files["a"]), "a1\n", "a3b\n")
    result = agent.store.revert_to(SID, "m1", "CodeAndConversation")
    assert disk(files) == {"a": "a0\n", "b": None, "c": "c0\n", "d": None}
    assert agent.store.checkpoints(SID) == []
    assert agent.sessions.rows() == []  # no message left: the session is empty
    with pytest.raises(NoCheckpoints):
        agent.store.revert_to(SID, None, "Code")


def test_backup_names_are_never_reused(agent: Agent) -> None:
    a = agent.workspace / "a.txt"
    a.write_text("a0")
    agent.say("m1", "one")
    agent.write("a.txt", "a1")
    agent.say("m2", "two")  # a: v2 = a1
    agent.write("a.txt", "a2")
    agent.say("m3", "three")  # a: v3 = a2
    agent.write("a.txt", "a3")
    agent.store.revert_to(SID, "m3", "Conversation")  # m3 goes, its v3 stays on disk
    agent.say("m3b", "three again")  # a changed since v2: a new version, not v3 again
    entry = agent.snapshots()[-1]["snapshot"]["trackedFileBackups"][str(a)]
    assert (entry["backupFileName"], entry["version"]) == (f"{h(a)}@v4", 4)
    assert (agent.history() / f"{h(a)}@v3").read_text() == "a2"
    assert (agent.history() / f"{h(a)}@v4").read_text() == "a3"


def test_revert_to_errors(agent: Agent) -> None:
    with pytest.raises(UnknownSession):
        agent.store.revert_to(SID, None, "Code")
    agent.sessions.append(SID, agent.cwd, [{"type": "message", "role": "user", "content": "hi"}])
    with pytest.raises(NoCheckpoints):
        agent.store.revert_to(SID, None, "Code")
    agent.say("m1", "one")
    with pytest.raises(UnknownCheckpoint):
        agent.store.revert_to(SID, "checkpoint-uuid", "Code")
    with pytest.raises(InvalidScope):
        agent.store.revert_to(SID, "m1", "code")


def test_conversation_cut_starts_at_the_message_or_the_snapshot(agent: Agent) -> None:
    """A checkpoint begun before its message is written: the cut is at whichever comes first."""
    agent.say("m1", "one")
    agent.reply("r1")
    agent.store.begin(SID, agent.cwd, "m2", "two")
    agent.sessions.append(SID, agent.cwd, [{"type": "message", "role": "user", "id": "m2", "content": "two"}])
    agent.store.revert_to(SID, "m2", "Conversation")
    assert [i.get("messageId") or i.get("role") for i in agent.items()] == ["user", "m1", "assistant"]


def test_session_delete_removes_the_history(agent: Agent) -> None:
    three_turns(agent)
    agent.store.revert_to(SID, "m3", "Conversation")
    assert agent.history().exists()
    agent.sessions.delete(SID)
    assert not agent.history().exists()
    with pytest.raises(UnknownSession):
        agent.store.checkpoints(SID)


def test_revert_with_a_missing_backup(agent: Agent) -> None:
    (agent.workspace / "a.txt").write_text("a0")
    agent.say("m1", "one")
    agent.write("a.txt", "a1")
    for backup in agent.backups():
        (agent.history() / backup).unlink()
    with pytest.raises(MissingBackup):
        agent.store.revert_to(SID, "m1", "Code")
    assert agent.store.checkpoints(SID)[0].files == []  # nothing known to compare with


# --------------------------------------------------------------------------- the property


OPS = st.lists(  # per checkpoint: per file, None (leave), "" (delete) or new content
    st.fixed_dictionaries({name: st.one_of(st.none(), st.sampled_from(["", "x\n", "y\ny\n", "z\n"]))
                           for name in ("f0", "f1", "f2")}),
    min_size=1, max_size=5)


@settings(max_examples=60)
@given(OPS, st.data())
def test_revert_code_returns_every_file_to_its_state_at_the_checkpoint(turns: list[dict[str, str | None]],
                                                                       data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        workspace.mkdir()
        (workspace / "f0").write_text("start\n")
        agent = Agent(Path(tmp) / "home", workspace, SID, ManualClock(step=1.0))
        states = []
        for number, turn in enumerate(turns):
            states.append({n: (workspace / n).read_text() if (workspace / n).exists() else None
                           for n in ("f0", "f1", "f2")})
            agent.say(f"m{number}", f"turn {number}")
            for name, change in turn.items():
                if change is None:
                    continue
                if change == "":
                    if (workspace / name).exists():
                        agent.delete(name)
                else:
                    agent.write(name, change)
        # the listing's line counts match a diff of the states
        for _ in range(3):
            index = data.draw(st.integers(0, len(turns) - 1))
            agent.store.revert_to(SID, f"m{index}", "Code")
            now = {n: (workspace / n).read_text() if (workspace / n).exists() else None for n in ("f0", "f1", "f2")}
            assert now == states[index]


def test_snapshot_items_are_what_claude_code_style_readers_expect(agent: Agent) -> None:
    """Every tracked file in every snapshot names a backup that exists, or null; versions only grow."""
    three_turns(agent)
    seen: dict[str, int] = {}
    for item in agent.snapshots():
        assert set(item) >= {"type", "messageId", "snapshot", "isSnapshotUpdate", "timestamp", "sessionId", "cwd"}
        assert set(item["snapshot"]) == {"messageId", "trackedFileBackups", "timestamp"}
        for path, entry in item["snapshot"]["trackedFileBackups"].items():
            assert os.path.isabs(path)
            assert set(entry) == {"backupFileName", "version", "backupTime"}
            if entry["backupFileName"] is not None:
                assert entry["backupFileName"] == backup_name(path, entry["version"])
                assert (agent.history() / entry["backupFileName"]).is_file()
            assert entry["version"] >= seen.get(path, 1)
            seen[path] = entry["version"]
    json.dumps(snapshot_item("m", {}, False, "t"))
