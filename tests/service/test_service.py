"""The service layer on the tiny model: each operation judged where the user checks it next,
and each sentence said the same way by both surfaces."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import synthetic_photo

FOOL_STEPS = 20


@pytest.fixture(scope="module")
def service(tiny_onnx, tiny_checkpoint):
    from service import Service

    return Service.load(tiny_onnx, tiny_checkpoint, fool_steps=FOOL_STEPS, ideal_steps=4, ideal_size=64)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_fool_defaults_to_the_other_label_and_is_judged_on_the_image_sent_back(service):
    photo = service.photo(png(synthetic_photo("dog", 7, size=(320, 256))), name="Rex (1).png", heavy=True)
    answer = service.fool(photo, strength=4)
    assert answer.source.label == "dog" and answer.target == "cat"
    # The deployed classifier's whole verdict on the very image, as /classify would give it.
    again = service.classify(answer.image)
    assert answer.success and again.label == "cat" and again.top == answer.result.top
    diff = np.abs(np.asarray(answer.image, np.int16) - np.asarray(photo.image, np.int16))
    assert answer.image.size == photo.image.size and 0 < diff.max() == answer.linf <= 4
    assert answer.file_name == "Rex-1-as-cat.png" and answer.headline() == "A dog the network swears is a cat"
    assert "**Fooled.**" in answer.summary() and "4/255" not in answer.summary().split("\n")[0]


def test_fool_on_what_it_already_sees_does_nothing_and_says_so(service):
    photo = service.photo(png(synthetic_photo("cat", 7, size=(320, 256))), heavy=True)
    answer = service.fool(photo, target="CAT")  # any case: the label as the model spells it
    assert answer.already and answer.image is None and not answer.success and answer.steps == 0
    assert answer.headline() == "Already a cat" and "already sees **cat**" in answer.summary()
    assert "Pick another target (dog)" in answer.summary() and "0/255" not in answer.summary()


@pytest.mark.parametrize("strength, words", [(0, "from 1 to 16"), (17, "from 1 to 16"), ("huge", r"subtle \(1\)")])
def test_bad_options_are_user_errors_naming_the_choices(service, strength, words):
    from service import UserError

    photo = service.photo(png(synthetic_photo("dog", 1)), heavy=True)
    with pytest.raises(UserError, match=words):
        service.fool(photo, strength=strength)
    with pytest.raises(UserError, match="choose one of: cat, dog"):
        service.fool(photo, target="parrot")
    with pytest.raises(UserError, match="choose one of: cat, dog"):
        service.ideal("zebra")


def test_a_big_photo_is_worked_at_the_working_size_and_the_answer_says_so(service):
    big = synthetic_photo("dog", 3, size=(3000, 2000))
    photo = service.photo(png(big), heavy=True)
    assert photo.image.size == (1024, 683) and photo.original_size == (3000, 2000) and photo.scaled
    answer = service.fool(photo, strength=4)
    assert answer.image.size == (1024, 683)
    assert "Your 3000×2000 photo was worked on at 1024×683 pixels." in answer.summary()
    # Classifying decodes at reduced scale, but never below what the classifier looks at.
    assert min(service.photo(png(big)).image.size) >= 256


def test_ideal_reports_done_and_how_sure_the_deployed_model_is(service):
    answer = service.ideal("dog", seed=1)
    assert answer.image.size == (64, 64) and answer.file_name == "ideal-dog-seed1.png"
    judged = dict(service.classifier.predict(answer.image, top_k=2))["dog"]
    assert answer.prob == pytest.approx(judged, abs=1e-6)
    assert answer.summary().startswith("**Done:** the network's ideal dog, after 4 steps")
    assert f"**{judged:.1%}** sure it is a dog" in answer.summary()


def test_explain_on_something_that_is_not_a_pet_says_so(tiny_ood_onnx, tiny_ood_checkpoint):
    from service import Service
    from tests.conftest import shifted_photo

    svc = Service.load(tiny_ood_onnx, tiny_ood_checkpoint)
    stripes = svc.photo(png(shifted_photo("stripes", 5)), heavy=True)
    answer = svc.explain(stripes)
    assert answer.source.verdict == "not_pet" and answer.headline() == "Not a cat or a dog?"
    assert answer.summary().startswith("**This doesn't look like a cat or a dog")
    assert f"what pushed it towards **{answer.label}**" in answer.summary()
    assert answer.overlay.size == stripes.image.size and set(answer.grids) == {"early", "middle", "late"}


def test_without_a_checkpoint_the_heavy_jobs_say_why(tiny_onnx):
    from service import Service, UserError

    svc = Service.load(tiny_onnx, None)
    with pytest.raises(UserError, match="not available: this service runs without a torch checkpoint"):
        svc.ideal("cat")


def test_one_pixel_limit_and_one_message_before_and_after_download(service):
    """The bot refuses from Discord's announced size, the intake from the header: same words."""
    from service.photos import check_metadata
    from tests.demo.conftest import bomb_png
    from training.images import ImageError

    before = check_metadata("bomb.png", "image/png", 900, 50_000, 50_000, service.limits)
    with pytest.raises(ImageError) as after:
        service.photo(bomb_png(50_000), name="bomb.png")
    assert before.startswith("image too large: 50000×50000 pixels, limit 60 megapixels.")
    assert str(after.value).startswith("image too large:") and "limit 60 megapixels" in str(after.value)


def test_a_jpeg_with_no_usable_label_is_judged_by_its_bytes():
    from bot.handlers import Upload, first_image
    from service.photos import is_image_bytes, looks_like_image

    buf = io.BytesIO()
    synthetic_photo("cat", 1).save(buf, format="JPEG")
    assert looks_like_image("blob", "application/octet-stream") is None and is_image_bytes(buf.getvalue())
    assert looks_like_image("notes.txt", "text/plain") is False and looks_like_image("x", "image/jpeg") is True

    async def read():
        return buf.getvalue()
    text = Upload("notes.txt", "text/plain", 10, None, None, read)
    blob = Upload("blob", None, 10, None, None, read)
    assert first_image([text, blob]) is blob


def test_the_same_fool_me_sentences_through_the_bot_and_the_demo(service, tiny_onnx, tiny_checkpoint, tmp_path):
    """Each sentence is written once (service.answers): the bot's reply and the demo's summary
    of the same photo carry the same outcome line."""
    from dataclasses import replace

    from bot.config import BOT_LIMITS, Settings
    from bot.handlers import Handlers, Upload
    from demo.common import Ctx
    from demo.tabs.fool import fool_me
    from demo.uploads import Uploads

    data = png(synthetic_photo("dog", 7, size=(320, 256)))
    (tmp_path / "rex.png").write_bytes(data)
    expected = service.fool(service.photo(data, heavy=True), strength="normal").outcome()

    settings = Settings(model=tiny_onnx, checkpoint=tiny_checkpoint, limits=BOT_LIMITS, cooldown_s=0.0,
                        classify_cooldown_s=0.0, fool_steps=FOOL_STEPS)
    handlers = Handlers(replace(settings))
    try:
        reply = asyncio.run(handlers.fool_me(Upload.from_path(tmp_path / "rex.png")))
    finally:
        handlers.close()
    ctx = Ctx(service, Uploads(tmp_path), [], {}, {}, {})
    *_, summary, _download = fool_me(str(tmp_path / "rex.png"), None, 2, ctx=ctx, progress=lambda *a, **k: None)
    assert expected in reply.text and expected in summary


def test_classify_gives_the_same_answer_on_discord_and_on_the_page(tiny_ood_onnx, tiny_ood_checkpoint, tmp_path):
    """The same photo, through the bot's /classify and the demo's Classify tab: the same
    headline, the same bars and the same caveat, for a pet and for things that are not."""
    from bot.config import BOT_LIMITS, Settings
    from bot.handlers import Handlers, Upload
    from demo.tabs.classify import classify_page
    from service import Service
    from tests.conftest import shifted_photo
    from tests.demo.conftest import make_ctx

    service = Service.load(tiny_ood_onnx, tiny_ood_checkpoint)
    photos = {"dog": synthetic_photo("dog", 8), "noise": shifted_photo("noise", 1), "stripes": shifted_photo("stripes", 2)}
    handlers = Handlers(Settings(model=tiny_ood_onnx, checkpoint=tiny_ood_checkpoint, limits=BOT_LIMITS, cooldown_s=0.0,
                                 classify_cooldown_s=0.0))
    ctx = make_ctx(service, tmp_path)
    verdicts = set()
    try:
        for name, img in photos.items():
            path = tmp_path / f"{name}.png"
            img.save(path)
            found = service.classify(service.photo(path))
            verdicts.add(found.verdict)
            reply = asyncio.run(handlers.classify(Upload.from_path(path), user=name))
            label, _photo, note = classify_page(str(path), ctx=ctx)
            assert reply.title == label["label"] == found.headline(), name
            assert [c["label"] for c in label["confidences"]] == [lab for lab, _ in found.top]
            assert all(f"{lab}" in reply.text for lab, _ in found.top)
            if found.caveat():
                assert found.caveat() in reply.text and found.caveat() in note, name
            else:
                assert note == found.breed_sentence(), name  # "" for a model without breeds
    finally:
        handlers.close()
    assert "pet" in verdicts and verdicts & {"unsure", "not_pet"}, verdicts  # both kinds of answer were compared


def test_a_breed_only_for_a_pet_and_only_in_plain_english():
    """The breed sentence of issue 21, from the service's words: the answered species' top
    breeds, never a breed when the network is unsure or the photo is not a pet."""
    from service.answers import Classified, breed_name

    dog = Classified([("dog", 0.97), ("cat", 0.03)], "pet", ("cat", "dog"),
                     breeds=(("yorkshire_terrier", 0.81), ("havanese", 0.09), ("pug", 0.004)))
    assert dog.breed_sentence() == "A dog, most like a Yorkshire terrier (81%), or a Havanese (9%)."
    assert dog.as_dict()["breed_sentence"] == dog.breed_sentence()
    cat = Classified([("cat", 0.9), ("dog", 0.1)], None, ("cat", "dog"), breeds=(("Egyptian_Mau", 0.6), ("Abyssinian", 0.3)))
    assert cat.breed_sentence() == "A cat, most like an Egyptian Mau (60%), or an Abyssinian (30%)."
    for verdict in ("unsure", "not_pet"):
        unsure = Classified([("dog", 0.9), ("cat", 0.1)], verdict, ("cat", "dog"), breeds=(("pug", 0.9),))
        assert unsure.breed_sentence() == "" and unsure.as_dict()["breeds"] == []
    assert [breed_name(b) for b in ("german_shorthaired", "British_Shorthair", "shiba_inu", "saint_bernard")] == [
        "German shorthaired pointer", "British Shorthair", "Shiba Inu", "Saint Bernard"]
