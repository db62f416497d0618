"""SSESplitter: byte-exact events, every separator, any chunking (checked against a slow reference)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fairmeter.usage.sse import SSEEvent, SSESplitter

Triple = tuple[bytes, bytes | None, bytes]


def reference(stream: bytes) -> list[Triple]:
    """A byte-at-a-time reading of the SSE grammar (slow, obviously right) for the whole stream."""
    out: list[Triple] = []
    i = start = 0
    n = len(stream)
    lines: list[bytes] = []
    while i < n:
        j = i
        while j < n and stream[j] not in (0x0A, 0x0D):
            j += 1
        if j == n:
            break
        nxt = j + 2 if stream[j] == 0x0D and j + 1 < n and stream[j + 1] == 0x0A else j + 1
        if j == i:
            out.append((stream[start:nxt], *fields(lines, first=not out)))
            start, lines = nxt, []
        else:
            lines.append(stream[i:j])
        i = nxt
    if start < n:
        out.append((stream[start:], *fields(lines, first=not out)))
    return out


def fields(lines: list[bytes], *, first: bool) -> tuple[bytes | None, bytes]:
    event: bytes | None = None
    data: list[bytes] = []
    for k, line in enumerate(lines):
        if first and k == 0 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if line.startswith(b":"):
            continue
        if b":" in line:
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
        else:
            name, value = line, b""
        if name == b"event":
            event = value
        elif name == b"data":
            data.append(value)
    return event, b"\n".join(data)


def split(stream: bytes, cuts: list[int]) -> list[SSEEvent]:
    splitter = SSESplitter()
    events: list[SSEEvent] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        events.extend(splitter.feed(stream[last:cut]))
        last = cut
    events.extend(splitter.flush())
    return events


def triples(events: list[SSEEvent]) -> list[Triple]:
    return [(e.raw, e.event, e.data) for e in events]


def test_lf_events() -> None:
    s = SSESplitter()
    events = s.feed(b'data: {"a":1}\n\nevent: ping\ndata: {}\n\n')
    assert triples(events) == [(b'data: {"a":1}\n\n', None, b'{"a":1}'), (b"event: ping\ndata: {}\n\n", b"ping", b"{}")]
    assert s.flush() == []


def test_crlf_and_cr_separators() -> None:
    assert triples(SSESplitter().feed(b"event: x\r\ndata: 1\r\n\r\n")) == [(b"event: x\r\ndata: 1\r\n\r\n", b"x", b"1")]
    s = SSESplitter()
    # A trailing CR may be half of CRLF: the event is released by the next byte or by flush.
    assert s.feed(b"data: 1\r\r") == []
    assert triples(s.feed(b"data: 2\r\r")) == [(b"data: 1\r\r", None, b"1")]
    assert triples(s.flush()) == [(b"data: 2\r\r", None, b"2")]


def test_multiline_data_comments_and_field_forms() -> None:
    raw = b": keep-alive\ndata: line1\ndata:line2\ndata\nid: 7\nretry: 10\nevent:done\n\n"
    assert triples(SSESplitter().feed(raw)) == [(raw, b"done", b"line1\nline2\n")]


def test_comment_only_block_and_stray_blank_lines_keep_their_bytes() -> None:
    raw = b"\n: ping\n\n\ndata: x\n\n"
    events = SSESplitter().feed(raw)
    assert triples(events) == [
        (b"\n", None, b""),
        (b": ping\n\n", None, b""),
        (b"\n", None, b""),
        (b"data: x\n\n", None, b"x"),
    ]


def test_event_split_across_chunks() -> None:
    s = SSESplitter()
    assert s.feed(b"da") == []
    assert s.feed(b"ta: hel") == []
    assert s.feed(b"lo\n") == []
    assert triples(s.feed(b"\ndata: next")) == [(b"data: hello\n\n", None, b"hello")]
    # at end of stream the unterminated last line is kept in raw but not parsed
    assert triples(s.flush()) == [(b"data: next", None, b"")]


def test_flush_parses_complete_lines_of_an_unterminated_block() -> None:
    s = SSESplitter()
    assert s.feed(b'data: {"usage":1}\n') == []
    assert triples(s.flush()) == [(b'data: {"usage":1}\n', None, b'{"usage":1}')]


def test_bom_is_ignored_at_stream_start_only() -> None:
    assert triples(SSESplitter().feed(b"\xef\xbb\xbfdata: a\n\n")) == [(b"\xef\xbb\xbfdata: a\n\n", None, b"a")]
    assert SSESplitter().feed(b"data: a\n\n\xef\xbb\xbfdata: b\n\n")[1].data == b""


def test_switch_between_fast_and_general_paths() -> None:
    # LF-only lines pending when a CR shows up in a later chunk must keep their line boundaries.
    stream = b"event: a\ndata: 1\n" + b"data: 2\r\r" + b"data: 3\n\n"
    for cut in range(1, len(stream)):
        assert triples(split(stream, [cut])) == reference(stream)


sse_bytes = st.lists(
    st.sampled_from([b"\n", b"\r", b"\r\n", b"data", b"data:", b": ", b"event: x", b":", b"a", b"\xef\xbb\xbf", b"{}"]),
    max_size=40,
).map(b"".join)


@settings(max_examples=400)
@given(stream=sse_bytes, data=st.data())
def test_any_chunking_gives_the_reference_events(stream: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    events = split(stream, cuts)
    assert all(e.raw for e in events)
    assert b"".join(e.raw for e in events) == stream
    assert triples(events) == reference(stream)


def test_a_chunk_of_whole_events_with_a_stray_line_end_after_them() -> None:
    first = b"data: 0\n\n"  # the shortcut is for chunks after the first
    for rest in (
        b"data: {}\n\n\n",
        b"data: 1\n\ndata: 2\n\n\n",
        b"data: 1\n\n\n\n",
        b"data: 1\n\n\ndata: 2\n\n",
        b"event: e\ndata: 1\n\n\n",
    ):
        stream = first + rest
        assert triples(split(stream, [len(first)])) == reference(stream)


# Provider-like events (mostly one ``data: `` line, or an ``event: `` and a ``data: `` line, with LF ends; now and
# then anything else), so that chunks made of
# whole events, the usual upstream chunk, take the splitter's shortcut for them as often as not.
provider_events = st.lists(
    st.one_of(
        st.builds(lambda p: b"data: " + p + b"\n\n", st.sampled_from([b"{}", b"[DONE]", b"", b"x: 1", b"data: y"])),
        st.sampled_from(
            [
                b"event: e\ndata: 1\n\n",
                b"event: message_delta\ndata: {}\n\n",
                b"event: a: b\ndata: : x\n\n",
                b"event: e\ndata: 1\ndata: 2\n\n",
                b"event: e\n\n",
                b"event:e\ndata: 1\n\n",
                b"event: e\ndata:1\n\n",
                b"event: e\nid: 1\n\n",
                b": ping\n\n",
                b"\n",
                b"data: a\r\n\r\n",
                b"data:b\n\n",
            ]
        ),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300)
@given(events=provider_events, data=st.data())
def test_chunks_of_whole_events_give_the_reference_events(events: list[bytes], data: st.DataObject) -> None:
    bounds = [sum(len(e) for e in events[:k]) for k in range(len(events) + 1)]
    stream = b"".join(events)
    cuts = data.draw(st.lists(st.sampled_from(bounds), max_size=8))  # between events only
    cuts += data.draw(st.lists(st.integers(0, len(stream)), max_size=2))  # and now and then anywhere
    got = split(stream, cuts)
    assert b"".join(e.raw for e in got) == stream
    assert triples(got) == reference(stream)


@given(stream=st.binary(max_size=300), data=st.data())
def test_arbitrary_bytes_any_chunking(stream: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    assert triples(split(stream, cuts)) == triples(split(stream, [])) == reference(stream)


def test_long_line_in_many_chunks_is_linear() -> None:
    line = b"data: " + b"x" * 200_000 + b"\n\n"
    s = SSESplitter()
    events = []
    for i in range(0, len(line), 100):
        events += s.feed(line[i : i + 100])
    assert len(events) == 1 and len(events[0].data) == 200_000
