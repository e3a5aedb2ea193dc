"""The command line runs the demo end to end and explains bad arguments."""

import pytest

from attn_probe.cli import main


def test_demo_runs_and_reports_attention_and_counterfactuals(capsys):
    assert main(["demo", "--steps", "40", "--examples", "64", "--position", "alibi"]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "position=alibi" in out
    assert "on_markers" in out and "uniform_baseline" in out and "permuted" in out
    # 2 layers x 4 heads of attention rows are reported
    assert sum(line.strip().startswith(("0 ", "1 ")) for line in out.splitlines()) >= 8


@pytest.mark.parametrize("arguments", [["demo", "--steps", "0"], ["demo", "--position", "xpos"], []])
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
