"""Reliability and security: bad input gets a clear error, divergence stops cleanly, untrusted files
are refused. Each test names the row of the table in docs/RELIABILITY.md that it covers (R1, R2...).
The crash (SIGKILL) tests are in tests/test_crash.py."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from standins import cfg, metrics, tiny_dataset, tiny_space
from torch import nn

import chrysalis as ch
from chrysalis import cli
from chrysalis.search import ConfigError, SearchConfig, run_search
from chrysalis.search.checkpoint import CheckpointError, load_checkpoint
from chrysalis.search.config import read_yaml
from chrysalis.search.engine import NonFiniteError

REPO = Path(__file__).resolve().parents[1]


def _cli_error(args, capsys) -> str:
    """Run the CLI in-process; assert a non-zero exit and exactly one error line, no traceback."""
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code != 0, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("chrysalis: error:"), err
    assert "Traceback" not in err
    return err


# ----------------------------------------------------------------------- library: KOp / KMatrix
KOP_CASES = [  # (row, kwargs, exception, message pattern)
    ("R1", dict(kernel_size=3, input_size=(8, 8, 8, 8)), ValueError, r"1, 2 or 3 entries"),
    ("R2", dict(kernel_size=9, input_size=8), ValueError, r"kernel \(extent 9.*larger than the padded input \(8"),
    ("R2", dict(kernel_size=3, input_size=8, dilation=4), ValueError, r"extent 9 with dilation 4"),
    ("R3", dict(kernel_size=3, input_size=8, stride=0), ValueError, r"stride must be >= 1, got \(0,\)"),
    ("R3", dict(kernel_size=3, input_size=8, dilation=-1), ValueError, r"dilation must be >= 1"),
    ("R3", dict(kernel_size=3, input_size=8, padding=-1), ValueError, r"padding must be >= 0"),
    ("R3", dict(kernel_size=3, input_size=8, padding="full"), ValueError, r"'same' or 'valid', got 'full'"),
    ("R3", dict(kernel_size=3, input_size=8, padding="same", stride=2), ValueError, r"not supported for strided"),
    ("R3", dict(kernel_size=3, input_size=8, padding_mode="mirror"), ValueError, r"padding_mode.*'mirror'"),
    ("R3", dict(kernel_size=3, input_size=8, padding=8, padding_mode="reflect"), ValueError,
     r"reflect padding.*smaller than the input"),
    ("R4", dict(kernel_size=3, input_size=8, depth=0), ValueError, r"depth must be an int >= 1, got 0"),
    ("R4", dict(kernel_size=3, input_size=8, depth=1.5), ValueError, r"depth must be an int >= 1, got 1.5"),
    ("R5", dict(kernel_size=2.5, input_size=8), TypeError, r"kernel_size must be an int.*2.5"),
    ("R5", dict(kernel_size="3", input_size=8), TypeError, r"kernel_size must be an int.*'3'"),
    ("R5", dict(kernel_size=(3.0,), input_size=8), TypeError, r"kernel_size must be an int"),
    ("R5", dict(kernel_size=(3, 3), input_size=8), ValueError, r"kernel_size must have 1 entries"),
    ("R5", dict(kernel_size=3, input_size=8.0), TypeError, r"input_size must be an int"),
    ("R5", dict(kernel_size=3, input_size="8"), TypeError, r"input_size must be an int"),
    ("R5", dict(kernel_size=3, input_size=8, padding=1.5), TypeError, r"padding must be an int"),
    ("R6", dict(kernel_size=True, input_size=8), TypeError, r"kernel_size must be an int.*True"),
    ("R6", dict(kernel_size=3, input_size=8, stride=True), TypeError, r"stride must be an int.*True"),
    ("R6", dict(kernel_size=3, input_size=8, depth=True), ValueError, r"depth must be an int >= 1, got True"),
    ("R6", dict(kernel_size=3, input_size=(True, 8)), TypeError, r"input_size must be an int"),
    ("R7", dict(kernel_size=3, input_size=8, bias="no"), TypeError, r"bias must be True or False"),
    ("R7", dict(kernel_size=3, input_size=8, fixed="yes"), TypeError, r"fixed must be True or False"),
    ("R7", dict(kernel_size=3, input_size=8, search="K_in"), TypeError, r"not a string"),
    ("R7", dict(kernel_size=3, input_size=8, search=("K_mid",)), ValueError, r"unknown K-matrices \['K_mid'\]"),
    ("R7", dict(kernel_size=3, input_size=8, init="fft"), ValueError, r"init must be 'conv' or 'random'"),
    ("R7", dict(kernel_size=3, input_size=8, strategy="fast"), ValueError, r"strategy must be one of"),
    ("R7", dict(kernel_size=3, input_size=8, max_kernel_size=1), ValueError, r"max_kernel_size \(1,\) must be >="),
]


@pytest.mark.parametrize("row,kwargs,exc,pattern", KOP_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(KOP_CASES)])
def test_kop_constructor_rejects_bad_arguments(row, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ch.KOp(2, 4, **kwargs)


@pytest.mark.parametrize("in_ch,out_ch,groups,pattern", [
    (0, 4, 1, r"in_channels must be a positive int, got 0"),
    (True, 4, 1, r"in_channels must be a positive int, got True"),  # R6: bool is not an int here
    (2, 4, 3, r"divisible by groups \(3\)"),
])
def test_kop_channels_and_groups(in_ch, out_ch, groups, pattern):  # R8
    with pytest.raises(ValueError, match=pattern):
        ch.KOp(in_ch, out_ch, 3, 8, groups=groups)


def test_kop_forward_rank_channels_size_dtype():  # R9
    op = ch.KOp(2, 3, 3, (8, 8))
    with pytest.raises(ValueError, match=r"expects \(batch, channels, \*\(8, 8\)\), got a tensor of shape \(8, 8\)"):
        op(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="expects 2 input channels, got 3"):
        op(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"built for input size \(8, 8\), got \(9, 8\)"):
        op(torch.zeros(1, 2, 9, 8))
    with pytest.raises(TypeError, match="floating-point input, got dtype torch.int64"):
        op(torch.zeros(1, 2, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="expects a torch.Tensor, got list"):
        op([[0.0]])
    assert op(torch.zeros(2, 8, 8)).shape == (3, 6, 6)  # unbatched input is fine, as for nn.Conv2d


def test_kmatrix_bad_arguments():  # R10
    with pytest.raises(ValueError, match="power of two >= 2, got n=6"):
        ch.KMatrix(6)
    with pytest.raises(ValueError, match="power of two"):
        ch.KMatrix(True)
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        ch.KMatrix(8, depth=0)
    with pytest.raises(ValueError, match="unknown K-matrix init 'fftt'"):
        ch.KMatrix(8, init="fftt")
    with pytest.raises(ValueError, match="size 8 applied to a dimension of size 4"):
        ch.KMatrix(8)(torch.zeros(4))


def test_from_conv_and_chrysalize_bad_arguments():  # R11
    with pytest.raises(TypeError, match="expects nn.Conv1d/2d/3d, got Linear"):
        ch.KOp.from_conv(nn.Linear(2, 2), 8)
    with pytest.raises(ValueError, match=r"needs 2 spatial sizes"):
        ch.KOp.from_conv(nn.Conv2d(1, 1, 3), (8, 8, 8))
    with pytest.raises(TypeError, match="expects an nn.Module, got int"):
        ch.chrysalize(3, torch.zeros(1))
    net = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="depth must be an int >= 1, got 0"):
        ch.chrysalize(net, torch.zeros(1, 1, 8, 8), depth=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'dept'"):
        ch.chrysalize(net, torch.zeros(1, 1, 8, 8), dept=2)


# ----------------------------------------------------------------------- names: data, spaces, config
def test_unknown_names_suggest_close_ones():  # R12
    from chrysalis.data import get_dataset
    from chrysalis.spaces import create_space

    with pytest.raises(ValueError, match=r"unknown dataset 'mnist5'\. Did you mean 'mnist5k'"):
        get_dataset("mnist5", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        get_dataset("digits", "trian")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['foo'\]; valid options"):
        get_dataset("digits", "train", foo=1)
    with pytest.raises(ValueError, match=r"unknown space 'lenett'\. Did you mean 'lenet'"):
        create_space("lenett", None)
    info = get_dataset("digits", "train").info
    with pytest.raises(ValueError, match=r"got 'kopp' \(did you mean 'kop'\?\)"):
        create_space("lenet", info, op="kopp")
    with pytest.raises(ConfigError, match=r"got 'jiont' \(did you mean 'joint'\?\)"):
        SearchConfig.from_dict({"method": "jiont"})
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) epoch \(did you mean epochs\?\)"):
        SearchConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize("values,pattern", [
    ({"epochs": True}, r"epochs must be int, got True"),  # R6: bool is not an int
    ({"epochs": 2.5}, r"epochs must be int, got 2.5"),
    ({"epochs": "ten"}, r"epochs must be int, got 'ten'"),
    ({"limit_train": -1}, r"limit_train must be >= 1 \(or unset\), got -1"),
    ({"limit_val": 0}, r"limit_val must be >= 1"),
    ({"checkpoint_every": -2}, r"checkpoint_every must be >= 0, got -2"),
    ({"lr": -0.1}, r"lr must be >= 0"),
    ({"lr": float("nan")}, r"lr must be a finite number, got nan"),
    ({"arch_lr": "inf"}, r"arch_lr must be a finite number, got inf"),
    ({"on_nonfinite": "rolback"}, r"did you mean 'rollback'"),
    ({"rollback_lr_factor": 1.5}, r"rollback_lr_factor must be in \(0, 1\)"),
    ({1: 2}, r"unknown config key\(s\) 1"),
    ([1, 2], r"must be a mapping"),
])
def test_config_values(values, pattern):  # R13
    with pytest.raises(ConfigError, match=pattern):
        SearchConfig.from_dict(values)


def test_yaml_errors_name_file_and_line(tmp_path):  # R14
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nlr: [0.1\nmethod: joint\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}:3:\d+: not valid YAML"):
        read_yaml(bad)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not"):
        read_yaml(tmp_path / "bin.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml(tmp_path / "missing.yaml")
    (tmp_path / "typo.yaml").write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="did you mean epochs"):
        SearchConfig.from_yaml(tmp_path / "typo.yaml")


# ----------------------------------------------------------------------- the command line
@pytest.mark.parametrize("args,pattern", [
    (["search", "--method", "jiont"], "did you mean 'joint'"),                      # R12
    (["search", "--data", "mnist5", "--limit-train", "8"], "Did you mean 'mnist5k'"),  # R12
    (["search", "--space", "lenett", "--limit-train", "8"], "Did you mean 'lenet'"),   # R12
    (["search", "--set", "epoch=3"], "did you mean epochs"),                        # R13
    (["search", "--limit-train", "-5"], "limit_train must be >= 1"),                # R13
    (["search", "--checkpoint-every", "-1"], "checkpoint_every must be >= 0"),      # R13
    (["search", "--depth", "1.5"], "depth"),                                        # R5
    (["search", "--set", "lr=[1"], "--set lr: not valid YAML"),                     # R14
    (["search", "--set", "epochs=true"], "epochs must be int, got True"),           # R6
])
def test_cli_bad_options_one_line(tmp_path, capsys, monkeypatch, args, pattern):
    monkeypatch.chdir(tmp_path)
    assert pattern in _cli_error(args, capsys)


def test_cli_yaml_syntax_error_names_file_and_line(tmp_path, capsys):  # R14
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nlr: [0.1\nmethod: joint\n")
    assert f"{bad}:3:" in _cli_error(["search", "--config", bad], capsys)


def test_cli_unwritable_out(tmp_path, capsys, standin):  # R15
    (tmp_path / "file").write_text("x")
    err = _cli_error(["search", "--out", tmp_path / "file" / "run", "--epochs", "1"], capsys)
    assert "is not a directory" in err
    err = _cli_error(["search", "--out", "/proc/chrysalis-no-such/run", "--epochs", "1"], capsys)
    assert "/proc/chrysalis-no-such/run" in err
    if os.geteuid() != 0:  # root writes anywhere: the permission bits only bind other users
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert "not writable" in _cli_error(["search", "--out", ro / "run", "--epochs", "1"], capsys)


def test_missing_and_corrupt_data_files(tmp_path):  # R16 (more: tests/test_data_files.py)
    from chrysalis.data import get_dataset

    with pytest.raises(FileNotFoundError, match="not found. Looked in"):
        get_dataset("cifar10", "train", root=tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"]:
        (folder / name).write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError):
        get_dataset("cifar10", "train", root=tmp_path)


def test_resume_with_another_config_is_refused(standin, tmp_path, capsys):  # R17
    run_search(cfg(tmp_path, epochs=1))
    with pytest.raises(ConfigError, match=r"cannot resume .*its config differs \(lr: 0.01 -> 0.5\)"):
        run_search(cfg(tmp_path, epochs=2, lr=0.5), resume=True)


def test_cli_eval_and_resume_without_a_run(tmp_path, capsys):  # R18
    assert "run directory not found" in _cli_error(["eval", tmp_path / "nothing"], capsys)
    (tmp_path / "empty").mkdir()
    assert "not a run directory" in _cli_error(["retrain", tmp_path / "empty"], capsys)


# ----------------------------------------------------------------------- divergence
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(standin, tmp_path):  # R19
    with pytest.raises(NonFiniteError, match=r"non-finite .* at step \d+ \(epoch \d+, batch \d+\).*last good "
                                             r"checkpoint .* \(step \d+\) is kept"):
        run_search(cfg(tmp_path, lr=1e6, checkpoint_every=2))
    ckpt = load_checkpoint(tmp_path / "run")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_nan_in_the_data_stops_at_the_first_step(tmp_path, monkeypatch):  # R19
    from chrysalis.search import engine

    def poisoned(name, split, **options):
        ds = tiny_dataset(name, split, **options)
        ds.inputs[:, :, 3, 3] = float("nan")
        return ds

    monkeypatch.setattr(engine, "_get_dataset", poisoned)
    monkeypatch.setattr(engine, "_create_space", tiny_space)
    with pytest.raises(NonFiniteError, match=r"training loss nan at step 1 \(epoch 1, batch 1\).*no checkpoint"):
        run_search(cfg(tmp_path))


def test_cli_nonfinite_is_one_line(standin, tmp_path, capsys):  # R19
    err = _cli_error(["search", "--out", tmp_path / "run", "--lr", "1e6", "--epochs", "2", "--batch-size", "16",
                      "--quiet", "--set", "tensorboard=false"], capsys)
    assert "non-finite" in err and "step" in err


def test_rollback_lowers_the_learning_rate_and_finishes(standin, tmp_path, capsys):  # R20
    r = run_search(cfg(tmp_path, lr=1e6, on_nonfinite="rollback", rollback_lr_factor=1e-6))
    lines = metrics(tmp_path / "run")
    assert len(lines) == 2 and all(ln["lr"] <= 1.0 for ln in lines)  # 1e6 x 1e-6, then the schedule
    assert all(torch.isfinite(torch.tensor(ln["train_loss"])) for ln in lines)
    assert r["final"]["test_loss"] == r["final"]["test_loss"]  # not NaN
    assert "rolled back to step" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "run")["lr_scale"] == pytest.approx(1e-6)


def test_rollback_gives_up_on_data_that_is_always_nan(tmp_path, monkeypatch):  # R20
    from chrysalis.search import engine

    def poisoned(name, split, **options):
        ds = tiny_dataset(name, split, **options)
        ds.inputs[:] = float("nan")
        return ds

    monkeypatch.setattr(engine, "_get_dataset", poisoned)
    monkeypatch.setattr(engine, "_create_space", tiny_space)
    with pytest.raises(NonFiniteError, match="training loss nan at step 1"):
        run_search(cfg(tmp_path, on_nonfinite="rollback"))


# ----------------------------------------------------------------------- determinism
def test_same_seed_same_metrics(standin, tmp_path):  # R21
    a = run_search(cfg(tmp_path, "a", method="bilevel", checkpoint_every=3))
    b = run_search(cfg(tmp_path, "b", method="bilevel", checkpoint_every=3))

    def strip(lines):
        return [{k: v for k, v in ln.items() if k != "seconds"} for ln in lines]

    assert strip(metrics(tmp_path / "a")) == strip(metrics(tmp_path / "b"))
    assert a["final"] == b["final"]
    c = run_search(cfg(tmp_path, "c", method="bilevel", seed=1))
    assert c["final"] != a["final"]


# ----------------------------------------------------------------------- untrusted files
class _Exploit:
    """Unpickling this runs os.system(...): what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_checkpoint_is_refused(standin, tmp_path, capsys, writer):  # R22
    run_search(cfg(tmp_path, epochs=1))
    marker = tmp_path / "PWNED"
    path = tmp_path / "run" / "checkpoint.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(_Exploit(marker)))
    else:
        torch.save({"model": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        run_search(cfg(tmp_path, epochs=2), resume=True)
    assert "refused to load" in _cli_error(["eval", tmp_path / "run"], capsys)
    assert "refused to load" in _cli_error(["retrain", tmp_path / "run", "--epochs", "1"], capsys)
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(standin, tmp_path):  # R23
    run_search(cfg(tmp_path, epochs=1))
    path = tmp_path / "run" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="refused to load .*checkpoint.pt"):
        load_checkpoint(path)


def test_resume_ignores_out_from_the_saved_config(standin, tmp_path, monkeypatch):  # R24
    run_search(cfg(tmp_path, "run", epochs=1))
    target = tmp_path / "elsewhere"
    conf = tmp_path / "run" / "config.yaml"
    conf.write_text(conf.read_text().replace(f"out: {tmp_path / 'run'}", f"out: {target}"))
    assert str(target) in conf.read_text()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["search", "--out", str(tmp_path / "run"), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert not target.exists()
    assert len(metrics(tmp_path / "run")) == 2
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["out"] == str(tmp_path / "run")


def test_no_unsafe_deserialisation_in_the_code_base():  # R25
    bad = [
        (r"\bpickle\.loads?\(", "plain pickle"),
        (r"\bUnpickler\(", "an unpickler other than the restricted one"),
        (r"\byaml\.load\(", "yaml.load (use yaml.safe_load)"),
        (r"\byaml\.unsafe_load|yaml\.full_load", "unsafe yaml loader"),
        (r"(?<![\w.])eval\(", "eval("),
        (r"(?<![\w.])exec\(", "exec("),
        (r"\bmarshal\.loads?\(|\bshelve\.open\(|\bdill\b|\bjoblib\.load\(", "other unpicklers"),
    ]
    found = []
    for path in sorted((REPO / "chrysalis").rglob("*.py")):
        text = path.read_text()
        for lineno, line in enumerate(text.splitlines(), 1):
            code = line.split("#")[0]
            if path.name == "safe_pickle.py" and "Unpickler" in code:
                continue  # the restricted unpickler itself (tested in tests/test_data_files.py)
            for pattern, what in bad:
                if re.search(pattern, code) and not code.strip().startswith(('"', "'")):
                    found.append(f"{path.relative_to(REPO)}:{lineno}: {what}: {line.strip()}")
            for _ in re.finditer(r"torch\.load\(", code):
                call = text.splitlines()[lineno - 1:lineno + 2]
                if "weights_only=True" not in " ".join(call):
                    found.append(f"{path.relative_to(REPO)}:{lineno}: torch.load without weights_only=True")
    assert not found, "\n".join(found)
