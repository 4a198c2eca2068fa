# tim-audit configuration. Copy this file to instance/config.py (which git
# ignores) and fill it in: tim-audit refuses to start with the placeholder
# token below. Every key can also be set with an environment
# variable named TIM_AUDIT_<KEY>, which wins over this file; values there are
# read as JSON, so quote strings that look like numbers or lists.

# The SDKAppID of your Tencent Cloud IM app (at most 10 digits). Callbacks whose SdkAppid query
# parameter differs are refused with HTTP 403. Until it is set, every
# callback is answered FAIL (ErrorCode 60001).
SDKAPPID = 1400000001

# The "callback authentication token" from the IM console. When set, Sign
# and RequestTime are required and checked. A list accepts any of its
# tokens, so the console token can be changed without dropping callbacks:
# CALLBACK_TOKEN = ["old-token", "new-token"]
CALLBACK_TOKEN = "paste-the-console-token-here"

# Seconds a RequestTime may differ from this server's clock, either way.
# SIGN_MAX_AGE = 60

# The SQLite file. Default: tim_audit.sqlite3 in this instance folder; a
# relative path is read from this folder too, not from the working directory.
# DATABASE = "/var/lib/tim-audit/tim_audit.sqlite3"

# Largest callback body accepted, in bytes.
# MAX_CONTENT_LENGTH = 1024 * 1024

# Seconds a callback may wait for the database (locked by another process,
# a slow disk) before it is answered 503; Tencent waits 2 s in all.
# STORAGE_TIMEOUT = 1.0

# With a key, each row's hash is an HMAC-SHA256, so nobody without the key
# can re-chain an edited log. Set it before the first event is stored and
# keep it off this machine's backups; it cannot be added to a log later.
# AUDIT_HMAC_KEY = "at least 16 random bytes, e.g. from: python -c 'import secrets; print(secrets.token_hex(32))'"

# Reviewers who may read the dashboard: name -> password hash. Make a hash
# with: flask --app tim_audit hash-password. A name may not be empty or
# contain ":".
# DASHBOARD_USERS = {"alice": "scrypt:32768:8:1$..."}

# Behind a reverse proxy that authenticates reviewers itself:
# DASHBOARD_AUTH = False

# The time zone pages show times in (exports are always UTC), and in which
# since/until without an offset are read.
# DISPLAY_TIMEZONE = "Asia/Shanghai"

# Seconds after which viewing the dashboard starts a background verification
# of the chain; 0: only when a reviewer presses "Verify now".
# VERIFY_INTERVAL = 600
