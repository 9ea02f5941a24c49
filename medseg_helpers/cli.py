"""The ``medseg`` command: a thin layer over importable functions.

Every subcommand parses its arguments, calls one package function and prints the
result; heavy modules are imported only by the subcommand that needs them, so
``medseg --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medseg_helpers.config import PROFILES


def _data_synth(args: argparse.Namespace) -> int:
    from medseg_helpers.course_data import ensure_synthetic_dataset

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
    from medseg_helpers.io import convert_to_nifti

    written = convert_to_nifti(args.source, args.destination, is_label=args.label)
    print(f"wrote {written}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from medseg_helpers.serve import run_server

    run_server(
        args.model,
        host=args.host,
        port=args.port,
        num_classes=args.num_classes,
        max_upload_bytes=int(args.max_upload_mib * 2**20),
        max_concurrency=args.max_concurrency,
    )
    return 0


def _course_run(args: argparse.Namespace) -> int:
    from medseg_helpers.config import get_profile_name
    from medseg_helpers.course import format_summary_table, run_course

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
        on_result=progress,
    )
    print()
    print(format_summary_table(results))
    out = Path(args.out) if args.out else None
    report = (out or _default_course_dir(args.profile)) / "report.md"
    print(f"\nreport: {report.resolve()}")
    failed = [r.notebook for r in results if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _default_course_dir(profile: str | None) -> Path:
    from medseg_helpers.config import get_profile_name, get_run_dir

    return get_run_dir() / f"course-{get_profile_name(profile)}"


def _course_check(args: argparse.Namespace) -> int:
    from medseg_helpers.course import list_notebooks
    from medseg_helpers.nbhygiene import check_notebook, strip_notebook

    notebooks = list_notebooks(args.notebook_dir)
    if not notebooks:
        print("no notebooks found", file=sys.stderr)
        return 1
    problems = [str(p) for nb in notebooks for p in check_notebook(nb)]
    problems += [
        f"{nb.name}: outputs not stripped (run 'medseg course strip')"
        for nb in notebooks
        if strip_notebook(nb, check_only=True)
    ]
    for problem in problems:
        print(problem)
    print(f"{len(notebooks)} notebooks checked, {len(problems)} problems")
    return 1 if problems else 0


def _course_strip(args: argparse.Namespace) -> int:
    from medseg_helpers.course import list_notebooks
    from medseg_helpers.nbhygiene import strip_notebook

    changed = [nb.name for nb in list_notebooks(args.notebook_dir) if strip_notebook(nb)]
    print(f"stripped {len(changed)} notebooks" + (f": {', '.join(changed)}" if changed else ""))
    return 0


def _course_bless(args: argparse.Namespace) -> int:
    import tempfile

    from medseg_helpers.course import list_notebooks, run_course
    from medseg_helpers.nbhygiene import copy_checked_outputs

    with tempfile.TemporaryDirectory(prefix="medseg-bless-") as tmp:
        results = run_course("smoke", tmp, notebooks=args.only, notebook_dir=args.notebook_dir)
        failed = [r.notebook for r in results if r.status != "passed"]
        if failed:
            print(f"not refreshed, these notebooks failed: {', '.join(failed)}", file=sys.stderr)
            return 1
        for source in list_notebooks(args.notebook_dir):
            executed = Path(tmp) / "notebooks" / source.name
            if executed.exists():
                print(f"{source.name}: {copy_checked_outputs(source, executed)} checked cells")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``medseg`` (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="medseg", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make, download or convert data").add_subparsers(
        dest="data_command", required=True
    )
    synth = data.add_parser("synth", help="write the synthetic phantom dataset (Decathlon layout)")
    synth.add_argument("--flavour", choices=("mr", "ct"), default="mr")
    synth.add_argument("--profile", choices=PROFILES, default=None, help="sizes from a profile")
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
    convert.set_defaults(func=_data_convert)

    serve = commands.add_parser("serve", help="serve an ONNX model over HTTP (POST /v1/segment)")
    serve.add_argument("model", help="exported .onnx model")
    serve.add_argument("--num-classes", type=int, required=True, help="including background")
    serve.add_argument("--host", default="127.0.0.1", help="0.0.0.0 only inside a container")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mib", type=float, default=64.0)
    serve.add_argument("--max-concurrency", type=int, default=2)
    serve.set_defaults(func=_serve)

    course = commands.add_parser("course", help="run or check the notebooks").add_subparsers(
        dest="course_command", required=True
    )
    run = course.add_parser("run", help="run the notebooks in order with papermill")
    run.add_argument("--profile", choices=PROFILES, default=None)
    run.add_argument("--out", default=None, help="run directory (default runs/course-PROFILE)")
    run.add_argument("--only", nargs="+", default=None, help="notebook prefixes, e.g. 00 05")
    run.add_argument("--timeout", type=float, default=None, help="seconds per notebook")
    run.add_argument("--data-dir", default=None)
    run.set_defaults(func=_course_run)
    for name, func, text in (
        ("check", _course_check, "check notebook conventions"),
        ("strip", _course_strip, "strip outputs except NBVAL_CHECK_OUTPUT cells"),
    ):
        sub = course.add_parser(name, help=text)
        sub.add_argument("--notebook-dir", default=None)
        sub.set_defaults(func=func)
    bless = course.add_parser(
        "bless", help="run notebooks (smoke) and store the outputs of NBVAL_CHECK_OUTPUT cells"
    )
    bless.add_argument("--only", nargs="+", default=None, help="notebook prefixes, e.g. 00 05")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medseg``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"medseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
