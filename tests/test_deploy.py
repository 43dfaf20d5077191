"""deploy/k8s: the two-worker train_retrieval Job, its Service and volume, and the TF_CONFIG each
pod computes. Parsed and run locally (no cluster): the pod's shell wrapper runs with a stand-in
`python` that reports what the training command would have received."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "deploy" / "k8s" / "train-retrieval-multiworker.yaml"
TF_CONFIG_SCRIPT = REPO / "deploy" / "k8s" / "tf_config.py"


def _objects():
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {d["kind"]: d for d in docs}, docs


def _container(job):
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def _pod_env(container, index):
    env = {e["name"]: e["value"] for e in container["env"]}
    return {**env, "JOB_COMPLETION_INDEX": str(index)}


def test_manifest_objects_fit_together():
    objects, docs = _objects()
    assert sorted(d["kind"] for d in docs) == ["Job", "PersistentVolumeClaim", "Service"]
    job, service, claim = objects["Job"], objects["Service"], objects["PersistentVolumeClaim"]

    spec = job["spec"]
    assert job["apiVersion"] == "batch/v1"
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    container = _container(job)
    env = _pod_env(container, 0)
    assert int(env["NUM_WORKERS"]) == spec["completions"]
    assert env["JOB_NAME"] == job["metadata"]["name"]
    assert env["TF_USE_LEGACY_KERAS"] == "1"

    # Pod i is <job>-<i>.<subdomain>: the subdomain must be the headless Service, which must
    # select the Job's pods and expose the workers' port.
    assert service["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == service["metadata"]["name"] == env["SERVICE_NAME"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    port = int(env["WORKER_PORT"])
    assert [p["port"] for p in service["spec"]["ports"]] == [port]
    assert [p["containerPort"] for p in container["ports"]] == [port]

    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]

    # The run folder is on the shared claim, which both pods may mount at once.
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"]
    script = container["args"][0]
    run_dir = script.split("--run-dir", 1)[1].split()[0]
    assert Path(run_dir).is_relative_to(mount["mountPath"])
    assert "deploy/k8s/tf_config.py" in script and "--strategy multi_worker" in script


@pytest.mark.parametrize("index", [0, 1])
def test_tf_config_script_names_every_worker_and_this_index(index):
    objects, _ = _objects()
    env = _pod_env(_container(objects["Job"]), index)
    proc = subprocess.run([sys.executable, str(TF_CONFIG_SCRIPT)], env={**env, "PATH": ""},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "cluster": {"worker": ["train-retrieval-0.train-retrieval:12345",
                               "train-retrieval-1.train-retrieval:12345"]},
        "task": {"type": "worker", "index": index}}


@pytest.mark.parametrize("env,message", [
    ({"NUM_WORKERS": "2", "JOB_NAME": "j", "SERVICE_NAME": "s"}, "JOB_COMPLETION_INDEX"),
    ({"JOB_COMPLETION_INDEX": "2", "NUM_WORKERS": "2", "JOB_NAME": "j", "SERVICE_NAME": "s"},
     "not a worker of NUM_WORKERS=2"),
    ({"JOB_COMPLETION_INDEX": "x", "NUM_WORKERS": "2", "JOB_NAME": "j", "SERVICE_NAME": "s"},
     "must be integers"),
])
def test_tf_config_script_refuses_a_bad_environment(env, message):
    proc = subprocess.run([sys.executable, str(TF_CONFIG_SCRIPT)], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and message in proc.stderr and not proc.stdout


def test_pod_wrapper_exports_tf_config_to_the_training_command(tmp_path):
    objects, _ = _objects()
    container = _container(objects["Job"])
    assert container["command"] == ["/bin/sh", "-c"]
    # A stand-in `python`: runs tf_config.py for real, prints what `-m pipelines...` would get.
    shim = tmp_path / "python"
    shim.write_text("#!/bin/sh\n"
                    'if [ "$1" = "-m" ]; then echo "TF_CONFIG=$TF_CONFIG"; echo "ARGS=$*"; '
                    f'else exec {sys.executable} "$@"; fi\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {**_pod_env(container, 1), "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["/bin/sh", "-c", container["args"][0]], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line
                 and line.split("=", 1)[0] in ("TF_CONFIG", "ARGS"))
    assert json.loads(lines["TF_CONFIG"])["task"] == {"type": "worker", "index": 1}
    assert lines["ARGS"].startswith("-m pipelines.train_retrieval ")

    # Without its index a pod stops before training instead of joining with a wrong TF_CONFIG.
    del env["JOB_COMPLETION_INDEX"]
    proc = subprocess.run(["/bin/sh", "-c", container["args"][0]], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "ARGS=" not in proc.stdout
    assert "JOB_COMPLETION_INDEX" in proc.stderr
