"""Prints the TF_CONFIG of one worker of the indexed Job in train-retrieval-multiworker.yaml.

    export TF_CONFIG="$(python deploy/k8s/tf_config.py)"

Reads:
  JOB_COMPLETION_INDEX  this pod's index (set by Kubernetes in every pod of an indexed Job)
  NUM_WORKERS           the Job's completions (= parallelism)
  JOB_NAME              the Job's name: pod i's hostname is <JOB_NAME>-<i>
  SERVICE_NAME          the headless Service the pods name as their subdomain, so
                        <JOB_NAME>-<i>.<SERVICE_NAME> resolves to pod i
  WORKER_PORT           the port every worker's gRPC server listens on (default 12345)

Worker 0 is the chief (`recommenders_tf.models.distribute.is_chief`). Standard library only:
it runs before anything else in the container.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Mapping

DEFAULT_PORT = 12345


def tf_config(env: Mapping[str, str]) -> dict:
    """The TF_CONFIG dict of the worker that `env` describes; ValueError on a bad setting."""
    missing = [name for name in ("JOB_COMPLETION_INDEX", "NUM_WORKERS", "JOB_NAME",
                                 "SERVICE_NAME") if not env.get(name)]
    if missing:
        raise ValueError(f"missing environment variable(s) {', '.join(missing)}")
    try:
        index = int(env["JOB_COMPLETION_INDEX"])
        workers = int(env["NUM_WORKERS"])
        port = int(env.get("WORKER_PORT") or DEFAULT_PORT)
    except ValueError as err:
        raise ValueError(f"JOB_COMPLETION_INDEX, NUM_WORKERS and WORKER_PORT must be "
                         f"integers ({err})") from None
    if workers < 1 or not 0 <= index < workers:
        raise ValueError(f"JOB_COMPLETION_INDEX={index} is not a worker of NUM_WORKERS={workers}")
    hosts = [f"{env['JOB_NAME']}-{i}.{env['SERVICE_NAME']}:{port}" for i in range(workers)]
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}


if __name__ == "__main__":
    try:
        print(json.dumps(tf_config(os.environ), sort_keys=True))
    except ValueError as err:
        sys.exit(f"tf_config.py: {err}")
