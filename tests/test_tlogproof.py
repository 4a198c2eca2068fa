"""C2SP tlog-proof files and consistency proofs as text (tlogproof.py)."""

import base64

import pytest

from tim_audit.log import signednote, tlog, tlogproof
from test_signednote import ORIGIN, ROOT
from test_tlog import CONSISTENCY, INCLUSION, LEAVES, ROOTS, flipped, reader, store


@pytest.fixture
def signer():
    return signednote.Signer(signednote.generate_key(ORIGIN)[0])


# Proof files


def make_proof(signer, index=5, size=8, extra=None):
    """A tlog-proof of leaf ``index`` of LEAVES in a checkpoint of ``size``."""
    hashes = store(LEAVES)
    note = signednote.sign_checkpoint(
        signednote.Checkpoint(ORIGIN, size, tlog.tree_hash(size, reader(hashes))), signer
    )
    proof = tlog.inclusion_proof(size, index, reader(hashes))
    return tlogproof.format_proof(
        tlogproof.Proof(index, proof, note, LEAVES[index] if extra is None else extra)
    )


def test_proof_file_is_formatted_as_in_the_spec(signer):
    note = signednote.sign_checkpoint(signednote.Checkpoint(ORIGIN, 8, ROOTS[8]), signer)
    path = INCLUSION[2][2]
    data = tlogproof.format_proof(tlogproof.Proof(5, path, note, LEAVES[5]))
    assert (
        data
        == (
            "c2sp.org/tlog-proof@v1\nextra QEFCQw==\nindex 5\n"
            + "".join(base64.b64encode(h).decode() + "\n" for h in path)
            + "\n"
        ).encode()
        + note
    )
    assert tlogproof.parse_proof(data) == tlogproof.Proof(5, tuple(path), note, LEAVES[5])


def test_proof_file_without_extra_leaves_the_line_out(signer):
    note = signednote.sign_checkpoint(signednote.Checkpoint(ORIGIN, 1, ROOTS[1]), signer)
    data = tlogproof.format_proof(tlogproof.Proof(0, [], note))
    assert data == b"c2sp.org/tlog-proof@v1\nindex 0\n\n" + note
    assert tlogproof.parse_proof(data) == tlogproof.Proof(0, (), note, None)


def test_spec_example_proof_parses():
    checkpoint = (
        "example.com/fancylog\n109482\nsFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=\n\n"
        "— example.com/fancylog hI2DJw[...]1roloI=\n— witness1.example mJirIklj[...]qY9v2B/5bg==\n"
        "— witness2.example TnKKVHLX[...]xwYwrSjgow==\n— witness3.example S4X82uH5[...]3oEcROGLFQ==\n"
    ).encode()
    hashes = [
        "gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=",
        "B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=",
        "EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=",
        "RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=",
        "AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=",
    ]
    extra = "YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ"
    example = (
        f"c2sp.org/tlog-proof@v1\nextra {extra}\nindex 73894\n"
        + "".join(h + "\n" for h in hashes)
        + "\n"
    ).encode() + checkpoint
    assert tlogproof.parse_proof(example) == tlogproof.Proof(
        73894, tuple(base64.b64decode(h) for h in hashes), checkpoint, base64.b64decode(extra)
    )


def test_check_proof_says_what_it_proved(signer):
    proved = tlogproof.check_proof(make_proof(signer), str(signer.verifier))
    assert proved == tlogproof.Proved(5, 8, ORIGIN, signer.key_id, LEAVES[5])


def test_check_proof_of_every_leaf_of_every_size(signer):
    for size in range(1, 9):
        for index in range(size):
            assert (
                tlogproof.check_proof(make_proof(signer, index, size), str(signer.verifier)).leaf
                == LEAVES[index]
            )


def test_every_altered_byte_of_a_proof_file_is_refused(signer):
    data = make_proof(signer)
    for position in range(len(data)):
        with pytest.raises(tlog.TlogError):
            tlogproof.check_proof(flipped(data, position), str(signer.verifier))


def test_edited_event_fails_its_proof(signer):
    with pytest.raises(tlog.ProofError, match="does not lead from the leaf hash to the root hash"):
        tlogproof.check_proof(make_proof(signer, extra=b"@ABD"), str(signer.verifier))


def test_proof_moved_to_another_event_is_refused(signer):
    data = make_proof(signer).replace(b"index 5", b"index 4")
    with pytest.raises(tlog.ProofError):
        tlogproof.check_proof(data, str(signer.verifier))
    with pytest.raises(tlog.ProofError):
        tlogproof.check_proof(make_proof(signer, extra=LEAVES[4]), str(signer.verifier))


def test_proof_of_a_leaf_beyond_the_checkpoint_is_refused(signer):
    data = make_proof(signer, 3, 4).replace(b"index 3", b"index 4")
    with pytest.raises(tlog.ProofError, match="leaf 4 cannot be in a tree of 4 leaves"):
        tlogproof.check_proof(data, str(signer.verifier))


def test_proof_checked_with_another_key_is_refused(signer):
    _, other = signednote.generate_key(ORIGIN)
    with pytest.raises(signednote.UnknownKey):
        tlogproof.check_proof(make_proof(signer), other)


def test_proof_of_another_origin_is_refused(signer):
    with pytest.raises(signednote.WrongOrigin):
        tlogproof.check_proof(
            make_proof(signer), str(signer.verifier), origin="im-audit.example.com/other"
        )


def test_proof_without_leaf_data_is_refused(signer):
    note = signednote.sign_checkpoint(signednote.Checkpoint(ORIGIN, 1, ROOTS[1]), signer)
    with pytest.raises(signednote.Malformed, match="no extra line"):
        tlogproof.check_proof(
            tlogproof.format_proof(tlogproof.Proof(0, [], note)), str(signer.verifier)
        )


def test_proof_checked_with_a_malformed_key_is_refused(signer):
    with pytest.raises(signednote.Malformed, match="verifier key"):
        tlogproof.check_proof(make_proof(signer), "not a key")


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ((b"c2sp.org/tlog-proof@v1", b"c2sp.org/tlog-proof@v2"), "does not start with the line"),
        ((b"index 5\n", b""), "no index line"),
        ((b"index 5", b"index 05"), "the index is not a decimal number"),
        ((b"index 5", b"index  5"), "the index is not a decimal number"),
        ((b"extra QEFCQw==\nindex 5", b"index 5\nextra QEFCQw=="), "proof hash 1 is not base64"),
        ((b"extra QEFCQw==", b"extra QEFCQw="), "the extra data is not base64"),
        ((b"extra QEFCQw==", b"extra QEFCQx=="), "canonical"),
        ((b"\n\n", b"\n"), "no blank line before its checkpoint"),
        ((b"index 5\n", "index 5\nвосемь\n".encode()), "not ASCII"),
    ],
)
def test_malformed_proof_file_says_what_is_wrong(signer, replace, message):
    data = make_proof(signer).replace(*replace)
    with pytest.raises(signednote.Malformed, match=message):
        tlogproof.check_proof(data, str(signer.verifier))


# Hashes one per line (consistency proofs)


def test_hashes_are_one_base64_line_each():
    proof = CONSISTENCY[2][2]
    data = tlogproof.format_hashes(proof)
    assert data == "".join(base64.b64encode(h).decode() + "\n" for h in proof).encode()
    assert tlogproof.parse_hashes(data) == proof


def test_no_hashes_is_an_empty_text():
    assert tlogproof.format_hashes([]) == b""
    assert tlogproof.parse_hashes(b"") == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (f"{ROOT}".encode(), "does not end with a newline"),
        (f"{ROOT}\r\n".encode(), "hash 1 is not base64"),
        (f"{ROOT}\n\n{ROOT}\n".encode(), "hash 2 is 0 bytes"),
        (f"{ROOT}\n{ROOT[:-4]}\n".encode(), "hash 2 is 30 bytes"),
        (f"{ROOT}\n\u00e9\n".encode(), "not ASCII"),
    ],
)
def test_malformed_hashes_say_what_is_wrong(data, message):
    with pytest.raises(signednote.Malformed, match=message):
        tlogproof.parse_hashes(data)
