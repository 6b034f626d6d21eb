"""The frozen speech clips of the transcription requests: `loadtest/audio/*.flac` and `manifest.json`.

    uv run python -m loadtest.audio_clips            # rewrites the clips (Festival reads TEXTS, PyAV encodes)
    uv run python -m loadtest.audio_clips --check    # exit 1 when the files differ from the manifest

Locust imports this module too (`-f loadtest/` imports every `*.py` there), and the locustfile loads
the clips with `load_clips`, so the module level is stdlib only: the generator imports
infergraph.testing.speech (PyAV, numpy) only when it runs. The clips are committed (about 370 kB),
so a load test needs neither Festival nor PyAV.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AUDIO_DIR = Path(__file__).resolve().parent / "audio"
MANIFEST = "manifest.json"
SAMPLE_RATE = 16_000
# Short requests, as a voice assistant or a meeting-notes client sends them: about 2 to 9 s of speech.
TEXTS = {
    "lights": "Please turn off the lights in the kitchen.",
    "meeting": "The meeting has been moved to Thursday afternoon at three o'clock.",
    "weather": "The weather was cold and windy, so we stayed inside and read our books by the fire.",
    "report": (
        "Sales in the northern region grew by twelve percent last quarter, while costs stayed flat,"
        " and the team expects a similar result for the rest of the year."
    ),
}


@dataclass(frozen=True)
class Clip:
    name: str  # file name, e.g. "lights.flac"
    data: bytes
    duration_s: float
    text: str


def load_clips(directory: Path = AUDIO_DIR) -> list[Clip]:
    """The clips listed in the manifest, their bytes read once (stdlib only)."""
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    clips = [
        Clip(c["file"], (directory / c["file"]).read_bytes(), float(c["duration_s"]), c["text"])
        for c in manifest["clips"]
    ]
    if not clips:
        raise ValueError(f"no clips in {directory / MANIFEST}")
    return clips


def check(directory: Path = AUDIO_DIR) -> list[str]:
    """Files that are missing or differ from the manifest's digests."""
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    bad = []
    for c in manifest["clips"]:
        path = directory / c["file"]
        if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != c["sha256"]:
            bad.append(c["file"])
    return bad


def build(directory: Path = AUDIO_DIR) -> dict[str, Any]:
    from infergraph.testing.speech import encode, synthesize  # PyAV, numpy, Festival: not in Locust

    directory.mkdir(parents=True, exist_ok=True)
    clips = []
    for name, text in TEXTS.items():
        audio = synthesize(text)
        data = encode(audio, "flac", rate=SAMPLE_RATE)
        (directory / f"{name}.flac").write_bytes(data)
        clips.append(
            {
                "file": f"{name}.flac",
                "text": text,
                "duration_s": round(len(audio) / SAMPLE_RATE, 3),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    manifest: dict[str, Any] = {"voice": "festival us-slt", "format": "flac 16 kHz mono", "clips": clips}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=AUDIO_DIR)
    ap.add_argument("--check", action="store_true", help="verify the files against the manifest")
    args = ap.parse_args(argv)
    if args.check:
        bad = check(args.dir)
        print("ok" if not bad else f"differ from the manifest: {bad}")
        return 1 if bad else 0
    manifest = build(args.dir)
    for c in manifest["clips"]:
        print(f"{c['file']}: {c['duration_s']:.2f} s, {c['bytes']:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
