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


def test_two_trees_of_one_size_with_other_roots_are_not_consistent():
    with pytest.raises(tlog.ProofError, match="two trees of 5 leaves have different root hashes"):
        tlog.verify_consistency(5, bytes(32), 5, bytes([1]) * 32, [])
