"""The ingest server's part: ``POST /callback``.

The ordered checks (signature, time window, command), the marshmallow schema
with its field bounds, and the answers Tencent gets. It hands each entry to
``log``'s writer and never imports ``review`` (tests/test_layout.py).
"""
