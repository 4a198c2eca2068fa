"""HTTP Basic authentication of reviewers against ``DASHBOARD_USERS``.

Browsers send the credentials with every request, and checking a scrypt
hash costs tens of milliseconds, so a password that checked out once is
remembered, as an HMAC under a key that lives only in this process.
"""

import hashlib
import hmac
import secrets
import threading

from flask import current_app, g, render_template, request
from werkzeug.security import check_password_hash, generate_password_hash


class Reviewers:
    def __init__(self, users):
        self.users = dict(users)
        self._key = secrets.token_bytes(32)
        self._checked = {}
        self._lock = threading.Lock()
        self._decoy = None

    def check(self, name, password):
        digest = hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()
        known = self._checked.get(name)
        if known is not None and hmac.compare_digest(known, digest):
            return True
        stored = self.users.get(name)
        if stored is None:
            # As slow as a wrong password, so names cannot be probed.
            check_password_hash(self._decoy_hash(), password)
            return False
        if not check_password_hash(stored, password):
            return False
        with self._lock:
            self._checked[name] = digest
        return True

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
    if (credentials is None or credentials.type != "basic"
            or not reviewers.check(credentials.username or "", credentials.password or "")):
        return _challenge(configured=True)
    g.reviewer = credentials.username
    return None


def _challenge(configured):
    page = render_template("unauthorized.html", configured=configured)
    return page, 401, {"WWW-Authenticate": 'Basic realm="tim-audit", charset="UTF-8"'}
