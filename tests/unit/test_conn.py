"""A link's socket options: on a slow link the reader's low-water mark saves wake-ups without
touching the receive window the kernel advertises."""

import socket
import time
import types

import pytest

from node import conn


@pytest.mark.skipif(not hasattr(socket, "SO_RCVLOWAT"), reason="SO_RCVLOWAT: Linux")
def test_a_low_water_mark_leaves_the_receive_window_alone():
    """Linux grows the buffer and clamps the window to a mark over half the buffer
    (tcp_set_rcvlowat); the node's mark stays within it, however much data it waits for."""
    srv = socket.create_server(("127.0.0.1", 0))
    links = []

    def receiver():
        links.append(socket.create_connection(srv.getsockname()))
        links.append(srv.accept()[0])
        return links[-1]

    try:
        ours, theirs = receiver(), receiver()
        rcvbuf = ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        mark = conn.lowat_within(conn.RCVLOWAT_MAX, rcvbuf)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == rcvbuf
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, rcvbuf)  # what the check guards against
        assert theirs.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > rcvbuf
        assert 1 <= mark <= rcvbuf // 2 and conn.lowat_within(0, rcvbuf) == 1
    finally:
        for s in links + [srv]:
            s.close()


@pytest.mark.skipif(not hasattr(socket, "SO_RCVLOWAT"), reason="SO_RCVLOWAT: Linux")
def test_data_held_under_the_low_water_mark_counts_as_the_peer_sending_while_it_grows():
    """A reader waiting for its mark has not seen the data the kernel holds for it. The stall
    check must: a link whose rate fell would otherwise close with a piece half in; and a peer
    that stopped mid-piece must still be found stalled once the held data stops growing."""
    srv = socket.create_server(("127.0.0.1", 0))
    theirs = socket.create_connection(srv.getsockname())
    ours = srv.accept()[0]
    try:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 32 << 10)
        link = types.SimpleNamespace(_lowat=32 << 10, _held=0, sock=ours)
        assert not conn.Conn._held_grew(link)
        for _ in range(2):
            theirs.sendall(bytes(1000))  # under the mark: the reader sleeps, the peer is sending
            time.sleep(0.1)
            assert conn.Conn._held_grew(link)
        assert not conn.Conn._held_grew(link)  # nothing more came: a stall after all
    finally:
        for s in (ours, theirs, srv):
            s.close()
