"""tim-audit: an append-only, tamper-evident audit log of Tencent Cloud IM
group-created callbacks, with a history dashboard for compliance review."""

import logging
import os

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import cli, config, handoff, health, logs, metrics, published
from .ingest import callback
from .log import db, notary, timestamps, witnesses, writer
from .review import auth, evidence, history, integrity, pages, quarantine
from .log.startup import open_log
from .config import StartupError

__all__ = ["StartupError", "create_app", "create_ingest_app", "create_review_app", "open_log"]

# Sent with every answer: pages load nothing from elsewhere and run no
# script, so the strictest policy costs nothing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def create_app(test_config=None):
    """Ingest and review in one application: for development, for tests, and
    for deployments that serve ``wsgi:app`` as before the split. Callbacks
    then share a thread pool with reviewers; ``tim-audit serve`` does not."""
    return _create(test_config, ingest=True, review=True)


def create_ingest_app(test_config=None, log=None):
    """``POST /callback``, ``GET /healthz``, ``/metrics`` and the public
    ``/checkpoint``: the server Tencent reaches. It owns the single writer
    and the notary that signs checkpoints, unless it is given ``log``: an
    ingest worker's (handoff.Remote), whose writer is another process's."""
    return _create(test_config, ingest=True, review=False, log=log)


def create_review_app(test_config=None):
    """The reviewers' dashboard, its exports and its own ``/healthz``. It
    reads through read-only connections and never opens the writer."""
    return _create(test_config, ingest=False, review=True)


def _create(test_config, *, ingest, review, log=None):
    """Config, later wins: DEFAULTS, ``instance/config.py``, ``TIM_AUDIT_*``
    environment variables, ``test_config``. Nothing here touches the
    database: the writer opens it when the ingest server starts (open_log)
    or at the first callback."""
    instance_path = os.environ.get("TIM_AUDIT_INSTANCE_PATH")
    app = Flask(
        __name__,
        template_folder="review/templates",
        static_folder="review/static",
        instance_relative_config=True,
        instance_path=os.path.abspath(instance_path) if instance_path else None,
    )
    app.config.from_mapping(
        config.DEFAULTS, DATABASE=os.path.join(app.instance_path, "tim_audit.sqlite3")
    )
    from_file = config.from_instance_file(app.config)
    app.config.from_prefixed_env("TIM_AUDIT")
    app.extensions["tim_audit.unknown_keys"] = config.unknown_keys(app.config, from_file)
    if test_config is not None:
        app.config.update(test_config)
    config.check(app.config)
    logs.configure(app.config["LOG_FORMAT"])
    app.logger.setLevel(logging.INFO)

    db.init_app(app)
    cli.init_app(app)
    tsa_ca = timestamps.read_ca(app.config)
    app.register_blueprint(health.bp)
    if ingest:
        witnessing = stamping = ()
        if log is None:
            # What carries each checkpoint off the box, started with the notary.
            witnessing = witnesses.from_config(app.config)
            stamping = timestamps.from_config(app.config, tsa_ca)
            log = writer.AuditLog(
                os.path.abspath(app.config["DATABASE"]),
                key=app.config["AUDIT_HMAC_KEY"],
                timeout=app.config["STORAGE_TIMEOUT"],
                notary=notary.from_config(app.config, witnessing + stamping),
            )
        app.extensions["tim_audit"] = log
        app.register_blueprint(callback.bp)
        app.register_blueprint(published.bp)
        if app.config["METRICS"]:
            app.extensions["tim_audit.metrics"] = metrics.Metrics(
                app.config["DATABASE"],
                witnessing,
                stamping,
                shared=os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
            )
            if isinstance(log, handoff.Remote):  # its writer has the witnesses' state
                app.extensions["tim_audit.writers_metrics"] = log.metrics
            app.register_blueprint(metrics.bp)
    if review:
        app.extensions["tim_audit.reviewers"] = auth.Reviewers(
            app.config["DASHBOARD_USERS"], app.config["LOGIN_FAILURES"]
        )
        app.extensions["tim_audit.verifier"] = integrity.Verifier(
            app.config["DATABASE"],
            app.config["AUDIT_HMAC_KEY"],
            app.config["VERIFY_INTERVAL"],
            checkpoint_key=app.config["CHECKPOINT_KEY"],
            log_origin=app.config["LOG_ORIGIN"],
            directory=app.config["CHECKPOINT_DIR"],
            witnesses=app.config["WITNESSES"],
            timestamp_ca=tsa_ca,
            verifier_key=app.config["CHECKPOINT_VERIFIER_KEY"],
        )
        app.extensions["tim_audit.tsa_ca"] = tsa_ca
        pages.init_app(app)
        app.register_blueprint(history.bp)
        app.register_blueprint(quarantine.bp)
        app.register_blueprint(evidence.bp)
    if app.config["PROXY_FIX"]:
        hops = app.config["PROXY_FIX"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    app.after_request(_add_security_headers)
    if os.environ.get("FLASK_RUN_FROM_CLI") != "true":
        # The server's log is the place; an operator's command (a cron job's
        # verify, a backup) would repeat them in every mail.
        config.warn_about_config(app)
    return app


def _add_security_headers(response):
    response.headers.update(SECURITY_HEADERS)
    return response
