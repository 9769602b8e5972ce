"""The safetensors header reader: golden bytes, and every way a header can lie."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from unimap.checks import quick_json
from unimap.errors import ModelError
from unimap.headers import read_header, write_header


def raw_file(path: Path, header: object, data_bytes: int = 0, length: int | None = None) -> Path:
    body = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body
                     + b"\0" * data_bytes)
    return path


def test_golden_bytes(tmp_path: Path) -> None:
    size = write_header(tmp_path / "m.safetensors", {"a": ("F16", (2, 3)), "b": ("U8", (5,))},
                        {"format": "pt"})
    raw = (tmp_path / "m.safetensors").read_bytes()
    body = (b'{"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[2,3],'
            b'"data_offsets":[0,12]},"b":{"dtype":"U8","shape":[5],"data_offsets":[12,17]}}')
    body += b" " * (-len(body) % 8)
    assert raw[:8] == struct.pack("<Q", len(body)) == len(body).to_bytes(8, "little")
    assert raw[8:8 + len(body)] == body
    assert size == len(raw) == 8 + len(body) + 17
    tensors, meta = read_header(tmp_path / "m.safetensors")
    assert meta == {"format": "pt"}
    assert tensors["a"].shape == (2, 3) and tensors["a"].nbytes == 12
    assert tensors["b"].begin == 12 and tensors["b"].end == 17


def test_sparse_file_reads_only_the_header(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    write_header(path, {"w": ("BF16", (65536, 65536))})  # 8 GiB of hole
    assert path.stat().st_size > 8 * 1024**3
    tensors, _ = read_header(path)
    assert tensors["w"].nbytes == 8 * 1024**3


def test_reference_safetensors_writer_agrees(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "ref.safetensors"
    st.save_file({"x": np.zeros((3, 4), np.float32), "y": np.zeros((7,), np.int64)}, str(path))
    tensors, _ = read_header(path)
    assert (tensors["x"].dtype, tensors["x"].shape, tensors["x"].nbytes) == ("F32", (3, 4), 48)
    assert (tensors["y"].dtype, tensors["y"].nbytes) == ("I64", 56)


GOOD = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.mark.parametrize(("header", "data", "length", "message"), [
    (GOOD, 16, 10_000, "header length 10000 runs past the end of the file"),
    (b"{not json", 0, None, "invalid JSON"),
    (b"\xff\xfe", 0, None, "not UTF-8"),
    (b"[" * 100_000, 0, None, "nested too deep"),
    (b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}', 4, None,
     "thousands of digits"),
    (b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', 4, None, "invalid shape"),
    ({"w": {"dtype": "F32", "shape": [1] * 60_000, "data_offsets": [0, 4]}}, 4, None, "at most 8"),
    ({"w": {"dtype": "F32", "shape": [2**40, 2**40, 2**40], "data_offsets": [0, 4]}}, 4, None,
     "would take more than"),
    ({"__metadata__": {"format": {"nested": 1}}, **GOOD}, 16, None, "not an object of strings"),
    ([1, 2], 0, None, "not a JSON object"),
    ({"w": "nope"}, 0, None, "not described by an object"),
    ({"w": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 2]}}, 2, None, "unknown dtype 'Q4_K'"),
    ({"w": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}}, 8, None, "invalid shape"),
    ({"w": {"dtype": "F32", "shape": "2x2", "data_offsets": [0, 16]}}, 16, None, "invalid shape"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, 8, None, "invalid data_offsets"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, 8, None, "invalid data_offsets"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, 16, None,
     r"spans 12 bytes but shape \[2, 2\] of F32 needs 16"),
    (GOOD, 8, None, "ends at byte 16 of the data section, which has only 8"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, None, "overlap"),
    ({"__metadata__": ["x"], **GOOD}, 16, None, "__metadata__ is not an object"),
])
def test_lying_headers(tmp_path: Path, header: object, data: int, length: int | None,
                       message: str) -> None:
    path = raw_file(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(ModelError, match=message) as err:
        read_header(path)
    assert str(path) in str(err.value)


def test_file_shorter_than_the_length_prefix(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x10\x00\x00")
    with pytest.raises(ModelError, match=r"truncated safetensors file \(3 bytes"):
        read_header(path)


def test_truncated_header_body(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", 100) + b"{" * 50)  # says 100, file has 50
    with pytest.raises(ModelError, match="runs past the end of the file"):
        read_header(path)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        read_header(tmp_path / "missing.safetensors")


def test_header_order_need_not_be_data_order(tmp_path: Path) -> None:
    """The common layout (each tensor starting where the one before it ends) is checked in the
    reading pass; any other goes through the full check in data order."""
    header = {"b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
              "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "empty": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}}  # inside a: no bytes
    tensors, _ = read_header(raw_file(tmp_path / "m.safetensors", header, 16))
    assert list(tensors) == ["b", "a", "empty"] and tensors["b"].begin == 8
    header["c"] = {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}
    with pytest.raises(ModelError, match="tensors 'b' and 'c' overlap"):
        read_header(raw_file(tmp_path / "m.safetensors", header, 20))


BIG = 2**64  # orjson reads an integer past 64 bits as a float; the error must still be json's


@pytest.mark.parametrize("body", [
    json.dumps({"w": {"dtype": "F32", "shape": [BIG], "data_offsets": [0, 4]}}).encode(),
    json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, BIG]}}).encode(),
    json.dumps({"w": {"dtype": "F32", "shape": [-BIG], "data_offsets": [0, 4]}}).encode(),
    json.dumps({"__metadata__": {"n": BIG}, **GOOD}).encode(),
    json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16], "x": BIG}}).encode(),
    b"\xef\xbb\xbf" + json.dumps(GOOD).encode(),  # a BOM: json takes it, orjson does not
    b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16], "x": NaN}}',
    b'{"w\\ud800": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}',
    json.dumps(GOOD).encode(),
])
def test_orjson_and_json_read_headers_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            body: bytes) -> None:
    pytest.importorskip("orjson")
    path = raw_file(tmp_path / "m.safetensors", body, 16)

    def outcome() -> object:
        try:
            return read_header(path)
        except ModelError as exc:
            return str(exc)

    quick = outcome()
    monkeypatch.setitem(sys.modules, "orjson", None)  # import orjson now fails: json alone
    assert quick_json(b"{}") is None
    assert outcome() == quick
