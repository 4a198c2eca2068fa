"""A zip archive written as a stream in bounded memory, however many members
it has: each member's bytes are handed back as it is added, and its central
directory entry goes to a file (a temporary one, on disk) until the end.

The bytes are what Python's zipfile writes to an unseekable stream, except
that no ZipInfo is kept per member (tests/test_zipstream.py compares the
two), following PKWARE's APPNOTE.TXT 6.3.10:

- each member is a local file header (4.3.7) with general purpose bit 3 set
  (4.4.4), so its CRC-32 and sizes are zero there and follow its raw
  deflate data (method 8) in a data descriptor with its signature (4.3.9);
  bit 11 is set when its name is not ASCII, which is then UTF-8;
- then the central directory, one header per member (4.3.12); a member
  whose local header starts past ZIP64_LIMIT has its offset in a Zip64
  extended information extra field (4.5.3) and 0xFFFFFFFF in its place;
- then, when there are more than 65,535 members or the directory starts or
  ends past ZIP64_LIMIT, the Zip64 end of central directory record and its
  locator (4.3.14, 4.3.15);
- then the end of central directory record (4.3.16), its fields capped.

Members are whole bytes objects, each far below ZIP64_LIMIT (an event's
JSON or proof), so none needs Zip64 sizes of its own.
"""

import struct
import zlib

# Past this, offsets and sizes go to Zip64 fields: 2 GiB as zipfile has it,
# not 4, for readers that take the 32-bit fields as signed.
ZIP64_LIMIT = (1 << 31) - 1
MAX_COUNT = 0xFFFF
VERSION = 20  # 2.0, deflate (4.4.3)
ZIP64_VERSION = 45
UNIX = 3  # "version made by" (4.4.2): the external attributes are Unix modes
ATTRIBUTES = 0o600 << 16  # -rw-------, as zipfile gives a member written from bytes
FLAGS = 0x08  # sizes and CRC-32 in a data descriptor
UTF8_NAME = 0x800
DEFLATED = 8
COPY_SIZE = 64 * 1024

_LOCAL = struct.Struct("<4s2B4HL2L2H")
_DESCRIPTOR = struct.Struct("<4s3L")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_OFFSET64 = struct.Struct("<2HQ")
_END64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR64 = struct.Struct("<4sLQL")
_END = struct.Struct("<4s4H2LH")


class Writer:
    """A zip archive whose members are all dated ``date_time`` (local time,
    as a tuple of six, year to second), with its central directory kept in
    ``directory``, an empty binary file opened for reading and writing."""

    def __init__(self, directory, date_time):
        year, month, day, hour, minute, second = date_time
        self._date = (year - 1980) << 9 | month << 5 | day
        self._time = hour << 11 | minute << 5 | second // 2
        self._directory = directory
        self._offset = 0
        self._count = 0

    def add(self, name, data):
        """The member ``name`` holding ``data`` (str as UTF-8), as bytes to
        send next."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            encoded, flags = name.encode("ascii"), FLAGS
        except UnicodeEncodeError:
            encoded, flags = name.encode("utf-8"), FLAGS | UTF8_NAME
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        deflated = compressor.compress(data) + compressor.flush()
        crc = zlib.crc32(data)
        header = _LOCAL.pack(
            b"PK\x03\x04", VERSION, 0, flags, DEFLATED, self._time, self._date, 0, 0, 0,
            len(encoded), 0,
        )  # fmt: skip
        descriptor = _DESCRIPTOR.pack(b"PK\x07\x08", crc, len(deflated), len(data))
        offset, extra, version = self._offset, b"", VERSION
        if offset > ZIP64_LIMIT:
            offset, extra, version = 0xFFFFFFFF, _OFFSET64.pack(1, 8, offset), ZIP64_VERSION
        entry = _CENTRAL.pack(
            b"PK\x01\x02", version, UNIX, version, 0, flags, DEFLATED, self._time, self._date,
            crc, len(deflated), len(data), len(encoded), len(extra), 0, 0, 0, ATTRIBUTES, offset,
        )  # fmt: skip
        self._directory.write(entry + encoded + extra)
        member = b"".join((header, encoded, deflated, descriptor))
        self._offset += len(member)
        self._count += 1
        return member

    def finish(self):
        """The central directory and the end records, in chunks of at most
        COPY_SIZE bytes: the archive's last bytes."""
        start, size = self._offset, self._directory.tell()
        self._directory.seek(0)
        while chunk := self._directory.read(COPY_SIZE):
            yield chunk
        count = self._count
        end = b""
        if count > MAX_COUNT or start > ZIP64_LIMIT or size > ZIP64_LIMIT:
            end = _END64.pack(
                b"PK\x06\x06", _END64.size - 12, ZIP64_VERSION, ZIP64_VERSION, 0, 0, count, count,
                size, start,
            ) + _LOCATOR64.pack(b"PK\x06\x07", 0, start + size, 1)  # fmt: skip
            count, size, start = (
                min(count, MAX_COUNT),
                min(size, 0xFFFFFFFF),
                min(start, 0xFFFFFFFF),
            )
        yield end + _END.pack(b"PK\x05\x06", 0, 0, count, count, size, start, 0)
