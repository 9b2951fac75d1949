"""The demo page: a model folder answering questions about videos in the browser.

``vqa demo --model DIR`` serves it on http://127.0.0.1:7860 (the ``demo`` extra: Gradio). Upload
a clip or pick an example, type a question (and, for a multiple-choice model, its options, one a
line), press *Ask*; the page shows

* the answer, as :meth:`Answerer.ask <vqa_components.inference.Answerer.ask>` gives it for the
  same file and question,
* the top 5 answers as bars (probabilities over the answer vocabulary, or over the options; a
  generating head has none),
* for a model that chooses frames or weighs patches (a sampler, LA-Gates, the co-tokenizer's
  selection maps), the :func:`vqa_components.viz.explain` figure of that choice.

Nothing is fetched from the internet: Gradio's analytics and version check are off, its theme's
fonts are served by the page itself, and ``share=True`` (a public link through Gradio's tunnel)
is the only way out.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqa_components.errors import ConfigError

if TYPE_CHECKING:
    import gradio

    from vqa_components.inference import Answerer

MISSING_GRADIO = "the demo page needs Gradio: pip install 'vqa-components[demo]'"
#: what ``--examples`` picks from a folder
VIDEO_SUFFIXES = (".mp4", ".m4v", ".webm", ".mkv", ".avi", ".mov", ".gif", ".ogv")
#: ``elem_id`` of the page's parts, for tests and custom CSS
ELEM_IDS = {"video": "vqa-video", "question": "vqa-question", "options": "vqa-options", "ask": "vqa-ask",
            "answer": "vqa-answer", "top": "vqa-top", "figure": "vqa-figure"}
TOP_K = 5
TASKS = {
    "classify": "classify: picks one of the {n} answers it was trained on",
    "multiple_choice": "multiple choice: picks one of the options you give",
    "generate": "generate: writes its answer word by word",
}


def import_gradio() -> Any:
    """``gradio``, with its analytics off (unless ``GRADIO_ANALYTICS_ENABLED`` says otherwise); a
    one-line :class:`ConfigError` naming the extra when it is not installed."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise ConfigError(MISSING_GRADIO) from None
    return gradio


def offline_theme(gr: Any) -> Any:
    """Gradio's default look in fonts the page serves itself (Gradio 6.0's default theme still asked
    Google Fonts for its sans-serif), falling back to the system's."""
    return gr.themes.Default(
        font=[gr.themes.LocalFont("IBM Plex Sans"), "ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=[gr.themes.LocalFont("IBM Plex Mono"), "ui-monospace", "Consolas", "monospace"],
    )


# ------------------------------------------------------------------ what the page shows


def parse_options(text: str | None) -> list[str]:
    """The options box: one option a line, blank lines and surrounding spaces dropped."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def top_confidences(result: dict[str, Any]) -> dict[str, float]:
    """An :meth:`Answerer.ask` result's ``top`` as ``gr.Label``'s ``{answer: probability}`` (an option
    given twice keeps its first, higher, probability)."""
    confidences: dict[str, float] = {}
    for name, p in result.get("top") or []:
        confidences.setdefault(str(name), float(p))
    return confidences


def describe(answerer: Answerer) -> str:
    """The page's heading: the model folder's name, its task and how it reads a clip."""
    task = answerer.task or "none"
    vocab = getattr(answerer.pipeline, "answer_vocab", None) or []
    task_line = TASKS.get(task, task).format(n=len(vocab))
    streams = ", ".join(
        f"{t} frames at {'x'.join(map(str, s)) if isinstance(s, (list, tuple)) else s} px"
        for t, s in answerer.video["streams"]
    )
    recipe = answerer.config.get("recipe")
    return (f"## {answerer.folder.name}\n\nModel folder `{answerer.folder}`"
            + (f" (recipe `{recipe}`)" if recipe else "") + f" · task **{task_line}** · reads {streams}")


def find_examples(paths: Iterable[str | os.PathLike] | None) -> list[list[str]]:
    """``--examples``: rows of ``[video, question, options]`` from video files, folders of them
    (their clips, sorted by name) and ``vqa ask --input`` JSON Lines files (clip and question)."""
    rows: list[list[str]] = []
    for given in paths or []:
        path = Path(given).expanduser()
        if path.is_dir():
            clips = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not clips:
                kinds = ", ".join(VIDEO_SUFFIXES)
                raise ConfigError(f"--examples {given}: the folder holds no video ({kinds})")
            rows += [[str(p.resolve()), "", ""] for p in clips]
        elif path.suffix == ".jsonl" and path.is_file():
            from vqa_components.inference import read_pairs

            rows += [[str(Path(r["video"]).resolve()), r["question"], "\n".join(r.get("options") or [])]
                     for r in read_pairs(path)]
        elif path.is_file():
            rows.append([str(path.resolve()), "", ""])
        else:
            raise ConfigError(f"--examples {given}: no such file or folder")
    return rows


def draws_maps(answerer: Answerer, batch: dict[str, Any]) -> bool:
    """Whether :func:`~vqa_components.viz.explain` has more to draw for this model than its input
    frames: a sampler's chosen frames, LA-Gate values, or the co-tokenizer's selection maps."""
    import torch

    pipeline = answerer.pipeline
    if getattr(pipeline, "sampler", None) is not None:
        return True
    with torch.no_grad():
        extras = pipeline.eval()(batch).fused.extras or {}
    return "gates" in extras or "selection_maps" in extras


def explain_image(answerer: Answerer, batch: dict[str, Any]) -> Any:
    """The :func:`~vqa_components.viz.explain` figure of ``batch``'s sample, as a PIL image."""
    from PIL import Image

    from vqa_components.viz import explain

    with tempfile.TemporaryDirectory(prefix="vqa-demo-") as folder:
        path = Path(folder) / "explain.png"
        explain(answerer.pipeline, batch, path)
        with Image.open(path) as image:
            return image.convert("RGB")


class Asker:
    """The *Ask* button: clip path, question and options text -> answer, bars, figure."""

    def __init__(self, answerer: Answerer) -> None:
        self.answerer = answerer
        self.maps: bool | None = None  # whether there is a figure to show: known from the first question on

    def __call__(self, video: str | None, question: str, options_text: str | None = "") -> tuple[Any, ...]:
        gr = import_gradio()
        from vqa_components.data.video_io import VideoDecodeError

        if not video:
            raise gr.Error("Upload a video or pick an example first.")
        if not (question or "").strip():
            raise gr.Error("Type a question first.")
        options = parse_options(options_text) if self.answerer.task == "multiple_choice" else None
        if options is not None and len(options) < 2:
            raise gr.Error("This model chooses among options: give at least two, one a line.")
        try:
            frames = self.answerer.read_video(video)
            result = self.answerer.ask(frames, question.strip(), options, top_k=TOP_K)
            figure = None
            batch = self.answerer.batch([frames], [question.strip()], [options] if options else None)
            if self.maps is None:
                self.maps = draws_maps(self.answerer, batch)
            if self.maps:
                figure = explain_image(self.answerer, batch)
        except (ConfigError, VideoDecodeError) as exc:
            raise gr.Error(str(exc)) from None
        return result["answer"], top_confidences(result), gr.update(value=figure, visible=figure is not None)


# ------------------------------------------------------------------ the page


def build_demo(answerer: Answerer, examples: Iterable[str | os.PathLike] | None = None) -> gradio.Blocks:
    """The page for ``answerer``: video, question (and options) in; answer, top-5 bars and, where
    the model has them, the frames it chose and its gate or token maps out.

    Args:
        answerer: the model folder's :class:`~vqa_components.inference.Answerer`.
        examples: clips to pick from: video files, folders of them, ``vqa ask --input`` JSON Lines
            (:func:`find_examples`).
    """
    gr = import_gradio()
    rows = find_examples(examples)
    multiple_choice = answerer.task == "multiple_choice"
    ask = Asker(answerer)
    with gr.Blocks(title=f"vqa demo: {answerer.folder.name}", analytics_enabled=False) as demo:
        gr.Markdown(describe(answerer))
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], height=360, elem_id=ELEM_IDS["video"])
                question = gr.Textbox(label="Question", placeholder="what is the person doing?",
                                      elem_id=ELEM_IDS["question"])
                options = gr.Textbox(label="Options (one a line)", lines=4, visible=multiple_choice,
                                     elem_id=ELEM_IDS["options"])
                button = gr.Button("Ask", variant="primary", elem_id=ELEM_IDS["ask"])
                if rows:
                    with_text = any(r[1] for r in rows)
                    gr.Examples([r if with_text else r[:1] for r in rows],
                                [video, question, options] if with_text else [video], label="Example clips")
            with gr.Column():
                answer = gr.Textbox(label="Answer", interactive=False, elem_id=ELEM_IDS["answer"])
                top = gr.Label(label=f"Top {TOP_K}", num_top_classes=TOP_K, show_heading=False,
                               visible=answerer.task != "generate", elem_id=ELEM_IDS["top"])
        figure = gr.Image(label="What the model looked at (vqa explain)", type="pil", format="png",
                          interactive=False, visible=False, elem_id=ELEM_IDS["figure"])
        inputs, outputs = [video, question, options], [answer, top, figure]
        one_at_a_time = {"concurrency_limit": 1, "concurrency_id": "model"}  # the button and Enter: one model
        button.click(ask, inputs, outputs, api_name="ask", **one_at_a_time)
        question.submit(ask, inputs, outputs, api_visibility="undocumented", **one_at_a_time)
    return demo


def serve(
    model: str | os.PathLike | Answerer,
    host: str = "127.0.0.1",
    port: int = 7860,
    examples: Sequence[str | os.PathLike] | None = None,
    share: bool = False,
    device: str = "cpu",
    threads: int | None = None,
) -> None:
    """Serve the demo page of ``model`` (a model folder, a hub id or an ``Answerer``) until Ctrl-C.

    Args:
        host: the address to listen on (``0.0.0.0``: every interface of the machine).
        port: the port; one in use is an error.
        examples: clips to pick from (:func:`find_examples`).
        share: also a public ``gradio.live`` link, through Gradio's tunnel (needs the internet).
        device: where the model runs.
        threads: torch's CPU threads (:class:`~vqa_components.inference.Answerer`'s ``threads``).
    """
    gr = import_gradio()  # before the model loads: a missing extra is the first thing said
    from vqa_components.inference import Answerer

    allowed = sorted({str(Path(row[0]).parent) for row in find_examples(examples)})  # before the model loads
    answerer = model if isinstance(model, Answerer) else Answerer(model, device=device, threads=threads)
    demo = build_demo(answerer, examples)
    try:
        _, url, share_url = demo.launch(
            server_name=host, server_port=port, share=share, allowed_paths=allowed, theme=offline_theme(gr),
            footer_links=["api", "settings"], show_error=True, quiet=True, prevent_thread_lock=True,
        )
    except OSError:
        raise ConfigError(f"cannot listen on {host}:{port} (the port is taken, or the host is not this "
                          f"machine's): give another --port or --host") from None
    public = f" and {share_url}" if share_url else ""
    print(f"vqa demo: {answerer.folder} at {url}{public} (Ctrl-C stops it)", flush=True)
    try:
        while demo.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        demo.close(verbose=False)
