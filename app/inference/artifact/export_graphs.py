"""An export's graphs given to a runtime and held to the recorded check, graph by graph.

The runtime parses bytes that only a hash vouches for: a truncated or foreign graph, or one that
takes other inputs or computes other numbers, must be refused with its file's name and the
runtime's reason (`ExportError`, one line), never escape as the runtime's own exception type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from app.inference.artifact.export_format import GRAPH_OPS, ExportError
from app.inference.backends.base import Case, Runner, check_against
from models.checkpoint_errors import CheckpointError

RunnerFactory = Callable[[dict[str, bytes]], Runner]


def load_graphs(make: RunnerFactory, graphs: dict[str, bytes], files: dict[str, str]) -> Runner:
    """`make(graphs)`; when the runtime refuses them, says which graph (`files`: op -> name)."""
    try:
        return make(graphs)
    except CheckpointError:
        raise
    except Exception as exc:  # the runtime's own types (ONNX Runtime's derive from Exception)
        failure = exc
    for op in GRAPH_OPS:  # only after a failure: which graph was it?
        try:
            make({op: graphs[op]})
        except Exception as exc:
            raise ExportError(f"{files[op]} is not a graph this runtime loads: {exc}") from None
    raise ExportError(f"the runtime refuses the graphs: {failure}")


def verify_graphs(runner: Runner, cases: Sequence[Case], files: dict[str, str]) -> float:
    """The largest error over the recorded `cases`, each graph within `runner.bound` of them."""
    worst = 0.0
    for op in GRAPH_OPS:
        try:
            error = check_against(runner, [case for case in cases if case[0] == op])
        except Exception as exc:  # e.g. another input name or shape than the export's
            raise ExportError(f"{files[op]} fails on the recorded check's input: {exc}") from None
        if error == float("inf"):
            raise ExportError(
                f"{files[op]} does not give the recorded outputs' number and shapes (or gives NaN)"
            )
        if not error <= runner.bound:
            raise ExportError(
                f"{files[op]}: {runner.name} differs from the recorded eager outputs by "
                f"{error:.3g}, over its bound {runner.bound:g}"
            )
        worst = max(worst, error)
    return worst
