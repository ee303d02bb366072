"""ustar: the headers and archive end that write_shard writes are tarfile's own bytes."""

import io
import tarfile

from fracgen import ustar


def test_entry_headers_are_tarfiles():
    for name in ("00000001.png", "00000001.cls", "12345678.json", "a", "x" * 99, "x" * 100, "d" * 120 + "/y.png"):
        for size in (0, 1, 511, 512, 513, 24_277, 10**6, 8**11 - 1):
            for mtime, mode, owner in ((0, 0o444, "fracgen"), (1_700_000_000, 0o644, "")):
                expected = ustar.tarfile_header(name, size, mtime, mode, owner)
                assert ustar.entry_header(name, size, mtime, mode, owner) == expected, (name, size)


def test_a_whole_archive_matches_tarfile():
    entries = [(f"{k:08d}.{ext}", bytes([k % 251]) * (k * 37 % 1500)) for k in range(40) for ext in ("a", "b")]
    for count in (0, 1, 3, len(entries)):
        ours = bytearray()
        for name, data in entries[:count]:
            ours += ustar.entry_header(name, len(data), 0, 0o444, "fracgen") + data
            ours += bytes(-len(data) % ustar.BLOCKSIZE)
        ours += ustar.end_of_archive(len(ours))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in entries[:count]:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "fracgen", "fracgen"
                tar.addfile(info, io.BytesIO(data))
        assert bytes(ours) == buf.getvalue()
