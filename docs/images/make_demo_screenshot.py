"""Re-make ``docs/images/demo.png``: the ``vqa demo`` page of a model folder after one question.

::

    python docs/images/make_demo_screenshot.py --model MODEL_FOLDER --video CLIP --question "..." \\
        [--options A B C] [--out docs/images/demo.png]

It serves ``vqa demo`` on a free port of 127.0.0.1, asks in headless Chromium (Playwright driving the
system's ``chromium``), and saves the whole page once the answer (and, for a model that has one, the
figure of the frames it chose) is shown. Needs the ``test`` extra (Gradio and Playwright) and Chromium.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from vqa_components.demo import ELEM_IDS

ID = {k: f"#{v}" for k, v in ELEM_IDS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--video", required=True)
    parser.add_argument("--question", required=True)
    parser.add_argument("--options", nargs="+", help="for a multiple-choice model")
    parser.add_argument("--out", default=str(Path(__file__).with_name("demo.png")))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    opts = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "vqa_components.cli", "demo", "--model", opts.model,
                               "--port", str(port)])
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"vqa demo exited with status {server.returncode}")
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=opts.chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            page.set_input_files(f"{ID['video']} input[type=file]", opts.video)
            page.wait_for_selector(f"{ID['video']} video")
            page.locator(f"{ID['question']} textarea, {ID['question']} input").fill(opts.question)
            if opts.options:
                page.locator(f"{ID['options']} textarea").fill("\n".join(opts.options))
            page.click(ID["ask"])
            expect(page.locator(f"{ID['answer']} textarea, {ID['answer']} input")).not_to_have_value(
                "", timeout=120_000)
            page.wait_for_timeout(1000)  # the bars' and the figure's rendering
            if page.locator(ID["figure"]).is_visible():
                page.wait_for_function(f"() => document.querySelector('{ID['figure']} img')?.complete")
            page.mouse.move(0, 0)
            page.screenshot(path=opts.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"screenshot written to {opts.out}")


if __name__ == "__main__":
    main()
