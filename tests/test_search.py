"""Search engine and methods on tiny stand-in data (1x8x8 images, a tiny conv net chrysalized)."""

from __future__ import annotations

import json
import types

import pytest
import torch
from standins import SEEN, TAGS, cfg, metrics, tiny_dataset

import chrysalis
from chrysalis.search import ConfigError, SearchConfig, engine, lr_factor, retrain, run_search
from chrysalis.search.checkpoint import save_atomic
from chrysalis.search.methods import Bilevel, Joint


# ------------------------------------------------------------------------------------ config
def test_config_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown config key.*lerning_rate.*valid keys: data"):
        SearchConfig.from_dict({"lerning_rate": 0.1})


def test_config_yaml_coercion_and_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("arch_lr: 1e-3\nepochs: 7\nmethod: bilevel\n")  # YAML reads 1e-3 as a string
    c = SearchConfig.from_yaml(path, epochs=3, seed=None)
    assert c.arch_lr == 1e-3 and c.epochs == 3 and c.method == "bilevel"


@pytest.mark.parametrize("bad", [{"method": "dart"}, {"method": "joint", "op": "conv"}, {"epochs": 0},
                                 {"epochs": "many"}, {"lr_milestones": [2.0]}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        SearchConfig.from_dict(bad)


def test_lr_factor_is_multistep():
    assert [lr_factor(p) for p in (0.0, 0.49, 0.5, 0.74, 0.75, 1.0)] == pytest.approx(
        [1, 1, 0.5, 0.5, 0.05, 0.05])


# ------------------------------------------------------------------------------------ methods
@pytest.mark.parametrize("method,op,extra", [
    ("fixed", "conv", {}), ("fixed", "fft", {}), ("fixed", "kop", {}), ("joint", "kop", {}),
    ("bilevel", "kop", {}), ("bilevel", "kop", {"second_order": True}),
])
def test_every_method_reduces_training_loss(standin, tmp_path, method, op, extra):
    r = run_search(cfg(tmp_path, method=method, op=op, epochs=4, lr=0.05, **extra))
    m = metrics(tmp_path / "run")
    assert m[-1]["train_loss"] < m[0]["train_loss"] - 0.05
    assert r["final"]["test_acc"] is not None


@pytest.mark.parametrize("method", ["joint", "bilevel"])
def test_search_moves_the_architecture(standin, tmp_path, method):
    run_search(cfg(tmp_path, method=method))
    d = metrics(tmp_path / "run")[-1]["conv_distance"]
    assert d and all(v > 1e-4 for v in d.values())


def test_warm_start_equals_conv_at_step_zero(standin):
    info = tiny_dataset("x", "train").info
    x = tiny_dataset("x", "val").inputs
    conv = engine.build_model(SearchConfig(op="conv", method="fixed", seed=3), info).eval()
    kop = engine.build_model(SearchConfig(op="kop", init="conv", seed=3), info).eval()
    assert any(isinstance(m, chrysalis.KOp) for m in kop.modules())
    torch.testing.assert_close(kop(x), conv(x), rtol=1e-4, atol=1e-5)


def test_warm_start_equals_conv_lenet_real_spaces():
    spaces = pytest.importorskip("chrysalis.spaces")
    info = types.SimpleNamespace(kind="image", input_shape=(1, 32, 32), num_classes=10, vocab_size=None)
    x = torch.randn(4, 1, 32, 32)
    assert spaces.create_space is not None
    conv = engine.build_model(SearchConfig(op="conv", method="fixed", seed=1), info).eval()
    kop = engine.build_model(SearchConfig(op="kop", init="conv", depth=3, seed=1), info).eval()
    torch.testing.assert_close(kop(x), conv(x), rtol=1e-4, atol=1e-4)


def test_grad_clip_works_on_twiddles():
    op = chrysalis.KOp(2, 3, 3, (8, 8), init="random")
    arch = list(chrysalis.arch_parameters(op))
    assert arch and all(p.dtype == torch.float32 for p in arch)  # real storage: clipping applies
    op(torch.randn(4, 2, 8, 8)).pow(2).sum().mul(1e4).backward()
    before = torch.nn.utils.clip_grad_norm_(arch, 1.0)
    after = torch.sqrt(sum(p.grad.pow(2).sum() for p in arch))
    assert before > 1.0 and after <= 1.0 + 1e-4


def test_bilevel_arch_steps_on_val_and_never_reads_test(standin, tmp_path, monkeypatch):
    calls, arch_tags = [], []
    orig_get, orig_arch, orig_finish = engine._get_dataset, Bilevel.arch_step, engine.SearchRun._finish

    def get(name, split, **o):
        calls.append(split)
        return orig_get(name, split, **o)

    def arch_step(self, val_batch, train_batch):
        arch_tags.extend(val_batch[0][:, 0, 0, 0].unique().tolist())
        return orig_arch(self, val_batch, train_batch)

    def finish(self):
        calls.append("<search done>")
        assert TAGS["test"] not in SEEN  # no forward pass on test data during the search
        return orig_finish(self)

    monkeypatch.setattr(engine, "_get_dataset", get)
    monkeypatch.setattr(Bilevel, "arch_step", arch_step)
    monkeypatch.setattr(engine.SearchRun, "_finish", finish)
    run_search(cfg(tmp_path, method="bilevel"))
    assert set(arch_tags) == {TAGS["val"]}
    assert calls.index("test") > calls.index("<search done>")
    assert calls.count("test") == 1


# ------------------------------------------------------------------------------------ frozen architecture
def _arch_state(model_or_state) -> dict[str, torch.Tensor]:
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    return {k: v.clone() for k, v in state.items() if k.endswith("twiddle")}


def test_warmup_freezes_architecture(standin, tmp_path):
    c = cfg(tmp_path, epochs=2, warmup_epochs=2)
    initial = _arch_state(engine.build_model(c, tiny_dataset("x", "train").info))
    run_search(c)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    final = _arch_state(ckpt["model"])
    assert initial.keys() == final.keys() and initial
    for k in initial:
        torch.testing.assert_close(final[k], initial[k], rtol=0, atol=0)
    assert all(not m["arch_active"] for m in metrics(tmp_path / "run"))


def test_retrain_keeps_found_architecture_with_fresh_weights(standin, tmp_path):
    run_search(cfg(tmp_path, init="random"))
    search_state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    r = retrain(tmp_path / "run", quiet=True, tensorboard=False)
    assert r["retrain_of"] == str(tmp_path / "run") and r["method"] == "fixed"
    assert r["seed"] == 1000
    re_state = torch.load(tmp_path / "run" / "retrain" / "checkpoint.pt", weights_only=True)["model"]
    for k, v in _arch_state(search_state).items():
        torch.testing.assert_close(re_state[k], v, rtol=0, atol=0)
    assert not torch.equal(re_state["0.weight"], search_state["0.weight"])


# ------------------------------------------------------------------------------------ resume, checkpoints
def _strip(ms: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "seconds"} for m in ms]


@pytest.mark.parametrize("method", ["joint", "bilevel"])
def test_resume_reproduces_uninterrupted_run(standin, tmp_path, method):
    straight = run_search(cfg(tmp_path, "a", method=method, epochs=2))
    run_search(cfg(tmp_path, "b", method=method, epochs=1))
    resumed = run_search(cfg(tmp_path, "b", method=method, epochs=2), resume=True)
    assert len(metrics(tmp_path / "b")) == 2
    assert _strip(metrics(tmp_path / "a")) == _strip(metrics(tmp_path / "b"))
    assert straight["final"]["test_loss"] == resumed["final"]["test_loss"]


def test_resume_after_crash_mid_epoch(standin, tmp_path, monkeypatch):
    run_search(cfg(tmp_path, "a", epochs=2, checkpoint_every=3))
    orig = Joint.step
    count = {"n": 0}

    def crashing(self, batch, next_val):
        count["n"] += 1
        if count["n"] == 7:  # epoch 2, batch 3: after the step-6 mid-epoch checkpoint
            raise KeyboardInterrupt
        return orig(self, batch, next_val)

    monkeypatch.setattr(Joint, "step", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg(tmp_path, "b", epochs=2, checkpoint_every=3))
    monkeypatch.setattr(Joint, "step", orig)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 2)
    run_search(cfg(tmp_path, "b", epochs=2, checkpoint_every=3), resume=True)
    assert _strip(metrics(tmp_path / "a")) == _strip(metrics(tmp_path / "b"))


def test_checkpoint_loads_weights_only(standin, tmp_path):
    run_search(cfg(tmp_path))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert {"model", "weight_opt", "arch_opt", "rng", "schedule", "epoch", "step", "config"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["config"]["method"] == "joint" and ckpt["arch_opt"]["state"]


def test_resume_with_other_config_is_an_error(standin, tmp_path):
    run_search(cfg(tmp_path, epochs=1))
    with pytest.raises(ConfigError, match="differs.*lr"):
        run_search(cfg(tmp_path, epochs=2, lr=0.5), resume=True)
    with pytest.raises(ConfigError, match="already holds a run"):
        run_search(cfg(tmp_path, epochs=1))


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    save_atomic({"a": torch.ones(3)}, tmp_path / "c.pt")
    save_atomic({"a": torch.zeros(3)}, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.load(tmp_path / "c.pt", weights_only=True)["a"].sum() == 0


def test_run_directory_and_results_schema(standin, tmp_path):
    r = run_search(cfg(tmp_path, tensorboard=True))
    out = tmp_path / "run"
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "results.json", "tb"} <= names
    assert any((out / "tb").iterdir())
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(r))
    assert saved["schema"] == 1 and saved["method"] == "joint" and saved["init"] == "conv"
    assert set(saved["final"]) >= {"train_acc", "val_acc", "test_acc", "test_loss"}
    assert saved["num_arch_params"] > 0 and saved["num_weight_params"] > 0
    assert set(saved["versions"]) == {"chrysalis", "torch", "python"}
    line = metrics(out)[0]
    assert set(line) >= {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "arch_lr",
                         "seconds", "conv_distance"}
    assert list(line["conv_distance"]) == ["0"]


def test_limit_takes_a_fixed_subset(standin):
    c = SearchConfig(limit_train=10)
    a, b = engine.load_split(c, "train", 10), engine.load_split(c.replace(seed=5), "train", 10)
    assert len(a) == 10 and torch.equal(a.inputs, b.inputs)


def test_retrain_rescales_an_amplifying_architecture_on_its_own(standin, tmp_path):
    from chrysalis.search.checkpoint import load_checkpoint

    run_search(cfg(tmp_path, epochs=1))
    warm = retrain(tmp_path / "run", out=tmp_path / "warm", epochs=1)
    assert warm["gain_matched"] is False and all(0.5 < g < 2 for g in warm["init_gains"].values())
    ckpt = load_checkpoint(tmp_path / "run")
    for k, v in ckpt["model"].items():
        if k.endswith("K_out.0.twiddle"):
            v[0, 0] *= 20.0  # axis 0's first factor x20: K_out, so the op's output, x20
    save_atomic(ckpt, tmp_path / "run" / "checkpoint.pt")
    auto = retrain(tmp_path / "run", out=tmp_path / "auto", epochs=1)
    never = retrain(tmp_path / "run", out=tmp_path / "never", epochs=1, max_init_gain=0)
    assert auto["gain_matched"] is True and never["gain_matched"] is False
    assert auto["init_gains"] == never["init_gains"] and all(15 < g < 25 for g in auto["init_gains"].values())
    forced = retrain(tmp_path / "run", out=tmp_path / "forced", epochs=1, match_gain=True, max_init_gain=0)
    assert forced["gain_matched"] is True and forced["final"] == auto["final"]  # the same rescaling
    with pytest.raises(ConfigError, match="max_init_gain must be >= 1"):
        SearchConfig.from_dict({"max_init_gain": 0.5})


def test_retrain_match_gain_rescales_the_fresh_weights(standin, tmp_path):
    run_search(cfg(tmp_path, epochs=1))
    plain = retrain(tmp_path / "run", out=tmp_path / "plain", epochs=1)
    matched = retrain(tmp_path / "run", out=tmp_path / "matched", epochs=1, match_gain=True)
    assert matched["config"]["match_gain"] is True and plain["config"]["match_gain"] is False
    assert matched["final"]["train_loss"] != plain["final"]["train_loss"]
