"""models/text.py: MiniLM vectors equal sentence-transformers', the query cache, the item index, interest decay."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.text import (
    DIM,
    ItemTextIndex,
    TextEncoder,
    decay_interest,
    default_model_path,
    display_title,
    movie_text,
    normalise_text,
)
from rtrec.config import TextConfig, load_config
from rtrec.datasets import Movie

TEXTS = [
    "toy story",
    "Toy Story (1995); genres: Animation, Children's, Comedy",
    "The Usual Suspects (1995); genres: Crime, Thriller",
    "a",
    "",
    "scary horror movies with zombies",
    "Amélie: le fabuleux destin — ünïcödé text",
    # Longer than max_length (256 tokens): both sides cut it the same way.
    " ".join(["a long winding story about a space station and its crew"] * 40),
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    enc = TextEncoder(TextConfig(device="cpu", batch_size=4, cache_size=100))
    enc.warm_up()
    return enc


def count_forwards(enc: TextEncoder) -> list[int]:
    """Wrap the transformer's forward to count calls independently of the encoder's own counter."""
    calls = [0]
    inner = enc.model.forward

    def forward(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    enc.model.forward = forward
    return calls


def test_config_section():
    cfg = load_config(overrides=["text.batch_size=8", "text.search_personal_weight=0.5", "text.cache_size=0"])
    assert (cfg.text.batch_size, cfg.text.search_personal_weight, cfg.text.cache_size) == (8, 0.5, 0)
    assert cfg.to_dict()["text"]["max_length"] == 256


def test_matches_sentence_transformers(encoder):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(default_model_path()), device="cpu",
                                                         local_files_only=True)
    ref = reference.encode(TEXTS, convert_to_tensor=True, batch_size=4).float()
    ours = encoder.encode_uncached(TEXTS)
    assert ours.shape == ref.shape == (len(TEXTS), DIM)
    assert (ours - ref).abs().max().item() < 1e-5
    assert F.cosine_similarity(ours, ref).min().item() > 0.99999


def test_vectors_are_unit_rows_on_the_device(encoder):
    vecs = encoder.encode_uncached(TEXTS[:3])
    assert vecs.device == encoder.device and vecs.dtype == torch.float32
    torch.testing.assert_close(vecs.norm(dim=1), torch.ones(3))
    assert encoder.encode([]).shape == (0, DIM)
    assert not vecs.is_inference()  # callers may use them in ordinary (even in-place) torch code


def test_repeated_query_is_a_cache_hit_without_a_forward_pass(encoder):
    encoder.cache_clear()
    calls = count_forwards(encoder)
    first = encoder.encode(["toy story"])
    assert calls[0] == 1 and encoder.cache_info().misses == 1
    again = encoder.encode(["  toy   story "])  # the same text once whitespace is normalised
    assert calls[0] == 1
    info = encoder.cache_info()
    assert (info.hits, info.misses, info.size) == (1, 1, 1)
    torch.testing.assert_close(again, first)

    # Only the misses of a batch go to the model, together, each once.
    out = encoder.encode(["star wars", "toy story", "star wars", "alien"])
    assert calls[0] == 2  # one forward pass for the two new texts
    info = encoder.cache_info()
    assert (info.hits, info.misses, info.size) == (3, 3, 3)
    torch.testing.assert_close(out[0], out[2])
    torch.testing.assert_close(out[1], first[0])
    torch.testing.assert_close(out, encoder.encode_uncached(["star wars", "toy story", "star wars", "alien"]),
                               atol=1e-6, rtol=0)


def test_cache_is_lru_and_can_be_off():
    small = TextEncoder(TextConfig(device="cpu", cache_size=2))
    small.encode(["a"])
    small.encode(["b"])
    small.encode(["a"])  # a is now the most recent
    small.encode(["c"])  # evicts b
    calls = count_forwards(small)
    small.encode(["a", "c"])
    assert calls[0] == 0
    small.encode(["b"])
    assert calls[0] == 1 and small.cache_info().size == 2

    off = TextEncoder(TextConfig(device="cpu", cache_size=0))
    calls = count_forwards(off)
    off.encode(["a"])
    off.encode(["a"])
    assert calls[0] == 2 and off.cache_info() == (0, 2, 0, 0)


def test_misses_beyond_a_batch_take_several_passes(encoder):
    encoder.cache_clear()
    calls = count_forwards(encoder)
    encoder.encode([f"query number {i}" for i in range(10)])  # batch_size 4
    assert calls[0] == 3


def test_item_index_similarity_and_unknown_items(encoder):
    index = ItemTextIndex(encoder, {
        "1": "Toy Story (1995); genres: Animation, Children's, Comedy",
        "2": "GoldenEye (1995); genres: Action, Adventure, Thriller",
        "3": "Dead Man Walking (1995); genres: Drama",
    }, capacity=2)  # grows
    assert len(index) == 3 and "2" in index and "9" not in index
    q = encoder.encode(["toy story", "james bond action"])
    sims = index.similarity(q, ["1", "2", "9", "3"])
    assert sims.shape == (2, 4)
    assert index.last_unknown == ["9"] and index.unknown_lookups == 1
    assert sims[:, 2].abs().max().item() == 0.0
    assert sims[0].argmax().item() == 0 and sims[1].argmax().item() == 1
    torch.testing.assert_close(sims[0, 0], (q[0] * encoder.encode_uncached([
        "Toy Story (1995); genres: Animation, Children's, Comedy"])[0]).sum())
    # One query as a vector gives a vector.
    assert index.similarity(q[0], ["1", "3"]).shape == (2,)

    index.add("9", "Alien (1979); genres: Horror, Sci-Fi")  # streamed in later
    assert index.similarity(encoder.encode(["alien"]), ["9"])[0, 0].item() > 0.5
    assert index.last_unknown == []

    sims, valid = index.candidate_similarity(q, [["2", "1"], ["2"]])
    assert valid.tolist() == [[True, True], [True, False]]
    torch.testing.assert_close(sims[0], index.similarity(q[0], ["2", "1"]))
    assert sims[1, 1].item() == 0.0


def test_movie_text():
    assert movie_text(Movie("1", "Toy Story", "1995", ("Animation", "Children's", "Comedy"))) == \
        "Toy Story (1995); genres: Animation, Children's, Comedy"
    assert movie_text(Movie("2", "Usual Suspects, The", "1995", ("unknown",))) == "The Usual Suspects (1995)"
    assert display_title("Net, The") == "The Net" and display_title("Seven (Se7en)") == "Seven (Se7en)"
    assert normalise_text(" a \n b ") == "a b"


def test_decay_interest_maths():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])
    half = 1000.0

    # No history: the item's own direction, whatever it was before.
    v, m = decay_interest(torch.zeros(3), b, dt_ms=0, half_life_ms=half, mass=0.0)
    torch.testing.assert_close(v, torch.tensor([0.0, 1.0, 0.0]))
    assert m == 1.0

    # dt = 0: history of mass 1 and the new item weigh the same.
    v, m = decay_interest(a, b, dt_ms=0, half_life_ms=half, mass=1.0)
    torch.testing.assert_close(v, F.normalize(torch.tensor([1.0, 1.0, 0.0]), dim=0))
    assert m == 2.0

    # One half-life later a history of mass 4 counts as 2 against the new item's 1.
    v, m = decay_interest(a, b, dt_ms=1000, half_life_ms=half, mass=4.0)
    torch.testing.assert_close(v, F.normalize(torch.tensor([2.0, 1.0, 0.0]), dim=0))
    assert m == pytest.approx(3.0)

    # Long ago: the history is all but gone. Negative dt counts as 0.
    v, _ = decay_interest(a, b, dt_ms=100_000, half_life_ms=half, mass=4.0)
    assert v[1].item() > 0.999
    torch.testing.assert_close(decay_interest(a, b, -50, half, 1.0)[0], decay_interest(a, b, 0, half, 1.0)[0])

    # Always a unit vector; weight scales the item's share.
    v, m = decay_interest(a, b, 0, half, mass=1.0, weight=3.0)
    torch.testing.assert_close(v, F.normalize(torch.tensor([1.0, 3.0, 0.0]), dim=0))
    assert m == 4.0

    # Batched: (B, dim) with (B,) dt and mass equals row by row.
    vecs = F.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    items = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    dts, masses = torch.tensor([0.0, 500.0, 1000.0, 3000.0]), torch.tensor([1.0, 2.0, 0.0, 5.0])
    bv, bm = decay_interest(vecs, items, dts, half, mass=masses)
    for i in range(4):
        rv, rm = decay_interest(vecs[i], items[i], float(dts[i]), half, mass=float(masses[i]))
        torch.testing.assert_close(bv[i], rv)
        assert bm[i].item() == pytest.approx(rm)
    torch.testing.assert_close(bv.norm(dim=1), torch.ones(4))


def test_an_encoded_catalogue_is_kept_on_disk_and_loaded_at_the_next_start(tmp_path):
    cfg = TextConfig(device="cpu", batch_size=4, catalogue_cache_dir=str(tmp_path))
    texts = {str(i): t for i, t in enumerate(TEXTS)}
    first = ItemTextIndex(TextEncoder(cfg), texts)
    assert len(list(tmp_path.glob("catalogue-*.pt"))) == 1
    again = TextEncoder(cfg)  # a job starting again
    calls = count_forwards(again)
    index = ItemTextIndex(again, texts)
    assert calls[0] == 0
    torch.testing.assert_close(index.matrix, first.matrix, atol=0, rtol=0)
    torch.testing.assert_close(index.vectors(["0", "3"]), again.encode_uncached([TEXTS[0], TEXTS[3]]),
                               atol=1e-6, rtol=0)
    # Another catalogue (one text changed) is encoded, and kept beside the first.
    ItemTextIndex(again, {**texts, "0": "a different film"})
    assert calls[0] > 0 and len(list(tmp_path.glob("catalogue-*.pt"))) == 2
    # A torn file is encoded again, not trusted.
    for f in tmp_path.glob("catalogue-*.pt"):
        f.write_bytes(b"torn")
    calls[0] = 0
    torch.testing.assert_close(ItemTextIndex(again, texts).matrix, first.matrix, atol=1e-6, rtol=0)
    assert calls[0] > 0
    # Items added one at a time while the job runs are not kept.
    count = len(list(tmp_path.glob("*.pt")))
    index.add("new", "a film added later")
    assert len(list(tmp_path.glob("*.pt"))) == count


def test_the_catalogue_cache_can_be_off(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert TextEncoder(TextConfig(device="cpu")).catalogue_cache() == tmp_path / "rtrec" / "text"
    off = TextEncoder(TextConfig(device="cpu", catalogue_cache_dir="none"))
    assert off.catalogue_cache() is None
    ItemTextIndex(off, {"1": "toy story"})
    assert not list(tmp_path.rglob("*.pt"))
