"""The ``medseg`` command: a thin layer over importable functions.

Every subcommand parses its arguments, calls one package function and prints the
result; heavy modules are imported only by the subcommand that needs them, so
``medseg --help`` is instant.

Longer than the ~400 lines we aim for, on purpose: the parser and its handlers are one
command tree, read together; each handler is a few lines around one package call, so
splitting them by sub-command group would spread one table over several files.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from medseg_helpers.course.profiles import PROFILES, get_profile_name


def _profile(name: str) -> str:
    """argparse type for ``--profile``: a known name, or the error naming the right one."""
    try:
        return get_profile_name(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """argparse type: a finite ``kind`` number > 0, else a usage error (exit 2) saying so."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun} > 0; got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be {noun} > 0; got {text!r}")
        return value

    return parse


def _port(text: str) -> int:
    """argparse type: a TCP port, 1..65535."""
    port = _positive(int)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1..65535; got {text!r}")
    return port


def _data_synth(args: argparse.Namespace) -> int:
    from medseg_helpers.course.data import ensure_synthetic_dataset

    start = time.perf_counter()
    folder = ensure_synthetic_dataset(
        profile=args.profile,
        flavour=args.flavour,
        data_dir=args.data_dir,
        num_cases=args.num_cases,
        shape=tuple(args.shape) if args.shape else None,
        seed=args.seed,
        out_dir=args.out,
    )
    seconds = time.perf_counter() - start
    print(f"synthetic {args.flavour} dataset ready in {seconds:.1f} s: {folder}")
    return 0


def _data_download(args: argparse.Namespace) -> int:
    from data_download import download_task

    folder = download_task(args.task, data_dir=args.data_dir, url=args.url)
    print(f"{args.task} ready: {folder}")
    return 0


def _data_convert(args: argparse.Namespace) -> int:
    from medseg_helpers.data.io import convert_to_nifti

    written = convert_to_nifti(args.source, args.destination, is_label=args.label,
                               series_uid=args.series_uid)
    print(f"wrote {written}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from medseg_helpers.course.model import load_trained_model
    from medseg_helpers.deploy.trained_export import export_trained_model

    trained = load_trained_model(args.run_dir, which=args.which, device="cpu")
    if args.format == "best":
        return _export_best(trained, args.out)
    report = export_trained_model(trained, args.format, args.out)
    print(f"exported {args.format} to {report['path']} ({report['size_mb']:.2f} MB) in "
          f"{report['seconds']:.1f} s")
    print(f"parity vs eager on {report['num_inputs']} test batches: max abs diff "
          f"{report['max_abs_diff']:.2e}, argmax agreement {report['argmax_agreement']:.4f}")
    if not report["passed"]:
        print("medseg: parity check FAILED", file=sys.stderr)
        return 1
    return 0


def _export_best(trained, out: str) -> int:
    from medseg_helpers.deploy.deployment import choose_deployment, descriptor_path

    descriptor, table = choose_deployment(trained, out)
    columns = ["latency_ms", "speedup", "dice", "dice_drop", "agreement", "max_abs_diff"]
    print(f"measured on {len(trained.split.val)} validation patients "
          f"({descriptor['measured_on']['threads']} threads):")
    print(table[columns].to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"chose {descriptor['variant']}, {descriptor['speedup_vs_eager']:.2f}x eager: wrote "
          f"{out} and {descriptor_path(out).name}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    _check_onnx_model(Path(args.model))
    if args.patch_size is not None and len(args.patch_size) not in (2, 3):
        raise ValueError(f"--patch-size takes 2 numbers (2D model) or 3 (3D model); got "
                         f"{len(args.patch_size)}")
    from medseg_helpers.deploy.serve import run_server

    run_server(
        args.model,
        host=args.host,
        port=args.port,
        num_classes=args.num_classes,
        max_upload_bytes=int(args.max_upload_mib * 2**20),
        max_concurrency=args.max_concurrency,
        max_voxels=args.max_voxels,
        patch_size=None if args.patch_size is None else tuple(args.patch_size),
        num_threads=args.num_threads,
        queue_timeout_s=args.queue_timeout_s,
    )
    return 0


#: First bytes of files people pass instead of an ONNX model -> what they are.
_NOT_ONNX_MAGIC = {b"PK\x03\x04": "a zip archive (a PyTorch checkpoint from torch.save?)",
                   b"\x80": "a Python pickle (a PyTorch checkpoint?)"}


def _check_onnx_model(path: Path) -> None:
    """Refuse, before the server starts, a model path that is missing, not a regular file,
    a PyTorch file (by suffix), or a file that does not start like an ONNX protobuf (field
    1, ``ir_version``: byte ``0x08``).

    Raises:
        FileNotFoundError, ValueError: one line naming ``path`` and the problem.
    """
    export_hint = "export it with `medseg export RUN_DIR --format onnx --out MODEL.onnx` first"
    if not path.exists():
        raise FileNotFoundError(f"no such model file: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file; expected an exported .onnx model")
    if path.suffix.lower() in (".pt", ".pth", ".pt2", ".ckpt"):
        raise ValueError(f"{path}: a PyTorch file; the server runs ONNX models: {export_hint}")
    with path.open("rb") as file:
        start = file.read(4)
    if not start.startswith(b"\x08"):
        looks_like = next((what for magic, what in _NOT_ONNX_MAGIC.items()
                           if start.startswith(magic)), "not an ONNX protobuf")
        raise ValueError(f"{path}: not an ONNX model (this is {looks_like}): {export_hint}")


def _evaluate(args: argparse.Namespace) -> int:
    from medseg_helpers.metrics.evaluation import (
        evaluate_folders,
        format_summary,
        save_metrics_csv,
        summarise_metrics,
    )

    table = evaluate_folders(args.pred, args.truth, class_names=args.labels,
                             spacing_from=args.spacing_from, allow_missing=args.allow_missing,
                             tolerance_mm=args.tolerance_mm,
                             include_background=args.include_background)
    path = save_metrics_csv(table, args.out)
    summary = summarise_metrics(table, ["dice", "hd95_mm", "asd_mm", "nsd", "volume_diff_ml"])
    print(format_summary(summary).to_string())
    print(f"{table['case'].nunique()} cases, mean ± std (median); per-case table: {path}")
    return 0


def _course_run(args: argparse.Namespace) -> int:
    from medseg_helpers.course.profiles import get_profile_name
    from medseg_helpers.course.report import format_summary_table
    from medseg_helpers.course.runner import run_course

    def progress(result) -> None:
        detail = f" ({result.error})" if result.error else ""
        print(f"  {result.notebook}: {result.status} in {result.seconds:.1f} s{detail}", flush=True)

    print(f"running the course, profile {get_profile_name(args.profile)}", flush=True)
    results = run_course(
        profile=args.profile,
        out_dir=args.out,
        notebooks=args.only,
        timeout_s=args.timeout,
        data_dir=args.data_dir,
        notebook_dir=getattr(args, "notebook_dir", None),
        on_result=progress,
    )
    print()
    print(format_summary_table(results))
    out = Path(args.out) if args.out else None
    report = (out or _default_course_dir(args.profile)) / "report.md"
    print(f"\nreport: {report.resolve()} (and {report.with_suffix('.html').name})")
    failed = [r.notebook for r in results if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _default_course_dir(profile: str | None) -> Path:
    from medseg_helpers.course.profiles import get_profile_name
    from medseg_helpers.paths import get_run_dir

    return get_run_dir() / f"course-{get_profile_name(profile)}"


def _course_book(args: argparse.Namespace) -> int:
    from medseg_helpers.course.book import build_book, stale_notebooks
    from medseg_helpers.course.runner import list_notebooks
    from medseg_helpers.paths import get_run_dir, repo_root

    run_dir = Path(args.run_dir) if args.run_dir else _default_course_dir(args.profile)
    notebook_dir = list_notebooks(args.notebook_dir)[0].parent
    stale = stale_notebooks(run_dir, notebook_dir)
    if stale:
        print(f"{len(stale)} notebook(s) not executed in {run_dir} or older than their "
              f"source ({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}): running "
              "the course first", flush=True)
    # A notebook that failed or missed a threshold still gets its page (showing why).
    code = _course_run(argparse.Namespace(profile=args.profile, out=str(run_dir), only=None,
                                          timeout=None, data_dir=None,
                                          notebook_dir=notebook_dir)) if stale else 0
    index = build_book(run_dir, Path(args.out) if args.out else get_run_dir() / "book",
                       notebook_dir, readme=repo_root() / "README.md")
    print(f"book: {index.resolve()}")
    return code


def _course_check(args: argparse.Namespace) -> int:
    from medseg_helpers.course.hygiene import check_course
    from medseg_helpers.course.runner import list_notebooks

    notebooks = list_notebooks(args.notebook_dir)
    if not notebooks:
        print("no notebooks found", file=sys.stderr)
        return 1
    problems = [str(p) for p in check_course(notebooks)]
    for problem in problems:
        print(problem)
    print(f"{len(notebooks)} notebooks checked, {len(problems)} problems")
    return 1 if problems else 0


def _course_prose(args: argparse.Namespace) -> int:
    """Linked prose numbers against a run (or the reference run); ``--update-reference``
    makes the run the new reference."""
    from medseg_helpers.course import prose
    from medseg_helpers.course.runner import list_notebooks
    from medseg_helpers.device import cpu_description

    notebooks = list_notebooks(args.notebook_dir)
    if args.update_reference:
        if not args.run_dir:
            raise ValueError("--update-reference needs the RUN_DIR of a full course run")
        print(f"reference: {prose.write_reference(args.run_dir, cpu_description())}")
    metrics = (prose.run_metrics(args.run_dir) if args.run_dir
               else prose.reference_metrics())
    linked = sum(len(prose.linked_numbers(nb)) for nb in notebooks)
    problems = prose.prose_disagreements(notebooks, metrics)
    for problem in problems:
        print(problem)
    print(f"{linked} linked numbers in {len(notebooks)} notebooks, {len(problems)} disagree "
          f"with {'the run in ' + args.run_dir if args.run_dir else 'the reference run'}")
    return 1 if problems else 0


def _course_strip(args: argparse.Namespace) -> int:
    from medseg_helpers.course.hygiene import strip_notebook
    from medseg_helpers.course.runner import list_notebooks

    changed = [nb.name for nb in list_notebooks(args.notebook_dir) if strip_notebook(nb)]
    print(f"stripped {len(changed)} notebooks" + (f": {', '.join(changed)}" if changed else ""))
    return 0


def _course_bless(args: argparse.Namespace) -> int:
    """Run the notebooks (smoke) in ``<runs>/course-bless`` and copy the outputs of their
    checked cells into the sources. The run folder is kept, so a failure leaves its logs."""
    import shutil

    from medseg_helpers.course.hygiene import copy_checked_outputs
    from medseg_helpers.course.runner import list_notebooks, run_course

    out = _default_course_dir("smoke").with_name("course-bless")
    shutil.rmtree(out, ignore_errors=True)  # never bless from a stale executed copy
    results = run_course("smoke", out, notebooks=args.only, timeout_s=args.timeout,
                         notebook_dir=args.notebook_dir)
    failed = [r.notebook for r in results if r.status != "passed"]
    if failed:
        print(f"not refreshed, these notebooks failed: {', '.join(failed)}; "
              f"logs and executed copies in {out}", file=sys.stderr)
        return 1
    for source in list_notebooks(args.notebook_dir):
        executed = out / "notebooks" / source.name
        if executed.exists():
            print(f"{source.name}: {copy_checked_outputs(source, executed)} checked cells")
    return 0


def _parse_set(pairs: Sequence[str]) -> dict:
    """``["lr=3e-4", "patch_size=[32,64,64]"]`` -> ``{"lr": 0.0003, ...}`` (values as YAML)."""
    import yaml

    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {pair!r}")
        values[key.strip()] = yaml.safe_load(text) if text.strip() else None
    return values


def _train(args: argparse.Namespace) -> int:
    """Layers, later ones winning: the profile's course recipe, the YAML file, ``--set``."""
    import os

    import yaml

    from medseg_helpers.course.model import course_model_config

    values = {}
    if args.config:
        values = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{args.config}: expected a mapping of TrainConfig fields")
    values.update(_parse_set(args.set or []))
    profile = args.profile or values.get("profile")
    values.pop("profile", None)
    if args.resume:
        values["resume"] = True
    if args.run_dir:
        values["run_dir"] = args.run_dir
    config = course_model_config(profile, **values)
    from medseg_helpers.training.job import default_run_dir, train_from_config

    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 reports
    if main_process:
        print(f"training {config.model} ({config.spatial_dims}D), profile {config.profile}, "
              f"{config.max_epochs} epochs -> {default_run_dir(config)}", flush=True)
    metrics = train_from_config(config)
    if not main_process:
        return 0
    per_class = ", ".join(f"{name} {dice:.3f}" for name, dice
                          in metrics["best_dice_per_class"].items())
    print(f"run dir: {metrics['run_dir']}")
    print(f"best validation Dice: {metrics['best_val_dice']:.4f} at epoch "
          f"{metrics['best_epoch']} ({per_class}); {metrics['status']}, "
          f"{metrics['epochs_completed']} epochs in {metrics['seconds']:.0f} s")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from medseg_helpers.training.config import TrainConfig
    from medseg_helpers.tuning.search import run_study, study_dataframe
    from medseg_helpers.tuning.space import default_search_space

    overrides = {"max_epochs": args.epochs} if args.epochs else {}
    base = (TrainConfig.from_yaml(args.config).updated(**overrides) if args.config
            else TrainConfig.from_profile(args.profile, **overrides))
    space = default_search_space()
    unknown = sorted(set(args.params) - set(space))
    if unknown:
        raise ValueError(f"unknown search parameter(s) {unknown}; choose from {sorted(space)}")
    study = run_study(base, n_trials=args.trials, study_name=args.study_name,
                      storage=args.storage, sampler=args.sampler, pruner=args.pruner,
                      space={k: space[k] for k in args.params}, seed=args.seed,
                      worker=args.worker, run_dir=args.run_dir)
    print(study_dataframe(study).to_string(max_colwidth=40))
    if any(t.state.name == "COMPLETE" for t in study.trials):
        print(f"best: trial {study.best_trial.number}, validation Dice "
              f"{study.best_value:.4f}, {study.best_params}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``medseg`` (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="medseg", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the full traceback too (before the subcommand)")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make, download or convert data").add_subparsers(
        dest="data_command", required=True
    )
    synth = data.add_parser("synth", help="write the synthetic phantom dataset (Decathlon layout)")
    synth.add_argument("--flavour", choices=("mr", "ct"), default="mr")
    synth.add_argument("--profile", type=_profile, default=None,
                       help=f"sizes from a profile: {', '.join(PROFILES)}")
    synth.add_argument("--num-cases", type=int, default=None)
    synth.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--data-dir", default=None, help="default $MEDSEG_DATA_DIR or ./data")
    synth.add_argument("--out", default=None, help="exact output folder (overrides --data-dir)")
    synth.set_defaults(func=_data_synth)

    download = data.add_parser("download", help="download and verify a Decathlon task")
    download.add_argument("task", help="e.g. Task04_Hippocampus")
    download.add_argument("--data-dir", default=None)
    download.add_argument("--url", default=None, help="mirror URL for the archive")
    download.set_defaults(func=_data_download)

    convert = data.add_parser("convert", help="DICOM folder / NRRD / MHA to NIfTI")
    convert.add_argument("source")
    convert.add_argument("destination", help="output .nii.gz path")
    convert.add_argument("--label", action="store_true", help="write an integer label map")
    convert.add_argument("--series-uid", default=None,
                         help="SeriesInstanceUID to convert when the DICOM folder holds several "
                         "(the error lists them)")
    convert.set_defaults(func=_data_convert)

    train = commands.add_parser(
        "train", help="train a model from a profile and/or YAML config (see TrainConfig)"
    )
    train.add_argument("--profile", type=_profile, default=None,
                       help=f"{', '.join(PROFILES)}; default $MEDSEG_PROFILE, else full")
    train.add_argument("--config", default=None,
                       help="YAML of TrainConfig fields, over the profile's course recipe")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a field, value parsed as YAML (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    train.add_argument("--run-dir", default=None, help="default $MEDSEG_RUN_DIR/train-...")
    train.set_defaults(func=_train)

    export = commands.add_parser("export", help="export a trained run and check parity")
    export.add_argument("run_dir", help="run directory of a training (config.yaml, checkpoints/)")
    export.add_argument("--format", required=True,
                        choices=("onnx", "torchscript", "program", "int8", "best"),
                        help="best: measure ONNX Runtime and OpenVINO (if installed) in "
                        "fp32, bf16 and int8 on the validation patients and keep the fastest "
                        "within 0.01 Dice of eager (writes MODEL.deploy.json for serve)")
    export.add_argument("--out", required=True, help="output file (.onnx, .pt, .pt2)")
    export.add_argument("--which", choices=("best", "last"), default="best")
    export.set_defaults(func=_export)

    serve = commands.add_parser("serve", help="serve an ONNX model over HTTP (POST /v1/segment)")
    serve.add_argument("model", help="exported .onnx model")
    serve.add_argument("--num-classes", type=_positive(int), required=True,
                       help="including background")
    serve.add_argument("--host", default="127.0.0.1", help="0.0.0.0 only inside a container")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument("--max-upload-mib", type=_positive(float), default=64.0,
                       help="largest request body in MiB (413 beyond; default 64)")
    serve.add_argument("--max-concurrency", type=_positive(int), default=2,
                       help="inferences at once; the rest wait (default 2)")
    serve.add_argument("--max-voxels", type=_positive(int), default=256**3,
                       help="largest accepted volume in voxels, checked from its header before "
                       "decoding (422 beyond; default 256**3 = 16777216)")
    serve.add_argument("--patch-size", type=_positive(int), nargs="+", default=None,
                       metavar="N", help="training patch, 2 (2D model) or 3 (3D) numbers: "
                       "larger inputs use sliding windows (default: whole slices/volumes)")
    serve.add_argument("--num-threads", type=_positive(int), default=None,
                       help="ONNX Runtime threads per inference (default: its own choice)")
    serve.add_argument("--queue-timeout-s", type=_positive(float), default=30.0,
                       help="seconds a request waits for a free slot before 503 (default 30)")
    serve.set_defaults(func=_serve)

    tune = commands.add_parser(
        "tune", help="hyper-parameter search (Optuna); the same --storage and --study-name "
        "on several processes or machines join one study")
    tune.add_argument("--profile", type=_profile, default=None,
                      help=f"{', '.join(PROFILES)}; default $MEDSEG_PROFILE, else full")
    tune.add_argument("--config", default=None, help="base TrainConfig YAML (else the profile)")
    tune.add_argument("--epochs", type=int, default=None, help="epochs per trial")
    tune.add_argument("--trials", type=int, required=True, help="total trials of the study")
    tune.add_argument("--sampler", choices=("grid", "random", "tpe"), default="tpe")
    tune.add_argument("--pruner", choices=("median", "none"), default="median")
    tune.add_argument("--params", nargs="+", default=["lr", "weight_decay", "dropout"],
                      help="parameters to search (tuning.default_search_space)")
    tune.add_argument("--storage", default=None,
                      help="database URL, default sqlite:///RUN_DIR/study.db")
    tune.add_argument("--study-name", default="medseg")
    tune.add_argument("--run-dir", default=None,
                      help="trials go to RUN_DIR/NAME/trial-NNN; default $MEDSEG_RUN_DIR/tune")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--worker", type=int, default=None,
                      help="worker index for a reproducible sampler seed (default: unseeded)")
    tune.set_defaults(func=_tune)

    evaluate = commands.add_parser("evaluate", help="per-case metrics of predicted label maps")
    evaluate.add_argument("--pred", required=True, help="folder of predicted label maps")
    evaluate.add_argument("--truth", required=True, help="folder of ground-truth label maps")
    evaluate.add_argument("--out", default="metrics.csv", help="per-case CSV to write")
    evaluate.add_argument("--spacing-from", choices=("truth", "pred"), default="truth")
    evaluate.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice")
    evaluate.add_argument("--labels", nargs="+", default=None,
                          help="class names, background first (default: dataset.json)")
    evaluate.add_argument("--include-background", action="store_true")
    evaluate.add_argument("--allow-missing", action="store_true",
                          help="evaluate only the truths that have a prediction")
    evaluate.set_defaults(func=_evaluate)

    course = commands.add_parser("course", help="run or check the notebooks").add_subparsers(
        dest="course_command", required=True
    )
    run = course.add_parser("run", help="run the notebooks in order with papermill")
    run.add_argument("--profile", type=_profile, default=None,
                     help=f"{', '.join(PROFILES)}; default $MEDSEG_PROFILE, else full")
    run.add_argument("--out", default=None, help="run directory (default runs/course-PROFILE)")
    run.add_argument("--only", nargs="+", default=None, help="notebook prefixes, e.g. 00 05")
    run.add_argument("--timeout", type=float, default=None, help="seconds per notebook")
    run.add_argument("--data-dir", default=None)
    run.set_defaults(func=_course_run)
    book = course.add_parser("book", help="build the static HTML book of a course run "
                             "(runs the course first if its notebooks are missing or stale)")
    book.add_argument("--profile", type=_profile, default=None,
                      help=f"{', '.join(PROFILES)}; default $MEDSEG_PROFILE, else full")
    book.add_argument("--run-dir", default=None, help="course run (default runs/course-PROFILE)")
    book.add_argument("--out", default=None, help="book folder (default runs/book)")
    book.add_argument("--notebook-dir", default=None)
    book.set_defaults(func=_course_book)
    for name, func, text in (
        ("check", _course_check, "check notebook conventions"),
        ("strip", _course_strip, "strip outputs except NBVAL_CHECK_OUTPUT cells"),
    ):
        sub = course.add_parser(name, help=text)
        sub.add_argument("--notebook-dir", default=None)
        sub.set_defaults(func=func)
    prose_check = course.add_parser(
        "prose", help="check the numbers the prose links to metrics against a run")
    prose_check.add_argument("run_dir", nargs="?", default=None,
                             help="a course run (default: the reference run the prose quotes)")
    prose_check.add_argument("--update-reference", action="store_true",
                             help="make RUN_DIR's metrics the reference (notebooks/"
                             "reference_run.json)")
    prose_check.add_argument("--notebook-dir", default=None)
    prose_check.set_defaults(func=_course_prose)
    bless = course.add_parser(
        "bless", help="run notebooks (smoke) and store the outputs of NBVAL_CHECK_OUTPUT cells"
    )
    bless.add_argument("--only", nargs="+", default=None, help="notebook prefixes, e.g. 00 05")
    bless.add_argument("--timeout", type=float, default=None, help="seconds per notebook")
    bless.add_argument("--notebook-dir", default=None)
    bless.set_defaults(func=_course_bless)
    _refuse_abbreviations(parser)
    return parser


def _refuse_abbreviations(parser: argparse.ArgumentParser) -> None:
    """A mistyped flag (``--num-case``) must be an error, not a silent prefix match."""
    parser.allow_abbrev = False
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for sub in action.choices.values():
            _refuse_abbreviations(sub)


#: Failures of the input or the environment: their message is the whole story.
_EXPECTED_ERRORS = (ValueError, OSError, RuntimeError, MemoryError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medseg``; returns the exit code.

    An error prints one line, ``medseg: error: ...``, and returns 2 (``--debug`` prints the
    traceback first); Ctrl-C returns 130. Usage errors exit 2 through argparse.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("medseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(f"medseg: error: {_error_line(exc)}", file=sys.stderr)
        return 2


def _error_line(exc: Exception) -> str:
    """``exc`` as one line: its message, with its type where the message alone is not
    enough (an empty message, an out-of-memory error, an unexpected exception type)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, MemoryError):
        return f"out of memory: {text or 'an allocation failed'}"
    if isinstance(exc, _EXPECTED_ERRORS) and text:
        return text
    if type(exc).__module__.startswith("onnxruntime"):
        return f"ONNX Runtime: {text}"
    return f"{type(exc).__name__}: {text} (rerun as `medseg --debug ...` for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
