"""C2SP signed notes, their keys and the checkpoints they carry (signednote.py)."""

import base64
import hashlib

import pytest

from tim_audit.log import signednote
from test_tlog import ROOTS

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


# Keys and signed notes


def test_go_signer_key_signs_the_same_note_as_go():
    assert signednote.sign_note(PETER_TEXT, signednote.Signer(PETER_SIGNER)) == PETER_NOTE


def test_signer_key_gives_its_verifier_key():
    assert str(signednote.Signer(PETER_SIGNER).verifier) == PETER


def test_go_note_opens():
    text, signers = signednote.open_note(PETER_NOTE, [signednote.Verifier(PETER)])
    assert text == PETER_TEXT
    assert [(signer.name, signer.key_id) for signer in signers] == [("PeterNeumann", "c74f20a3")]


def test_spec_example_note_opens():
    verifier = signednote.Verifier(
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
    )
    note = (
        "This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfX"
        "ppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
    ).encode()
    assert signednote.open_note(note, [verifier]).text == "This is an example message.\n"


def test_key_id_is_the_sha256_of_name_newline_type_and_public_key():
    public = base64.b64decode(PETER.split("+")[2])
    assert (
        hashlib.sha256(b"PeterNeumann\n" + public).hexdigest()[:8]
        == signednote.Verifier(PETER).key_id
    )


def test_generated_key_signs_notes_its_verifier_opens():
    signer_key, verifier_key = signednote.generate_key(ORIGIN)
    signer = signednote.Signer(signer_key)
    assert signer_key.startswith(f"PRIVATE+KEY+{ORIGIN}+{signer.key_id}+")
    assert str(signer.verifier) == verifier_key
    note = signednote.sign_note("hello\n", signer)
    assert signednote.open_note(note, [signednote.Verifier(verifier_key)]).text == "hello\n"


def test_two_generated_keys_differ():
    assert signednote.generate_key(ORIGIN) != signednote.generate_key(ORIGIN)


@pytest.mark.parametrize("name", ["", "with space", "a+b", "tab\there", "nbsp\u00a0"])
def test_key_name_must_be_a_valid_note_name(name):
    with pytest.raises(ValueError, match="cannot name a key"):
        signednote.generate_key(name)


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
        with pytest.raises(signednote.Malformed):
            signednote.Verifier(mangled)


def test_every_mangled_signer_key_is_malformed():
    for mangled in manglings(PETER_SIGNER):
        with pytest.raises(signednote.Malformed):
            signednote.Signer(mangled)


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
    with pytest.raises(signednote.Malformed, match=message):
        signednote.Verifier(key)


def test_note_by_a_known_and_an_unknown_key_opens():
    note = (PETER_TEXT + "\n" + PETER_SIGNATURE + ENOCH_SIGNATURE).encode()
    assert (
        signednote.open_note(note, [signednote.Verifier(PETER)]).signers[0].name == "PeterNeumann"
    )
    both = signednote.open_note(note, [signednote.Verifier(PETER), signednote.Verifier(ENOCH)])
    assert [signer.name for signer in both.signers] == ["PeterNeumann", "EnochRoot"]


def test_repeated_signatures_are_counted_once():
    note = (PETER_TEXT + "\n" + PETER_SIGNATURE * 2 + ENOCH_SIGNATURE * 2).encode()
    assert len(signednote.open_note(note, [signednote.Verifier(PETER)]).signers) == 1


def test_note_signed_by_another_key_names_its_signer():
    note = (PETER_TEXT + "\n" + ENOCH_SIGNATURE).encode()
    with pytest.raises(
        signednote.UnknownKey,
        match="not signed by PeterNeumann\\+c74f20a3: its signatures are by EnochRoot\\+af0cfe78",
    ):
        signednote.open_note(note, [signednote.Verifier(PETER)])


def test_note_signed_by_a_key_of_the_same_name_is_unknown():
    _, other = signednote.generate_key("PeterNeumann")
    with pytest.raises(signednote.UnknownKey):
        signednote.open_note(PETER_NOTE, [signednote.Verifier(other)])


def test_altered_text_fails_the_signature():
    note = PETER_NOTE.replace(b"answer", b"Answer")
    with pytest.raises(
        signednote.BadSignature, match="signature by PeterNeumann\\+c74f20a3 does not verify"
    ):
        signednote.open_note(note, [signednote.Verifier(PETER)])


def test_altered_signature_fails():
    # Go's note_test: four base64 characters slipped into the signature.
    signature = PETER_SIGNATURE[:60] + "ABCD" + PETER_SIGNATURE[60:]
    with pytest.raises(signednote.BadSignature):
        signednote.open_note((PETER_TEXT + "\n" + signature).encode(), [signednote.Verifier(PETER)])


def test_bad_signature_by_a_known_key_refuses_the_note_even_beside_a_good_one():
    signature = PETER_SIGNATURE[:60] + "ABCD" + PETER_SIGNATURE[60:]
    note = (PETER_TEXT + "\n" + PETER_SIGNATURE + signature).encode()
    with pytest.raises(signednote.BadSignature):
        signednote.open_note(note, [signednote.Verifier(PETER)])


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
    with pytest.raises(signednote.Malformed, match=message or "not UTF-8"):
        signednote.open_note(data, [signednote.Verifier(PETER)])


@pytest.mark.parametrize("text", ["no final newline", "a\rb\n", "tab\there\n"])
def test_sign_refuses_text_that_would_make_a_malformed_note(text):
    with pytest.raises(ValueError, match="ends with a newline"):
        signednote.sign_note(text, signednote.Signer(PETER_SIGNER))


def test_note_text_may_hold_blank_lines():
    text = "first\n\nsecond\n"
    note = signednote.sign_note(text, signednote.Signer(PETER_SIGNER))
    assert signednote.open_note(note, [signednote.Verifier(PETER)]).text == text


# Checkpoints

SPEC_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)


def test_checkpoint_is_formatted_as_in_the_spec():
    checkpoint = signednote.Checkpoint(
        "example.com/behind-the-sofa",
        20852163,
        base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="),
    )
    assert signednote.format_checkpoint(checkpoint) == SPEC_CHECKPOINT
    assert signednote.parse_checkpoint(SPEC_CHECKPOINT) == checkpoint


def test_checkpoint_extension_lines_round_trip():
    checkpoint = signednote.Checkpoint(ORIGIN, 0, ROOTS[1], ("Timestamp: 1700000000", "x"))
    text = signednote.format_checkpoint(checkpoint)
    assert text == f"{ORIGIN}\n0\n{base64.b64encode(ROOTS[1]).decode()}\nTimestamp: 1700000000\nx\n"
    assert signednote.parse_checkpoint(text) == checkpoint


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
    with pytest.raises(signednote.Malformed, match=message):
        signednote.parse_checkpoint(text)


@pytest.mark.parametrize(
    "checkpoint",
    [
        signednote.Checkpoint("", 1, ROOTS[1]),
        signednote.Checkpoint("two\nlines", 1, ROOTS[1]),
        signednote.Checkpoint(ORIGIN, -1, ROOTS[1]),
        signednote.Checkpoint(ORIGIN, 1, ROOTS[1][:31]),
        signednote.Checkpoint(ORIGIN, 1, ROOTS[1], ("",)),
    ],
)
def test_checkpoint_that_cannot_be_written_is_a_value_error(checkpoint):
    with pytest.raises(ValueError, match="a checkpoint is"):
        signednote.format_checkpoint(checkpoint)


@pytest.fixture
def signer():
    return signednote.Signer(signednote.generate_key(ORIGIN)[0])


def test_signed_checkpoint_opens_with_its_key(signer):
    checkpoint = signednote.Checkpoint(ORIGIN, 8, ROOTS[8])
    note = signednote.sign_checkpoint(checkpoint, signer)
    assert note.startswith(signednote.format_checkpoint(checkpoint).encode() + "\n— ".encode())
    assert signednote.open_checkpoint(note, [signer.verifier]) == (checkpoint, signer.verifier)


def test_checkpoint_of_another_origin_is_refused(signer):
    note = signednote.sign_checkpoint(
        signednote.Checkpoint("im-audit.example.com/other", 8, ROOTS[8]), signer
    )
    with pytest.raises(
        signednote.WrongOrigin, match=f"of the log 'im-audit.example.com/other', not '{ORIGIN}'"
    ):
        signednote.open_checkpoint(note, [signer.verifier])


def test_checkpoint_origin_can_differ_from_the_key_name_when_given(signer):
    checkpoint = signednote.Checkpoint(f"{ORIGIN}/quarantine", 8, ROOTS[8])
    note = signednote.sign_checkpoint(checkpoint, signer)
    assert (
        signednote.open_checkpoint(note, [signer.verifier], f"{ORIGIN}/quarantine")[0] == checkpoint
    )
    with pytest.raises(signednote.WrongOrigin):
        signednote.open_checkpoint(note, [signer.verifier], ORIGIN)


def test_checkpoint_signed_with_another_key_is_refused(signer):
    other = signednote.Signer(signednote.generate_key(ORIGIN)[0])
    note = signednote.sign_checkpoint(signednote.Checkpoint(ORIGIN, 8, ROOTS[8]), other)
    with pytest.raises(signednote.UnknownKey, match=f"not signed by {ORIGIN}\\+{signer.key_id}"):
        signednote.open_checkpoint(note, [signer.verifier])
