"""HTTP Basic authentication of reviewers against ``DASHBOARD_USERS``.

Browsers send the credentials with every request, and checking a scrypt
hash costs tens of milliseconds of CPU, so a password that checked out once
is remembered, as an HMAC under a key that lives only in this process. A
password spray is bounded three ways: one scrypt check runs at a time; a
sign-in that has waited HASHING_WAIT for its turn is answered 503 without
one, so a spray cannot keep every thread of the review server waiting; and
an address with LOGIN_FAILURES failures in the last minute is answered 429
without one. The failures of at most MAX_ADDRESSES addresses are kept.
"""

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque

from flask import current_app, g, render_template, request
from werkzeug.security import check_password_hash, generate_password_hash


FAILURE_WINDOW = 60  # seconds
HASHING_WAIT = 2.0  # seconds
# Checks run one at a time and scrypt's take ~0.1 s, so it takes far longer
# than FAILURE_WINDOW to fail from this many addresses: the least recent is
# only forgotten once its failures are too old to count anyway.
MAX_ADDRESSES = 10_000


class TooManyFailures(Exception):
    """This address failed to sign in LOGIN_FAILURES times in FAILURE_WINDOW."""


class Busy(Exception):
    """Other sign-ins held the password check for HASHING_WAIT."""


class Reviewers:
    def __init__(self, users, max_failures):
        self.users = dict(users)
        self.max_failures = max_failures
        self._key = secrets.token_bytes(32)
        self._checked = {}
        self._hashing = threading.Lock()
        # Address -> the times of its last failures, least recently failed
        # first; read and written only while holding _hashing.
        self._failures = OrderedDict()
        self._decoy = None

    def check(self, name, password, address):
        """True if ``password`` is ``name``'s. A password that checked out
        before is recognised without scrypt, even from an address that is
        over its limit, so a spray cannot lock signed-in reviewers out."""
        digest = hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()
        known = self._checked.get(name)
        if known is not None and hmac.compare_digest(known, digest):
            return True
        stored = self.users.get(name)
        if not self._hashing.acquire(timeout=HASHING_WAIT):
            raise Busy()
        # Counted and recorded within one turn, so that a burst of guesses
        # from one address cannot pass the count before the first failure
        # is recorded.
        try:
            self._count_recent(address)
            # As slow as a wrong password when the name is unknown, so that
            # names cannot be probed.
            correct = (
                check_password_hash(stored or self._decoy_hash(), password) and stored is not None
            )
            if correct:
                self._checked[name] = digest
            else:
                self._record_failure(address)
        finally:
            self._hashing.release()
        return correct

    def _count_recent(self, address):
        failures = self._failures.get(address)
        if failures is None:
            return
        cutoff = time.monotonic() - FAILURE_WINDOW
        while failures and failures[0] < cutoff:
            failures.popleft()
        if not failures:
            del self._failures[address]
        elif len(failures) >= self.max_failures:
            raise TooManyFailures(address)

    def _record_failure(self, address):
        """Note a failure, and forget the addresses whose last failure is
        too old to count (they come first) and the least recent past
        MAX_ADDRESSES."""
        now = time.monotonic()
        failures = self._failures.pop(address, None) or deque(maxlen=self.max_failures)
        failures.append(now)
        self._failures[address] = failures
        while (
            len(self._failures) > MAX_ADDRESSES
            or next(iter(self._failures.values()))[-1] < now - FAILURE_WINDOW
        ):
            self._failures.popitem(last=False)

    def _decoy_hash(self):
        """A hash made as the reviewers' are (the method and parameters of
        the first), so that an unknown name costs what a known one does."""
        if self._decoy is None:
            methods = [hashed.split("$", 1)[0] for _, hashed in sorted(self.users.items())]
            self._decoy = generate_password_hash(
                secrets.token_hex(16), *(methods[:1] or ["scrypt"])
            )
        return self._decoy


def require_reviewer():
    """before_request of every dashboard page and export."""
    g.reviewer = None
    if not current_app.config["DASHBOARD_AUTH"]:
        return None
    reviewers = current_app.extensions["tim_audit.reviewers"]
    if not reviewers.users:
        return _challenge(configured=False)
    credentials = request.authorization
    if credentials is None or credentials.type != "basic":
        return _challenge(configured=True)
    try:
        if not reviewers.check(
            credentials.username or "", credentials.password or "", request.remote_addr
        ):
            return _challenge(configured=True)
    except TooManyFailures:
        page = render_template("unauthorized.html", configured=True, locked=FAILURE_WINDOW)
        return page, 429, {"Retry-After": str(FAILURE_WINDOW)}
    except Busy:
        page = render_template("unauthorized.html", configured=True, busy=True)
        return page, 503, {"Retry-After": "2"}
    g.reviewer = credentials.username
    return None


def _challenge(configured):
    page = render_template("unauthorized.html", configured=configured)
    return page, 401, {"WWW-Authenticate": 'Basic realm="tim-audit", charset="UTF-8"'}
