"""Built-in and user task templates."""

from __future__ import annotations

import json
import os
from pathlib import Path

from codebuddy.templates.catalog import BUILTIN, INTERVAL, TemplateCatalog, parse_user_templates


def test_builtins_are_complete() -> None:
    ids = [t.id for t in BUILTIN]
    assert len(ids) == len(set(ids)) >= 5
    for t in BUILTIN:
        assert t.title and t.description and t.icon and INTERVAL.fullmatch(t.interval)
        assert t.command.startswith(f"/loop {t.interval} ")


def test_without_a_user_file(tmp_path: Path) -> None:
    assert TemplateCatalog(tmp_path).templates() == (list(BUILTIN), [])


def test_user_templates_replace_and_extend(tmp_path: Path) -> None:
    path = tmp_path / "tasks" / "templates.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"templates": [
        {"id": "daily-summary", "title": "My summary", "command": "/loop 1d summarise", "interval": "1d"},
        {"id": "nightly", "title": "Nightly build", "command": "/loop 1d make", "interval": "1d", "icon": "🌙"},
        {"id": "nightly", "title": "Twice", "command": "/loop 1d x", "interval": "1d"},
        {"title": "no id", "command": "x"},
        "text",
        {"id": "bad", "title": "Bad", "command": "x", "interval": "daily"},
    ]}))
    templates, warnings = TemplateCatalog(tmp_path).templates()
    by_id = {t.id: t for t in templates}
    assert by_id["daily-summary"].title == "My summary" and by_id["daily-summary"].source == "user"
    assert [t.id for t in templates].count("daily-summary") == 1
    assert by_id["nightly"].icon == "🌙" and by_id["nightly"].title == "Nightly build"
    assert len(templates) == len(BUILTIN) + 1
    assert [w.split(": ", 1)[1] for w in warnings] == [
        "templates[3]: needs the string field(s) id",
        "templates[4]: not an object",
        "templates[5] (bad): interval must look like 30m, 2h, 1d or 1w; got 'daily'",
        "id 'nightly' appears more than once; the first is used",
    ]


def test_user_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    catalog = TemplateCatalog(tmp_path)
    path = tmp_path / "tasks" / "templates.json"
    path.parent.mkdir()
    path.write_text(json.dumps([{"id": "a", "title": "A", "command": "/loop 1h a", "interval": "1h"}]))
    assert catalog.templates()[0][-1].id == "a"
    path.write_text(json.dumps([{"id": "bb", "title": "B", "command": "/loop 1h b", "interval": "1h"}]))
    os.utime(path, ns=(1, 1))  # a different mtime whatever the clock's resolution
    assert catalog.templates()[0][-1].id == "bb"


def test_broken_user_file() -> None:
    assert parse_user_templates("[{") == ([], ["not valid JSON at line 1, column 3: "
                                                "Expecting property name enclosed in double quotes"])
    assert parse_user_templates('"x"') == ([], ['expected an array of templates (or {"templates": [...]})'])
    assert parse_user_templates("") == ([], [])
