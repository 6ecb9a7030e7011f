"""Data-parallel search (torchrun / DDP) on CPU with the gloo backend and 2 processes.

The 2-process runs use tiny stand-in data and a tiny chrysalized conv net, spawned with
`torch.multiprocessing.spawn`; every rank saves what it ends with, and the test compares ranks with
each other and with a single-process run of the same global batches.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import chrysalis
from chrysalis.search import SearchConfig, SearchRun, engine
from chrysalis.search.distributed import (
    DistContext,
    choose_backend,
    distributed_session,
    env_world,
    shard_batches,
    shard_indices,
    shard_range,
)
from chrysalis.search.methods import Joint

SIZES = {"train": 64, "val": 32, "test": 40}


# ------------------------------------------------------------------------------------ stand-ins
def tiny_dataset(name: str, split: str, **options) -> types.SimpleNamespace:
    g = torch.Generator().manual_seed(list(SIZES).index(split))
    x = torch.randn(SIZES[split], 1, 8, 8, generator=g)
    y = (x[:, 0, 2:6, 2:6].sum((1, 2)) > 0).long() + (x[:, 0, 0, 4] > 1).long()
    info = types.SimpleNamespace(name=name, kind="image", input_shape=(1, 8, 8), num_classes=3,
                                 to_dict=lambda: {"name": name})
    return types.SimpleNamespace(inputs=x, targets=y, info=info)


def tiny_space(name: str, info, op: str, *, space_options: dict, **kop_options) -> nn.Module:
    """A conv net; `space_options: {noisy: true}` adds BatchNorm and dropout (rank-dependent state)."""
    noisy = space_options.get("noisy", False)
    layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, padding=1)]
    if noisy:
        layers += [nn.BatchNorm2d(4), nn.Dropout(0.2)]
    model = nn.Sequential(*layers, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, info.num_classes))
    if op == "kop":
        model = chrysalis.chrysalize(model, torch.zeros(1, 1, 8, 8), **kop_options)
    return model


def use_standins() -> None:
    engine._get_dataset = tiny_dataset
    engine._create_space = tiny_space


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setattr(engine, "_get_dataset", tiny_dataset)
    monkeypatch.setattr(engine, "_create_space", tiny_space)


def config(out: Path, **kw) -> SearchConfig:
    base = dict(method="joint", op="kop", epochs=2, batch_size=16, out=str(out), quiet=True, tensorboard=False,
                arch_lr=1e-2, lr=0.05)
    return SearchConfig(**{**base, **kw}).validate()


# Runs every rank does (name -> config changes); "plain" ones have no BatchNorm/dropout and must match
# a single process run exactly (up to float rounding).
# (SGD for the architecture: Adam's g / sqrt(v) turns rounding noise in tiny gradients into full steps.)
PLAIN = {
    "joint": {"method": "joint", "arch_optimizer": "sgd"},
    "bilevel": {"method": "bilevel", "warmup_epochs": 1, "epochs": 3, "arch_optimizer": "sgd"},
    "bilevel2": {"method": "bilevel", "second_order": True, "epochs": 1, "arch_optimizer": "sgd"},
    "fixed": {"method": "fixed"},
}
NOISY = {"space_options": {"noisy": True}, "checkpoint_every": 3}


class Crash(Exception):
    pass


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    use_standins()
    tmp_path = Path(tmp)
    saved: dict[str, dict] = {}

    def run(name: str, cfg: SearchConfig, resume: bool = False) -> None:
        r = SearchRun(cfg, resume=resume)
        results = r.run()
        saved[name] = {"state": r.model.state_dict(), "results": results}

    with distributed_session("gloo", "cpu") as ctx:
        assert (ctx.rank, ctx.world_size, ctx.backend) == (rank, world, "gloo")
        for name, changes in PLAIN.items():
            run(name, config(tmp_path / name, **changes))
        # BatchNorm + dropout: ranks still agree, and a resume (epoch end, mid-epoch) replays the run.
        run("noisy", config(tmp_path / "noisy", **NOISY))
        run("noisy-a", config(tmp_path / "noisy-a", **{**NOISY, "epochs": 1}))
        run("noisy-a", config(tmp_path / "noisy-a", **NOISY), resume=True)
        orig, count = Joint.step, {"n": 0}

        def crashing(self, batch, next_val):
            count["n"] += 1
            if count["n"] == 7:  # epoch 2, batch 3: after the mid-epoch checkpoint of step 6
                raise Crash
            return orig(self, batch, next_val)

        Joint.step = crashing
        try:
            run("noisy-b", config(tmp_path / "noisy-b", **NOISY))
        except Crash:
            pass
        finally:
            Joint.step = orig
        run("noisy-b", config(tmp_path / "noisy-b", **NOISY), resume=True)
    torch.save(saved, tmp_path / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strip(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in ln.items() if k != "seconds"} for ln in lines]


def metrics(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in (path / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ sharding
@pytest.mark.parametrize("n,bs,world", [(64, 16, 2), (70, 16, 2), (65, 16, 2), (100, 12, 3), (33, 8, 4), (7, 4, 2)])
def test_shard_batches_disjoint_covering_equal(n, bs, world):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    batches = list(perm.split(bs))
    shards = [shard_batches(batches, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank does as many steps
    for step in zip(*shards):
        assert len({len(b) for b in step}) == 1  # of the same size
        assert len(step[0]) >= 1
    seen = torch.cat([b for s in shards for b in s])
    assert len(seen) == len(set(seen.tolist()))  # disjoint
    kept = sum(len(b) for b in batches) - len(seen)
    assert 0 <= kept < 2 * world  # covering, but for the remainder of the last batch
    # Each step's slices together are exactly the global batch a single process would use.
    for step, batch in zip(zip(*shards), batches):
        assert torch.equal(torch.cat(step), batch[:len(torch.cat(step))])


def test_shard_batches_one_process_is_the_single_process_order():
    batches = list(torch.arange(33).split(16))  # 16, 16, 1: a last batch of one is dropped
    assert [len(b) for b in shard_batches(batches, 0, 1)] == [16, 16]
    batches = list(torch.arange(34).split(16))
    assert all(torch.equal(a, b) for a, b in zip(shard_batches(batches, 0, 1), batches))
    with pytest.raises(ValueError, match="smaller than the world size"):
        shard_batches(list(torch.arange(6).split(1)), 0, 2)


def test_shard_indices_pads_and_shard_range_covers():
    batch = torch.arange(5)
    parts = [shard_indices(batch, r, 2) for r in range(2)]
    assert [len(p) for p in parts] == [3, 3] and set(torch.cat(parts).tolist()) == set(range(5))
    assert torch.equal(shard_indices(batch, 0, 1), batch)
    parts = [shard_indices(torch.arange(1), r, 3) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0], [0], [0]]
    for n, world in [(10, 3), (2, 4), (0, 2), (512, 2)]:
        ranges = [shard_range(n, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_env_and_backend(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert env_world() == (0, 1, 0)
    with distributed_session() as ctx:  # no torchrun: a single process, nothing initialised
        assert ctx == DistContext() and not ctx.enabled and ctx.is_main
        assert ctx.sum([1, 2]) == [1.0, 2.0] and ctx.broadcast("x") == "x" and ctx.gather(3) == [3]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert env_world() == (1, 2, 1)
    assert choose_backend("auto", "cpu") == "gloo" and choose_backend("auto", "cuda") == "nccl"
    with pytest.raises(chrysalis.search.ConfigError, match="needs device cuda"):
        choose_backend("nccl", "cpu")
    with pytest.raises(chrysalis.search.ConfigError, match="dist_backend must be one of"):
        SearchConfig(dist_backend="mpi").validate()


# ------------------------------------------------------------------------------------ 2 processes
def test_two_processes_agree_with_each_other_and_with_one_process(standin, tmp_path):
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    mp.spawn(_worker, args=(2, free_port(), str(ddp)), nprocs=2, join=True)
    ranks = [torch.load(ddp / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for name in [*PLAIN, "noisy", "noisy-a", "noisy-b"]:
        a, b = ranks[0][name], ranks[1][name]
        assert a["state"].keys() == b["state"].keys()
        for k in a["state"]:  # weights, architecture and buffers: identical on both ranks
            assert torch.equal(a["state"][k], b["state"][k]), (name, k)
        assert a["results"] == b["results"]
        # rank 0 alone wrote the run directory: one results file, one metrics line per epoch
        out = ddp / name
        assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.jsonl",
                                                         "results.json"]
        assert json.loads((out / "results.json").read_text())["final"] == a["results"]["final"]
        assert len(metrics(out)) == a["results"]["epochs"]
    # The same global batches in one process give the same parameters and metrics.
    for name, changes in PLAIN.items():
        cfg = config(tmp_path / "single" / name, **changes)
        run = SearchRun(cfg)
        run.run()
        single = run.model.state_dict()
        for k, v in single.items():
            torch.testing.assert_close(ranks[0][name]["state"][k], v, rtol=1e-4, atol=1e-5)
        for m1, m2 in zip(metrics(tmp_path / "single" / name), metrics(ddp / name)):
            assert m1["step"] == m2["step"] and m1["arch_active"] == m2["arch_active"]
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                assert m1[key] == pytest.approx(m2[key], rel=1e-4, abs=1e-5), (name, key)
    # Resume (at an epoch end, and mid-epoch after a crash) replays the uninterrupted run exactly.
    assert strip(metrics(ddp / "noisy-a")) == strip(metrics(ddp / "noisy"))
    assert strip(metrics(ddp / "noisy-b")) == strip(metrics(ddp / "noisy"))
    for k, v in ranks[0]["noisy"]["state"].items():
        assert torch.equal(ranks[0]["noisy-a"]["state"][k], v) and torch.equal(ranks[0]["noisy-b"]["state"][k], v)
    ckpt = torch.load(ddp / "noisy" / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2


def test_torchrun_command_line(tmp_path):
    """The real entry point: `torchrun --standalone --nproc-per-node 2 -m chrysalis search ...`."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    out = tmp_path / "run"
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "chrysalis", "search", "--data", "digits",
           "--space", "lenet", "--set", "space_options={padding: 2}", "--method", "bilevel", "--epochs", "1",
           "--limit-train", "128", "--limit-val", "64", "--batch-size", "32", "--threads", "1",
           "--dist-backend", "gloo", "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("seed 0: val_acc") == 1  # rank 0 alone prints
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "bilevel" and results["config"]["dist_backend"] == "gloo"
    assert metrics(out)[0]["step"] == 4  # 128 examples / global batch 32
    assert len(list(tmp_path.rglob("results.json"))) == 1
