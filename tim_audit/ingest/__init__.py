"""The ingest server's part: ``POST /callback``.

The ordered checks (signature, time window, command), the marshmallow schema
with its field bounds, and the answers Tencent gets. It hands each event to
``log``'s writer and never reads the log itself, nor imports ``review``.
"""
