"""The README's picture of what `ablate ui STUDY` opens on: the link it prints, in headless Chromium, as one PNG.

Run it in the folder whose mlruns/ holds the study, once the study has ended (its report is on its parent run):

    ablate run studies/cbam_vs_se.yaml
    python tools/landing_screenshot.py cbam_vs_se --out docs/images/mlflow_landing.png

Needs Debian's chromium and chromium-driver (what .ci/run installs) and selenium (the test extra).
"""
from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

README_IMAGE = Path(__file__).resolve().parents[1] / "docs" / "images" / "mlflow_landing.png"
MAX_BYTES = 300_000  # a picture in a repository: small enough to keep in git history


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(study: str, port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """`ablate ui STUDY` (in its own session: SIGTERM to it ends MLflow's workers too) and the link it prints,
    once the server answers."""
    with log.open("w") as out:
        ui = subprocess.Popen([sys.executable, "-c", "from ablate.cli import main; main()", "ui", study,
                               "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300  # MLflow's server starts slowly on a busy machine
    while time.time() < deadline:
        if ui.poll() is not None:
            sys.exit(f"`ablate ui {study}` exited ({ui.returncode}):\n{log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            link = next(line.split(": ", 1)[1] for line in log.read_text().splitlines()
                        if line.startswith(f"{study}: "))
            return ui, link
        except OSError:
            time.sleep(2)
    ui.send_signal(signal.SIGTERM)
    sys.exit(f"`ablate ui {study}` did not answer within 300 s:\n{log.read_text()[-2000:]}")


def screenshot(link: str, out: Path, width: int, height: int) -> None:
    """The page once the report (an iframe) shows its table and its figure."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(link.split("#")[0])  # the UI's origin first: its local storage is set before the page is shown
        # as a returning user sees it: MLflow's assistant panel opens by itself on a browser's first visit only
        driver.execute_script("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                              "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')")
        driver.get(link)
        frame = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "iframe.mlflow-html-iframe"))[0]
        driver.switch_to.frame(frame)
        wait.until(lambda d: d.execute_script(
            "const i = document.querySelector('img'); return i && i.complete && i.naturalWidth > 0"))
        driver.switch_to.default_content()
        time.sleep(1)  # the UI's last layout pass (side panels, fonts)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def shrink(path: Path) -> None:
    """A 256-colour palette when the full-colour PNG is over MAX_BYTES (a UI screenshot has few colours)."""
    if path.stat().st_size > MAX_BYTES:
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", nargs="?", default="cbam_vs_se")
    parser.add_argument("--out", type=Path, default=README_IMAGE)
    parser.add_argument("--size", default="1440x1100", help="the browser window, WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    port = free_port()
    log = Path(f"ui-{port}.log")
    ui, link = start_ui(args.study, port, log)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(link, args.out, width, height)
        shrink(args.out)
    finally:
        ui.send_signal(signal.SIGTERM)  # ablate ui ends MLflow's whole process tree
        ui.wait(timeout=60)
        log.unlink()
    print(f"{link}\n-> {args.out} ({args.out.stat().st_size // 1000} KB)")


if __name__ == "__main__":
    main()
