"""How one stored value is written in an export, whatever a tampered row
holds there: as a CSV cell (csv_cell, the one definition; guarded, what
csv.writer is handed) and, for the events export, which SQLite builds for
speed, as SQL that writes the same (sql_*)."""

# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# What makes csv.writer quote a cell (QUOTE_MINIMAL, lines ended by \r\n).
CSV_QUOTED = ('"', ",", "\r", "\n")


# Only a tampered row of a log made before STRICT tables holds a BLOB where
# text or a number belongs. JSON cannot hold one, so both formats write it as
# stored, as the SQL literal X'...' that verify names it by.
def _blob_literal(expression):
    return f"'X''' || hex({expression}) || ''''"


def sql_stored(expression):
    """SQL: ``expression``, a BLOB as X'...'."""
    return (
        f"CASE WHEN typeof({expression}) = 'blob' THEN {_blob_literal(expression)}"
        f" ELSE {expression} END"
    )


# 0001-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z, in ms: the times
# ISO 8601 (and Python's datetime) can write.
FIRST_ISO_MS, LAST_ISO_MS = -62135596800000, 253402300799999


def sql_iso(expression, otherwise=None):
    """SQL: milliseconds as UTC ISO 8601 with milliseconds, in integers only
    (floored, so -1 is 23:59:59.999 the day before); a value outside the
    years 1 to 9999, which only a tampered row can hold, is written as stored,
    or as the SQL ``otherwise`` makes it."""
    millis = f"(({expression}) % 1000 + 1000) % 1000"
    return (
        f"CASE WHEN {expression} BETWEEN {FIRST_ISO_MS} AND {LAST_ISO_MS}"
        f" THEN strftime('%Y-%m-%dT%H:%M:%S', (({expression}) - {millis}) / 1000, 'unixepoch')"
        f" || '.' || printf('%03d', {millis}) || 'Z'"
        f" ELSE {otherwise or f'CAST({sql_stored(expression)} AS TEXT)'} END"
    )


def csv_cell(value):
    """A stored value as one CSV cell, as every CSV export writes it: NULL as
    nothing, a number as csv.writer writes it (a REAL whole), text or a BLOB
    as guarded has it, in quotes when csv.writer would quote it."""
    if type(value) is int:
        return str(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    text = guarded(value)
    if any(character in text for character in CSV_QUOTED):
        return '"' + text.replace('"', '""') + '"'
    return text


def guarded(value):
    """``value`` fit for a spreadsheet: text that would start a formula with
    a ' in front, a BLOB as X'...'; csv.writer then writes csv_cell(value)."""
    if isinstance(value, bytes):
        return blob(value)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def blob(value):
    """A BLOB where text or a number belongs, as sql_stored writes it."""
    if not isinstance(value, bytes):
        raise TypeError(f"{type(value).__name__} is not a stored value")
    return f"X'{value.hex().upper()}'"


_NEEDS_QUOTES = " OR ".join(f"instr({{0}}, char({ord(c)}))" for c in CSV_QUOTED)
_FORMULA_CODES = ", ".join(str(ord(start)) for start in FORMULA_STARTS)


def sql_csv_cell(expression):
    """SQL: csv_cell of ``expression``, built by SQLite, which saves a Python
    object per cell (tests/test_cells.py checks that the two agree on
    every kind of value). But a REAL, which SQLite writes in 15 digits: the
    numeric columns are left to csv_cell, and a REAL reaches this only as
    an event_time or received_at out of the ISO range, in a tampered log
    made before STRICT tables."""
    prefix = f"iif(unicode({expression}) IN ({_FORMULA_CODES}), '''', '')"
    return (
        f"CASE typeof({expression})"
        f" WHEN 'text' THEN CASE WHEN {_NEEDS_QUOTES.format(expression)}"
        f""" THEN '"' || {prefix} || replace({expression}, '"', '""') || '"'"""
        f" ELSE {prefix} || {expression} END"
        f" WHEN 'null' THEN '' WHEN 'blob' THEN {_blob_literal(expression)}"
        f" ELSE {expression} END"
    )


def sql_json_number(expression):
    """SQL: a numeric column for json_object. A REAL (tampering) whole, in
    17 digits where json_object writes 15, and as a string when it is not
    finite, which JSON cannot hold; anything else as sql_stored writes it."""
    digits = f"printf('%!.17g', {expression})"
    return (
        f"CASE WHEN typeof({expression}) <> 'real' THEN {sql_stored(expression)}"
        f" WHEN abs({expression}) <= 1.7976931348623157e308 THEN json({digits})"
        f" ELSE {digits} END"
    )
