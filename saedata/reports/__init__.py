"""Reports: HTML pages and PNG figures made from the analyses' result objects.

    saedata.write_report(result, "report.html")    # any result: diff, correlate, metadata, cluster

:mod:`~saedata.reports.html` (self-contained pages of blocks) and
:mod:`~saedata.reports.png` (matplotlib figures) are the parts; one module per analysis
lays its report out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def write_report(result: Any, path: str | os.PathLike, **kwargs: Any) -> Path | None:
    """Write the offline HTML report of an analysis result to ``path``; returns the path.

    A :class:`~saedata.analysis.diff.DiffResult` (``top``: latents in the chart), a
    correlate or metadata result, a latent's page, an SAE evaluation
    (:func:`saedata.eval_saes`), or a cluster result (``png``: where its 2-D map goes,
    default beside the report; to a ``.png`` path, a cluster result writes the map alone,
    or nothing and returns None when it has no map).
    """
    from saedata.analysis.cluster import ClusterResult
    from saedata.analysis.correlate import CorrelateResult, MetadataResult
    from saedata.analysis.diff import DiffResult
    from saedata.analysis.latent import LatentPage
    from saedata.embed.evaluate import EvalResult

    if isinstance(result, DiffResult):
        from saedata.reports.diff import diff_report

        return diff_report(result, **kwargs).write(path)
    if isinstance(result, LatentPage):
        from saedata.reports.latent import write_latent_report

        return write_latent_report(result, path, **kwargs)
    if isinstance(result, CorrelateResult):
        from saedata.reports.correlate import write_correlate_report

        return write_correlate_report(result, path, **kwargs)
    if isinstance(result, MetadataResult):
        from saedata.reports.correlate import write_metadata_report

        return write_metadata_report(result, path, **kwargs)
    if isinstance(result, EvalResult):
        from saedata.reports.eval import write_eval_report

        return write_eval_report(result, path, **kwargs)
    if isinstance(result, ClusterResult):
        from saedata.reports.cluster import write_cluster_map, write_cluster_report

        if Path(path).suffix.lower() == ".png":
            return write_cluster_map(result, path)
        return write_cluster_report(result, path, **kwargs)[0]
    raise TypeError(f"no report for a {type(result).__name__}")
