"""User errors on the command line: one `error: <message>` line on stderr and exit status 2;
`--debug` brings the traceback back, and anything that is not a user error keeps it."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recommenders_tf import cli
from recommenders_tf.config import ConfigError
from recommenders_tf.data.registry import DatasetNotFoundError
from recommenders_tf.data.validation import DataValidationError

REPO = Path(__file__).resolve().parents[1]
# TensorFlow's C++ log lines are not the pipeline's output (TF_CPP_MIN_LOG_LEVEL may be 0).
CPP_LOG = re.compile(r"^(\d{4}-\d\d-\d\d [\d:.]+: [IWEF] |[IWEF]\d{4} |WARNING: All log messages)")


def _pipeline(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def _stderr_lines(proc: subprocess.CompletedProcess) -> list:
    return [line for line in proc.stderr.splitlines() if not CPP_LOG.match(line)]


@pytest.mark.parametrize("args, message", [
    (["pipelines.prepare_data", "--dataset", "file:/nonexistent/ratings.csv"],
     "error: file /nonexistent/ratings.csv: file does not exist"),
    (["pipelines.prepare_data", "--set", "nope=1"],
     "error: unknown config key(s) nope for PrepareDataConfig; known: dataset, out_dir, "
     "protocol, run_name, seed"),
    (["pipelines.export", "--label", "retrieval=2"],
     "error: bad label 'retrieval=2': expected MODEL:LABEL=VERSION"),
], ids=["missing-file", "bad-set-key", "bad-export-label"])
def test_a_user_error_is_one_line_and_exit_status_2(args, message, tmp_path):
    proc = _pipeline(*args, "--set", f"out_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _stderr_lines(proc) == [message]


def test_an_empty_dataset_folder_is_a_user_error_and_debug_shows_the_traceback(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["pipelines.prepare_data", "--dataset", f"dir:{empty}", "--set", f"out_dir={tmp_path}"]
    proc = _pipeline(*args)
    assert proc.returncode == 2
    [line] = _stderr_lines(proc)
    assert line.startswith(f"error: file {empty}: no MovieLens ratings file found")

    debug = _pipeline(*args, "--debug")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "recommenders_tf.data.validation.DataValidationError: file " in debug.stderr


def test_a_bad_flag_is_argparses_usage_error():
    proc = _pipeline("pipelines.prepare_data", "--no-such-flag")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert _stderr_lines(proc)[-1].endswith("error: unrecognized arguments: --no-such-flag")


# ---- the helper in process --------------------------------------------------------------------


def _parse(argv):
    return cli.make_parser("test").parse_args(argv)


@pytest.mark.parametrize("error", [ConfigError("bad key"), DataValidationError("bad row", row=3),
                                   DatasetNotFoundError("ml-1m: no folder")])
def test_run_turns_user_errors_into_exit_2(error, capsys):
    def main(config):
        raise error

    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, _parse, argv=[])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {error}\n"

    with pytest.raises(type(error)):  # --debug: the exception itself, traceback and all
        cli.run(main, _parse, argv=["--debug"])


def test_run_keeps_the_traceback_of_anything_else_and_returns_mains_result():
    def broken(config):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cli.run(broken, _parse, argv=[])
    assert cli.run(lambda config: ("ran", config.debug), _parse, argv=[]) == ("ran", False)


def test_run_accepts_a_pipelines_extra_user_errors(capsys):
    def main(config):
        raise ValueError("input 'history' takes at most 3 values, got 4")

    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, _parse, argv=[], extra_errors=(ValueError,))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: input 'history' takes at most 3 values, got 4\n"


def test_the_recorded_command_is_the_started_one_quoted_or_the_callers_default(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/x/pipelines/bench_blend.py", "--set", "peers=[a, b]"])
    assert cli.command_line("pipelines.bench_blend", "--dataset d") == \
        "python -m pipelines.bench_blend --set 'peers=[a, b]'"
    # Called from another pipeline (or a test): its argv is not this run's.
    assert cli.command_line("pipelines.bench_text") == "python -m pipelines.bench_text"
    assert cli.command_line("pipelines.benchmark", "--dataset d --protocol P1") == \
        "python -m pipelines.benchmark --dataset d --protocol P1"
