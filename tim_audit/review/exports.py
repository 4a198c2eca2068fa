"""The matching events, or quarantined deliveries, as CSV or JSON, for evidence.

Each is streamed in chunks, so memory stays flat however large the log is.
A chunk is a statement of its own, read to its end before it is handed
over: a download that stalls then holds no read snapshot, which would keep
every checkpoint from resetting the WAL for as long as it stalls. Chunks
follow one another with a keyset cursor, as the list pages do, over the rows
that were there when the export began (the log only grows, with ids in
order), so rows that arrive meanwhile are left out and none is sent twice.
Events are built mostly in SQL:
timestamps, formula guards and JSON objects come out of SQLite ready to
write. Member lists are read per chunk with an ORDER BY of their own, the
one order SQLite promises (an ORDER BY in a subquery feeding group_concat or
json_group_array is not; ``group_concat(... ORDER BY)`` needs SQLite 3.44).
"""

import base64
import csv
import dataclasses
import io
import itertools
import json
import operator

from ..ingest import schemas
from ..log import chain
from . import queries
from .cells import blob, csv_cell, guarded, sql_csv_cell, sql_iso, sql_json_number, sql_stored

CHUNK_ROWS = 250
# A chunk holds rows of at most this many bytes in all (as estimated); a
# larger row goes alone. One event can take ~700 KB and a quarantined body
# is written several times over, so a chunk of rows alone would not bound it.
CHUNK_BYTES = 1024 * 1024

CSV_HEADER = (
    "id",
    "event_time",
    "event_time_ms",
    "group_id",
    "type",
    "name",
    "owner",
    "operator",
    "member_count",
    "members",
    "user_data",
    "received_at",
    "sdkappid",
    "client_ip",
    "opt_platform",
    "peer",
    "hash",
)
# SQLite builds each row's runs of cells: a few string operations, where
# csv.writer would take a Python object per cell. Between the runs go the
# two numbers, which Python writes (csv_cell), and the members, which are
# read per chunk.
_CSV_ROW = ", ".join(
    [
        f"e.id || ',' || {sql_iso('e.event_time', otherwise=sql_csv_cell('e.event_time'))}",
        "e.event_time",
        " || ',' || ".join(
            sql_csv_cell(f"e.{name}") for name in ("group_id", "type", "name", "owner", "operator")
        ),
        "e.member_count",
        " || ',' || ".join(
            [
                sql_csv_cell("e.user_data"),
                sql_iso("e.received_at", otherwise=sql_csv_cell("e.received_at")),
                *(
                    sql_csv_cell(f"e.{name}")
                    for name in ("sdkappid", "client_ip", "opt_platform", "peer", "hash")
                ),
            ]
        ),
    ]
)


# Tencent's names for the callback's fields, ours for the rest; MemberList
# goes between the two halves.
_JSON_HEAD = (
    "json_object("
    f"'id', e.id, 'CallbackCommand', {sql_stored('e.command')}, 'GroupId', {sql_stored('e.group_id')},"
    f" 'Type', {sql_stored('e.type')}, 'Name', {sql_stored('e.name')},"
    f" 'Operator_Account', {sql_stored('e.operator')}, 'Owner_Account', {sql_stored('e.owner')})"
)
# UserDefinedDataList is stored as JSON text; anything else (tampering) is
# written as a value of its own.
_JSON_TAIL = (
    "json_object("
    "'UserDefinedDataList', CASE WHEN typeof(e.user_data) = 'text' AND json_valid(e.user_data)"
    f" THEN json(e.user_data) ELSE {sql_stored('e.user_data')} END,"
    f" 'EventTime', {sql_json_number('e.event_time')},"
    f" 'ReceivedAt', {sql_iso('e.received_at')},"
    f" 'SdkAppid', {sql_stored('e.sdkappid')}, 'ClientIP', {sql_stored('e.client_ip')},"
    f" 'OptPlatform', {sql_stored('e.opt_platform')}, 'Peer', {sql_stored('e.peer')},"
    f" 'Hash', {sql_stored('e.hash')}, 'RawBody', CAST(e.raw AS TEXT))"
)


# An event's size as a chunk counts it, from what dominates its JSON
# document: the raw body (SQLite reads a BLOB's length without the BLOB),
# the user data in UTF-8 bytes, and the members, which are rows of their
# own, each written as {"Member_Account":"<account>"} and a comma.
MEMBER_BYTES = len('{"Member_Account":""},') + schemas.MAX_ACCOUNT
_EVENT_SIZE = (
    "ifnull(length(e.raw), 0) + ifnull(length(CAST(e.user_data AS BLOB)), 0)"
    f" + ifnull(e.member_count * {MEMBER_BYTES}, 0)"
)


def _chunks(conn, columns, filters):
    """The matching events, CHUNK_ROWS at a time, or fewer when their sizes
    (_EVENT_SIZE) add up to more than CHUNK_BYTES, each row led by its id and
    ended by its sort time; plain tuples, which cost a third less time than
    sqlite3.Row. The sizes are read first, in the same order. The unary +
    keeps SQLite from reading the id range instead of the index that gives
    the order."""
    head, _ = queries.head(conn)
    selection = filters.select()
    selection = dataclasses.replace(
        selection,
        where=f"{selection.where} AND +{selection.id} <= ?",
        params=[*selection.params, head],
    )
    order = f" ORDER BY {selection.time} DESC, {selection.id} DESC LIMIT ?"
    cursor = conn.cursor()
    cursor.row_factory = None
    chunk = selection
    while sizes := [
        size
        for (size,) in cursor.execute(
            f"SELECT {_EVENT_SIZE} FROM {selection.source} WHERE {chunk.where}{order}",
            [*chunk.params, CHUNK_ROWS],
        )
    ]:
        while sizes:  # the CHUNK_ROWS sizes read, cut into chunks without reading them again
            rows = cursor.execute(
                f"SELECT e.id, {columns}, {selection.time} FROM {selection.source}"
                f" WHERE {chunk.where}{order}",
                [*chunk.params, _fitting(sizes)],
            ).fetchall()
            if not rows:
                return
            yield rows
            chunk = selection.past(rows[-1][-1], rows[-1][0])
            sizes = sizes[len(rows) :]


def _fitting(sizes):
    """How many of ``sizes``, from the first, add up to CHUNK_BYTES at most:
    at least one, as a larger row goes alone."""
    total = 0
    for count, size in enumerate(sizes):
        total += size
        if total > CHUNK_BYTES:
            return max(count, 1)
    return len(sizes)


def _members(conn, rows, member, separator):
    """Event id -> the initial members of the events in ``rows``, each as
    the SQL ``member`` (of ``account``), joined with ``separator`` in
    MemberList order; events without members are left out. One query per
    chunk."""
    cursor = conn.cursor()
    cursor.row_factory = None
    found = cursor.execute(
        f"SELECT event_id, {member} FROM event_member"
        f" WHERE event_id IN ({', '.join('?' * len(rows))}) ORDER BY event_id, position",
        [row[0] for row in rows],
    )
    return {
        event_id: separator.join(map(_SECOND, group))
        for event_id, group in itertools.groupby(found, _FIRST)
    }


_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)


def csv_chunks(conn, filters, counter):
    """UTF-8 CSV (with a BOM, so spreadsheets read CJK names right), a
    header row, then the rows; ``counter["rows"]`` counts what was sent.
    The header goes with the first rows, read (as the export's extent is
    fixed) before anything is sent."""
    header = "\ufeff" + ",".join(CSV_HEADER) + "\r\n"
    for rows in _chunks(conn, _CSV_ROW, filters):
        members = _members(conn, rows, sql_stored("account"), ";")
        counter["rows"] += len(rows)
        yield (
            header
            + "".join(
                f"{first},{csv_cell(event_time)},{accounts},{csv_cell(member_count)},"
                f"{csv_cell(members.get(event_id, ''))},{rest}\r\n"
                for event_id, first, event_time, accounts, member_count, rest, _ in rows
            )
        ).encode("utf-8")
        header = ""
    if header:
        yield header.encode("utf-8")


def json_chunks(conn, filters, counter):
    """A JSON array with one object per event."""
    return _json_array(
        ([document for _, document in objects] for objects in json_objects(conn, filters)), counter
    )


def _json_array(chunks, counter):
    """Chunks (lists) of JSON documents as one JSON array, streamed a chunk
    at a time; ``counter["rows"]`` counts what was sent."""
    separator = "[\n"
    for documents in chunks:
        counter["rows"] += len(documents)
        yield (separator + ",\n".join(documents)).encode("utf-8")
        separator = ",\n"
    yield b"[]\n" if separator == "[\n" else b"\n]\n"


def json_objects(conn, filters):
    """The matching events as (id, JSON object), a chunk at a time, in
    export order: for the JSON export and the evidence archive."""
    for rows in _chunks(conn, f"{_JSON_HEAD}, {_JSON_TAIL}", filters):
        members = _members(
            conn, rows, f"json_quote({sql_stored('account')})", '},{"Member_Account":'
        )
        yield [
            (event_id, f'{head[:-1]},"MemberList":{_member_list(members.get(event_id))},{tail[1:]}')
            for event_id, head, tail, _ in rows
        ]


def _member_list(joined):
    return "[]" if joined is None else f'[{{"Member_Account":{joined}}}]'


# The quarantine is small, so its rows are written in Python. A refused body
# need not be UTF-8: "body" is it as text (undecodable bytes as U+FFFD), and
# "body_base64" its exact bytes; both empty when it was too large to keep.
QUARANTINE_CSV_HEADER = (
    "id",
    "received_at",
    "error_code",
    "reason",
    "command",
    "query",
    "peer",
    "content_length",
    "body",
    "body_base64",
    "hash",
)


def _quarantined(conn, filters):
    """The matching quarantined deliveries, newest first, of those there
    when the export began, like _chunks: CHUNK_ROWS at a time, or fewer when
    their bodies add up to more than CHUNK_BYTES. The lengths are read
    first, which SQLite reads without the bodies."""
    where, params = filters.where()
    cursor = conn.cursor()
    cursor.row_factory = None
    below = cursor.execute("SELECT ifnull(max(id), 0) + 1 FROM quarantine").fetchone()[0]
    while sizes := cursor.execute(
        f"SELECT id, ifnull(length(raw), 0) FROM quarantine WHERE {where} AND id < ?"
        f" ORDER BY id DESC LIMIT {CHUNK_ROWS}",
        [*params, below],
    ).fetchall():
        last = sizes[_fitting([size for _, size in sizes]) - 1][0]
        yield cursor.execute(
            f"SELECT id, {sql_iso('received_at')}, error_code, reason, command, query, peer,"
            f" content_length, raw, hash FROM quarantine WHERE {where} AND id < ? AND id >= ?"
            " ORDER BY id DESC",
            [*params, below, last],
        ).fetchall()
        below = last


def _bodies(raw):
    if raw is None:
        return None, None
    raw = chain.as_bytes(raw)
    return raw.decode("utf-8", "replace"), base64.b64encode(raw).decode("ascii")


def quarantine_csv_chunks(conn, filters, counter):
    """The quarantined deliveries as CSV, newest first, like csv_chunks."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    buffer.write("\ufeff")
    writer.writerow(QUARANTINE_CSV_HEADER)
    for rows in _quarantined(conn, filters):
        for *fields, raw, digest in rows:
            writer.writerow([guarded(value) for value in (*fields, *_bodies(raw), digest)])
        counter["rows"] += len(rows)
        yield buffer.getvalue().encode("utf-8")
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def quarantine_json_chunks(conn, filters, counter):
    """The quarantined deliveries as a JSON array, newest first."""
    return _json_array(
        ([_quarantine_object(row) for row in rows] for rows in _quarantined(conn, filters)), counter
    )


def _quarantine_object(row):
    row_id, received_at, error_code, reason, command, query, peer, length, raw, digest = row
    body, body_base64 = _bodies(raw)
    return json.dumps(
        {
            "id": row_id,
            "ReceivedAt": received_at,
            "ErrorCode": error_code,
            "Reason": reason,
            "CallbackCommand": command,
            "Query": query,
            "Peer": peer,
            "ContentLength": length,
            "Body": body,
            "BodyBase64": body_base64,
            "Hash": digest,
        },
        ensure_ascii=False,
        default=blob,
    )
