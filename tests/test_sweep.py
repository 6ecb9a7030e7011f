"""Sweeps: schema validation, trial names, the local launcher (sequential and 2 processes), resume, Ray."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from chrysalis import cli
from chrysalis.sweep import SweepError, SweepSpec, load_sweep, read_records, run_sweep

REPO = Path(__file__).resolve().parents[1]
# The cheapest real runs: LeNet on the 8x8 digits padded to 32x32, 64 + 64 examples, one epoch.
TINY_BASE = {"data": "digits", "data_options": {"pad_to": 32}, "space": "lenet", "depth": 1}
TINY_SET = {"epochs": 1, "limit_train": 64, "limit_val": 64, "batch_size": 32, "tensorboard": False}
VARIANTS = [{"name": "conv", "method": "fixed", "op": "conv"},
            {"name": "joint-warm", "method": "joint", "op": "kop", "init": "conv"}]


def tiny(out: Path, **changes) -> dict:
    return {"out": str(out), "base": dict(TINY_BASE), "set": dict(TINY_SET),
            "grid": {"seed": [0, 1], "variant": VARIANTS}, **changes}


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("results.json"))}


# ------------------------------------------------------------------------------------------ schema
@pytest.mark.parametrize("values, match", [
    ({"gird": {}}, r"unknown sweep key\(s\) gird; valid keys: out, base, set, grid"),
    ({"set": {"epoch": 1}}, r"set: unknown config key\(s\) epoch; valid keys: data"),
    ({"set": {"out": "x"}}, "set by the sweep"),
    ({"grid": {"seed": 0}}, r"grid.seed must be a non-empty list"),
    ({"grid": {"seed": []}}, r"grid.seed must be a non-empty list"),
    ({"grid": {"variant": ["conv"]}}, r"grid.variant\[0\]: 'variant' is not a config key, so it is a bundle"),
    ({"grid": {"variant": [{"name": "a", "methd": "fixed"}]}}, r"grid.variant\[0\]: unknown config key\(s\) methd"),
    ({"grid": {"variant": [{"name": "a"}, {"name": "a"}]}}, "same trial directory 'a'"),
    ({"grid": {"v": [{"seed": 1}], "seed": [0]}}, "both set 'seed'"),
    ({"grid": {"method": ["bilevel"], "op": ["conv"]}}, r"trial bilevel/conv: method 'bilevel' .* needs op 'kop'"),
    ({"resources": {"cpu": 1}}, r"unknown resources key\(s\) cpu; valid keys: cpus, gpus"),
    ({"resources": {"cpus": 0}}, r"resources.cpus must be > 0"),
    ({"retrain": "yes"}, "retrain` must be true or false"),
    ({"base": "nowhere.yaml"}, "base config not found"),
    ({"trial_name": "{variant}/{sed}"}, "unknown field 'sed'; fields are the grid axes: seed, variant"),
    ({"trial_name": "../{seed}"}, "relative path inside `out`"),
])
def test_schema_errors(tmp_path, values, match):
    base = {"out": str(tmp_path / "s"), "grid": {"seed": [0, 1], "variant": VARIANTS}}
    with pytest.raises(SweepError, match=match):
        SweepSpec.from_dict({**base, **values}, root=tmp_path)


def test_out_required_and_file_errors(tmp_path):
    with pytest.raises(SweepError, match="needs `out`"):
        SweepSpec.from_dict({"grid": {"seed": [0]}})
    with pytest.raises(SweepError, match="sweep file not found"):
        load_sweep(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SweepError, match="expected a mapping"):
        load_sweep(tmp_path / "list.yaml")


def test_trial_names_configs_and_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("data: permuted-mnist5k\nepochs: 50\narch_lr: 1.0e-3\nout: ignored\n")
    spec = SweepSpec.from_dict({
        "out": "runs/s", "base": "base.yaml", "set": {"epochs": 20},
        "grid": {"seed": [0, 2], "variant": VARIANTS, "lr": [0.1], "second_order": [False],
                 "data": ["mnist5k"]},
        "retrain": True, "resources": {"cpus": 2, "gpus": 0.5},
    }, root=tmp_path)
    trials = spec.trials()
    assert [t.name for t in trials] == ["conv/lr0.1/no-second_order/mnist5k/seed0",
                                        "joint-warm/lr0.1/no-second_order/mnist5k/seed0",
                                        "conv/lr0.1/no-second_order/mnist5k/seed2",
                                        "joint-warm/lr0.1/no-second_order/mnist5k/seed2"]
    t = trials[3]
    assert t.config["out"] == "runs/s/joint-warm/lr0.1/no-second_order/mnist5k/seed2"
    assert (t.config["seed"], t.config["epochs"], t.config["arch_lr"], t.config["data"]) == (2, 20, 1e-3, "mnist5k")
    assert t.config["threads"] == 2 and t.config["quiet"] is True
    assert [t.retrain for t in trials] == [False, True, False, True]  # only K-op searches are retrained
    assert t.params == {"seed": 2, "variant": "joint-warm", "lr": 0.1, "second_order": False, "data": "mnist5k"}
    assert spec.resources == {"cpus": 2, "gpus": 0.5}
    named = SweepSpec.from_dict({"out": "o", "grid": {"seed": [3], "variant": VARIANTS[:1]},
                                 "trial_name": "{variant}-s{seed}"})
    assert named.trials()[0].name == "conv-s3"


def test_shipped_sweep_files_are_valid():
    files = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
    reproduce = sorted((REPO / "configs" / "reproduce").glob("*.yaml"))
    assert files and len(reproduce) >= 8
    for path in files + reproduce:
        assert load_sweep(path).trials()
    # every reproduction task runs the protocol's five methods (issue 6) on 3 seeds, each K-op search
    # with its retrain
    protocol = {("conv", "fixed", None), ("fft", "fixed", None), ("kop", "joint", "conv"), ("kop", "joint", "random"),
                ("kop", "bilevel", "conv")}
    for path in reproduce:
        trials = load_sweep(path).trials()
        assert {t.config["seed"] for t in trials} == {0, 1, 2}
        methods = {(t.config["op"], t.config["method"], t.config["init"] if t.config["op"] == "kop" else None)
                   for t in trials}
        assert methods == protocol, path.name
        assert all(t.retrain == (t.config["op"] == "kop") for t in trials)
    pmnist = load_sweep(REPO / "configs" / "sweeps" / "pmnist.yaml").trials()
    assert len(pmnist) == 15 and pmnist[0].name == "conv/seed0" and pmnist[0].config["epochs"] == 20
    assert pmnist[0].config["data"] == "permuted-mnist5k"


# ------------------------------------------------------------------------------------ local launcher
def check_finished(out: Path, records: list[dict], retrain: bool = False) -> None:
    names = ["conv/seed0", "joint-warm/seed0", "conv/seed1", "joint-warm/seed1"]
    assert [r["trial"] for r in records] == names
    assert read_records(out) == records
    for r in records:
        assert r["status"] in ("done", "skipped") and r["error"] is None
        results = json.loads((out / r["trial"] / "results.json").read_text())
        assert r["test_acc"] == results["final"]["test_acc"]
        assert results["seed"] == r["params"]["seed"] and results["epochs"] == 1
        has_retrain = retrain and r["params"]["variant"] == "joint-warm"
        assert (out / r["trial"] / "retrain" / "results.json").is_file() == has_retrain
        assert (r["retrain_test_acc"] is not None) == has_retrain
    resolved = yaml.safe_load((out / "sweep.yaml").read_text())
    assert [t["name"] for t in resolved["trials"]] == names and resolved["set"]["epochs"] == 1


def test_local_sequential_resume(tmp_path):
    out = tmp_path / "sweep"
    spec = SweepSpec.from_dict(tiny(out, retrain=True))
    lines: list[str] = []
    records = run_sweep(spec, log=lines.append)
    check_finished(out, records, retrain=True)
    assert [r["action"] for r in records] == ["start"] * 4 and "4 of 4 trials ran" in lines[-1]
    before = mtimes(out)

    # Nothing to do: every trial is skipped, nothing is rewritten.
    records = run_sweep(spec, log=lines.append)
    assert [r["status"] for r in records] == ["skipped"] * 4 and mtimes(out) == before
    check_finished(out, records, retrain=True)

    # A lost results.json (checkpoint kept) is resumed, a lost retrain result re-done, a lost trial re-run.
    (out / "conv/seed1/results.json").unlink()
    (out / "joint-warm/seed0/retrain/results.json").unlink()
    shutil.rmtree(out / "joint-warm/seed1")
    time.sleep(0.01)
    records = run_sweep(spec, log=lines.append)
    check_finished(out, records, retrain=True)
    assert [r["action"] for r in records] == ["skip", "resume", "resume", "start"]
    after = mtimes(out)
    assert after["conv/seed0/results.json"] == before["conv/seed0/results.json"]
    assert after["joint-warm/seed0/results.json"] == before["joint-warm/seed0/results.json"]  # search kept
    for name in ("joint-warm/seed0/retrain/results.json", "conv/seed1/results.json", "joint-warm/seed1/results.json"):
        assert after[name] != before.get(name)
    assert "resuming" in (out / "conv/seed1/trial.log").read_text()


def test_local_two_workers(tmp_path):
    out = tmp_path / "sweep"
    records = run_sweep(SweepSpec.from_dict(tiny(out)), workers=2, log=lambda _: None)
    check_finished(out, records)
    assert {r["status"] for r in records} == {"done"}


def test_failed_trial_is_recorded_and_retried(tmp_path):
    out = tmp_path / "sweep"
    spec = SweepSpec.from_dict(tiny(out, grid={"seed": [0], "data": ["digits", "no-such-data"]}))
    records = run_sweep(spec, log=lambda _: None)
    assert [r["status"] for r in records] == ["done", "failed"]
    assert "no-such-data" in records[1]["error"] and read_records(out)[1]["status"] == "failed"
    assert "Traceback" in (out / "no-such-data/seed0/trial.log").read_text()


# --------------------------------------------------------------------------------------------- CLI
def test_cli_dry_run_and_errors(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path / "s")))
    assert cli.main(["sweep", str(path), "--dry-run", "--set", "epochs=3"]) == 0
    printed = capsys.readouterr().out
    assert "start" in printed and "conv/seed0" in printed and "4 trials" in printed
    assert not (tmp_path / "s").exists()  # a dry run writes nothing

    path.write_text(yaml.safe_dump({**tiny(tmp_path / "s"), "grids": {}}))
    assert cli.main(["sweep", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("chrysalis: error: unknown sweep key(s) grids; valid keys:") and "\n" not in err
    assert cli.main(["sweep", str(path), "--launcher", "slurm"]) == 2


def test_cli_runs_and_reports_failures(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path / "s", grid={"seed": [0], "data": ["digits", "no-such-data"]})))
    assert cli.main(["sweep", str(path)]) == 1
    captured = capsys.readouterr()
    assert "chrysalis report" in captured.out or "±" in captured.out
    assert "1 of 2 trials failed" in captured.err


def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(SweepError, match=r'pip install "chrysalis-nas\[ray\]"'):
        run_sweep(SweepSpec.from_dict(tiny(tmp_path / "s")), launcher="ray")
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------------------------- Ray
@pytest.mark.slow
def test_ray_launcher(tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    out = tmp_path / "sweep"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec = SweepSpec.from_dict(tiny(out))
        records = run_sweep(spec, launcher="ray", log=lambda _: None)
        check_finished(out, records)
        assert (out / "ray").is_dir()  # Tune's own storage lives under OUT
        before = mtimes(out)
        (out / "conv/seed1/results.json").unlink()
        records = run_sweep(spec, launcher="ray", log=lambda _: None)
        check_finished(out, records)
        assert [r["action"] for r in records] == ["skip", "skip", "resume", "skip"]
        after = mtimes(out)
        assert all(after[k] == v for k, v in before.items() if k != "conv/seed1/results.json")
    finally:
        ray.shutdown()
