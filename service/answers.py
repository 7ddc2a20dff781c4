"""One result type per operation, and every sentence a user reads about it.

The text is Markdown that Discord (embeds, messages) and Gradio (``gr.Markdown``) both render:
``**bold**`` and line breaks, nothing else. A surface picks which parts to show and where
(an embed title, a big label), never rewords them.

- :class:`Classified`: the deployed classifier's answer on one photo, with its verdict
  (``"pet"``, ``"unsure"``, ``"not_pet"``; :mod:`training.verdict`);
- :class:`Fooled`: fool-me, judged by the deployed classifier on the very image sent back;
- :class:`Dreamed`: the ideal image of a label, and how sure the network is of it;
- :class:`Explained`: Grad-CAM and feature maps, with the photo's own verdict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from PIL import Image

from training.labels import describe_labels, english_list
from training.verdict import NOT_PET, PET, UNSURE, fooled

NO_PHOTO = "Add a photo first: upload one, use the webcam or paste one."
HEATMAP = "Warm colours mark the parts of the photo that pushed the network towards '{label}' the most."


class UserError(ValueError):
    """A request that cannot be served as asked; ``str(err)`` is meant for the user."""


def choose(value: str, choices: Sequence[str], what: str = "label") -> str:
    """``value`` as spelled in ``choices`` (case and surrounding spaces ignored), else a
    :class:`UserError` that names the valid ones."""
    match = {name.lower(): name for name in choices}.get(str(value).strip().lower())
    if match is None:
        raise UserError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}.")
    return match


def a(label: str) -> str:
    """``"cat"`` -> ``"a cat"``, ``"Abyssinian"`` -> ``"an Abyssinian"``."""
    return describe_labels([label])


def accuracy_sentence(metadata: Mapping[str, str], metrics: Mapping | None = None) -> str:
    """"It gets 97.0% of 200 held-out photos right." from the ONNX metadata (or checkpoint
    metrics); "" when neither says."""
    found: dict = {}
    try:  # the exporter stores the checkpoint's metrics as JSON, and a few of them as keys
        found.update(json.loads(metadata.get("metrics") or "{}"))
    except (TypeError, ValueError):
        pass
    found.update({k: v for k, v in metadata.items() if k in ("val_accuracy", "accuracy")})
    found.update(metrics or {})
    for key in ("val_accuracy", "accuracy"):
        try:
            value = float(found[key])
        except (KeyError, TypeError, ValueError):
            continue
        n = found.get("n_val") or found.get("n")
        return f"It gets {value:.1%} of {f'{int(n):,} ' if n else ''}held-out photos right."
    return ""


# --------------------------------------------------------------------------- classify


@dataclass(frozen=True)
class Classified:
    """The deployed classifier's answer on one photo. ``top``: ``[(label, prob), ...]``, most
    likely first; ``verdict``: ``"pet"``, ``"unsure"``, ``"not_pet"`` or None (a model without
    "is it a pet?" statistics, whose answers are taken as pets); ``labels``: every label the
    model knows; ``score``/``threshold``/``refuse_threshold``: the numbers behind the verdict."""

    top: list[tuple[str, float]]
    verdict: str | None
    labels: tuple[str, ...]
    score: float | None = None
    threshold: float | None = None
    refuse_threshold: float | None = None
    breeds: tuple[tuple[str, float], ...] = ()  # top breeds of the answered species (Oxford folder names)

    @classmethod
    def of(cls, found) -> Classified:
        """From an :class:`export.runtime.Assessment`."""
        return cls(list(found.top), found.verdict, tuple(found.labels), found.score, found.threshold,
                   found.refuse_threshold)

    @property
    def label(self) -> str:
        return self.top[0][0]

    @property
    def prob(self) -> float:
        return float(self.top[0][1])

    @property
    def is_pet(self) -> bool | None:
        """True for the plain "pet" answer, False for "unsure" and "not_pet", None without a verdict."""
        return None if self.verdict is None else self.verdict == PET

    def headline(self) -> str:
        """A few words: "A cat", "Probably a dog", "Not a cat or a dog?"."""
        if self.verdict == UNSURE:
            return f"Probably {a(self.label)}"
        if self.verdict == NOT_PET:
            return f"Not {describe_labels(self.labels)}?"
        return a(self.label)[0].upper() + a(self.label)[1:]

    def breed_sentence(self) -> str:
        """"A dog, most like a Yorkshire terrier (81%), or a Havanese (9%)." for a pet with
        breed answers (at most three, those at 1% or more); "" otherwise: no breed is claimed
        for a photo the network is unsure of, or one that is not a pet."""
        shown = [(b, p) for b, p in self.breeds[:3] if p >= 0.01]
        if self.verdict not in (None, PET) or not shown:
            return ""
        likes = ", or ".join(f"{a(breed_name(b))} ({p:.0%})" for b, p in shown)
        return f"{self.headline()}, most like {likes}."

    def message(self) -> str | None:
        """The caveat in one plain sentence, or None for a pet (or a model without a verdict)."""
        if self.verdict == UNSURE:
            return f"Probably {a(self.label)} ({self.prob:.0%}), but this photo is unlike the ones I learned from"
        if self.verdict == NOT_PET:
            return f"This doesn't look like {describe_labels(self.labels)} — closest guess: {self.label} {self.prob:.0%}"
        return None

    def caveat(self) -> str:
        """The caveat with its explanation, in Markdown; "" for a pet."""
        message = self.message()
        if message is None:
            return ""
        if self.verdict == UNSURE:
            return (f"**{message}:** maybe a breed or a setting it has seen few of, or maybe not "
                    f"{describe_labels(self.labels)} at all.")
        return (f"**{message}.** The network only knows {_names(self.labels)}, so it always picks one of them; "
                "but this photo is unlike every photo it learned from.")

    def as_dict(self) -> dict:
        """The ``/assess`` wire format: ``{"top", "is_pet", "verdict", "score", "threshold",
        "refuse_threshold", "message", "breeds", "breed_sentence"}`` (no breed unless a pet)."""
        return {"top": [[label, prob] for label, prob in self.top], "is_pet": self.is_pet, "verdict": self.verdict,
                "score": self.score, "threshold": self.threshold, "refuse_threshold": self.refuse_threshold,
                "message": self.message(),
                "breeds": [[b, p] for b, p in self.breeds] if self.breed_sentence() else [],
                "breed_sentence": self.breed_sentence() or None}


# Oxford-IIIT Pet folder names are lower case for dogs and hyphen-free; these words are proper
# nouns in English breed names ("an English setter", "a Shiba Inu").
PROPER = {"american", "english", "german", "great", "pyrenees", "japanese", "saint", "bernard", "scottish", "shiba",
          "inu", "staffordshire", "yorkshire", "newfoundland", "pomeranian", "chihuahua", "havanese", "keeshond",
          "leonberger", "samoyed"}
BREED_NAMES = {"german_shorthaired": "German shorthaired pointer"}


def breed_name(folder: str) -> str:
    """``"yorkshire_terrier"`` -> ``"Yorkshire terrier"``, ``"British_Shorthair"`` -> ``"British Shorthair"``."""
    if folder in BREED_NAMES:
        return BREED_NAMES[folder]
    words = folder.replace("_", " ").split()
    return " ".join(w.capitalize() if w.lower() in PROPER else w for w in words)


def _names(labels: Sequence[str]) -> str:
    """"cat and dog", or "37 labels" when there are many."""
    return f"{len(labels)} labels" if len(labels) > 6 else english_list(list(labels), "and")


# --------------------------------------------------------------------------- fool-me


@dataclass(frozen=True)
class Fooled:
    """Fool-me: ``source`` is the deployed verdict on the photo as sent, ``result`` the one on
    the ``image`` sent back (None, with no image, when nothing was done because the network
    already sees ``target``). ``strength`` and ``linf`` are in 8-bit grey levels (the budget and
    the largest change made); ``reshared``: how the image fares re-shared (``{"jpeg": Classified,
    "half": ...}``, robust mode only); ``original_size``: the photo's size before it was scaled
    down to the working size (equal to the image's when it was not)."""

    source: Classified
    target: str
    strength: int
    result: Classified | None = None
    image: Image.Image | None = None
    name: str = "photo"
    linf: int = 0
    steps: int = 0
    seconds: float = 0.0
    original_size: tuple[int, int] = (0, 0)
    reshared: dict[str, Classified] = field(default_factory=dict)

    @property
    def already(self) -> bool:
        return self.result is None

    @property
    def success(self) -> bool:
        """The whole verdict /classify gives on the image sent back (and, robust, on its re-shared
        copies): the target label and a pet."""
        judged = [self.result, *self.reshared.values()] if self.result is not None else []
        return bool(judged) and all(fooled(j.label, j.verdict, self.target) for j in judged)

    @property
    def file_name(self) -> str:
        return f"{self.name}-as-{self.target}.png"

    def headline(self) -> str:
        if self.already:
            return f"Already {a(self.target)}"
        if self.success:
            return f"{a(self.source.label)[0].upper() + a(self.source.label)[1:]} the network swears is {a(self.target)}"
        return "Not fooled this time"

    def outcome(self) -> str:
        """One sentence on what the network now says."""
        if self.already:
            others = english_list([x for x in self.source.labels if x != self.target])
            return (f"The network already sees **{self.target}** here ({self.source.prob:.0%}), so there is nothing to "
                    f"fool. Pick another target ({others}), or send a photo it does not call {a(self.target)}.")
        r = self.result
        if self.success:
            return f"**Fooled.** The network now says **{r.label}** ({r.prob:.0%}) and takes it for a pet."
        if r.label == self.target and r.verdict == UNSURE:
            return (f"**Not quite fooled:** it says **{r.label}** ({r.prob:.0%}), but /classify would add that the "
                    "photo is unlike the ones it learned from. Try a higher strength.")
        if r.label == self.target and self.reshared and not all(j.label == self.target for j in self.reshared.values()):
            return f"**Not fooled this time:** it says **{r.label}**, but not once re-shared. Try a higher strength."
        if r.label == self.target:
            return (f"**Not fooled this time:** it says **{r.label}**, but no longer takes the photo for a pet. "
                    "Try a higher strength.")
        return f"**Not fooled this time:** it still says **{r.label}** ({r.prob:.0%}). Try a higher strength."

    def summary(self) -> str:
        """The whole answer, in Markdown lines: before, outcome, budget, re-shares, scaling."""
        lines = [f"Before: **{self.source.label}** ({self.source.prob:.0%})."]
        if self.source.verdict in (UNSURE, NOT_PET):
            lines[0] += " " + self.source.caveat()
        lines.append(self.outcome())
        if self.already:
            return "\n".join(lines)
        lines.append(f"No colour value moved by more than {self.linf}/255 ({self.steps} steps, {self.seconds:.1f} s). "
                     "The verdict is the deployed model's, on this very PNG" + (": save it and try /classify." if self.success else "."))
        if self.reshared:
            shared = {"jpeg": "saved as JPEG", "half": "shrunk to half size"}
            lines.append("Re-shared, it says: " + "; ".join(
                f"{text}: **{self.reshared[how].label}** ({self.reshared[how].prob:.0%})"
                for how, text in shared.items() if how in self.reshared) + ".")
        if self.image is not None and self.original_size not in ((0, 0), self.image.size):
            w, h = self.original_size
            lines.append(f"Your {w}×{h} photo was worked on at {self.image.width}×{self.image.height} pixels.")
        return "\n".join(lines)


# --------------------------------------------------------------------------- ideal image


@dataclass(frozen=True)
class Dreamed:
    """The network's ideal ``label``: ``image`` optimized from noise (``seed``) for ``steps``;
    ``prob``: what the deployed classifier gives ``label`` on the finished 8-bit image."""

    label: str
    image: Image.Image
    prob: float
    steps: int
    seconds: float
    seed: int = 0

    @property
    def file_name(self) -> str:
        return f"ideal-{self.label}-seed{self.seed}.png"

    def headline(self) -> str:
        return f"The ideal {self.label}"

    def summary(self) -> str:
        return (f"**Done:** the network's ideal {self.label}, after {self.steps} steps from random noise "
                f"({self.seconds:.0f} s). Shown the finished picture, it is **{self.prob:.1%}** sure it is "
                f"{a(self.label)}.\nIt is what the network looks for (fur, eyes, ears, repeated everywhere), "
                "not what an animal looks like.")


def ideal_help(labels: Sequence[str]) -> str:
    """What the ideal image is, for any of the model's labels."""
    return (f"**The network's ideal {english_list(list(labels))}.** Start from random noise and change the pixels, "
            "step by step, to make the network as sure as it can be of one label. What appears is what the "
            "network looks for (fur texture, eyes, ears, repeated everywhere), not what an animal looks like.")


def ideal_progress(label: str, step: int, total: int, seconds: float) -> str:
    return f"Dreaming up the ideal {label}: step {step}/{total}, {seconds:.0f} s"


# --------------------------------------------------------------------------- explain


@dataclass(frozen=True)
class Explained:
    """Grad-CAM for ``label`` (``prob`` its probability) over the photo, the feature-map
    ``grids`` (``{"early", "middle", "late"}``) and ``source``, the photo's own verdict."""

    source: Classified
    label: str
    prob: float
    overlay: Image.Image
    grids: dict[str, Image.Image]
    seconds: float
    name: str = "photo"

    @property
    def file_name(self) -> str:
        return f"{self.name}-gradcam.png"

    def headline(self) -> str:
        if self.source.verdict == NOT_PET:
            return self.source.headline()
        return f"Why {self.label}?"

    def summary(self) -> str:
        heat = HEATMAP.format(label=self.label)
        timing = f"(Grad-CAM on the last convolutional block; {self.seconds:.1f} s)"
        if self.source.verdict in (UNSURE, NOT_PET):
            return (f"{self.source.caveat()}\nThe heat map shows what pushed it towards **{self.label}** "
                    f"({self.prob:.0%}) anyway. {heat} {timing}")
        return f"The network says **{self.label}** ({self.prob:.0%}). {heat} {timing}"


# --------------------------------------------------------------------------- busy


def too_many_jobs(per_client: int) -> str:
    """A visitor who already has ``per_client`` heavy jobs waiting or running."""
    return (f"You already have {per_client} jobs waiting or running (fool-me, ideal or explain). "
            "Wait for them to finish, then try again.")


def heavy_lane_full(waiting: int) -> str:
    """Every heavy job slot in the waiting line is taken."""
    return f"{waiting} jobs are already waiting for the network. Try again in a minute; Classify still answers at once."


class Unavailable(UserError):
    """The server that runs a job (``--server``: a Triton pool) is down, too slow or refused
    it. ``str(err)`` is for the user; the operator's detail is in the exception's cause."""


def server_unavailable(what: str) -> str:
    """A job whose server did not answer (down, overloaded or misconfigured: the log says which)."""
    return (f"{what} cannot run right now: the server that does the work is not answering. "
            "Try again in a minute.")
