"""The matching events as CSV or JSON, for evidence.

Both are streamed in chunks of rows from one SELECT (one read snapshot), so
memory stays flat however large the log is, and both are built mostly in
SQL: timestamps, formula guards, member lists and JSON objects come out of
SQLite ready to write.
"""

import csv
import io

CHUNK_ROWS = 250

# A spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_STARTS = "('=', '+', '-', '@', char(9), char(13))"


def _guard(expression):
    """SQL: ``expression`` with a ' in front when it would start a formula."""
    return (
        f"CASE WHEN substr({expression}, 1, 1) IN {_FORMULA_STARTS}"
        f" THEN '''' || {expression} ELSE {expression} END"
    )


def _iso(expression):
    """SQL: milliseconds as UTC ISO 8601 with milliseconds, in integers only."""
    return (
        f"strftime('%Y-%m-%dT%H:%M:%S', {expression} / 1000, 'unixepoch')"
        f" || '.' || printf('%03d', {expression} % 1000) || 'Z'"
    )


_MEMBERS = (
    "(SELECT account FROM event_member WHERE event_id = e.id ORDER BY position)"
)

CSV_COLUMNS = (
    ("id", "e.id"),
    ("event_time", _iso("e.event_time")),
    ("event_time_ms", "e.event_time"),
    ("group_id", _guard("e.group_id")),
    ("type", _guard("e.type")),
    ("name", _guard("e.name")),
    ("owner", _guard("e.owner")),
    ("operator", _guard("e.operator")),
    ("member_count", "e.member_count"),
    # The guard sits inside, so the member list is built once per row.
    ("members", f"(SELECT {_guard('m')} FROM (SELECT group_concat(account, ';') AS m FROM {_MEMBERS}))"),
    ("user_data", _guard("e.user_data")),
    ("received_at", _iso("e.received_at")),
    ("sdkappid", _guard("e.sdkappid")),
    ("client_ip", _guard("e.client_ip")),
    ("opt_platform", _guard("e.opt_platform")),
    ("peer", _guard("e.peer")),
    ("hash", "e.hash"),
)

# Tencent's names for the callback's fields, ours for the rest.
JSON_OBJECT = (
    "json_object("
    "'id', e.id, 'CallbackCommand', e.command, 'GroupId', e.group_id,"
    " 'Type', e.type, 'Name', e.name, 'Operator_Account', e.operator,"
    " 'Owner_Account', e.owner,"
    f" 'MemberList', (SELECT json_group_array(json_object('Member_Account', account)) FROM {_MEMBERS}),"
    " 'UserDefinedDataList', json(e.user_data),"
    " 'EventTime', e.event_time,"
    f" 'ReceivedAt', {_iso('e.received_at')},"
    " 'SdkAppid', e.sdkappid, 'ClientIP', e.client_ip, 'OptPlatform', e.opt_platform,"
    " 'Peer', e.peer, 'Hash', e.hash, 'RawBody', CAST(e.raw AS TEXT))"
)


def _select(conn, columns, filters):
    selection = filters.select()
    return conn.execute(
        f"SELECT {columns} FROM {selection.source} WHERE {selection.where}"
        f" ORDER BY {selection.time} DESC, {selection.id} DESC",
        selection.params,
    )


def csv_chunks(conn, filters, counter):
    """UTF-8 CSV (with a BOM, so spreadsheets read CJK names right), a
    header row, then the rows; ``counter["rows"]`` counts what was sent."""
    cursor = _select(conn, ", ".join(sql for _, sql in CSV_COLUMNS), filters)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    buffer.write("\ufeff")
    writer.writerow(name for name, _ in CSV_COLUMNS)
    while rows := cursor.fetchmany(CHUNK_ROWS):
        writer.writerows(rows)
        counter["rows"] += len(rows)
        yield buffer.getvalue().encode("utf-8")
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def json_chunks(conn, filters, counter):
    """A JSON array with one object per event."""
    cursor = _select(conn, JSON_OBJECT, filters)
    separator = "[\n"
    while rows := cursor.fetchmany(CHUNK_ROWS):
        counter["rows"] += len(rows)
        yield (separator + ",\n".join(row[0] for row in rows)).encode("utf-8")
        separator = ",\n"
    yield b"[]\n" if separator == "[\n" else b"\n]\n"
