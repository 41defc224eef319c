from services.router.providers.sse import EventSplitter, data_of


def test_events_split_across_arbitrary_chunk_boundaries():
    stream = b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n'
    for size in range(1, len(stream) + 1):
        splitter = EventSplitter()
        events = []
        for i in range(0, len(stream), size):
            events += splitter.feed(stream[i : i + size])
        assert events == [b'data: {"a":1}', b'data: {"b":2}', b": keep-alive", b"data: [DONE]"], size
        assert splitter.rest() == b""


def test_data_of_joins_data_lines_and_ignores_comments():
    assert data_of(b"data: x") == b"x"
    assert data_of(b"data:x") == b"x"
    assert data_of(b"event: e\ndata: a\ndata: b") == b"a\nb"
    assert data_of(b": comment") is None
