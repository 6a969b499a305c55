"""A synthetic many-speaker corpus: the talking-head generator with many espeak-ng voices and face photos.

Speaker ``k`` has its own voice (an espeak-ng accent and variant, speed and base pitch), its own face (the
astronaut photo of scikit-image, mirrored or not, with its colour, scale, rotation and shear changed) and its
own manner (jaw range, head motion); every clip says other sentences.
``make_corpus(out, CorpusConfig(speakers=N, clips_per_speaker=M))`` writes ``out/speakerK/clipJ.mp4`` (with
``clipJ.truth.npz`` beside it, the generator's ground truth) and ``out/speakers.json``, so a model can be
trained on some voices and tested on a voice it never heard (``first_speaker`` starts past them).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skimage_data

from ..cliopts import MAX_WORKERS, check_config, opt, same_as
from ..errors import InputError
from ..fileio import write_json
from .generator import SynthConfig, prepare, truth_path
from .photo import as_rgb
from .speech import speak

ACCENTS = ("en-us", "en-gb", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
           "en-us-nyc")
"""espeak-ng English voices (``espeak-ng --voices=en``)."""
VARIANTS = ("m1", "f2", "m3", "f4", "m2", "f1", "m4", "f3", "m5", "f5", "m6", "klatt", "m7")
"""espeak-ng voice variants (``espeak-ng --voices=variant``); 13 is prime to the 8 accents, so the first 104
speakers all have different (accent, variant) pairs."""
PHOTOS = ("astronaut",)
"""scikit-image photos used as faces. Its only other face, the cameraman (``camera``), is in three-quarter
profile: the mesh tracks it, but the full-range face detector of `geneface process` misses it in most framings."""

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She sells sea shells by the sea shore on a sunny morning in May.",
    "Peter Piper picked a peck of pickled peppers for his mother.",
    "A journey of a thousand miles begins with a single careful step.",
    "Bright colours make the old house look warm and welcoming again.",
    "We will meet at noon to discuss the plans for the new garden.",
    "Numbers like seven, eleven and forty two appear in many stories.",
    "Please open the window because the room is getting rather hot.",
    "Yesterday the wind blew the leaves across the empty parking lot.",
    "Good food and good friends make every evening feel much shorter.",
    "The library closes at nine, so bring the books back before then.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "Music fills the hall while the audience waits for the concert to begin.",
    "Every morning the baker wakes up early to prepare fresh bread and rolls.",
    "Thunder rolled over the hills as the children hurried home from school.",
    "My grandmother kept a small blue boat tied behind the old barn.",
    "Open the map and show me where the mountain road begins.",
    "The doctor said that a walk every day would do wonders.",
    "Fresh paint covered the fence before the summer party started.",
    "Who left the lights on in the kitchen all night long?",
    "Apples, pears and plums were piled high on the market stall.",
    "The pilot announced a short delay because of heavy fog.",
    "Bob bought a big bag of beans at the busy bazaar.",
    "Maybe we should move the meeting to Monday morning.",
    "Quiet voices echoed through the long marble corridor.",
    "I would rather read a book than watch the news tonight.",
    "The cat watched the mouse from behind the wooden chair.",
    "Seven swans swam slowly across the silver lake.",
    "Few people knew the answer to the final question.",
    "Please pass the pepper and the potatoes, Paul.",
    "Ice cream melts quickly on a hot afternoon in July.",
    "The orchestra played a joyful tune at the opening ceremony.",
    "Wet boots were lined up neatly by the front door.",
    "Our neighbour grows tomatoes, beans and tall yellow sunflowers.",
    "The train to the coast leaves at a quarter past eight.",
    "Mary made marmalade from the oranges in the garden.",
    "Why does the moon look bigger near the horizon?",
    "A gentle rain fell on the roofs of the sleepy village.",
    "The museum opens a new exhibition about ancient ships.",
    "Hold the rope tightly while I climb down the ladder.",
)
"""English sentences the clips say (each clip draws its own)."""


@dataclass(frozen=True)
class SpeakerStyle:
    """How synthetic speaker ``index`` sounds and looks (a pure function of index and seed)."""

    index: int
    voice: str
    """espeak-ng voice with variant, e.g. ``en-gb+m3``."""
    speed: int
    """Words per minute."""
    pitch: int
    """espeak-ng base pitch, 0-99."""
    photo: str
    """One of ``PHOTOS``."""
    mirror: bool
    hue: float
    """Hue shift, degrees."""
    saturation: float
    brightness: float
    rotate: float
    """Photo rotation, degrees."""
    zoom: float
    shear: float
    face_fraction: float
    """Width of the face over the frame side."""
    jaw_max_deg: float
    head_scale: float
    """Multiple of the generator's default head-motion amplitude."""


def speaker_style(index: int, seed: int = 0) -> SpeakerStyle:
    """The voice, face and manner of synthetic speaker ``index``."""
    rng = np.random.default_rng([seed, index, 7])
    return SpeakerStyle(
        index=index, voice=f"{ACCENTS[index % len(ACCENTS)]}+{VARIANTS[index % len(VARIANTS)]}",
        speed=int(125 + (index * 37) % 55), pitch=int(20 + (index * 29) % 60),
        photo=PHOTOS[index % len(PHOTOS)], mirror=bool(index % 2),
        hue=float(rng.uniform(-15, 15)), saturation=float(rng.uniform(0.6, 1.3)),
        brightness=float(rng.uniform(0.75, 1.15)), rotate=float(rng.uniform(-6, 6)),
        zoom=float(rng.uniform(0.92, 1.08)), shear=float(rng.uniform(-0.06, 0.06)),
        face_fraction=float(rng.uniform(0.36, 0.48)), jaw_max_deg=float(rng.uniform(10, 16)),
        head_scale=float(rng.uniform(0.5, 1.4)))


def styled_photo(style: SpeakerStyle) -> np.ndarray:
    """The speaker's face photo: RGB uint8 ``[H, W, 3]``, recoloured and slightly warped."""
    photo = as_rgb(getattr(skimage_data, style.photo)())
    if style.mirror:
        photo = photo[:, ::-1]
    hsv = cv2.cvtColor(np.ascontiguousarray(photo), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + style.hue / 2) % 180  # OpenCV hue is degrees / 2
    hsv[..., 1] = np.clip(hsv[..., 1] * style.saturation, 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * style.brightness, 0, 255)
    photo = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    h, w = photo.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), style.rotate, style.zoom)
    m[0, 1] += style.shear
    m[0, 2] -= style.shear * h / 2
    return cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def clip_text(speaker: int, clip: int, seed: int = 0, sentences: tuple[str, ...] = SENTENCES) -> str:
    """The sentences clip ``clip`` of speaker ``speaker`` says (two, drawn without repeats)."""
    rng = np.random.default_rng([seed, speaker, clip, 11])
    pick = rng.choice(len(sentences), size=min(2, len(sentences)), replace=False)
    return " ".join(sentences[i] for i in pick)


def _make_clip(args: tuple) -> dict:
    """Render clip ``j`` of speaker ``k`` (a task of :func:`make_corpus`); returns its row."""
    out, k, j, seconds, size, seed, sentences = args
    style = speaker_style(k, seed)
    path = Path(out) / f"speaker{k}" / f"clip{j}.mp4"
    text = clip_text(k, j, seed, sentences)
    row = {"path": path.relative_to(out).as_posix(), "speaker": f"speaker{k}", "voice": style.voice, "text": text}
    if truth_path(path).exists():  # finished by an earlier run (the truth is written last)
        return row
    audio = speak(text, voice=style.voice, speed=style.speed, pitch=style.pitch)
    amp = tuple(a * style.head_scale for a in SynthConfig.head_amplitude)
    config = SynthConfig(size=size, seconds=seconds, seed=seed * 100003 + k * 101 + j,
                         face_fraction=style.face_fraction, jaw_max_deg=style.jaw_max_deg, head_amplitude=amp,
                         progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(styled_photo(style), audio, config).write(path, crf=20)
    return row


@dataclass(frozen=True)
class CorpusConfig:
    """What `make_corpus` (and `geneface corpus synth`) makes."""

    speakers: int = opt(8, min=1, max=10_000)
    """Number of speakers (voices and faces)."""
    clips_per_speaker: int = opt(4, min=1, max=10_000, flag="clips")
    """Clips per speaker."""
    seconds: float = opt(4.0, above=0.0, max=600.0)
    """Length of a clip."""
    size: int = same_as(SynthConfig, "size")
    """Side of the square frames in pixels."""
    seed: int = opt(0, min=0, max=10_000)
    """Seed of the face variations, sentences and motion."""
    first_speaker: int = opt(0, min=0, max=1_000_000)
    """Index of the first speaker; speakers with other indices have other voices and faces."""
    workers: int = opt(1, min=1, max=MAX_WORKERS)
    """Processes rendering clips."""
    sentences: tuple[str, ...] = SENTENCES
    """English sentences the clips say (each clip draws two)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sentences", tuple(self.sentences))
        check_config(self)
        if not self.sentences:
            raise InputError("need at least one sentence")


def make_corpus(out: str | os.PathLike, config: CorpusConfig = CorpusConfig(), **settings) -> list[dict]:
    """Write ``out/speaker{K}/clip{J}.mp4`` (+ ``.truth.npz``) for speakers ``first_speaker ..`` and
    ``out/speakers.json``; returns one row per clip (path, speaker, voice, text). Finished clips are kept, so
    an interrupted call resumes. ``settings``: fields of `CorpusConfig` that replace ``config``'s
    (``make_corpus(out, speakers=2, clips_per_speaker=1)``). ``workers`` > 1 renders clips in that many processes.
    """
    c = replace(config, **settings)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; give a folder for the clips")
    tasks = [(str(out), k, j, c.seconds, c.size, c.seed, c.sentences)
             for k in range(c.first_speaker, c.first_speaker + c.speakers) for j in range(c.clips_per_speaker)]
    out.mkdir(parents=True, exist_ok=True)
    if c.workers > 1:
        with mp.get_context("spawn").Pool(c.workers) as pool:
            rows = pool.map(_make_clip, tasks, chunksize=1)
            pool.close()  # let the workers exit on their own (terminating them leaks their semaphores)
            pool.join()
    else:
        rows = [_make_clip(t) for t in tasks]
    styles = [asdict(speaker_style(k, c.seed)) for k in range(c.first_speaker, c.first_speaker + c.speakers)]
    write_json(out / "speakers.json", {"seed": c.seed, "seconds": c.seconds, "size": c.size, "speakers": styles,
                                       "clips": rows})
    return rows
