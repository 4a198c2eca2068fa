"""tlog against an implementation not written here: Go's
golang.org/x/mod/sumdb/note and sumdb/tlog, through tests/interop/main.go."""

import base64

import pytest

from conftest import go_program
from tim_audit.log import signednote, tlog, tlogproof

ORIGIN = "im-audit.example.com/1400000001"
LEAVES = [f"event {n} canonical bytes".encode() for n in range(13)]


@pytest.fixture(scope="module")
def go(tmp_path_factory):
    """Run the interop program; returns the finished process."""
    return go_program(tmp_path_factory, "interop")


@pytest.fixture
def signer():
    return signednote.Signer(signednote.generate_key(ORIGIN)[0])


class Evidence:
    """A log of LEAVES, its checkpoints signed by ``signer``, and the files
    an auditor gets: the verifier key, a proof of leaf ``index`` in the
    tree of ``size``, the checkpoint of ``old`` leaves and the consistency
    proof from it."""

    def __init__(self, directory, signer, index=9, size=13, old=7):
        self.directory, self.signer = directory, signer
        self.hashes = list(tlog.all_stored_hashes(LEAVES))
        self.index, self.size, self.old = index, size, old
        self.leaf = LEAVES[index]
        self.proof = tlog.inclusion_proof(size, index, self.read)
        self.checkpoint = signednote.Checkpoint(ORIGIN, size, tlog.tree_hash(size, self.read))
        self.old_checkpoint = signednote.Checkpoint(ORIGIN, old, tlog.tree_hash(old, self.read))
        self.consistency = tlog.consistency_proof(old, size, self.read)
        self.note = signednote.sign_checkpoint(self.checkpoint, signer)
        self.old_note = signednote.sign_checkpoint(self.old_checkpoint, signer)

    def read(self, indexes):
        return [self.hashes[index] for index in indexes]

    def files(self):
        """Write the files; their paths, as the interop program takes them."""
        files = {
            "key.vkey": f"{self.signer.verifier}\n".encode(),
            "event.tlog-proof": tlogproof.format_proof(
                tlogproof.Proof(self.index, self.proof, self.note, self.leaf)
            ),
            "old.checkpoint": self.old_note,
            "consistency.txt": tlogproof.format_hashes(self.consistency),
        }
        for name, data in files.items():
            (self.directory / name).write_bytes(data)
        return [self.directory / name for name in files]


def flips(data):
    """``data`` with its first, middle and last byte altered in turn (the
    tests of tlog alone alter every byte of a proof file)."""
    for position in sorted({0, len(data) // 2, len(data) - 1}):
        yield data[:position] + bytes([data[position] ^ 0x41]) + data[position + 1 :]


def refused(go, evidence, reason):
    result = go("verify", *evidence.files())
    assert result.returncode == 1, result.stdout
    assert reason in result.stderr
    return result


def test_go_accepts_our_checkpoint_inclusion_and_consistency_proofs(go, tmp_path, signer):
    result = go("verify", *Evidence(tmp_path, signer).files())
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


def test_go_accepts_our_proofs_of_every_leaf_in_every_tree(go, tmp_path, signer):
    for size in range(1, len(LEAVES) + 1):
        for index in range(size):
            result = go("verify", *Evidence(tmp_path, signer, index, size, old=index + 1).files())
            assert result.returncode == 0, (size, index, result.stderr)


def test_go_refuses_altered_bytes_of_the_checkpoint_signature(go, tmp_path, signer):
    evidence = Evidence(tmp_path, signer)
    head, _, signature = evidence.note.rstrip(b"\n").rpartition(b" ")
    for altered in flips(base64.b64decode(signature)):
        evidence.note = head + b" " + base64.b64encode(altered) + b"\n"
        refused(go, evidence, "checkpoint: ")


def test_go_refuses_altered_bytes_of_the_signed_root(go, tmp_path, signer):
    evidence = Evidence(tmp_path, signer)
    note = evidence.note
    for root in flips(evidence.checkpoint.root):
        evidence.note = note.replace(
            base64.b64encode(evidence.checkpoint.root), base64.b64encode(root)
        )
        refused(go, evidence, "checkpoint: invalid signature")


def test_go_refuses_a_checkpoint_signed_over_another_root(go, tmp_path, signer):
    evidence = Evidence(tmp_path, signer)
    for root in flips(evidence.checkpoint.root):
        evidence.note = signednote.sign_checkpoint(evidence.checkpoint._replace(root=root), signer)
        refused(go, evidence, "inclusion proof of record 9 in tree 13: invalid transparency proof")


def test_go_refuses_altered_bytes_of_the_inclusion_proof(go, tmp_path, signer):
    evidence = Evidence(tmp_path, signer)
    proof = list(evidence.proof)
    for position, digest in enumerate(proof):
        for altered in flips(digest):
            evidence.proof = proof[:position] + [altered] + proof[position + 1 :]
            refused(go, evidence, "inclusion proof of record 9 in tree 13")


def test_go_refuses_altered_bytes_of_the_leaf(go, tmp_path, signer):
    evidence = Evidence(tmp_path, signer)
    for leaf in flips(LEAVES[9]):
        evidence.leaf = leaf
        refused(go, evidence, "inclusion proof of record 9 in tree 13")


def test_go_refuses_a_proof_moved_to_another_leaf(go, tmp_path, signer):
    evidence = Evidence(tmp_path, signer)
    evidence.index = 8
    refused(go, evidence, "inclusion proof of record 8 in tree 13")


def test_go_refuses_altered_bytes_of_the_consistency_proof(go, tmp_path, signer):
    evidence = Evidence(tmp_path, signer)
    consistency = list(evidence.consistency)
    for position, digest in enumerate(consistency):
        for altered in flips(digest):
            evidence.consistency = consistency[:position] + [altered] + consistency[position + 1 :]
            refused(go, evidence, "consistency proof from 7 to 13")


def test_go_refuses_an_earlier_checkpoint_of_a_rewritten_log(go, tmp_path, signer):
    evidence = Evidence(tmp_path, signer)
    for root in flips(evidence.old_checkpoint.root):
        evidence.old_note = signednote.sign_checkpoint(
            evidence.old_checkpoint._replace(root=root), signer
        )
        refused(go, evidence, "consistency proof from 7 to 13: invalid transparency proof")


def test_go_refuses_a_checkpoint_signed_with_another_key(go, tmp_path, signer):
    evidence = Evidence(tmp_path, signer)
    evidence.note = signednote.sign_checkpoint(
        evidence.checkpoint, signednote.Signer(signednote.generate_key(ORIGIN)[0])
    )
    refused(go, evidence, "checkpoint: note has no verifiable signatures")


def test_go_refuses_a_checkpoint_of_another_origin(go, tmp_path, signer):
    evidence = Evidence(tmp_path, signer)
    evidence.note = signednote.sign_checkpoint(
        evidence.checkpoint._replace(origin="elsewhere.example/1"), signer
    )
    refused(go, evidence, 'origin "elsewhere.example/1" is not the key\'s name')


def test_key_and_note_made_by_go_verify_here(go, tmp_path):
    text = signednote.format_checkpoint(signednote.Checkpoint(ORIGIN, 13, bytes(range(32))))
    (tmp_path / "text").write_text(text)
    result = go("sign", ORIGIN, tmp_path / "text")
    assert result.returncode == 0, result.stderr
    signer_key, verifier_key, note = result.stdout.split("\n", 2)
    verifier = signednote.Verifier(verifier_key)
    assert signednote.open_checkpoint(note.encode(), [verifier]) == (
        signednote.parse_checkpoint(text),
        verifier,
    )
    assert str(signednote.Signer(signer_key).verifier) == verifier_key
    assert signednote.sign_note(text, signednote.Signer(signer_key)) == note.encode()


def test_stored_hashes_are_laid_out_as_gos(go):
    leaves = [f"leaf {n}".encode() for n in range(100)]
    result = go("tree", len(leaves))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        base64.b64encode(h).decode() for h in tlog.all_stored_hashes(leaves)
    ]


# --- what the service itself serves ------------------------------------------


@pytest.fixture
def served(go, make_app, instance_path, tmp_path):
    """Files as tim-audit's endpoints serve them, after two checkpoints (of
    5 and then 12 events): the verifier key keygen printed, event 4's
    .tlog-proof, the first checkpoint and /checkpoint/consistency from it."""
    from conftest import event
    from dashboard import CREDENTIALS
    from tim_audit.log import db

    app = make_app(LOG_ORIGIN=ORIGIN)
    verifier_key = app.test_cli_runner().invoke(args=["keygen"]).output.splitlines()[-1]
    app.extensions["tim_audit"].close()
    app = make_app(LOG_ORIGIN=ORIGIN)
    log, client = app.extensions["tim_audit"], app.test_client()

    def sign():
        conn = db.connect(log.path)
        try:
            log.notary.sign(conn)
        finally:
            conn.close()

    for number in range(1, 13):
        log.append(event(number))
        if number in (5, 12):
            sign()
    first_proof = client.get("/history/1.tlog-proof", headers=CREDENTIALS).data
    files = {
        "key.vkey": f"{verifier_key}\n".encode(),
        "event.tlog-proof": client.get("/history/4.tlog-proof", headers=CREDENTIALS).data,
        "old.checkpoint": client.get("/checkpoints/1.checkpoint", headers=CREDENTIALS).data,
        "consistency.txt": client.get("/checkpoint/consistency?from=5").data,
    }
    assert client.get("/checkpoint").data == files["event.tlog-proof"].partition(b"\n\n")[2]
    assert first_proof.endswith(client.get("/checkpoint").data)  # proofs are against the latest
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return files


def test_go_accepts_what_the_service_serves(go, served, tmp_path):
    result = go("verify", *(tmp_path / name for name in served))
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


@pytest.mark.parametrize("name", ["event.tlog-proof", "old.checkpoint", "consistency.txt"])
def test_go_refuses_what_the_service_serves_with_any_byte_flipped(go, served, tmp_path, name):
    """Go decodes base64 leniently: a flip in the unused low bits of a last
    base64 digit before '=' leaves the bytes as they were, and Go accepts
    them. tim-audit's own parser refuses those too (canonical base64 only)."""
    data = served[name]
    key = served["key.vkey"].decode().strip()
    check = {
        "event.tlog-proof": lambda data: tlogproof.check_proof(data, key),
        "old.checkpoint": lambda data: signednote.open_checkpoint(data, [signednote.Verifier(key)]),
        "consistency.txt": tlogproof.parse_hashes,
    }[name]
    for position in range(len(data)):
        flipped = data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]
        (tmp_path / name).write_bytes(flipped)
        result = go("verify", *(tmp_path / n for n in served))
        if result.returncode == 0:
            assert flipped[position + 1 : position + 2] == b"=", (name, position)
            with pytest.raises(signednote.Malformed, match="not base64 in its canonical form"):
                check(flipped)
        else:
            assert result.returncode == 1, (name, position, result.stderr)
