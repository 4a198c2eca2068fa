import base64
import functools
import hashlib
import itertools
import random

import pytest

from tim_audit.log import tlog

# The RFC 6962 test vectors of Certificate Transparency, as published in
# github.com/transparency-dev/merkle (testonly/constants.go, and the proofs
# of cmd/proofgen/main.go; Apache-2.0): eight leaves and the root hash of
# each of their first 1..8.
LEAVES = [
    bytes.fromhex(leaf)
    for leaf in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = {
    size: bytes.fromhex(root)
    for size, root in enumerate(
        (
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ),
        1,
    )
}
H = {
    name: bytes.fromhex(value)
    for name, value in {
        "leaf1": "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "leaf4": "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "leaf6": "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "0-2": "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "2-4": "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "4-6": "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "6-8": "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "0-4": "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4-8": "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        "leaf0": "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    }.items()
}
# (index, size, audit path); proofgen counts leaves from 1, these from 0.
INCLUSION = [
    (0, 1, []),
    (0, 8, [H["leaf1"], H["2-4"], H["4-8"]]),
    (5, 8, [H["leaf4"], H["6-8"], H["0-4"]]),
    (2, 3, [H["0-2"]]),
    (1, 5, [H["leaf0"], H["2-4"], H["leaf4"]]),
]
# (m, n, consistency proof)
CONSISTENCY = [
    (1, 1, []),
    (1, 8, [H["leaf1"], H["2-4"], H["4-8"]]),
    (6, 8, [H["4-6"], H["6-8"], H["0-4"]]),
    (2, 5, [H["2-4"], H["leaf4"]]),
    (6, 7, [H["4-6"], H["leaf6"], H["0-4"]]),
]

# The examples of Go's golang.org/x/mod/sumdb/note (note.go and
# note_test.go; BSD-style license).
PETER_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
PETER_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIGNATURE = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FF"
    "YC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIGNATURE = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGr"
    "Q5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)
PETER_NOTE = (PETER_TEXT + "\n" + PETER_SIGNATURE).encode()

ORIGIN = "im-audit.example.com/1400000001"


# RFC 6962 §2.1, literally: MTH, PATH and PROOF over a list of leaves; the
# reference the stored-hash functions must agree with.


def reference(leaves):
    @functools.cache
    def mth(lo, hi):
        if hi - lo == 0:
            return hashlib.sha256().digest()
        if hi - lo == 1:
            return tlog.leaf_hash(leaves[lo])
        k = split(hi - lo)
        return tlog.node_hash(mth(lo, lo + k), mth(lo + k, hi))

    def path(m, lo, hi):
        if hi - lo == 1:
            return []
        k = split(hi - lo)
        if m < k:
            return path(m, lo, lo + k) + [mth(lo + k, hi)]
        return path(m - k, lo + k, hi) + [mth(lo, lo + k)]

    def subproof(m, lo, hi, b):
        if m == hi - lo:
            return [] if b else [mth(lo, hi)]
        k = split(hi - lo)
        if m <= k:
            return subproof(m, lo, lo + k, b) + [mth(lo + k, hi)]
        return subproof(m - k, lo + k, hi, False) + [mth(lo, lo + k)]

    return mth, path, subproof


def split(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def store(leaves):
    """The stored hashes of ``leaves``, from RFC 6962's MTH alone: the hash
    of each complete subtree, at the index Go's layout gives it."""
    mth, _, _ = reference(leaves)
    hashes = [None] * tlog.stored_hash_count(len(leaves))
    for level in range(len(leaves).bit_length()):
        for n in range(len(leaves) >> level):
            hashes[tlog.stored_hash_index(level, n)] = mth(n << level, (n + 1) << level)
    return hashes


def reader(hashes, reads=None):
    """read_hashes over a list, recording each call in ``reads``."""

    def read(indexes):
        if reads is not None:
            reads.append(list(indexes))
        return [hashes[index] for index in indexes]

    return read


def flipped(data, position=0):
    return data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]


# Hashes


def test_hashes_match_rfc6962_hasher_vectors():
    # From transparency-dev/merkle rfc6962/rfc6962_test.go.
    assert (
        tlog.leaf_hash(b"").hex()
        == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert (
        tlog.leaf_hash(b"L123456").hex()
        == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert (
        tlog.node_hash(b"N123", b"N456").hex()
        == "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


@pytest.mark.parametrize("size", ROOTS)
def test_tree_head_matches_the_reference_root(size):
    assert tlog.tree_hash(size, reader(store(LEAVES))) == ROOTS[size]


def test_empty_tree_hash_is_the_sha256_of_nothing():
    assert tlog.tree_hash(0, reader([])).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proof_matches_the_reference_vector(index, size, proof):
    assert tlog.inclusion_proof(size, index, reader(store(LEAVES))) == proof


@pytest.mark.parametrize(("m", "n", "proof"), CONSISTENCY)
def test_consistency_proof_matches_the_reference_vector(m, n, proof):
    assert tlog.consistency_proof(m, n, reader(store(LEAVES))) == proof


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_reference_inclusion_proof_verifies(index, size, proof):
    tlog.verify_inclusion(size, ROOTS[size], index, tlog.leaf_hash(LEAVES[index]), proof)


@pytest.mark.parametrize(("m", "n", "proof"), CONSISTENCY)
def test_reference_consistency_proof_verifies(m, n, proof):
    tlog.verify_consistency(m, ROOTS[m], n, ROOTS[n], proof)


def inclusion_mutations(index, size, proof):
    """The altered inclusion proofs of transparency-dev's proofgen, each
    as the arguments of verify_inclusion."""
    root, leaf = ROOTS[size], tlog.leaf_hash(LEAVES[index])
    yield "index - 1", (size, root, index - 1, leaf, proof)
    yield "index + 1", (size, root, index + 1, leaf, proof)
    yield "index ^ 2", (size, root, index ^ 2, leaf, proof)
    yield "size * 2", (size * 2, root, index, leaf, proof)
    yield "size // 2", (size // 2, root, index, leaf, proof)
    yield "wrong leaf", (size, root, index, b"WrongLeaf", proof)
    yield "empty root", (size, hashlib.sha256().digest(), index, leaf, proof)
    yield "trailing root", (size, root, index, leaf, proof + [root])
    yield "preceding root", (size, root, index, leaf, [root] + proof)
    yield "preceding garbage", (size, root, index, leaf, [b""] + proof)
    if proof:
        yield "removed hash", (size, root, index, leaf, proof[:-1])
    for position in range(len(proof)):
        altered = list(proof)
        altered[position] = flipped(altered[position])
        yield f"flipped proof[{position}]", (size, root, index, leaf, altered)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(args, id=f"{vector[0]}-{vector[1]}-{name}")
        for vector in INCLUSION
        for name, args in inclusion_mutations(*vector)
    ],
)
def test_altered_inclusion_proof_is_refused(args):
    with pytest.raises(tlog.ProofError):
        tlog.verify_inclusion(*args)


def consistency_mutations(m, n, proof):
    m_root, n_root = ROOTS[m], ROOTS[n]
    yield "m - 1", (m - 1, m_root, n, n_root, proof)
    yield "m + 1", (m + 1, m_root, n, n_root, proof)
    yield "m ^ 2", (m ^ 2, m_root, n, n_root, proof)
    yield "n * 2", (m, m_root, n * 2, n_root, proof)
    yield "n // 2", (m, m_root, n // 2, n_root, proof)
    yield "wrong m root", (m, b"WrongRoot", n, n_root, proof)
    yield "wrong n root", (m, m_root, n, b"WrongRoot", proof)
    if m_root != n_root:
        yield "swapped roots", (m, n_root, n, m_root, proof)
    yield "trailing garbage", (m, m_root, n, n_root, proof + [b""])
    yield "trailing m root", (m, m_root, n, n_root, proof + [m_root])
    yield "preceding n root", (m, m_root, n, n_root, [n_root] + proof)
    if proof:
        yield "empty proof", (m, m_root, n, n_root, [])
        yield "preceding proof[0]", (m, m_root, n, n_root, proof[:1] + proof)
        yield "truncated", (m, m_root, n, n_root, proof[:-1])
    for position in range(len(proof)):
        altered = list(proof)
        altered[position] = flipped(altered[position])
        yield f"flipped proof[{position}]", (m, m_root, n, n_root, altered)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(args, id=f"{vector[0]}-{vector[1]}-{name}")
        for vector in CONSISTENCY
        for name, args in consistency_mutations(*vector)
    ],
)
def test_altered_consistency_proof_is_refused(args):
    with pytest.raises(tlog.ProofError):
        tlog.verify_consistency(*args)


def test_inclusion_refusal_says_what_failed():
    with pytest.raises(
        tlog.ProofError, match="an inclusion proof of leaf 5 in 8 leaves has 3 hashes, not 2"
    ):
        tlog.verify_inclusion(8, ROOTS[8], 5, tlog.leaf_hash(LEAVES[5]), INCLUSION[2][2][:2])
    with pytest.raises(tlog.ProofError, match="does not lead from the leaf hash to the root hash"):
        tlog.verify_inclusion(8, ROOTS[8], 5, tlog.leaf_hash(LEAVES[4]), INCLUSION[2][2])
    with pytest.raises(tlog.ProofError, match="leaf 8 cannot be in a tree of 8 leaves"):
        tlog.verify_inclusion(8, ROOTS[8], 8, tlog.leaf_hash(LEAVES[4]), [])


def test_consistency_refusal_says_what_failed():
    proof = CONSISTENCY[2][2]
    with pytest.raises(
        tlog.ProofError, match="a tree of 6 leaves cannot extend a larger tree of 8"
    ):
        tlog.verify_consistency(8, ROOTS[8], 6, ROOTS[6], proof)
    with pytest.raises(tlog.ProofError, match="root hash of the earlier tree of 6 leaves"):
        tlog.verify_consistency(6, ROOTS[5], 8, ROOTS[8], proof)
    with pytest.raises(tlog.ProofError, match="root hash of the later tree of 8 leaves"):
        tlog.verify_consistency(6, ROOTS[6], 8, ROOTS[7], proof)
    with pytest.raises(tlog.ProofError, match="at least one leaf, not 0"):
        tlog.verify_consistency(0, ROOTS[1], 8, ROOTS[8], [])


# Stored hashes


def test_stored_hashes_follow_gos_layout():
    """Leaf 0; leaf 1 and the subtree 0-2; leaf 2; leaf 3 and the subtrees
    2-4 and 0-4; leaf 4 ... (Crosby and Wallach's order)."""
    order = [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1), (2, 0), (0, 4), (0, 5), (1, 2)]
    assert [tlog.stored_hash_index(level, n) for level, n in order] == list(range(10))
    assert tlog.stored_hash_index(3, 1) == 29  # leaf 15 at 26, the subtrees it completes at 27-29
    mth, _, _ = reference(LEAVES)
    spans = [(0, 1), (1, 2), (0, 2), (2, 3), (3, 4), (2, 4), (0, 4), (4, 5), (5, 6), (4, 6)]
    assert store(LEAVES)[:10] == [mth(lo, hi) for lo, hi in spans]


def test_appending_a_leaf_reads_only_the_frontier_it_completes():
    hashes = store(LEAVES[:7])
    frontier = tlog.frontier_indexes(7)
    assert frontier == [
        tlog.stored_hash_index(2, 0),
        tlog.stored_hash_index(1, 2),
        tlog.stored_hash_index(0, 6),
    ]
    tree = tlog.Appender(7, [hashes[index] for index in frontier])
    assert tree.append(LEAVES[7]) == store(LEAVES)[len(hashes) :]


def test_leaf_that_completes_no_subtree_stores_its_leaf_hash_alone():
    hashes = store(LEAVES[:6])
    tree = tlog.Appender(6, [hashes[index] for index in tlog.frontier_indexes(6)])
    assert tree.append(LEAVES[6]) == [tlog.leaf_hash(LEAVES[6])]


def test_all_stored_hashes_equals_appending_one_leaf_at_a_time():
    leaves = [f"leaf {i}".encode() for i in range(100)]
    assert list(tlog.all_stored_hashes(leaves)) == store(leaves)


def test_frontier_indexes_are_the_largest_complete_subtrees():
    assert tlog.frontier_indexes(0) == []
    assert tlog.frontier_indexes(13) == [
        tlog.stored_hash_index(3, 0),
        tlog.stored_hash_index(2, 2),
        tlog.stored_hash_index(0, 12),
    ]


def test_appending_to_a_tree_from_its_frontier_stores_what_appending_from_the_start_does():
    leaves = [f"leaf {i}".encode() for i in range(70)]
    hashes = store(leaves)
    for size in range(len(leaves)):
        tree = tlog.Appender(size, [hashes[index] for index in tlog.frontier_indexes(size)])
        for n in range(size, len(leaves)):
            assert (
                tree.append(leaves[n])
                == hashes[tlog.stored_hash_count(n) : tlog.stored_hash_count(n + 1)]
            )
            assert tree.root() == tlog.tree_hash(n + 1, reader(hashes))


def test_an_empty_tree_has_the_rfc_root_of_nothing():
    assert tlog.Appender().root() == hashlib.sha256().digest()


def test_a_frontier_of_another_size_is_refused():
    with pytest.raises(ValueError, match="a tree of 13 leaves has 3 frontier hashes, not 2"):
        tlog.Appender(13, [bytes(32)] * 2)


@pytest.fixture(scope="module")
def sweep():
    """70 leaves, their stored hashes and the RFC's functions over them."""
    leaves = [f"event {i}".encode() for i in range(70)]
    return leaves, store(leaves), reference(leaves)


def test_stored_hash_count_counts_the_stored_hashes(sweep):
    leaves, _, _ = sweep
    for size in range(len(leaves) + 1):
        assert tlog.stored_hash_count(size) == len(store(leaves[:size]))


def test_tree_hash_from_stored_hashes_equals_rfc_mth(sweep):
    leaves, hashes, (mth, _, _) = sweep
    for size in range(len(leaves) + 1):
        assert tlog.tree_hash(size, reader(hashes)) == mth(0, size)


def test_inclusion_proofs_from_stored_hashes_equal_rfc_path_and_verify(sweep):
    leaves, hashes, (mth, path, _) = sweep
    for size in range(1, len(leaves) + 1):
        for index in range(size):
            proof = tlog.inclusion_proof(size, index, reader(hashes))
            assert proof == path(index, 0, size)
            tlog.verify_inclusion(size, mth(0, size), index, tlog.leaf_hash(leaves[index]), proof)


def test_consistency_proofs_from_stored_hashes_equal_rfc_proof_and_verify(sweep):
    leaves, hashes, (mth, _, subproof) = sweep
    for n in range(1, len(leaves) + 1):
        for m in range(1, n + 1):
            proof = tlog.consistency_proof(m, n, reader(hashes))
            assert proof == subproof(m, 0, n, True)
            tlog.verify_consistency(m, mth(0, m), n, mth(0, n), proof)


def test_every_flipped_proof_hash_is_refused(sweep):
    leaves, hashes, (mth, _, _) = sweep
    rng = random.Random(6962)
    for _ in range(200):
        n = rng.randint(2, len(leaves))
        index, m = rng.randrange(n), rng.randint(1, n - 1)
        proof = tlog.inclusion_proof(n, index, reader(hashes))
        for position in range(len(proof)):
            altered = (
                proof[:position]
                + [flipped(proof[position], rng.randrange(32))]
                + proof[position + 1 :]
            )
            with pytest.raises(tlog.ProofError):
                tlog.verify_inclusion(n, mth(0, n), index, tlog.leaf_hash(leaves[index]), altered)
        proof = tlog.consistency_proof(m, n, reader(hashes))
        for position in range(len(proof)):
            altered = (
                proof[:position]
                + [flipped(proof[position], rng.randrange(32))]
                + proof[position + 1 :]
            )
            with pytest.raises(tlog.ProofError):
                tlog.verify_consistency(m, mth(0, m), n, mth(0, n), altered)


def test_reads_are_one_call_in_increasing_order(sweep):
    leaves, hashes, _ = sweep
    for size in range(1, len(leaves) + 1):
        for prove in (
            functools.partial(tlog.tree_hash, size),
            functools.partial(tlog.inclusion_proof, size, size // 3),
            functools.partial(tlog.consistency_proof, size // 2 or 1, size),
        ):
            reads = []
            prove(reader(hashes, reads))
            assert len(reads) <= 1
            assert all(a < b for indexes in reads for a, b in itertools.pairwise(indexes))
        # What an Appender starts from, read in one call by its caller.
        assert all(a < b for a, b in itertools.pairwise(tlog.frontier_indexes(size)))


class Lazy:
    """Stored hashes of a tree too big to build in a test: each index reads
    as the hash of its number, and the reads are counted."""

    def __init__(self, size):
        self.count = tlog.stored_hash_count(size)
        self.reads = []

    def __call__(self, indexes):
        assert all(0 <= index < self.count for index in indexes)
        self.reads.append(len(indexes))
        return [hashlib.sha256(str(index).encode()).digest() for index in indexes]


@pytest.mark.parametrize("size", [1_000_000, 1_048_576, 1_048_575, 2**40 + 12345])
def test_a_million_leaves_take_o_log_n_stored_hashes(size):
    bits = size.bit_length()
    rng = random.Random(size)
    lazy = Lazy(size)
    tlog.tree_hash(size, lazy)
    for _ in range(20):
        tlog.inclusion_proof(size, rng.randrange(size), lazy)
        tlog.consistency_proof(rng.randint(1, size), size, lazy)
    assert lazy.reads[0] <= bits
    assert max(lazy.reads) <= 2 * bits


def test_proof_of_a_leaf_outside_the_tree_is_a_value_error():
    with pytest.raises(ValueError, match="leaf 8 is not in a tree of 8 leaves"):
        tlog.inclusion_proof(8, 8, reader(store(LEAVES)))
    with pytest.raises(ValueError, match="0 < m <= n"):
        tlog.consistency_proof(0, 8, reader(store(LEAVES)))
    with pytest.raises(ValueError, match="0 < m <= n"):
        tlog.consistency_proof(8, 7, reader(store(LEAVES)))


@pytest.mark.parametrize(
    "read",
    [
        lambda indexes: [],
        lambda indexes: [b"short"] * len(indexes),
    ],
)
def test_storage_missing_hashes_is_a_value_error(read):
    with pytest.raises(ValueError, match="read_hashes returned"):
        tlog.inclusion_proof(8, 3, read)


# Keys and signed notes


def test_go_signer_key_signs_the_same_note_as_go():
    assert tlog.sign_note(PETER_TEXT, tlog.Signer(PETER_SIGNER)) == PETER_NOTE


def test_signer_key_gives_its_verifier_key():
    assert str(tlog.Signer(PETER_SIGNER).verifier) == PETER


def test_go_note_opens():
    text, signers = tlog.open_note(PETER_NOTE, [tlog.Verifier(PETER)])
    assert text == PETER_TEXT
    assert [(signer.name, signer.key_id) for signer in signers] == [("PeterNeumann", "c74f20a3")]


def test_spec_example_note_opens():
    verifier = tlog.Verifier(
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
    )
    note = (
        "This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfX"
        "ppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
    ).encode()
    assert tlog.open_note(note, [verifier]).text == "This is an example message.\n"


def test_key_id_is_the_sha256_of_name_newline_type_and_public_key():
    public = base64.b64decode(PETER.split("+")[2])
    assert hashlib.sha256(b"PeterNeumann\n" + public).hexdigest()[:8] == tlog.Verifier(PETER).key_id


def test_generated_key_signs_notes_its_verifier_opens():
    signer_key, verifier_key = tlog.generate_key(ORIGIN)
    signer = tlog.Signer(signer_key)
    assert signer_key.startswith(f"PRIVATE+KEY+{ORIGIN}+{signer.key_id}+")
    assert str(signer.verifier) == verifier_key
    note = tlog.sign_note("hello\n", signer)
    assert tlog.open_note(note, [tlog.Verifier(verifier_key)]).text == "hello\n"


def test_two_generated_keys_differ():
    assert tlog.generate_key(ORIGIN) != tlog.generate_key(ORIGIN)


@pytest.mark.parametrize("name", ["", "with space", "a+b", "tab\there", "nbsp\u00a0"])
def test_key_name_must_be_a_valid_note_name(name):
    with pytest.raises(ValueError, match="cannot name a key"):
        tlog.generate_key(name)


def manglings(text):
    """Go's note_test manglings: every proper substring, every byte plus one."""
    for i in range(len(text) + 1):
        for j in range(i + 1, len(text) + 1):
            if (i, j) != (0, len(text)):
                yield text[i:j]
    for i in range(len(text)):
        yield text[:i] + chr(ord(text[i]) + 1) + text[i + 1 :]


def test_every_mangled_verifier_key_is_malformed():
    for mangled in manglings(PETER):
        with pytest.raises(tlog.Malformed):
            tlog.Verifier(mangled)


def test_every_mangled_signer_key_is_malformed():
    for mangled in manglings(PETER_SIGNER):
        with pytest.raises(tlog.Malformed):
            tlog.Signer(mangled)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==", "canonical"),
        (
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "not an Ed25519 key",
        ),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "ID does not match"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", "not base64"),
        ("PeterNeumann+c74f20a3", "not an Ed25519 key"),
        (
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "name\\+keyid\\+base64",
        ),
        ("PeterNeumann+0xc74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 hex digits"),
    ],
)
def test_malformed_verifier_key_says_what_is_wrong(key, message):
    # The first two are Go's note_test: a wrong length key (whose base64
    # is also not canonical) and an unknown algorithm, each with a key ID
    # that matches.
    with pytest.raises(tlog.Malformed, match=message):
        tlog.Verifier(key)


def test_note_by_a_known_and_an_unknown_key_opens():
    note = (PETER_TEXT + "\n" + PETER_SIGNATURE + ENOCH_SIGNATURE).encode()
    assert tlog.open_note(note, [tlog.Verifier(PETER)]).signers[0].name == "PeterNeumann"
    both = tlog.open_note(note, [tlog.Verifier(PETER), tlog.Verifier(ENOCH)])
    assert [signer.name for signer in both.signers] == ["PeterNeumann", "EnochRoot"]


def test_repeated_signatures_are_counted_once():
    note = (PETER_TEXT + "\n" + PETER_SIGNATURE * 2 + ENOCH_SIGNATURE * 2).encode()
    assert len(tlog.open_note(note, [tlog.Verifier(PETER)]).signers) == 1


def test_note_signed_by_another_key_names_its_signer():
    note = (PETER_TEXT + "\n" + ENOCH_SIGNATURE).encode()
    with pytest.raises(
        tlog.UnknownKey,
        match="not signed by PeterNeumann\\+c74f20a3: its signatures are by EnochRoot\\+af0cfe78",
    ):
        tlog.open_note(note, [tlog.Verifier(PETER)])


def test_note_signed_by_a_key_of_the_same_name_is_unknown():
    _, other = tlog.generate_key("PeterNeumann")
    with pytest.raises(tlog.UnknownKey):
        tlog.open_note(PETER_NOTE, [tlog.Verifier(other)])


def test_altered_text_fails_the_signature():
    note = PETER_NOTE.replace(b"answer", b"Answer")
    with pytest.raises(
        tlog.BadSignature, match="signature by PeterNeumann\\+c74f20a3 does not verify"
    ):
        tlog.open_note(note, [tlog.Verifier(PETER)])


def test_altered_signature_fails():
    # Go's note_test: four base64 characters slipped into the signature.
    signature = PETER_SIGNATURE[:60] + "ABCD" + PETER_SIGNATURE[60:]
    with pytest.raises(tlog.BadSignature):
        tlog.open_note((PETER_TEXT + "\n" + signature).encode(), [tlog.Verifier(PETER)])


def test_bad_signature_by_a_known_key_refuses_the_note_even_beside_a_good_one():
    signature = PETER_SIGNATURE[:60] + "ABCD" + PETER_SIGNATURE[60:]
    note = (PETER_TEXT + "\n" + PETER_SIGNATURE + signature).encode()
    with pytest.raises(tlog.BadSignature):
        tlog.open_note(note, [tlog.Verifier(PETER)])


@pytest.mark.parametrize(
    ("note", "message"),
    [
        # Go's note_test bad messages first.
        (PETER_TEXT, "no blank line"),
        (PETER_TEXT + "\n", "does not end with a signature line"),
        (PETER_TEXT + "\n" + PETER_SIGNATURE[:-1], "does not end with a signature line"),
        ("\x01" + PETER_TEXT + "\n" + PETER_SIGNATURE, "control characters"),
        ("\xff" + PETER_TEXT + "\n" + PETER_SIGNATURE, None),
        (
            PETER_TEXT
            + "\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqd"
            "ngotpRZb6KE6RyyBwJnAM=\n",
            "not base64",
        ),
        (
            PETER_TEXT + "\n" + PETER_SIGNATURE + "Unexpected line.\n",
            "a signature line is an em dash",
        ),
        (PETER_TEXT + "\n" + PETER_SIGNATURE * 101, "more than 100 signatures"),
        (PETER_TEXT + "\n" + PETER_SIGNATURE.replace("—", "-"), "a signature line is an em dash"),
        (PETER_TEXT + "\n" + PETER_SIGNATURE.replace("\n", "\r\n"), "control characters"),
        (PETER_TEXT + "\n— PeterNeumann x08go/Y\n", "not base64"),
        (PETER_TEXT + "\n— PeterNeumann x08gow==\n", "too short"),
        (PETER_TEXT + "\n" + PETER_SIGNATURE.replace("AM=", "AN="), "canonical"),
    ],
)
def test_malformed_note_says_what_is_wrong(note, message):
    data = b"\xff" + note[1:].encode() if note.startswith("\xff") else note.encode()
    with pytest.raises(tlog.Malformed, match=message or "not UTF-8"):
        tlog.open_note(data, [tlog.Verifier(PETER)])


@pytest.mark.parametrize("text", ["no final newline", "a\rb\n", "tab\there\n"])
def test_sign_refuses_text_that_would_make_a_malformed_note(text):
    with pytest.raises(ValueError, match="ends with a newline"):
        tlog.sign_note(text, tlog.Signer(PETER_SIGNER))


def test_note_text_may_hold_blank_lines():
    text = "first\n\nsecond\n"
    note = tlog.sign_note(text, tlog.Signer(PETER_SIGNER))
    assert tlog.open_note(note, [tlog.Verifier(PETER)]).text == text


# Checkpoints

SPEC_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)


def test_checkpoint_is_formatted_as_in_the_spec():
    checkpoint = tlog.Checkpoint(
        "example.com/behind-the-sofa",
        20852163,
        base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="),
    )
    assert tlog.format_checkpoint(checkpoint) == SPEC_CHECKPOINT
    assert tlog.parse_checkpoint(SPEC_CHECKPOINT) == checkpoint


def test_checkpoint_extension_lines_round_trip():
    checkpoint = tlog.Checkpoint(ORIGIN, 0, ROOTS[1], ("Timestamp: 1700000000", "x"))
    text = tlog.format_checkpoint(checkpoint)
    assert text == f"{ORIGIN}\n0\n{base64.b64encode(ROOTS[1]).decode()}\nTimestamp: 1700000000\nx\n"
    assert tlog.parse_checkpoint(text) == checkpoint


ROOT = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("example.com/log\n5\n", "at least three non-empty lines"),
        (f"\n5\n{ROOT}\n", "at least three non-empty lines"),
        (f"example.com/log\n5\n{ROOT}\n\nextension\n", "at least three non-empty lines"),
        (f"example.com/log\n5\n{ROOT}", "does not end with a newline"),
        (f"example.com/log\n05\n{ROOT}\n", "tree size"),
        (f"example.com/log\n-5\n{ROOT}\n", "tree size"),
        (f"example.com/log\n+5\n{ROOT}\n", "tree size"),
        (f"example.com/log\n٥\n{ROOT}\n", "tree size"),
        (f"example.com/log\n{2**63}\n{ROOT}\n", "tree size"),
        (f"example.com/log\n5\n{ROOT[:-4]}\n", "the root hash is 30 bytes"),
        (f"example.com/log\n5\n{ROOT[:-2]}J=\n", "canonical"),
        (f"example.com/log\n5\n{ROOT.rstrip('=')}\n", "not base64"),
    ],
)
def test_malformed_checkpoint_says_what_is_wrong(text, message):
    with pytest.raises(tlog.Malformed, match=message):
        tlog.parse_checkpoint(text)


@pytest.mark.parametrize(
    "checkpoint",
    [
        tlog.Checkpoint("", 1, ROOTS[1]),
        tlog.Checkpoint("two\nlines", 1, ROOTS[1]),
        tlog.Checkpoint(ORIGIN, -1, ROOTS[1]),
        tlog.Checkpoint(ORIGIN, 1, ROOTS[1][:31]),
        tlog.Checkpoint(ORIGIN, 1, ROOTS[1], ("",)),
    ],
)
def test_checkpoint_that_cannot_be_written_is_a_value_error(checkpoint):
    with pytest.raises(ValueError, match="a checkpoint is"):
        tlog.format_checkpoint(checkpoint)


@pytest.fixture
def signer():
    return tlog.Signer(tlog.generate_key(ORIGIN)[0])


def test_signed_checkpoint_opens_with_its_key(signer):
    checkpoint = tlog.Checkpoint(ORIGIN, 8, ROOTS[8])
    note = tlog.sign_checkpoint(checkpoint, signer)
    assert note.startswith(tlog.format_checkpoint(checkpoint).encode() + "\n— ".encode())
    assert tlog.open_checkpoint(note, [signer.verifier]) == (checkpoint, signer.verifier)


def test_checkpoint_of_another_origin_is_refused(signer):
    note = tlog.sign_checkpoint(tlog.Checkpoint("im-audit.example.com/other", 8, ROOTS[8]), signer)
    with pytest.raises(
        tlog.WrongOrigin, match=f"of the log 'im-audit.example.com/other', not '{ORIGIN}'"
    ):
        tlog.open_checkpoint(note, [signer.verifier])


def test_checkpoint_origin_can_differ_from_the_key_name_when_given(signer):
    checkpoint = tlog.Checkpoint(f"{ORIGIN}/quarantine", 8, ROOTS[8])
    note = tlog.sign_checkpoint(checkpoint, signer)
    assert tlog.open_checkpoint(note, [signer.verifier], f"{ORIGIN}/quarantine")[0] == checkpoint
    with pytest.raises(tlog.WrongOrigin):
        tlog.open_checkpoint(note, [signer.verifier], ORIGIN)


def test_checkpoint_signed_with_another_key_is_refused(signer):
    other = tlog.Signer(tlog.generate_key(ORIGIN)[0])
    note = tlog.sign_checkpoint(tlog.Checkpoint(ORIGIN, 8, ROOTS[8]), other)
    with pytest.raises(tlog.UnknownKey, match=f"not signed by {ORIGIN}\\+{signer.key_id}"):
        tlog.open_checkpoint(note, [signer.verifier])


# Proof files


def make_proof(signer, index=5, size=8, extra=None):
    """A tlog-proof of leaf ``index`` of LEAVES in a checkpoint of ``size``."""
    hashes = store(LEAVES)
    note = tlog.sign_checkpoint(
        tlog.Checkpoint(ORIGIN, size, tlog.tree_hash(size, reader(hashes))), signer
    )
    proof = tlog.inclusion_proof(size, index, reader(hashes))
    return tlog.format_proof(
        tlog.Proof(index, proof, note, LEAVES[index] if extra is None else extra)
    )


def test_proof_file_is_formatted_as_in_the_spec(signer):
    note = tlog.sign_checkpoint(tlog.Checkpoint(ORIGIN, 8, ROOTS[8]), signer)
    path = INCLUSION[2][2]
    data = tlog.format_proof(tlog.Proof(5, path, note, LEAVES[5]))
    assert (
        data
        == (
            "c2sp.org/tlog-proof@v1\nextra QEFCQw==\nindex 5\n"
            + "".join(base64.b64encode(h).decode() + "\n" for h in path)
            + "\n"
        ).encode()
        + note
    )
    assert tlog.parse_proof(data) == tlog.Proof(5, tuple(path), note, LEAVES[5])


def test_proof_file_without_extra_leaves_the_line_out(signer):
    note = tlog.sign_checkpoint(tlog.Checkpoint(ORIGIN, 1, ROOTS[1]), signer)
    data = tlog.format_proof(tlog.Proof(0, [], note))
    assert data == b"c2sp.org/tlog-proof@v1\nindex 0\n\n" + note
    assert tlog.parse_proof(data) == tlog.Proof(0, (), note, None)


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
    assert tlog.parse_proof(example) == tlog.Proof(
        73894, tuple(base64.b64decode(h) for h in hashes), checkpoint, base64.b64decode(extra)
    )


def test_check_proof_says_what_it_proved(signer):
    proved = tlog.check_proof(make_proof(signer), str(signer.verifier))
    assert proved == tlog.Proved(5, 8, ORIGIN, signer.key_id, LEAVES[5])


def test_check_proof_of_every_leaf_of_every_size(signer):
    for size in range(1, 9):
        for index in range(size):
            assert (
                tlog.check_proof(make_proof(signer, index, size), str(signer.verifier)).leaf
                == LEAVES[index]
            )


def test_every_altered_byte_of_a_proof_file_is_refused(signer):
    data = make_proof(signer)
    for position in range(len(data)):
        with pytest.raises(tlog.TlogError):
            tlog.check_proof(flipped(data, position), str(signer.verifier))


def test_edited_event_fails_its_proof(signer):
    with pytest.raises(tlog.ProofError, match="does not lead from the leaf hash to the root hash"):
        tlog.check_proof(make_proof(signer, extra=b"@ABD"), str(signer.verifier))


def test_proof_moved_to_another_event_is_refused(signer):
    data = make_proof(signer).replace(b"index 5", b"index 4")
    with pytest.raises(tlog.ProofError):
        tlog.check_proof(data, str(signer.verifier))
    with pytest.raises(tlog.ProofError):
        tlog.check_proof(make_proof(signer, extra=LEAVES[4]), str(signer.verifier))


def test_proof_of_a_leaf_beyond_the_checkpoint_is_refused(signer):
    data = make_proof(signer, 3, 4).replace(b"index 3", b"index 4")
    with pytest.raises(tlog.ProofError, match="leaf 4 cannot be in a tree of 4 leaves"):
        tlog.check_proof(data, str(signer.verifier))


def test_proof_checked_with_another_key_is_refused(signer):
    _, other = tlog.generate_key(ORIGIN)
    with pytest.raises(tlog.UnknownKey):
        tlog.check_proof(make_proof(signer), other)


def test_proof_of_another_origin_is_refused(signer):
    with pytest.raises(tlog.WrongOrigin):
        tlog.check_proof(
            make_proof(signer), str(signer.verifier), origin="im-audit.example.com/other"
        )


def test_proof_without_leaf_data_is_refused(signer):
    note = tlog.sign_checkpoint(tlog.Checkpoint(ORIGIN, 1, ROOTS[1]), signer)
    with pytest.raises(tlog.Malformed, match="no extra line"):
        tlog.check_proof(tlog.format_proof(tlog.Proof(0, [], note)), str(signer.verifier))


def test_proof_checked_with_a_malformed_key_is_refused(signer):
    with pytest.raises(tlog.Malformed, match="verifier key"):
        tlog.check_proof(make_proof(signer), "not a key")


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
    with pytest.raises(tlog.Malformed, match=message):
        tlog.check_proof(data, str(signer.verifier))


# Hashes one per line (consistency proofs)


def test_hashes_are_one_base64_line_each():
    proof = CONSISTENCY[2][2]
    data = tlog.format_hashes(proof)
    assert data == "".join(base64.b64encode(h).decode() + "\n" for h in proof).encode()
    assert tlog.parse_hashes(data) == proof


def test_no_hashes_is_an_empty_text():
    assert tlog.format_hashes([]) == b""
    assert tlog.parse_hashes(b"") == []


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
    with pytest.raises(tlog.Malformed, match=message):
        tlog.parse_hashes(data)


def test_two_trees_of_one_size_with_other_roots_are_not_consistent():
    with pytest.raises(tlog.ProofError, match="two trees of 5 leaves have different root hashes"):
        tlog.verify_consistency(5, bytes(32), 5, bytes([1]) * 32, [])
