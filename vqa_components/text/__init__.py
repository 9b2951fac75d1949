"""Text encoders: strings -> :class:`~vqa_components.interfaces.TextFeatures`."""

from vqa_components.text import bert as _bert  # noqa: F401
from vqa_components.text import hf_transformer as _hf_transformer  # noqa: F401
from vqa_components.text import open_clip as _open_clip  # noqa: F401
from vqa_components.text import small_transformer  # noqa: F401
from vqa_components.text import t5 as _t5  # noqa: F401
