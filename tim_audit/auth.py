"""HTTP Basic authentication of reviewers against ``DASHBOARD_USERS``.

Browsers send the credentials with every request, and checking a scrypt
hash costs tens of milliseconds of CPU, so a password that checked out once
is remembered, as an HMAC under a key that lives only in this process. A
password spray is bounded twice: one scrypt check runs at a time, and an
address with LOGIN_FAILURES failures in the last minute is answered 429
without one.
"""

import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque

from flask import current_app, g, render_template, request
from werkzeug.security import check_password_hash, generate_password_hash


FAILURE_WINDOW = 60  # seconds


class TooManyFailures(Exception):
    """This address failed to sign in LOGIN_FAILURES times in FAILURE_WINDOW."""


class Reviewers:
    def __init__(self, users, max_failures):
        self.users = dict(users)
        self.max_failures = max_failures
        self._key = secrets.token_bytes(32)
        self._checked = {}
        self._lock = threading.Lock()
        self._hashing = threading.Lock()
        self._failures = defaultdict(deque)
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
        with self._hashing:
            # Counted here, one check at a time, so that a burst of guesses
            # cannot all pass the count before the first is recorded.
            self._count_recent(address)
            # As slow as a wrong password when the name is unknown, so that
            # names cannot be probed.
            correct = check_password_hash(stored or self._decoy_hash(), password) and stored is not None
        with self._lock:
            if correct:
                self._checked[name] = digest
            else:
                self._failures[address].append(time.monotonic())
        return correct

    def _count_recent(self, address):
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(address)
            if failures is None:
                return
            while failures and failures[0] < now - FAILURE_WINDOW:
                failures.popleft()
            if not failures:
                del self._failures[address]
            elif len(failures) >= self.max_failures:
                raise TooManyFailures(address)

    def _decoy_hash(self):
        if self._decoy is None:
            self._decoy = generate_password_hash(secrets.token_hex(16))
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
        if not reviewers.check(credentials.username or "", credentials.password or "", request.remote_addr):
            return _challenge(configured=True)
    except TooManyFailures:
        page = render_template("unauthorized.html", configured=True, locked=FAILURE_WINDOW)
        return page, 429, {"Retry-After": str(FAILURE_WINDOW)}
    g.reviewer = credentials.username
    return None


def _challenge(configured):
    page = render_template("unauthorized.html", configured=configured)
    return page, 401, {"WWW-Authenticate": 'Basic realm="tim-audit", charset="UTF-8"'}
