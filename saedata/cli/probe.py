"""``saedata probe``: a stored dataset's SAE codes against the reader's dense embedding."""

from __future__ import annotations

import click

import saedata
from saedata.cli.app import Group, main
from saedata.cli.options import Real, db_option, device_option, emit, example, format_option, log, quiet_option


@main.group(cls=Group, epilog=example("saedata probe codes --dataset a --label-field topic --cv 3"))
def probe() -> None:
    """Probe a stored dataset's SAE codes against the reader's dense embedding.

    \b
    saedata probe codes --dataset photos --label-field folder   # linear probe + concept purity
    saedata probe ood --in photos --out other_photos            # out-of-distribution AUROC
    """


@probe.command("codes", epilog=example("saedata probe codes --dataset a --label-field topic --cv 3"))
@click.option("--dataset", required=True, help="Dataset to probe.")
@click.option("--label-field", required=True, help="Metadata column with the class (e.g. folder for images).")
@db_option
@click.option("--cv", type=click.IntRange(2, 1000), default=5, show_default=True, help="Cross-validation folds.")
@device_option("cpu")
@format_option
@quiet_option
@click.pass_context
def probe_codes(ctx, dataset, label_field, db, cv, device, fmt):
    """Linear-probe accuracy and concept purity of SAE codes vs the dense embedding.

    The dense embedding is the mean reader activation of each document at the SAE's
    layer (the reader runs once over the dataset); codes are the stored activations.
    """
    r = saedata.probe_dataset(db, dataset, label_field, cv=cv, device=device)
    log(ctx)(f"{r.dataset}: {r.n_docs} documents, {r.n_classes} classes of {r.label_field!r}")
    emit(r.table(), fmt)


@probe.command("ood", epilog=example("saedata probe ood --in a --out b"))
@click.option("--in", "in_dataset", required=True, help="In-distribution dataset (the SAE's own data).")
@click.option("--out", "out_dataset", required=True, help="Dataset to tell apart from it.")
@db_option
@click.option("--holdout", type=Real(0, 1, min_open=True, max_open=True), default=0.3, show_default=True,
              help="Share of the in-dataset held out as in-distribution test rows.")
@device_option("cpu")
@format_option
@quiet_option
def probe_ood_cmd(in_dataset, out_dataset, db, holdout, device, fmt):
    """Out-of-distribution detection from SAE codes and reconstruction error (AUROC).
    """
    emit(saedata.probe_ood(db, in_dataset, out_dataset, holdout=holdout, device=device).table(), fmt)
