"""Bounded clients, on real sockets against the real server: header size and time, body
time, idle connections, the connection cap; the parser's smuggling defences stay."""

import asyncio
import threading
import time

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from services.kernel.config import ServerConfig
from services.kernel.server import raise_open_file_limit
from services.kernel.service import ServiceApp
from tests.server.harness import (
    RecordingEndpoint,
    assert_openai_error,
    connect,
    parse_response,
    read_until_closed,
    serving,
    small_app,
    wait_for,
)

GET_HELLO = b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n"


def test_a_plain_keep_alive_connection_is_served():
    with serving(small_app()) as running, connect(running.port) as sock:
        for _ in range(3):
            sock.sendall(GET_HELLO)
            head = b""
            while not head.endswith(b"hello"):
                head += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 ")
        # Two pipelined requests in one write: two answers, in order.
        sock.sendall(GET_HELLO * 2)
        seen = b""
        while seen.count(b"hello") < 2:
            seen += sock.recv(65536)
        assert seen.count(b"HTTP/1.1 200 ") == 2


def test_headers_over_the_limit_get_431_and_the_connection_closes():
    config = ServerConfig(max_header_bytes=4096)
    with serving(small_app(), config) as running:
        # An unfinished header past the limit: refused without waiting for its end.
        with connect(running.port) as sock:
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 6000)
            assert_openai_error(
                parse_response(read_until_closed(sock)), 431, "request_header_fields_too_large"
            )
        # A complete request whose headers are too large, arriving in one piece.
        with connect(running.port) as sock:
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 6000 + b"\r\n\r\n")
            assert_openai_error(
                parse_response(read_until_closed(sock)), 431, "request_header_fields_too_large"
            )
        # Many small headers add up the same way.
        with connect(running.port) as sock:
            many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(100))
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: test\r\n" + many + b"\r\n")
            assert_openai_error(
                parse_response(read_until_closed(sock)), 431, "request_header_fields_too_large"
            )
        # Just under the limit is served.
        with connect(running.port) as sock:
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 3800 + b"\r\n\r\n")
            assert parse_response(sock.recv(65536)).status == 200
        assert running.server.guard.header_too_large == 3


def test_an_8_mb_header_is_cut_off_early():
    # Today's behaviour was to buffer all of it (and 20 such connections added 180 MB).
    with serving(small_app(), ServerConfig()) as running, connect(running.port) as sock:
        sent = 0
        chunk = b"a" * 65536
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: test\r\nX-Big: ")
        try:
            while sent < 8 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us mid-header: what should happen
        wait_for(lambda: running.server.guard.header_too_large == 1, "the 431")
        read_until_closed(sock)  # returns: the server closed the connection
        wait_for(lambda: not running.server.server_state.connections, "the connection to go")


def test_headers_sent_one_byte_at_a_time_get_408():
    config = ServerConfig(header_timeout_s=0.5)
    with serving(small_app(), config) as running, connect(running.port) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\n")
        received = b""
        sock.settimeout(0.1)
        started = time.monotonic()
        while time.monotonic() - started < 30:
            try:
                sock.sendall(b"X")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        assert_openai_error(parse_response(received), 408, "request_timeout")
        assert running.server.guard.header_timeouts == 1


def test_a_body_too_slow_gets_408_and_the_app_sees_a_disconnect():
    recording = RecordingEndpoint()
    config = ServerConfig(body_timeout_s=0.5)
    with serving(small_app(recording), config) as running, connect(running.port) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        response = parse_response(read_until_closed(sock))
        assert_openai_error(response, 408, "request_timeout")
        messages = recording.messages.get(timeout=30)
        assert messages[0] == {"type": "http.request", "body": b"x" * 10, "more_body": True}
        assert messages[-1] == {"type": "http.disconnect"}
        assert running.server.guard.body_timeouts == 1


def test_a_body_in_time_is_read_whole():
    recording = RecordingEndpoint()
    with (
        serving(small_app(recording), ServerConfig(body_timeout_s=30)) as running,
        connect(running.port) as sock,
    ):
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        time.sleep(0.05)
        sock.sendall(b"y" * 90)
        response = parse_response(sock.recv(65536))
        assert response.status == 200
        assert response.json() == {"received": 100}


def test_idle_connections_are_closed():
    config = ServerConfig(idle_timeout_s=0.3)
    with serving(small_app(), config) as running:
        socks = [connect(running.port) for _ in range(50)]
        try:
            for sock in socks:
                assert read_until_closed(sock) == b""  # closed, nothing said
        finally:
            for sock in socks:
                sock.close()
        wait_for(lambda: running.server.guard.idle_closed == 50, "50 idle closes")
        wait_for(lambda: not running.server.server_state.connections, "no open connection")


def test_past_the_connection_cap_new_connections_get_503(caplog):
    config = ServerConfig(max_connections=3, idle_timeout_s=60)
    with serving(small_app(), config) as running:
        held = [connect(running.port) for _ in range(3)]
        wait_for(lambda: len(running.server.server_state.connections) == 3, "three connections")
        try:
            for _ in range(2):
                with connect(running.port) as extra:
                    response = parse_response(read_until_closed(extra))
                    assert_openai_error(response, 503, "too_many_connections")
                    assert response.headers["retry-after"] == "1"
            assert running.server.guard.refused == 2
            refusals = [r for r in caplog.records if "connection cap" in r.getMessage()]
            assert len(refusals) == 1  # rate-limited: one line for the burst
            # Below the cap again, a new connection is served.
            held.pop().close()
            wait_for(lambda: len(running.server.server_state.connections) == 2, "a free slot")
            with connect(running.port) as sock:
                sock.sendall(GET_HELLO)
                assert parse_response(sock.recv(65536)).status == 200
        finally:
            for sock in held:
                sock.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        # Both framings: a proxy may read one and the server the other (request smuggling).
        b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /hello HTTP/1.1\r\n\r\n",
        # Two different lengths.
        b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        # Not HTTP at all.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n",
    ],
    ids=["cl-and-te", "two-lengths", "garbage"],
)
def test_ambiguous_or_broken_requests_get_400_and_reach_no_app(request_bytes):
    recording = RecordingEndpoint()
    with serving(small_app(recording)) as running, connect(running.port) as sock:
        sock.sendall(request_bytes)
        assert_openai_error(parse_response(read_until_closed(sock)), 400, "invalid_http_request")
        assert recording.messages.empty()
        assert running.server.guard.bad_requests == 1


def test_the_open_file_limit_is_raised_to_the_hard_limit():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        assert raise_open_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_connection_cap_leaves_half_the_open_files():
    from services.kernel.server import connection_guard

    assert connection_guard(ServerConfig(max_connections=10_000), 1024).max_connections == 512
    assert connection_guard(ServerConfig(max_connections=100), 1024).max_connections == 100


def test_many_slow_clients_do_not_stop_the_others():
    # Clients dribbling headers hold nothing but their connection; a normal request goes through.
    config = ServerConfig(header_timeout_s=30)
    with serving(small_app(), config) as running:
        slow = [connect(running.port) for _ in range(20)]
        try:
            for sock in slow:
                sock.sendall(b"GET /hello HTTP/1.1\r\nX-Slow: ")
            done = threading.Event()

            def fast() -> None:
                with connect(running.port) as sock:
                    sock.sendall(GET_HELLO)
                    if parse_response(sock.recv(65536)).status == 200:
                        done.set()

            thread = threading.Thread(target=fast)
            thread.start()
            thread.join(timeout=30)
            assert done.is_set()
        finally:
            for sock in slow:
                sock.close()


def early_answer_app() -> ServiceApp:
    """POST /early answers at once, before reading the body (as a 413 on Content-Length does)."""

    async def early(request: Request) -> Response:
        return PlainTextResponse("early")

    return small_app(extra_routes=[Route("/early", early, methods=["POST"])])


def test_after_an_early_answer_the_rest_of_the_body_is_read_and_the_connection_reused():
    config = ServerConfig(body_timeout_s=0.3, idle_timeout_s=60)
    with serving(early_answer_app(), config) as running, connect(running.port) as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: test\r\nContent-Length: 20\r\n\r\n0123456789")
        assert b"early" in sock.recv(65536)
        sock.sendall(b"0123456789")  # the rest of the body, after the answer
        time.sleep(0.6)  # longer than the body deadline: it must not fire on an idle connection
        sock.sendall(GET_HELLO)
        assert parse_response(sock.recv(65536)).status == 200
        assert running.server.guard.body_timeouts == 0


def test_an_early_answer_does_not_keep_a_body_coming_forever():
    config = ServerConfig(body_timeout_s=0.3, idle_timeout_s=60)
    with serving(early_answer_app(), config) as running, connect(running.port) as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n0123456789")
        answered = read_until_closed(sock)  # the body never completes: closed at its deadline
        assert parse_response(answered).status == 200
        assert running.server.guard.body_timeouts == 1


def test_a_pipelined_request_with_huge_headers_closes_the_connection_after_the_answer_under_way():
    release = threading.Event()

    async def held(request: Request) -> Response:
        await asyncio.to_thread(release.wait, 30)
        return PlainTextResponse("held")

    app = small_app(extra_routes=[Route("/held", held)])
    with serving(app, ServerConfig(max_header_bytes=4096)) as running, connect(running.port) as sock:
        try:
            sock.sendall(b"GET /held HTTP/1.1\r\nHost: test\r\n\r\n")
            wait_for(lambda: running.server.server_state.tasks, "the first request to be under way")
            sock.sendall(b"GET /hello HTTP/1.1\r\nX-Big: " + b"a" * 10_000)
            wait_for(lambda: running.server.guard.header_too_large == 1, "the oversized pipelined headers")
        finally:
            release.set()
        received = read_until_closed(sock)
        assert received.startswith(b"HTTP/1.1 200 ")
        assert received.endswith(b"held")  # the answer under way ends whole, nothing after it


def test_expect_100_continue_is_answered_before_the_body_is_sent():
    recording = RecordingEndpoint()
    with serving(small_app(recording)) as running, connect(running.port) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        seen = b""
        while not seen.endswith(b"\r\n\r\n"):
            seen += sock.recv(65536)
        assert seen == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 ")
