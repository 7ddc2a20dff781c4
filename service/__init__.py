"""The product layer under both surfaces: the jobs, their limits and every sentence a user reads.

The Discord bot (``bot/``) and the Gradio demo (``demo/``) are adapters over this package: they
turn a Discord attachment or a Gradio upload into a :class:`~service.photos.Photo`, call one
:class:`~service.jobs.Service` method, and lay out the answer (an embed, a page). Neither
decides what a result means nor how it is said.

- :mod:`service.photos`: one intake for strangers' photos under one set of :class:`Limits`
  (bytes, pixels, the side heavy jobs work at), content sniffed from the bytes, safe file names;
- :mod:`service.jobs`: :class:`Service` -- classify (with "is it a pet?"), fool-me, ideal image and
  explain, over the deployed ONNX ``Classifier`` and the torch checkpoint;
- :mod:`service.answers`: one result type per operation (:class:`Classified`, :class:`Fooled`,
  :class:`Dreamed`, :class:`Explained`) and every sentence about them, in Markdown that both
  Discord and Gradio render.

Layers: ``service`` may import ``training`` and ``export``; ``bot`` and ``demo`` import
``service`` (and nothing of each other); ``training`` and ``export`` never import ``service``.
Vocabulary: a *verdict* is only ever ``"pet"``, ``"unsure"`` or ``"not_pet"``
(:mod:`training.verdict`).
"""

from .answers import Classified, Dreamed, Explained, Fooled, Unavailable, UserError
from .jobs import STRENGTHS, Service
from .photos import Limits, Photo, open_photo

__all__ = ["STRENGTHS", "Classified", "Dreamed", "Explained", "Fooled", "Limits", "Photo", "Service", "Unavailable", "UserError",
           "open_photo"]
