"""The review server's part: the reviewers' dashboard.

Sign-in, the history, event and quarantine pages with their shared
machinery (``pages``), their queries, the exports and the evidence archive,
and the integrity strip, with their templates and static files. It reads
the log through read-only connections and never imports the writer
(``log.writer``, ``log.startup``) or the callback (tests/test_layout.py).
"""
