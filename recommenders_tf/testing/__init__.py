"""Test fixtures; nothing here is used to serve models.

* `local_server`: `LocalModelServer`, a test fixture: a loopback imitation of TF Serving's REST
  and gRPC APIs over real exported SavedModels, for tests and local demos, not a production
  server (no batching, no config polling, Python request handling). Serve models with TF
  Serving itself (see the README's "Serving with TF Serving").

    >>> from recommenders_tf.testing.local_server import LocalModelServer
    >>> with LocalModelServer("saved_models") as server:   # 127.0.0.1, ephemeral ports
    ...     server.rest_port, server.grpc_port

  python -m recommenders_tf.testing.local_server --base-dir saved_models --rest-port 8501

Kept apart from `recommenders_tf.serving` so that the served package does not carry it; it
speaks the same contract (`recommenders_tf.serving.contract`) as the exports and clients.
"""
