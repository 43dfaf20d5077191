"""The loopback TF-Serving test fixture's request-size limit and read timeout.

A hand-made SavedModel (y = 2x, float [None]) is served with a 1 KiB body limit and a short
read timeout; raw sockets play the misbehaving clients.
"""
import http.client
import json
import socket
import time

import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.testing.local_server import (DEFAULT_MAX_REQUEST_BYTES,
                                                  DEFAULT_READ_TIMEOUT, LocalModelServer)

LIMIT = 1024
TIMEOUT = 0.5
PREDICT = "/v1/models/double:predict"


class _Double(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        return {"y": 2.0 * x}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    version = tmp_path_factory.mktemp("saved_models") / "double" / "1"
    module = _Double()
    tf.saved_model.save(module, str(version), signatures={"serving_default": module.serve})
    (version / "metadata.json").write_text("{}")
    with LocalModelServer(version.parent.parent, grpc_port=None, max_request_bytes=LIMIT,
                          read_timeout=TIMEOUT) as running:
        yield running


def _connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.rest_port))
    sock.settimeout(10 * TIMEOUT + 5)  # a server that never answers fails the test, not hangs it
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _post(server, body: bytes):
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    try:
        conn.request("POST", PREDICT, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Connection")
    finally:
        conn.close()


def test_defaults_are_tf_servings():
    assert DEFAULT_MAX_REQUEST_BYTES == 2**31 - 1  # gRPC SetMaxMessageSize(kint32max)
    assert DEFAULT_READ_TIMEOUT == 50.0             # libevent evhttp's HTTP_READ_TIMEOUT


def test_normal_requests_still_work_on_one_keep_alive_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    try:
        for values in ([1.0, 2.5], [-3.0]):
            conn.request("POST", PREDICT, body=json.dumps({"instances": values}))
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read()) == {"predictions": [2 * v for v in values]}
        conn.request("GET", "/v1/models/double")
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        conn.close()


def test_a_body_at_the_limit_is_read_and_one_byte_more_gets_413(server):
    # Padding with spaces keeps the JSON valid, so the size alone decides.
    body = json.dumps({"instances": [1.0]}).encode()
    at_limit = body + b" " * (LIMIT - len(body))
    status, answer, _ = _post(server, at_limit)
    assert (status, answer) == (200, {"predictions": [2.0]})

    status, answer, connection = _post(server, at_limit + b" ")
    assert status == 413
    assert answer == {"error": f"Request body of {LIMIT + 1} bytes exceeds the limit of "
                               f"{LIMIT} bytes"}
    assert connection == "close"


def test_an_oversized_content_length_is_refused_before_the_body_arrives(server):
    with _connect(server) as sock:
        sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n"
                     f"\r\n".encode())
        answer = _read_all(sock)  # the server answers and closes without waiting for a body
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"exceeds the limit" in answer


def test_a_content_length_longer_than_the_body_times_out(server):
    with _connect(server) as sock:
        sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
                     '{"instances": [1.0]}'.encode())
        start = time.monotonic()
        answer = _read_all(sock)
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"expected 500 body bytes" in answer
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 5


def test_a_half_sent_request_head_and_an_idle_connection_are_closed(server):
    for head in (b"POST /v1/models/double:predict HTTP/1.1\r\nContent-Le", b""):
        with _connect(server) as sock:
            if head:
                sock.sendall(head)
            start = time.monotonic()
            assert _read_all(sock) == b""  # closed with nothing to answer
            assert time.monotonic() - start < TIMEOUT + 5


def test_a_bad_content_length_gets_400(server):
    with _connect(server) as sock:
        sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".encode())
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"Invalid Content-Length header: '-5'" in answer


def test_limits_are_checked_when_the_server_is_made(tmp_path):
    with pytest.raises(ValueError, match="max_request_bytes"):
        LocalModelServer(tmp_path, max_request_bytes=2**31)
    with pytest.raises(ValueError, match="read_timeout"):
        LocalModelServer(tmp_path, read_timeout=0)
