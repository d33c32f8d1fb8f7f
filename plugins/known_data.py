"""The public pix2pix and CycleGAN datasets by name: where they live, how they are laid out, and
a safe download (temp file + atomic rename, size check, extraction that rejects unsafe paths).

CycleGAN sets that share a name with a pix2pix set (maps, cityscapes, facades) are called
`cyclegan-maps` and so on; the plain name is the pix2pix (aligned) one."""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pbgan_core.errors import PbganError
from pbgan_core.hookspecs import hookimpl

PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"
CYCLEGAN_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{name}.zip"


@dataclass(frozen=True)
class KnownDataset:
    name: str        # what the user types; also the folder name under data_home()
    remote: str      # the name on the server
    layout: str      # 'aligned' (pix2pix A|B files) or 'unaligned' (CycleGAN trainA/trainB/...)
    direction: str   # the usual direction: 'AtoB' or 'BtoA'
    url: str
    size: int | None = None    # archive bytes, when known
    sha256: str | None = None  # archive checksum, when known

    @property
    def dataset(self) -> str:
        """The dataset plugin that reads this layout."""
        return self.layout


def _pix2pix(name: str, direction: str) -> KnownDataset:
    return KnownDataset(name, name, "aligned", direction, PIX2PIX_URL.format(name=name))


def _cyclegan(remote: str, name: str | None = None) -> KnownDataset:
    return KnownDataset(name or remote, remote, "unaligned", "AtoB", CYCLEGAN_URL.format(name=remote))


KNOWN: dict[str, KnownDataset] = {d.name: d for d in [
    _pix2pix("facades", "BtoA"),      # labels (B) -> photo (A)
    _pix2pix("cityscapes", "BtoA"),   # labels (B) -> photo (A)
    _pix2pix("maps", "AtoB"),         # aerial -> map
    _pix2pix("edges2shoes", "AtoB"),  # edges (A) -> photo (B) in the public release
    _pix2pix("edges2handbags", "AtoB"),
    _pix2pix("night2day", "AtoB"),
    *[_cyclegan(n) for n in ("apple2orange", "summer2winter_yosemite", "horse2zebra", "monet2photo",
                             "cezanne2photo", "ukiyoe2photo", "vangogh2photo", "iphone2dslr_flower")],
    *[_cyclegan(n, f"cyclegan-{n}") for n in ("maps", "cityscapes", "facades")],
]}


def data_home() -> Path:
    """$PBGAN_DATA_HOME, else $XDG_CACHE_HOME/pbgan/data, else ~/.cache/pbgan/data."""
    if os.environ.get("PBGAN_DATA_HOME"):
        return Path(os.environ["PBGAN_DATA_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "pbgan" / "data"


def known(name: str) -> KnownDataset | None:
    return KNOWN.get(name)


def known_names() -> list[str]:
    return sorted(KNOWN)


def default_data_dir(name: str, home: Path | None = None) -> Path:
    """Where `download(name)` puts the dataset (it may not be there yet)."""
    return Path(home or data_home()) / name


# -----------------------------------------------------------------------------
# download


def _fetch(d: KnownDataset, dest: Path, progress: bool, home: Path) -> None:
    """Stream d.url into dest, checking the byte count against Content-Length (and sha256 if known)."""
    def offline(reason) -> str:
        return (f"could not download {d.name} from {d.url} ({reason}); download it elsewhere and point --data "
                f"at a local copy, or place it in {home / d.name}")

    try:
        response = urllib.request.urlopen(d.url, timeout=60)
    except urllib.error.HTTPError as e:
        raise PbganError(offline(f"HTTP {e.code} {e.reason}")) from None
    except urllib.error.URLError as e:
        raise PbganError(offline(e.reason)) from None
    except (OSError, ValueError) as e:
        raise PbganError(offline(e)) from None
    with response:
        header = response.headers.get("Content-Length")
        expected = int(header) if header and header.isdigit() else d.size
        digest, got = hashlib.sha256(), 0
        bar = None
        if progress:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
            bar = Progress("[bold]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                           TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        try:
            if bar:
                bar.start()
                task = bar.add_task(d.name, total=expected)
            with open(dest, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    if bar:
                        bar.update(task, advance=len(chunk))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise PbganError(offline(f"interrupted after {got} bytes: {e}")) from None
        finally:
            if bar:
                bar.stop()
    if expected is not None and got != expected:
        raise PbganError(f"download of {d.name} from {d.url} is incomplete ({got} of {expected} bytes); try again")
    if d.sha256 and digest.hexdigest() != d.sha256:
        raise PbganError(f"download of {d.name} from {d.url} has the wrong checksum; try again")


def _unsafe(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


def extract(archive: Path, into: Path) -> None:
    """Extract a .tar.gz or .zip, refusing absolute paths, `..`, links and special files."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                bad = [m for m in z.namelist() if _unsafe(m)]
                if bad:
                    raise PbganError(f"refusing to extract {archive.name}: unsafe member path {bad[0]!r}")
                z.extractall(into)
        else:
            with tarfile.open(archive, "r:*") as t:
                members = t.getmembers()
                bad = [m.name for m in members if _unsafe(m.name) or not (m.isfile() or m.isdir())]
                if bad:
                    raise PbganError(f"refusing to extract {archive.name}: unsafe member {bad[0]!r}")
                t.extractall(into, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise PbganError(f"the archive {archive} is damaged ({e}); delete it and download again") from None


def download(name: str, home: Path | None = None, progress: bool = True) -> Path:
    """Download and extract a known dataset into home/name (default data_home()); return that folder.
    A folder already there is returned as is."""
    d = known(name)
    if d is None:
        raise PbganError(f"unknown dataset {name!r}; known datasets: {', '.join(known_names())}")
    home = Path(home or data_home())
    target = home / d.name
    if target.is_dir() and any(target.iterdir()):
        return target
    home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=home, prefix=f".{d.name}."))
    try:
        archive = work / Path(d.url).name
        _fetch(d, archive, progress, home)
        out = work / "extracted"
        extract(archive, out)
        entries = [e for e in out.iterdir() if not e.name.startswith(("__MACOSX", "."))]
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() else out
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(top, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


# -----------------------------------------------------------------------------
# plugin hooks


@hookimpl
def default_data(task):
    d = known(task)
    return None if d is None else (default_data_dir(d.name), d.direction)


@hookimpl
def register_commands(cli):
    import typer
    from rich.table import Table

    from pbgan_core.console import console

    data = typer.Typer(help="Known public pix2pix and CycleGAN datasets.", no_args_is_help=True)

    @data.command("list")
    def list_known() -> None:
        """List the known dataset names, their layout and usual direction.

        Example: pbgan data list
        """
        table = Table(title=f"known datasets (data home: {data_home()})")
        for col in ("name", "layout", "direction", "downloaded"):
            table.add_column(col)
        for name in known_names():
            d = KNOWN[name]
            here = default_data_dir(name)
            table.add_row(name, d.layout, d.direction, "yes" if here.is_dir() else "-")
        console.print(table)

    @data.command("download")
    def download_cmd(name: str = typer.Argument(..., help="A known dataset name (see `pbgan data list`)")) -> None:
        """Download a known dataset into the data home (PBGAN_DATA_HOME).

        Example: pbgan data download facades
        """
        folder = download(name)
        console.print(f"{name} is in {folder}; train with: pbgan train --arch pix2pix --task {name}")

    cli.add_typer(data, name="data")
