"""Shared test helpers: repository paths and ways to run scripts in a fresh process."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Outputs of the released modules (see tests/fixtures/README.md).
FIXTURES = Path(os.environ.get("PLAINMAMBA_FIXTURES", REPO / "tests" / "fixtures"))


def run_script(args, data_root, timeout=600):
    """Run a repository script on the CPU with its own data root; returns (exit code, output)."""
    import subprocess
    import sys

    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


def set_env(monkeypatch, name: str, value) -> None:
    """Set ``$name`` to ``str(value)`` for the test, or unset it when ``value`` is None."""
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, str(value))


def in_interpreter_child(child_env: str) -> bool:
    """True inside the child process started by :func:`run_under_triton_interpreter`."""
    return os.environ.get(child_env) == "1" and os.environ.get("TRITON_INTERPRET") == "1"


def run_under_triton_interpreter(test_file: str, child_env: str) -> None:
    """Run every case of ``test_file`` on CPU through Triton's interpreter, in a fresh process.

    ``TRITON_INTERPRET`` must be set before Triton itself is imported, which this process may
    already have done for other tests. Asserts that the child passed and skipped nothing.
    """
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    env[child_env] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, report
