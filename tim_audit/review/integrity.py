"""The dashboard's integrity strip: the chain verified in the background.

A verification runs in a thread of its own on a read-only connection, at
most one at a time, when a reviewer asks or when the last one is older than
``VERIFY_INTERVAL`` seconds. No page waits for it, and the callback writer
never does either: in WAL mode a reader does not block the writer.
"""

import dataclasses
import logging
import sqlite3
import threading
import time

from ..log import chain, checkpoints, db, derived, merkle, notary, signednote, timestamps

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Verification:
    """The outcome of one run: what it covered, or why it failed."""

    finished_at: int  # ms since the epoch
    seconds: float
    count: int | None  # events covered
    head: str | None
    quarantined: int | None
    failure: str | None
    unchecked: str | None = None  # what it could not check, and why


class Verifier:
    def __init__(
        self,
        path,
        key,
        interval,
        checkpoint_key=None,
        log_origin=None,
        directory=None,
        witnesses=(),
        timestamp_ca=None,
        verifier_key=None,
    ):
        self.path = path
        self.key = key
        self.interval = interval
        # The stored checkpoints are checked with the key outside the file,
        # and against the checkpoints kept in CHECKPOINT_DIR.
        self.checkpoint_key = checkpoint_key
        self.log_origin = log_origin
        self.directory = directory
        self.witnesses = [signednote.Verifier(witness["key"]) for witness in witnesses]
        self.timestamp_ca = timestamp_ca  # TIMESTAMP_CA's PEM bytes
        self.verifier_key = verifier_key  # CHECKPOINT_VERIFIER_KEY, without the private key
        self.last = None
        self._derived_failed = False
        self._lock = threading.Lock()
        self._thread = None

    @property
    def derived_failed(self):
        """Whether a verification found the name index or the counts unlike
        the chained rows, and none has passed since (a run that failed on
        something checked before them says nothing of them): until one
        passes, pages do not use them."""
        return self._derived_failed

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def start(self):
        """Start a verification unless one is running; True if started."""
        with self._lock:
            if self.running:
                return False
            self._thread = threading.Thread(target=self._run, name="tim-audit verify", daemon=True)
            self._thread.start()
            return True

    def start_if_due(self):
        last = self.last
        if self.interval and (
            last is None or time.time() * 1000 - last.finished_at >= self.interval * 1000
        ):
            self.start()

    def wait(self, timeout=None):
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _check_evidence(self, keys):
        """What merkle.verify checks against the trees it verified: the
        checkpoints, their cosignatures and their timestamps."""
        roots = timestamps.roots(self.timestamp_ca)

        # Read before the snapshot; the newest of each tree, as the notary
        # checks at start (verify reads them all), so a run stays bounded.
        kept = checkpoints.kept(self.directory, keys, self.log_origin, newest_only=True)

        def check(conn, trees):
            checkpoints.check(conn, keys, self.log_origin, kept, self.witnesses)
            timestamps.check_stored(conn, roots)

        return check

    def _run(self):
        """Record the outcome whatever happens: a run that died without one
        would leave the previous (perhaps green) result on show."""
        started = time.monotonic()
        heads, failure, unchecked = chain.Heads(None, None), None, None
        try:
            keys = notary.verifiers(self.checkpoint_key, self.log_origin, self.verifier_key)
            if keys is None:
                unchecked = (
                    "checkpoint signatures not checked: no key here (CHECKPOINT_KEY or"
                    " CHECKPOINT_VERIFIER_KEY)"
                )
            conn = db.connect(self.path, readonly=True)
            try:
                heads, _ = merkle.verify(conn, self.key, then=self._check_evidence(keys))
            finally:
                conn.close()
        except derived.Mismatch as exc:
            failure = str(exc)
            self._derived_failed = True
        except (chain.ChainBroken, notary.KeyRefused) as exc:
            failure = str(exc)
        except sqlite3.Error as exc:
            failure = f"the log could not be read: {exc}"
        except Exception as exc:
            logger.exception("verification stopped")
            failure = f"verification stopped: {type(exc).__name__}: {exc}"
        if failure is None:  # derived.check ran last, and passed
            self._derived_failed = False
        self.last = Verification(
            int(time.time() * 1000),
            time.monotonic() - started,
            heads.events,
            heads.event_head,
            heads.quarantined,
            failure,
            unchecked,
        )
