"""The log's witnesses (C2SP tlog-witness v1.0.0): each witness in WITNESSES
is sent every new checkpoint of the event tree with a consistency proof
from the size it last cosigned, and each cosignature it answers is checked
with its configured key and stored append-only beside the checkpoint.

One thread per witness, a publisher of the notary's (checkpoints.py): woken
after a checkpoint commits, on a connection of its own, never on a
callback's path. A witness that is down or refuses is retried with
backoff; a witness that answers 409 with the size it last cosigned is
resynced from that size.
"""

import logging
import sqlite3
import threading
import urllib.error
import urllib.request

from . import checkpoints, db, merkle, tlog

logger = logging.getLogger(__name__)

TIMEOUT = 10.0  # seconds for one request to a witness
MAX_ANSWER = 64 * 1024  # bytes read of a witness's answer
FIRST_RETRY, LAST_RETRY = 1.0, 300.0  # seconds: the backoff doubles between them
SIZE_TYPE = "text/x.tlog.size"  # a 409's body: the size the witness last cosigned


class Refused(Exception):
    """The witness did not cosign: why, as it said or as we found."""


class Witness:
    def __init__(self, path, url, key, directory=None):
        self.path = path
        self.url = url.rstrip("/") + "/add-checkpoint"
        self.verifier = tlog.Verifier(key)
        self.key = key
        self.directory = directory
        self.cosigned = None  # the size it last cosigned, once known
        self.failures = 0  # in a row; with the last one's reason in .error
        self.error = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = None

    @property
    def name(self):
        return self.verifier.name

    def start(self):
        self._stopping.clear()
        self._wake.set()  # catch up on what was signed while it was not running
        self._thread = threading.Thread(
            target=self._run, name=f"tim-audit witness {self.name}", daemon=True
        )
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
                self.submit(conn)
                self.failures, self.error = 0, None
            except (Refused, OSError, sqlite3.Error, tlog.TlogError) as exc:
                self.failures += 1
                self.error = str(exc)
                delay = min(LAST_RETRY, FIRST_RETRY * 2 ** (self.failures - 1))
                logger.warning(
                    "witness %s did not cosign (%d in a row; next try in %.0f s): %s",
                    self.name,
                    self.failures,
                    delay,
                    exc,
                )
                if self._stopping.wait(delay):
                    break
                self._wake.set()
        if conn is not None:
            conn.close()

    def submit(self, conn):
        """Send the latest event checkpoint unless this witness cosigned it;
        store its cosignature. Returns the line stored, or None."""
        latest = checkpoints.latest(conn, "event")
        if latest is None or _cosignature(conn, latest["id"], self.key) is not None:
            return None
        if self.cosigned is None:
            self.cosigned = _last_cosigned(conn, self.key)
        for _ in range(2):  # once more after a 409 that says where the witness is
            status, kind, answer = self._post(self._body(conn, latest))
            if status == 200:
                return self._store(conn, latest, answer)
            if status == 409 and kind == SIZE_TYPE:
                self.cosigned = tlog.parse_count(answer.decode("ascii", "replace").strip(), "size")
                continue
            raise Refused(f"{status} {answer[:200].decode('utf-8', 'replace').strip()}")
        raise Refused(f"409 again, at the size it said it was at ({self.cosigned})")

    def _body(self, conn, latest):
        old, size = self.cosigned, latest["size"]
        if old > size:
            raise Refused(
                f"it cosigned a tree of {old} leaves, more than the {size} this log has signed:"
                " it has seen another history of this log"
            )
        proof = []
        if 0 < old < size:
            proof = tlog.consistency_proof(old, size, merkle.reader(conn, "event"))
        return f"old {old}\n".encode() + tlog.format_hashes(proof) + b"\n" + bytes(latest["note"])

    def _post(self, body):
        request = urllib.request.Request(self.url, data=body, method="POST")  # noqa: S310 (http(s), checked in config)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 (http(s), checked in config)
                return (
                    response.status,
                    response.headers.get_content_type(),
                    response.read(MAX_ANSWER),
                )
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers.get_content_type(), exc.read(MAX_ANSWER)

    def _store(self, conn, latest, answer):
        """Keep the lines of the answer that verify with this witness's key."""
        text, _ = tlog.split_note(bytes(latest["note"]))
        message = text.encode("utf-8") + b"\n"
        lines = [line + b"\n" for line in answer.split(b"\n") if line]
        mine = []
        for line in lines:
            try:
                tlog.open_note(message + line, [self.verifier])
            except tlog.UnknownKey:
                continue
            mine.append(line)
        if not mine:
            raise Refused(f"its answer holds no cosignature by {self.key}")
        conn.execute(
            "INSERT INTO cosignature (checkpoint_id, witness, cosigned_at, line) VALUES (?, ?, ?, ?)",
            (latest["id"], self.key, tlog.signature_time(mine[0]), mine[0]),
        )
        self.cosigned = latest["size"]
        if self.directory is not None:
            checkpoints.ship(
                self.directory, "event", latest["size"], checkpoints.cosigned(conn, latest)
            )
        return mine[0]


def _cosignature(conn, checkpoint_id, key):
    return conn.execute(
        "SELECT line FROM cosignature WHERE checkpoint_id = ? AND witness = ?",
        (checkpoint_id, key),
    ).fetchone()


def _last_cosigned(conn, key):
    """The size of the newest checkpoint this witness cosigned, or 0: the
    event tree's checkpoints never shrink, so the newest is the largest."""
    return conn.execute(
        "SELECT coalesce((SELECT size FROM checkpoint WHERE id ="
        " (SELECT max(checkpoint_id) FROM cosignature WHERE witness = ?)), 0)",
        (key,),
    ).fetchone()[0]


def from_config(config):
    """The witnesses of WITNESSES, for the notary."""
    return [
        Witness(
            config["DATABASE"], witness["url"], witness["key"], directory=config["CHECKPOINT_DIR"]
        )
        for witness in config["WITNESSES"]
    ]


def status(conn, keys):
    """{witness key: the size of the newest checkpoint it cosigned}, for
    the strip: read from the log, so the review server sees it too."""
    return {key: _last_cosigned(conn, key) for key in keys}
