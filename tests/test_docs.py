"""The documentation holds together: README.md and docs/*.md link only to
files and headings that exist, the README points to every docs/ file, and
the facts other files also hold (the settings, CI's test command) agree."""

import re
import unicodedata
from pathlib import Path

import pytest

from tim_audit import config

ROOT = Path(__file__).parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^ {0,3}(```|~~~)")
# A code span: within one paragraph, so a stray backtick hides nothing past it.
CODE_SPAN = re.compile(r"(`+)((?:(?!\n[ \t]*\n).)+?)\1", re.S)
# [text](target) or ![alt](target), the target optionally followed by a title.
LINK = re.compile(r"(!?)\[((?:[^\]\\]|\\.)*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose(text):
    """The lines of ``text`` outside fenced code blocks, with their numbers."""
    inside = None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence and inside in (None, fence.group(1)):
            inside = None if inside else fence.group(1)
            continue
        if inside is None:
            yield number, line


def links(text):
    """(line number, is an image, target) of each link outside code; a
    link's text may go on over several lines."""
    lines = [""] * len(text.splitlines())
    for number, line in prose(text):
        lines[number - 1] = line
    kept = CODE_SPAN.sub(lambda span: "\n" * span.group(0).count("\n"), "\n".join(lines))
    for match in LINK.finditer(kept):
        yield kept.count("\n", 0, match.start()) + 1, match.group(1) == "!", match.group(3)


def slug(heading):
    """GitHub's anchor for a heading's text: its rendered text (code spans'
    contents as they are, links' text, no ``_emphasis_`` marks) lower-cased,
    every character but letters, digits, marks, ``-``, ``_`` and spaces
    dropped, each space a hyphen."""
    parts = CODE_SPAN.split(heading)
    text = ""
    for index in range(0, len(parts), 3):
        part = re.sub(r"!?\[((?:[^\]\\]|\\.)*)\]\([^)]*\)", r"\1", parts[index])
        text += re.sub(r"(?<!\w)_{1,3}(\S|\S.*?\S)_{1,3}(?!\w)", r"\1", part)
        if index + 2 < len(parts):
            text += parts[index + 2]
    text = re.sub(r"<[^>]+>", "", text)
    kept = (
        character
        for character in text.lower()
        if character in "-_ " or unicodedata.category(character)[0] in "LNM"
    )
    return "".join(kept).replace(" ", "-")


def anchors(text):
    """Every anchor GitHub makes for the headings of ``text``: a repeated
    slug gets ``-1``, ``-2``, … in the order the headings come."""
    made = set()
    for _, line in prose(text):
        heading = HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        anchor, count = base, 0
        while anchor in made:
            count += 1
            anchor = f"{base}-{count}"
        made.add(anchor)
    return made


def broken(document, images):
    """What in ``document`` does not resolve, among its images (``images``)
    or its links: a relative path naming no file, or an anchor naming no
    heading of its file. Links with a scheme (``https:``) are not checked."""
    found = []
    for number, image, target in links(document.read_text()):
        if image != images or not target or re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
            continue
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        where = f"{document.name}:{number}: {target}"
        if not file.exists():
            found.append(f"{where}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            found.append(f"{where}: no heading with this anchor")
    return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_resolves(document):
    assert broken(document, images=False) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_image_exists(document):
    assert broken(document, images=True) == []


def test_a_missing_file_a_missing_anchor_and_a_missing_image_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Its part\n")
    document = tmp_path / "page.md"
    document.write_text(
        "# Page\n\n## A part\n\n"
        "[fine](other.md#its-part) [fine](#a-part) [fine](https://example.com/#x)\n"
        "[gone](missing.md) [gone](other.md#no-part) [gone](#no-part)\n"
        "![fine](other.md) ![gone](missing.png)\n"
        "`[code](missing.md)`\n\n```\n[code](missing.md)\n```\n"
        "[a link over\ntwo lines](#nowhere)\n"
    )
    assert broken(document, images=False) == [
        "page.md:6: missing.md: no such file",
        "page.md:6: other.md#no-part: no heading with this anchor",
        "page.md:6: #no-part: no heading with this anchor",
        "page.md:13: #nowhere: no heading with this anchor",
    ]
    assert broken(document, images=True) == ["page.md:7: missing.png: no such file"]


@pytest.mark.parametrize(
    "heading, anchor",
    [
        ("What `/callback` answers", "what-callback-answers"),
        (
            "Trust: what the evidence proves, and against whom",
            "trust-what-the-evidence-proves-and-against-whom",
        ),
        ("An auditor, step by step", "an-auditor-step-by-step"),
        ("`q` + type (C++ & *Go*)", "q--type-c--go"),
        ("Key_rotation [v2](x.md)", "key_rotation-v2"),
        ("审计 日志", "审计-日志"),
        ("`__init__` and _emphasis_ in event_name", "__init__-and-emphasis-in-event_name"),
    ],
)
def test_a_heading_slug_is_githubs(heading, anchor):
    assert slug(heading) == anchor


def test_repeated_headings_get_numbered_anchors_and_code_blocks_have_none():
    text = "# A\n\n## Commands\n\n```sh\n# Commands\n```\n\n### Commands\n\n## Commands\n"
    assert anchors(text) == {"a", "commands", "commands-1", "commands-2"}


def test_the_readme_links_to_every_file_in_docs():
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for _, image, target in links((ROOT / "README.md").read_text())
        if not image
    }
    assert [path.name for path in DOCUMENTS[1:] if path.resolve() not in linked] == []


def quickstart():
    """The commands of the README's Quickstart section, one per code block."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Quickstart\n") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_the_quickstart_is_two_one_line_commands_serve_then_test():
    serve, test = quickstart()
    assert "\n" not in serve and serve.endswith("tim-audit serve")
    assert "\n" not in test and test.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    """.ci/run runs the README's test command, with pip quiet and the
    linter and formatter checks between its steps."""
    script = (ROOT / ".ci" / "run").read_text().replace("\\\n", " ")
    (line,) = [line for line in script.splitlines() if line.startswith("python3 -m venv")]
    steps = [" ".join(step.replace(" -q ", " ").split()) for step in line.split("&&")]
    readme = [" ".join(step.split()) for step in quickstart()[1].split("&&")]
    assert [step for step in steps if not step.startswith(".venv/bin/ruff ")] == readme


def test_the_configuration_table_lists_every_setting_and_only_those():
    text = (ROOT / "docs" / "operating.md").read_text()
    keys = re.findall(r"^\| `([A-Z_]+)` \|", text, re.M)
    assert len(keys) == len(set(keys))
    assert set(keys) == set(config.DEFAULTS) | {"DATABASE"}
