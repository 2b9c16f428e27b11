"""rl/checkpoint.py (the one writer, reader, device resolver and summary name) and rl/optim.py."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl import optim
from rl.checkpoint import (
    FORMAT_VERSION,
    SUMMARY_FILE,
    CheckpointError,
    atomic_write,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    write_json,
)

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- atomic files
def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, lambda f: f.write(b"one"))
    atomic_write(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "f.json"
    write_json(path, {"a": 1})

    def boom(f):
        f.write(b"{half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, boom)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_write_json_round_trips_and_stringifies_the_rest(tmp_path):
    path = write_json(tmp_path / SUMMARY_FILE, {"x": [1, 2.5, None], "p": Path("a/b")})
    assert json.loads(path.read_text()) == {"x": [1, 2.5, None], "p": "a/b"}
    assert path.read_text().endswith("}\n")
    assert write_json(path, {"a": 1}, indent=None).read_text() == '{"a": 1}\n'


def test_one_summary_name_everywhere():
    import rl.sweep
    import rl.trainer

    assert SUMMARY_FILE == "summary.json"
    assert rl.sweep.SUMMARY_FILE is SUMMARY_FILE and rl.trainer.SUMMARY_NAME is SUMMARY_FILE


# ----------------------------------------------------------------------------- device
def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "gpu", ""):
        with pytest.raises(ValueError, match=f"device={bad!r} is not allowed; allowed: auto"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_without_cuda():
    with pytest.raises(ValueError, match="device='cuda:0' is not available"):
        resolve_device("cuda:0")


# ----------------------------------------------------------------------------- checkpoints
def _state():
    return {"model": {"w": torch.randn(3, 4)}, "global_step": 7, "config": {"seed": 1}}


def test_checkpoint_round_trip(tmp_path):
    state = _state()
    path = save_checkpoint(tmp_path / "c" / "last.pt", state)
    back = load_checkpoint(path)
    assert back["format"] == FORMAT_VERSION and back["global_step"] == 7
    torch.testing.assert_close(back["model"]["w"], state["model"]["w"], rtol=0, atol=0)
    assert load_checkpoint(path, require=("config", "model"))["config"] == {"seed": 1}


def _assert_refused(path, name="checkpoint", detail=""):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, name=name)
    msg = str(info.value)
    assert msg.startswith(f"{name}={str(path)!r} "), msg  # which file
    assert "rl-train" in msg  # what to do
    assert detail in msg
    assert "\n" not in msg
    return msg


def test_truncated_checkpoint_names_the_file(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", _state())
    data = good.read_bytes()
    for cut in (len(data) // 2, 100, 1):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        msg = _assert_refused(path, "resume", "is not a readable entropy-rl checkpoint")
        assert "truncated, corrupt or another format" in msg
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _assert_refused(empty, detail="the file is empty")


def test_corrupt_checkpoint_names_the_file(tmp_path):
    data = bytearray(save_checkpoint(tmp_path / "good.pt", _state()).read_bytes())
    data[-64:] = bytes(64)  # the zip archive's directory, where torch.load starts reading
    path = tmp_path / "corrupt.pt"
    path.write_bytes(bytes(data))
    _assert_refused(path, detail="a damaged or cut-off torch archive")


@pytest.mark.parametrize("kind", ["pickle", "text", "json", "numpy"])
def test_other_formats_are_refused(tmp_path, kind):
    path = tmp_path / f"x.{kind}"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"model": [1, 2]}))
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "json":
        path.write_text(json.dumps({"format": 1}))
    else:
        import numpy as np

        np.save(path, np.arange(3))
        path = path.with_suffix(".numpy.npy")
    msg = _assert_refused(path, detail="another format")
    assert "Weights only load failed" not in msg  # torch's own text stays in the cause


def test_missing_file_and_missing_keys(tmp_path):
    _assert_refused(tmp_path / "nope.pt", "resume", "is not a file")
    path = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"lacks \['format'\]"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"lacks \['config', 'model'\]"):
        load_checkpoint(path, require=("config", "model"))
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(path)
    torch.save({"format": FORMAT_VERSION + 1, "model": {}}, path)
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1}"):
        load_checkpoint(path)


def test_hand_saved_checkpoint_without_format_is_read_for_evaluation(tmp_path):
    path = tmp_path / "hand.pt"
    torch.save({"config": {"a": 1}, "model": {}}, path)
    assert load_checkpoint(path, require=("config", "model"))["config"] == {"a": 1}


def test_no_script_or_module_loads_a_checkpoint_by_hand():
    """One reader: torch.load appears in rl/checkpoint.py only (rl/ and scripts/)."""
    offenders = []
    for folder in ("rl", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "checkpoint.py" and path.parent.name == "rl":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if "torch.load(" in code and "``" not in code:
                    offenders.append(f"{path.relative_to(ROOT)}:{i}")
    assert not offenders, f"use rl.checkpoint.load_checkpoint instead of torch.load: {offenders}"


# ----------------------------------------------------------------------------- optimizers
def _train(make, steps=25, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).requires_grad_()
    opt = make([flat])
    x, y = torch.randn(64, 5), torch.randint(3, (64,))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        offset, params = 0, []
        for p in net.parameters():
            params.append(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        h = torch.tanh(x @ params[0].T + params[1])
        loss = torch.nn.functional.cross_entropy(h @ params[2].T + params[3], y)
        loss.backward()
        opt.step()
    return flat.detach().clone(), opt


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_optimizers_match_torch_bit_for_bit(name):
    """rl.optim's eager Adam/RMSprop: the same parameters after N steps, the same state_dict."""
    kw = dict(lr=3e-3, adam_eps=1e-5, rmsprop_alpha=0.99, rmsprop_eps=1e-5)
    ours, ours_opt = _train(lambda p: optim.make_optimizer(name, p, **kw))
    if name == "adam":
        ref, ref_opt = _train(lambda p: torch.optim.Adam(p, lr=3e-3, eps=1e-5, fused=True))
    else:
        ref, ref_opt = _train(lambda p: torch.optim.RMSprop(p, lr=3e-3, alpha=0.99, eps=1e-5, foreach=True))
    assert torch.equal(ours, ref)
    a, b = ours_opt.state_dict(), ref_opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for key, value in b["state"][0].items():
        assert torch.equal(a["state"][0][key], value), key


def test_optimizer_state_moves_between_torch_and_ours():
    """A checkpoint written with torch.optim.Adam resumes into rl.optim.Adam and continues identically."""
    _, ref_opt = _train(lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), steps=5)
    flat = torch.zeros(10, requires_grad=True)
    theirs = torch.optim.Adam([flat], lr=1e-3, fused=True)
    theirs_flat = flat.detach().clone().requires_grad_()
    ours = optim.Adam([theirs_flat], lr=1e-3, fused=True)
    def state():  # fresh tensors for each: load_state_dict keeps them and step() updates them in place
        return {"state": {0: {"step": torch.tensor(4.0), "exp_avg": torch.full((10,), 0.1),
                              "exp_avg_sq": torch.full((10,), 0.01)}},
                "param_groups": ref_opt.state_dict()["param_groups"]}

    theirs.load_state_dict(state())
    ours.load_state_dict(state())
    for p, opt in ((flat, theirs), (theirs_flat, ours)):
        p.grad = torch.linspace(-1, 1, 10)
        opt.step()
    assert torch.equal(flat, theirs_flat)


def test_the_optimizer_never_imports_dynamo():
    code = (
        "import sys, torch\n"
        "from rl.optim import make_optimizer\n"
        "p = torch.zeros(4, requires_grad=True)\n"
        "for name in ('adam', 'rmsprop'):\n"
        "    o = make_optimizer(name, [p], lr=1e-3, adam_eps=1e-8, rmsprop_alpha=0.99, rmsprop_eps=1e-8)\n"
        "    o.zero_grad(); p.grad = torch.ones(4); o.step(); o.load_state_dict(o.state_dict())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="algo.optimizer='sgd' is not allowed; allowed: adam | rmsprop"):
        optim.make_optimizer("sgd", [torch.zeros(1, requires_grad=True)], lr=1e-3, adam_eps=1e-8,
                             rmsprop_alpha=0.99, rmsprop_eps=1e-8)
