"""Where `vitdetect download` gets CIFAKE from: the Kaggle dataset (kagglehub) or a Hugging Face mirror
(datasets), each into a temp folder that download.py then checks; both clients are imported only when used."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from vitdetect.config.commands import DownloadSettings
from vitdetect.config.labels import CLASS_NAMES
from vitdetect.data.download.archive import SPLITS, move_tree
from vitdetect.errors import VitdetectError
from vitdetect.utils.network import CONNECT_TIMEOUT_S, unreachable_reason
from vitdetect.utils.progress import Reporter

FULL_COUNTS = {"train": 50_000, "test": 10_000}  # images per class in the published CIFAKE
Counts = dict[str, dict[str, int]]  # split -> class -> images


def manual_route(settings: DownloadSettings) -> str:
    return (f"download the zip from https://www.kaggle.com/datasets/{settings.kaggle_dataset} and run "
            f"`vitdetect download --from-zip FILE`")


def expected_counts(expect: str) -> Counts | None:
    """full, TRAIN,TEST (per class) or any (None)."""
    if expect == "any":
        return None
    given = FULL_COUNTS.values() if expect == "full" else map(int, expect.split(","))
    per_split = dict(zip(SPLITS, given, strict=True))
    return {split: dict.fromkeys(CLASS_NAMES, per_split[split]) for split in SPLITS}


def _import_client(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise VitdetectError(f"{module} is not installed: pip install \"vitdetect[download]\" "
                             "(or use --from-zip)") from None


def require_reachable(url: str, service: str, settings: DownloadSettings) -> None:
    """Fail with the manual route when url's host (or the proxy for it) cannot be reached."""
    failure = unreachable_reason(url, CONNECT_TIMEOUT_S)
    if failure is not None:
        address, reason = failure
        raise VitdetectError(f"cannot reach {service} at {address} ({reason}; no internet connection?): "
                             f"{manual_route(settings)}")


def fetch_kaggle(settings: DownloadSettings, folder: Path, reporter: Reporter) -> int:
    """kagglehub downloads and unpacks the dataset into folder/.kaggle; its images are moved into place."""
    kagglehub = _import_client("kagglehub")
    import requests
    from kagglehub import exceptions as kaggle_errors
    from kagglesdk.kaggle_env import get_endpoint, get_env

    require_reachable(get_endpoint(get_env()), "Kaggle", settings)
    staging = folder / ".kaggle"
    handle = settings.kaggle_dataset
    reporter.info(f"downloading {handle} from Kaggle")
    try:
        kagglehub.dataset_download(handle, output_dir=str(staging))
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise VitdetectError(f"lost the connection to Kaggle ({type(exc).__name__}): check the network, or "
                             f"{manual_route(settings)}") from None
    except kaggle_errors.UnauthenticatedError:
        raise _kaggle_refused(401, settings) from None
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        raise _kaggle_refused(status, settings) from None
    except kaggle_errors.DataCorruptionError:
        raise VitdetectError(f"the Kaggle download was corrupted (checksum mismatch): run the command again, "
                             f"or {manual_route(settings)}") from None
    ignored = move_tree(staging, folder, reporter)
    shutil.rmtree(staging)
    return ignored


def _kaggle_refused(status: int, settings: DownloadSettings) -> VitdetectError:
    if status in (401, 403):
        what = (f"Kaggle refused access (HTTP {status}): check KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN "
                "or ~/.kaggle/kaggle.json (a public dataset needs none; unset wrong ones)")
    elif status == 404:
        what = f"Kaggle dataset {settings.kaggle_dataset} not found (HTTP 404): check --kaggle-dataset"
    else:
        what = f"Kaggle answered HTTP {status}: try again later"
    return VitdetectError(f"{what}, or {manual_route(settings)}")


def fetch_huggingface(settings: DownloadSettings, folder: Path, reporter: Reporter) -> int:
    """A hub mirror through `datasets`, written out as files (the original encoded bytes, not re-encoded)."""
    datasets = _import_client("datasets")
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    repo = settings.hf_repo
    local = Path(repo).is_dir()
    if local:
        origin = "a local folder"
    elif constants.HF_HUB_OFFLINE:
        origin = "the local cache (HF_HUB_OFFLINE=1)"
    else:
        origin = constants.ENDPOINT
        require_reachable(constants.ENDPOINT, "the Hugging Face Hub", settings)
    reporter.info(f"loading {repo} from {origin}")
    try:
        builder = datasets.load_dataset_builder(repo)
        builder.download_and_prepare()
        splits = builder.as_dataset()
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        hint = "log in with `hf auth login` or set HF_TOKEN" if status in (401, 403) else "try again later"
        raise VitdetectError(f"the Hugging Face Hub refused {repo} (HTTP {status}): {hint}, or "
                             f"{manual_route(settings)}") from None
    except ConnectionError:
        cause = ("HF_HUB_OFFLINE=1 is set and it is not in the local cache: unset it"
                 if constants.HF_HUB_OFFLINE else "check the network")
        raise VitdetectError(f"cannot reach {repo} on the Hugging Face Hub ({cause}), or "
                             f"{manual_route(settings)}") from None
    except FileNotFoundError:
        raise VitdetectError(f"dataset {repo} not found on the Hugging Face Hub: check --hf-repo, or "
                             f"{manual_route(settings)}") from None
    for split in SPLITS:
        if split not in splits:
            raise VitdetectError(f"mirror {repo} has no '{split}' split (has {', '.join(splits)}): "
                                 "not CIFAKE, pick another --hf-repo")
        check_mirror_split(splits[split], split, settings)
    for split in SPLITS:
        write_mirror_split(splits[split], folder / split, reporter)
    return 0


def _mirror_columns(features) -> tuple[str, str]:
    """Names of the image column and of the class-label column of a `datasets` split."""
    import datasets

    images = [name for name, kind in features.items() if isinstance(kind, datasets.Image)]
    labels = [name for name, kind in features.items() if isinstance(kind, datasets.ClassLabel)]
    if not images or not labels:
        raise VitdetectError(f"mirror lacks an image column or a class-label column (has "
                             f"{', '.join(features)}): pick another --hf-repo")
    return images[0], labels[0]


def check_mirror_split(split_data, split: str, settings: DownloadSettings) -> None:
    """Refuse a mirror whose label names or split size do not match CIFAKE (labels are matched by name)."""
    _, label_column = _mirror_columns(split_data.features)
    names = [str(name).upper() for name in split_data.features[label_column].names]
    if sorted(names) != sorted(CLASS_NAMES):
        raise VitdetectError(f"mirror {settings.hf_repo} labels are {names}, not REAL and FAKE: "
                             "pick another --hf-repo")
    expected = expected_counts(settings.expect_counts)
    if expected is not None and split_data.num_rows != sum(expected[split].values()):
        raise VitdetectError(
            f"mirror {settings.hf_repo} has {split_data.num_rows:,} {split} images, CIFAKE has "
            f"{sum(expected[split].values()):,}: pick another --hf-repo (or pass --expect-counts any)"
        )


def write_mirror_split(split_data, folder: Path, reporter: Reporter) -> None:
    """Write each example's encoded image to folder/{REAL,FAKE}/NNNNNN.ext, its class taken by label name."""
    import datasets

    image_column, label_column = _mirror_columns(split_data.features)
    class_of = [str(name).upper() for name in split_data.features[label_column].names]
    raw = split_data.cast_column(image_column, datasets.Image(decode=False))
    for name in CLASS_NAMES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    with reporter.task(f"write {folder.name}", raw.num_rows, unit="img") as task:
        for index, row in enumerate(raw):
            data = _image_bytes(row[image_column])
            target = folder / class_of[row[label_column]] / f"{index:06d}{_image_suffix(data)}"
            target.write_bytes(data)
            task.advance()


def _image_bytes(image: dict) -> bytes:
    if image.get("bytes"):
        return image["bytes"]
    if image.get("path") and Path(image["path"]).is_file():
        return Path(image["path"]).read_bytes()
    raise VitdetectError("a mirror example has no image data: pick another --hf-repo")


def _image_suffix(data: bytes) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = (image.format or "").lower()
    except (UnidentifiedImageError, OSError):
        return ".bin"  # reported as undecodable by the verification that follows
    return {"jpeg": ".jpg", "mpo": ".jpg"}.get(kind, f".{kind}")
