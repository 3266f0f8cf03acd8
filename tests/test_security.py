"""Checkpoints and caches cannot run code; nothing touches the network unless a hub id asks for it."""

import contextlib
import os
import pickle
import subprocess
import sys
import time

import pytest
import torch

from conftest import run_main, user_error
from vitdetect.data.dataset import load_split
from vitdetect.errors import VitdetectError
from vitdetect.inference.scoring import TrainedModel
from vitdetect.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears if, and only if, the pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payload_checkpoints(directory, marker, real):
    """A real checkpoint with its weights swapped for the payload (torch.save), and a plain pickle of it."""
    poisoned = {**real, "state_dict": Payload(marker)}
    torch.save(poisoned, directory / "evil.pth")
    with open(directory / "evil.pkl.pth", "wb") as handle:
        pickle.dump(poisoned, handle, protocol=2)
    return directory / "evil.pth", directory / "evil.pkl.pth"


def test_the_payload_is_live_when_loaded_unsafely(tmp_path, evaluated_run):
    """The control: torch.load(weights_only=False) on the same files does create the marker."""
    real = load_checkpoint(evaluated_run / "last.pth")
    for path in payload_checkpoints(tmp_path, tmp_path / "control", real):
        (tmp_path / "control").unlink(missing_ok=True)
        with contextlib.suppress(Exception):  # a plain pickle is not torch's legacy format: it fails after
            torch.load(path, weights_only=False)
        assert (tmp_path / "control").exists(), path


def test_a_checkpoint_whose_unpickling_runs_code_is_refused_everywhere(tmp_path, capsys, evaluated_run,
                                                                       tiny_data):
    marker = tmp_path / "pwned"
    image = next((tiny_data / "test" / "REAL").iterdir())
    for kind, name in (("last", "last.pth"), ("best", "best_model.pth")):
        for evil in payload_checkpoints(tmp_path, marker, load_checkpoint(evaluated_run / name)):
            commands = [["evaluate", "--checkpoint", evil, "--data-dir", tiny_data, "--output-dir",
                         tmp_path / "out"], ["predict", "--checkpoint", evil, image]]
            if kind == "last":
                commands.append(["train", "--resume", evil])
            for command in commands:
                message = user_error(run_main(capsys, *command), code=1)
                assert message.startswith(f"error: refusing to load {evil}"), message
                assert "could run code" in message and not marker.exists(), command
            with pytest.raises(VitdetectError, match="could run code"):
                TrainedModel.load(evil)
            assert not marker.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    torch_saved = user_error(run_main(capsys, "predict", "--checkpoint", tmp_path / "evil.pth", image))
    assert "unpickling it would call io.open" in torch_saved  # names what it refused to call


def test_a_poisoned_decoded_image_cache_is_rebuilt_not_run(tmp_path, tiny_data):
    cache = tmp_path / "cache"
    first = load_split(tiny_data, "train", None, cache)
    (cache_file,) = cache.glob("images-*.pt")
    torch.save({"images": Payload(tmp_path / "pwned")}, cache_file)
    again = load_split(tiny_data, "train", None, cache)
    assert torch.equal(again.images, first.images) and not (tmp_path / "pwned").exists()


def test_hub_offline_gives_one_line_quickly(tmp_path, tiny_data):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty hub cache
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "vitdetect", "train", "--model", "google/vit-base-patch16-224",
                           "--data-dir", str(tiny_data), "--output-dir", str(tmp_path / "out"), "--cache-dir",
                           str(tmp_path / "cache"), "--quiet"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and time.monotonic() - started < 60
    message = user_error((proc.returncode, proc.stdout, proc.stderr))
    expected = "could not download model 'google/vit-base-patch16-224' (HF_HUB_OFFLINE is set and it is not in the"
    assert expected in message
    assert not list((tmp_path / "out").glob("*.pth"))


NO_NETWORK = """
import socket, sys
from vitdetect.cli import main
attempts = []
def refuse(*args):
    attempts.append(args[1] if isinstance(args[0], socket.socket) else args[0])
    raise OSError("network use")
socket.socket.connect = socket.socket.connect_ex = socket.getaddrinfo = refuse
for args in sys.argv[1:]:
    try:
        main(args.split("\\t"))
    except SystemExit as done:
        assert done.code == 0, (args, done.code)
print("connection attempts:", attempts)
"""


def test_train_evaluate_predict_open_no_connection_without_a_hub_id(train_args, tiny_data, tmp_path):
    """HF_HUB_OFFLINE unset: nothing connects because nothing needs to, not because it was told not to."""
    checkpoint = tmp_path / "results" / "best_model.pth"
    commands = [train_args, ["evaluate", "--checkpoint", checkpoint, "--data-dir", tiny_data, "--cache-dir",
                             tmp_path / "cache", "--quiet"],
                ["predict", "--checkpoint", checkpoint, tiny_data / "test" / "FAKE", "--quiet"]]
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    proc = subprocess.run([sys.executable, "-c", NO_NETWORK, *("\t".join(map(str, c)) for c in commands)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("connection attempts: []"), proc.stdout[-500:]
