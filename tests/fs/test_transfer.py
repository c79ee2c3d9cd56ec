"""files/download, files/upload and files/compose through the API."""

from __future__ import annotations

import gzip
import io
import os
import stat

from hypothesis import given, settings
from hypothesis import strategies as st

from codebuddy.fs.transfer import content_disposition, parse_range
from codebuddy.web.auth import GatewaySettings
from codebuddy.web.errors import ApiError
from tests.fs.helpers import FsFixture
from tests.helpers import ApiTestCase

BINARY = bytes(range(256)) * 1000 + b"\x00\xff tail"


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "cbBoundary42") -> tuple[bytes, str]:
    out = io.BytesIO()
    for name, filename, data in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"Content-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


class TransferTestCase(ApiTestCase):
    def setUp(self) -> None:
        self.api = FsFixture()
        self.addCleanup(self.api.cleanup)
        self.ws = self.api.workspace

    def upload(self, path: str | None, data: bytes, content_type: str = "application/octet-stream",
               headers: dict[str, str] | None = None) -> tuple[int, object, object]:
        params = {"path": path} if path is not None else {}
        return self.api.json("POST", "/api/v1/files/upload", params=params, data=data,
                             headers={"Content-Type": content_type, **(headers or {})})


class DownloadTests(TransferTestCase):
    def test_spec_example(self) -> None:
        """The spec's example: GET /api/v1/files/download?path=/tmp/test.txt."""
        with open("/tmp/test.txt", "w") as handle:
            handle.write("spec example\n")
        self.addCleanup(os.unlink, "/tmp/test.txt")
        response, body = self.api.request("GET", "/api/v1/files/download?path=/tmp/test.txt")
        self.assertEqual((response.code, body), (200, b"spec example\n"))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/plain"])
        self.assertEqual(response.headers.getRawHeaders("content-disposition"), ['inline; filename="test.txt"'])

    def test_binary_identical(self) -> None:
        """Binary files come back byte for byte, with the right length and type."""
        (self.ws / "blob.bin").write_bytes(BINARY)
        response, body = self.api.request("GET", "/api/v1/files/download?path=blob.bin")
        self.assertEqual(body, BINARY)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/octet-stream"])
        self.assertEqual(response.headers.getRawHeaders("accept-ranges"), ["bytes"])

    def test_content_types(self) -> None:
        """Images and PDFs get their types (the Web UI previews them from blob URLs)."""
        for name, expected in (("p.png", "image/png"), ("d.pdf", "application/pdf"), ("x.json", "application/json")):
            (self.ws / name).write_bytes(b"x")
            response, _body = self.api.request("GET", f"/api/v1/files/download?path={name}")
            self.assertEqual(response.headers.getRawHeaders("content-type"), [expected])

    def test_head(self) -> None:
        """HEAD answers the headers (length included) without the body."""
        (self.ws / "h.bin").write_bytes(BINARY)
        response, body = self.api.request("HEAD", "/api/v1/files/download?path=h.bin")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(response.headers.getRawHeaders("content-length"), [str(len(BINARY))])

    def test_ranges(self) -> None:
        """Single ranges answer 206 with Content-Range: first-last, open-ended and suffix forms."""
        (self.ws / "r.bin").write_bytes(BINARY)
        size = len(BINARY)
        for header, start, end in (("bytes=0-9", 0, 9), ("bytes=100-", 100, size - 1), ("bytes=-5", size - 5, size - 1),
                                   ("bytes=10-999999999", 10, size - 1)):
            with self.subTest(header=header):
                response, body = self.api.request("GET", "/api/v1/files/download?path=r.bin", headers={"Range": header})
                self.assertEqual(response.code, 206)
                self.assertEqual(body, BINARY[start : end + 1])
                self.assertEqual(response.headers.getRawHeaders("content-range"), [f"bytes {start}-{end}/{size}"])

    def test_unsatisfiable_range(self) -> None:
        """A range past the end is 416 RANGE_NOT_SATISFIABLE with Content-Range: bytes */size."""
        (self.ws / "r.bin").write_bytes(b"12345")
        status, body, response = self.api.json(
            "GET", "/api/v1/files/download?path=r.bin", headers={"Range": "bytes=5-"}
        )
        self.assertEqual((status, body["error"]["code"]), (416, "RANGE_NOT_SATISFIABLE"))
        self.assertEqual(response.headers.getRawHeaders("content-range"), ["bytes */5"])

    def test_errors(self) -> None:
        """A directory is 400 PATH_NOT_DIRECTORY, a missing file 404, no path 400 PATH_REQUIRED, a FIFO 400."""
        self.assertError(self.api.json("GET", f"/api/v1/files/download?path={self.ws}"), 400, "PATH_NOT_DIRECTORY")
        self.assertError(self.api.json("GET", "/api/v1/files/download?path=nope"), 404, "NOT_FOUND")
        self.assertError(self.api.json("GET", "/api/v1/files/download"), 400, "PATH_REQUIRED")
        os.mkfifo(self.ws / "fifo")
        self.assertError(self.api.json("GET", "/api/v1/files/download?path=fifo"), 400, "BAD_REQUEST")

    def test_disposition_unicode(self) -> None:
        """Non-ASCII names get an RFC 5987 filename* beside an ASCII fallback."""
        expected = "inline; filename=\"caf? 1.txt\"; filename*=UTF-8''caf%C3%A9%201.txt"
        self.assertEqual(content_disposition("caf\u00e9 1.txt"), expected)

    @given(st.integers(min_value=0, max_value=50), st.text(max_size=20))
    def test_parse_range_total(self, size: int, header: str) -> None:
        """Any Range header gives the whole file, a valid span, or 416; never an exception."""
        try:
            span = parse_range(header, size)
        except ApiError as exc:
            self.assertEqual(exc.code, "RANGE_NOT_SATISFIABLE")
            return
        if span is not None:
            self.assertTrue(0 <= span[0] <= span[1] < size)


class UploadTests(TransferTestCase):
    def test_spec_example(self) -> None:
        """The spec's example: octet-stream body to /tmp/upload.txt."""
        self.addCleanup(lambda: os.path.exists("/tmp/upload.txt") and os.unlink("/tmp/upload.txt"))
        entries = self.assertData(self.upload("/tmp/upload.txt", b"uploaded\n"))
        self.assertEqual([(e["path"], e["name"], e["type"]) for e in entries],
                         [("/tmp/upload.txt", "upload.txt", "file")])
        with open("/tmp/upload.txt", "rb") as handle:
            self.assertEqual(handle.read(), b"uploaded\n")

    def test_binary_round_trip_and_parents(self) -> None:
        """Binary bodies are stored byte for byte; parent directories are created."""
        self.assertData(self.upload("deep/er/b.bin", BINARY))
        self.assertEqual((self.ws / "deep/er/b.bin").read_bytes(), BINARY)
        _r, body = self.api.request("GET", "/api/v1/files/download?path=deep/er/b.bin")
        self.assertEqual(body, BINARY)
        self.assertEqual(self.api.leftovers(), [])

    def test_replace_keeps_mode(self) -> None:
        """Replacing a file keeps its permissions (an executable stays executable)."""
        script = self.ws / "run.sh"
        script.write_text("old")
        os.chmod(script, 0o750)
        self.assertData(self.upload("run.sh", b"#!/bin/sh\n"))
        self.assertEqual((script.read_bytes(), stat.S_IMODE(script.stat().st_mode)), (b"#!/bin/sh\n", 0o750))

    def test_gzip(self) -> None:
        """Content-Encoding: gzip bodies are decoded; a corrupt one leaves the old file alone."""
        self.assertData(self.upload("z.txt", gzip.compress(BINARY), headers={"Content-Encoding": "gzip"}))
        self.assertEqual((self.ws / "z.txt").read_bytes(), BINARY)
        self.assertError(self.upload("z.txt", b"not gzip", headers={"Content-Encoding": "gzip"}), 400, "BAD_REQUEST")
        self.assertError(self.upload("z.txt", gzip.compress(BINARY)[:-20], headers={"Content-Encoding": "gzip"}),
                         400, "BAD_REQUEST")
        self.assertEqual((self.ws / "z.txt").read_bytes(), BINARY)
        self.assertError(self.upload("z.txt", b"x", headers={"Content-Encoding": "br"}), 400, "BAD_REQUEST")
        self.assertEqual(self.api.leftovers(), [])

    def test_multipart(self) -> None:
        """Parts named 'file' go to their filenames (several allowed); other fields are ignored."""
        body, ctype = multipart([("file", "m/one.txt", b"1"), ("note", None, b"ignored"), ("file", "two.bin", BINARY)])
        entries = self.assertData(self.upload(None, body, ctype))
        self.assertEqual([e["name"] for e in entries], ["one.txt", "two.bin"])
        self.assertEqual(((self.ws / "m/one.txt").read_bytes(), (self.ws / "two.bin").read_bytes()), (b"1", BINARY))

    def test_multipart_with_path(self) -> None:
        """With ?path= a single part goes there; two parts to one path are a 400."""
        body, ctype = multipart([("file", "ignored-name.txt", b"data")])
        self.assertData(self.upload("dest.txt", body, ctype))
        self.assertEqual((self.ws / "dest.txt").read_bytes(), b"data")
        body, ctype = multipart([("file", "a", b"1"), ("file", "b", b"2")])
        self.assertError(self.upload("dest.txt", body, ctype), 400, "BAD_REQUEST")
        self.assertEqual((self.ws / "dest.txt").read_bytes(), b"data")
        self.assertEqual(self.api.leftovers(), [])

    def test_multipart_errors(self) -> None:
        """No file part, a truncated body, or a missing boundary are 400s that write nothing."""
        body, ctype = multipart([("other", None, b"x")])
        self.assertError(self.upload(None, body, ctype), 400, "BAD_REQUEST")
        body, ctype = multipart([("file", "t.txt", b"abc")])
        self.assertError(self.upload(None, body[:-10], ctype), 400, "BAD_REQUEST")
        self.assertError(self.upload(None, body, "multipart/form-data"), 400, "BAD_REQUEST")
        self.assertFalse((self.ws / "t.txt").exists())
        self.assertEqual(self.api.leftovers(), [])

    def test_errors(self) -> None:
        """No path 400 PATH_REQUIRED; a directory 400 PATH_NOT_DIRECTORY; other types 415."""
        self.assertError(self.upload(None, b"x"), 400, "PATH_REQUIRED")
        self.assertError(self.upload(str(self.ws), b"x"), 400, "PATH_NOT_DIRECTORY")
        self.assertError(self.upload("x.txt", b"x", "text/plain"), 415, "UNSUPPORTED_MEDIA_TYPE")
        (self.ws / "file").write_text("f")
        self.assertError(self.upload("file/child.txt", b"x"), 400, "PATH_NOT_DIRECTORY")
        self.assertEqual(self.api.leftovers(), [])

    def test_oversized(self) -> None:
        """An upload over the limit is 413 and leaves the old file untouched, no temp file behind."""
        api = FsFixture(max_upload=100)
        self.addCleanup(api.cleanup)
        (api.workspace / "o.txt").write_text("old")
        for headers in ({}, {"Content-Encoding": "gzip"}):
            data = b"x" * 1000
            if headers:
                data = gzip.compress(data)
            status, body, _r = api.json("POST", "/api/v1/files/upload?path=o.txt", data=data,
                                        headers={"Content-Type": "application/octet-stream", **headers})
            self.assertEqual((status, body["error"]["code"]), (413, "PAYLOAD_TOO_LARGE"))
        self.assertEqual((api.workspace / "o.txt").read_text(), "old")
        self.assertEqual(api.leftovers(), [])

    def test_disk_full(self) -> None:
        """Not enough space is 507 INSUFFICIENT_STORAGE, old file untouched."""
        api = FsFixture(free_space=lambda path: 10)
        self.addCleanup(api.cleanup)
        (api.workspace / "f.txt").write_text("old")
        status, body, _r = api.json("POST", "/api/v1/files/upload?path=f.txt", data=b"x" * 1000,
                                    headers={"Content-Type": "application/octet-stream"})
        self.assertEqual((status, body["error"]["code"]), (507, "INSUFFICIENT_STORAGE"))
        self.assertEqual((api.workspace / "f.txt").read_text(), "old")
        self.assertEqual(api.leftovers(), [])

    def test_write_error_enospc(self) -> None:
        """ENOSPC while writing is 507 and removes the temporary file."""
        from unittest import mock

        real_write = os.write

        def failing_write(fd: int, data: object) -> int:
            if len(data) > 100:  # type: ignore[arg-type]
                raise OSError(28, "No space left on device")
            return real_write(fd, data)  # type: ignore[arg-type]

        with mock.patch("os.write", failing_write):
            self.assertError(self.upload("big.bin", BINARY), 507, "INSUFFICIENT_STORAGE")
        self.assertFalse((self.ws / "big.bin").exists())
        self.assertEqual(self.api.leftovers(), [])

    def test_auth_before_writing(self) -> None:
        """In password mode an unauthenticated upload is 401 and nothing is written."""
        api = FsFixture(GatewaySettings(mode="password", password="pw"))
        self.addCleanup(api.cleanup)
        status, body, _r = api.json("POST", "/api/v1/files/upload?path=u.txt", data=b"data",
                                    headers={"Content-Type": "application/octet-stream"})
        self.assertEqual((status, body["error"]["code"]), (401, "AUTH_REQUIRED"))
        self.assertFalse((api.workspace / "u.txt").exists())
        self.assertEqual(api.leftovers(), [])
        self.assertData(api.json("POST", "/api/v1/files/upload?path=u.txt&password=pw", data=b"data",
                                 headers={"Content-Type": "application/octet-stream"}))
        self.assertEqual((api.workspace / "u.txt").read_bytes(), b"data")

    @settings(max_examples=60)
    @given(st.text(max_size=30))
    def test_paths_never_500(self, raw: str) -> None:
        """Odd upload paths are answered with 2xx or a 4xx code, never a 500."""
        from urllib.parse import quote

        url = "/api/v1/files/upload?path=" + quote("sub/" + raw, safe="")
        status, body, _r = self.api.json("POST", url.encode("ascii"), data=b"x",
                                         headers={"Content-Type": "application/octet-stream"})
        self.assertLess(status, 500, body)


class ComposeTests(TransferTestCase):
    def test_compose(self) -> None:
        """Sources are concatenated in order into the destination and then removed."""
        parts = [BINARY[:1000], BINARY[1000:5000], BINARY[5000:]]
        for i, part in enumerate(parts):
            (self.ws / f"p{i}").write_bytes(part)
        entry = self.assertData(self.api.json("POST", "/api/v1/files/compose",
                                              json={"sourcePaths": ["p0", "p1", "p2"], "destination": "all.bin"}))
        self.assertEqual((entry["path"], entry["type"], entry["size"]), (str(self.ws / "all.bin"), "file", len(BINARY)))
        self.assertEqual((self.ws / "all.bin").read_bytes(), BINARY)
        self.assertFalse(any((self.ws / f"p{i}").exists() for i in range(3)))

    def test_keep_sources_and_snake_case(self) -> None:
        """E2B's source_paths is accepted; keepSources keeps the parts."""
        (self.ws / "a").write_bytes(b"A")
        (self.ws / "b").write_bytes(b"B")
        self.assertData(self.api.json("POST", "/api/v1/files/compose",
                                      json={"source_paths": ["a", "b"], "destination": "ab", "keepSources": True}))
        self.assertEqual(((self.ws / "ab").read_bytes(), (self.ws / "a").exists()), (b"AB", True))

    def test_errors(self) -> None:
        """Empty sources 400; a missing source 404; a source equal to the destination 400; a dir source 400."""
        (self.ws / "a").write_bytes(b"A")
        (self.ws / "d").mkdir()
        cases = (
            ({"sourcePaths": [], "destination": "x"}, 400, "BAD_REQUEST"),
            ({"sourcePaths": ["a", "missing"], "destination": "x"}, 404, "NOT_FOUND"),
            ({"sourcePaths": ["a"], "destination": "a"}, 400, "BAD_REQUEST"),
            ({"sourcePaths": ["d"], "destination": "x"}, 400, "BAD_REQUEST"),
            ({"sourcePaths": ["a"]}, 400, "PATH_REQUIRED"),
        )
        for body, status, code in cases:
            with self.subTest(body=body):
                self.assertError(self.api.json("POST", "/api/v1/files/compose", json=body), status, code)
        self.assertTrue((self.ws / "a").exists())
        self.assertFalse((self.ws / "x").exists())


class ConditionalTests(TransferTestCase):
    def test_if_range(self) -> None:
        """A Range with a stale If-Range gets the whole file (200); a matching one resumes (206)."""
        from twisted.web import http

        target = self.ws / "c.bin"
        target.write_bytes(BINARY)
        os.utime(target, (1_700_000_000, 1_700_000_000))
        current = http.datetimeToString(1_700_000_000).decode()
        stale = http.datetimeToString(1_600_000_000).decode()
        response, body = self.api.request(
            "GET", "/api/v1/files/download?path=c.bin", headers={"Range": "bytes=0-9", "If-Range": stale}
        )
        self.assertEqual((response.code, body), (200, BINARY))
        response, body = self.api.request(
            "GET", "/api/v1/files/download?path=c.bin", headers={"Range": "bytes=0-9", "If-Range": current}
        )
        self.assertEqual((response.code, body), (206, BINARY[:10]))

    def test_if_modified_since(self) -> None:
        """An unchanged file answers 304 Not Modified without a body."""
        from twisted.web import http

        target = self.ws / "c.bin"
        target.write_bytes(BINARY)
        os.utime(target, (1_700_000_000, 1_700_000_000))
        since = http.datetimeToString(1_700_000_100).decode()
        response, body = self.api.request("GET", "/api/v1/files/download?path=c.bin",
                                          headers={"If-Modified-Since": since})
        self.assertEqual((response.code, body), (304, b""))

    def test_keep_sources_snake_case(self) -> None:
        """E2B-style keep_sources is honoured too."""
        (self.ws / "a").write_bytes(b"A")
        self.assertData(self.api.json("POST", "/api/v1/files/compose",
                                      json={"source_paths": ["a"], "destination": "b", "keep_sources": True}))
        self.assertTrue((self.ws / "a").exists())


class MoveAcrossTests(TransferTestCase):
    def test_cross_device_keeps_rename_semantics(self) -> None:
        """Across filesystems a file is not moved *into* an existing directory; a file replaces a file."""
        import errno
        from unittest import mock

        (self.ws / "f.txt").write_text("f")
        (self.ws / "dir").mkdir()
        (self.ws / "old.txt").write_text("old")
        real_rename = os.rename

        def cross_device(src: object, dst: object) -> None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        with mock.patch("os.rename", cross_device):
            self.assertError(self.api.json("POST", "/api/v1/fs/move", json={"source": "f.txt", "destination": "dir"}),
                             400, "PATH_NOT_DIRECTORY")
            self.assertFalse((self.ws / "dir" / "f.txt").exists())
        def rename_f_across(src: object, dst: object) -> None:
            if str(src).endswith("f.txt"):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            real_rename(src, dst)  # type: ignore[arg-type]

        with mock.patch("os.rename", rename_f_across):
            body = {"source": "f.txt", "destination": "old.txt"}
            self.assertData(self.api.json("POST", "/api/v1/fs/move", json=body))
        self.assertEqual((self.ws / "old.txt").read_text(), "f")

    def test_mkdir_on_dangling_link(self) -> None:
        """mkdir where a dangling link stands is 409 ALREADY_EXISTS."""
        os.symlink("/nonexistent-target", self.ws / "dangling")
        self.assertError(self.api.json("POST", "/api/v1/fs/mkdir", json={"path": "dangling"}), 409, "ALREADY_EXISTS")


class DurabilityTests(ApiTestCase):
    def test_fsync_by_default_and_optional(self) -> None:
        """Uploads are fsynced before the rename unless the operator turned it off."""
        from unittest import mock

        for durable, expected in ((True, 1), (False, 0)):
            api = FsFixture()
            self.addCleanup(api.cleanup)
            api.uploads.durable = durable
            with mock.patch("os.fsync") as fsync:
                self.assertData(api.json("POST", "/api/v1/files/upload?path=d.txt", data=b"data",
                                         headers={"Content-Type": "application/octet-stream"}))
            self.assertEqual(fsync.call_count, expected)
            self.assertEqual((api.workspace / "d.txt").read_bytes(), b"data")
