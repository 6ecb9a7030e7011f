"""Nothing lost on a crash: a real `python -m chrysalis search` killed with SIGKILL, then `--resume`.

Every kill point must give (a) a checkpoint that is either absent or loads (never a partial one),
(b) at most --checkpoint-every steps of work lost, and (c) after `--resume`, metrics.jsonl and the
final test numbers identical to an uninterrupted run's (CPU, one thread: bit for bit).

Kill points: inside a checkpoint write (a wrapper process writes half of the checkpoint's bytes to
the temporary file, then SIGKILLs itself: deterministic), and from outside at a random moment
(after a delay, or as soon as the checkpoint's temporary file shows up). The fast suite has two;
the full sweep is marked slow. docs/RELIABILITY.md, rows C1-C3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

EVERY = 2  # --checkpoint-every: steps
STEPS_PER_EPOCH = 6  # 96 examples / batch 16
EPOCHS = 2
# Search on real data (sklearn digits padded to 16x16), joint search of a depth-1 K-op LeNet.
ARGS = ["search", "--data", "digits", "--set", "data_options={pad_to: 16}", "--method", "joint", "--op", "kop",
        "--depth", "1", "--epochs", str(EPOCHS), "--limit-train", "96", "--limit-val", "32", "--batch-size", "16",
        "--quiet", "--set", "tensorboard=false", "--checkpoint-every", str(EVERY), "--threads", "1",
        "--set", "arch_lr=0.01"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}

# Runs the CLI, but the N-th torch.save writes half of the checkpoint, flushes, and SIGKILLs the
# process: exactly a kill during a checkpoint write.
KILLER = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    from chrysalis import cli
    n, calls, orig = int(os.environ["KILL_AT_SAVE"]), [0], torch.save
    def save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == n:
            buf = io.BytesIO(); orig(obj, buf, *a, **k); data = buf.getvalue()
            f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(obj, f, *a, **k)
    torch.save = save
    sys.exit(cli.main(sys.argv[1:]))
""")


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "chrysalis", *ARGS, "--out", str(out), *extra]


def _run(out: Path, *extra: str) -> None:
    p = subprocess.run(_cmd(out, *extra), env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


def _metrics(run: Path) -> list[dict]:
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [{k: v for k, v in ln.items() if k != "seconds"} for ln in lines]


def _final(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())["final"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run: what every killed-and-resumed run must reproduce."""
    out = tmp_path_factory.mktemp("crash") / "reference"
    _run(out)
    assert len(_metrics(out)) == EPOCHS
    return out


def _check_after_kill(out: Path, killed_at_step: int | None) -> None:
    """The state a SIGKILL left: a loadable checkpoint (or none), no more than EVERY steps behind."""
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=True)  # never partial: it loads
        assert ckpt["step"] % EVERY == 0 or ckpt["batch"] == 0
        if killed_at_step is not None:
            assert killed_at_step - ckpt["step"] <= EVERY
    elif killed_at_step is not None:
        assert killed_at_step <= EVERY


def _resume_and_compare(out: Path, reference: Path) -> None:
    _run(out, "--resume")
    assert _metrics(out) == _metrics(reference)
    assert _final(out) == _final(reference)
    assert not list(out.glob(".checkpoint.pt.*.tmp"))  # the partial temporary file was cleaned up


def _kill_in_write(out: Path, save_number: int) -> None:
    env = {**ENV, "KILL_AT_SAVE": str(save_number)}
    p = subprocess.run([sys.executable, "-c", KILLER, *ARGS, "--out", str(out)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr)
    assert list(out.glob(".checkpoint.pt.*.tmp")), "the kill should leave a partial temporary file"


def _saves() -> list[int]:
    """The step of each checkpoint write: every EVERY steps, and at each epoch's end."""
    steps = []
    for e in range(EPOCHS):
        for b in range(1, STEPS_PER_EPOCH + 1):
            step = e * STEPS_PER_EPOCH + b
            if b == STEPS_PER_EPOCH or step % EVERY == 0:
                steps.append(step)
    return steps


def test_kill_during_a_checkpoint_write_then_resume(reference, tmp_path):  # C1
    save_number = 3  # the end-of-epoch-1 checkpoint: metrics.jsonl already has the epoch's line
    out = tmp_path / "run"
    _kill_in_write(out, save_number)
    _check_after_kill(out, _saves()[save_number - 1])
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == _saves()[save_number - 2]
    _resume_and_compare(out, reference)


def test_external_sigkill_right_after_a_checkpoint_then_resume(reference, tmp_path):  # C2
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    _check_after_kill(out, None)
    _resume_and_compare(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("save_number", range(1, len(_saves()) + 1))
def test_kill_during_every_checkpoint_write(reference, tmp_path, save_number):  # C1, all points
    out = tmp_path / "run"
    _kill_in_write(out, save_number)
    _check_after_kill(out, _saves()[save_number - 1])
    _resume_and_compare(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("trigger", ["tmp-file", 0.5, 3.0, 4.0, 4.5, 5.0, 6.0])
def test_external_sigkill_at_many_moments(reference, tmp_path, trigger):  # C3
    """SIGKILL from outside: as soon as a checkpoint temporary file appears, or after a delay."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if trigger == "tmp-file":
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if out.is_dir() and any(p.name.endswith(".tmp") for p in os.scandir(out)):
                break
        proc.send_signal(signal.SIGKILL)
    else:
        try:
            proc.wait(timeout=trigger)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    if proc.returncode == 0:  # too late: the run finished; resuming a finished run must still agree
        assert _metrics(out) == _metrics(reference)
        return
    _check_after_kill(out, None)
    if (out / "config.yaml").exists():
        _resume_and_compare(out, reference)
    else:  # killed before the run directory was made: a plain rerun is the resume
        _run(out)
        assert _metrics(out) == _metrics(reference)
