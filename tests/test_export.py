"""chrysalis export: safetensors + manifest, a loader that reproduces the searched model and trusts nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from chrysalis.analysis.export import ExportError, export_run, load_arch, load_exported, read_manifest
from chrysalis.chrysalize import arch_parameters, kops
from chrysalis.cli import main
from chrysalis.search import SearchConfig, build_model, load_split, run_search

RUN = dict(data="permuted-digits", space="lenet", space_options={"padding": 2}, epochs=1, batch_size=32,
           limit_train=64, limit_val=32, quiet=True, tensorboard=False, threads=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_runs")
    run_search(SearchConfig(**RUN, op="kop", method="joint", init="conv", depth=2, arch_lr=1e-2,
                            out=str(root / "kop")))
    run_search(SearchConfig(**RUN, op="conv", method="fixed", out=str(root / "conv")))
    return root


def searched_model(run_dir):
    """The searched model as the search package rebuilds it (independent of chrysalis.analysis)."""
    cfg = SearchConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    test = load_split(cfg, "test", 64)
    model = build_model(cfg, test.info)
    model.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"])
    return model.eval(), test.inputs


@pytest.mark.parametrize("name", ["kop", "conv"])
def test_exported_model_reproduces_outputs(runs, tmp_path, name):
    out = tmp_path / name
    manifest = export_run(runs / name, out)
    assert {p.name for p in out.iterdir()} == {"manifest.json", "model.safetensors", "arch.safetensors"}
    model = load_exported(out)
    ref, x = searched_model(runs / name)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    # every tensor of the state dict is in model.safetensors and listed in the manifest
    state = ref.state_dict()
    stored = load_file(out / "model.safetensors")
    assert set(stored) == set(state) == {t["name"] for t in manifest["tensors"]}
    for t in manifest["tensors"]:
        assert t["shape"] == list(state[t["name"]].shape)
        assert t["dtype"] == str(state[t["name"]].dtype).removeprefix("torch.")


def test_manifest_lists_every_kop_and_the_architecture(runs, tmp_path):
    manifest = export_run(runs / "kop", tmp_path / "e")
    ref, _ = searched_model(runs / "kop")
    names = [n for n, _ in kops(ref)]
    assert names == ["conv1", "conv2"]
    assert [k["name"] for k in manifest["kops"]] == names
    for entry, (_, op) in zip(manifest["kops"], kops(ref)):
        for key in ("in_channels", "out_channels", "kernel_size", "max_kernel_size", "input_size", "stride",
                    "padding", "dilation", "groups", "padding_mode", "depth", "init", "search", "n"):
            assert key in entry, key
        assert entry["n"] == [p.n for p in op.plans]
        assert entry["depth"] == 2 and entry["init"] == "conv"
        assert entry["in_channels"] == op.in_channels and entry["input_size"] == list(op.input_size)
    arch = load_arch(tmp_path / "e")
    arch_ids = {id(p) for p in arch_parameters(ref)}
    expected = {n for n, p in ref.named_parameters() if id(p) in arch_ids}
    assert set(arch) == expected == set(manifest["arch_tensors"])
    assert all(k.endswith(".twiddle") for k in arch)
    params = dict(ref.named_parameters())
    assert all(torch.equal(arch[k], params[k].detach()) for k in arch)
    assert manifest["config"]["data"] == "permuted-digits" and manifest["data"]["input_shape"] == [1, 8, 8]
    assert set(manifest["versions"]) == {"chrysalis", "torch", "python"}
    assert manifest["space"] == "lenet" and manifest["build"]["kop_options"]["depth"] == 2


def test_conv_run_exports_no_kops(runs, tmp_path):
    manifest = export_run(runs / "conv", tmp_path / "e")
    assert manifest["kops"] == [] and manifest["arch_tensors"] == []
    assert load_arch(tmp_path / "e") == {}


@pytest.fixture
def exported(runs, tmp_path):
    out = tmp_path / "exp"
    export_run(runs / "kop", out)
    return out


def _edit_manifest(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_hash_mismatch_is_refused(exported):
    _edit_manifest(exported, lambda m: m["files"]["model"].update(sha256="0" * 64))
    with pytest.raises(ExportError, match="sha256"):
        load_exported(exported)


def test_modified_tensors_file_is_refused(exported):
    data = bytearray((exported / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (exported / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="sha256"):
        load_exported(exported)


@pytest.mark.parametrize("name", ["../model.safetensors", "/etc/passwd", "sub/model.safetensors", "..", "",
                                  "..\\model.safetensors", 7])
def test_manifest_paths_must_be_plain_names(exported, name):
    shutil.copy(exported / "model.safetensors", exported.parent / "model.safetensors")
    _edit_manifest(exported, lambda m: m["files"]["model"].update(name=name))
    with pytest.raises(ExportError, match="file name"):
        load_exported(exported)


def test_symlink_out_of_the_export_is_refused(exported, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(exported / "model.safetensors", outside)
    (exported / "link.safetensors").symlink_to(outside)
    _edit_manifest(exported, lambda m: m["files"]["model"].update(name="link.safetensors"))
    with pytest.raises(ExportError, match="outside"):
        load_exported(exported)


def test_import_path_space_needs_trust(exported):
    _edit_manifest(exported, lambda m: m["build"].update(space="os:system"))
    with pytest.raises(ExportError, match="trust_code"):
        load_exported(exported)


def test_not_an_export(tmp_path):
    with pytest.raises(ExportError, match="manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_cli_export(runs, tmp_path, capsys):
    assert main(["export", str(runs / "kop"), "--out", str(tmp_path / "cli")]) == 0
    assert "conv1, conv2" in capsys.readouterr().out
    assert (tmp_path / "cli" / "manifest.json").is_file()
    assert main(["export", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("chrysalis: error: run directory not found") and err.count("\n") == 1
    assert "Traceback" not in err
