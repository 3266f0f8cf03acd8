"""`vitdetect download`: CIFAKE into DEST, verified."""

from __future__ import annotations

from pathlib import Path

import typer

from vitdetect.cli.summaries import print_manifest_diff
from vitdetect.cli.support import described, user_errors
from vitdetect.config.commands import DownloadSettings, Source
from vitdetect.config.settings import build_settings
from vitdetect.errors import VitdetectError


@user_errors
def download(
    dest: Path = described(DownloadSettings, "dest", "--dest"),
    source: Source = described(DownloadSettings, "source", "--source"),
    from_zip: Path = described(DownloadSettings, "from_zip", "--from-zip"),
    kaggle_dataset: str = described(DownloadSettings, "kaggle_dataset", "--kaggle-dataset"),
    hf_repo: str = described(DownloadSettings, "hf_repo", "--hf-repo"),
    expect_counts: str = described(DownloadSettings, "expect_counts", "--expect-counts"),
    max_unpacked_gb: float = described(DownloadSettings, "max_unpacked_gb", "--max-unpacked-gb"),
    force: bool = described(DownloadSettings, "force", "--overwrite/--no-overwrite", "--force"),
    verify_only: bool = described(DownloadSettings, "verify_only", "--verify-only/--no-verify-only"),
    quiet: bool = described(DownloadSettings, "quiet", "--quiet/--no-quiet", "-q"),
) -> None:
    """Get CIFAKE into DEST/{train,test}/{REAL,FAKE}: download it, or import the Kaggle zip; verified."""
    settings = build_settings(DownloadSettings, None, **locals())
    import vitdetect.data.download.fetch as downloading
    from vitdetect.utils.progress import Reporter

    reporter = Reporter(quiet=settings.quiet)
    if settings.verify_only:
        diff = downloading.verify(settings, reporter)
        print_manifest_diff(diff, settings.dest)
        if not diff.clean:
            raise VitdetectError(f"{settings.dest} differs from its manifest: {len(diff.missing)} missing, "
                                 f"{len(diff.extra)} extra, {len(diff.changed)} changed; run `vitdetect "
                                 "download --overwrite` to fetch it again")
        return
    result = downloading.download(settings, reporter)
    typer.echo(f"CIFAKE {result.action} at {result.dest}: {downloading.describe_counts(result.counts)}")
    if result.ignored:
        typer.echo(f"left out {result.ignored:,} file(s) outside train/{{REAL,FAKE}} and test/{{REAL,FAKE}}")
