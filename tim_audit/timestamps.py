"""RFC 3161 timestamps of the log's checkpoints, from the timestamp
authority (TSA) at TIMESTAMP_URL: a token proves that a checkpoint existed
at a time, so a history signed later with the same key cannot claim to be
older than its token.

A publisher of the notary's (checkpoints.py), like a witness: one thread,
woken after a checkpoint commits, off the callback's path. It asks for a
token over the newest event checkpoint's note, as the log signed it,
checks the answer against the request and the CA certificates in
TIMESTAMP_CA, and only then stores it, append-only, beside the checkpoint.
A refused or unverifiable answer is logged and retried with backoff.
The ASN.1 and the CMS signature are rfc3161-client's (pyca's cryptography
underneath), not ours.
"""

import logging
import sqlite3
import threading
import urllib.error
import urllib.request

from cryptography import x509
from flask import Blueprint, Response
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from . import checkpoints, db
from .db import get_db

logger = logging.getLogger(__name__)

bp = Blueprint("timestamps", __name__)

TIMEOUT = 10.0  # seconds for one request to the TSA
MAX_ANSWER = 64 * 1024  # bytes read of its answer
FIRST_RETRY, LAST_RETRY = 1.0, 300.0  # seconds: the backoff doubles between them
QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"


class Refused(Exception):
    """No token was stored: why."""


def read_roots(path):
    """The CA certificates of the PEM file at ``path``."""
    with open(path, "rb") as file:
        return x509.load_pem_x509_certificates(file.read())


def check(token, note, roots):
    """Check a stored token (a DER TimeStampResp) over ``note`` against
    ``roots``; its time (a datetime), or Refused."""
    try:
        response = decode_timestamp_response(token)
        _verify(VerifierBuilder(), response, note, roots)
    except (ValueError, VerificationError) as exc:
        raise Refused(str(exc)) from None
    return response.tst_info.gen_time


def _verify(builder, response, note, roots):
    if response.status != PKIStatus.GRANTED:
        raise Refused(f"the TSA refused: status {response.status} {response.status_string}")
    for root in roots:
        builder = builder.add_root_certificate(root)
    builder.build().verify_message(response, note)


class Timestamper:
    def __init__(self, path, url, ca_path):
        self.path = path
        self.url = url
        self.ca_path = ca_path
        self.failures = 0  # in a row; with the last one's reason in .error
        self.error = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = None

    def start(self):
        self._stopping.clear()
        self._wake.set()
        self._thread = threading.Thread(target=self._run, name="tim-audit timestamps", daemon=True)
        self._thread.start()

    def notify(self):
        self._wake.set()

    def close(self):
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT + 5)
            self._thread = None

    def _run(self):
        conn = None
        while True:
            self._wake.wait()
            if self._stopping.is_set():
                break
            self._wake.clear()
            try:
                conn = conn or db.connect(self.path, timeout=checkpoints.SIGN_TIMEOUT)
                self.stamp(conn)
                self.failures, self.error = 0, None
            except (Refused, OSError, ValueError, sqlite3.Error) as exc:
                self.failures += 1
                self.error = str(exc)
                delay = min(LAST_RETRY, FIRST_RETRY * 2 ** (self.failures - 1))
                logger.warning(
                    "no timestamp from %s (%d in a row; next try in %.0f s): %s",
                    self.url,
                    self.failures,
                    delay,
                    exc,
                )
                if self._stopping.wait(delay):
                    break
                self._wake.set()
        if conn is not None:
            conn.close()

    def stamp(self, conn):
        """Get and store a token for the newest event checkpoint, unless it
        has one; returns the token stored, or None."""
        latest = checkpoints.latest(conn, "event")
        if latest is None or stored(conn, latest["id"]) is not None:
            return None
        note = bytes(latest["note"])
        request = TimestampRequestBuilder().data(note).hash_algorithm(HashAlgorithm.SHA256).build()
        token = self._post(request.as_bytes())
        try:
            response = decode_timestamp_response(token)
            _verify(VerifierBuilder.from_request(request), response, note, read_roots(self.ca_path))
        except (ValueError, VerificationError) as exc:
            raise Refused(f"the TSA's answer does not verify: {exc}") from None
        conn.execute(
            "INSERT INTO timestamp (checkpoint_id, stamped_at, token) VALUES (?, ?, ?)",
            (latest["id"], int(response.tst_info.gen_time.timestamp()), token),
        )
        return token

    def _post(self, query):
        request = urllib.request.Request(  # noqa: S310 (http(s), checked in config)
            self.url, data=query, method="POST", headers={"Content-Type": QUERY_TYPE}
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
                return response.read(MAX_ANSWER)
        except urllib.error.HTTPError as exc:
            with exc:
                raise Refused(f"the TSA answered {exc.code} {exc.reason}") from None


def stored(conn, checkpoint_id):
    """The token stored for a checkpoint (a DER TimeStampResp), or None."""
    row = conn.execute(
        "SELECT token FROM timestamp WHERE checkpoint_id = ? ORDER BY id LIMIT 1",
        (checkpoint_id,),
    ).fetchone()
    return None if row is None else bytes(row[0])


def from_config(config):
    """The timestamper of TIMESTAMP_URL, for the notary; none without it."""
    if config["TIMESTAMP_URL"] is None:
        return []
    return [Timestamper(config["DATABASE"], config["TIMESTAMP_URL"], config["TIMESTAMP_CA"])]


def check_stored(conn, roots):
    """Check every stored token against its checkpoint's note and the CA
    certificates ``roots`` (from TIMESTAMP_CA, outside the file); None
    checks nothing. Contradicted names the first that does not verify."""
    if roots is None:
        return
    for row in conn.execute(
        "SELECT checkpoint.size, checkpoint.note, timestamp.token FROM timestamp"
        " JOIN checkpoint ON checkpoint.id = timestamp.checkpoint_id ORDER BY timestamp.id"
    ):
        try:
            check(bytes(row["token"]), bytes(row["note"]), roots)
        except Refused as exc:
            raise checkpoints.Contradicted(
                row["size"], f"its timestamp does not verify with TIMESTAMP_CA: {exc}"
            ) from None


@bp.get("/checkpoint.tsr")
def latest_token():
    """The newest event checkpoint's token, on the ingest server beside
    GET /checkpoint: ``openssl ts -verify -data checkpoint -in checkpoint.tsr``
    checks it, with the checkpoint as the log signed it."""
    conn = get_db()
    try:
        row = conn.execute(
            "SELECT token FROM timestamp JOIN checkpoint ON checkpoint.id = checkpoint_id"
            " WHERE checkpoint.tree = 'event' ORDER BY timestamp.id DESC LIMIT 1"
        ).fetchone()
    except sqlite3.OperationalError:  # a log this version's writer has not opened yet
        row = None
    if row is None:
        return Response("No checkpoint has been timestamped yet.\n", 404, mimetype="text/plain")
    return Response(bytes(row[0]), mimetype=REPLY_TYPE)


def configured_roots(config):
    """TIMESTAMP_CA's certificates, or None when it is not set."""
    return None if config["TIMESTAMP_CA"] is None else read_roots(config["TIMESTAMP_CA"])
