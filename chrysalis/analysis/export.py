"""Export a run's found architecture and model: safetensors files plus a JSON manifest.

    from chrysalis.analysis.export import export_run, load_exported
    manifest = export_run("runs/pmnist-joint", "exports/pmnist")
    model = load_exported("exports/pmnist")     # the searched model, outputs bit for bit

An export directory holds:

    arch.safetensors    every K-matrix twiddle (real, (..., 2) = re/im), keyed by parameter name
    model.safetensors   the whole state dict (weights, architecture, buffers)
    manifest.json       what the tensors are and how to rebuild the model (schema in docs/ANALYSIS.md)

The loader trusts nothing in the manifest: file names must be plain names inside the export
directory (no "/", "..", absolute paths or links out of it), each file's sha256 must match, and a
space given as an import path ("pkg.module:builder", i.e. code) is refused unless `trust_code=True`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..chrysalize import arch_parameters, kops
from ..kop import KOp
from .runs import AnalysisError, build_model, info_from_dict, load_run

MANIFEST_NAME = "manifest.json"
MODEL_FILE = "model.safetensors"
ARCH_FILE = "arch.safetensors"
FORMAT = "chrysalis-export"
FORMAT_VERSION = 1


class ExportError(AnalysisError):
    """An export directory or manifest is missing, inconsistent or unsafe."""


# --------------------------------------------------------------------------- helpers
def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def arch_names(model: nn.Module) -> list[str]:
    """Parameter names of every K-matrix twiddle in `model` (the architecture)."""
    ids = {id(p) for p in arch_parameters(model)}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def kop_settings(name: str, op: KOp) -> dict[str, Any]:
    """A K-op's construction settings, transform sizes and K-matrices, as a JSON-able dict."""
    entry: dict[str, Any] = {
        "name": name,
        "in_channels": op.in_channels,
        "out_channels": op.out_channels,
        "kernel_size": list(op.kernel_size),
        "max_kernel_size": list(op.max_kernel_size),
        "input_size": list(op.input_size),
        "output_size": list(op.output_size),
        "stride": list(op.stride),
        "padding": _jsonable(op.padding),
        "dilation": list(op.dilation),
        "groups": op.groups,
        "bias": op.bias is not None,
        "padding_mode": op.padding_mode,
        "depth": op.depth,
        "init": op.init,
        "fixed": bool(op.fixed),
        "search": list(op.search),
        "n": [p.n for p in op.plans],
        "conv_distance": float(op.conv_distance()),
        "kmatrices": {},
    }
    for kind, mats in op.kmatrices().items():
        entry["kmatrices"][kind] = [
            {"axis": a, "tensor": f"{name}.{kind}.{a}.twiddle", "n": km.n, "depth": km.depth,
             "increasing": bool(km.increasing), "init": km.init}
            for a, km in enumerate(mats)
        ]
    return entry


def _tensor_entry(name: str, t: torch.Tensor, kind: str) -> dict[str, Any]:
    return {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "kind": kind}


def _versions() -> dict[str, str]:
    import chrysalis

    return {"chrysalis": chrysalis.__version__, "torch": torch.__version__, "python": platform.python_version()}


# --------------------------------------------------------------------------- export
def export_run(run_dir: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Export the model in `run_dir`'s checkpoint to `out` (default `run_dir/export`); return the manifest.

    Writes `model.safetensors`, `arch.safetensors` (empty for a model without K-ops) and
    `manifest.json` (last, so a directory with a manifest is a complete export). Existing files of
    a previous export in `out` are replaced; nothing else there is touched.
    """
    run = load_run(run_dir)
    if run.model is None:
        raise ExportError(f"{run_dir} has no checkpoint.pt to export (has the run trained an epoch?)")
    out = Path(out) if out is not None else Path(run_dir) / "export"
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    model = run.model
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    arch = arch_names(model)
    arch_set = set(arch)
    params = {n for n, _ in model.named_parameters()}
    save_file({k: state[k] for k in arch}, str(out / ARCH_FILE), metadata={"format": FORMAT, "content": "arch"})
    save_file(state, str(out / MODEL_FILE), metadata={"format": FORMAT, "content": "model"})
    from .runs import build_args

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"run": str(Path(run_dir).resolve()), "epoch": run.checkpoint.get("epoch"),
                   "step": run.checkpoint.get("step"),
                   "retrain_of": (run.results or {}).get("retrain_of") or run.config.get("arch_from")},
        "files": {
            "model": {"name": MODEL_FILE, "sha256": sha256_file(out / MODEL_FILE),
                      "bytes": (out / MODEL_FILE).stat().st_size},
            "arch": {"name": ARCH_FILE, "sha256": sha256_file(out / ARCH_FILE),
                     "bytes": (out / ARCH_FILE).stat().st_size},
        },
        "build": _jsonable(build_args(run.config)),
        "space": run.config.get("space"),
        "op": run.config.get("op"),
        "data": _jsonable(run.data_info),
        "config": _jsonable(run.config),
        "kops": [kop_settings(n, op) for n, op in kops(model)],
        "tensors": [_tensor_entry(k, v, "arch" if k in arch_set else "weight" if k in params else "buffer")
                    for k, v in state.items()],
        "arch_tensors": arch,
        "num_arch_params": sum(state[k].numel() for k in arch),
        "num_weight_params": sum(v.numel() for k, v in state.items() if k in params and k not in arch_set),
        "results": _jsonable({k: (run.results or {}).get(k) for k in ("final", "best_val_acc", "conv_distance")}
                             if run.results else None),
        "versions": _versions(),
    }
    tmp = out / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST_NAME)
    return manifest


# --------------------------------------------------------------------------- load
def _safe_file(directory: Path, name: Any, what: str) -> Path:
    """`directory/name` for a plain file name that stays inside `directory`; ExportError otherwise."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise ExportError(f"manifest {what} file name must be a non-empty plain file name, got {name!r}")
    if "/" in name or "\\" in name or "\0" in name or os.path.isabs(name) or Path(name).name != name:
        raise ExportError(f"manifest {what} file name {name!r} is not a plain file name "
                          "(no directories, '..' or absolute paths)")
    path = directory / name
    root = directory.resolve()
    resolved = path.resolve()
    if resolved.parent != root:  # e.g. a symbolic link out of the export directory
        raise ExportError(f"manifest {what} file {name!r} resolves outside the export directory")
    if not path.is_file():
        raise ExportError(f"{what} file {name!r} named by the manifest is missing from {directory}")
    return path


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The parsed, checked manifest of an export directory (format, version, file entries)."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ExportError(f"export directory not found: {directory}")
    if not path.is_file():
        raise ExportError(f"{directory} is not an export directory (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise ExportError(f"{path} has version {manifest.get('version')!r}; this chrysalis reads {FORMAT_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(files.get("model"), dict):
        raise ExportError(f"{path} lists no model file")
    for key in ("build", "data"):
        if not isinstance(manifest.get(key), dict):
            raise ExportError(f"{path} has no {key!r} section")
    return manifest


def _verified(directory: Path, manifest: dict[str, Any], key: str) -> Path:
    entry = manifest["files"].get(key)
    if not isinstance(entry, dict):
        raise ExportError(f"the manifest in {directory} lists no {key} file")
    path = _safe_file(directory, entry.get("name"), key)
    expected = entry.get("sha256")
    if not isinstance(expected, str) or sha256_file(path) != expected.lower():
        raise ExportError(f"{path.name}: sha256 does not match the manifest (file modified or corrupt)")
    return path


def load_arch(directory: str | Path) -> dict[str, torch.Tensor]:
    """The architecture tensors of an export ({parameter name: real twiddle tensor}), hash-checked."""
    directory = Path(directory)
    return load_file(str(_verified(directory, read_manifest(directory), "arch")))


def load_exported(directory: str | Path, *, trust_code: bool = False) -> nn.Module:
    """Rebuild the exported model (eval mode, CPU): the searched model, computing the same outputs.

    The model is built by `chrysalis.spaces.create_space` from the manifest's `build` section and
    its `data` info, then filled from `model.safetensors` (strict: every tensor must fit). A space
    named by import path is code from the manifest, so it is refused unless `trust_code`.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    build = manifest["build"]
    space = build.get("space")
    if not isinstance(space, str) or (":" in space and not trust_code):
        raise ExportError(f"the manifest names space {space!r}: an import path runs code from the manifest; "
                          "pass trust_code=True if you trust this export")
    path = _verified(directory, manifest, "model")
    state = load_file(str(path))
    info = info_from_dict(manifest["data"])
    try:
        model = build_model(build, info)
    except Exception as e:
        raise ExportError(f"cannot rebuild the exported model ({space}, op {build.get('op')}): {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{path.name} does not fit the model the manifest describes: "
                          f"{str(e).splitlines()[0]}") from None
    return model.eval()
