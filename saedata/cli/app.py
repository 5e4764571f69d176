"""The ``saedata`` Click group: global options, and user mistakes as one line on stderr.

A :class:`~saedata.errors.SaedataError` becomes ``Error: <message>`` and exit code 1;
bad usage exits 2 (Click's own); Ctrl-C prints ``interrupted`` and exits 130.
"""

from __future__ import annotations

from typing import Any

import click

from saedata import __version__
from saedata.cli.options import example
from saedata.errors import SaedataError


class Group(click.Group):
    """A Click group that turns saedata errors into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SaedataError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # a full disk, a permission: one line naming the file
            where = f"{e.filename}: " if e.filename else ""
            raise click.ClickException(f"{where}{e.strerror or e}") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=example("saedata diff a.jsonl b.jsonl --report diff.html"))
@click.version_option(__version__, prog_name="saedata")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or messages on stderr.")
@click.pass_context
def main(ctx: click.Context, quiet: bool) -> None:
    """Interpretable embeddings: corpora as sparse SAE concept vectors in DuckDB.

    \b
    saedata diff a.jsonl b.jsonl --report diff.html   # which concepts are more common in one corpus
    saedata embed corpus.jsonl                 # train an SAE on the corpus, embed it into run.duckdb
    saedata latents --top 20                   # the commonest concepts, with labels
    saedata show 17                            # one document's concepts, strongest first
    saedata sql "SELECT label, count(*) FROM concepts GROUP BY ALL ORDER BY 2 DESC LIMIT 5"
    saedata embed 'data/*.jsonl' --engine ray --out shards/   # on Ray, into Parquet shards
    """
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet
