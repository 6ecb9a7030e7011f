"""The command line: every subcommand end to end on the embedded data (LeNet, a few mnist5k images)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from chrysalis import cli
from chrysalis.search import SearchConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
TINY = ["--depth", "1", "--epochs", "1", "--limit-train", "64", "--limit-val", "64", "--batch-size", "32",
        "--quiet"]
runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_search_retrain_eval(tmp_path):
    run = tmp_path / "run"
    invoke("search", "--config", REPO / "configs" / "lenet-mnist5k.yaml", *TINY, "--out", run)
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["data"] == "mnist5k" and results["config"]["depth"] == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["limit_train"] == 64

    invoke("retrain", run, "--epochs", "1", "--limit-train", "64", "--quiet")
    re = json.loads((run / "retrain" / "results.json").read_text())
    assert re["retrain_of"] == str(run) and re["method"] == "fixed"
    assert re["config"]["max_init_gain"] == 4.0 and set(re["init_gains"]) == {"conv1", "conv2"}
    invoke("retrain", run, "--epochs", "1", "--limit-train", "64", "--quiet", "--max-init-gain", "0",
           "--out", tmp_path / "never")
    assert json.loads((tmp_path / "never" / "results.json").read_text())["config"]["max_init_gain"] == 0.0

    out = invoke("eval", run, "--json").output
    ev = json.loads(out.strip().splitlines()[-1])
    # The checkpoint is the searched model as is: eval reproduces results.json's test numbers.
    assert ev["test_acc"] == pytest.approx(results["final"]["test_acc"])
    assert ev["test_loss"] == pytest.approx(results["final"]["test_loss"], rel=1e-5)


def test_several_seeds_and_resume(tmp_path):
    out = tmp_path / "runs"
    invoke("search", "--data", "mnist5k", "--method", "fixed", "--op", "conv", "--seed", "0,1", *TINY,
           "--out", out)
    assert (out / "seed0" / "results.json").exists() and (out / "seed1" / "results.json").exists()
    invoke("search", "--out", out / "seed1", "--resume", "--epochs", "2", "--quiet")
    lines = (out / "seed1" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2]


def test_demo_smoke(tmp_path):
    result = invoke("demo", "--smoke", "--depth", "1", "--out", tmp_path / "demo", "--quiet")
    assert "permuted-mnist5k" in result.output and "test acc" in result.output
    runs = [p for p in (tmp_path / "demo").iterdir() if p.is_dir()]
    assert len(runs) == 6 and all((p / "results.json").exists() for p in runs)
    assert (tmp_path / "demo" / "summary.md").read_text().count("\n| ") == 6  # six rows after the header
    kop_runs = [p for p in runs if "-kop-" in p.name]
    assert len(kop_runs) == 4 and all((p / "plots" / "kop_conv1_impulse.png").stat().st_size > 1000 for p in kop_runs)
    assert all((p / "plots" / "permutation_conv1.png").exists() for p in kop_runs if p.name.startswith("permuted"))
    assert "figures:" in result.output


@pytest.mark.parametrize("args", [
    ["search", "--method", "darts"],
    ["search", "--data", "no-such-data", "--limit-train", "8"],
    ["search", "--space", "no-such-space", "--limit-train", "8"],
    ["search", "--config", "missing.yaml"],
    ["search", "--bogus-flag"],
    ["search", "--epochs", "many"],
    ["search", "--set", "lerning_rate=1"],
    ["eval", "no/such/run"],
    ["retrain", "no/such/run"],
])
def test_errors_are_one_line(tmp_path, capsys, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and err.startswith("chrysalis: error:"), err
    assert "Traceback" not in err


def test_debug_shows_the_exception():
    with pytest.raises(ValueError, match="method must be one of"):
        cli.main(["--debug", "search", "--method", "darts"])


def test_help_lists_the_commands():
    out = invoke("--help").output
    assert all(name in out for name in ("search", "retrain", "eval", "demo"))


def test_python_dash_m_entry_point_and_one_line_error():
    bad = subprocess.run([sys.executable, "-m", "chrysalis", "search", "--method", "nope"], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "method" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_configs_are_valid(path):
    from chrysalis.data import list_datasets
    from chrysalis.spaces import list_spaces

    config = SearchConfig.from_yaml(path, method="fixed", op="conv")
    assert config.data in list_datasets() and config.space in list_spaces(aliases=True)
    assert SearchConfig.from_yaml(path).method == "joint"


def test_there_is_a_config_per_experiment():
    expected = {"lenet-mnist5k", "lenet-permuted-mnist5k", "lenet-fashion-mnist", "lenet-permuted-fashion-mnist",
                "spherical-mnist5k-nr-r", "spherical-mnist5k-r-r", "spherical-fashion-mnist-r-r", "kimcnn-bbc-news",
                "lenet-cifar10", "lenet-cifar100", "resnet20-cifar10"}
    assert expected <= {p.stem for p in CONFIGS}
