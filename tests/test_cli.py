"""The command line: the main job, runs on a dataset, summaries, and one-line errors for bad input."""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest

from attn_probe import cli
from attn_probe.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, main
from attn_probe.store import Run, load_run

FAST = ["--methods", "raw_attention", "attention_rollout", "saliency", "leave_one_out", "--checks", "agreement",
        "erasure", "sinks", "--quiet"]  # fmt: skip


@pytest.fixture
def reviews(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame(
        {"review": ["a gorgeous, witty movie", "dull", "the plot is thin", "superb acting"], "label": [1, 0, 0, 1]}
    ).to_csv(path, index=False)
    return path


def run_args(model_dir, data, out, *extra: str) -> list[str]:
    return ["run", "--model", str(model_dir), "--data", str(data), "--out", str(out), *FAST, *extra]


def test_run_writes_a_run_and_summary_reads_it(model_dir, reviews, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(model_dir, reviews, out, "--text-column", "review", "--label-column", "label")) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (4 examples)" in printed and "What the run found" in printed
    run = load_run(out)
    assert run.status == "complete" and sorted(run.done()) == [0, 1, 2, 3]
    assert run.table("examples")["label"].tolist() == [1, 0, 0, 1]
    assert main(["summary", str(out)]) == 0
    assert "ranks tokens unlike the gradient / erasure attributions" in capsys.readouterr().out
    # the same command again: nothing to do, nothing duplicated
    assert main(run_args(model_dir, reviews, out, "--text-column", "review", "--label-column", "label")) == 0
    assert len(load_run(out).table("examples")) == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a, d: [*a[:2], str(d / "no-such-model"), *a[3:], "--text-column", "review"], "no-such-model"),
        (lambda a, d: [*a[:4], str(d / "missing.csv"), *a[5:]], "no such file"),
        (lambda a, d: [*a, "--text-column", "body"], "no column 'body'"),
        (lambda a, d: [*a, "--text-column", "review", "--methods", "saliency"], "derived from attention"),
    ],
)
def test_bad_input_exits_2_with_one_line(model_dir, reviews, tmp_path, capsys, monkeypatch, change, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown name is not looked up on the hub (no network here)
    arguments = change(run_args(model_dir, reviews, tmp_path / "run"), tmp_path)
    assert main(arguments) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # (a model load may have drawn its progress bar before)
    assert last.startswith("attn-probe run: error:") and message in last


def test_labels_outside_the_classes_and_mixed_runs_are_refused(model_dir, tmp_path, capsys):
    data = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["fine", "bad"], "label": [0, 7]}).to_csv(data, index=False)
    assert main(run_args(model_dir, data, tmp_path / "a", "--label-column", "label")) == EXIT_BAD_INPUT
    assert "outside this model's classes" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    pd.DataFrame({"text": ["fine", "bad"]}).to_csv(good, index=False)
    assert main(run_args(model_dir, good, tmp_path / "b")) == 0
    other = [a if a != "leave_one_out" else "input_x_gradient" for a in run_args(model_dir, good, tmp_path / "b")]
    assert main(other) == EXIT_BAD_INPUT
    assert "different run" in capsys.readouterr().err


def test_summary_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["summary", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "not an attn_probe run" in capsys.readouterr().err


def test_toy_runs_and_reports_attention_and_counterfactuals(capsys):
    assert main(["toy", "--steps", "40", "--examples", "64", "--position", "alibi"]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "position=alibi" in out
    assert "on_markers" in out and "uniform_baseline" in out and "permuted" in out
    # 2 layers x 4 heads of attention rows are reported
    assert sum(line.strip().startswith(("0 ", "1 ")) for line in out.splitlines()) >= 8


@pytest.mark.parametrize("arguments", [["toy", "--steps", "0"], ["toy", "--position", "xpos"], [], ["run"]])
def test_bad_arguments_exit_with_a_message(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert "attn-probe" in capsys.readouterr().err


def test_models_lists_the_offline_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("minilm", "smollm2-135m", "minilm-sentiment"):
        assert f"  {name} " in out
    assert "AttentionInterface" in out


@pytest.mark.slow
def test_demo_runs_the_main_job(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--limit", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "classified as the human raters did" in out and "What the run found" in out
    assert load_run(tmp_path / "demo").status == "complete"


@pytest.mark.slow
def test_demo_sets_an_earlier_versions_demo_aside_and_nothing_else(tmp_path, capsys, monkeypatch):
    import attn_probe.probe as probe_module

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--limit", "2", "--quiet"]) == 0
    monkeypatch.setattr(probe_module, "DEFAULT_CHECKS", ("agreement", "sinks"))  # another version's defaults
    assert main(["demo", "--out", str(out), "--limit", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "held a demo run made with other settings" in printed and "checks" in printed
    (aside,) = tmp_path.glob("demo.before-*")
    assert load_run(aside).status == "complete" and len(load_run(aside).done()) == 2  # kept whole
    assert load_run(out).identity["checks"] == ["agreement", "sinks"] and load_run(out).status == "complete"
    # a run of another model in the demo's folder is not the demo's to move: the refusal stands
    other = tmp_path / "other"
    Run.open(other, identity={"model": "someone-elses", "methods": []}).close()
    assert main(["demo", "--out", str(other), "--limit", "2", "--quiet"]) == EXIT_BAD_INPUT
    assert "different run" in capsys.readouterr().err and not list(tmp_path.glob("other.before-*"))


def test_analysis_hands_its_options_to_the_study(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analysis", "flow_layers", "--help"])
    assert exit_info.value.code == 0
    assert "--smoke" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------
# attn-probe dashboard: everything up to starting Streamlit (tests/dashboards/test_browser.py serves it for real)
# ------------------------------------------------------------------------------------------------------
@pytest.fixture
def small_run(tmp_path):
    """A run directory with a manifest and no chunks: all the dashboard command checks before starting."""
    path = tmp_path / "run"
    Run.open(path, identity={"model": "tiny"}).close()
    return path


class FakeStreamlit:
    """Stands in for ``subprocess.Popen`` of the Streamlit server: records each command line; the server's ``wait``
    returns ``code``, or with ``code`` None raises KeyboardInterrupt (Ctrl-C) until it is terminated."""

    def __init__(self) -> None:
        self.started: list[list[str]] = []
        self.code: int | None = 0
        self.terminated = False

    def __call__(self, argv: list[str]) -> FakeStreamlit:
        self.started.append(argv)
        return self

    def wait(self, timeout: float | None = None) -> int:
        if self.code is None and not self.terminated:
            raise KeyboardInterrupt
        return -15 if self.code is None else self.code

    def terminate(self) -> None:
        self.terminated = True


@pytest.fixture
def streamlit(monkeypatch, tmp_path) -> FakeStreamlit:
    """The dashboard command with a stand-in app file and a :class:`FakeStreamlit` in place of the server."""
    app = tmp_path / "app.py"
    app.write_text("")
    monkeypatch.setattr(cli, "dashboard_app", lambda: app)
    fake = FakeStreamlit()
    monkeypatch.setattr(cli.subprocess, "Popen", fake)
    return fake


def test_streamlit_argv_serves_the_app_on_the_address_with_the_run():
    app, run = Path("/x/dashboards/app.py"), Path("/runs/demo")
    argv = cli.streamlit_argv(app, host="127.0.0.1", port=8600, run_dir=run)
    assert argv == [
        sys.executable, "-m", "streamlit", "run", "/x/dashboards/app.py", "--server.address", "127.0.0.1",
        "--server.port", "8600", "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal", "--", "--run-dir", "/runs/demo",
    ]  # fmt: skip
    exposed = cli.streamlit_argv(app, host="0.0.0.0", port=8501, run_dir=None)
    assert exposed == [*argv[:6], "0.0.0.0", argv[7], "8501", *argv[9:15]]  # no "--": Streamlit gets no app arguments


@pytest.mark.parametrize(("name", "message"), [("missing", "does not exist"), ("empty", "not an attn_probe run")])
def test_dashboard_of_a_directory_that_is_not_a_run(tmp_path, capsys, streamlit, name, message):
    (tmp_path / "empty").mkdir()
    assert main(["dashboard", str(tmp_path / name)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("attn-probe dashboard: error:")
    assert str(tmp_path / name) in err and message in err
    assert streamlit.started == []


def test_dashboard_without_its_app_says_so(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="no importable package 'no_such_dashboards'"):
        cli.dashboard_app("no_such_dashboards")
    (tmp_path / "bare_dashboards").mkdir()
    (tmp_path / "bare_dashboards" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"bare_dashboards/app\.py is missing"):
        cli.dashboard_app("bare_dashboards")
    monkeypatch.setattr(cli, "dashboard_app", functools.partial(cli.dashboard_app, "bare_dashboards"))
    assert main(["dashboard"]) == EXIT_BAD_INPUT
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("attn-probe dashboard: error: the dashboard app") and "app.py is missing" in error


def test_dashboard_starts_streamlit_on_the_run_and_forwards_its_exit_code(small_run, capsys, streamlit):
    assert main(["dashboard", str(small_run), "--port", "8600"]) == 0
    (argv,) = streamlit.started
    assert argv[-5:] == ["--", "--run-dir", str(small_run.resolve()), "--run-root", str(small_run.resolve().parent)]
    assert "8600" in argv
    captured = capsys.readouterr()
    assert "http://127.0.0.1:8600" in captured.out and "warning" not in captured.err
    streamlit.code = 3
    assert main(["dashboard"]) == 3
    assert "--run-dir" not in streamlit.started[-1] and streamlit.started[-1][-2:] == ["--run-root", os.getcwd()]
    streamlit.code = -9  # killed by SIGKILL: exits as a shell reports it
    assert main(["dashboard"]) == 128 + 9


def test_dashboard_run_root_must_hold_the_run(small_run, tmp_path, capsys, streamlit):
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert main(["dashboard", str(small_run), "--run-root", str(other)]) == EXIT_BAD_INPUT
    assert "is outside --run-root" in capsys.readouterr().err
    assert main(["dashboard", "--run-root", str(tmp_path / "missing")]) == EXIT_BAD_INPUT
    assert "is not a directory" in capsys.readouterr().err
    assert main(["dashboard", "--run-root", str(other)]) == 0
    assert streamlit.started[-1][-2:] == ["--run-root", str(other.resolve())]
    assert f"runs can be opened from {other.resolve()}" in capsys.readouterr().out


def test_dashboard_on_another_host_warns_that_it_is_reachable(capsys, streamlit):
    assert main(["dashboard", "--host", "0.0.0.0"]) == 0
    captured = capsys.readouterr()
    assert "http://0.0.0.0:8501" in captured.out
    (warning,) = captured.err.strip().splitlines()
    assert "reachable from other machines" in warning


def test_dashboard_interrupted_stops_the_server_and_exits_130(capsys, streamlit):
    streamlit.code = None
    assert main(["dashboard"]) == EXIT_INTERRUPTED and streamlit.terminated
    assert "stopped" in capsys.readouterr().err


def test_dashboard_terminated_stops_the_server_and_exits_143(capsys, monkeypatch, streamlit):
    def terminated_while_waiting(timeout: float | None = None) -> int:
        if streamlit.terminated:
            return -15
        os.kill(os.getpid(), signal.SIGTERM)  # `kill PID` of the command, as a process manager would send
        raise AssertionError("SIGTERM did not interrupt the wait")

    monkeypatch.setattr(streamlit, "wait", terminated_while_waiting)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["dashboard"]) == 128 + signal.SIGTERM and streamlit.terminated
    assert "server stopped" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_dashboard_refuses_a_port_out_of_range(port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["dashboard", "--port", port])
    assert exit_info.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_summary_names_the_numerical_checks_that_failed():
    extra = {
        "ig_convergence": {
            "integrated_gradients": {
                "max_relative_convergence_delta": 0.25, "threshold": 0.05, "flagged_examples": 3, "examples": 4,
            }
        },
        "capture_drift": {"max": 0.02, "threshold": 0.001, "flagged_examples": 2, "measured_examples": 4},
    }  # fmt: skip
    ig, drift = cli._numerical_checks(extra)
    assert "integrated_gradients did not converge on 3 of 4 examples" in ig and "25.0%, threshold 5.0%" in ig
    assert "drifted from the model's own backend on 2 of 4 examples (up to 0.02, threshold 0.001)" in drift
    passed = {**extra, "capture_drift": {**extra["capture_drift"], "flagged_examples": 0}}
    passed["ig_convergence"]["integrated_gradients"]["flagged_examples"] = 0
    assert cli._numerical_checks(passed) == []
