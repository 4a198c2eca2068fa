"""The streaming zip writer behind the evidence archive: what it writes is
what Python's zipfile writes to an unseekable stream, and Python's zipfile
and Info-ZIP's unzip read it back, Zip64 records included."""

import io
import subprocess
import tempfile
import zipfile
import zlib

import pytest

from conftest import require
from tim_audit.review import zipstream

MADE = (2026, 3, 1, 8, 30, 15)


class Unseekable(io.RawIOBase):
    """A stream that only takes writes, which zipfile writes to with data
    descriptors, as zipstream does."""

    def __init__(self):
        super().__init__()
        self.written = bytearray()

    def writable(self):
        return True

    def write(self, data):
        self.written += data
        return len(data)


def zipfile_writes(members, made=MADE):
    """The archive Python's zipfile writes of ``members`` (name, data) to an
    unseekable stream, deflated and dated ``made``."""
    out = Unseekable()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, made)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return bytes(out.written)


def zipstream_writes(members, made=MADE):
    with tempfile.TemporaryFile() as directory:
        writer = zipstream.Writer(directory, made)
        return b"".join([writer.add(name, data) for name, data in members] + [*writer.finish()])


def read_back(archive, members):
    """Python's zipfile reads every member of ``archive`` with its name,
    bytes and CRC-32 (testzip checks each CRC)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as read:
        assert read.testzip() is None
        assert [(info.filename, info.CRC) for info in read.infolist()] == [
            (name, zlib.crc32(data.encode() if isinstance(data, str) else data))
            for name, data in members
        ]
        for name, data in members:
            assert read.read(name) == (data.encode() if isinstance(data, str) else data)


def info_zip_tests(archive, tmp_path):
    """``unzip -t``'s verdict on ``archive`` and ``zipinfo``'s listing."""
    require("unzip")
    path = tmp_path / "archive.zip"
    path.write_bytes(archive)
    tested = subprocess.run(["unzip", "-tqq", path], capture_output=True, text=True)
    listed = subprocess.run(["zipinfo", "-1", path], capture_output=True, text=True)
    return tested.returncode, tested.stdout + tested.stderr, listed.stdout.splitlines()


MEMBERS = [
    ("checkpoint", b"example.com/log\n5\nAAAA\n"),
    ("events/1.json", '{"Name": "周末羽毛球 🏸"}\n'),
    ("events/1.tlog-proof", bytes(range(256)) * 40),
    ("empty", b""),
    ("事件/名前.txt", "a name that is not ASCII\n"),
]


def test_it_writes_what_zipfile_writes_to_an_unseekable_stream():
    assert zipstream_writes(MEMBERS) == zipfile_writes(MEMBERS)


def test_zipfile_and_info_zip_read_every_member_back(tmp_path):
    archive = zipstream_writes(MEMBERS)
    read_back(archive, MEMBERS)
    assert info_zip_tests(archive, tmp_path) == (0, "", [name for name, _ in MEMBERS])


def test_more_than_65535_members_get_the_zip64_end_records_zipfile_writes(tmp_path):
    members = [(f"events/{n}.json", f"{n}\n") for n in range(1, 65_538)]
    archive = zipstream_writes(members)
    assert archive == zipfile_writes(members)
    assert archive[-98:-94] == b"PK\x06\x06" and archive[-42:-38] == b"PK\x06\x07"
    with zipfile.ZipFile(io.BytesIO(archive)) as read:
        assert len(read.infolist()) == 65_537
        assert read.read("events/65537.json") == b"65537\n"
    code, said, names = info_zip_tests(archive, tmp_path)
    assert (code, said, len(names), names[-1]) == (0, "", 65_537, "events/65537.json")


def test_offsets_past_the_zip64_limit_go_to_zip64_fields(monkeypatch, tmp_path):
    monkeypatch.setattr(zipstream, "ZIP64_LIMIT", 60)
    archive = zipstream_writes(MEMBERS)
    read_back(archive, MEMBERS)
    with zipfile.ZipFile(io.BytesIO(archive)) as read:
        found = [(info.header_offset > 60, info.extra[:4]) for info in read.infolist()]
    zip64_offset = b"\x01\x00\x08\x00"  # the Zip64 extra field's tag and length
    assert found == [(False, b"")] + [(True, zip64_offset)] * 4
    assert archive[-98:-94] == b"PK\x06\x06" and archive[-42:-38] == b"PK\x06\x07"
    assert info_zip_tests(archive, tmp_path) == (0, "", [name for name, _ in MEMBERS])


@pytest.mark.parametrize("date_time", [(1980, 1, 1, 0, 0, 0), (2107, 12, 31, 23, 59, 58)])
def test_the_first_and_last_dos_dates_are_written_as_zipfile_writes_them(date_time):
    assert zipstream_writes(MEMBERS[:1], date_time) == zipfile_writes(MEMBERS[:1], date_time)
