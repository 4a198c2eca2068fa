"""The log: what an auditor reads.

The schema, the connections, the chain, the Merkle tree (RFC 6962), signed
checkpoints with their witnesses and timestamps, the derived data and its
checks, and the single writer. The pure modules (``chain``, ``tlog``) do no
I/O. Nothing here imports Flask views, ``ingest`` or ``review``.
"""
