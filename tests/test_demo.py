"""The demo page (``vqa_components.demo``, ``vqa demo``): the page's pieces without a browser, then the
page itself, served by ``vqa demo`` in its own process and driven in headless Chromium (Playwright)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import build_model

from vqa_components.data.video_io import write_video
from vqa_components.demo import (
    ELEM_IDS,
    MISSING_GRADIO,
    Asker,
    find_examples,
    import_gradio,
    parse_options,
    top_confidences,
)
from vqa_components.errors import ConfigError

QUESTION = "which way does the ball move?"
VQA = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); " \
      "from vqa_components.cli import main; sys.exit(main())"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def export_model(recipe: str, out: Path, *overrides: str) -> Path:
    """The recipe's model at test size (``helpers.build_model``) exported as a model folder."""
    from vqa_components.model_folder import export

    model, _, config = build_model(recipe, *overrides)
    return export(model, config, out, recipe=recipe)


def ball_clip(path: Path, frames: int = 16, size: int = 64) -> Path:
    """A red square crossing a grey background from right to left, as H.264 MP4."""
    video = np.full((frames, size, size, 3), 110, dtype=np.uint8)
    for t in range(frames):
        x = int((size - 12) * (1 - t / (frames - 1)))
        video[t, 26:38, x : x + 12] = (220, 30, 30)
    return write_video(path, video)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    return export_model("recipes/quickstart.yaml", tmp_path_factory.mktemp("demo") / "quickstart")


# ------------------------------------------------------------------ the pieces


def test_options_are_one_a_line_and_the_top_answers_become_the_labels_bars():
    assert parse_options("  red\n\nblue \n green\n") == ["red", "blue", "green"]
    assert parse_options(None) == [] and parse_options(" \n ") == []
    result = {"answer": "left", "top": [("left", 0.6), ("right", 0.3), ("left", 0.05), ("up", 0.05)]}
    assert top_confidences(result) == {"left": 0.6, "right": 0.3, "up": 0.05}  # given twice: the first
    assert top_confidences({"answer": "a red ball", "top": []}) == {}  # a generating head has no bars


def test_without_gradio_the_error_is_one_line_naming_the_extra(monkeypatch, capsys):
    from vqa_components.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    with pytest.raises(ConfigError) as info:
        import_gradio()
    assert str(info.value) == MISSING_GRADIO and "pip install 'vqa-components[demo]'" in MISSING_GRADIO
    assert main(["demo", "--model", "/no/such/model"]) == 2  # said before the model is looked for
    assert capsys.readouterr().err == f"vqa: error: {MISSING_GRADIO}\n"


def test_examples_are_clips_folders_of_clips_and_question_files(tmp_path):
    (tmp_path / "clips").mkdir()
    for name in ("b.mp4", "a.webm", "notes.txt"):
        (tmp_path / "clips" / name).write_bytes(b"")
    (tmp_path / "one.mp4").write_bytes(b"")
    pair = '{"video": "one.mp4", "question": "what?", "options": ["x", "y"]}\n'
    (tmp_path / "pairs.jsonl").write_text(pair)
    rows = find_examples([tmp_path / "clips", tmp_path / "one.mp4", tmp_path / "pairs.jsonl"])
    clips, one = tmp_path.resolve() / "clips", str(tmp_path.resolve() / "one.mp4")
    assert rows == [[str(clips / "a.webm"), "", ""], [str(clips / "b.mp4"), "", ""], [one, "", ""],
                    [one, "what?", "x\ny"]]
    assert find_examples(None) == []
    with pytest.raises(ConfigError, match="--examples .*missing: no such file or folder"):
        find_examples([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="the folder holds no video"):
        find_examples([tmp_path / "empty"])


def test_the_ask_button_refuses_what_the_model_cannot_answer():
    gr = pytest.importorskip("gradio")
    ask = Asker(SimpleNamespace(task="multiple_choice"))
    with pytest.raises(gr.Error, match="Upload a video"):
        ask(None, "what?", "a\nb")
    with pytest.raises(gr.Error, match="Type a question"):
        ask("clip.mp4", "  ", "a\nb")
    with pytest.raises(gr.Error, match="give at least two, one a line"):
        ask("clip.mp4", "what?", "only one\n")


def test_the_figure_is_shown_for_a_model_that_chooses_frames_and_hidden_otherwise(tmp_path, classifier,
                                                                                    one_thread):
    """VideoDistill's sampler and LA-Gates get the vqa explain figure; the quickstart model (cross-attention,
    no sampler) has nothing to show beyond its frames."""
    pytest.importorskip("gradio")
    pytest.importorskip("matplotlib")
    from vqa_components.inference import Answerer

    clip = ball_clip(tmp_path / "clip.mp4")
    gated = export_model("recipes/videodistill/tiny/f_full.yaml", tmp_path / "videodistill")
    for folder, shown in ((gated, True), (classifier, False)):
        answerer = Answerer(folder)
        ask = Asker(answerer)
        answer, bars, figure = ask(str(clip), QUESTION, "")
        expected = answerer.ask(clip, QUESTION)
        assert answer == expected["answer"] and bars == dict(expected["top"])
        assert figure["visible"] is shown and ask.maps is shown
        if shown:
            width, height = figure["value"].size
            assert width > 200 and height > 200  # the figure, not a blank
        else:
            assert figure["value"] is None


# ------------------------------------------------------------------ the page in a browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_page(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            said = log.read_text()[-3000:]
            raise AssertionError(f"vqa demo exited with status {server.returncode}: {said}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise AssertionError(f"vqa demo did not answer on {url} within {timeout:.0f} s")


def stop(server: subprocess.Popen) -> None:
    """Ctrl-C (the server closes itself), then kill if it has not gone within 15 s."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)


def test_the_page_gives_the_answer_and_top_5_of_the_python_api(tmp_path, classifier, one_thread):
    pytest.importorskip("gradio")
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no Chromium to drive: apt-get install chromium")
    from vqa_components.inference import Answerer

    clip = ball_clip(tmp_path / "clip.mp4")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "OMP_NUM_THREADS": "1"}
    # `vqa demo`, with Ctrl-C raising KeyboardInterrupt even where the shell that started pytest ignores it
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-c", VQA, "demo", "--model", str(classifier), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        expected = Answerer(classifier).ask(clip, QUESTION)  # while the server starts; one thread, as there
        wait_for_page(url, server, log)
        requests: list[str] = []
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = browser.new_page()
                page.on("request", lambda request: requests.append(request.url))
                page.goto(url)
                ids = {k: f"#{v}" for k, v in ELEM_IDS.items()}
                assert classifier.name in page.locator("h2").first.inner_text()
                playwright.expect(page.get_by_text("classify: picks one of")).to_be_visible()
                page.set_input_files(f"{ids['video']} input[type=file]", str(clip))
                page.wait_for_selector(f"{ids['video']} video")  # uploaded: the player shows it
                page.locator(f"{ids['question']} textarea, {ids['question']} input").fill(QUESTION)
                page.click(ids["ask"])
                answer = page.locator(f"{ids['answer']} textarea, {ids['answer']} input")
                playwright.expect(answer).not_to_have_value("", timeout=60_000)
                shown = answer.input_value()
                playwright.expect(page.locator(f"{ids['top']} meter")).to_have_count(5)
                bars = [m.get_attribute("aria-label") for m in page.locator(f"{ids['top']} meter").all()]
                playwright.expect(page.locator(ids["figure"])).to_be_hidden()  # no sampler, gates or maps
            finally:
                browser.close()
    finally:
        stop(server)
    assert shown == expected["answer"]
    assert bars == [name for name, _ in expected["top"]] and len(bars) == 5
    assert server.returncode == 0, log.read_text()[-3000:]
    leaving = [u for u in requests if not u.startswith((url, "data:", "blob:"))]
    assert not leaving, f"the page fetched from elsewhere than {url}: {leaving[:5]}"


def test_a_taken_port_is_one_line(classifier):
    pytest.importorskip("gradio")
    from vqa_components.demo import serve
    from vqa_components.inference import Answerer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port} .*give another --port"):
            serve(Answerer(classifier), port=port)
