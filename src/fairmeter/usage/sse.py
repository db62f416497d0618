"""Server-sent events: split a byte stream into events, byte-exact.

`SSESplitter` cuts the upstream byte stream into blocks, each ending with its blank line, and
parses the ``event`` and ``data`` fields of each block (HTML Living Standard, "event stream
interpretation"): lines end with ``\\r\\n``, ``\\n`` or ``\\r``; ``:`` lines are comments; one
space after the colon is dropped; several ``data`` lines are joined with ``\\n``.

Every byte fed ends up in exactly one event's ``raw``, so a gateway can forward events (or drop
one) and the client receives exactly the upstream bytes. A block with no ``data`` line (a comment
keep-alive, a stray blank line) is still returned, with ``data == b""``, so its bytes are kept.

The result never depends on how the stream was chunked. That is why a ``\\r`` at the very end of
the buffer is not acted on until the next byte (or `flush`): it may be the first half of
``\\r\\n``. Streams that use ``\\n`` or ``\\r\\n`` (every provider we speak to) are never delayed.
"""

from __future__ import annotations

from fairmeter.record import record

_BOM = b"\xef\xbb\xbf"


@record
class SSEEvent:
    """One event: its exact bytes (with the terminating blank line), its type and its data."""

    raw: bytes
    event: bytes | None
    data: bytes


def _parse_lines(lines: list[bytes]) -> tuple[bytes | None, bytes]:
    """The ``event`` and joined ``data`` fields of a block's lines (line terminators removed)."""
    event: bytes | None = None
    data: list[bytes] = []
    for line in lines:
        if line.startswith(b"data"):
            if line.startswith(b"data: "):
                data.append(line[6:])
                continue
            if line.startswith(b"data:"):
                data.append(line[5:])
                continue
            if len(line) == 4:
                data.append(b"")
                continue
        if not line or line[0] == 0x3A:  # ':' comment
            continue
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"event":
            event = value
        elif name == b"data":
            data.append(value)
    return event, b"\n".join(data)


def _simple_events(buf: bytes, out: list[SSEEvent]) -> int:
    """Append the whole simple events at the start of ``buf`` to ``out``, as the general path would split them, and
    return the offset where the first other block starts (``len(buf)`` when none does). Simple: one ``data: `` line
    (OpenAI chat), or an ``event: `` line and one ``data: `` line (Anthropic, OpenAI Responses), with LF line ends:
    what providers send, an event or a few a chunk. The caller has made sure that ``buf`` holds no CR and does not
    start the stream (no BOM to drop). ``find``, not ``in``: CPython 3.11's ``bytes in bytes`` first tries its
    operand as an integer and builds (then drops) a TypeError, which costs more than the search itself."""
    parts = buf.split(b"\n\n")
    parts.pop()  # what follows the last "\n\n": an unfinished block, or nothing
    pos = 0
    for part in parts:
        if part[:6] == b"data: ":
            if part.find(b"\n") >= 0:
                break
            event, data = None, part[6:]
        elif part[:7] == b"event: ":
            nl = part.find(b"\n")
            if nl < 0 or part[nl + 1 : nl + 7] != b"data: " or part.find(b"\n", nl + 1) >= 0:
                break
            event, data = part[7:nl], part[nl + 7 :]
        else:
            break
        end = pos + len(part) + 2
        out.append(SSEEvent(buf[pos:end], event, data))  # the whole of ``buf`` is ``buf`` itself, not a copy
        pos = end
    return pos


class SSESplitter:
    """Incremental SSE splitter: ``feed`` bytes as they arrive, ``flush`` at end of stream."""

    __slots__ = ("_buf", "_first", "_lines", "_more", "_pos", "_scan")

    def __init__(self) -> None:
        self._buf = b""  # unconsumed bytes; the current block starts at offset 0
        self._more: list[bytes] = []  # chunks without any line terminator, not yet joined to _buf
        self._pos = 0  # start of the first line of the current block not yet parsed
        self._scan = 0  # no line terminator lies in buf[pos:scan] (avoids rescanning long lines)
        self._lines: list[bytes] = []  # parsed lines of the current block
        self._first = True  # a UTF-8 BOM is ignored at the start of the stream

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes; return the events completed by them, in order."""
        if not chunk:
            return []
        if self._buf:
            # A chunk that ends no line cannot complete an event: keep it aside instead of copying
            # the buffer again (a long event in small chunks stays linear). A pending CR must see
            # the next byte, though.
            if b"\n" not in chunk and b"\r" not in chunk and (self._more or not self._buf.endswith(b"\r")):
                self._more.append(chunk)
                return []
            buf = b"".join((self._buf, *self._more, chunk)) if self._more else self._buf + chunk
            self._more = []
        else:
            if not self._first and chunk[-2:] == b"\n\n" and chunk.find(b"\r") < 0:
                whole: list[SSEEvent] = []
                if _simple_events(chunk, whole) == len(chunk):  # the usual upstream chunk: no scan, no state
                    return whole
            buf = chunk
        out: list[SSEEvent] = []
        start = self._split(buf, out, final=False)
        self._buf = buf[start:]
        self._pos -= start
        self._scan -= start
        return out

    def flush(self) -> list[SSEEvent]:
        """End of stream: return the last, unterminated block (if any) as an event.

        Its complete lines are parsed; a last line without a line terminator is kept in ``raw``
        but not parsed (it may have been cut in the middle).
        """
        buf = b"".join((self._buf, *self._more))
        self._more = []
        out: list[SSEEvent] = []
        start = self._split(buf, out, final=True)
        if start < len(buf):
            lines = self._lines
            if self._first and lines and lines[0].startswith(_BOM):
                lines[0] = lines[0][3:]
            event, data = _parse_lines(lines)
            out.append(SSEEvent(buf[start:], event, data))
        self._buf = b""
        self._pos = self._scan = 0
        self._lines = []
        return out

    def _emit(self, out: list[SSEEvent], raw: bytes) -> None:
        lines = self._lines
        if self._first:
            self._first = False
            if lines and lines[0].startswith(_BOM):
                lines[0] = lines[0][3:]
        event, data = _parse_lines(lines)
        out.append(SSEEvent(raw, event, data))
        self._lines = []

    def _split(self, buf: bytes, out: list[SSEEvent], *, final: bool) -> int:
        """Emit every complete block of ``buf``; return the offset where the unfinished one starts."""
        n = len(buf)
        start = 0  # start of the current block
        pos = self._pos
        scan = max(self._scan, pos)
        lf = buf.find(b"\n", scan)
        cr = buf.find(b"\r", scan)
        if lf < 0:
            lf = n
        if cr < 0:
            cr = n
        if cr == n and lf < n and pos == 0 and not self._lines and not self._first:
            # Bulk path for the usual stream (LF only, simple events): one split instead of a search per event
            # (`_simple_events`). Anything unusual is left to the loop below.
            pos = _simple_events(buf, out)
            if pos:
                start = pos
                lf = buf.find(b"\n", pos)
                if lf < 0:
                    lf = n
        while True:
            if cr == n and not self._lines and pos == start:
                # Fast path, no CR ahead: whole blocks end at the first "\n\n" (or a leading "\n").
                if pos == n:
                    break
                if lf == pos:
                    end = pos + 1
                else:
                    end = buf.find(b"\n\n", pos)
                    if end < 0:
                        # Keep the complete lines of the unfinished block, as the general path would.
                        last = buf.rfind(b"\n", pos)
                        if last >= 0:
                            self._lines = buf[pos:last].split(b"\n")
                            pos = last + 1
                        break
                    body = buf[pos:end]
                    end += 2
                    if (
                        not self._first and body.startswith(b"data: ") and body.find(b"\n") < 0
                    ):  # (find: `_simple_events`)
                        out.append(SSEEvent(buf[start:end], None, body[6:]))  # the usual one-line event
                        start = pos = end
                        lf = buf.find(b"\n", pos)
                        if lf < 0:
                            lf = n
                        continue
                    self._lines = body.split(b"\n")
                self._emit(out, buf[start:end])
                start = pos = end
                lf = buf.find(b"\n", pos)
                if lf < 0:
                    lf = n
                continue
            # General path, one line at a time.
            if lf == n and cr == n:
                break
            if cr < lf:
                if cr + 1 == n and not final:
                    scan = cr  # maybe CRLF: decide when the next byte arrives
                    self._pos = pos
                    self._scan = scan
                    return start
                end, nxt = cr, (cr + 2 if cr + 1 < n and buf[cr + 1] == 0x0A else cr + 1)
            else:
                end, nxt = lf, lf + 1
            if end == pos:
                self._emit(out, buf[start:nxt])
                start = nxt
            else:
                self._lines.append(buf[pos:end])
            pos = nxt
            if lf < pos:
                lf = buf.find(b"\n", pos)
                if lf < 0:
                    lf = n
            if cr < pos:
                cr = buf.find(b"\r", pos)
                if cr < 0:
                    cr = n
        self._pos = pos
        self._scan = n
        return start
