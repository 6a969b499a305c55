"""Regenerate the bundled default speech clip, ``geneface/assets/speech.flac``, with espeak-ng.

Run once by a maintainer (``python -m geneface.synth.make_default_speech``); the result is committed.
It is English speech from espeak-ng 1.51's ``en-us+f3`` voice at 150 words a minute, resampled to
16 kHz mono and stored as 16-bit FLAC (10.9 s, 216 KB).
"""

from __future__ import annotations

from pathlib import Path

from ..constants import AUDIO_RATE
from ..media import write_audio
from .speech import speak

TEXT = ("Hello! I am a talking head, made from a single photograph. "
        "My jaw, my lips and my eyes move along with this voice. "
        "Watch my mouth closely as I speak.")
VOICE = "en-us+f3"
SPEED = 150

ASSET = Path(__file__).resolve().parent.parent / "assets" / "speech.flac"


def main() -> None:
    audio = speak(TEXT, voice=VOICE, speed=SPEED)
    write_audio(ASSET, audio)
    ASSET.chmod(0o644)  # atomic writes create private temporary files; package data must be readable
    print(f"wrote {ASSET}: {len(audio) / AUDIO_RATE:.2f} s, {ASSET.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
