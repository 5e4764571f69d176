"""Re-pooling: a dataset's document codes computed again from its stored token codes.

A dataset embedded with ``--store-tokens`` keeps every token's codes
(``token_activations``), so another pooling (max, mean, sum, count) needs no reader and
no corpus: the token codes go through the same :func:`~saedata.embed.encode.pooled_codes`
that embedding uses, with the dataset's own threshold and rounding, and the dataset is
finished again (counts, statistics, labels) in the same transaction. A run stopped
anywhere leaves the dataset as it was.

The token values are stored rounded as the pooled ones are (``value_digits``), so
re-pooling with the pooling a dataset was embedded with gives its values back exactly
(max) or to that rounding (sum, mean); the peak of a latent whose top tokens tie after
rounding may move to another of those tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from saedata.config import POOLINGS, EmbedConfig
from saedata.console import Log, silent
from saedata.embed.encode import peak_offsets, pooled_codes
from saedata.embed.finish import finish_datasets
from saedata.errors import ConfigError
from saedata.store import Store
from saedata.store.store import fault_point

REPOOL_DOCS = 2048
"""Documents re-pooled per step (bounds the token codes held in memory)."""


@dataclass(frozen=True)
class RepoolResult:
    """What ``saedata pool`` did."""

    dataset: str
    pooling: str
    previous: str
    n_docs: int
    n_token_codes: int
    n_activations: int


def repool(store: Store, dataset: str, pooling: str, log: Log = silent) -> RepoolResult:
    """Pool the documents of ``dataset`` again, from their stored token codes, with
    ``pooling``; in one transaction with the dataset's statistics and its SAE's labels."""
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    state = store.dataset_state(dataset)
    if not state.complete:
        raise ConfigError(f"dataset {dataset!r} is not completely embedded; rerun its `saedata embed` first")
    args = store.dataset_args(state.dataset_id)
    embedded = args.get("embed", {})
    n_docs, n_missing = store.macro("token_coverage", state.dataset_id).row(0)
    if n_missing or not embedded.get("store_tokens", False):
        raise ConfigError(
            f"dataset {dataset!r} was embedded without --store-tokens ({n_missing or n_docs} of its {n_docs} "
            "documents have no token codes); embed it again with --store-tokens (--name for a new dataset)")
    cfg = EmbedConfig.from_dict({**embedded, "pooling": pooling})
    previous = str(embedded.get("pooling", "max"))
    d_sae = int(store.sae_info(state.sae_id)["d_sae"])
    docs = store.doc_lengths([state.dataset_id])
    doc_ids, lengths = docs["doc_id"].to_numpy(), docs["n_tokens"].to_numpy().astype(np.int64)
    n_codes = n_acts = 0
    with store.transaction():
        store.clear_activations(state.dataset_id)
        for start in range(0, len(doc_ids), REPOOL_DOCS):
            ids, n_tokens = doc_ids[start : start + REPOOL_DOCS], lengths[start : start + REPOOL_DOCS]
            codes = store.macro("dataset_token_codes", state.dataset_id, int(ids[0]), int(ids[-1]) + 1)
            acts = _pooled(codes, ids, n_tokens, state.sae_id, d_sae, cfg)
            store.append_activations(acts)
            n_codes += codes.height
            n_acts += acts.height
            fault_point("repool:batch")
        store.set_dataset_args(state.dataset_id, {**args, "embed": cfg.to_dict()})
        finish_datasets(store, [state.dataset_id], state.sae_id, top_docs=cfg.label_top_docs,
                        n_words=cfg.label_words, checkpoint=False)
        fault_point("repool:finished")
    store.checkpoint()
    others = [r["name"] for r in store.datasets().iter_rows(named=True)
              if r["sae_id"] == state.sae_id and r["dataset_id"] != state.dataset_id
              and store.dataset_args(r["dataset_id"]).get("embed", {}).get("pooling", "max") != pooling]
    if others:
        log(f"note: {', '.join(others)} {'is' if len(others) == 1 else 'are'} pooled otherwise; values "
            "(search, cluster --scale values) compare across datasets only under one pooling, while presence "
            "(diff, correlate) does not depend on it")
    return RepoolResult(dataset, pooling, previous, len(doc_ids), n_codes, n_acts)


def _pooled(codes: pl.DataFrame, ids: np.ndarray, n_tokens: np.ndarray, sae_id: int, d_sae: int,
            cfg: EmbedConfig) -> pl.DataFrame:
    """The activations rows of documents ``ids`` (with ``n_tokens`` tokens each) pooled from
    their token ``codes``: token rows laid out document after document, as a reader's batch."""
    import torch

    first = np.concatenate([[0], np.cumsum(n_tokens)[:-1]])
    local = np.searchsorted(ids, codes["doc_id"].to_numpy())
    rows = first[local] + codes["token"].to_numpy().astype(np.int64)
    offsets = np.zeros((int(n_tokens.sum()), 2), dtype=np.int64)
    text = codes["char_start"].null_count() == 0
    if text:
        offsets[rows, 0] = codes["char_start"].to_numpy()
        offsets[rows, 1] = codes["char_end"].to_numpy()
    doc_index = np.repeat(np.arange(len(ids)), n_tokens)
    pooled = pooled_codes(torch.as_tensor(rows), torch.as_tensor(codes["latent"].to_numpy().astype(np.int64)),
                          torch.as_tensor(codes["value"].to_numpy().astype(np.float32)),
                          torch.as_tensor(doc_index), torch.as_tensor(n_tokens), d_sae, cfg)
    peak = peak_offsets(offsets, pooled.peak) if text else pl.Series([None] * len(pooled.doc), dtype=pl.Int32)
    return pl.DataFrame({"doc_id": ids[pooled.doc], "sae_id": np.full(len(pooled.doc), sae_id, dtype=np.int32),
                         "latent": pooled.latent.astype(np.int32), "value": pooled.value, "peak": peak,
                         "tokens": pooled.tokens.astype(np.int32)})
