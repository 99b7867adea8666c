"""Processes of a 2-process CPU run end with the launcher, and none outlives a failed rank."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Set

import pytest

from helpers import REPO

SCRIPT = REPO / "tools" / "lazyconfig_train_net.py"
CONFIG = REPO / "tests" / "configs" / "toy_lifecycle.py"
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
GRACE = 5.0  # seconds the processes of a run get to go away

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _parents() -> Dict[int, int]:
    """``{pid: parent pid}`` of every living (not zombie) process."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    return parents


def _descendants(root: int) -> Set[int]:
    parents = _parents()
    found: Set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: Set[int]) -> Set[int]:
    return set(pids) & set(_parents())


def _survivors(pids: Set[int], timeout: float = GRACE) -> Set[int]:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pids)


def _ranks(pids: Set[int]) -> Set[int]:
    """The processes that ``torch.multiprocessing`` spawned (ranks and data-loader workers)."""
    ranks = set()
    for pid in pids:
        try:
            if b"--multiprocessing-fork" in Path(f"/proc/{pid}/cmdline").read_bytes():
                ranks.add(pid)
        except OSError:
            pass
    return ranks


def _launch(out: Path, *overrides: str) -> subprocess.Popen:
    command = [sys.executable, str(SCRIPT), "--num-gpus", "2", "--dist-url", "auto"]
    command += ["--config-file", str(CONFIG), f"train.output_dir={out}", *overrides]
    log = open(out.parent / f"{out.name}.log", "w")
    # A session of its own: the clean-up below can reach orphans by the launcher's id.
    return subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _clean_up(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _log(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text()[-4000:]


@pytest.mark.slow
def test_ranks_exit_when_the_launcher_is_killed(tmp_path):
    """``kill -9`` of the launcher while its ranks start up: they must not go on as orphans."""
    out = tmp_path / "run"
    proc = _launch(out, "train.max_iter=100000", "model.step_delay=0.05")
    try:
        deadline = time.monotonic() + 60
        ranks: Set[int] = set()
        while len(ranks) < 2:
            assert proc.poll() is None, _log(out)
            assert time.monotonic() < deadline, "the launcher started no ranks within 60 s"
            time.sleep(0.05)
            ranks = _ranks(_descendants(proc.pid))
        proc.kill()
        proc.wait()
        left = _survivors(ranks)
        assert not left, f"ranks {sorted(left)} still run {GRACE} s after the launcher died"
        assert not list(out.glob("pid.rank.*")), "a rank started training without its launcher"
    finally:
        _clean_up(proc)


@pytest.mark.slow
def test_no_process_outlives_a_failed_rank(tmp_path):
    """Rank 1 fails on its first step while a data-loader worker of rank 0 still starts up (it
    is held back 60 s): no rank, worker or helper process of the run may remain."""
    out = tmp_path / "run"
    proc = _launch(
        out,
        "model.fail_rank=1",
        "model.fail_at_iter=0",
        "dataloader.train.num_workers=2",
        "dataloader.train.slow_worker_delay=60",
    )
    try:
        seen: Set[int] = set()
        spawned: Set[int] = set()
        deadline = time.monotonic() + 120
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the failed run did not end within 120 s"
            new = _descendants(proc.pid) - seen
            seen |= new
            spawned |= _ranks(new)
            time.sleep(0.05)
        log = _log(out)
        assert proc.returncode != 0 and "planned failure of rank 1" in log, log
        assert len(spawned) >= 4, f"expected 2 ranks and their workers, saw {spawned}"
        left = _survivors(seen)
        assert not left, f"processes {sorted(left)} of the run outlive it by {GRACE} s"
    finally:
        _clean_up(proc)


PARENT = """
import subprocess, sys, time
from plainmamba.lifecycle import mark_as_parent, tie_to_parent
mark_as_parent()
assert not tie_to_parent()  # the marked process itself is tied to nothing
subprocess.Popen([sys.executable, "-c", sys.argv[1]])
time.sleep(60)
"""
CHILD = """
import ctypes, os, signal, time
from plainmamba.lifecycle import PARENT_PID_ENV, tie_to_parent
assert tie_to_parent()
ctypes.CDLL(None).prctl(1, int(signal.SIGINT), 0, 0, 0)  # what torch.multiprocessing arms
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a rank deep in C++ does not act on SIGINT either
assert tie_to_parent()  # launched_main arms SIGKILL again
print(os.getpid(), os.environ[PARENT_PID_ENV] == str(os.getpid()), flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_tie_to_parent_rearms_the_signal():
    """A child tied to its parent dies with it, also after something re-armed a softer signal."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        pid, marked = proc.stdout.readline().split()
        assert marked == "True"  # the child's own children would tie themselves to it
        proc.kill()
        proc.wait()
        assert not _survivors({int(pid)}, timeout=2.0), "the child outlived its parent"
    finally:
        _clean_up(proc)
