"""How micl_probe runs a model under an intervention.

An intervention is a factory `layouts -> context manager`: given the layouts of the batch about to run, it returns
a context inside which the model runs intervened. The context yields the keyword arguments that the forward pass
must be given: per-call data that transformers hands on to the attention functions (a DARA's factors and the
batch's image columns), or nothing for hook-based interventions (MTV injection, residual patches).

    batch = prepared(intervention, batch)                        # its own prompt, if it changes the prompt
    with within(intervention, batch.layouts) as kwargs:          # intervention None: no-op, kwargs == {}
        logits = model(**batch.inputs, **kwargs).logits

An intervention that changes the prompt itself (MMICT adds hub tokens) carries a `prepare_batch` attribute: a
function from the processor's batch to the batch it runs on (layouts included), idempotent; `prepared` applies it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def within(intervention: Callable | None, layouts) -> Iterator[dict]:
    """Enter `intervention(layouts)` (if any) and yield the forward kwargs it asks for ({} if none)."""
    if intervention is None:
        yield {}
        return
    with intervention(layouts) as kwargs:
        yield dict(kwargs or {})


PREPARE = "prepare_batch"  # the attribute of an intervention that changes the prompt it runs on


def prepared(intervention: Callable | None, batch):
    """The batch `intervention` runs on: `intervention.prepare_batch(batch)` when it has one (a prompt with MMICT's
    hub tokens), else `batch` itself. Applying it to a batch it already prepared changes nothing."""
    prepare = getattr(intervention, PREPARE, None)
    return prepare(batch) if prepare is not None else batch
