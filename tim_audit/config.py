"""Configuration: the defaults, reading ``instance/config.py``, and the
checks that refuse what cannot be meant before the service starts."""

import difflib
import hashlib
import math
import os
import pathlib
import re
import traceback
import zoneinfo

import flask
from cryptography import x509
from marshmallow import Schema, ValidationError, fields, validate

from .log import signednote


def usable_cores(cgroups="/proc/self/cgroup", root="/sys/fs/cgroup"):
    """The cores this process may use: those of its CPU affinity, or fewer
    under a CPU quota on its cgroup or one above it (cgroup v2's cpu.max:
    systemd's CPUQuota=, a container's --cpus), rounded up. A quota of 2
    cores on a 16-core host would otherwise start 16 ingest workers."""
    cores = len(os.sched_getaffinity(0))
    try:
        with open(cgroups) as lines:
            path = next(line[3:].strip() for line in lines if line.startswith("0::"))
    except (OSError, ValueError, StopIteration):
        return cores  # cgroup v1, none, or a path that is not text
    if ".." in pathlib.PurePath(path).parts:
        return cores  # a cgroup outside this namespace's root: not ours to read
    group = pathlib.Path(root, path.lstrip("/"))
    for directory in (group, *group.parents):
        if not directory.is_relative_to(root):
            break
        try:
            quota, period = pathlib.Path(directory, "cpu.max").read_text().split()
            if quota != "max":
                cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError, ZeroDivisionError):
            continue  # no quota here, or none that can be read
    return cores


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
    # Ingest worker processes (serve.py): one a core, so that the HTTP,
    # signature and marshmallow work of callbacks uses each; 1 serves
    # callbacks in the writer's own process.
    "INGEST_PROCESSES": usable_cores(),
    "REVIEW_THREADS": 8,
    "MAX_EXPORTS": 2,
    "LOGIN_FAILURES": 10,
    "LOG_ORIGIN": None,
    "CHECKPOINT_KEY": "checkpoint.key",
    "CHECKPOINT_INTERVAL": 60,
    "CHECKPOINT_DIR": None,
    "CHECKPOINT_ADOPT": False,
    "CHECKPOINT_VERIFIER_KEY": None,
    "WITNESSES": [],
    "WITNESS_QUORUM": None,
    "TIMESTAMP_URL": None,
    "TIMESTAMP_CA": None,
}

# What instance/config.example.py says until the operator pastes the real one.
PLACEHOLDER_TOKEN = "paste-the-console-token-here"  # noqa: S105 (refused, not used)

# What werkzeug's generate_password_hash makes (hash-password): the method
# with its parameters, a salt, and the digest in hex, whose length the
# method fixes. A hash cut short or retyped never matches any password.
_PASSWORD_HASH = re.compile(
    r"(?:scrypt:\d+:\d+:\d+|pbkdf2:(?P<digest>[\w-]+):\d+)\$[A-Za-z0-9]+\$(?P<hex>[0-9a-f]+)"
)


class StartupError(SystemExit):
    """A problem found at start-up, with what to do about it.

    A SystemExit, so that waitress-serve and flask print the message and
    exit non-zero instead of showing a traceback.
    """

    def __init__(self, message):
        super().__init__(f"tim-audit cannot start: {message}")


def from_instance_file(config):
    """Read ``config.py`` from the instance folder, if there is one; the
    keys it sets. A mistake in it is named by file, line and error, in one
    line."""
    path = os.path.join(config.root_path, "config.py")
    read = flask.Config(config.root_path)
    try:
        read.from_pyfile("config.py", silent=True)
    except SyntaxError as exc:
        raise StartupError(f"{path}, line {exc.lineno}: {exc.msg}") from None
    except OSError as exc:
        raise StartupError(f"cannot read {path}: {exc.strerror}") from None
    except Exception as exc:
        lines = [
            frame.lineno
            for frame in traceback.extract_tb(exc.__traceback__)
            if frame.filename == path
        ]
        raise StartupError(f"{path}, line {lines[-1]}: {type(exc).__name__}: {exc}") from None
    config.update(read)
    return set(read)


def unknown_keys(config, from_file, prefix="TIM_AUDIT_"):
    """Warnings for the keys that ``config.py`` (``from_file``) or the
    environment sets and no part of tim-audit or Flask reads: a misspelled
    key would otherwise leave its default in force, in silence."""
    known = set(DEFAULTS) | set(flask.Flask.default_config) | {"DATABASE"}
    from_environment = {
        name.removeprefix(prefix).partition("__")[0]
        for name in os.environ
        if name.startswith(prefix) and name != f"{prefix}INSTANCE_PATH"
    }
    warnings = []
    for where, keys in (
        (os.path.join(config.root_path, "config.py"), from_file),
        ("the environment", {f"{prefix}{key}" for key in from_environment}),
    ):
        for key in sorted(keys):
            name = key.removeprefix(prefix) if where == "the environment" else key
            if not name.isupper() or name in known:
                continue
            close = difflib.get_close_matches(name, known, n=1)
            hint = f": did you mean {close[0]}?" if close else ""
            warnings.append(f"{where} sets {key}, which tim-audit does not read{hint}")
    return warnings


class _SdkAppId(fields.Field):
    """Kept as the string the callback's query carries."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value == "":
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not (isinstance(value, str) and re.fullmatch(r"[1-9][0-9]{0,9}", value)):
            raise ValidationError("")
        return value


class _Tokens(fields.Field):
    """One token or a list (any is accepted, for rotation), as a tuple of strings."""

    def deserialize(self, value, *args, **kwargs):
        return () if value is None else super().deserialize(value, *args, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        tokens = () if value == "" else value if isinstance(value, (list, tuple)) else (value,)
        for token in tokens:
            if isinstance(token, bool) or not isinstance(token, (str, int)) or token == "":
                raise ValidationError(
                    "must be a string or a list of strings; in the environment, quote it"
                    " as JSON: TIM_AUDIT_CALLBACK_TOKEN='\"…\"'"
                )
            if token == PLACEHOLDER_TOKEN:
                raise ValidationError(
                    "is still the example's placeholder: paste the token from the IM"
                    " console's callback authentication"
                )
        return tuple(str(token) for token in tokens)


class _Key(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not (isinstance(value, bytes) and len(value) >= 16):
            raise ValidationError("")
        return value


class _Witnesses(fields.Field):
    """A list of {"url": the witness's submission prefix, "key": its
    cosignature verifier key}; the keys as signednote.Verifier would take them."""

    def _deserialize(self, value, attr, data, **kwargs):
        must = (
            'must be a list of {"url": "https://…", "key": "name+keyid+base64"}, each key'
            " a witness's cosignature/v1 verifier key"
        )
        if not isinstance(value, (list, tuple)):
            raise ValidationError(must)
        witnesses = []
        for witness in value:
            if not (
                isinstance(witness, dict)
                and set(witness) == {"url", "key"}
                and isinstance(witness["url"], str)
                and re.fullmatch(r"https?://[^\s/]+(/\S*)?", witness["url"])
                and isinstance(witness["key"], str)
            ):
                raise ValidationError(f"{must}, not {witness!r}")
            try:
                verifier = signednote.Verifier(witness["key"])
            except signednote.Malformed as exc:
                raise ValidationError(f"has a key that is not a verifier key: {exc}") from None
            if not verifier.cosigner:
                raise ValidationError(
                    f"has the key {witness['key']} of type Ed25519 (0x01): a witness's key is"
                    " a cosignature/v1 key (0x04), as tim-audit keygen --witness prints"
                )
            witnesses.append({"url": witness["url"], "key": str(verifier)})
        if len({witness["key"] for witness in witnesses}) != len(witnesses):
            raise ValidationError("names one witness key twice")
        return witnesses


class _Reviewers(fields.Field):
    """Reviewer name -> password hash; refuses entries that could never sign in."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("must map reviewer names to password hashes")
        for name, hashed in value.items():
            if not isinstance(name, str) or name == "" or ":" in name:
                raise ValidationError(
                    f"has a reviewer named {name!r}, who could never sign in: a name must"
                    " not be empty or contain ':' (HTTP Basic ends the name there)"
                )
            if not _is_password_hash(hashed):
                raise ValidationError(
                    f"has no password hash for {name!r} (or one cut short): make one with"
                    " tim-audit hash-password"
                )
        return value


def _is_password_hash(value):
    match = _PASSWORD_HASH.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return False
    try:
        # werkzeug asks scrypt for 64 bytes; pbkdf2 gives its digest's size.
        size = 64 if match["digest"] is None else hashlib.new(match["digest"]).digest_size
    except ValueError:  # no such digest
        return False
    return len(match["hex"]) == 2 * size


def _origin(value):
    if not value or "+" in value or any(c.isspace() for c in value):
        raise ValidationError("")


def _zone(name):
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValidationError("") from None


class _LogKeys(fields.Field):
    """One log verifier key, or a list of them (after rotations)."""

    def _deserialize(self, value, attr, data, **kwargs):
        keys = [value] if isinstance(value, str) else value
        if not isinstance(keys, (list, tuple)) or not keys:
            raise ValidationError("")
        for key in keys:
            try:
                verifier = signednote.Verifier(key) if isinstance(key, str) else None
            except signednote.Malformed:
                verifier = None
            if verifier is None or verifier.cosigner:
                raise ValidationError("")
        return list(keys)


def _address(value):
    host, _, port = value.rpartition(":")
    if not (host and port.isdigit() and 0 < int(port) < 65536):
        raise ValidationError("")


def _must(what, secret=False):
    """A setting's one refusal: "KEY must be WHAT, not VALUE" (without the
    value for a secret). marshmallow's own message is not shown, so our
    fields with one refusal raise theirs empty."""
    return {"metadata": {"must": what, "secret": secret}}


def _whole(minimum, what):
    return fields.Integer(strict=True, validate=validate.Range(min=minimum), **_must(what))


def _flag():
    return fields.Boolean(truthy={True}, falsy={False}, **_must("true or false"))


class Settings(Schema):
    """What each key must be; check() says which one is wrong and how."""

    SDKAPPID = _SdkAppId(
        allow_none=True,
        **_must("your app's SDKAppID, a positive whole number of at most 10 digits"),
    )
    CALLBACK_TOKEN = _Tokens()
    SIGN_MAX_AGE = _whole(0, "a whole number of at least 0")
    MAX_CONTENT_LENGTH = _whole(1, "a whole number of at least 1")
    STORAGE_TIMEOUT = fields.Float(
        validate=validate.Range(min=0.5, max=1.2),
        **_must(
            "seconds between 0.5 and 1.2 (every callback is answered within 1.5 s; Tencent waits 2 s)"
        ),
    )
    AUDIT_HMAC_KEY = _Key(allow_none=True, **_must("a string of at least 16 bytes", secret=True))
    DASHBOARD_USERS = _Reviewers()
    DASHBOARD_AUTH = _flag()
    DISPLAY_TIMEZONE = fields.String(
        validate=_zone, **_must("an IANA time zone such as Asia/Shanghai")
    )
    VERIFY_INTERVAL = _whole(0, "whole seconds (0: only when asked)")
    PROXY_FIX = _whole(0, "the number of trusted proxies in front (0: none)")
    METRICS = _flag()
    LOG_FORMAT = fields.String(
        validate=validate.OneOf(["text", "json"]), **_must('"text" or "json"')
    )
    DATABASE = fields.String(**_must("the path of the SQLite file"))
    INGEST_LISTEN = fields.String(validate=_address, **_must("HOST:PORT, such as 127.0.0.1:8080"))
    REVIEW_LISTEN = fields.String(validate=_address, **_must("HOST:PORT, such as 127.0.0.1:8081"))
    INGEST_THREADS = _whole(1, "a whole number of at least 1")
    INGEST_PROCESSES = _whole(1, "a whole number of at least 1")
    REVIEW_THREADS = _whole(1, "a whole number of at least 1")
    MAX_EXPORTS = _whole(1, "a whole number of at least 1")
    LOGIN_FAILURES = _whole(1, "a whole number of at least 1")
    LOG_ORIGIN = fields.String(
        allow_none=True,
        validate=_origin,
        **_must("the log's name, without spaces or '+', such as im-audit.example.com/1400000001"),
    )
    CHECKPOINT_KEY = fields.String(**_must("the path of the checkpoint signing key file"))
    CHECKPOINT_INTERVAL = _whole(1, "whole seconds of at least 1")
    CHECKPOINT_DIR = fields.String(allow_none=True, **_must("the path of a folder, or None"))
    CHECKPOINT_ADOPT = _flag()
    CHECKPOINT_VERIFIER_KEY = _LogKeys(
        allow_none=True,
        **_must(
            "the log's verifier key, name+keyid+base64, as keygen printed it, or a list of"
            " every key it was signed with"
        ),
    )
    WITNESSES = _Witnesses()
    TIMESTAMP_URL = fields.String(
        allow_none=True,
        validate=validate.Regexp(r"https?://[^\s/]+(/\S*)?"),
        **_must("the URL of an RFC 3161 timestamp authority (http:// or https://), or None"),
    )
    TIMESTAMP_CA = fields.String(
        allow_none=True,
        **_must("the path of a PEM file of the CA certificates the TSA's tokens chain to"),
    )
    WITNESS_QUORUM = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=1),
        **_must("a whole number of at least 1, or None for all of WITNESSES"),
    )


_SETTINGS = Settings()


def check(config):
    """Normalize what environment variables and config files give us, and
    refuse what cannot be meant (from_prefixed_env turns ``123`` into an int
    and ``true`` into a bool). A relative DATABASE, CHECKPOINT_KEY or
    CHECKPOINT_DIR is in the instance folder, like Flask's other instance
    files."""
    try:
        values = _SETTINGS.load({key: config[key] for key in _SETTINGS.fields})
    except ValidationError as exc:
        key, messages = next(iter(exc.messages.items()))
        raise StartupError(_refusal(key, messages[0], config[key])) from None
    config.update(values)
    if config["WITNESS_QUORUM"] is None:
        config["WITNESS_QUORUM"] = len(config["WITNESSES"])
    elif config["WITNESS_QUORUM"] > len(config["WITNESSES"]):
        raise StartupError(
            f"WITNESS_QUORUM is {config['WITNESS_QUORUM']}, but WITNESSES names"
            f" {len(config['WITNESSES'])}: no checkpoint could ever be witnessed enough"
        )
    for key in ("DATABASE", "CHECKPOINT_KEY", "CHECKPOINT_DIR", "TIMESTAMP_CA"):
        if config[key] is not None:
            config[key] = os.path.join(config.root_path, config[key])
    _check_timestamps(config)


def _check_timestamps(config):
    """A TSA's tokens are kept, and checked, only against TIMESTAMP_CA:
    without readable certificates there, none ever would be."""
    if config["TIMESTAMP_URL"] is not None and config["TIMESTAMP_CA"] is None:
        raise StartupError(
            "TIMESTAMP_URL is set, but TIMESTAMP_CA is not: set it to a PEM file of the CA"
            " certificates the TSA's tokens chain to"
        )
    if config["TIMESTAMP_CA"] is None:
        return
    try:
        with open(config["TIMESTAMP_CA"], "rb") as file:
            x509.load_pem_x509_certificates(file.read())
    except OSError as exc:
        raise StartupError(
            f"cannot read TIMESTAMP_CA {config['TIMESTAMP_CA']}: {exc.strerror}"
        ) from None
    except ValueError:
        raise StartupError(
            f"TIMESTAMP_CA {config['TIMESTAMP_CA']} holds no PEM certificate"
        ) from None


def _refusal(key, message, value):
    metadata = _SETTINGS.fields[key].metadata
    if "must" not in metadata:
        return f"{key} {message}"
    if metadata["secret"]:
        return f"{key} must be {metadata['must']}"
    return f"{key} must be {metadata['must']}, not {value!r}"


def warn_about_config(app):
    """Log what makes a server start but not do its job, for the side(s)
    ``app`` serves."""
    ingest = "tim_audit" in app.extensions
    review = "tim_audit.reviewers" in app.extensions
    warnings = list(app.extensions.get("tim_audit.unknown_keys", ()))
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
            " with hashes from tim-audit hash-password"
        )
    if ingest and not app.config["CALLBACK_TOKEN"]:
        warnings.append(
            "CALLBACK_TOKEN is not set: callbacks are unauthenticated, so anyone who"
            " can reach /callback and knows the SDKAppID can add events. Switch on"
            " callback authentication in Tencent's console and set the token here"
        )
    for warning in warnings:
        app.logger.warning(warning)
