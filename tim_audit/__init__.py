"""tim-audit: an append-only, tamper-evident audit log of Tencent Cloud IM
group-created callbacks, with a history dashboard for compliance review."""

import logging
import os
import sqlite3

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import auditlog, auth, callback, cli, config, db, health, history, integrity, logs, metrics
from .config import StartupError

# Sent with every answer: pages load nothing from elsewhere and run no
# script, so the strictest policy costs nothing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def create_app(test_config=None):
    """Config, later wins: DEFAULTS, ``instance/config.py``, ``TIM_AUDIT_*``
    environment variables, ``test_config``."""
    instance_path = os.environ.get("TIM_AUDIT_INSTANCE_PATH")
    app = Flask(
        __name__,
        instance_relative_config=True,
        instance_path=os.path.abspath(instance_path) if instance_path else None,
    )
    app.config.from_mapping(config.DEFAULTS, DATABASE=os.path.join(app.instance_path, "tim_audit.sqlite3"))
    config.from_instance_file(app.config)
    app.config.from_prefixed_env("TIM_AUDIT")
    if test_config is not None:
        app.config.update(test_config)
    config.check(app.config)
    logs.configure(app.config["LOG_FORMAT"])
    app.logger.setLevel(logging.INFO)
    app.extensions["tim_audit"] = _open_log(app)
    app.extensions["tim_audit.reviewers"] = auth.Reviewers(app.config["DASHBOARD_USERS"])
    app.extensions["tim_audit.verifier"] = integrity.Verifier(
        app.config["DATABASE"], app.config["AUDIT_HMAC_KEY"], app.config["VERIFY_INTERVAL"]
    )

    db.init_app(app)
    cli.init_app(app)
    app.register_blueprint(callback.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(history.bp)
    if app.config["METRICS"]:
        app.extensions["tim_audit.metrics"] = metrics.Metrics(app.config["DATABASE"])
        app.register_blueprint(metrics.bp)
    if app.config["PROXY_FIX"]:
        hops = app.config["PROXY_FIX"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    app.after_request(_add_security_headers)
    if os.environ.get("FLASK_RUN_FROM_CLI") != "true":
        # The server's log is the place; an operator's command (a cron job's
        # verify, a backup) would repeat them in every mail.
        _warn_about_config(app)
    return app


def _add_security_headers(response):
    response.headers.update(SECURITY_HEADERS)
    return response


def _open_log(app):
    """Open the log, creating it on first start; explain a database that
    cannot be used rather than show a traceback."""
    path = os.path.abspath(app.config["DATABASE"])
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        if directory != os.path.abspath(app.instance_path):
            raise StartupError(
                f"the directory of DATABASE, {directory}, does not exist: create it"
                " (writable by the user running tim-audit) or set DATABASE to a"
                " file in an existing directory"
            )
        try:
            os.makedirs(directory)
        except OSError as exc:
            raise StartupError(f"cannot create the instance folder {directory}: {exc.strerror}") from None
    if not os.access(directory, os.W_OK):
        raise StartupError(
            f"the directory {directory} is not writable by this user: SQLite"
            " keeps its -wal and -shm files beside the database. Give the user"
            " running tim-audit write access to it, or set DATABASE elsewhere"
        )
    try:
        return auditlog.AuditLog(
            path, key=app.config["AUDIT_HMAC_KEY"], timeout=app.config["STORAGE_TIMEOUT"]
        )
    except auditlog.ChainMismatch as exc:
        raise StartupError(str(exc)) from None
    except sqlite3.Error as exc:
        raise StartupError(f"cannot open the database {path}: {exc}") from None


def _warn_about_config(app):
    if not app.config["SDKAPPID"]:
        app.logger.warning(
            "SDKAPPID is not set: every callback is answered FAIL (ErrorCode 60001) until it is"
        )
    if not app.config["DASHBOARD_AUTH"]:
        app.logger.warning(
            "DASHBOARD_AUTH is off: the dashboard and its exports are open to anyone who"
            " can reach them; only do this behind a proxy that authenticates reviewers"
        )
    elif not app.config["DASHBOARD_USERS"]:
        app.logger.warning(
            "DASHBOARD_USERS is empty: nobody can sign in to the dashboard; add reviewers"
            " with hashes from flask --app tim_audit hash-password"
        )
    if not app.config["CALLBACK_TOKEN"]:
        app.logger.warning(
            "CALLBACK_TOKEN is not set: callbacks are unauthenticated, so anyone who"
            " can reach /callback and knows the SDKAppID can add events. Switch on"
            " callback authentication in Tencent's console and set the token here"
        )
