"""RFC 3161 timestamps of the log's checkpoints, from the timestamp
authority (TSA) at TIMESTAMP_URL: a token proves that a checkpoint existed
at a time, so a history signed later with the same key cannot claim to be
older than its token.

A Publisher (publisher.py), like a witness: one thread, woken after a
checkpoint commits, off the callback's path. It asks for a
token over the newest event checkpoint's note, as the log signed it,
checks the answer against the request and the CA certificates in
TIMESTAMP_CA, and only then stores it, append-only, beside the checkpoint.
A refused or unverifiable answer is logged and retried with backoff.
The ASN.1 and the CMS signature are rfc3161-client's (pyca's cryptography
underneath), not ours.
"""

from cryptography import x509
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from . import chain, checkpoints, publisher
from .publisher import Refused

QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"


def read_ca(config):
    """TIMESTAMP_CA's PEM bytes, read once at start (config.check made sure
    they hold certificates), or None when it is not set."""
    if config["TIMESTAMP_CA"] is None:
        return None
    with open(config["TIMESTAMP_CA"], "rb") as file:
        return file.read()


def roots(pem):
    """The CA certificates of ``pem``; None for None."""
    return None if pem is None else x509.load_pem_x509_certificates(pem)


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


class Timestamper(publisher.Publisher):
    what = "timestamps"

    def __init__(self, path, url, roots):
        super().__init__(path)
        self.url = url
        self.roots = roots  # TIMESTAMP_CA's certificates, read at start

    def publish(self, conn):
        """Get and store a token for the newest event checkpoint, unless it
        has one; returns the token stored, or None."""
        latest = checkpoints.latest(conn, "event")
        if latest is None or stored(conn, latest["id"]) is not None:
            return None
        note = chain.as_bytes(latest["note"])
        request = TimestampRequestBuilder().data(note).hash_algorithm(HashAlgorithm.SHA256).build()
        status, _, token = publisher.post(
            self.url, request.as_bytes(), {"Content-Type": QUERY_TYPE}
        )
        if status != 200:
            raise Refused(f"the TSA answered {status}")
        try:
            response = decode_timestamp_response(token)
            _verify(VerifierBuilder.from_request(request), response, note, self.roots)
        except (ValueError, VerificationError) as exc:
            raise Refused(f"the TSA's answer does not verify: {exc}") from None
        conn.execute(
            "INSERT OR IGNORE INTO timestamp (checkpoint_id, stamped_at, token) VALUES (?, ?, ?)",
            (latest["id"], int(response.tst_info.gen_time.timestamp()), token),
        )
        return token


def stored(conn, checkpoint_id):
    """The token stored for a checkpoint (a DER TimeStampResp), or None."""
    row = conn.execute(
        "SELECT token FROM timestamp WHERE checkpoint_id = ? ORDER BY id LIMIT 1",
        (checkpoint_id,),
    ).fetchone()
    return None if row is None else chain.as_bytes(row[0])


def from_config(config, pem):
    """The timestamper of TIMESTAMP_URL, for the notary; none without it."""
    if config["TIMESTAMP_URL"] is None:
        return []
    return [Timestamper(config["DATABASE"], config["TIMESTAMP_URL"], roots(pem))]


TIMESTAMP_TYPES = {"checkpoint_id": "INTEGER", "stamped_at": "INTEGER", "token": "BLOB"}


def check_stored(conn, certificates):
    """Check every stored token: of its columns' types and of a stored
    event checkpoint; with the CA ``certificates`` (from TIMESTAMP_CA,
    outside the file; None checks no more), over that checkpoint's note and
    made at the time its row records. ChainBroken names the first that
    does not verify."""
    with chain.tolerant_text(conn):
        rows = conn.execute(
            "SELECT timestamp.id, timestamp.checkpoint_id, timestamp.stamped_at,"
            " timestamp.token, checkpoint.tree, checkpoint.size, checkpoint.note"
            " FROM timestamp LEFT JOIN checkpoint ON checkpoint.id = timestamp.checkpoint_id"
            " ORDER BY timestamp.id"
        ).fetchall()
    for row in rows:
        checkpoints.check_attached(
            "timestamp", row["id"], tuple(row)[1:4], TIMESTAMP_TYPES, row["tree"]
        )
        if certificates is None:
            continue
        try:
            made = check(row["token"], chain.as_bytes(row["note"]), certificates)
        except Refused as exc:
            raise checkpoints.Contradicted(
                row["size"], f"its timestamp does not verify with TIMESTAMP_CA: {exc}"
            ) from None
        if int(made.timestamp()) != row["stamped_at"]:
            raise chain.ChainBroken(
                "timestamp",
                row["id"],
                f"stamped_at is {row['stamped_at']}, but its token was made at {int(made.timestamp())}",
            )
