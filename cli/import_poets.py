"""`flowers import-poets GRAPH --labels LABELS --output BUNDLE`: a codelab model as a bundle.

The `retrained_graph.pb` and `retrained_labels.txt` of "TensorFlow for Poets 2" become a bundle
that `flowers label`, `flowers label-dir` and `flowers export` take like one of `flowers train`
(see `models.codelab.importer`). The conversion needs TensorFlow and runs here, in this process,
imported only once the arguments are checked (as `flowers export` does); this command starts no
workers, so nothing forks after TensorFlow is loaded.
"""

from __future__ import annotations

from pathlib import Path

import click

from flowers.cli.context import CliContext
from flowers.cli.paths import PathParam
from flowers.models import ownership
from flowers.models.errors import UsageError, require_tensorflow


@click.command("import-poets")
@click.argument("graph", type=PathParam(dir_okay=False))
@click.option("--labels", "-l", required=True, type=PathParam(dir_okay=False),
              help="The retrained_labels.txt written with GRAPH (one class a line).")
@click.option("--architecture", "-a", default=None,
              help="retrain.py's --architecture (inception_v3, mobilenet_<alpha>_<size>); "
                   "default: read from the graph, and checked against it when given.")
@click.option("--output", "-o", required=True, type=PathParam(output=True),
              help="Bundle folder to create (it must not exist).")
@click.option("--output-tensor", default=None,
              help="The graph's class probabilities, if not final_result "
                   "(a base graph: MobilenetV1/Predictions/Reshape_1).")
@click.pass_obj
def import_poets(obj: CliContext, graph: Path, labels: Path, architecture: str | None,
                 output: Path, output_tensor: str | None) -> None:
    """Turn a codelab GRAPH (retrained_graph.pb) into a bundle the workers label with."""
    for path, what in ((graph, "GRAPH"), (labels, "--labels")):
        if not path.is_file():
            raise UsageError(f"{what} {path} does not exist or is not a file")
    output = ownership.check_output_place(output, bundle=True)
    if output.exists():
        raise UsageError(f"--output {output} exists: choose another folder or remove it")
    require_tensorflow("flowers import-poets (it converts the graph)")
    from flowers.models.codelab.importer import import_poets as run_import
    from flowers.models.runtime.tensorflow_setup import configure_tensorflow

    configure_tensorflow(obj.settings.threads_per_process())
    summary = run_import(graph, labels, output, architecture, output_tensor)
    source = "read from the graph" if summary["architecture_from"] == "graph" else "checked"
    click.echo(f"imported {graph} ({summary['architecture']}, {source}; {summary['input']} "
               f"{summary['input_size']}x{summary['input_size']} -> {summary['output']}, "
               f"{len(summary['classes'])} classes) into {summary['bundle']}")
    click.echo(f"label with: flowers label-dir PHOTOS --model {summary['bundle']} --output "
               "results.csv")
