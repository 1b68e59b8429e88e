"""Faults lose nothing: damaged checkpoints, two writers, a full disk, kill -9, interrupted saves, diverging loops.

Each test fails on the behaviour before issue 14: a truncated newest checkpoint was an opaque
``PytorchStreamReader`` error with no way to resume; two ``train`` processes raced on one ``.tmp``
name; a failed write left its temporary file; results were written in place; and a diverging inner
loop returned NaN (the toy died later inside ``torch.distributions``).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from mass_ref.__main__ import main
from mass_ref.checkpoint import (CheckpointSkippedWarning, UnreadableCheckpointError, load_checkpoint,
                                 previous_path, resumable_loop, save_checkpoint)
from mass_ref.inner import NonFiniteError
from mass_ref.results import load_results, save_figure, save_results
from mass_ref.run_folder import (LOCK_FILE, AtomicWriteError, RunFolderInUse, StaleLockWarning, atomic_write,
                                 run_lock, write_atomically)

ROOT = Path(__file__).resolve().parent.parent
TOY_SMOKE = yaml.safe_load((ROOT / "configs" / "toy_mass_smoke.yaml").read_text())


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tmp"))


# --- checkpoints: rotation, damaged files ------------------------------------------------------------------------


def counting_run(path: Path, steps: int, **kwargs) -> tuple[list[dict[str, float]], torch.Tensor]:
    """A resumable loop whose state is one tensor: x_{t+1} = 2 x_t + t."""
    x = torch.ones(3)

    def step(t: int) -> dict[str, float]:
        x.mul_(2).add_(t)
        return {"x": x.sum().item()}

    def restore(state: dict) -> None:
        x.copy_(state["x"])

    history = resumable_loop(step, steps=steps, config={"kind": "count"}, seed=0, starting_models=[],
                             training_state=lambda: {"x": x.clone()}, restore=restore, checkpoint_path=path,
                             checkpoint_every=1, progress=False, **kwargs)
    return history, x


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_each_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    for step in (1, 2, 3):
        save_checkpoint(path, {"step": step})
    assert load_checkpoint(path)["step"] == 3
    assert torch.load(previous_path(path), weights_only=False)["step"] == 2
    assert not temporaries(tmp_path)


@pytest.mark.parametrize("damage", [truncate, lambda p: p.write_bytes(b"not a checkpoint"),
                                    lambda p: p.write_bytes(b"")])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path: Path, damage) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    damage(path)
    with pytest.warns(CheckpointSkippedWarning, match=rf"checkpoint {path} skipped \(.+\); using the previous one"):
        assert load_checkpoint(path)["step"] == 1


def test_a_run_resumes_past_a_truncated_checkpoint_to_the_uninterrupted_final_state(tmp_path: Path) -> None:
    reference, expected = counting_run(tmp_path / "straight.pt", steps=6)
    path = tmp_path / "c.pt"
    counting_run(path, steps=6, stop_after=4)
    truncate(path)  # the newest (step 4) is damaged: resume from step 3
    with pytest.warns(CheckpointSkippedWarning) as caught:
        history, x = counting_run(path, steps=6)
    messages = [str(w.message) for w in caught]
    assert any(f"checkpoint {path} skipped" in m for m in messages)
    assert any(f"moved the unreadable checkpoint {path} to {path}.corrupt" in m for m in messages)
    assert history == reference and torch.equal(x, expected)
    assert (tmp_path / "c.pt.corrupt").is_file() and load_checkpoint(path)["step"] == 6


def test_no_readable_checkpoint_is_a_clear_error_naming_the_files_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    truncate(path)
    truncate(previous_path(path))
    with pytest.raises(UnreadableCheckpointError, match=rf"no readable checkpoint.*Delete {path} and {path}.prev "
                                                        "to start the run over"):
        counting_run(path, steps=3)


def test_a_missing_newest_beside_a_previous_one_resumes_from_the_previous(tmp_path: Path) -> None:
    """A kill between the two renames of a save leaves only ``.prev``."""
    path = tmp_path / "c.pt"
    counting_run(path, steps=4, stop_after=2)
    os.replace(path, previous_path(path))
    with pytest.warns(CheckpointSkippedWarning, match="missing"):
        history, _ = counting_run(path, steps=4)
    assert history == counting_run(tmp_path / "straight.pt", steps=4)[0]


# --- a failed write: disk full ------------------------------------------------------------------------------------


def test_disk_full_while_checkpointing_says_so_and_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})

    def full_disk(state, file) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(AtomicWriteError, match=rf"could not write {path}: No space left on device \(errno "
                                               rf"{errno.ENOSPC}\)\. {path} was left as it was") as caught:
        save_checkpoint(path, {"step": 3})
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert "run the same command again" in str(caught.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 2 and torch.load(previous_path(path), weights_only=False)["step"] == 1
    assert not temporaries(tmp_path)


def test_a_failing_file_write_under_the_real_torch_save_is_reported_with_its_errno(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """torch.save turns a failed write into "unexpected pos ..."; the message still says "No space left"."""
    import mass_ref.run_folder as run_folder

    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.zeros(10)})

    class FullFile:
        def __init__(self, file) -> None:
            self.file, self.written = file, 0

        def write(self, data) -> int:
            self.written += len(data)
            if self.written > 100:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.file.close()

    monkeypatch.setattr(run_folder, "open", lambda *a, **k: FullFile(open(*a, **k)), raising=False)
    with pytest.raises(AtomicWriteError, match="No space left on device"):
        save_checkpoint(path, {"w": torch.ones(10_000)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(10)) and not temporaries(tmp_path)


def test_a_run_stopped_by_a_full_disk_resumes_after_space_is_freed(tmp_path: Path, monkeypatch) -> None:
    reference, expected = counting_run(tmp_path / "straight.pt", steps=5)
    path, real_save, calls = tmp_path / "c.pt", torch.save, {"n": 0}

    def full_on_the_third_save(state, file) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(state, file)

    monkeypatch.setattr(torch, "save", full_on_the_third_save)
    with pytest.raises(AtomicWriteError, match="No space left on device"):
        counting_run(path, steps=5)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 2 and not temporaries(tmp_path)
    history, x = counting_run(path, steps=5)
    assert history == reference and torch.equal(x, expected)


def test_temporary_files_are_unique_to_the_process_and_the_call(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    with atomic_write(target, text=True) as first, atomic_write(target, text=True) as second:
        first.write("first")
        second.write("second")
        names = [p.name for p in temporaries(tmp_path)]
        assert len(names) == 2 and all(f".{os.getpid()}." in name for name in names)
    assert target.read_text() == "first" and not temporaries(tmp_path)  # the last to finish wins, whole


def test_stale_temporaries_of_dead_processes_are_cleared_on_save(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"c.pt.{int(dead.stdout)}.0.tmp"  # what a kill -9 while saving leaves
    stale.write_bytes(b"partial")
    save_checkpoint(tmp_path / "c.pt", {"step": 1})
    assert not stale.exists()


# --- results and figures: interrupted notebook saves ---------------------------------------------------------------


def test_an_interrupted_results_save_leaves_the_previous_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MASS_REF_ROOT", str(tmp_path))
    path = save_results("nb", {"acc": 0.5}, profile="cpu")
    with monkeypatch.context() as patch:  # the data is written, then flushing it to disk fails
        patch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, os.strerror(errno.EIO))))
        with pytest.raises(AtomicWriteError, match=rf"could not write {path}: Input/output error"):
            save_results("nb", {"acc": 0.9}, profile="cpu")
    assert load_results("nb", "cpu") == {"acc": 0.5} and not temporaries(path.parent)


def test_a_figure_save_interrupted_midway_leaves_the_previous_png(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MASS_REF_ROOT", str(tmp_path))

    class Figure:
        def __init__(self, data: bytes, interrupt: bool) -> None:
            self.data, self.interrupt = data, interrupt

        def savefig(self, file, format: str, **kwargs) -> None:
            file.write(self.data[:3])
            if self.interrupt:
                raise KeyboardInterrupt  # Ctrl-C in the notebook while matplotlib writes
            file.write(self.data[3:])

    path = save_figure(Figure(b"\x89PNG old", False), "nb", "fit", profile="cpu")
    with pytest.raises(KeyboardInterrupt):
        save_figure(Figure(b"\x89PNG new", True), "nb", "fit", profile="cpu")
    assert path.read_bytes() == b"\x89PNG old" and not temporaries(path.parent)


def test_save_figure_writes_a_real_png(tmp_path: Path, monkeypatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("MASS_REF_ROOT", str(tmp_path))
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1])
    path = save_figure(fig, "nb", "line", profile="cpu", dpi=40)
    plt.close(fig)
    assert path.name == "nb_line.png" and path.read_bytes()[:4] == b"\x89PNG"


# --- one writer per run folder -------------------------------------------------------------------------------------


def toy_config(tmp_path: Path, name: str = "run", **mass) -> Path:
    data = json.loads(json.dumps(TOY_SMOKE))
    data["output_dir"] = str(tmp_path / name)
    data["mass"].update(mass)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_second_writer_is_refused_naming_the_holder_and_the_fix(tmp_path: Path) -> None:
    with run_lock(tmp_path) as lock:
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(RunFolderInUse, match=rf"in use by another `train` \(pid {os.getpid()} on .*delete {lock}"):
            with run_lock(tmp_path):
                pass
    assert not lock.exists()  # released on exit
    with run_lock(tmp_path):  # and free again
        pass


def test_the_toy_train_command_refuses_a_folder_another_train_holds(tmp_path: Path, capsys) -> None:
    config = toy_config(tmp_path)
    with run_lock(tmp_path / "run"):
        assert main(["train", "--config", str(config), "--no-progress"]) == 2
    assert "in use by another `train`" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_message(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": "here", "started": "then"}))
    with pytest.warns(StaleLockWarning, match=rf"took over .*{LOCK_FILE}, left by a run that is no longer running "
                                              rf"\(pid {pid} on here"):
        with run_lock(tmp_path) as lock:
            assert json.loads(lock.read_text())["pid"] == os.getpid()


@pytest.mark.slow  # two child processes: ~10 s
def test_two_train_processes_on_one_folder_one_is_refused(tmp_path: Path) -> None:
    config = toy_config(tmp_path)
    long_run = yaml.safe_load(config.read_text())
    long_run["steps"] = 100_000  # still running when the second one starts; terminated below
    config.write_text(yaml.safe_dump(long_run))
    command = [sys.executable, "-m", "mass_ref", "train", "--config", str(config), "--no-progress"]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        checkpoint = tmp_path / "run" / "checkpoint.pt"
        while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()[-2000:]
        second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert first.poll() is None  # the first one was never disturbed
    finally:
        first.terminate()
        first.communicate(timeout=60)
    assert second.returncode == 2, second.stderr
    assert f"in use by another `train` (pid {first.pid} on" in second.stderr


# --- kill -9 and the same command again ----------------------------------------------------------------------------


def run_killed_after_first_checkpoint(command: list[str], first_checkpoint: Callable[[], bool]) -> None:
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not first_checkpoint() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, f"finished before it could be killed: {process.stderr.read()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow  # three child processes on the toy: ~20 s
def test_toy_train_killed_with_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight, killed = toy_config(tmp_path, "straight"), toy_config(tmp_path, "killed")
    assert main(["train", "--config", str(straight), "--no-progress"]) == 0
    command = [sys.executable, "-m", "mass_ref", "train", "--config", str(killed), "--no-progress"]
    run_killed_after_first_checkpoint(command, (tmp_path / "killed" / "checkpoint.pt").exists)
    assert (tmp_path / "killed" / LOCK_FILE).exists()  # left behind by the kill
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "took over" in again.stderr and "no longer running" in again.stderr
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("straight", "killed"))
    assert a["history"] == b["history"] and len(a["history"]) == TOY_SMOKE["steps"]
    for part in ("generator", "scorer"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


@pytest.mark.slow  # the LM smoke run three times (tiny LM pretrained once): ~40 s
def test_lm_train_killed_with_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "configs" / "lm_mass_smoke.yaml").read_text())
    data.update(cache_dir=str(tmp_path / "cache"), methods=["mass_gold", "mass"])
    config = tmp_path / "lm.yaml"
    config.write_text(yaml.safe_dump(data))

    def command(out: str) -> list[str]:
        return [sys.executable, "-m", "mass_ref", "train", "--config", str(config), "--no-progress",
                "--output-dir", str(tmp_path / out)]

    straight = subprocess.run(command("straight"), cwd=ROOT, capture_output=True, text=True)  # fills the cache
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_killed_after_first_checkpoint(command("killed"), lambda: any((tmp_path / "killed").glob("*_seed0.pt")))
    again = subprocess.run(command("killed"), cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    for method in data["methods"]:
        a = load_checkpoint(tmp_path / "straight" / f"{method}_seed0.pt")
        b = load_checkpoint(tmp_path / "killed" / f"{method}_seed0.pt")
        assert json.dumps(a["history"]) == json.dumps(b["history"]) and len(a["history"]) == data["steps"]
        assert a["lora"].keys() == b["lora"].keys() and all(torch.equal(a["lora"][k], b["lora"][k]) for k in a["lora"])
        if a["scorer"] is not None:
            assert all(torch.equal(a["scorer"][k], b["scorer"][k]) for k in a["scorer"])


# --- a diverging inner loop in the trainers -----------------------------------------------------------------------


def test_a_toy_config_with_a_huge_inner_lr_stops_naming_inner_lr_and_the_step(tmp_path: Path, capsys) -> None:
    config = toy_config(tmp_path, outer_mode="verifier", inner_lr=1000.0)
    assert main(["train", "--config", str(config), "--no-progress"]) == 2  # before: a torch.distributions traceback
    error = capsys.readouterr().err
    assert "training diverged: toy MASS meta-step 0 (inner_lr=1000.0" in error and "mass.inner_lr" in error
    assert "Expected parameter loc" not in error


@pytest.mark.parametrize("backend", ["torch.func", "higher"])
def test_the_toy_trainer_names_the_inner_step_that_diverged(backend: str) -> None:
    from mass_ref.maml import sine_mlp
    from mass_ref.toy import ToyMassConfig
    from mass_ref.toy.generator import SineGenerator
    from mass_ref.toy.mass import train_toy_mass
    from mass_ref.toy.scorer import SineScorer

    torch.manual_seed(0)
    config = ToyMassConfig(inner_lr=1e4, num_inner_steps=5, meta_batch_size=4, num_synthetic=4, backend=backend)
    with pytest.raises(NonFiniteError, match=r"toy MASS meta-step 0 \(inner_lr=10000.0.*inner step \d") as caught:
        train_toy_mass(sine_mlp(), SineGenerator(), SineScorer(), config, steps=2, seed=0, progress=False)
    assert caught.value.step is not None


def lora_model(tokenizer):
    from mass_ref.lm import add_lora, build_tiny_lm

    return add_lora(build_tiny_lm(tokenizer, hidden_size=16, layers=1, heads=2, seed=0), r=2, alpha=4, seed=0)


@pytest.mark.parametrize("lr", [float("inf"), float("nan")])
def test_test_time_training_refuses_non_finite_lr_and_weights(tokenizer, lr: float) -> None:
    from mass_ref.lm.ttt import lora_sft_steps

    model, examples = lora_model(tokenizer), [("Question: 1 + 2?\nAnswer:", " 3"), ("Question: 2 + 2?\nAnswer:", " 4")]
    with pytest.raises(ValueError, match="lr must be finite and positive"):
        lora_sft_steps(model, tokenizer, examples, num_steps=1, lr=lr, optimizer="sgd")
    with pytest.raises(ValueError, match=r"weights must be finite; entries \[1\]"):
        lora_sft_steps(model, tokenizer, examples, num_steps=1, lr=0.01, weights=[0.5, lr])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_diverging_test_time_training_names_the_step_and_restores_lora(tokenizer, monkeypatch, optimizer: str) -> None:
    """A loss that turns NaN at the third step (a tiny LM with LoRA absorbs huge steps, so NaN is injected)."""
    import mass_ref.lm.ttt as ttt
    from mass_ref.lm import lora_parameters

    real, calls = ttt.sft_losses_per_example, {"n": 0}

    def nan_from_the_third_call(*args, **kwargs):
        calls["n"] += 1
        losses = real(*args, **kwargs)
        return losses * float("nan") if calls["n"] >= 3 else losses

    monkeypatch.setattr(ttt, "sft_losses_per_example", nan_from_the_third_call)
    model = lora_model(tokenizer)
    before = {n: p.detach().clone() for n, p in lora_parameters(model).items()}
    examples = [("Question: 1 + 2?\nAnswer:", " 3"), ("Question: 2 + 2?\nAnswer:", " 4")]
    with pytest.raises(NonFiniteError, match=r"step 2: the (inner )?loss .*is nan") as caught:
        with ttt.adapted_lora(model, tokenizer, examples, num_steps=4, lr=0.01, optimizer=optimizer):
            pass
    assert (caught.value.step, caught.value.what) == (2, "loss")
    assert all(torch.equal(p, before[n]) for n, p in lora_parameters(model).items())
