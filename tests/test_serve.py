"""`geneface serve` through Starlette's ASGI test client (and, where real sockets matter, uvicorn on a thread):
the page and every route, upload -> render job -> mp4, live sessions over the WebSocket (frames in order, one
per 40 ms of audio; disconnects; four at once), the safety rules (loopback, token, host and origin, upload
limits, names from requests never becoming paths) and a training job started, followed, cancelled, resumed
after a restart and finished, with its person then speaking and evaluated."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import cv2
import numpy as np
import pytest
import websockets
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from geneface import media
from geneface.cli import main
from geneface.errors import InputError
from geneface.infer.cli_demo import bundled_person, bundled_speech
from geneface.serve import ServeConfig, background, create_app
from geneface.serve.jobs import TRAIN_STAGES, _BarReader, _Tracker, train_config, train_stages
from geneface.serve import live as live_module
from geneface.serve.live import FLAG_AUDIO, FLAG_IDLE, FRAME_SAMPLES, HEADER
from geneface.serve.server import exposure_warning
from geneface.synth import SynthConfig, synthesize

HTTP = "http://127.0.0.1"
WS = "ws://127.0.0.1/api/live"
RATE = 16000
CHUNK = 320  # 20 ms
GENERATED = re.compile(r"[0-9a-f]{16}(\.[a-z0-9]+)?(\.json)?")
TRAIN_FAST = {"size": 64, "motion_preset": "tiny", "motion_steps": 6, "render_steps": 6, "device": "cpu"}


# --- helpers --------------------------------------------------------------------------------------------

def speech(seconds: float) -> np.ndarray:
    """The first ``seconds`` of the bundled speech (16 kHz mono float32)."""
    return media.read_audio(bundled_speech())[: int(seconds * RATE)].astype(np.float32)


def wav_bytes(tmp_path: Path, samples: np.ndarray, name: str = "speech.wav") -> bytes:
    path = tmp_path / name
    media.write_audio(path, samples)
    return path.read_bytes()


def refused(response, status: int, *words: str) -> str:
    """The response is a one-line JSON error with ``status`` (never a 500 or a traceback)."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    text = body["error"]
    assert text and "\n" not in text and "Traceback" not in text, text
    for word in words:
        assert word in text, text
    return text


def wait_job(client: TestClient, job_id: str, until=None, timeout: float = 120.0) -> dict:
    """Poll a job until it ends (or ``until(job)`` holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if (until(job) if until is not None else job["state"] not in ("queued", "running")):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not get there in {timeout} s: {job}")


def upload(client: TestClient, data: bytes, kind: str = "audio", name: str = "speech.wav") -> dict:
    r = client.post(f"/api/uploads?kind={kind}&name={name}", content=data)
    assert r.status_code == 201, r.text
    return r.json()


def files_outside(tmp_path: Path, work: Path) -> set[Path]:
    return {p for p in tmp_path.rglob("*") if work not in p.parents and p != work}


def frame_message(data: bytes, with_audio: bool) -> tuple[int, int, int, np.ndarray | None, bytes]:
    index, flags, audio_end = HEADER.unpack_from(data)
    at = HEADER.size
    audio = None
    if with_audio:
        audio = np.frombuffer(data[at: at + FRAME_SAMPLES * 4], "<f4")
        at += FRAME_SAMPLES * 4
    return index, flags, audio_end, audio, data[at:]


def live_session(ws, samples: np.ndarray, audio: bool = False) -> tuple[dict, list, dict]:
    """Start (no idle frames), send ``samples`` in 20 ms chunks, stop; (ready, frames, end message)."""
    ws.send_text(json.dumps({"type": "start", "person": "demo", "idle": False, "audio": audio, "drop_late": False,
                             "controls": {"temperature": 0.0, "pose": "still"}}))
    ready = ws.receive_json()
    assert ready["type"] == "ready", ready
    for at in range(0, len(samples), CHUNK):
        ws.send_bytes(samples[at: at + CHUNK].astype("<f4").tobytes())
    frames = []
    # frames come before the end of the utterance: all but the stream's look-ahead, without a flush
    early = max(0, len(samples) // FRAME_SAMPLES - ready["delay_frames"])
    while len(frames) < early:
        message = ws.receive()
        if message.get("bytes") is not None:
            frames.append(frame_message(message["bytes"], audio))
    ws.send_text(json.dumps({"type": "stop"}))
    while True:
        message = ws.receive()
        assert message["type"] == "websocket.send", message
        if message.get("bytes") is not None:
            frames.append(frame_message(message["bytes"], audio))
            continue
        text = json.loads(message["text"])
        assert text["type"] in ("stats", "end"), text
        if text["type"] == "end":
            return ready, frames, text


def live_refused(client: TestClient, *messages, first: str | None = None) -> str:
    """Send ``messages`` (text or bytes); the server answers an error and closes; returns the error."""
    with client.websocket_connect(WS) as ws:
        if first is not None:
            ws.send_text(first)
            assert ws.receive_json()["type"] == "ready"
        for m in messages:
            (ws.send_bytes if isinstance(m, bytes) else ws.send_text)(m)
        while True:
            message = ws.receive()
            if message["type"] == "websocket.close":
                raise AssertionError("closed without an error message")
            if message.get("text") is not None:
                text = json.loads(message["text"])
                if text["type"] == "error":
                    closing = ws.receive()
                    assert closing["type"] == "websocket.close" and closing["code"] in (1008, 1013), closing
                    assert "\n" not in text["message"] and "Traceback" not in text["message"]
                    return text["message"]


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


# --- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One app for most tests (its work folder under a temporary folder): (client, app, root)."""
    root = tmp_path_factory.mktemp("serve")
    app = create_app(ServeConfig(work=root / "work", device="cpu", max_audio_mb=1, max_video_mb=2))
    with TestClient(app, base_url=HTTP) as client:
        yield client, app, root


@pytest.fixture(scope="module")
def client(served) -> TestClient:
    return served[0]


@pytest.fixture(scope="module")
def person_video(tmp_path_factory) -> Path:
    """A 3 s, 128 px synthetic talking head to train on."""
    out = tmp_path_factory.mktemp("video") / "person.mp4"
    synthesize(out, config=SynthConfig(size=128, seconds=3.0, seed=0))
    return out


# --- the page and the routes ----------------------------------------------------------------------------

def test_page_and_its_files_come_from_the_app(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    page = r.text
    for tab in ("Speak", "Live", "Train", "Evaluate"):
        assert f'data-tab="{tab.lower()}"' in page and tab in page
    types = {"app.js": "javascript", "style.css": "text/css", "capture.js": "javascript"}
    for name, kind in types.items():
        f = client.get(f"/static/{name}")
        assert f.status_code == 200 and kind in f.headers["content-type"], name
        assert f.headers["x-content-type-options"] == "nosniff"
        # nothing from elsewhere: no absolute addresses, no imports from another site
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", f.text), name
        assert "@import" not in f.text and "cdn" not in f.text.lower(), name
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    refs = re.findall(r"(?:src|href)=\"([^\"#]+)\"", page)
    assert refs and all(ref.startswith("/static/") for ref in refs), refs
    refused(client.get("/static/nothing.js"), 404)
    refused(client.get("/static/../store.py"), 404)


def test_the_page_ships_in_the_package():
    """pyproject.toml's package data takes every file of serve/static (a wheel without them serves no page)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["geneface"]
    static = root / "src" / "geneface" / "serve" / "static"
    names = sorted(p.relative_to(static.parent.parent).as_posix() for p in static.iterdir())
    assert {"serve/static/index.html", "serve/static/app.js", "serve/static/style.css"} <= set(names)
    for name in names:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_api_lists_routes_info_people_and_example_speech(client):
    routes = client.get("/api").json()["routes"]
    assert {"method": "WS", "path": "/api/live"}.items() <= routes[-1].items()
    assert len(routes) >= 15
    info = client.get("/api/info").json()
    assert info["limits"]["audio_mb"] == 1 and info["live"]["active"] == 0
    assert "mel" in info["train"]["features"] and "tiny" in info["train"]["motion_presets"]
    people = client.get("/api/people").json()["people"]
    demo = people[0]
    assert demo["id"] == "demo" and demo["bundled"] and demo["size"] == 512 and demo["fps"] == 25
    assert not demo["evaluable"] and "path" not in demo
    r = client.get("/api/example-speech")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/flac" and r.content[:4] == b"fLaC"
    assert isinstance(client.get("/api/jobs").json()["jobs"], list)
    refused(client.get("/api/nothing"), 404, "/api/nothing")
    refused(client.delete("/api/people"), 405, "DELETE")
    refused(client.get("/api/speak"), 405)


def test_people_folder_lists_person_models_and_refuses_links_and_odd_names(tmp_path):
    people = tmp_path / "people"
    (people / "bad").mkdir(parents=True)
    (people / "bad" / "person.json").write_text("{not json")
    (people / "notyet").mkdir()  # a training folder: no person.json
    (people / "link").symlink_to(bundled_person())
    (people / ".hidden").mkdir()
    app = create_app(ServeConfig(work=tmp_path / "work", people=people, device="cpu"))
    with TestClient(app, base_url=HTTP) as client:
        listed = {p["id"]: p for p in client.get("/api/people").json()["people"]}
        assert set(listed) == {"demo", "bad"}
        assert listed["bad"]["problem"]
        refused(client.post("/api/speak", json={"person": "bad", "example": True}), 400, "bad")
        refused(client.post("/api/speak", json={"person": "link", "example": True}), 404)
        refused(client.post("/api/speak", json={"person": "notyet", "example": True}), 404)


# --- uploads and render jobs ----------------------------------------------------------------------------

def test_upload_render_job_makes_an_mp4_with_the_audio(client, tmp_path):
    seconds = 1.5
    record = upload(client, wav_bytes(tmp_path, speech(seconds)), name="my speech.wav")
    assert record["kind"] == "audio" and record["name"] == "my speech.wav" and record["seconds"] == seconds
    assert GENERATED.fullmatch(record["id"])
    r = client.post("/api/speak", json={"person": "demo", "audio": record["id"],
                                        "controls": {"temperature": 0.0, "pose": "still", "blink": "off"}})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    assert job["progress"] == 1.0 and job["result"]["frames"] == round(seconds * 25)
    video = client.get(job["result"]["video"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.headers["content-disposition"].startswith("inline")
    path = tmp_path / "out.mp4"
    path.write_bytes(video.content)
    info = media.probe(path)
    assert (info.width, info.height) == (512, 512) and info.has_audio
    assert abs(info.duration - seconds) <= 0.05
    assert len(list(media.read_video(path))) == round(seconds * 25)
    assert abs(len(media.read_audio(path)) / RATE - seconds) <= 0.05
    download = client.get(f"{job['result']['video']}?download=1")
    assert download.headers["content-disposition"].startswith("attachment") and "demo-" in download.headers[
        "content-disposition"]
    listed = client.get("/api/jobs").json()["jobs"]
    assert any(j["id"] == job["id"] for j in listed)
    refused(client.get(f"/api/jobs/{job['id']}/report"), 404, "no report")


def test_multipart_upload_and_side_by_side_render(client, tmp_path):
    data = wav_bytes(tmp_path, speech(1.0))
    r = client.post("/api/uploads?kind=audio", files={"file": ("from a form.wav", data, "audio/wav")})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "from a form.wav"
    job = client.post("/api/speak", json={"person": "demo", "audio": r.json()["id"],
                                          "controls": {"side_by_side": True, "seed": 3, "mouth_scale": 1.5}}).json()
    job = wait_job(client, job["id"])
    assert job["state"] == "done" and job["result"]["size"] == [1024, 512], job


@pytest.mark.espeak
def test_typed_text_is_spoken(client):
    job = client.post("/api/speak", json={"person": "demo", "text": "Hi there."}).json()
    job = wait_job(client, job["id"])
    assert job["state"] == "done", job
    assert job["result"]["frames"] > 10


def test_a_render_can_be_cancelled_and_resumed(client):
    job = client.post("/api/speak", json={"person": "demo", "example": True}).json()  # 10.9 s: 272 frames
    running = wait_job(client, job["id"], until=lambda j: j["state"] != "queued")
    assert running["state"] in ("running", "done")
    cancelled = client.post(f"/api/jobs/{job['id']}/cancel").json()
    job = wait_job(client, job["id"])
    assert job["state"] == "cancelled" and job["resumable"], job
    refused(client.get(f"/api/jobs/{job['id']}/video"), 404, "cancelled")
    assert cancelled["id"] == job["id"]
    again = client.post(f"/api/jobs/{job['id']}/resume")
    assert again.status_code == 202 and again.json()["state"] in ("queued", "running")
    client.post(f"/api/jobs/{job['id']}/cancel")
    assert wait_job(client, job["id"])["state"] == "cancelled"
    refused(client.post("/api/jobs/0000000000000000/resume"), 404, "no job")


# --- bad input: a message, never a 500, never a path outside the work folder ---------------------------

BAD_NAMES = ["../../../x", "/etc/passwd", "demo\x00", "a\x00b", "x" * 5000, "..", ".", "", "demo/../demo", "~root",
             "C:\\Windows", "%2e%2e%2f"]


def test_bad_uploads_are_messages(served, tmp_path):
    client, app, root = served
    work = app.state.work.root
    before = files_outside(root, work)
    refused(client.post("/api/uploads?kind=audio", content=b""), 400, "empty")
    refused(client.post("/api/uploads?kind=audio&name=noise.wav", content=b"RIFF" + b"\x01" * 3000), 400,
            "noise.wav")
    refused(client.post("/api/uploads?kind=video&name=v.mp4", content=b"\x00" * 3000), 400, "v.mp4")
    refused(client.post("/api/uploads?kind=video&name=a.wav", content=wav_bytes(tmp_path, speech(1.0))), 400,
            "no video")
    refused(client.post("/api/uploads?kind=audio&name=silence.wav", content=wav_bytes(tmp_path, np.zeros(RATE))),
            400, "silent")
    refused(client.post("/api/uploads?kind=audio&name=short.wav", content=wav_bytes(tmp_path, speech(0.1))), 400,
            "too short")
    refused(client.post("/api/uploads?kind=program", content=b"x"), 400, "kind")
    big = b"\x00" * (1024 * 1024 + 100 * 1024)
    refused(client.post("/api/uploads?kind=audio&name=big.wav", content=big), 413, "1 MB", "--max-audio-mb")
    refused(client.post("/api/uploads?kind=audio", content=iter([big])), 413, "--max-audio-mb")  # no length
    refused(client.post("/api/uploads?kind=video", content=b"\x00" * (3 * 1024 * 1024)), 413, "--max-video-mb")
    refused(client.post("/api/uploads?kind=audio", files={"other": (None, "text")}), 400, "no file")
    refused(client.post("/api/uploads?kind=audio", content=b"--x\r\nbroken",
                        headers={"content-type": "multipart/form-data"}), 400, "boundary")
    # names from the request are display names only: the files get generated names inside the work folder
    data = wav_bytes(tmp_path, speech(1.0))
    for name in BAD_NAMES + ["../../../outside.wav", "/tmp/abs.wav", "ok.wav\x00.sh"]:
        r = client.post("/api/uploads", params={"kind": "audio", "name": name}, content=data)
        assert r.status_code == 201, (name, r.text)
        shown = r.json()["name"]
        assert "/" not in shown and "\x00" not in shown and len(shown) <= 120, shown
    r = client.post("/api/uploads?kind=audio", headers={"x-filename": "../../h.wav"}, content=data)
    assert r.status_code == 201 and r.json()["name"] == "h.wav"
    for path in (work / "uploads").iterdir():
        assert GENERATED.fullmatch(path.name), path.name
    assert files_outside(root, work) == before
    assert not list(Path("/tmp").glob("abs.wav*"))


def test_bad_requests_are_messages(served, tmp_path):
    client, app, root = served
    work = app.state.work.root
    before = files_outside(root, work)
    audio = upload(client, wav_bytes(tmp_path, speech(1.0)))["id"]
    for name in BAD_NAMES + [5, None, ["demo"], {"a": 1}]:
        r = client.post("/api/speak", json={"person": name, "example": True})
        assert r.status_code in (400, 404), (name, r.text)
        refused(r, r.status_code)
        r = client.post("/api/evaluate", json={"person": name})
        refused(r, r.status_code)
        if isinstance(name, str):
            refused(client.post("/api/train", json={"name": name, "path": "/nonexistent.mp4"}), 400)
            routes = ("", "/video", "/report", "/cancel", "/files/report.md")
            for route in routes if name not in ("", ".", "..", "%2e%2e%2f") else ():  # the client rewrites those
                method = client.post if route == "/cancel" else client.get
                r = method(f"/api/jobs/{quote(name, safe='')}{route}")
                assert r.status_code in (400, 404, 405), (name, route, r.text)
                refused(r, r.status_code)
            r = client.post("/api/speak", json={"person": "demo", "audio": name})
            refused(r, r.status_code)
    speak = lambda body: client.post("/api/speak", json=body)  # noqa: E731
    refused(speak({"person": "demo"}), 400, "exactly one")
    refused(speak({"person": "demo", "example": True, "text": "hi"}), 400, "exactly one")
    refused(speak({"person": "demo", "audio": audio, "controls": {"volume": 2}}), 400, "unknown control")
    refused(speak({"person": "demo", "audio": audio, "controls": {"temperature": -1}}), 400, "temperature")
    refused(speak({"person": "demo", "audio": audio, "controls": {"temperature": "hot"}}), 400, "temperature")
    refused(speak({"person": "demo", "audio": audio, "controls": {"seed": 1.5}}), 400, "seed")
    refused(speak({"person": "demo", "audio": audio, "controls": {"pose": "/etc/passwd"}}), 400, "pose")
    refused(speak({"person": "demo", "audio": audio, "controls": {"side_by_side": "yes"}}), 400, "side_by_side")
    refused(speak({"person": "demo", "audio": audio, "controls": []}), 400, "controls")
    refused(speak({"person": "demo", "example": "yes"}), 400, "example")
    refused(speak({"person": "demo", "text": ""}), 400, "empty")
    refused(speak({"person": "demo", "text": "a" * 6000}), 400, "5000")
    refused(speak({"person": "demo", "text": "a\x00b"}), 400, "NUL")
    refused(speak({"person": "demo", "example": True, "extra": 1}), 400, "unknown field")
    r = client.post("/api/speak", content=b'{"person": "demo", "controls": {"temperature": NaN}, "example": true}',
                    headers={"content-type": "application/json"})
    refused(r, 400, "temperature")
    refused(client.post("/api/speak", content=b"{nope"), 400, "JSON")
    refused(client.post("/api/speak", content=b"\xff\xfe"), 400, "JSON")
    refused(client.post("/api/speak", json=[1, 2]), 400, "object")
    refused(client.post("/api/speak", content=b" " * (70 * 1024)), 413, "KB")
    video = upload(client, wav_bytes(tmp_path, speech(1.0)), name="x.wav")["id"]
    refused(client.post("/api/train", json={"name": "ok", "video": video}), 400, "not video")
    refused(client.post("/api/train", json={"name": "ok", "path": "relative/video.mp4"}), 400, "absolute")
    refused(client.post("/api/train", json={"name": "ok", "path": "/no/such/video.mp4"}), 400, "no video file")
    refused(client.post("/api/train", json={"name": "ok", "path": "/etc/x\x00.mp4"}), 400)
    refused(client.post("/api/train", json={"name": "ok"}), 400, "upload id")
    refused(client.post("/api/train", json={"name": "demo", "path": "/no/video.mp4"}), 400, "demo")
    refused(client.post("/api/train", json={"name": "ok", "path": "/x.mp4", "settings": {"steps": 1}}), 400,
            "unknown setting")
    refused(client.post("/api/train", json={"name": "ok", "path": "/x.mp4", "settings": {"size": 7}}), 400, "size")
    refused(client.post("/api/train", json={"name": "ok", "path": "/x.mp4",  # not 1, 2 or 4 times
                                            "settings": {"size": 100, "render_size": 30}}), 400, "render-size")
    refused(client.post("/api/evaluate", json={"person": "demo"}), 400, "no dataset")
    refused(client.post("/api/evaluate", json={"person": "demo", "audio": "x"}), 400, "list")
    refused(client.post("/api/evaluate", json={"person": "demo", "frames": "many"}), 400)
    assert files_outside(root, work) == before
    assert not (work / "people").exists() or all(p.name != "ok" for p in (work / "people").iterdir())


# --- safety: host, token, origin -----------------------------------------------------------------------

def test_loopback_by_default_and_other_hosts_need_a_token_or_no_token():
    assert ServeConfig().host == "127.0.0.1" and ServeConfig().loopback
    assert exposure_warning(ServeConfig()) is None
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(InputError, match="--token"):
            ServeConfig(host=host)
        warning = exposure_warning(ServeConfig(host=host, no_token=True))
        assert warning and "without a token" in warning
        assert "need the token" in exposure_warning(ServeConfig(host=host, token="s3cret-token"))
    assert ServeConfig(host="::1").loopback and ServeConfig(host="localhost").loopback
    with pytest.raises(InputError, match="8 characters"):
        ServeConfig(token="short")
    with pytest.raises(InputError, match="not both"):
        ServeConfig(token="long enough", no_token=True)
    with pytest.raises(InputError, match="--host"):
        ServeConfig(host="a\x00b")


def test_cli_refuses_an_open_host_without_a_token(capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host 0.0.0.0") and "--token" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    assert "--people" in capsys.readouterr().out


def test_cli_warns_when_serving_other_machines(tmp_path):
    """`geneface serve --host 0.0.0.0 --no-token` prints a warning, then the address, and serves."""
    proc = subprocess.Popen([sys.executable, "-m", "geneface.cli", "serve", "--host", "0.0.0.0", "--no-token",
                             "--port", "0", "--work", str(tmp_path / "work"), "--device", "cpu"],
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("geneface serve: http://"):
                break
        text = "".join(lines)
        assert "warning: --host 0.0.0.0: other machines can reach this app" in text, text
        assert "geneface serve: http://" in text, text
    finally:
        proc.terminate()
        proc.wait(30)


def test_token_host_and_origin_are_checked(tmp_path):
    token = "correct-horse-battery"
    app = create_app(ServeConfig(work=tmp_path / "work", device="cpu", token=token))
    with TestClient(app, base_url=HTTP) as client:
        refused(client.get("/api/info"), 401, "token")
        refused(client.get("/"), 401)
        refused(client.get("/api/info", params={"token": "wrong-token-x"}), 401)
        refused(client.get("/api/info", headers={"Authorization": "Bearer wrong"}), 401)
        assert client.get("/api/info", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        page = client.get("/", params={"token": token})
        assert page.status_code == 200 and "geneface_token" in page.headers["set-cookie"]
        assert "httponly" in page.headers["set-cookie"].lower()
        assert client.get("/api/info").status_code == 200  # the cookie the page got
        client.cookies.clear()
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect(WS):
                pass
        with client.websocket_connect(f"{WS}?token={token}") as ws:
            ws.send_text(json.dumps({"type": "start", "person": "demo"}))
            assert ws.receive_json()["type"] == "ready"
    app = create_app(ServeConfig(work=tmp_path / "work2", device="cpu"))
    with TestClient(app, base_url=HTTP) as client:
        refused(client.get("/api/info", headers={"host": "evil.example"}), 403, "localhost")
        assert client.get("/api/info", headers={"host": "localhost:7860"}).status_code == 200
        refused(client.post("/api/speak", json={"example": True}, headers={"origin": "http://evil.example"}), 403,
                "another site")
        assert client.get("/api/info", headers={"origin": "http://evil.example"}).status_code == 200  # reads only
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect(WS, headers={"origin": "http://evil.example"}):
                pass
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect("ws://evil.example/api/live"):
                pass


# --- live -----------------------------------------------------------------------------------------------

def test_live_session_gives_one_frame_per_40_ms_in_order(client, served):
    samples = speech(3.0)[: 3 * RATE - 200]  # not a whole number of frames: the last one is padded
    with client.websocket_connect(WS) as ws:
        ready, frames, end = live_session(ws, samples, audio=True)
    assert ready["fps"] == 25 and ready["size"] == 128 and ready["sample_rate"] == RATE
    assert ready["frame_samples"] == FRAME_SAMPLES and ready["audio"] is True
    count = -(-len(samples) // FRAME_SAMPLES)
    assert [f[0] for f in frames] == list(range(count))
    assert end["frames"] == count and end["dropped"] == 0 and end["audio_seconds"] == round(len(samples) / RATE, 3)
    ends = [f[2] for f in frames]
    assert ends == [min((i + 1) * FRAME_SAMPLES, len(samples)) for i in range(count)]
    assert all(f[1] & FLAG_AUDIO and not f[1] & FLAG_IDLE for f in frames)
    for index, _, _, audio, jpeg in frames:
        expected = samples[index * FRAME_SAMPLES: (index + 1) * FRAME_SAMPLES]
        np.testing.assert_allclose(audio[: len(expected)], expected, atol=1e-6)
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (128, 128, 3)
    assert image.std() > 5  # a face, not a blank frame
    wait_until(lambda: served[1].state.live.active == 0)


def test_live_flush_interrupt_and_idle_frames(client):
    with client.websocket_connect(WS) as ws:
        ws.send_text(json.dumps({"type": "start", "person": "demo", "idle": True, "drop_late": False}))
        ready = ws.receive_json()
        samples = speech(1.0)
        for at in range(0, len(samples), CHUNK):
            ws.send_bytes(samples[at: at + CHUNK].astype("<f4").tobytes())
        ws.send_text(json.dumps({"type": "flush"}))
        frames = []
        while len(frames) < 25 + 10:  # the utterance's 25 frames, then idle frames from the server's clock
            message = ws.receive()
            if message.get("bytes") is not None:
                frames.append(frame_message(message["bytes"], False))
        indices = [f[0] for f in frames]
        assert indices == sorted(indices) and len(set(indices)) == len(indices)
        assert not any(f[1] & FLAG_IDLE for f in frames[:25]) and all(f[1] & FLAG_IDLE for f in frames[25:])
        assert all(f[2] == len(samples) for f in frames[24:])
        for at in range(0, len(samples), CHUNK):
            ws.send_bytes(samples[at: at + CHUNK].astype("<f4").tobytes())
        ws.send_text(json.dumps({"type": "interrupt"}))
        ws.send_text(json.dumps({"type": "stop"}))
        while True:
            message = ws.receive()
            if message.get("text") is not None and json.loads(message["text"])["type"] == "end":
                break
    assert ready["idle"] is True


def test_live_client_that_disconnects_frees_its_session(served):
    client, app, _ = served
    live = app.state.live
    for _ in range(3):
        with client.websocket_connect(WS) as ws:
            ws.send_text(json.dumps({"type": "start", "person": "demo"}))
            assert ws.receive_json()["type"] == "ready"
            assert live.active == 1
            samples = speech(1.0)
            for at in range(0, len(samples), CHUNK):
                ws.send_bytes(samples[at: at + CHUNK].astype("<f4").tobytes())
            ws.receive()  # frames are flowing; now the client goes away without a word
            ws.close(1001)
            wait_until(lambda: live.active == 0)
    with client.websocket_connect(WS) as ws:
        ws.close(1001)  # gone before its start message
        wait_until(lambda: live.active == 0)


def test_live_bad_input_is_a_message_and_frees_the_session(served):
    client, app, _ = served
    start = json.dumps({"type": "start", "person": "demo"})
    assert "first message" in live_refused(client, b"\x00" * 64)
    assert "JSON" in live_refused(client, "{not json")
    assert "first message" in live_refused(client, json.dumps({"type": "flush"}))
    for name in BAD_NAMES[:6] + [5]:
        assert "person" in live_refused(client, json.dumps({"type": "start", "person": name}))
    assert "unknown control" in live_refused(client, json.dumps({"type": "start", "controls": {"volume": 1}}))
    assert "unknown field" in live_refused(client, json.dumps({"type": "start", "path": "/etc"}))
    assert "temperature" in live_refused(client, json.dumps({"type": "start", "controls": {"temperature": -3}}))
    assert "quality" in live_refused(client, json.dumps({"type": "start", "quality": 1000}))
    assert "4 bytes" in live_refused(client, b"\x00" * 7, first=start)
    assert "NaN" in live_refused(client, np.array([0.1, np.nan], "<f4").tobytes(), first=start)
    assert "unknown message type" in live_refused(client, json.dumps({"type": "dance"}), first=start)
    assert "at most" in live_refused(client, "x" * 5000, first=start)
    assert "at most" in live_refused(client, b"\x00" * ((1 << 20) + 4), first=start)
    wait_until(lambda: app.state.live.active == 0)


def test_live_sessions_beyond_the_limit_are_refused(tmp_path):
    app = create_app(ServeConfig(work=tmp_path / "work", device="cpu", max_live=1))
    with TestClient(app, base_url=HTTP) as client:
        with client.websocket_connect(WS) as first:
            first.send_text(json.dumps({"type": "start", "person": "demo"}))
            assert first.receive_json()["type"] == "ready"
            assert "--max-live" in live_refused(client, json.dumps({"type": "start", "person": "demo"}))
        wait_until(lambda: app.state.live.active == 0)
        with client.websocket_connect(WS) as again:
            again.send_text(json.dumps({"type": "start", "person": "demo"}))
            assert again.receive_json()["type"] == "ready"


def test_a_render_process_that_dies_ends_its_sessions_with_a_message(tmp_path):
    """A killed render process: the session gets an error message and is closed (no hang); the next session
    gets fresh processes; the server's shutdown stops them."""
    before = set(multiprocessing.active_children())
    app = create_app(ServeConfig(work=tmp_path / "work", device="cpu", live_workers=2))
    with TestClient(app, base_url=HTTP) as client:
        with client.websocket_connect(WS) as ws:
            ws.send_text(json.dumps({"type": "start", "person": "demo", "idle": True}))  # idle frames keep coming
            assert ws.receive_json()["type"] == "ready"
            first = set(multiprocessing.active_children()) - before
            assert len(first) == 2
            os.kill(next(iter(first)).pid, signal.SIGKILL)
            error = None
            while (message := ws.receive())["type"] != "websocket.close":
                if message.get("text") is not None and json.loads(message["text"])["type"] == "error":
                    error = json.loads(message["text"])["message"]
            assert message["code"] == 1011 and "render process stopped" in error, message
        wait_until(lambda: app.state.live.active == 0)
        with client.websocket_connect(WS) as ws:
            ws.send_text(json.dumps({"type": "start", "person": "demo", "idle": True}))
            assert ws.receive_json()["type"] == "ready"
            while ws.receive().get("bytes") is None:  # frames again
                pass
            second = set(multiprocessing.active_children()) - before
            assert len(second) == 2 and not second & first
    wait_until(lambda: not set(multiprocessing.active_children()) & second)


def test_a_session_sharing_the_renderers_renders_smaller_while_behind(monkeypatch):
    """Behind by more than REDUCE_AFTER_S with other sessions on: a size down each second (to half); caught up
    for RESTORE_AFTER_S: a size up; alone: always the full size."""
    clock = [100.0]
    monkeypatch.setattr(live_module.time, "monotonic", lambda: clock[0])
    live = SimpleNamespace(active=4, executor=None, renderers=SimpleNamespace(processes=2))
    stream = SimpleNamespace(fps=25.0, size=128)
    session = live_module.Session("s", None, live, Path("demo"), stream, live_module.Start("demo", None))
    sizes = []
    for t, behind in [(0, True), (0.5, True), (1.2, True), (2.5, True), (3, False), (7, False), (8.5, False),
                      (13.4, False), (13.6, False)]:
        clock[0] = 100.0 + t
        session.queued = int((live_module.REDUCE_AFTER_S + 0.1) * RATE) if behind else 0
        session._rescale()
        sizes.append(session.render_size)
    assert sizes == [96, 96, 64, 64, 64, 64, 96, 96, 128]
    session.queued = RATE
    session._rescale()
    assert session.render_size == 128  # a second after the last change at the soonest
    clock[0] += 1.1
    session._rescale()
    assert session.render_size == 96
    live.active = 1
    session._rescale()
    assert session.render_size == 128


async def _stream_over_socket(url: str, samples: np.ndarray, paced: bool) -> tuple[list[int], dict]:
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "start", "person": "demo", "idle": False}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert ready["type"] == "ready", ready
        t0 = time.monotonic()
        for k, at in enumerate(range(0, len(samples), CHUNK)):
            if paced:
                await asyncio.sleep(max(0.0, t0 + k * CHUNK / RATE - time.monotonic()))
            await ws.send(samples[at: at + CHUNK].astype("<f4").tobytes())
        await ws.send(json.dumps({"type": "stop"}))
        indices = []
        while True:
            message = await asyncio.wait_for(ws.recv(), 120)
            if isinstance(message, bytes):
                indices.append(HEADER.unpack_from(message)[0])
            elif json.loads(message)["type"] == "end":
                return indices, json.loads(message)


def test_four_live_sessions_at_once_over_real_sockets(tmp_path):
    """Uvicorn on a thread, four `websockets` clients streaming 2 s each in real time: every session ends with
    its frames in order; what the server could not keep up with is counted as dropped, never lost silently."""
    samples = speech(2.0)
    with background(ServeConfig(work=tmp_path / "work", device="cpu", port=0)) as server:
        url = server.url.replace("http://", "ws://").rstrip("/") + "/api/live"

        async def all_four():
            return await asyncio.gather(*[_stream_over_socket(url, samples, paced=True) for _ in range(4)])

        results = asyncio.run(all_four())
        app = server.server.config.app
        wait_until(lambda: app.state.live.active == 0)
    for indices, end in results:
        assert indices == list(range(len(indices))) and end["frames"] == len(indices)
        # every 40 ms of audio became a frame or was dropped to keep up
        assert len(indices) + end["dropped"] == pytest.approx(len(samples) / FRAME_SAMPLES, abs=2), end


# --- training, resuming after a restart, the new person ------------------------------------------------

def test_training_progress_is_read_from_the_log_and_progress_bars(tmp_path):
    """What a training process writes to progress.json, from `train_person`'s log lines and tqdm's bars."""
    tracker = _Tracker(tmp_path / "progress.json", TRAIN_STAGES[:-1])  # no super-resolution
    bars = _BarReader(tracker)
    tracker.log("== process: people/me/data")
    time.sleep(0.3)  # progress.json is written at most 4 times a second (log lines always)
    bars.write("track:  40%|####      | 30/75 [00:01<00:02, 20.0frame/s]\r")
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["stages"][0] == {"name": "process", "state": "running", "step": "track", "n": 30, "total": 75,
                                     "elapsed": 1.0, "left": 2.0}
    assert progress["detail"] == "process: track 30/75" and progress["progress"] == pytest.approx(0.4 / 3)
    tracker.log("== train motion: people/me/motion")
    time.sleep(0.3)
    bars.write("syncnet:  10%|#         | 150/1500 [01:05<09:45,  2.3step/s]\n")
    time.sleep(0.3)
    bars.write("generator:   0%|          | 0/1500 [00:00<?, ?step/s]\r")
    progress = json.loads((tmp_path / "progress.json").read_text())
    process, motion, render = progress["stages"]
    assert process["state"] == "done" and process["n"] == 75
    assert motion["state"] == "running" and motion["step"] == "generator" and motion["left"] is None
    assert render["state"] == "waiting" and progress["progress"] == pytest.approx(1 / 3)
    tracker.log("train render: people/me/render is already trained; skipping")
    tracker.finish(True)
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert [s["state"] for s in progress["stages"]] == ["done", "done", "skipped"] and progress["progress"] == 1


def test_the_super_resolution_stage_is_shown_when_there_is_one(tmp_path):
    """A training job lists the ``sr`` stage only when the output is larger than the renderer's, and the log
    line that starts it moves the progress there."""
    assert train_stages(train_config({"size": 512, "render_size": 128})) == TRAIN_STAGES
    assert train_stages(train_config({"size": 128, "device": "cpu"})) == ("process", "motion", "render")
    tracker = _Tracker(tmp_path / "progress.json", TRAIN_STAGES)
    for stage in ("process", "train motion", "train render", "train sr"):
        tracker.log(f"== {stage}: people/me/{stage.split()[-1]}")
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert [s["state"] for s in progress["stages"]] == ["done", "done", "done", "running"]
    assert progress["detail"] == "sr" and progress["progress"] == pytest.approx(3 / 4)


def test_train_job_progress_cancel_restart_resume(tmp_path, person_video):
    work = tmp_path / "work"
    config = ServeConfig(work=work, device="cpu")
    slow = dict(TRAIN_FAST, motion_steps=100_000)
    with TestClient(create_app(config), base_url=HTTP) as client:
        video = upload(client, person_video.read_bytes(), kind="video", name="person.mp4")
        assert video["kind"] == "video" and video["seconds"] == pytest.approx(3.0, abs=0.1)
        r = client.post("/api/train", json={"name": "alice", "video": video["id"], "settings": slow})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["kind"] == "train" and job["state"] == "running"
        refused(client.post("/api/train", json={"name": "bob", "video": video["id"], "settings": slow}), 409,
                "one training at a time")
        running = wait_job(client, job["id"], timeout=90, until=lambda j: j["state"] != "running" or any(
            s["name"] == "motion" and s["state"] == "running" and s.get("n", 0) > 0 for s in j["stages"]))
        assert running["state"] == "running", running
        stages = {s["name"]: s for s in running["stages"]}
        assert stages["process"]["state"] == "done" and stages["render"]["state"] == "waiting"
        assert stages["motion"]["total"] > 0 and 0 < running["progress"] < 1 and running["detail"]
    # the server stopped (the test client's lifespan ended): the training was interrupted, with a checkpoint
    with TestClient(create_app(config), base_url=HTTP) as client:
        job = client.get(f"/api/jobs/{job['id']}").json()
        assert job["state"] == "interrupted" and job["resumable"], job
        assert client.post(f"/api/jobs/{job['id']}/resume").json()["state"] == "running"
        wait_job(client, job["id"], timeout=90, until=lambda j: j["state"] != "running" or any(
            s["name"] == "motion" and s["state"] == "running" for s in j["stages"]))
        client.post(f"/api/jobs/{job['id']}/cancel")
        job = wait_job(client, job["id"], timeout=90)
        assert job["state"] == "cancelled" and job["resumable"], job
        assert "alice" not in {p["id"] for p in client.get("/api/people").json()["people"]}


def test_train_a_person_that_then_speaks_and_is_evaluated(tmp_path, person_video):
    """A tiny training (about 15 s) from a video on the server; the person is listed, renders, and evaluates
    with a report and plots."""
    with TestClient(create_app(ServeConfig(work=tmp_path / "work", device="cpu")), base_url=HTTP) as client:
        r = client.post("/api/train", json={"name": "tiny", "path": str(person_video), "settings": TRAIN_FAST})
        assert r.status_code == 202, r.text
        job = wait_job(client, r.json()["id"], timeout=150)
        assert job["state"] == "done", job
        assert job["result"] == {"person": "tiny"} and [s["state"] for s in job["stages"]] == ["done"] * 3
        people = {p["id"]: p for p in client.get("/api/people").json()["people"]}
        assert people["tiny"]["size"] == 64 and people["tiny"]["evaluable"]
        refused(client.post("/api/train", json={"name": "tiny", "path": str(person_video)}), 400, "exists")
        audio = upload(client, wav_bytes(tmp_path, speech(1.0)))["id"]
        render = client.post("/api/speak", json={"person": "tiny", "audio": audio,
                                                 "controls": {"pose": "still"}}).json()
        evaluation = client.post("/api/evaluate", json={"person": "tiny", "frames": 5}).json()
        assert wait_job(client, render["id"])["result"]["size"] == [64, 64]
        evaluation = wait_job(client, evaluation["id"], timeout=120)
        assert evaluation["state"] == "done", evaluation
        report = client.get(f"/api/jobs/{evaluation['id']}/report").json()
        assert report["format"] == "geneface-eval" and report["validation"]["frames"]["count"] == 5
        files = evaluation["result"]["files"]
        assert "report.md" in files and any(f.endswith(".png") for f in files)
        md = client.get(f"/api/jobs/{evaluation['id']}/files/report.md")
        assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
        png = client.get(f"/api/jobs/{evaluation['id']}/files/{next(f for f in files if f.endswith('.png'))}")
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        refused(client.get(f"/api/jobs/{evaluation['id']}/files/..%2Fjob.json"), 404)
        refused(client.get(f"/api/jobs/{evaluation['id']}/files/job.json"), 404)
