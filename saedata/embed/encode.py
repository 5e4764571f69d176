"""Token activations -> document codes: encode -> pool -> threshold -> round, in one copy.

:func:`pooled_codes` is the step every path shares: the single-process embed and each
Ray worker (through :func:`embed_chunk`), the query of a property search
(:func:`document_codes`, from :class:`~saedata.embed.models.StoreModels`) and re-pooling
stored token codes (:mod:`saedata.embed.repool`), so a query's codes are computed exactly
as its store's documents were. With ``store_tokens`` a chunk also keeps every token's
codes (:func:`token_codes_frame`). :func:`mean_activations` is the other use of a reader: the
dense embedding (mean activation per text) that probes and axis matching compare with.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import polars as pl

from saedata.config import EmbedConfig
from saedata.corpus import Document
from saedata.errors import InputError, ReaderError
from saedata.label import word_document_frequency

if TYPE_CHECKING:
    import torch

    from saedata.reader import Reader, TokenBatch, VisionReader
    from saedata.sae import SparseAutoencoder


class Pooled(NamedTuple):
    """Pooled document codes of one batch, one entry per non-zero (document, latent)."""

    doc: torch.Tensor
    """(nnz,) int64 document index within the batch."""
    latent: torch.Tensor
    """(nnz,) int64 latent index."""
    value: torch.Tensor
    """(nnz,) float32 pooled value."""
    peak: torch.Tensor
    """(nnz,) int64 token row (into the batch's token arrays) where |code| peaked."""
    tokens: torch.Tensor
    """(nnz,) int64 how many of the document's tokens the latent fired on (non-zero code)."""


class DocCodes(NamedTuple):
    """Stored document codes of one batch (numpy), one entry per kept (document, latent)."""

    doc: np.ndarray
    """(nnz,) int64 document index within the batch."""
    latent: np.ndarray
    """(nnz,) int64 latent index."""
    value: np.ndarray
    """(nnz,) float32 pooled value, rounded to the stored significant digits."""
    peak: np.ndarray
    """(nnz,) int64 token row where |code| peaked."""
    tokens: np.ndarray
    """(nnz,) int64 how many of the document's tokens the latent fired on."""


def encode_tokens(sae: SparseAutoencoder, acts: torch.Tensor,
                  chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAE-encode token activations (n_tokens, d_in) in chunks of ``chunk`` tokens; returns
    the non-zero codes as (token row, latent, value) triplets."""
    import torch

    rows, lats, vals = [], [], []
    with torch.inference_mode():
        for start in range(0, acts.shape[0], chunk):
            codes = sae.encode_sparse(acts[start : start + chunk])
            nz = codes.values != 0
            r = torch.arange(start, start + codes.values.shape[0], device=acts.device)
            rows.append(r[:, None].expand_as(codes.values)[nz])
            lats.append(codes.indices[nz])
            vals.append(codes.values[nz].float())
    if not rows:
        empty = torch.zeros(0, dtype=torch.int64, device=acts.device)
        return empty, empty, torch.zeros(0, device=acts.device)
    return torch.cat(rows), torch.cat(lats), torch.cat(vals)


def pool_codes(
    rows: torch.Tensor,
    latents: torch.Tensor,
    values: torch.Tensor,
    doc_index: torch.Tensor,
    n_tokens: torch.Tensor,
    d_sae: int,
    pooling: str = "max",
) -> Pooled:
    """Pool token codes per document.

    ``rows``, ``latents``, ``values``: the non-zero token codes as (token row, latent,
    value) triplets; ``doc_index`` (n_tokens,) maps token rows to documents;
    ``n_tokens`` (n_docs,) tokens per document. ``max`` keeps the value of largest
    magnitude with its sign (the plain max for non-negative codes), ``sum`` adds,
    ``mean`` divides the sum by the document's token count, ``count`` is the number of
    the document's tokens the latent fired on. Whatever the pooling, each
    entry also counts the tokens the latent fired on: what length-robust presence and
    concept weights are computed from (:mod:`saedata.analysis.presence`).
    """
    import torch

    key = doc_index[rows] * d_sae + latents
    uniq, inv = torch.unique(key, return_inverse=True)
    m = uniq.numel()
    magnitude = values.abs()
    peak_mag = torch.zeros(m, device=values.device).scatter_reduce(
        0, inv, magnitude, "amax", include_self=False
    )
    is_peak = magnitude == peak_mag[inv]
    peak = torch.full((m,), -1, dtype=torch.int64, device=values.device).scatter_reduce(
        0, inv, torch.where(is_peak, rows, -1), "amax", include_self=True
    )
    tokens = torch.zeros(m, dtype=torch.int64, device=values.device).scatter_add(
        0, inv, torch.ones_like(inv))
    if pooling == "max":
        at_peak = is_peak & (rows == peak[inv])
        value = torch.zeros(m, device=values.device).scatter(0, inv[at_peak], values[at_peak])
    elif pooling == "count":
        value = tokens.to(values.dtype)
    else:
        value = torch.zeros(m, device=values.device).scatter_add(0, inv, values)
        if pooling == "mean":
            value = value / n_tokens[torch.div(uniq, d_sae, rounding_mode="floor")].clamp(min=1)
    return Pooled(torch.div(uniq, d_sae, rounding_mode="floor"), uniq % d_sae, value, peak, tokens)


def round_significant(values: np.ndarray, digits: int | None) -> np.ndarray:
    """``values`` rounded to ``digits`` significant decimal digits, as float32 (None: unchanged)."""
    if digits is None:
        return values.astype(np.float32)
    v = values.astype(np.float64)
    out = np.zeros_like(v)
    nz = v != 0
    scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(v[nz]))))
    out[nz] = np.round(v[nz] * scale) / scale
    return out.astype(np.float32)


def document_codes(sae: SparseAutoencoder, batch: TokenBatch, embed_cfg: EmbedConfig) -> DocCodes:
    """The stored codes of a batch of documents: SAE-encode every token, then
    :func:`pooled_codes`."""
    import torch

    rows, lats, vals = encode_tokens(sae, batch.acts, embed_cfg.encode_tokens)
    n_tokens = torch.as_tensor(batch.n_tokens, device=batch.acts.device)
    return pooled_codes(rows, lats, vals, batch.doc_index, n_tokens, sae.d_sae, embed_cfg)


def pooled_codes(rows: torch.Tensor, latents: torch.Tensor, values: torch.Tensor, doc_index: torch.Tensor,
                 n_tokens: torch.Tensor, d_sae: int, embed_cfg: EmbedConfig) -> DocCodes:
    """Token codes pooled per document (:func:`pool_codes`), |value| > ``min_value`` kept
    (every non-zero at 0), rounded to ``value_digits``: what embedding stores, and what
    re-pooling stored token codes gives."""
    pooled = pool_codes(rows, latents, values, doc_index, n_tokens, d_sae, embed_cfg.pooling)
    keep = pooled.value.abs() > embed_cfg.min_value if embed_cfg.min_value > 0 else pooled.value != 0
    if not bool(keep.all()):
        pooled = Pooled(*(t[keep] for t in pooled))
    doc, latent, value, peak, tokens = (t.cpu().numpy() for t in pooled)
    return DocCodes(doc, latent, round_significant(value, embed_cfg.value_digits), peak, tokens)


def peak_offsets(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The character offset stored as a code's ``peak``: the last character of token
    ``rows`` (spans ``offsets``), inside its word even when the token carries a leading
    space (GPT-2 style byte-level BPE)."""
    return np.maximum(offsets[rows, 1] - 1, offsets[rows, 0]).astype(np.int32)


def token_positions(doc_index: np.ndarray) -> np.ndarray:
    """(n_tokens,) each token row's index within its document (rows of a document are in
    text order, but documents may come in any order: a reader sorts them by length)."""
    order = np.argsort(doc_index, kind="stable")
    sorted_docs = doc_index[order]
    first = np.searchsorted(sorted_docs, sorted_docs, side="left")
    out = np.empty(len(doc_index), dtype=np.int64)
    out[order] = np.arange(len(doc_index)) - first
    return out


def token_codes_frame(ids: np.ndarray, batch: TokenBatch, rows: torch.Tensor, latents: torch.Tensor,
                      values: torch.Tensor, sae_id: int, embed_cfg: EmbedConfig, images: bool) -> pl.DataFrame:
    """The ``token_activations`` rows of a batch: every non-zero token code, with the
    token's index in its document and character span (NULL for image patches)."""
    r = rows.cpu().numpy()
    doc_index = batch.doc_index.cpu().numpy()
    span = (pl.Series([None] * len(r), dtype=pl.Int32),) * 2 if images else \
        (batch.offsets[r, 0].astype(np.int32), batch.offsets[r, 1].astype(np.int32))
    return pl.DataFrame(
        {"doc_id": ids[doc_index[r]], "sae_id": np.full(len(r), sae_id, dtype=np.int32),
         "token": token_positions(doc_index)[r].astype(np.int32), "char_start": span[0], "char_end": span[1],
         "latent": latents.cpu().numpy().astype(np.int32),
         "value": round_significant(values.cpu().numpy(), embed_cfg.value_digits)}
    ).sort("doc_id", "token", "latent")


class EmbeddedChunk(NamedTuple):
    """One chunk of documents embedded: rows for the store's tables."""

    documents: pl.DataFrame
    """The ``documents`` table's columns."""
    activations: pl.DataFrame
    """The ``activations`` table's columns."""
    word_counts: pl.DataFrame
    """(word, df): the chunk's share of the background word counts labels contrast with."""
    n_truncated: int
    tokens: pl.DataFrame | None = None
    """The ``token_activations`` table's columns (``embed_cfg.store_tokens``), else None."""


def reader_texts(docs: list[Document], reader: Reader | VisionReader) -> tuple[list[str], list[list | None]]:
    """The text the reader reads for each document -- a chat transcript rendered with the
    reader's chat template (:meth:`~saedata.reader.Reader.render`) -- and, for each
    transcript, the character spans of its assistant messages (None for other documents)."""
    texts: list[str] = []
    spans: list[list | None] = []
    for d in docs:
        if d.messages is None:
            texts.append(d.text)
            spans.append(None)
        else:
            try:
                text, answer = reader.render(d.messages, d.text)  # type: ignore[union-attr]
            except ReaderError as e:
                raise InputError(str(e), line=d.line) from e
            texts.append(text)
            spans.append(answer)
    return texts, spans


def keep_spans(batch: TokenBatch, docs: list[Document], spans: list[list | None]) -> TokenBatch:
    """``batch`` less the tokens of each transcript outside its assistant spans (a token is
    kept when its characters lie inside one); other documents keep every token.

    Raises InputError (naming the line) for a transcript with no assistant message to pool."""
    import torch

    keep = np.ones(len(batch.offsets), dtype=bool)
    doc_index = batch.doc_index.cpu().numpy()
    for i, answer in enumerate(spans):
        if answer is None:
            continue
        if not answer:
            raise InputError("the transcript has no assistant message to pool; --chat-tokens all reads "
                             "every message", line=docs[i].line)
        rows = np.flatnonzero(doc_index == i)
        start, end = batch.offsets[rows, 0], batch.offsets[rows, 1]
        inside = np.zeros(len(rows), dtype=bool)
        for s, e in answer:
            inside |= (start >= s) & (end <= e)
        keep[rows] = inside
    if keep.all():
        return batch
    mask = torch.as_tensor(keep, device=batch.acts.device)
    kept_index = batch.doc_index[mask]
    return batch._replace(acts=batch.acts[mask], doc_index=kept_index, token_ids=batch.token_ids[keep],
                          offsets=batch.offsets[keep],
                          n_tokens=np.bincount(doc_index[keep], minlength=len(spans)).astype(np.int64))


def embed_chunk(docs: list[Document], first_id: int, reader: Reader | VisionReader, model: SparseAutoencoder,
                sae_id: int, dataset_id: int, embed_cfg: EmbedConfig, images: bool = False) -> EmbeddedChunk:
    """Read, encode and pool ``docs`` (doc ids ``first_id``, ``first_id + 1``, ...): the
    unit of work that the single-process run and each distributed worker share. A chat
    transcript is stored as the reader read it (its chat template applied) and pooled over
    its assistant messages unless ``embed_cfg.chat_tokens`` is "all"."""
    import torch

    ids = np.arange(first_id, first_id + len(docs), dtype=np.int64)
    texts, spans = reader_texts(docs, reader)
    batch = reader.read(texts)
    if embed_cfg.chat_tokens == "assistant" and any(s is not None for s in spans):
        batch = keep_spans(batch, docs, spans)
    rows, lats, vals = encode_tokens(model, batch.acts, embed_cfg.encode_tokens)
    codes = pooled_codes(rows, lats, vals, batch.doc_index, torch.as_tensor(batch.n_tokens, device=batch.acts.device),
                         model.d_sae, embed_cfg)
    if images:
        peak = pl.Series("peak", [None] * len(codes.doc), dtype=pl.Int32)  # no text position
    else:
        peak = peak_offsets(batch.offsets, codes.peak)
    acts = pl.DataFrame(
        {"doc_id": ids[codes.doc], "sae_id": np.full(len(codes.doc), sae_id, dtype=np.int32),
         "latent": codes.latent.astype(np.int32), "value": codes.value, "peak": peak,
         "tokens": codes.tokens.astype(np.int32)}
    )
    doc_frame = pl.DataFrame(
        {"doc_id": ids, "dataset_id": np.full(len(docs), dataset_id, dtype=np.int32),
         "ext_id": [d.ext_id for d in docs], "text": texts,
         "meta": [json.dumps(d.meta, ensure_ascii=False) if d.meta else None for d in docs],
         "n_tokens": batch.n_tokens.astype(np.int32)},
        schema_overrides={"meta": pl.String},
    )
    tokens = token_codes_frame(ids, batch, rows, lats, vals, sae_id, embed_cfg, images) \
        if embed_cfg.store_tokens else None
    return EmbeddedChunk(doc_frame, acts, word_document_frequency(texts), int(batch.truncated.sum()), tokens)


def mean_activations(reader: Reader | VisionReader, texts: list[str], batch_docs: int | None = None) -> np.ndarray:
    """(n_texts, d_model) float32: each text's reader activations at the reader's layer,
    averaged over its tokens (patches for images), read ``batch_docs`` texts at a time
    (all at once when None)."""
    import torch

    out = np.zeros((len(texts), reader.d_model), dtype=np.float32)
    step = batch_docs or max(len(texts), 1)
    for start in range(0, len(texts), step):
        batch = reader.read(texts[start : start + step])
        sums = torch.zeros(len(batch.n_tokens), batch.acts.shape[1], device=batch.acts.device)
        sums.index_add_(0, batch.doc_index, batch.acts)
        n = torch.as_tensor(batch.n_tokens, device=sums.device).clamp(min=1).unsqueeze(1)
        out[start : start + len(batch.n_tokens)] = (sums / n).cpu().numpy()
    return out
