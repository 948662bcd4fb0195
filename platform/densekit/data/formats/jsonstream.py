"""Streaming the objects of a JSON array (or JSON Lines) of any size, one record at a time."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path

from densekit.data.formats.base import BOM
from densekit.errors import InputError


class _TextChunks:
    """Decode a binary file chunk by chunk as UTF-8; invalid bytes raise InputError with the line."""

    def __init__(self, f, path, chunk: int | None = None):
        self.f, self.path, self.chunk = f, path, chunk or JSON_CHUNK
        self.dec = codecs.getincrementaldecoder("utf-8")("strict")
        self.newlines = 0  # newlines in the bytes already decoded
        self.first = True
        self.eof = False

    def read(self) -> str | None:
        if self.eof:
            return None
        data = self.f.read(self.chunk)
        if self.first:
            self.first = False
            if data.startswith(BOM):
                data = data[3:]
        final = not data
        try:
            text = self.dec.decode(data, final=final)
        except UnicodeDecodeError as e:
            line = self.newlines + e.object.count(b"\n", 0, e.start) + 1
            raise InputError(self.path, line, "invalid UTF-8; expected UTF-8 JSON") from None
        self.newlines += data.count(b"\n")
        if final:
            self.eof = True
        return text


JSON_CHUNK = 1 << 20  # bytes read at a time by iter_json_records
_WS = re.compile(r"[ \t\r\n]*")
MAX_RECORD_CHARS = 256 << 20


def iter_json_records(path: str | Path, what: str) -> Iterator[tuple[int, int, dict]]:
    """Stream the objects of a JSON array (or of JSON Lines) without loading the file.

    Yields (1-based record number, 1-based line where the record starts, object). Works on files
    of many GB, pretty-printed or on one line: records are decoded one at a time with
    `json.JSONDecoder.raw_decode` from a sliding text buffer. Syntax errors name the line.
    """
    path = Path(path)
    dec = json.JSONDecoder()
    with open(path, "rb") as f:
        src = _TextChunks(f, path)
        buf, pos = "", 0
        cur_pos, cur_line = 0, 1  # line-number cursor: buf[cur_pos] is on line cur_line

        def line_at(p: int) -> int:
            nonlocal cur_pos, cur_line
            if p < cur_pos:  # never happens for forward scans; stay correct anyway
                return cur_line - buf.count("\n", p, cur_pos)
            cur_line += buf.count("\n", cur_pos, p)
            cur_pos = p
            return cur_line

        def more() -> bool:
            nonlocal buf, pos, cur_pos
            chunk = src.read()
            if chunk is None:
                return False
            line_at(pos)
            buf = buf[pos:] + chunk
            cur_pos -= pos
            pos = 0
            return True

        def skip_ws() -> bool:
            nonlocal pos
            while True:
                pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
                if pos < len(buf):
                    return True
                if not more():
                    return False

        if not skip_ws():
            raise InputError(path, None, f"empty file; expected {what}")
        array = buf[pos] == "["
        if array:
            pos += 1
        elif buf[pos] != "{":
            raise InputError(path, line_at(pos), f"expected a JSON array of objects or JSON lines; {what}")
        record = 0
        while True:
            if not skip_ws():
                if array:
                    raise InputError(path, line_at(len(buf)), "unexpected end of file: the JSON array is not closed by ']'")
                break
            if array:
                if buf[pos] == "]":
                    pos += 1
                    if skip_ws():
                        raise InputError(path, line_at(pos), "unexpected data after the closing ']'")
                    break
                if record:
                    if buf[pos] != ",":
                        raise InputError(path, line_at(pos), f"expected ',' or ']' after record {record}")
                    pos += 1
                    if not skip_ws():
                        raise InputError(path, line_at(len(buf)), "unexpected end of file inside the JSON array")
            start = line_at(pos)
            last = None
            while True:
                try:
                    obj, end = dec.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    sig = (e.msg, e.pos - pos)
                    genuine = sig == last and not e.msg.startswith("Unterminated string")
                    if genuine or src.eof or len(buf) - pos > MAX_RECORD_CHARS:
                        raise InputError(
                            path, line_at(e.pos), f"invalid JSON in record {record + 1} ({e.msg}); expected {what}"
                        ) from None
                    last = sig
                    more()
            record += 1
            pos = end
            yield record, start, obj
