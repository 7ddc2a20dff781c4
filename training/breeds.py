"""Breeds: which species each one is, and the photo sets that teach both heads.

``python -m training --data CATS_AND_DOGS --breeds BREEDS`` trains the label head (the species)
on both sets and the breed head on the breed set (:mod:`training.heads`). Each breed's species
comes from ``--breed-species``: ``oxford`` (the default) knows the 37 Oxford-IIIT Pet breeds
(12 cats, 25 dogs; matched ignoring case, spaces and underscores, so both the dataset's folder
spelling ``american_bulldog`` and torchvision's ``American Bulldog`` work), or a JSON file
``{"breed": "label", ...}`` names them for any other set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .data import DatasetError, Sample, Splits
from .heads import NO_BREED

OXFORD_CATS = ("Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau", "Maine_Coon",
               "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx")
OXFORD_DOGS = ("american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer", "chihuahua",
               "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees", "havanese",
               "japanese_chin", "keeshond", "leonberger", "miniature_pinscher", "newfoundland", "pomeranian", "pug",
               "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier",
               "wheaten_terrier", "yorkshire_terrier")

TwoHeadSample = tuple[str, tuple[int, int]]  # (path, (label index, breed index or NO_BREED))


def _key(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").casefold().strip()


def breed_species(breeds: Sequence[str], labels: Sequence[str], rule: str | Path = "oxford") -> list[str]:
    """The label (species) of each breed: by the Oxford-IIIT Pet list (``rule="oxford"``,
    labels must include ``cat`` and ``dog``) or by a JSON file mapping breed -> label.
    A breed the rule does not know is a :class:`~training.data.DatasetError` naming it."""
    if str(rule) == "oxford":
        lower = {label.casefold(): label for label in labels}
        if "cat" not in lower or "dog" not in lower:
            raise DatasetError(f"--breed-species oxford maps breeds to cat and dog, but the labels are {', '.join(labels)}; "
                               "give a JSON file {\"breed\": \"label\", ...} instead")
        known = {_key(b): lower["cat"] for b in OXFORD_CATS} | {_key(b): lower["dog"] for b in OXFORD_DOGS}
        where = "the Oxford-IIIT Pet breeds"
    else:
        path = Path(rule)
        try:
            mapping = json.loads(path.read_text())
        except OSError as exc:
            raise DatasetError(f"--breed-species {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise DatasetError(f"--breed-species {path} is not JSON ({exc})") from exc
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise DatasetError(f"--breed-species {path} must hold one object {{\"breed\": \"label\", ...}}")
        known = {_key(k): v for k, v in mapping.items()}
        where = str(path)
        wrong = sorted({v for v in known.values() if v not in labels})
        if wrong:
            raise DatasetError(f"{path} maps breeds to {', '.join(wrong)}; the labels are {', '.join(labels)}")
    missing = [b for b in breeds if _key(b) not in known]
    if missing:
        raise DatasetError(f"no species for breed(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} in {where}; "
                           "give --breed-species FILE.json mapping every breed folder to a label")
    return [known[_key(b)] for b in breeds]


def two_head_samples(species: Splits, breeds: Splits, mapping: Sequence[str]) -> tuple[list[TwoHeadSample], list[TwoHeadSample]]:
    """Train and val samples for both heads: ``species``' photos as ``(label, NO_BREED)`` and
    ``breeds``' photos as ``(label of their breed, breed)``; ``mapping[i]`` is breed ``i``'s label."""
    index = {label: i for i, label in enumerate(species.labels)}
    of_breed = [index[label] for label in mapping]

    def plain(samples: Sequence[Sample]) -> list[TwoHeadSample]:
        return [(path, (y, NO_BREED)) for path, y in samples]

    def bred(samples: Sequence[Sample]) -> list[TwoHeadSample]:
        return [(path, (of_breed[b], b)) for path, b in samples]

    return plain(species.train) + bred(breeds.train), plain(species.val) + bred(breeds.val)


def bank_groups(samples: Sequence[TwoHeadSample], num_breeds: int) -> list[Sample]:
    """``(path, group)`` for balancing the "is it a pet?" bank over every breed and label
    (:func:`training.calibrate.fit_model_ood`): the breed index, or ``num_breeds + label`` for a
    photo without a breed."""
    return [(path, breed if breed != NO_BREED else num_breeds + label) for path, (label, breed) in samples]
