"""A batch's cost, estimated and checked before any submit."""

from __future__ import annotations

from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_vibedream.jobs.submissions import SubmissionRecord


def check_budget(
    to_submit: int,
    records: dict[str, SubmissionRecord],
    per_image: float,
    max_cost_cents: float | None,
    log: Any,
) -> None:
    """Refuse the batch, before any submit, when its estimated cost is over ``max_cost_cents``: what
    an earlier try already spent plus ``per_image`` for each image still to submit (logged either way).

    :param to_submit: images still to submit.
    :param records: the submissions already made (their recorded costs).
    :param per_image: the estimate's price of one image, cents.
    :param max_cost_cents: the limit; None: none.
    :param log: the task's log.
    """
    spent = sum(r.cost_cents or 0 for r in records.values())
    estimate = spent + to_submit * per_image
    log.info(
        "VibeDream batch cost estimate: %g cents (%d images to submit x %g cents, %g cents already "
        "spent by an earlier try)",
        estimate,
        to_submit,
        per_image,
        spent,
    )
    if max_cost_cents is not None and estimate > max_cost_cents:
        raise AirflowFailException(
            f"max_cost_cents: the batch would cost about {estimate:g} cents ({to_submit} images x "
            f"{per_image:g} cents + {spent:g} cents already spent), over max_cost_cents={max_cost_cents:g}; "
            "nothing was submitted. Raise max_cost_cents or split the batch."
        )
