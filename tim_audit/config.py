"""Configuration: the defaults, and the checks that refuse what cannot be
meant before the service starts."""

import zoneinfo

from . import auth

DEFAULTS = {
    "SDKAPPID": None,
    "CALLBACK_TOKEN": None,
    "SIGN_MAX_AGE": 60,
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    "STORAGE_TIMEOUT": 1.0,
    "AUDIT_HMAC_KEY": None,
    "DASHBOARD_USERS": {},
    "DASHBOARD_AUTH": True,
    "DISPLAY_TIMEZONE": "UTC",
    "VERIFY_INTERVAL": 600,
    "PROXY_FIX": 0,
    "METRICS": False,
    "LOG_FORMAT": "text",
    "INGEST_LISTEN": "127.0.0.1:8080",
    "REVIEW_LISTEN": "127.0.0.1:8081",
    "INGEST_THREADS": 8,
    "REVIEW_THREADS": 8,
    "MAX_EXPORTS": 2,
    "LOGIN_FAILURES": 10,
}


class StartupError(SystemExit):
    """A problem found at start-up, with what to do about it.

    A SystemExit, so that waitress-serve and flask print the message and
    exit non-zero instead of showing a traceback.
    """

    def __init__(self, message):
        super().__init__(f"tim-audit cannot start: {message}")


def check(config):
    """Normalize what environment variables and config files give us, and
    refuse what cannot be meant (from_prefixed_env turns ``123`` into an int
    and ``true`` into a bool)."""
    sdkappid = config["SDKAPPID"]
    if sdkappid in (None, ""):
        config["SDKAPPID"] = None
    elif isinstance(sdkappid, (str, int)) and not isinstance(sdkappid, bool):
        config["SDKAPPID"] = str(sdkappid)
    else:
        raise StartupError(f"SDKAPPID must be the app's SDKAppID, not {sdkappid!r}")

    tokens = config["CALLBACK_TOKEN"]
    if tokens in (None, ""):
        tokens = []
    elif not isinstance(tokens, (list, tuple)):
        tokens = [tokens]
    for token in tokens:
        if isinstance(token, bool) or not isinstance(token, (str, int)) or token == "":
            raise StartupError(
                "CALLBACK_TOKEN must be a string or a list of strings; in the"
                ' environment, quote it as JSON: TIM_AUDIT_CALLBACK_TOKEN=\'"…"\''
            )
    config["CALLBACK_TOKEN"] = tuple(str(token) for token in tokens)

    for key, minimum in (
        ("SIGN_MAX_AGE", 0), ("MAX_CONTENT_LENGTH", 1), ("INGEST_THREADS", 1),
        ("REVIEW_THREADS", 1), ("MAX_EXPORTS", 1), ("LOGIN_FAILURES", 1),
    ):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise StartupError(f"{key} must be a whole number of at least {minimum}, not {value!r}")
    timeout = config["STORAGE_TIMEOUT"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0.25 <= timeout <= 1.2:
        raise StartupError(
            "STORAGE_TIMEOUT must be seconds between 0.25 and 1.2 (every callback is"
            f" answered within 1.5 s; Tencent waits 2 s), not {timeout!r}"
        )
    for key in ("INGEST_LISTEN", "REVIEW_LISTEN"):
        host, _, port = str(config[key]).rpartition(":")
        if not (host and port.isdigit() and 0 < int(port) < 65536):
            raise StartupError(f"{key} must be HOST:PORT, such as 127.0.0.1:8080, not {config[key]!r}")

    users = config["DASHBOARD_USERS"]
    if not isinstance(users, dict):
        raise StartupError("DASHBOARD_USERS must map reviewer names to password hashes")
    for name, hashed in users.items():
        if not (isinstance(hashed, str) and hashed.startswith(auth.HASH_METHODS) and "$" in hashed):
            raise StartupError(
                f"DASHBOARD_USERS[{name!r}] is not a password hash: make one with"
                " flask --app tim_audit hash-password"
            )
    if not isinstance(config["DASHBOARD_AUTH"], bool):
        raise StartupError("DASHBOARD_AUTH must be true or false")
    try:
        zoneinfo.ZoneInfo(config["DISPLAY_TIMEZONE"])
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise StartupError(
            f"DISPLAY_TIMEZONE must be an IANA time zone such as Asia/Shanghai,"
            f" not {config['DISPLAY_TIMEZONE']!r}"
        ) from None
    interval = config["VERIFY_INTERVAL"]
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
        raise StartupError("VERIFY_INTERVAL must be whole seconds (0: only when asked)")
    hops = config["PROXY_FIX"]
    if isinstance(hops, bool) or not isinstance(hops, int) or hops < 0:
        raise StartupError("PROXY_FIX must be the number of trusted proxies in front (0: none)")
    if not isinstance(config["METRICS"], bool):
        raise StartupError("METRICS must be true or false")
    if config["LOG_FORMAT"] not in ("text", "json"):
        raise StartupError('LOG_FORMAT must be "text" or "json"')

    key = config["AUDIT_HMAC_KEY"]
    if isinstance(key, str):
        key = key.encode("utf-8")
    if key is not None and (not isinstance(key, bytes) or len(key) < 16):
        raise StartupError("AUDIT_HMAC_KEY must be a string of at least 16 bytes")
    config["AUDIT_HMAC_KEY"] = key or None


def warn_about_config(app):
    """Log what makes a server start but not do its job, for the side(s)
    ``app`` serves."""
    ingest = "tim_audit" in app.extensions
    review = "tim_audit.reviewers" in app.extensions
    warnings = []
    if ingest and not app.config["SDKAPPID"]:
        warnings.append(
            "SDKAPPID is not set: every callback is answered FAIL (ErrorCode 60001) until it is"
        )
    if review and not app.config["DASHBOARD_AUTH"]:
        warnings.append(
            "DASHBOARD_AUTH is off: the dashboard and its exports are open to anyone who"
            " can reach them; only do this behind a proxy that authenticates reviewers"
        )
    elif review and not app.config["DASHBOARD_USERS"]:
        warnings.append(
            "DASHBOARD_USERS is empty: nobody can sign in to the dashboard; add reviewers"
            " with hashes from flask --app tim_audit hash-password"
        )
    if ingest and not app.config["CALLBACK_TOKEN"]:
        warnings.append(
            "CALLBACK_TOKEN is not set: callbacks are unauthenticated, so anyone who"
            " can reach /callback and knows the SDKAppID can add events. Switch on"
            " callback authentication in Tencent's console and set the token here"
        )
    for warning in warnings:
        app.logger.warning(warning)
