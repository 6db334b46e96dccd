"""`auformer serve` in a real browser: Debian's Chromium, headless, driven by Selenium.

The test starts `auformer serve` (the demo model: no checkpoint) on a free loopback
port, uploads a photo with two faces, a video, a corrupt file and a file over the
upload limit, reads what the page shows, checks a screenshot, and stops the server
to see its uploads deleted. It needs `pip install auformer[web,dev]` and Chromium with
its driver (`.ci/install-browser`); without them it skips and says which is missing.
Set AUFORMER_SCREENSHOTS=DIR to keep the screenshots (DIR/serve.png is docs/images/serve.png).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from media import two_faces_photo, write_moving_face_video

pytest.importorskip("gradio", reason="gradio is not installed: pip install 'auformer[web]'")
pytest.importorskip("selenium", reason="selenium is not installed: pip install 'auformer[dev]'")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from system_tools import require  # noqa: E402

require("chromium", "chromedriver", why="the browser test: apt-get install chromium chromium-driver", module=True)
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.slow
WINDOW = (1400, 1700)  # browser viewport in CSS pixels: the screenshot's size
MAX_UPLOAD_MB = 1
STARTUP_S, ANALYSIS_S = 240, 120  # generous: the test machine may be loaded


@dataclass
class Server:
    url: str
    work: Path  # the server's temporary folder (uploads and results)
    process: subprocess.Popen
    lines: queue.Queue  # the server's output lines, read by a thread


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _next_line(server_lines: queue.Queue, timeout: float) -> str:
    try:
        return server_lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"auformer serve printed nothing for {timeout} s") from None


@pytest.fixture(scope="module")
def server() -> Server:
    yield from serve_process("--max-upload-mb", str(MAX_UPLOAD_MB))


def serve_process(*flags: str) -> Iterator[Server]:
    """Start `auformer serve` with ``flags`` on a free loopback port, yield it once it serves, kill it if still running."""
    command = [sys.executable, "-m", "auformer", "serve", "--port", str(_free_port()), *flags]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in process.stdout], daemon=True).start()
    work = url = None
    output: list[str] = []
    deadline = time.monotonic() + STARTUP_S
    while url is None:
        assert process.poll() is None and time.monotonic() < deadline, "auformer serve did not start:\n" + "\n".join(output)
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        output.append(line)
        if line.startswith("uploads and results in "):
            work = Path(line.removeprefix("uploads and results in ").split(" (")[0])
        if line.startswith("open http://"):
            url = line.split()[1]
    assert url.startswith("http://127.0.0.1:") and work.is_dir()  # loopback unless --host says otherwise
    yield Server(url, work, process, lines)
    if process.poll() is None:
        process.kill()


def start_chromium(*flags: str):
    """Headless Chromium driven by Selenium, in a fresh profile, with extra command-line ``flags``; ``quit_chromium`` ends it."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="auformer-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *flags,
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.profile = profile
    return driver


def quit_chromium(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    yield driver
    quit_chromium(driver)


def _upload(browser, server: Server, path: Path) -> None:
    """Open a fresh page and drop ``path`` on the upload box."""
    browser.get(server.url)
    WebDriverWait(browser, 60).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))


def _status_when(browser, text: str) -> str:
    """The status text once it contains ``text``."""
    WebDriverWait(browser, ANALYSIS_S).until(lambda driver: text in driver.find_element(By.ID, "status").text)
    return browser.find_element(By.ID, "status").text


def _screenshot(browser, name: str, folder: Path) -> np.ndarray:
    """Save a screenshot as ``folder/name`` (and in $AUFORMER_SCREENSHOTS) and return it as (H, W, 3) RGB."""
    path = folder / name
    browser.save_screenshot(str(path))
    if os.environ.get("AUFORMER_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["AUFORMER_SCREENSHOTS"]) / name)
    return np.asarray(Image.open(path).convert("RGB"))


def _loaded_images(browser, selector: str) -> int:
    """How many images under ``selector`` the browser has decoded (not just placed)."""
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].filter(i => i.complete && i.naturalWidth > 0).length", selector
    )


def test_photo_with_two_faces(server, browser, tmp_path):
    photo = tmp_path / "two_faces.png"
    cv2.imwrite(str(photo), cv2.cvtColor(two_faces_photo(), cv2.COLOR_RGB2BGR))
    _upload(browser, server, photo)
    status = _status_when(browser, "faces found")
    assert status.splitlines()[0] == "two_faces.png: 2 faces found."
    assert "Demo model: its predictions mean nothing on real faces." in browser.find_element(By.ID, "banner").text
    WebDriverWait(browser, 30).until(
        lambda driver: _loaded_images(driver, "#bars img") == 1 and _loaded_images(driver, "#boxed img") == 1
    )
    link = browser.find_element(By.CSS_SELECTOR, "#csv a[download]")
    assert link.get_attribute("download") == "two_faces.csv"
    with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as response:  # what the download gives
        table = pd.read_csv(StringIO(response.read().decode()))
    assert table["face"].tolist() == [0, 1] and table["success"].tolist() == [1, 1] and "AU12" in table

    shot = _screenshot(browser, "serve.png", tmp_path)
    assert shot.shape[:2] == (WINDOW[1], WINDOW[0]) or shot.shape[1] == WINDOW[0]
    assert shot.std() > 40  # not blank: photo, bars and text
    colours = np.unique(shot[::4, ::4].reshape(-1, 3), axis=0)
    assert len(colours) > 2000  # the photo's many colours made it to the screen
    red_bars = np.all(np.abs(shot.astype(int) - (209, 73, 91)) < 12, axis=-1)  # viz.OCCURS_COLOR
    assert red_bars.sum() > 2000  # AU bars at or above threshold are visible


def test_video_shows_time_series(server, browser, tmp_path):
    video = write_moving_face_video(tmp_path / "clip.avi", face_frames=6, blank_frames=3)
    _upload(browser, server, video)
    status = _status_when(browser, "frames analysed")
    assert status.startswith("clip.avi: 9 frames analysed, 6 with a face, 3 without.")
    WebDriverWait(browser, 30).until(lambda driver: _loaded_images(driver, "#timeseries img") == 1)
    assert browser.find_element(By.CSS_SELECTOR, "#csv a[download]").get_attribute("download") == "clip.csv"
    _screenshot(browser, "serve_video.png", tmp_path)


def test_corrupt_file_gives_message_on_page(server, browser, tmp_path):
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 100)
    _upload(browser, server, corrupt)
    status = _status_when(browser, "Could not analyse")
    assert status == "Could not analyse this file. broken.jpg: truncated image (the file ends inside the image data)"
    assert not browser.find_elements(By.CSS_SELECTOR, "#csv a[download]")
    _screenshot(browser, "serve_corrupt.png", tmp_path)
    assert server.process.poll() is None  # the server lives on


def test_upload_over_the_limit_is_refused(server, browser, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(np.random.default_rng(0).bytes(int(1.5 * MAX_UPLOAD_MB * 2**20)))
    _upload(browser, server, big)
    WebDriverWait(browser, 60).until(
        lambda driver: "exceed the maximum allowed size" in driver.find_element(By.TAG_NAME, "body").text
    )
    _screenshot(browser, "serve_too_big.png", tmp_path)
    assert not list(server.work.rglob("big.png"))


def test_stopping_the_server_deletes_uploads(server):
    assert list(server.work.rglob("two_faces.png"))  # the upload was kept while serving
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    last_lines = []
    while f"deleted {server.work}" not in last_lines:
        last_lines.append(_next_line(server.lines, 30))
    assert not server.work.exists()
