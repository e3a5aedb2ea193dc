"""attn-probe report RUN_DIR, and the demo writing its report."""

from __future__ import annotations

import argparse

import attn_probe.cli as cli
from attn_probe.cli import EXIT_BAD_INPUT, main


def test_report_command_writes_and_prints_the_paths(full_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", str(full_run.path), "--out", str(out), "--format", "md"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"md: {out / 'report.md'}", f"figures: {out / 'figures'}"]
    assert (out / "report.md").is_file() and not (out / "report.html").exists()


def test_report_command_bad_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attn-probe report: error:") and "not an attn_probe run" in lines[0]
    assert main(["report", str(tmp_path / "missing")]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err


def test_demo_writes_its_report(full_run, monkeypatch, tmp_path, capsys):
    import shutil

    copy = tmp_path / "demo"
    shutil.copytree(full_run.path, copy)
    from attn_probe.store import load_run

    monkeypatch.setattr(cli, "_probe_dataset", lambda *args, **kwargs: load_run(copy))
    assert cli._demo(argparse.Namespace(out=str(copy), limit=6, quiet=True)) == 0
    printed = capsys.readouterr().out
    assert f"Report (opens without a network): {copy / 'report' / 'report.html'}" in printed
    assert (copy / "report" / "report.html").is_file() and (copy / "report" / "report.md").is_file()
