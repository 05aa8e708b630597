"""A link's socket options: on a slow link the reader's low-water mark saves wake-ups without
touching the receive window the kernel advertises."""

import socket

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
