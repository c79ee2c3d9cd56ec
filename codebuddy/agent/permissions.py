# -*- test-case-name: tests.agent.test_permissions -*-
"""
Which tool calls a run may make: the ``permissions`` settings (``allow``, ``ask``, ``deny``,
``additionalDirectories``, ``defaultMode``, ``disableBypassPermissionsMode``) and the run's
permission mode, in Claude Code's rule syntax (acp-codebuddy.md §4): ``Tool`` or
``Tool(specifier)``.

**Rules.** A bare ``Tool`` (or ``Tool(*)``) matches every use of the tool.

- ``Bash(npm test:*)``: commands that are ``npm test`` or start with ``npm test`` followed by a
  blank (or a redirection): ``npm test --watch`` but not ``npm testing``. ``Bash(git * main)``:
  ``*`` matches any text (a trailing `` *`` also matches nothing: ``Bash(ls *)`` matches ``ls``).
  Without a wildcard the command must be exactly the specifier (blanks collapsed).
- A command line is split into its simple commands at ``;``, ``&&``, ``||``, ``|``, ``&``,
  newlines and parentheses (quotes, escapes and comments respected); the bodies of ``$(...)``,
  backticks and ``<(...)`` count as commands too. An **allow** rule set allows a command line only
  when *every* simple command is allowed (or one exact rule names the whole line); a **deny** or
  **ask** rule applies when *any* simple command matches, also after leading ``VAR=value``
  assignments and wrappers (``sudo``, ``env``, ``nohup``, ``timeout 5``, ``xargs``...) are
  stripped, and inside ``bash -c '...'`` / ``eval``. The splitting is a careful approximation of
  shell syntax, not a shell parser: deny rules are a guard rail, not a sandbox.
- File rules: ``Read(...)`` applies to Read, LS, Glob and Grep (their path), ``Edit(...)`` to Edit
  and Write; a rule naming a tool applies to that tool. Patterns are gitignore-style globs (``*``
  within a name, ``**`` any depth, ``?``, ``[...]``): ``//abs/path`` is absolute, ``~/x`` is in the
  home directory, ``./x``, ``/x`` and ``x/y`` are relative to the workspace (the run's cwd), and a
  pattern without a ``/`` (``*.env``) matches that name at any depth under the workspace. A pattern
  also matches everything under a directory it matches (``Read(./secrets)`` covers
  ``secrets/key``). Paths are checked as written (normalised) and with symlinks resolved: deny and
  ask rules apply if either form matches, allow rules only if both do.
- ``mcp__server`` (or ``mcp__server__*``) matches every tool of that MCP server.
- Other tools' specifiers: exact match, ``prefix:*``, or ``domain:example.com`` for URL inputs.

**Decision** (:func:`decide`), first match wins:

1. a deny rule → deny (in every mode);
2. mode ``bypassPermissions`` → allow (unless ``disableBypassPermissionsMode`` is ``"disable"``,
   which makes it ``default``);
3. mode ``plan`` → tools that change things are denied ("plan mode: read-only"); read-only tools
   go on to the next steps;
4. an ask rule → ask;
5. an allow rule → allow;
6. defaults: read-only file tools inside the workspace or an additional directory → allow, outside
   → ask; other read-only tools → allow; Write/Edit → allow in ``acceptEdits`` inside the workspace
   (or an additional directory), else ask; Bash and anything else → ask.

Mode ``dontAsk`` turns every "ask" into a deny. ``auto``, ``delegate``, unknown and missing modes
behave as ``default``. A run has nobody to answer "ask": its caller refuses such a call with
:func:`refusal_message`, which says how to allow it.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import attrs
from twisted.logger import Logger

from codebuddy.fs.search import glob_to_regex
from codebuddy.settings.schema import PERMISSION_MODES, is_rule

__all__ = [
    "BASH_TOOLS",
    "EDIT_TOOLS",
    "READ_TOOLS",
    "Decision",
    "PermissionRules",
    "PermissionSubject",
    "Rule",
    "decide",
    "refusal_message",
    "split_commands",
]

log = Logger()

READ_TOOLS = frozenset({"Read", "LS", "Glob", "Grep", "NotebookRead"})
EDIT_TOOLS = frozenset({"Edit", "Write", "MultiEdit", "NotebookEdit"})
PATH_TOOLS = READ_TOOLS | EDIT_TOOLS
BASH_TOOLS = frozenset({"Bash"})

Behavior = Literal["allow", "ask", "deny"]


class PermissionSubject(Protocol):
    """What :func:`decide` needs of a tool (a :class:`~codebuddy.agent.tools.Tool` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def is_read_only(self) -> bool: ...

    def permission_key(self, input: dict[str, Any]) -> str: ...


# --------------------------------------------------------------------------- command splitting

_KEYWORDS = frozenset({"!", "{", "}", "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "time",
                       "esac"})
_MAX_DEPTH = 8


def _close_paren(text: str, open_at: int) -> int:
    """The index just after the ``)`` matching the ``(`` at ``open_at`` (quotes respected; end of text if none)."""
    depth = 0
    i, n = open_at, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "'":
            j = text.find("'", i + 1)
            i = n if j < 0 else j + 1
            continue
        if c == '"':
            i = _close_double(text, i + 1, None, 0)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _close_backtick(text: str, start: int) -> int:
    """The index of the closing backtick for a substitution whose body starts at ``start``."""
    i, n = start, len(text)
    while i < n:
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "`":
            return i
        i += 1
    return n


def _close_double(text: str, start: int, out: list[str] | None, depth: int) -> int:
    """The index just after the ``"`` closing a string whose body starts at ``start``; the bodies of
    substitutions inside go to ``out``."""
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        if c == "$" and text.startswith("$((", i):
            i = _close_paren(text, i + 1)
            continue
        if c == "$" and text.startswith("$(", i):
            j = _close_paren(text, i + 1)
            if out is not None:
                _split_into(text[i + 2 : j - 1], out, depth + 1)
            i = j
            continue
        if c == "`":
            j = _close_backtick(text, i + 1)
            if out is not None:
                _split_into(text[i + 1 : j], out, depth + 1)
            i = j + 1
            continue
        i += 1
    return n


def _normalise(command: str) -> str:
    words = command.strip().split(" ")
    while words and words[0] in _KEYWORDS:
        words.pop(0)
    return " ".join(words).strip()


def _split_into(text: str, out: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        out.append(_normalise(" ".join(text.split())))
        return
    buf: list[str] = []
    word_start = True

    def flush() -> None:
        command = _normalise("".join(buf))
        if command:
            out.append(command)
        buf.clear()

    def last() -> str:
        return buf[-1][-1] if buf and buf[-1] else ""

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if text.startswith("\\\n", i):  # line continuation
                if last() != " ":
                    buf.append(" ")
                i += 2
                word_start = True
                continue
            buf.append(text[i : i + 2])
            i += 2
            word_start = False
            continue
        if c == "'":
            j = text.find("'", i + 1)
            j = n if j < 0 else j + 1
            buf.append(text[i:j])
            i, word_start = j, False
            continue
        if c == '"':
            j = _close_double(text, i + 1, out, depth)
            buf.append(text[i:j])
            i, word_start = j, False
            continue
        if c == "$" and text.startswith("$((", i):  # arithmetic: no commands inside
            j = _close_paren(text, i + 1)
            buf.append(text[i:j])
            i, word_start = j, False
            continue
        if c in "$<>" and text.startswith("(", i + 1):  # $(...), <(...), >(...)
            j = _close_paren(text, i + 1)
            _split_into(text[i + 2 : j - 1], out, depth + 1)
            buf.append(text[i:j])
            i, word_start = j, False
            continue
        if c == "`":
            j = _close_backtick(text, i + 1)
            _split_into(text[i + 1 : j], out, depth + 1)
            buf.append(text[i : j + 1])
            i, word_start = j + 1, False
            continue
        if c == "#" and word_start:  # a comment, to the end of the line
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c in " \t\r":
            if buf and last() != " ":
                buf.append(" ")
            i += 1
            word_start = True
            continue
        if c in ";\n()":
            flush()
            i += 1
            word_start = True
            continue
        if c == "&":
            if text.startswith("&&", i):
                flush()
                i += 2
            elif text.startswith("&>", i) or last() in "<>":  # &>file, 2>&1, <&3
                buf.append("&")
                i += 1
                word_start = False
                continue
            else:  # background
                flush()
                i += 1
            word_start = True
            continue
        if c == "|":
            if last() == ">":  # >| clobber
                buf.append("|")
                i += 1
                continue
            flush()
            i += 2 if text.startswith(("||", "|&"), i) else 1
            word_start = True
            continue
        buf.append(c)
        i += 1
        word_start = False
    flush()


_PROGRAM = re.compile(r"\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(\S+)")


def computed_programs(command: str) -> list[str]:
    """
    The sub-commands of ``command`` whose program is only known when the shell runs them
    (``$X -rf /``, ``$(which rm) x``, a backquoted program): no rule can tell what they run.
    """
    found = []
    for sub in split_commands(command):
        match = _PROGRAM.match(sub)
        program = match.group(1) if match else ""
        if program.startswith(("$", "`", "\"$", "'$")) or "$(" in program or "`" in program:
            found.append(sub.strip())
    return found


def split_commands(command: str) -> list[str]:
    """The simple commands of a command line, blanks collapsed (see the module docstring)."""
    out: list[str] = []
    _split_into(command, out, 0)
    return out


_ASSIGNMENT = re.compile(r"""[A-Za-z_][A-Za-z0-9_]*=(?:'[^']*'|"(?:[^"\\]|\\.)*"|\\.|[^\s'"\\])*(?:\s+|$)""")
_WRAPPERS = frozenset({"sudo", "doas", "env", "command", "builtin", "exec", "nohup", "nice", "ionice", "time",
                       "timeout", "xargs", "stdbuf", "setsid", "chrt", "taskset", "unbuffer"})
_OPTION_ARGS = {"sudo": {"-u", "-g", "-U", "-C", "-h", "-p", "-r", "-t", "-D"}, "nice": {"-n"},
                "ionice": {"-c", "-n"}, "xargs": {"-I", "-n", "-P", "-L", "-d", "-E", "-s"},
                "timeout": {"-s", "-k", "--signal", "--kill-after"}, "env": {"-u", "-C", "-S"}}
_SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "fish", "busybox"})


def _strip_wrappers(command: str) -> str:
    """``command`` without leading assignments and wrapper commands (``sudo -u x``, ``timeout 5``...)."""
    text = command
    for _ in range(16):
        match = _ASSIGNMENT.match(text)
        if match:
            text = text[match.end() :]
            continue
        word, _, rest = text.partition(" ")
        name = os.path.basename(word)
        if name not in _WRAPPERS:
            return text
        takes = _OPTION_ARGS.get(name, set())
        words = rest.split(" ") if rest else []
        while words and (words[0].startswith("-") or (name == "timeout" and re.fullmatch(r"[\d.]+[smhd]?", words[0]))
                         or (name == "env" and "=" in words[0])):
            option = words.pop(0)
            if option in takes and words:
                words.pop(0)
            if name == "timeout" and not option.startswith("-"):
                break
        text = " ".join(words)
    return text


def _nested_scripts(command: str) -> list[str]:
    """The scripts of ``bash -c 'script'`` and ``eval ...``."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return []
    if not argv:
        return []
    name = os.path.basename(argv[0])
    if name == "eval":
        return [" ".join(argv[1:])]
    if name in _SHELLS:
        for i, arg in enumerate(argv[1:], 1):
            if arg.startswith("-") and not arg.startswith("--") and "c" in arg and i + 1 < len(argv):
                return [argv[i + 1]]
    return []


def _restrictive_forms(command: str, depth: int = 0) -> set[str]:
    """Every form a deny/ask rule is checked against: the simple commands, unwrapped, and nested scripts."""
    forms: set[str] = set()
    for sub in split_commands(command):
        bare = _strip_wrappers(sub)
        forms.update((sub, bare))
        if depth < _MAX_DEPTH:
            for script in _nested_scripts(bare):
                forms |= _restrictive_forms(script, depth + 1)
    forms.discard("")
    return forms


# --------------------------------------------------------------------------- rules


def _collapse(text: str) -> str:
    return " ".join(text.split())


@functools.lru_cache(maxsize=1024)
def _command_regex(spec: str) -> re.Pattern[str]:
    body = _collapse(spec)
    trailing = body.endswith(" *")
    if trailing:
        body = body[:-2]
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    if trailing:
        regex += "(?: .*)?"
    return re.compile(regex, re.DOTALL)


@functools.lru_cache(maxsize=1024)
def _path_regex(spec: str, cwd: str, home: str) -> re.Pattern[str]:
    if spec.startswith("//"):
        base, rest = "/", spec[2:]
    elif spec == "~" or spec.startswith("~/"):
        base, rest = home, spec[2:]
    elif spec.startswith("/"):
        base, rest = cwd, spec[1:]
    elif spec.startswith("./"):
        base, rest = cwd, spec[2:]
    elif spec in (".", "./"):
        base, rest = cwd, ""
    else:
        base, rest = cwd, spec if "/" in spec.rstrip("/") else "**/" + spec
    while rest.startswith(("./", "../")) or rest in (".", ".."):
        if rest.startswith(".."):
            base = os.path.dirname(base.rstrip("/")) or "/"
        rest = rest.partition("/")[2]
    rest = rest.strip("/")
    base = os.path.normpath(base).rstrip("/")
    if not rest:
        regex = re.escape(base) + "(?:/.*)?" if base else "/.*"
    else:
        regex = re.escape(base) + "/" + glob_to_regex(rest) + "(?:/.*)?"
    return re.compile(regex, re.DOTALL)


def _host(url: str) -> str | None:
    try:
        return urlsplit(url if "://" in url else "//" + url).hostname
    except ValueError:
        return None


@attrs.frozen
class Rule:
    """One permission rule: ``tool`` and an optional ``specifier`` (``None``: every use)."""

    tool: str
    specifier: str | None
    text: str

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``"Bash(npm test:*)"`` → ``Rule("Bash", "npm test:*")``; ``ValueError`` if it is not a rule."""
        text = text.strip()
        if not is_rule(text):
            raise ValueError(f"{text!r} is not a permission rule: write Tool or Tool(specifier)")
        tool, paren, rest = text.partition("(")
        specifier = rest[:-1].strip() if paren else None
        if specifier in ("", "*", "**", ":*") and tool not in PATH_TOOLS:
            specifier = None
        if specifier in ("", "//**") and tool in PATH_TOOLS:
            specifier = None
        return cls(tool, specifier, text)

    def __str__(self) -> str:
        return self.text

    def applies_to(self, tool_name: str) -> bool:
        """Whether this rule is about ``tool_name`` (``Read`` rules cover LS/Glob/Grep, ``Edit`` covers Write)."""
        if self.tool == tool_name:
            return True
        if self.tool == "Read" and tool_name in READ_TOOLS:
            return True
        if self.tool == "Edit" and tool_name in EDIT_TOOLS:
            return True
        if self.tool.startswith("mcp__") and tool_name.startswith("mcp__"):
            server = self.tool.removesuffix("__*")
            return server.count("__") == 1 and tool_name.startswith(server + "__")
        return False

    def matches_command(self, command: str) -> bool:
        """Whether this (Bash) rule's specifier matches one simple ``command``."""
        spec = self.specifier
        if spec is None:
            return True
        command = _collapse(command)
        if spec.endswith(":*"):
            prefix = _collapse(spec[:-2])
            if not command.startswith(prefix):
                return False
            return len(command) == len(prefix) or prefix.endswith(" ") or command[len(prefix)] in " <>"
        if "*" in spec:
            return _command_regex(spec).fullmatch(command) is not None
        return command == _collapse(spec)

    def matches_path(self, path: str, cwd: str, home: str | None = None) -> bool:
        """Whether this (file) rule's pattern matches the absolute, normalised ``path``."""
        if self.specifier is None:
            return True
        home = home if home is not None else os.path.expanduser("~")
        return _path_regex(self.specifier, os.path.normpath(cwd), os.path.normpath(home)).fullmatch(path) is not None

    def matches_value(self, value: str) -> bool:
        """Whether this rule's specifier matches ``value`` (tools that are neither Bash nor file tools)."""
        spec = self.specifier
        if spec is None:
            return True
        if spec.startswith("domain:"):
            host, want = _host(value), spec[7:].strip().lower()
            if host is None:
                return False
            host = host.lower()
            if want.startswith("*."):
                return host.endswith(want[1:])
            return host == want
        if spec.endswith(":*"):
            return value.startswith(spec[:-2])
        return value == spec


def _parse_rules(texts: Any, where: str, invalid: list[str]) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    if not isinstance(texts, list | tuple):
        return ()
    for text in texts:
        try:
            rules.append(Rule.parse(text) if isinstance(text, str) else Rule.parse(repr(text)))
        except ValueError:
            invalid.append(f"{where}: {text!r}")
    return tuple(rules)


@attrs.frozen
class PermissionRules:
    """The permission settings of a run (from the merged settings view)."""

    allow: tuple[Rule, ...] = ()
    ask: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    additional_directories: tuple[str, ...] = ()
    default_mode: str = "default"
    disable_bypass: bool = False
    invalid: tuple[str, ...] = ()  # rules that did not parse ("permissions.allow: 'x('")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> PermissionRules:
        """From a merged settings object (its ``permissions`` key); invalid rules are skipped and listed."""
        permissions = settings.get("permissions") if isinstance(settings, Mapping) else None
        if not isinstance(permissions, Mapping):
            permissions = {}
        invalid: list[str] = []
        lists = {name: _parse_rules(permissions.get(name), f"permissions.{name}", invalid)
                 for name in ("allow", "ask", "deny")}
        directories = permissions.get("additionalDirectories")
        dirs = tuple(d for d in directories if isinstance(d, str) and d) if isinstance(directories, list) else ()
        mode = permissions.get("defaultMode")
        if invalid:
            log.warn("ignoring invalid permission rules: {rules}", rules=", ".join(invalid))
        return cls(allow=lists["allow"], ask=lists["ask"], deny=lists["deny"], additional_directories=dirs,
                   default_mode=mode if isinstance(mode, str) and mode in PERMISSION_MODES else "default",
                   disable_bypass=permissions.get("disableBypassPermissionsMode") == "disable",
                   invalid=tuple(invalid))

    @classmethod
    def of(cls, allow: Iterable[str] = (), ask: Iterable[str] = (), deny: Iterable[str] = (),
           additional_directories: Iterable[str] = (), default_mode: str = "default") -> PermissionRules:
        """From rule texts (``ValueError`` for an invalid one)."""
        return cls(allow=tuple(Rule.parse(t) for t in allow), ask=tuple(Rule.parse(t) for t in ask),
                   deny=tuple(Rule.parse(t) for t in deny), additional_directories=tuple(additional_directories),
                   default_mode=default_mode)


@attrs.frozen
class Decision:
    """What to do with a tool call: ``behavior`` ``allow``/``ask``/``deny``, why, and the rule that decided."""

    behavior: Behavior
    reason: str
    rule: str | None = None


# --------------------------------------------------------------------------- deciding


def _resolve(key: str, cwd: str, home: str) -> str:
    path = key or "."
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    elif path.startswith("~"):
        path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(cwd, path)
    normal = os.path.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal


def _path_forms(path: str) -> tuple[str, ...]:
    """The path as written and with symlinks resolved (one form when they agree)."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return (path,)
    return (path,) if real == path else (path, real)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class _Call:
    """One tool call as the rules see it."""

    def __init__(self, tool: PermissionSubject, input: dict[str, Any], cwd: str, home: str) -> None:
        self.name = tool.name
        self.cwd = cwd
        self.home = home
        try:
            self.key = tool.permission_key(input)
        except Exception:
            self.key = ""
        self.is_path = self.name in PATH_TOOLS
        self.is_bash = self.name in BASH_TOOLS
        self.path = _resolve(self.key, cwd, home) if self.is_path else ""
        self._forms: tuple[str, ...] | None = None
        self._restrictive: set[str] | None = None

    @property
    def forms(self) -> tuple[str, ...]:
        if self._forms is None:
            self._forms = _path_forms(self.path)
        return self._forms

    def restrictive_match(self, rule: Rule) -> bool:
        """Deny/ask: the rule matches any part (sub-command, path form) of the call."""
        if not rule.applies_to(self.name):
            return False
        if rule.specifier is None:
            return True
        if self.is_bash:
            if self._restrictive is None:
                self._restrictive = _restrictive_forms(self.key)
            return rule.matches_command(self.key) or any(rule.matches_command(c) for c in self._restrictive)
        if self.is_path:
            return any(rule.matches_path(p, self.cwd, self.home) for p in self.forms)
        return rule.matches_value(self.key)

    def allowed_by(self, rules: tuple[Rule, ...]) -> Rule | None:
        """Allow: the rules cover every part of the call (the first rule that took part is returned)."""
        rules = tuple(r for r in rules if r.applies_to(self.name))
        if not rules:
            return None
        if self.is_bash:
            for rule in rules:
                if rule.specifier is None or (not _is_pattern(rule.specifier) and rule.matches_command(self.key)):
                    return rule
            commands = split_commands(self.key)
            if not commands:
                return None
            first: Rule | None = None
            for command in commands:
                found = next((r for r in rules if r.matches_command(command)), None)
                if found is None:
                    return None
                first = first or found
            return first
        if self.is_path:
            return next((r for r in rules if all(r.matches_path(p, self.cwd, self.home) for p in self.forms)), None)
        return next((r for r in rules if r.matches_value(self.key)), None)

    def inside(self, roots: list[str]) -> bool:
        """Whether every form of the path is inside one of ``roots`` (each taken as written and resolved)."""
        expanded = [form for root in roots for form in _path_forms(root)]
        return all(any(_inside(p, root) for root in expanded) for p in self.forms)


def _is_pattern(spec: str) -> bool:
    return "*" in spec


def _mode(mode: str | None, rules: PermissionRules) -> str:
    mode = mode or rules.default_mode
    if mode == "bypassPermissions" and rules.disable_bypass:
        return "default"
    if mode in ("default", "acceptEdits", "plan", "dontAsk", "bypassPermissions"):
        return mode
    return "default"  # auto, delegate and anything unknown


def decide(tool: PermissionSubject, input: dict[str, Any], mode: str | None, rules: PermissionRules,
           cwd: Path | str, *, home: Path | str | None = None) -> Decision:
    """Whether ``tool`` may run with ``input`` in ``mode`` (``None``: the settings' defaultMode) for a run
    whose workspace is ``cwd`` (see the module docstring for the order)."""
    home_dir = os.path.normpath(os.fspath(home)) if home is not None else os.path.expanduser("~")
    workspace = os.path.normpath(os.path.abspath(os.fspath(cwd)))
    call = _Call(tool, input, workspace, home_dir)
    mode = _mode(mode, rules)

    for rule in rules.deny:
        if call.restrictive_match(rule):
            return Decision("deny", f"denied by the rule {rule.text} in permissions.deny", rule.text)
    if call.is_bash and any(r.applies_to(tool.name) for r in rules.deny):
        opaque = computed_programs(str(input.get("command") or ""))
        if opaque:
            return Decision("deny", f"the program of {opaque[0]!r} is computed when the command runs, so the "
                            "permissions.deny rules for Bash cannot be checked; name the program directly")
    if mode == "bypassPermissions":
        return Decision("allow", "bypassPermissions mode")
    if mode == "plan" and not tool.is_read_only:
        return Decision("deny", "plan mode: read-only (tools that change files or run commands are refused)")

    decision: Decision | None = None
    for rule in rules.ask:
        if call.restrictive_match(rule):
            decision = Decision("ask", f"the rule {rule.text} in permissions.ask requires approval", rule.text)
            break
    if decision is None:
        allowed = call.allowed_by(rules.allow)
        if allowed is not None:
            return Decision("allow", f"allowed by the rule {allowed.text} in permissions.allow", allowed.text)
        decision = _default(call, tool, mode, rules)
    if decision.behavior == "ask" and mode == "dontAsk":
        return Decision("deny", f"dontAsk mode: {decision.reason}", decision.rule)
    return decision


def _default(call: _Call, tool: PermissionSubject, mode: str, rules: PermissionRules) -> Decision:
    roots = [call.cwd, *(_resolve(d, call.cwd, call.home) for d in rules.additional_directories)]
    if call.name in READ_TOOLS:
        if call.inside(roots):
            return Decision("allow", "read-only tool inside the workspace")
        return Decision("ask", f"{call.name} outside the workspace ({call.path}) requires approval")
    if call.name in EDIT_TOOLS:
        inside = call.inside(roots)
        if mode == "acceptEdits" and inside:
            return Decision("allow", "acceptEdits mode: edits inside the workspace are accepted")
        where = "" if inside else f" outside the workspace ({call.path})"
        return Decision("ask", f"{call.name}{where} requires approval")
    if tool.is_read_only and not call.is_bash:
        return Decision("allow", "read-only tool")
    if call.is_bash:
        return Decision("ask", "shell commands require approval unless a permissions.allow rule matches")
    return Decision("ask", f"{call.name} requires approval")


# --------------------------------------------------------------------------- refusals


def _rule_path(path: str, cwd: str | None) -> str:
    """``path`` as a rule specifier: ``./rel`` inside the workspace, ``//abs`` outside."""
    if cwd is not None and _inside(path, cwd):
        return "." if path == cwd else "./" + os.path.relpath(path, cwd)
    return "/" + path


def _or(texts: list[str]) -> str:
    quoted = [f'"{t}"' for t in dict.fromkeys(texts)]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _how_to_allow(name: str, key: str, workspace: str | None) -> list[str]:
    """Ways to allow the call: rule suggestions, directories, modes (each a clause)."""
    if name in BASH_TOOLS:
        exact = f"Bash({_collapse(key)})"
        prefixes = list(dict.fromkeys(f"Bash({c.split(' ', 1)[0]}:*)" for c in split_commands(key)))
        clause = f'add "{exact}"'
        if len(prefixes) == 1 and prefixes[0] != exact:
            clause += f' or "{prefixes[0]}"'
        elif len(prefixes) > 1:
            clause += " or all of " + ", ".join(f'"{p}"' for p in prefixes)
        return [clause + " to permissions.allow", "run with permissionMode bypassPermissions"]
    if name in PATH_TOOLS:
        family = "Edit" if name in EDIT_TOOLS else "Read"
        if workspace is None:
            return [f'add "{family}({key or "."})" to permissions.allow', "run with permissionMode bypassPermissions"]
        path = _resolve(key, workspace, os.path.expanduser("~"))
        target = _rule_path(path, workspace)
        suggestions = [f"{family}({target})"]
        if name in ("Read", "Write", "Edit", "MultiEdit", "NotebookEdit", "NotebookRead"):
            suggestions.append(f"{family}({_rule_path(os.path.dirname(path), workspace)}/**)")
        clauses = [f"add {_or(suggestions)} to permissions.allow"]
        inside = _inside(path, workspace)
        if not inside:
            clauses.append("add its directory to permissions.additionalDirectories")
        modes = "acceptEdits or bypassPermissions" if family == "Edit" and inside else "bypassPermissions"
        return [*clauses, f"run with permissionMode {modes}"]
    return [f'add "{name}" to permissions.allow', "run with permissionMode bypassPermissions"]


def _sentence(clauses: list[str]) -> str:
    return clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + ", or " + clauses[-1]


def refusal_message(decision: Decision, tool: PermissionSubject, input: dict[str, Any], *,
                    cwd: Path | str | None = None) -> str:
    """What the model (and the stream) is told when a call is not allowed: what was refused, why, and
    how to allow it. Relative paths are shown as given unless ``cwd`` is passed."""
    name = tool.name
    try:
        key = tool.permission_key(input)
    except Exception:
        key = ""
    workspace = os.path.normpath(os.path.abspath(os.fspath(cwd))) if cwd is not None else None
    if name in PATH_TOOLS:
        shown = _resolve(key, workspace, os.path.expanduser("~")) if workspace is not None else (key or ".")
        subject = f"{name}({shown})"
    else:
        subject = f"{name}({_collapse(key)})" if key else name
    if decision.behavior == "allow":
        return f"{subject} is allowed ({decision.reason})"
    if decision.behavior == "deny":
        message = f"{subject} was refused: {decision.reason}."
        if decision.reason.startswith("dontAsk mode"):
            if decision.rule is not None:
                return message + f" To allow it, remove {decision.rule} from permissions.ask."
            return message + " To allow it, " + _sentence(_how_to_allow(name, key, workspace)) + "."
        if decision.rule is not None:
            return message + f" To allow it, remove {decision.rule} from permissions.deny."
        if decision.reason.startswith("plan mode"):
            return message + " Leave plan mode (permissionMode default or acceptEdits) to make changes."
        return message
    if decision.rule is not None:  # an ask rule: an allow rule would not override it
        return (f"{subject} needs approval ({decision.reason}) and this run cannot ask: remove {decision.rule} "
                "from permissions.ask, or run with permissionMode bypassPermissions.")
    return f"{subject} needs approval and this run cannot ask: " + _sentence(_how_to_allow(name, key, workspace)) + "."
