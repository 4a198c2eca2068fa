"""The log: what an auditor reads.

The schema, the connections, the chain's format (``chain``) and its walk
(``verification``), the Merkle trees (``tlog``, RFC 6962, and ``merkle``,
their rows), signed notes and proof files (``signednote``, ``tlogproof``),
checkpoints with the notary, witnesses and timestamps, the derived data and
its checks, what a batch writes (``records``) and the single writer that
commits it (``writer``). ``chain``, ``tlog``, ``signednote`` and
``tlogproof`` are pure: no I/O, standard library and cryptography only.
Nothing here imports ``ingest`` or ``review`` (tests/test_layout.py).
"""
