"""Text-to-video retrieval from the unimodal encoders, without the fusion (E-ViLM section 4)."""

from __future__ import annotations

from torch import Tensor

from vqa_components.heads.retrieval import RetrievalHead
from vqa_components.interfaces import (
    ConfigError,
    FusionOutput,
    HeadOutput,
    ModelOutput,
    TextFeatures,
    VideoFeatures,
)
from vqa_components.layers.transformer import masked_mean
from vqa_components.registry import HEADS

#: the ``FusionOutput.extras`` key holding the video features the fusion was given
VIDEO_FEATURES = "video_features"


def unimodal_video(fused: FusionOutput) -> VideoFeatures:
    """The :class:`VideoFeatures` the fusion was given (``fused.extras["video_features"]``)."""
    video = fused.extras.get(VIDEO_FEATURES) if fused.extras else None
    if not isinstance(video, VideoFeatures):
        raise ConfigError(
            "head unimodal_retrieval embeds the video features the fusion was given, "
            f"FusionOutput.extras[{VIDEO_FEATURES!r}], which this fusion does not pass on; "
            "use fusion merged_transformer"
        )
    return video


@HEADS.register("unimodal_retrieval")
class UnimodalRetrievalHead(RetrievalHead):
    """Retrieval from the unimodal encoders alone: (b, b) scaled cosines, the fusion not read.

    ::

        v    = masked mean over real frames of video.cls     (b, video_dim)   backbone only
        e_v  = normalize(W_v v)
        e_t  = normalize(W_t t_cls)                          t_cls = TextFeatures.cls (text encoder only)
        logits[i, j] = cos(e_v_i, e_t_j) / tau               row i: video i against text j

    E-ViLM retrieves "by replacing the one-to-one image-text matching schema with encoding
    unimodal inputs during fine-tuning and inference": no (video, text) pair goes through the
    decoder, so a split's ``N`` videos and ``N`` texts cost ``2N`` encodings, not ``N^2`` fusions.
    This head reads nothing the fusion computed: only ``fused.extras["video_features"]``, the
    backbone's (or sampler's) features that the fusion was given and passes on unchanged
    (``fusion: merged_transformer`` does), and ``text.cls``.

    Everything else is :class:`~vqa_components.heads.retrieval.RetrievalHead`'s: the projections
    to ``embed_dim``, the learnable temperature (``log(1/tau)``, initial 0.07, ``1/tau <= 100``),
    ``similarity``, and ``embeddings(out)`` for the split-wide retrieval metric.

    Choices the paper leaves to its (unavailable) appendix: the video embedding is the mean of
    the per-frame global features ``video.cls`` over the real frames (``frame_mask``), then a
    linear map; the text embedding is the text encoder's sentence feature ``cls``; both
    are unimodal encoder outputs, not the decoder run on one modality.

    ``uses_fusion = False`` tells a model that may skip the fusion for this head that nothing
    of it is read: :class:`~vqa_components.model.VideoQAModel` then does not run the fusion (it keeps
    it, untrained, for the stages that need it).

    Args:
        video_dim: width of the backbone's ``cls`` features.
        text_dim: width of ``TextFeatures.cls``.
        embed_dim: width of the shared embedding space.
        temperature: initial (or fixed) ``tau``.
        learn_temperature: whether ``tau`` is a parameter.
    """

    task = "retrieval"
    uses_fusion = False

    @staticmethod
    def video_vector(video: VideoFeatures) -> Tensor:
        """``(b, video_dim)`` the mean of ``video.cls`` over the real frames."""
        return masked_mean(video.cls, video.frame_mask)

    def forward(
        self, fused: FusionOutput, text: TextFeatures, targets: list[str] | None = None
    ) -> HeadOutput:
        video = self.embed_video(self.video_vector(unimodal_video(fused)))
        sim = self.similarity(video, self.embed_text(text.cls))
        return HeadOutput(logits=sim * self.scale.float())

    def embeddings(self, out: ModelOutput) -> tuple[Tensor, Tensor]:
        """``(video (b, embed_dim), text (b, embed_dim))``: unit-norm unimodal embeddings of the pairs."""
        return self.embed_video(self.video_vector(unimodal_video(out.fused))), self.embed_text(out.text.cls)
