"""The ``attn-probe`` command line.

    attn-probe demo                       the main job on the embedded default: minilm-sentiment on a sample of
                                          held-out Rotten Tomatoes snippets, into runs/demo, headline findings
    attn-probe run --model M --data D --out DIR [--methods ...] [--limit N] [--batch-size B]
                   [--engine ray [--address A] [--workers N] [--gpus-per-worker G]]
    attn-probe summary DIR                the findings of a run, in sentences and as a table
    attn-probe analysis NAME [--smoke]    one of the studies in analyses/ (run from the repository root)
    attn-probe report DIR [--out OUT] [--format html|md|both]   the analysis report of a run (HTML + Markdown)
    attn-probe models                     the offline models and the architectures attention is captured from
    attn-probe dashboard [DIR] [--host H] [--port P] [--run-root R]   the dashboard (Streamlit), on localhost
    attn-probe toy                        train a toy encoder whose answer tokens are known, then probe it

Exit codes: 0 done; 2 bad input (one line on stderr says what and what to do, never a traceback);
130 interrupted (a run keeps what it wrote: the same command resumes it).
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from attn_probe import __version__
from attn_probe.attention.position import POSITION_VARIANTS

DEMO_MODEL = "minilm-sentiment"
DEMO_DATA = "rotten_tomatoes:test"
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
DASHBOARD_PACKAGE = "dashboards"
DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 8501


# ------------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    run = _probe_dataset(
        args.model, args.data, args.out, methods=args.methods, checks=args.checks, limit=args.limit,
        batch_size=args.batch_size, text_column=args.text_column, label_column=args.label_column,
        max_length=args.max_length, sample=args.sample, seed=args.seed, progress=not args.quiet,
        engine={"engine": args.engine, "address": args.address, "workers": args.workers,
                "gpus_per_worker": args.gpus_per_worker},
    )  # fmt: skip
    print(f"wrote {run.path} ({len(run.done())} examples): read it with attn_probe.load_run('{run.path}')")
    print(_summary_text(run))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from attn_probe.report import write_report
    from attn_probe.store import RunMismatchError

    print(f"attn-probe demo: {DEMO_MODEL} on {args.limit} held-out Rotten Tomatoes snippets -> {args.out}")

    def demo_run():
        return _probe_dataset(
            DEMO_MODEL, DEMO_DATA, args.out, methods=None, checks=None, limit=args.limit, batch_size=8,
            text_column="text", label_column="label", max_length=None, sample=4, seed=0, progress=not args.quiet,
        )  # fmt: skip

    try:
        run = demo_run()
    except RunMismatchError as error:
        # An earlier version's demo (other default checks or thresholds) in the same folder: keep it, aside, and
        # start over. Any other run there is not the demo's to move: its error stands.
        aside = _set_aside_old_demo(Path(args.out))
        if aside is None:
            raise
        print(f"attn-probe demo: {args.out} held a demo run made with other settings (an earlier version's "
              f"defaults: {_first_difference(error)}); kept it as {aside}, starting over")  # fmt: skip
        run = demo_run()
    examples = run.table("examples")
    print(
        f"\n{DEMO_MODEL}: {int(examples['correct'].sum())} of {len(examples)} snippets classified as the human "
        f"raters did ({examples['correct'].mean():.0%}). Run directory: {run.path}\n"
    )
    print(_summary_text(run))
    paths = write_report(run)
    print(f"\nReport (opens without a network): {paths['html']}")
    return 0


def _first_difference(error: Exception) -> str:
    """The first difference a :class:`RunMismatchError` lists (its message: '... different run: a; b; ...')."""
    text = str(error)
    return text.split("different run: ", 1)[-1].split(";", 1)[0]


def _set_aside_old_demo(folder: Path) -> Path | None:
    """Rename ``folder`` to ``<folder>.before-<time>`` if it holds a finished or stopped run of the demo's model
    and data, and return the new path; None (nothing moved) for anything else."""
    from attn_probe.store import load_run
    from attn_probe.store.errors import StoreError

    try:
        identity = load_run(folder, verify=False).identity
    except (StoreError, OSError, ValueError):
        return None
    if identity.get("model") != DEMO_MODEL:
        return None
    aside = folder.with_name(f"{folder.name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
    folder.rename(aside)
    return aside


STUDIES = ("sentiment_minilm", "agreement_smollm2", "position_variants", "flow_layers", "efficient_attention")


def _analysis(args: argparse.Namespace) -> int:
    import importlib

    try:
        study = importlib.import_module(f"analyses.{args.name}")
    except ModuleNotFoundError:
        raise ValueError(
            f"the study {args.name!r} was not found: the studies live in analyses/ of the repository, so run "
            "attn-probe analysis from the repository's root folder"
        ) from None
    return int(study.main(args.arguments) or 0)


def _report(args: argparse.Namespace) -> int:
    from attn_probe.report import write_report

    formats = ("html", "md") if args.format == "both" else (args.format,)
    paths = write_report(args.run, args.out, formats=formats)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from attn_probe.store import load_run

    print(_summary_text(load_run(args.run)))
    return 0


def _toy(args: argparse.Namespace) -> int:
    from attn_probe.demo import format_demo, run_demo

    result = run_demo(steps=args.steps, seed=args.seed, position=args.position, examples=args.examples)
    print(format_demo(result, steps=args.steps, seed=args.seed, position=args.position, examples=args.examples))
    return 0


def _models(args: argparse.Namespace) -> int:
    from attn_probe.models.offline import describe_offline

    print("Offline models (no network needed; built or cached on first use):\n")
    for row in describe_offline().itertuples():
        state = f"cached at {row.path}" if row.cached else f"not built yet: {row.build}"
        accuracy = (
            "" if row.heldout_accuracy != row.heldout_accuracy else f", held-out accuracy {row.heldout_accuracy:.3f}"
        )
        print(f"  {row.name:<18} {row.task} ({row.architecture}){accuracy}")
        print(f"  {'':<18} {row.description}")
        print(f"  {'':<18} from {row.source}; {state}\n")
    print(
        "Any Hugging Face model id or local directory also works (attn_probe.models.load_model). Attention is "
        "captured from\nevery architecture that dispatches through transformers' AttentionInterface (BERT, RoBERTa, "
        "ELECTRA, DistilBERT,\nGPT-2, Llama, Qwen2, Mistral, T5, ...), from BLOOM and DeBERTa-v2 through their inline "
        "eager attention, and\nfrom attn_probe's own models."
    )
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from attn_probe.store import load_run

    run_dir = None
    if args.run is not None:
        # Checked here, not in the app: a typo gets a one-line error instead of a page that fails to load.
        # verify=False: sizes only, so a large run is not hashed before the dashboard even starts.
        run_dir = load_run(args.run, verify=False).path.resolve()
    run_root = dashboard_run_root(args.run_root, run_dir)
    argv = streamlit_argv(dashboard_app(), host=args.host, port=args.port, run_dir=run_dir, run_root=run_root)
    if not _is_loopback(args.host):
        print(
            f"attn-probe dashboard: warning: --host {args.host} makes the dashboard reachable from other machines "
            f"(it has no login); the default {DASHBOARD_HOST} keeps it on this one",
            file=sys.stderr,
        )
    print(f"attn-probe dashboard: {dashboard_url(args.host, args.port)} (Ctrl-C stops it)", flush=True)
    print(f"attn-probe dashboard: runs can be opened from {run_root} and the folders inside it", flush=True)
    return _serve(argv)


def dashboard_run_root(given: str | None, run_dir: Path | None) -> Path:
    """The folder the dashboard may open runs from (the page refuses paths outside it): ``--run-root``, else the
    run directory's parent, else the current directory."""
    root = Path(given).expanduser() if given else (run_dir.parent if run_dir is not None else Path.cwd())
    if not root.is_dir():
        raise ValueError(f"--run-root {root} is not a directory: give the folder that holds your runs")
    root = root.resolve()
    if run_dir is not None and not run_dir.is_relative_to(root):
        raise ValueError(f"the run {run_dir} is outside --run-root {root}: give a root that contains it")
    return root


def dashboard_app(package: str = DASHBOARD_PACKAGE) -> Path:
    """The Streamlit script of the dashboard: ``app.py`` of the importable ``dashboards`` package."""
    spec = importlib.util.find_spec(package)
    # submodule_search_locations: the package folder, for a regular package and a namespace one alike
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise ValueError(
            f"the dashboard is not installed: no importable package {package!r}; reinstall attn_probe from the "
            "repository (make install)"
        )
    app = Path(folders[0]) / "app.py"
    if not app.is_file():
        raise ValueError(f"the dashboard app {app} is missing: reinstall attn_probe from the repository")
    return app


def streamlit_argv(app: Path, *, host: str, port: int, run_dir: Path | None, run_root: Path | None = None) -> list[str]:
    """The command line that serves ``app`` with this interpreter's Streamlit (the one attn_probe runs in)."""
    argv = [
        sys.executable, "-m", "streamlit", "run", str(app), "--server.address", host, "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
    ]  # fmt: skip
    extra = []  # after "--": the app's own arguments, not Streamlit's
    if run_dir is not None:
        extra += ["--run-dir", str(run_dir)]
    if run_root is not None:
        extra += ["--run-root", str(run_root)]
    return argv + (["--", *extra] if extra else [])


def dashboard_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


class _Terminated(Exception):
    """SIGTERM reached the command (``kill PID``): stop the server as for Ctrl-C, so no server keeps the port."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Terminated


def _serve(argv: list[str]) -> int:
    """Run the server in the foreground until it exits (its exit code), Ctrl-C (it is stopped; 130) or SIGTERM
    (it is stopped; 143)."""
    server = subprocess.Popen(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live only there
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        code = server.wait()
    except KeyboardInterrupt:
        _stop(server)
        print("attn-probe dashboard: stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        _stop(server)
        print("attn-probe dashboard: terminated, server stopped", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    # A server killed by a signal reports -N; a shell reports 128 + N, which is what sys.exit can pass on.
    return 128 + -code if code < 0 else code


def _stop(server: subprocess.Popen, grace: float = 10.0) -> None:
    # Ctrl-C in a terminal reached the server too (same process group): usually it is already on its way out.
    server.terminate()
    try:
        server.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# ------------------------------------------------------------------------------------------------------
# shared steps
# ------------------------------------------------------------------------------------------------------
def _probe_dataset(
    model: str,
    data: str,
    out: str,
    *,
    methods: list[str] | None,
    checks: list[str] | None,
    limit: int | None,
    batch_size: int,
    text_column: str,
    label_column: str | None,
    max_length: int | None,
    sample: int,
    seed: int,
    progress: bool,
    engine: dict | None = None,
):
    from attn_probe.data import load_texts
    from attn_probe.data.builtin import builtin_dataset, is_builtin
    from attn_probe.probe import DEFAULT_CHECKS, Probe

    target_for = None
    if is_builtin(data):
        dataset = builtin_dataset(data)
        source, text_column, target_for = dataset.frame, dataset.text_column, dataset.target
        label_column = label_column or dataset.label_column
    else:
        source = Path(data)
        if not source.exists():
            raise ValueError(f"--data {data}: no such file, and not a built-in dataset (rotten_tomatoes, agreement)")
    # The data is read and checked before the model is loaded: a typo in a column name costs no model load.
    texts = load_texts(source, text_column=text_column, label_column=label_column, limit=limit)
    engine = engine or {"engine": "local"}
    if engine["engine"] == "ray":
        from attn_probe.engines.ray_engine import check_ray

        check_ray()  # nor does a missing Ray
    if not progress:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    probe = Probe.load(model)
    target = target_for(probe.tokenizer) if target_for is not None else None
    return probe.run(
        texts, out, methods=methods, target=target, checks=checks or DEFAULT_CHECKS, batch_size=batch_size,
        label_column="label" if label_column else None, max_length=max_length, sample=sample, seed=seed,
        progress=progress, **engine,
    )  # fmt: skip


def _summary_text(run) -> str:
    from attn_probe.findings import headlines, summarise

    findings = run.table("findings")
    if findings.empty:
        return "no findings in this run (was it run with any checks?)"
    summary = summarise(findings)
    lines = ["What the run found (each line: how often the finding holds; the rest is where it does not):"]
    if run.status != "complete":
        lines.insert(0, f"(run not complete: {len(run.done())} examples so far; rerun its command to finish it)")
    lines += [f"  - {sentence}" for sentence in headlines(summary)]
    lines += _numerical_checks(run.manifest.get("extra") or {})
    identity = run.identity
    lines.append(
        f"\nmodel {identity.get('model')}; methods {', '.join(identity.get('methods', []))}; checks "
        f"{', '.join(identity.get('checks', []))}; thresholds in the manifest ({run.path / 'manifest.json'})"
    )
    return "\n".join(lines)


def _numerical_checks(extra: dict) -> list[str]:
    """The run's numerical checks in words (from the manifest): integrated gradients' convergence, capture drift."""
    lines = []
    for method, check in (extra.get("ig_convergence") or {}).items():
        if check.get("flagged_examples"):
            lines.append(
                f"  ! {method} did not converge on {check['flagged_examples']} of {check['examples']} examples "
                f"(relative convergence delta up to {check['max_relative_convergence_delta']:.1%}, threshold "
                f"{check['threshold']:.1%}): findings judged against it there are less reliable (the report lists them)"
            )
    drift = extra.get("capture_drift") or {}
    if drift.get("flagged_examples"):
        lines.append(
            f"  ! the attention capture drifted from the model's own backend on {drift['flagged_examples']} of "
            f"{drift['measured_examples']} examples (up to {drift['max']}, threshold {drift['threshold']})"
        )
    return lines


# ------------------------------------------------------------------------------------------------------
# the parser
# ------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attn-probe",
        description="Is this attention map telling me what the model actually used? Explain a model's predictions "
        "with attention-derived and gradient / erasure methods, compare them, and get findings on when attention "
        "misleads and when it is a fair explanation.",
        epilog="Exit codes: 0 done, 2 bad input, 130 interrupted (rerun the same command to resume a run).",
    )
    parser.add_argument("--version", action="version", version=f"attn_probe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help=f"the main job: {DEMO_MODEL} on held-out Rotten Tomatoes snippets, findings and a run directory",
        description=f"Load {DEMO_MODEL} (built once from PyPI packages, ~2 minutes the first time), explain a "
        "sample of held-out Rotten Tomatoes snippets with attention, gradient and erasure methods, compare them "
        "and print the headline findings. The run directory can be resumed and read back.",
    )
    demo.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    demo.add_argument("--limit", type=_positive_int, default=24, help="snippets to probe (default 24)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(handler=_demo)

    run = commands.add_parser(
        "run",
        help="probe a dataset into a resumable run directory",
        description="Explain every text of a dataset, compare the methods and judge the attention, writing tables "
        "as batches finish. Interrupted (Ctrl-C, kill -9), the same command resumes where it stopped.",
    )
    run.add_argument("--model", required=True, help="offline name (attn-probe models), Hugging Face id or path")
    run.add_argument(
        "--data",
        required=True,
        help="a .csv/.tsv/.jsonl/.parquet file, or a built-in dataset: rotten_tomatoes[:test|train|all], agreement[:N]",
    )
    run.add_argument("--out", required=True, help="run directory (created, or resumed if it holds the same run)")
    run.add_argument("--methods", nargs="+", help="method ids (default: raw, rollout, flow, IG, leave-one-out)")
    run.add_argument("--checks", nargs="+", help="agreement erasure sinks position counterfactuals adversarial ...")
    run.add_argument("--limit", type=_positive_int, help="only the first N texts")
    run.add_argument("--batch-size", type=_positive_int, default=8, help="texts per batch and chunk (default 8)")
    run.add_argument("--text-column", default="text", help="column of the texts (default text)")
    run.add_argument("--label-column", help="column of gold labels (class index or name), optional")
    run.add_argument("--max-length", type=_positive_int, help="truncate texts to N tokens (default: the model's)")
    run.add_argument("--sample", type=int, default=8, help="examples whose full attention is kept (default 8)")
    run.add_argument("--seed", type=int, default=0, help="seed of permutations, random orders, samples")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help="local: this process; ray: batches shared among Ray workers (pip install 'attn_probe[ray]')",
    )  # fmt: skip
    run.add_argument("--address", help="Ray cluster to join (e.g. auto, ray://head:10001; default: a local Ray)")
    run.add_argument("--workers", type=_positive_int, help="Ray workers, each loading the model once (default: 1/CPU)")
    run.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (default 0)")
    run.set_defaults(handler=_run)

    analysis = commands.add_parser(
        "analysis",
        help="run one of the studies in analyses/ (from the repository root)",
        description="Run a study of analyses/ end to end and write its report (python -m analyses.NAME does the "
        "same). Options after the name go to the study: --smoke for a quick check, --out DIR, --limit N, --seed.",
    )
    analysis.add_argument("name", choices=STUDIES, help="the study")
    analysis.add_argument("arguments", nargs=argparse.REMAINDER, help="options of the study (see its --help)")
    analysis.set_defaults(handler=_analysis)

    summary = commands.add_parser("summary", help="the findings of a run directory, in sentences")
    summary.add_argument("run", help="a run directory written by attn-probe run / demo")
    summary.set_defaults(handler=_summary)

    report = commands.add_parser(
        "report",
        help="write the analysis report of a run directory: standalone HTML and Markdown with PNG / SVG figures",
        description="Write the report of a run: what was run, the headline findings, figures, a gallery of the "
        "examples where attention misleads most and where it is faithful, and caveats with confidence intervals. "
        "The HTML page is self-contained (figures embedded, no network, no script).",
    )
    report.add_argument("run", help="a run directory written by attn-probe run / demo")
    report.add_argument("--out", help="folder for the report (default RUN/report)")
    report.add_argument("--format", choices=("html", "md", "both"), default="both", help="what to write (default both)")
    report.set_defaults(handler=_report)

    models = commands.add_parser("models", help="the offline models and the architectures attention is captured from")
    models.set_defaults(handler=_models)

    toy = commands.add_parser(
        "toy", help="train a small encoder on a toy task with known answer tokens, then probe its attention"
    )
    toy.add_argument("--steps", type=_positive_int, default=300, help="training steps (default 300)")
    toy.add_argument("--seed", type=int, default=0, help="seed for the model and the data (default 0)")
    toy.add_argument("--position", choices=POSITION_VARIANTS, default="t5", help="position variant (default t5)")
    toy.add_argument("--examples", type=_positive_int, default=512, help="held-out examples probed (default 512)")
    toy.set_defaults(handler=_toy)

    dashboard = commands.add_parser(
        "dashboard",
        help="the interactive dashboard of a run directory, in the browser (Streamlit)",
        description="Serve the dashboard (Streamlit) and print its address: open it in a browser. Given a run "
        "directory, it opens on that run. It listens on this machine only (127.0.0.1) unless --host says "
        "otherwise; it has no login. Ctrl-C stops it.",
    )
    dashboard.add_argument(
        "run", nargs="?", metavar="RUN_DIR", help="a run directory written by attn-probe run / demo (optional)"
    )
    dashboard.add_argument(
        "--host",
        default=DASHBOARD_HOST,
        help=f"address to listen on (default {DASHBOARD_HOST}: this machine only; 0.0.0.0 exposes it to the network)",
    )
    dashboard.add_argument("--port", type=_port, default=DASHBOARD_PORT, help=f"port (default {DASHBOARD_PORT})")
    dashboard.add_argument(
        "--run-root",
        metavar="DIR",
        help="the folder runs may be opened from in the page (default: RUN_DIR's parent, else the current folder); "
        "paths typed in the page cannot leave it",
    )
    dashboard.set_defaults(handler=_dashboard)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"attn-probe {args.command}: interrupted; what was written is kept, rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, KeyError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        one_line = " ".join(str(message).split())  # e.g. a loader's error quoting a multi-line cause
        print(f"attn-probe {args.command}: error: {one_line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        warnings.formatwarning = previous


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"attn-probe: warning: {message}\n"


if __name__ == "__main__":
    sys.exit(main())
