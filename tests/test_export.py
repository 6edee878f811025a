"""s5ssm.export: the step and sequence graphs run in onnxruntime and as torch.export programs,
compared with the eager model (the torch-ops step, `forward` with masks).

Tolerance: float32, |exported - eager| <= 1e-4 + 1e-4·|eager| over 200 frames of the step
(the states included) and over whole sequences; the two differ only in the order of
float32 operations.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import s5ssm
from s5ssm.cli import main
from s5ssm.data.scaling import Standardize
from s5ssm.export import read_metadata, zero_states

ort = pytest.importorskip("onnxruntime")

ATOL = RTOL = 1e-4
FRAMES = 200
ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=8, state_size=8, num_layers=2)


def tiny_model(seed: int = 0, **options) -> s5ssm.S5Model:
    """A tiny S5Model in eval mode with trained-looking statistics: BatchNorm running
    statistics and the input/output standardisation set away from the identity."""
    torch.manual_seed(seed)
    model = s5ssm.S5Model(**{**TINY, **options})
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            if isinstance(module, Standardize):
                module.mean.uniform_(-2.0, 2.0)
                module.std.uniform_(0.5, 3.0)
    return model.eval()


def inputs(model: s5ssm.S5Model, *lead: int) -> torch.Tensor:
    if model.vocab_size is not None:
        return torch.randint(0, model.vocab_size, lead)
    return 3.0 * torch.randn(*lead, model.embed_dim) + 1.0  # raw units, away from the standardised ones


def close(actual, expected, what: str) -> None:
    np.testing.assert_allclose(np.asarray(actual), expected.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=what)


# ---------------------------------------------------------------------------- runners of exported files
def onnx_step(path: Path):
    """frame(x, feeds) -> (y, feeds of the next frame) of an exported step .onnx; the zero state from its metadata."""
    session = ort.InferenceSession(str(path))
    names = [o.name for o in session.get_outputs()]

    def frame(x, feeds):
        out = dict(zip(names, session.run(None, {"x": x.numpy(), **feeds})))
        return out.pop("y"), {name.replace("_out", "_in"): value for name, value in out.items()}

    return frame, lambda batch: zero_states(read_metadata(path), batch)


def pt2_step(path: Path):
    """The same for an exported step .pt2 (torch.export.load, no pickle)."""
    program = torch.export.load(path).module()
    meta = read_metadata(path)
    names = json.loads(meta["s5ssm.layout"])["inputs"][1:]

    def frame(x, feeds):
        out = program(x, *(torch.from_numpy(feeds[n]) for n in names))
        return out[0].numpy(), {n: t.numpy() for n, t in zip(names, out[1:])}

    return frame, lambda batch: zero_states(meta, batch)


def check_step(model: s5ssm.S5Model, frame, zeros, batch: int = 3) -> None:
    """FRAMES frames of the exported step against the torch-ops `S5Model.step`, outputs and states."""
    feeds, cache = zeros(batch), model.init_cache(batch)
    for t in range(FRAMES):
        x = inputs(model, batch)
        y, cache = model.step(x, cache)  # gradients on: the torch-ops step (the reference), not the compiled one
        out, feeds = frame(x, feeds)
        close(out, y, f"y at frame {t}")
    for i, state in enumerate(cache["states"]):
        close(feeds[f"state_in_{i}"], torch.view_as_real(state), f"state of layer {i} after {FRAMES} frames")


def check_sequence(model: s5ssm.S5Model, run, longest: int = 3000) -> None:
    """run(x, mask) -> y of an exported sequence graph against `forward`: full, right-padded
    (up to `longest` steps) and (unidirectional) gapped masks; batches and lengths other than
    those traced."""
    cases = [(torch.ones(1, 40, dtype=torch.bool))]
    lengths = torch.tensor([60, 23, 1])
    cases.append(torch.arange(60)[None] < lengths[:, None])  # variable lengths, right padding
    cases.append(torch.arange(longest)[None] < torch.tensor([[longest], [longest * 2 // 3]]))  # the scan stays exact
    if not model.bidirectional:
        cases.append(torch.rand(4, 33) > 0.3)  # gaps: masked steps are steps of length zero
    for mask in cases:
        x = inputs(model, *mask.shape)
        with torch.no_grad():
            expected = model(x, mask=mask)
        close(run(x, mask), expected, f"mask {list(mask.shape)}")


def onnx_sequence(path: Path):
    session = ort.InferenceSession(str(path))
    return lambda x, mask: session.run(None, {"x": x.numpy(), "mask": mask.numpy()})[0]


def pt2_sequence(path: Path):
    program = torch.export.load(path).module()
    return lambda x, mask: program(x, mask).numpy()


# ---------------------------------------------------------------------------- the graphs against the eager model
# The models mix options so that every layer option, norm, activation and encoder is covered
# (a sequence export costs seconds: each is checked once).
ZOH_LAYER = dict(embed_dim=3, output_dim=2, norm="layer", blocks=2, clip_eigs=True, pooling="mean",
                 standardize_inputs=True, standardize_outputs=True)
BILINEAR_BATCH_CONV = dict(embed_dim=36, encoder="conv", output_dim=3, norm="batch", discretization="bilinear",
                           conj_sym=False, activation="full_glu", prenorm=False, pooling="none", step_rescale=2.0)
RMS = dict(embed_dim=2, norm="rms", activation="half_glu2", output_dim=2, pooling="last")
TOKENS = dict(vocab_size=11, norm="rms", activation="gelu", pooling="last", output_dim=5)


@pytest.mark.parametrize("options", [ZOH_LAYER, BILINEAR_BATCH_CONV], ids=[
    "zoh-layer-blocks-clip-mean-scaled", "bilinear-batch-conv-full_glu-postnorm-none"])
def test_onnx_step_and_sequence_equal_the_eager_model(tmp_path, options):
    model = tiny_model(**options)
    step = s5ssm.export(model, format="onnx", what="step", out=tmp_path / "step.onnx")
    check_step(model, *onnx_step(step))
    sequence = s5ssm.export(model, format="onnx", what="sequence", out=tmp_path / "sequence.onnx")
    check_sequence(model, onnx_sequence(sequence))


def no_pickle_in(path: Path) -> None:
    """A .pt2 archive with nothing torch.export.load would unpickle: the example inputs (a
    torch.save file, models/*.pt) empty, and no weight or constant stored as a pickle."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(".pt"):
                assert archive.read(name) == b"", f"{name} holds a pickle"
            if name.endswith("_config.json"):
                assert '"use_pickle": true' not in archive.read(name).decode(), f"{name} lists a pickle"


def test_torch_export_programs_equal_the_eager_model(tmp_path):
    model = tiny_model(**TOKENS)
    check_step(model, *pt2_step(s5ssm.export(model, format="pt2", what="step", out=tmp_path / "step.pt2")))
    no_pickle_in(tmp_path / "step.pt2")
    program = pt2_sequence(s5ssm.export(model, format="pt2", what="sequence", out=tmp_path / "seq.pt2"))
    check_sequence(model, program, longest=300)  # torch runs the scan step by step in Python


@pytest.mark.parametrize("encoder", ["window", "fcn"])
def test_bidirectional_and_window_models_export_as_sequence_models_only(tmp_path, encoder):
    model = tiny_model(**RMS, bidirectional=True, C_init="complex_normal", encoder=encoder, encoder_width=3)
    check_sequence(model, onnx_sequence(s5ssm.export(model, what="sequence", out=tmp_path / "bi.onnx")))
    with pytest.raises(ValueError, match="what='step': a bidirectional model"):
        s5ssm.export(model, what="step", out=tmp_path / "never.onnx")
    with pytest.raises(ValueError, match="what='step': encoder='window' reads 1 steps ahead"):
        s5ssm.export(tiny_model(embed_dim=3, encoder="window", encoder_width=3), what="step", out=tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()


def check_metadata(path: Path, model: s5ssm.S5Model) -> None:
    """The step file documents its inputs, outputs, state layout and zero state."""
    meta = read_metadata(path)
    layout = json.loads(meta["s5ssm.layout"])
    assert layout["inputs"] == ["x", "state_in_0", "state_in_1", "pool_sum_in", "pool_count_in"]
    assert layout["outputs"] == ["y", "state_out_0", "state_out_1", "pool_sum_out", "pool_count_out"]
    assert layout["states"]["shapes"]["state_in_0"] == [-1, model.layers[0].ssm.num_states, 2]
    assert meta["s5ssm.zero_state"].startswith("zeros") and meta["s5ssm.what"] == "step"
    assert json.loads(meta["s5ssm.config"])["hidden_size"] == TINY["hidden_size"]
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == layout["inputs"]
    assert session.get_inputs()[1].shape[1:] == [model.layers[0].ssm.num_states, 2]


def test_int8_quantisation_stays_close_to_float32(tmp_path):
    model = tiny_model(embed_dim=3, output_dim=2, norm="layer")
    path = s5ssm.export(model, what="step", out=tmp_path / "q.onnx", quantize="int8")
    assert read_metadata(path)["s5ssm.quantize"] == "int8"
    graph = __import__("onnx").load(path).graph
    quantized = ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul")
    assert any(node.op_type in quantized for node in graph.node)
    frame, zeros = onnx_step(path)
    feeds, cache = zeros(2), model.init_cache(2)
    for _ in range(20):
        x = inputs(model, 2)
        y, cache = model.step(x, cache)
        got, feeds = frame(x, feeds)
        assert np.abs(got - y.detach().numpy()).max() < 0.05 * y.abs().max().item() + 0.05


# ---------------------------------------------------------------------------- refusals
def test_what_cannot_be_exported_is_refused_naming_it(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="dtype: export writes float32"):
        s5ssm.export(tiny_model(embed_dim=3).double(), out=out)
    from s5ssm.baselines import RNNModel

    with pytest.raises(ValueError, match="model: only S5Model exports, got RNNModel"):
        s5ssm.export(RNNModel("lstm", embed_dim=3, hidden_size=8, num_layers=1), out=out)
    with pytest.raises(ValueError, match="quantize='int8': only ONNX"):
        s5ssm.export(tiny_model(embed_dim=3), format="pt2", quantize="int8", out=out)
    with pytest.raises(ValueError, match="format must be one of"):
        s5ssm.export(tiny_model(embed_dim=3), format="tflite", out=out)
    with pytest.raises(ValueError, match="what must be one of"):
        s5ssm.export(tiny_model(embed_dim=3), what="window", out=out)
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        s5ssm.export(tmp_path, out=out)
    assert not out.exists()


def test_a_run_with_timestamps_is_refused(tmp_path, monkeypatch):
    """Irregular sampling feeds step_scale per step, an input the graphs do not take."""
    import s5ssm.training.build
    from s5ssm.training.data import Data

    (tmp_path / "config.yaml").write_text("task: pendulum\n")
    loaded = ({}, tiny_model(embed_dim=3), Data(splits={}, info={"timestamps": True}))
    monkeypatch.setattr(s5ssm.training.build, "load_run", lambda *args, **kwargs: loaded)
    with pytest.raises(ValueError, match="irregular timestamps"):
        s5ssm.export(tmp_path, out=tmp_path / "m.onnx")


def test_missing_deploy_packages_are_named(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ImportError, match=r"format='onnx' needs onnxscript: pip install 's5ssm\[deploy\]'"):
        s5ssm.export(tiny_model(embed_dim=3), out=tmp_path / "m.onnx")
    tiny_model(embed_dim=3).save_pretrained(tmp_path / "model")
    assert main(["export", str(tmp_path / "model"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--format onnx: format='onnx' needs onnxscript" in capsys.readouterr().err


def test_the_callers_model_is_left_as_it_was(tmp_path):
    model = tiny_model(embed_dim=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s5ssm.export(model, what="step", format="pt2", out=tmp_path / "s.pt2")
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------- CLI and the example
@pytest.fixture(scope="module")
def saved_step(tmp_path_factory):
    """(model, its save_pretrained directory, the step .onnx `s5ssm export` wrote from it)."""
    root = tmp_path_factory.mktemp("saved")
    model = tiny_model(embed_dim=3, output_dim=2, norm="layer", pooling="mean")
    model.save_pretrained(root / "model")
    out = root / "step.onnx"
    assert main(["export", str(root / "model"), "--format", "onnx", "--what", "step", "--out", str(out)]) == 0
    return model, root / "model", out


def test_cli_exports_a_saved_model(saved_step):
    model, _, out = saved_step
    check_step(model, *onnx_step(out))
    check_metadata(out, model)


def test_cli_names_bad_arguments(tmp_path, capsys, saved_step):
    _, source, _ = saved_step
    out = tmp_path / "step.onnx"
    assert main(["export", str(source), "--format", "pt2", "--quantize", "int8", "--out", str(out)]) == 2
    assert "--quantize int8" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing: no such run or model directory" in capsys.readouterr().err
    assert main(["export", str(source), "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["export", str(source), "--what", "window", "--out", str(out)])
    assert exc.value.code == 2 and "--what" in capsys.readouterr().err


def test_cli_exports_a_run_directory(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--task", "digits", "--size", "tiny", "--epochs", "1", "--hidden_size", "8", "--state_size",
                 "8", "--num_layers", "1", "--norm", "layer", "--quiet", "--run_dir", str(run)]) == 0  # fmt: skip
    out = tmp_path / "step.onnx"
    assert main(["export", str(run), "--what", "step", "--out", str(out)]) == 0
    from s5ssm.options import ALL_DEFAULTS
    from s5ssm.training.build import load_run

    _, model, _ = load_run(run, defaults=ALL_DEFAULTS)  # the best checkpoint, as `s5ssm eval` reads it
    check_step(model, *onnx_step(out))


def test_example_runs_the_step_without_torch(saved_step):
    path = saved_step[2]
    example = ROOT / "examples" / "deploy_onnx.py"
    # the example's imports alone: importing torch fails the assertion
    code = f"import sys, runpy; sys.argv = ['deploy_onnx.py', {str(path)!r}, '--frames', '5', '--no-sleep']; " \
           f"runpy.run_path({str(example)!r}, run_name='__main__'); assert 'torch' not in sys.modules, 'imported torch'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ms per frame" in done.stdout
