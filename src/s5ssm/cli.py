"""The `s5ssm` command: train, eval, predict, export, tasks, bench.

    s5ssm train [--task NAME | --data FILE [--test-data FILE]] [--config FILE] [options]
    s5ssm train --resume RUN_DIR
    s5ssm eval RUN_DIR [--split test|val|train]
    s5ssm predict RUN_DIR --data FILE [--out FILE]
    s5ssm export RUN_DIR_OR_MODEL_DIR --format onnx|pt2 --what step|sequence --out FILE [--quantize int8]
    s5ssm tasks
    s5ssm bench [--quick] ...

Options resolve in this order, later winning: built-in defaults, the task's defaults,
the --config file (YAML or TOML, keys equal to the option names), the command line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import yaml

from . import settings
from .memory import keep_freed_memory
from .precision import check_precision
from .rundir import Interrupted

from .options import ALL_DEFAULTS, DEFAULT_TASK, MODEL_DEFAULTS, TRAIN_DEFAULTS, TRAIN_HELP


def _image_shape(text: str) -> list[int]:
    """--image_shape HEIGHTxWIDTH -> [height, width] (a list keeps config.yaml plain YAML)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 24x24, got {text!r}")
    return [int(p) for p in parts]


OPTION_TYPES = {"image_shape": _image_shape}  # options whose default (None) does not give the type


def _type_of(default):
    if isinstance(default, bool):
        return None
    return type(default) if default is not None else str


def _add_options(parser: argparse.ArgumentParser) -> None:
    """One flag per option, named as the option; defaults are resolved later (None = unset)."""
    for group_name, names in (("training", TRAIN_DEFAULTS), ("model (S5Model options)", MODEL_DEFAULTS)):
        group = parser.add_argument_group(group_name)
        for name in names:
            default = ALL_DEFAULTS[name]
            help_text = TRAIN_HELP.get(name, "") + f" (default: {default})"
            flag = "--" + name
            aliases = [flag] + (["--" + name.replace("_", "-")] if "_" in name else [])
            if isinstance(default, bool):
                group.add_argument(*aliases, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            else:
                kind = OPTION_TYPES.get(name, _type_of(default))
                group.add_argument(*aliases, dest=name, type=kind, default=None, help=help_text)


def read_config_file(path: str) -> dict:
    """Options from a YAML or TOML file; unknown keys are an error naming the key."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"error: --config {path}: no such file")
    text = file.read_text()
    try:
        if file.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            values = tomllib.loads(text)
        else:
            values = yaml.safe_load(text) or {}
    except Exception as exc:  # noqa: BLE001 - a parse error of either format
        raise SystemExit(f"error: --config {path}: cannot parse: {exc}") from None
    if not isinstance(values, dict):
        raise SystemExit(f"error: --config {path}: expected a mapping of option names to values")
    allowed = set(ALL_DEFAULTS) | {"task_options"}
    for key in values:
        if key not in allowed:
            raise SystemExit(f"error: --config {path}: unknown option {key!r}")
    _validate(values, lambda key: f"--config {path}: {key}")
    return values


def _validate(values: dict, name) -> None:
    """settings.validate, its refusal as the command's error (naming the flag or the file's key)."""
    try:
        settings.validate(values, ALL_DEFAULTS, name)
    except settings.SettingError as exc:
        raise SystemExit(f"error: {exc}") from None


def _options_set(args: argparse.Namespace) -> tuple[dict, dict]:
    """(the --config file's options, the command line's): what the user set."""
    from_file = read_config_file(args.config) if args.config else {}
    return from_file, {k: v for k, v in vars(args).items() if k in ALL_DEFAULTS and v is not None}


def given_options(args: argparse.Namespace) -> dict:
    """The options the user set: the --config file's, then the command line's."""
    from_file, given = _options_set(args)
    return {**from_file, **given}


def resolve_config(args: argparse.Namespace) -> dict:
    """Every option's value: built-in defaults < the task's < --config < the command line.
    (For --data files, `fitted_defaults.apply` then fills what the user left unset.)"""
    from .data import get_task

    from_file, given = _options_set(args)
    source = {**from_file, **given}
    _validate(given, lambda key: f"--{key}")  # before the task reads its options
    if source.get("task") and source.get("data"):
        raise SystemExit("error: give --task or --data, not both")
    if not source.get("task") and not source.get("data"):
        source["task"] = DEFAULT_TASK
    cfg = dict(ALL_DEFAULTS)
    if source.get("task"):
        try:
            task = get_task(source["task"], **(source.get("task_options") or {}))
        except (KeyError, ValueError) as exc:
            raise SystemExit(f"error: --task {source['task']}: {exc}") from None
        cfg["standardize"] = False
        cfg.update(task.model_defaults)
        cfg.update(task.train_defaults)
    cfg.update(source)
    _validate(cfg, lambda key: f"--config {args.config}: {key}" if key in from_file and key not in given else f"--{key}")
    try:
        check_precision(cfg["precision"], cfg["device"])
    except ValueError as exc:
        raise SystemExit(f"error: --{exc}") from None
    return cfg


def _default_run_dir(cfg: dict) -> Path:
    import time

    name = cfg.get("task") or Path(cfg["data"]).stem
    return Path("runs") / f"{name}-{cfg['model']}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args: argparse.Namespace) -> int:
    from . import fitted_defaults
    from .training.data import load_data
    from .training.loop import train

    if args.resume:
        run_dir = Path(args.resume)
        if args.run_dir and Path(args.run_dir) != run_dir:
            raise ValueError(f"--resume {run_dir} continues that directory; --run_dir {args.run_dir} names another")
        cfg = settings.resume_config(settings.read_run_config(run_dir, ALL_DEFAULTS), given_options(args), run_dir)
        summary = train(cfg, run_dir, resume=True)
    else:
        cfg = resolve_config(args)
        data = None
        if cfg.get("data"):
            data = load_data(cfg)
            cfg = fitted_defaults.apply(cfg, given_options(args), data)
        if not args.run_dir and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SystemExit("error: under torchrun give --run_dir (every process must name the same directory)")
        run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(cfg)
        summary = train(cfg, run_dir, data=data)
    if summary:  # empty on the processes of a torchrun job other than the main one
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    metric = summary["metric"]
    print(f"\nsummary ({summary['model']} on {summary['task']}, {summary['param_count']:,} parameters, "
          f"{summary['wall_seconds']:.0f} s, best epoch {summary['best_epoch']})")  # fmt: skip
    for split in ("train", "val", "test"):
        r = summary["results"][split]
        print(f"  {split} {metric}: {r[metric]:.4f}   (loss {r['loss']:.4f})")
    print(f"  run directory: {summary['run_dir']}")


def cmd_eval(args: argparse.Namespace) -> int:
    from .training.build import load_run
    from .training.evaluation import evaluate

    cfg, model, data = load_run(args.run_dir, defaults=ALL_DEFAULTS)
    result = evaluate(model, data.splits[args.split], data.info, int(cfg["batch_size"]), "cpu")
    print(json.dumps({"split": args.split, **result}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .data import labels, load_file
    from .training.build import load_run

    out_path = Path(args.out or "predictions.csv")
    if out_path.is_dir():
        raise ValueError(f"--out {out_path}: is a directory; give a file name, e.g. {out_path / 'predictions.csv'}")
    cfg, model, data = load_run(args.run_dir, defaults=ALL_DEFAULTS)
    dataset, _ = load_file(args.data, require_targets=False)  # .npz inputs may come without y
    labels.conform_inputs(dataset, data.info, f"--data {args.data}")
    header, rows = _prediction_rows(model, dataset, data.info)
    with out_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    print(f"wrote {len(rows)} predictions to {out_path}")
    return 0


def _prediction_rows(model, dataset, info: dict) -> tuple[list[str], list[list]]:
    """The CSV header and one row per sequence of `dataset`.

    Classification: index, the predicted class's name (as the training data writes it),
    then p_<name> for every class. Regression: index, an empty prediction, then y0, y1, ...
    (the outputs of the valid steps, flattened, for per-step targets).
    """
    import torch

    from .data import collate, labels

    classification = info["kind"] == "classification"
    names = labels.class_names(info) if classification else []
    rows = []
    with torch.no_grad():
        for start in range(0, len(dataset), 64):
            batch = collate([dataset[i] for i in range(start, min(len(dataset), start + 64))])
            kwargs = {"mask": batch["mask"]}
            if "step_scale" in batch:
                kwargs["step_scale"] = batch["step_scale"]
            for offset, values in enumerate(model(batch["x"], **kwargs)):
                if classification:
                    probs = torch.softmax(values, -1)
                    rows.append([start + offset, names[int(probs.argmax())]] + [f"{p:.6g}" for p in probs.tolist()])
                else:
                    flat = values[batch["mask"][offset]] if values.dim() == 2 else values
                    rows.append([start + offset, ""] + [f"{v:.6g}" for v in flat.flatten().tolist()])
    width = max(len(r) for r in rows) - 2
    columns = [f"p_{name}" for name in names] if classification else [f"y{i}" for i in range(width)]
    return ["index", "prediction"] + columns, rows


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out}: is a directory; give a file name, e.g. {out / ('model.' + args.format)}")
    if args.quantize and args.format != "onnx":
        raise ValueError(f"--quantize {args.quantize}: only ONNX graphs are quantised; use --format onnx")
    if not Path(args.source).is_dir():
        raise FileNotFoundError(f"{args.source}: no such run or model directory")
    try:
        path = export(args.source, format=args.format, what=args.what, out=out, quantize=args.quantize)
    except ImportError as exc:  # the deploy extra is missing
        raise ValueError(f"--format {args.format}: {exc}") from None
    print(f"wrote the {args.what} graph to {path}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from .data import list_tasks

    for name, description in list_tasks():
        print(f"{name:<12} {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s5ssm", description="S5 state space models: train, evaluate, benchmark.")
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train and evaluate a model (default: the digits task)")
    train.add_argument("--config", help="YAML or TOML file whose keys are option names")
    train.add_argument("--run_dir", "--run-dir", dest="run_dir", help="where to write the run (default: runs/...)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    _add_options(train)
    train.set_defaults(run=cmd_train)
    ev = sub.add_parser("eval", help="evaluate a run's best checkpoint on a split")
    ev.add_argument("run_dir")
    ev.add_argument("--split", choices=("train", "val", "test"), default="test")
    ev.set_defaults(run=cmd_eval)
    pr = sub.add_parser("predict", help="write a run's predictions for a data file as CSV")
    pr.add_argument("run_dir")
    pr.add_argument("--data", required=True, help="a .ts or .npz file (an .npz may omit y)")
    pr.add_argument("--out", help="output CSV (default: predictions.csv)")
    pr.set_defaults(run=cmd_predict)
    ex = sub.add_parser("export", help="write a model's step or sequence graph for ONNX Runtime or torch.export")
    ex.add_argument("source", metavar="RUN_DIR_OR_MODEL_DIR", help="a run directory (its best checkpoint) or a "
                    "save_pretrained directory")  # fmt: skip
    ex.add_argument("--format", choices=("onnx", "pt2"), default="onnx", help="onnx, or pt2 (torch.export)")
    ex.add_argument("--what", choices=("step", "sequence"), default="step",
                    help="step: one frame, states in and out; sequence: whole sequences with a mask")  # fmt: skip
    ex.add_argument("--out", required=True, help="the file to write")
    ex.add_argument("--quantize", choices=("int8",), default=None, help="dynamic int8 weights (ONNX only)")
    ex.set_defaults(run=cmd_export)
    sub.add_parser("tasks", help="list the built-in tasks").set_defaults(run=cmd_tasks)
    bench = sub.add_parser("bench", help="speed and memory benchmarks (see `s5ssm bench --help`)", add_help=False)
    bench.set_defaults(run=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()
    if argv[:1] == ["bench"]:
        from . import bench

        return bench.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv or ["train"])
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as exc:  # Ctrl-C; training saved a checkpoint first
        print(f"{exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
