"""The Ray engine writes the same run as the local engine: same rows, same values, same kept matrices; it resumes
what either engine left, retries a batch whose worker dies, and stops on a bad batch as the local engine does.

One local Ray runtime (``ray.init(num_cpus=2)``) serves the whole module: no cluster needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from attn_probe import Probe, load_run
from attn_probe.capture import NonFiniteError
from attn_probe.cli import EXIT_BAD_INPUT, main
from tests.threads import one_torch_thread

ray = pytest.importorskip("ray", reason="the Ray engine's tests need Ray: pip install 'attn_probe[ray]'")
pytestmark = pytest.mark.slow

TEXTS = [f"review {i}: {'a gorgeous, witty film' if i % 2 else 'dull and slow'}" for i in range(12)]
METHODS = ["raw_attention", "attention_rollout", "saliency"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A local Ray for the module, and one torch thread here as in each worker: the local runs compared with
    Ray's then sum in the same order, so their tables are equal exactly."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with one_torch_thread():
        yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, model_dir):
    """The reference: the same dataset run by the local engine."""
    out = tmp_path_factory.mktemp("local") / "run"
    Probe.load(str(model_dir)).run(TEXTS, out, methods=METHODS, batch_size=2, sample=5, progress=False)
    return load_run(out)


def assert_same_run(run, reference) -> None:
    """Every table equal row for row, and the same kept matrices."""
    assert run.tables() == reference.tables() and run.done() == reference.done()
    for name in reference.tables():
        pd.testing.assert_frame_equal(run.table(name), reference.table(name), rtol=1e-6, atol=1e-7)
    assert run.samples() == reference.samples()
    for example_id in reference.samples("attention"):
        assert np.array_equal(run.sample("attention", example_id), reference.sample("attention", example_id))


def test_two_workers_write_the_local_engines_run(model_dir, local_run, tmp_path):
    out = tmp_path / "run"
    run = Probe.load(str(model_dir)).run(
        TEXTS, out, methods=METHODS, batch_size=2, sample=5, progress=False, engine="ray", workers=2
    )
    assert_same_run(run, local_run)
    assert run.manifest["settings"]["engine"] == "ray"


def test_an_in_memory_model_travels_to_the_workers(tokenizer, tiny_bert, local_run, tmp_path):
    probe = Probe(tiny_bert, tokenizer, name=local_run.identity["model"])  # not loaded by name: shipped to workers
    run = probe.run(TEXTS, tmp_path / "run", methods=METHODS, batch_size=2, sample=5, progress=False, engine="ray")
    assert_same_run(run, local_run)


def test_ray_resumes_what_the_local_engine_left(model_dir, local_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    probe = Probe.load(str(model_dir))
    real, calls = Probe.explain_shard, []

    def stopping(self, part, plan):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C after two batches
        calls.append(part)
        return real(self, part, plan)

    monkeypatch.setattr(Probe, "explain_shard", stopping)
    with pytest.raises(KeyboardInterrupt):
        probe.run(TEXTS, out, methods=METHODS, batch_size=2, sample=5, progress=False)
    monkeypatch.setattr(Probe, "explain_shard", real)
    assert len(load_run(out).done()) == 4
    run = probe.run(TEXTS, out, methods=METHODS, batch_size=2, sample=5, progress=False, engine="ray", workers=2)
    assert_same_run(run, local_run)  # the 4 finished examples were not redone: a duplicate write would refuse


def test_a_worker_killed_mid_run_has_its_batch_retried(model_dir, tmp_path):
    texts = [f"text number {i} is fine" for i in range(16)]
    methods = ["raw_attention", "integrated_gradients"]
    reference = Probe.load(str(model_dir)).run(texts, tmp_path / "local", methods=methods, batch_size=1, progress=False)
    out = tmp_path / "ray"
    killed: list[int] = []

    def kill_a_worker_after_the_first_chunk() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if list((out / "chunks").glob("*.json")):
                workers = subprocess.run(["pgrep", "-f", "^ray::ShardWorker"], capture_output=True, text=True)
                pids = [int(pid) for pid in workers.stdout.split()]
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_after_the_first_chunk)
    killer.start()
    with pytest.warns(RuntimeWarning, match=r"a Ray worker died while explaining examples .* retried on a new worker"):
        run = Probe.load(str(model_dir)).run(
            texts, out, methods=methods, batch_size=1, progress=False, engine="ray", workers=2
        )
    killer.join()
    assert killed, "no worker was found to kill"
    assert_same_run(run, reference)


def test_a_bad_batch_stops_the_run_as_the_local_engine_does(tokenizer, tiny_bert, tmp_path):
    broken = type(tiny_bert)(tiny_bert.config).eval()
    broken.load_state_dict(tiny_bert.state_dict())
    with torch.no_grad():
        broken.bert.encoder.layer[1].attention.self.query.weight[0, 0] = float("nan")
    probe = Probe(broken, tokenizer, name="broken")
    with pytest.raises(NonFiniteError, match="layer 1 of its encoder attention"):
        probe.run(TEXTS[:4], tmp_path / "run", methods=METHODS, batch_size=2, progress=False, engine="ray", workers=1)


def test_the_command_line_runs_on_ray(model_dir, local_run, tmp_path, capsys):
    data = tmp_path / "texts.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(data, index=False)
    out = tmp_path / "run"
    code = main(["run", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--methods", *METHODS,
                 "--batch-size", "2", "--sample", "5", "--engine", "ray", "--workers", "2", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    run = load_run(out)
    for name in local_run.tables():
        pd.testing.assert_frame_equal(run.table(name), local_run.table(name), rtol=1e-6, atol=1e-7)


def test_without_ray_the_message_says_how_to_get_it(model_dir, tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'attn_probe\[ray\]'"):
        Probe.load(str(model_dir)).run(TEXTS, tmp_path / "run", methods=METHODS, engine="ray", progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run directory is touched
    data = tmp_path / "texts.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(data, index=False)
    code = main(["run", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--engine", "ray"])  # fmt: skip
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == EXIT_BAD_INPUT and "the ray engine needs Ray" in line
