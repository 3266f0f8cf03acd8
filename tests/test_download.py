"""`vitdetect download`: zip import, verification, manifest, and the kaggle / huggingface clients offline.

The clients are the real ones: kagglehub talks to a local server on 127.0.0.1:7777 (its TEST
environment), huggingface_hub to a local HF_ENDPOINT; "unreachable" is a closed loopback port.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from conftest import make_dataset
from vitdetect.cli import main

PER_CLASS = 4
SMALL = ["--expect-counts", f"{PER_CLASS},{PER_CLASS}"]
IMAGES = 4 * PER_CLASS


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def zip_tree(root: Path, archive: Path, prefix: str = "", skip: set[str] = frozenset()) -> Path:
    """Zip every file under root as PREFIX/relative/path, leaving out the relative paths in skip."""
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and relative not in skip:
                bundle.write(path, prefix + relative)
    return archive


@pytest.fixture
def cifake_zip(tmp_path: Path) -> Path:
    return zip_tree(make_dataset(tmp_path / "src", per_class=PER_CLASS), tmp_path / "cifake.zip")


def error_lines(err: str) -> list[str]:
    """The error lines on stderr (progress lines may precede them); a traceback would fail the caller."""
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def leftovers(parent: Path) -> list[str]:
    """Temp folders a failed or finished run left beside the dest."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("prefix", ["", "cifake/"])
def test_zip_import_layout_and_manifest(tmp_path: Path, capsys, prefix: str) -> None:
    source = make_dataset(tmp_path / "src", per_class=PER_CLASS)
    (source / "README.txt").write_text("not an image")
    archive = zip_tree(source, tmp_path / "cifake.zip", prefix)
    dest = tmp_path / "out" / "cifake"

    code, out, err = run(["download", "--from-zip", str(archive), "--dest", str(dest), *SMALL], capsys)

    assert code == 0, err
    assert f"train {PER_CLASS} REAL + {PER_CLASS} FAKE" in out and "left out 1 file" in out
    for split in ("train", "test"):
        for name in ("REAL", "FAKE"):
            assert sorted(p.name for p in (dest / split / name).iterdir()) == sorted(
                p.name for p in (source / split / name).iterdir())
    lines = (dest / "MANIFEST.tsv").read_text().splitlines()
    assert lines[0] == "path\tsize\tsha256" and len(lines) == 1 + IMAGES
    for line in lines[1:]:
        relative, size, digest = line.split("\t")
        data = (source / relative).read_bytes()
        assert int(size) == len(data) and digest == hashlib.sha256(data).hexdigest()
    assert leftovers(dest.parent) == []


def test_partial_archive_fails_the_count_check(tmp_path: Path, capsys) -> None:
    source = make_dataset(tmp_path / "src", per_class=PER_CLASS)
    archive = zip_tree(source, tmp_path / "partial.zip", skip={"test/FAKE/0.jpg"})
    dest = tmp_path / "data"

    code, _, err = run(["download", "--from-zip", str(archive), "--dest", str(dest), *SMALL], capsys)

    assert code == 1
    found = f"found train {PER_CLASS} REAL + {PER_CLASS} FAKE, test {PER_CLASS} REAL + {PER_CLASS - 1} FAKE"
    assert found in err
    assert "expected" in err and "--expect-counts" in err and len(error_lines(err)) == 1
    assert not dest.exists() and leftovers(tmp_path) == []


def test_default_counts_are_the_full_dataset_and_any_warns(tmp_path: Path, cifake_zip: Path, capsys) -> None:
    dest = tmp_path / "data"
    code, _, err = run(["download", "--from-zip", str(cifake_zip), "--dest", str(dest)], capsys)
    assert code == 1 and "expected train 50,000 REAL + 50,000 FAKE, test 10,000 REAL + 10,000 FAKE" in err

    code, _, err = run(["download", "--from-zip", str(cifake_zip), "--dest", str(dest),
                        "--expect-counts", "any"], capsys)
    assert code == 0 and "warning:" in err and "the full CIFAKE has train 50,000" in err


def _unsafe_zip(path: Path, name: str, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("train/REAL/ok.jpg", b"fine")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(info, b"/etc/passwd" if symlink else b"evil")
    return path


@pytest.mark.parametrize("name, symlink, message", [
    ("../evil.jpg", False, "unsafe path"),
    ("train/REAL/../../../evil.jpg", False, "unsafe path"),
    ("/tmp/evil.jpg", False, "unsafe path"),
    ("train/FAKE/link.jpg", True, "symbolic link"),
])
def test_zip_slip_is_refused_before_anything_is_written(tmp_path: Path, capsys, name, symlink,
                                                        message) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = _unsafe_zip(tmp_path / "evil.zip", name, symlink)
    dest = work / "data"

    code, _, err = run(["download", "--from-zip", str(archive), "--dest", str(dest),
                        "--expect-counts", "any"], capsys)

    assert code == 1 and message in err and "nothing extracted" in err
    assert list(work.iterdir()) == []
    assert not list(tmp_path.rglob("evil.jpg")) and not list(tmp_path.rglob("link.jpg"))
    assert not Path("/tmp/evil.jpg").exists()


def test_absurd_archive_size_is_refused(tmp_path: Path, cifake_zip: Path, capsys) -> None:
    dest = tmp_path / "data"
    code, _, err = run(["download", "--from-zip", str(cifake_zip), "--dest", str(dest), *SMALL,
                        "--max-unpacked-gb", "0.000001"], capsys)
    assert code == 1 and "would unpack to" in err and not dest.exists()


@pytest.mark.parametrize("content, message", [(b"not a zip at all", "not a readable zip"),
                                              (None, "not found")])
def test_bad_archive_gives_one_line(tmp_path: Path, capsys, content, message) -> None:
    archive = tmp_path / "broken.zip"
    if content is not None:
        archive.write_bytes(content)
    code, _, err = run(["download", "--from-zip", str(archive), "--dest", str(tmp_path / "data")], capsys)
    assert code == 1 and message in err and len(error_lines(err)) == 1


def test_undecodable_image_is_refused(tmp_path: Path, capsys) -> None:
    source = make_dataset(tmp_path / "src", per_class=PER_CLASS)
    (source / "train" / "REAL" / "0.jpg").write_bytes(b"\xff\xd8\xff truncated jpeg")
    archive = zip_tree(source, tmp_path / "damaged.zip")
    dest = tmp_path / "data"
    code, _, err = run(["download", "--from-zip", str(archive), "--dest", str(dest), *SMALL], capsys)
    assert code == 1 and "1 of 16 files do not decode (first: train/REAL/0.jpg" in err
    assert not dest.exists() and leftovers(tmp_path) == []


def test_verify_only_reports_missing_extra_and_changed(tmp_path: Path, cifake_zip: Path, capsys) -> None:
    dest = tmp_path / "data"
    assert run(["download", "--from-zip", str(cifake_zip), "--dest", str(dest), *SMALL], capsys)[0] == 0
    code, out, _ = run(["download", "--dest", str(dest), "--verify-only"], capsys)
    assert code == 0 and f"all {IMAGES} files match" in out

    (dest / "train" / "REAL" / "0.jpg").unlink()
    (dest / "test" / "FAKE" / "new.jpg").write_bytes(b"added")
    modified = dest / "test" / "REAL" / "1.jpg"
    data = bytearray(modified.read_bytes())
    data[-3] ^= 0xFF  # same size, different content: only the hash can tell
    modified.write_bytes(bytes(data))

    code, out, err = run(["download", "--dest", str(dest), "--verify-only"], capsys)

    assert code == 1
    assert "missing: train/REAL/0.jpg" in out and "extra: test/FAKE/new.jpg" in out
    assert "changed: test/REAL/1.jpg" in out
    assert "1 missing, 1 extra, 1 changed" in err and len(error_lines(err)) == 1


def test_verified_dest_is_left_alone_unless_forced(tmp_path: Path, cifake_zip: Path, capsys) -> None:
    dest = tmp_path / "data"
    args = ["download", "--from-zip", str(cifake_zip), "--dest", str(dest), *SMALL]
    assert run(args, capsys)[0] == 0
    manifest = dest / "MANIFEST.tsv"
    written = manifest.stat().st_mtime_ns

    code, out, _ = run(args, capsys)
    assert code == 0 and "already in place" in out and manifest.stat().st_mtime_ns == written

    (dest / "train" / "REAL" / "0.jpg").unlink()  # no longer complete: refused without --overwrite
    code, _, err = run(args, capsys)
    assert code == 1 and "pass --overwrite to replace it" in err
    code, out, _ = run([*args, "--overwrite"], capsys)
    assert code == 0 and "imported" in out and (dest / "train" / "REAL" / "0.jpg").is_file()
    code, out, _ = run([*args, "--force"], capsys)  # the same flag's earlier name
    assert code == 0 and "imported" in out
    assert leftovers(tmp_path) == []


# ---- Kaggle: the real kagglehub client against a local server ---------------------------------------


class _KaggleHandler(http.server.BaseHTTPRequestHandler):
    mode = "ok"  # ok | 404 | 401 | drop
    archive = b""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "drop":
            self.close_connection = True
            return  # no response at all: the client sees the connection close
        if self.mode != "ok":
            self._send(int(self.mode), json.dumps({"code": int(self.mode), "message": "no"}).encode(),
                       "application/json")
        elif self.path.endswith("/GetDataset"):
            self._send(200, json.dumps({"currentVersionNumber": 3}).encode(), "application/json")
        else:
            self._send(200, self.archive, "application/zip")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def kaggle_server(monkeypatch: pytest.MonkeyPatch):
    """kagglehub's TEST environment talks to http://localhost:7777; we serve it from a thread."""
    pytest.importorskip("kagglehub")
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 7777), _KaggleHandler)
    except OSError:
        pytest.skip("port 7777 (kagglehub's TEST endpoint) is busy")
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield _KaggleHandler
    server.shutdown()
    server.server_close()


def test_kaggle_download_through_kagglehub(tmp_path: Path, kaggle_server, capsys) -> None:
    kaggle_server.mode = "ok"
    kaggle_server.archive = zip_tree(make_dataset(tmp_path / "src", per_class=PER_CLASS),
                                     tmp_path / "served.zip", "cifake/").read_bytes()
    dest = tmp_path / "data"
    code, out, err = run(["download", "--dest", str(dest), *SMALL], capsys)
    assert code == 0, err
    assert "CIFAKE downloaded" in out
    assert sorted(p.name for p in dest.iterdir()) == ["MANIFEST.tsv", "test", "train"]
    assert len(list(dest.rglob("*.jpg"))) == IMAGES and leftovers(tmp_path) == []


@pytest.mark.parametrize("mode, message", [
    ("404", "not found (HTTP 404)"),
    ("401", "Kaggle refused access (HTTP 401)"),
    ("drop", "lost the connection to Kaggle"),
])
def test_kaggle_failures_give_one_line_with_the_manual_route(tmp_path: Path, kaggle_server, capsys,
                                                             mode: str, message: str) -> None:
    kaggle_server.mode = mode
    dest = tmp_path / "data"
    code, _, err = run(["download", "--dest", str(dest)], capsys)
    assert code == 1 and message in err
    assert "vitdetect download --from-zip FILE" in err and len(error_lines(err)) == 1
    assert not dest.exists() and leftovers(tmp_path) == []


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_kaggle_unreachable_network(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection goes through a proxy on a closed loopback port: the network is unreachable."""
    pytest.importorskip("kagglehub")
    monkeypatch.delenv("KAGGLE_API_ENVIRONMENT", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("NO_PROXY", "")
    code, _, err = run(["download", "--dest", str(tmp_path / "new" / "data")], capsys)
    assert code == 1 and "cannot reach Kaggle" in err and "connection refused" in err.lower()
    assert list(tmp_path.iterdir()) == []  # not even the parent folder it made
    assert "https://www.kaggle.com/datasets/birdy654/cifake-real-and-ai-generated-synthetic-images" in err


# ---- Hugging Face: a local mirror folder, and the real hub client against a local endpoint ---------


def write_mirror(folder: Path, names: list[str], rows: dict[str, int]) -> dict[str, list[bytes]]:
    """A hub-layout parquet mirror with label names in the given order; returns the encoded images by
    their label name."""
    datasets = pytest.importorskip("datasets")
    import numpy as np

    from conftest import make_image

    rng = np.random.default_rng(0)
    by_name: dict[str, list[bytes]] = {name: [] for name in names}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    for split, count in rows.items():
        images, labels = [], []
        for index in range(count):
            label = index % 2
            buffer = io.BytesIO()
            make_image(label, rng).save(buffer, format="JPEG", quality=90)
            images.append({"bytes": buffer.getvalue(), "path": None})
            labels.append(label)
            by_name[names[label]].append(buffer.getvalue())
        data = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        data.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return by_name


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_huggingface_mirror_labels_are_mapped_by_name(tmp_path: Path, capsys, hf_cache) -> None:
    mirror = tmp_path / "mirror"
    by_name = write_mirror(mirror, ["FAKE", "REAL"], {"train": 2 * PER_CLASS, "test": 2 * PER_CLASS})
    dest = tmp_path / "data"
    code, out, err = run(["download", "--source", "huggingface", "--hf-repo", str(mirror),
                          "--dest", str(dest), *SMALL], capsys)
    assert code == 0, err
    for name in ("REAL", "FAKE"):  # 0 = FAKE in this mirror: the files must still land by name
        written = {p.read_bytes() for split in ("train", "test") for p in (dest / split / name).iterdir()}
        assert written == set(by_name[name])
    assert len((dest / "MANIFEST.tsv").read_text().splitlines()) == 1 + IMAGES


@pytest.mark.parametrize("names, rows, message", [
    (["cat", "dog"], {"train": 8, "test": 8}, "labels are ['CAT', 'DOG'], not REAL and FAKE"),
    (["REAL", "FAKE"], {"train": 6, "test": 8}, "has 6 train images, CIFAKE has 8"),
    (["REAL", "FAKE"], {"train": 8}, "has no 'test' split"),
])
def test_huggingface_mirror_that_is_not_cifake_is_refused(tmp_path: Path, capsys, hf_cache, names, rows,
                                                          message) -> None:
    mirror = tmp_path / "mirror"
    write_mirror(mirror, names, rows)
    dest = tmp_path / "data"
    code, _, err = run(["download", "--source", "huggingface", "--hf-repo", str(mirror), "--dest", str(dest),
                        *SMALL], capsys)
    assert code == 1 and message in err and "--hf-repo" in err
    assert not dest.exists() and leftovers(tmp_path) == []


class _HubHandler(http.server.BaseHTTPRequestHandler):
    status = 404

    def _answer(self) -> None:
        body = json.dumps({"error": "no"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def run_cli_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter: huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE at import."""
    return subprocess.run([sys.executable, "-m", "vitdetect", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


@pytest.mark.parametrize("status, message", [
    (404, "not found on the Hugging Face Hub"),
    (401, "refused dragonintelligence/CIFAKE-image-dataset (HTTP 401)"),
    (None, "cannot reach the Hugging Face Hub at 127.0.0.1"),
    ("offline", "HF_HUB_OFFLINE=1 is set"),
])
def test_huggingface_hub_failures_give_one_line(tmp_path: Path, status, message) -> None:
    pytest.importorskip("datasets")
    env = {"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"), "NO_PROXY": "127.0.0.1",
           "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    server = None
    if isinstance(status, int):
        _HubHandler.status = status
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{server.server_address[1]}"
    elif status == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    try:
        result = run_cli_process(["download", "--source", "huggingface", "--dest", str(tmp_path / "data")],
                                 env)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "vitdetect download --from-zip FILE" in result.stderr
    assert len(error_lines(result.stderr)) == 1 and not (tmp_path / "data").exists()


def test_disk_full_gives_one_line_and_puts_nothing_in_place(tmp_path: Path, cifake_zip: Path, capsys,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import vitdetect.data.download.archive

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vitdetect.data.download.archive.shutil, "copyfileobj", no_space)
    dest = tmp_path / "data"
    code, _, err = run(["download", "--from-zip", str(cifake_zip), "--dest", str(dest), *SMALL], capsys)
    assert code == 1 and "disk full" in err and len(error_lines(err)) == 1
    assert not dest.exists() and leftovers(tmp_path) == []
