"""The log's witnesses (C2SP tlog-witness v1.0.0): each witness in WITNESSES
is sent every new checkpoint of the event tree with a consistency proof
from the size it last cosigned, and each cosignature it answers is checked
with its configured key and stored append-only beside the checkpoint.

A Publisher each (publisher.py). A witness that answers 409 with the size
it last cosigned is resynced from that size; one that has cosigned a larger
tree than this log has signed has seen another history of it, and is
refused and logged, never overwritten.
"""

from . import chain, checkpoints, merkle, publisher, signednote, tlog, tlogproof
from .publisher import Refused

SIZE_TYPE = "text/x.tlog.size"  # a 409's body: the size the witness last cosigned


class Witness(publisher.Publisher):
    def __init__(self, path, url, key, directory=None):
        super().__init__(path)
        self.url = url.rstrip("/") + "/add-checkpoint"
        self.verifier = signednote.Verifier(key)
        self.key = key
        self.directory = directory
        self.cosigned = None  # the size it last cosigned, as stored or as it said

    @property
    def name(self):
        return self.verifier.name

    @property
    def what(self):
        return f"witness {self.name}"

    def publish(self, conn):
        """Send the latest event checkpoint unless this witness cosigned it;
        store its cosignature. Returns the line stored, or None."""
        latest = checkpoints.latest(conn, "event")
        if latest is None or _cosignature(conn, latest["id"], self.key) is not None:
            return None
        if self.cosigned is None:
            self.cosigned = last_cosigned(conn, self.key)
        for _ in range(2):  # once more after a 409 that says where the witness is
            status, kind, answer = publisher.post(self.url, self._body(conn, latest))
            if status == 200:
                return self._store(conn, latest, answer)
            if status == 409 and (kind or "").partition(";")[0].strip() == SIZE_TYPE:
                text = answer.decode("ascii", "replace").strip()
                self.cosigned = signednote.parse_count(text, f"the size witness {self.name} gave")
                continue
            raise Refused(f"{status} {answer[:200].decode('utf-8', 'replace').strip()}")
        raise Refused(f"409 again, at the size it said it was at ({self.cosigned})")

    def _body(self, conn, latest):
        old, size = self.cosigned, latest["size"]
        if old > size:
            raise Refused(
                f"it cosigned a tree of {old} leaves, more than the {size} this log has signed:"
                " it has seen another history of this log (restored from a backup? begun again?)"
            )
        proof = []
        if 0 < old < size:
            proof = tlog.consistency_proof(old, size, merkle.reader(conn, "event"))
        return (
            f"old {old}\n".encode()
            + tlogproof.format_hashes(proof)
            + b"\n"
            + chain.as_bytes(latest["note"])
        )

    def _store(self, conn, latest, answer):
        """Keep the line of the answer that verifies with this witness's key."""
        text, _ = signednote.split_note(chain.as_bytes(latest["note"]))
        message = text.encode("utf-8") + b"\n"
        for line in answer.splitlines(keepends=True):
            try:
                signednote.open_note(message + line, [self.verifier])
            except tlog.TlogError:
                continue
            break
        else:
            raise Refused(f"its answer holds no cosignature by {self.key} that verifies")
        conn.execute(
            "INSERT OR IGNORE INTO cosignature (checkpoint_id, witness, cosigned_at, line)"
            " VALUES (?, ?, ?, ?)",
            (latest["id"], self.key, signednote.signature_time(line), line),
        )
        self.cosigned = latest["size"]
        if self.directory is not None:
            checkpoints.ship(
                self.directory, "event", latest["size"], checkpoints.cosigned(conn, latest)
            )
        return line


def _cosignature(conn, checkpoint_id, key):
    return conn.execute(
        "SELECT line FROM cosignature WHERE checkpoint_id = ? AND witness = ?",
        (checkpoint_id, key),
    ).fetchone()


def last_cosigned(conn, key):
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
