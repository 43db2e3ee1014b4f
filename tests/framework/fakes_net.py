"""Fake network parties, on real 127.0.0.1 sockets: what an honest node or client
meets when the other side misbehaves without meaning to.

- `scripted_tracker(behaviour)`: a one-connection "tracker" that reads one
  request and then does whatever `behaviour(conn)` does (say nothing, hang up,
  answer garbage), for the tracker client's error paths.
- `SilentPeer`: a "peer" the real tracker lists, which accepts connections and
  never says a word, for the node's timeouts and its stop().
- `ListingTracker`: a tracker that lists, besides the peers registered with
  it, whatever addresses a test adds: a poisoned tracker as a node sees it,
  whatever the real tracker's own per-address limits would let through.
- `JunkAddresses`: addresses that are no peer: silent (a listener that never
  accepts, so a connection opens and nothing is ever said) and closed
  (nothing listens: refused at once).
- `FakePeer`: a votechain peer by the protocol (real handshake, as a member of
  the open network with its own key) whose answers the test scripts:
  slow ones, junk blocks, tips it does not hold. It records what it was asked.
- `FakePeersProcess`: FakePeers run by a child process, for tests that
  measure this process's memory: the fakes' threads, buffers and allocator
  arenas then count in the child's, not in the victim's.

Every thread and socket they open is closed on the way out of their `with`.
(The fake control-channel node, for the control tests, is in `framework.fakes`.)
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection as Pipe
from types import TracebackType
from typing import Any

from votechain.core.keys import NodeKey
from votechain.errors import ConnectionClosed, RemoteProtocolError, TrackerProtocolError
from votechain.net.connection import Connection, LocalIdentity
from votechain.net.tracker_client import TrackerClient
from votechain.protocol.peer import Hello, Message
from votechain.protocol.tracker_lines import (
    ErrorReply,
    LineBuffer,
    Nodes,
    Ok,
    Register,
    encode_nodes,
    encode_response,
    parse_request,
)

LOCAL = "127.0.0.1"
Address = tuple[str, int]

# How long a FakePeer waits for the node's next request: a link stays open
# between rounds, and closing the fake ends the wait at once.
IDLE_TIMEOUT = 3600.0

# How often a fake's accept loop looks up to see whether it is being closed.
ACCEPT_POLL = 0.1

# How long a fake waits for the client under test, so that a client that never
# comes cannot hang the suite; far above anything a working client needs.
FAKE_TIMEOUT = 10.0


@contextlib.contextmanager
def scripted_tracker(behaviour: Callable[[socket.socket], None]) -> Iterator[tuple[str, int]]:
    """A one-connection server at the yielded address: it reads one request, then runs
    `behaviour(conn)`, then holds the connection open until the `with` ends."""
    done = threading.Event()
    with socket.create_server((LOCAL, 0)) as listener:
        listener.settimeout(FAKE_TIMEOUT)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:  # nobody came (the test failed before connecting)
                return
            with conn:
                conn.recv(4096)
                # The client under test may hang up mid-send (that is the point of
                # some behaviours): a broken pipe here is expected, not a failure.
                with contextlib.suppress(OSError):
                    behaviour(conn)
                done.wait(FAKE_TIMEOUT)  # hold the connection open until the test ends

        thread = threading.Thread(target=serve, name="scripted-tracker")
        thread.start()
        try:
            host, port = listener.getsockname()[:2]
            yield host, port
        finally:
            done.set()
            thread.join()


@contextlib.contextmanager
def registered(tracker: Address, port: int) -> Iterator[None]:
    """`port` on 127.0.0.1 registered with `tracker` for as long as the `with` lasts
    (a registration is its open connection), whatever listens there."""
    client = TrackerClient(*tracker)
    try:
        client.connect()
        client.register(port)
        yield
    finally:
        client.close()


class SilentPeer:
    """A peer that registers with `tracker`, accepts connections and never answers.

    Connections are left waiting in the listen backlog until `accept()` takes one
    (and keeps it open, silent, until `close()`): a node's request to this peer
    hangs in its handshake until the node's own timeout or stop() ends it."""

    def __init__(self, tracker: tuple[str, int]) -> None:
        self._listener = socket.create_server((LOCAL, 0))
        self._listener.settimeout(FAKE_TIMEOUT)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._accepted: list[socket.socket] = []
        # Registered as long as this connection stays open (the tracker's rule).
        self._registration: TrackerClient | None = None
        self._registration = register_or_close(tracker, self.address[1], self.close)

    def accept(self) -> socket.socket:
        """The next connection a node opened to us (waits for it); closed by `close()`."""
        conn, _ = self._listener.accept()
        self._accepted.append(conn)
        return conn

    def close(self) -> None:
        """Unregister (the tracker drops us with the connection) and close every socket."""
        if self._registration is not None:  # None while registering failed
            self._registration.close()
        for conn in self._accepted:
            conn.close()
        self._listener.close()

    def __enter__(self) -> SilentPeer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Server:
    """A listener on 127.0.0.1 that serves each connection in a thread of its own
    (`serve(conn)`) until `close()`, which closes the listener and every
    connection, and joins every thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._listener = socket.create_server((LOCAL, 0))
        self._listener.settimeout(ACCEPT_POLL)
        self.address: Address = self._listener.getsockname()[:2]
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name=f"{name}-accept")
        self._acceptor.start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(FAKE_TIMEOUT)
            thread = threading.Thread(target=self._serve, args=(conn,), name=self._name)
            with self._lock:
                if self._closing.is_set():
                    conn.close()
                    return
                self._conns.append(conn)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ConnectionClosed, RemoteProtocolError):
            self.serve(conn)

    def close(self) -> None:
        self._closing.set()
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes a recv in the serving thread
        for thread in threads:
            thread.join()


class ListingTracker(_Server):
    """A tracker (the line protocol of protocol/tracker_lines.py) that lists the
    peers registered with it, then every address given to `add`."""

    def __init__(self) -> None:
        self._registered: dict[socket.socket, Address] = {}
        self._extra: list[Address] = []
        super().__init__("listing-tracker")

    def add(self, addresses: Iterable[Address]) -> None:
        with self._lock:
            self._extra.extend(addresses)

    def registered(self) -> list[Address]:
        with self._lock:
            return list(self._registered.values())

    def peers(self) -> list[Address]:
        with self._lock:
            return [*self._registered.values(), *self._extra]

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(None)  # a registration stays as long as its connection
        lines = LineBuffer()
        ip = conn.getpeername()[0]
        try:
            while data := conn.recv(4096):
                lines.feed(data)
                while (line := lines.next_line()) is not None:
                    conn.sendall(self._answer(conn, ip, line))
        finally:
            with self._lock:
                self._registered.pop(conn, None)

    def _answer(self, conn: socket.socket, ip: str, line: bytes) -> bytes:
        try:
            request = parse_request(line)
        except TrackerProtocolError as exc:
            return encode_response(ErrorReply(exc.reason))
        if isinstance(request, Register):
            with self._lock:
                self._registered[conn] = (ip, request.port)
            return encode_response(Ok())
        assert isinstance(request, Nodes)
        return encode_nodes(self.peers())

    def __enter__(self) -> ListingTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class JunkAddresses:
    """`silent` addresses where a connection opens and nothing is ever said (a
    listener that never accepts: the kernel completes the connection in its
    backlog), and `closed` ones where nothing listens (refused at once). Held
    until `close()`; `addresses` lists them all, interleaved."""

    def __init__(self, *, silent: int, closed: int) -> None:
        self._listeners: list[socket.socket] = []
        try:
            for _ in range(silent):
                self._listeners.append(socket.create_server((LOCAL, 0), backlog=16))
            closed_ports = []
            for _ in range(closed):
                # A port just bound and released: nothing listens on it. (The
                # kernel may hand it out again, to a client socket; a connection
                # to it is still refused, as nothing listens.)
                with socket.socket() as probe:
                    probe.bind((LOCAL, 0))
                    closed_ports.append(probe.getsockname()[1])
        except BaseException:
            self.close()
            raise
        self.silent: list[Address] = [lst.getsockname()[:2] for lst in self._listeners]
        self.closed: list[Address] = [(LOCAL, port) for port in closed_ports]
        self.addresses: list[Address] = []
        for i in range(max(silent, closed)):
            self.addresses += self.silent[i:i + 1] + self.closed[i:i + 1]

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()

    def __enter__(self) -> JunkAddresses:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# What a FakePeer says to a request: a message, or None to hang up.
Answer = Callable[[Message], Message | None]


class FakePeer(_Server):
    """A peer speaking the votechain protocol, its answers scripted by `answer`:
    each connection gets the real handshake (our Hello is `hello`, our key
    `key`: on the open network, a member), then every request is recorded in
    `requests`, with the key the asker proved (None: an observer), and
    answered with `answer(request)` (None: hang up). With a `tracker`, it
    registers there for as long as it runs.

    `wait(seconds)` is for answers that must come slowly: it returns early when
    the fake is closed, so a slow answer never holds up a test's teardown."""

    def __init__(self, hello: Hello, answer: Answer, *, key: NodeKey,
                 tracker: Address | None = None) -> None:
        self._hello = hello
        self._answer = answer
        self._identity = LocalIdentity(key)
        self.requests: list[tuple[bytes | None, Message]] = []
        super().__init__("fake-peer")
        self._registration: TrackerClient | None = None
        if tracker is not None:
            self._registration = register_or_close(tracker, self.address[1], self.close)

    def wait(self, seconds: float) -> None:
        """Let `seconds` pass, or less if the fake is being closed."""
        self._closing.wait(seconds)

    def asked(self, kind: type[Message], by: bytes | None = None) -> list[Message]:
        """The requests of one type received so far, in order; with `by`, only
        those from the node whose public key that is."""
        with self._lock:
            return [msg for key, msg in self.requests
                    if isinstance(msg, kind) and (by is None or key == by)]

    def serve(self, conn: socket.socket) -> None:
        peer = Connection(conn, timeout=FAKE_TIMEOUT)
        asker = peer.handshake(self._hello, initiator=False, identity=self._identity).key
        peer.timeout = IDLE_TIMEOUT  # the node asks when it likes; close() wakes the read
        while not self._closing.is_set():
            request = peer.recv()
            with self._lock:
                self.requests.append((asker, request))
            reply = self._answer(request)
            if reply is None:
                return
            peer.send(reply)

    def close(self) -> None:
        if self._registration is not None:
            self._registration.close()
        super().close()

    def __enter__(self) -> FakePeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Makes the answers of each fake, in the child: a module-level function, so that
# the child can import it by name (the spawn start method pickles a reference).
MakeAnswers = Callable[..., list[Answer]]


def _serve_fakes(pipe: Pipe, hello: Hello, make: MakeAnswers, args: tuple[Any, ...],
                 tracker: Address | None) -> None:
    """The child of FakePeersProcess: one FakePeer per answer `make(*args)`
    returns, each with a key of its own; then answers the parent's questions
    ("asked", a message type: what each fake was asked of it) until "stop"."""
    with contextlib.ExitStack() as stack:
        fakes = [stack.enter_context(FakePeer(hello, answer, key=NodeKey.generate(),
                                              tracker=tracker))
                 for answer in make(*args)]
        pipe.send([fake.address for fake in fakes])
        while (question := pipe.recv()) != "stop":
            pipe.send([fake.asked(question[1]) for fake in fakes])


class FakePeersProcess:
    """FakePeers (their answers made by `make(*args)`, in the child) run by a
    child process, until `close()`. `addresses` lists them; `asked(kind)` is
    each one's FakePeer.asked(kind), fetched from the child."""

    def __init__(self, hello: Hello, make: MakeAnswers, *args: Any,
                 tracker: Address | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child_end = context.Pipe()
        self._process = context.Process(target=_serve_fakes, name="fake-peers", daemon=True,
                                        args=(child_end, hello, make, args, tracker))
        self._process.start()
        child_end.close()
        try:
            if not self._pipe.poll(FAKE_TIMEOUT * 6):  # imports and key generation
                raise TimeoutError("the fake peers' process did not start")
            self.addresses: list[Address] = self._pipe.recv()
        except BaseException:
            self.close()
            raise

    def asked(self, kind: type[Message]) -> list[list[Message]]:
        self._pipe.send(("asked", kind))
        answer: list[list[Message]] = self._pipe.recv()
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._pipe.send("stop")
        self._process.join(FAKE_TIMEOUT)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._pipe.close()

    def __enter__(self) -> FakePeersProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def register_or_close(tracker: Address, port: int, close: Callable[[], None]) -> TrackerClient:
    """A tracker registration of `port`, alive as long as the returned client's
    connection; if it fails, `close()` the fake being set up, then raise."""
    client = TrackerClient(*tracker)
    try:
        client.connect()
        client.register(port)
    except BaseException:
        client.close()
        close()
        raise
    return client
