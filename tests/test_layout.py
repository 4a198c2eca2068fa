"""The folders' rules, as each package's docstring states them: which part
may import which. Read from the source, so a new import that breaks a
rule fails here rather than in a review."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "tim_audit"

# What an auditor reads to know what is proved: standard library and
# cryptography only, so nothing in them can touch a file or the network.
PURE = [
    "log/chain.py",
    "log/tlog.py",
    "log/signednote.py",
    "log/tlogproof.py",
    "ingest/signature.py",
]
PURE_ALLOWED = {
    "base64",
    "binascii",
    "contextlib",
    "cryptography",
    "hashlib",
    "hmac",
    "re",
    "time",
    "typing",
    "tim_audit.log.signednote",
    "tim_audit.log.tlog",
}


def imports(path):
    """The absolute names of the modules ``path`` imports, relative ones
    resolved against its package."""
    package = ["tim_audit", *path.relative_to(PACKAGE).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def modules(folder):
    return sorted((PACKAGE / folder).glob("*.py"))


def test_imports_resolves_relative_names():
    names = imports(PACKAGE / "review" / "history.py")
    assert "tim_audit.log.verification" in names
    assert "tim_audit.review.queries" in names


@pytest.mark.parametrize("path", modules("review"), ids=lambda p: p.name)
def test_review_never_imports_the_writer_or_the_callback(path):
    forbidden = ("tim_audit.log.writer", "tim_audit.log.startup", "tim_audit.ingest.callback")
    assert {name for name in imports(path) if name.startswith(forbidden)} == set()


@pytest.mark.parametrize("path", modules("ingest"), ids=lambda p: p.name)
def test_ingest_never_imports_review(path):
    assert {name for name in imports(path) if name.startswith("tim_audit.review")} == set()


@pytest.mark.parametrize("path", modules("log"), ids=lambda p: p.name)
def test_the_log_imports_neither_server_part(path):
    forbidden = ("tim_audit.ingest", "tim_audit.review")
    assert {name for name in imports(path) if name.startswith(forbidden)} == set()


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_io(name):
    outside = {
        module
        for module in imports(PACKAGE / name)
        if module not in PURE_ALLOWED
        and module.split(".")[0] not in PURE_ALLOWED
        and not module.startswith(tuple(f"{allowed}." for allowed in PURE_ALLOWED))
    }
    assert outside == set()
