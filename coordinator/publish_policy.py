"""What the publisher trusts and what it publishes (``PublishPolicy``), shared by the snapshot choice and the
publisher."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishPolicy:
    """What the publisher trusts and what it publishes.

    Example::

        PublishPolicy(max_eval_regression=0.05, max_base_regression=0.0)  # never worse than the base model
    """

    # download each shard's state from the run's authorized peers, up to this many (a sane cap, not a sample:
    # the majority is counted over every authorized peer serving the shard)
    compare_peers: int = 16
    # Two peers agree on a tensor when |a - b| <= rtol * max(|a|, |b|) + (atol + drift_steps * step_size) * sqrt(n)
    # (L2 norms, n elements). Peers that averaged the same epochs hold the same values; after a failed round a
    # peer drifts by about one optimizer step (~lr per element with Adam) per epoch it stepped alone, until the
    # next state averaging repairs it. The drift allowance tolerates that; a poisoned or broken peer is far out.
    agreement_rtol: float = 0.02
    agreement_atol: float = 1e-5  # per element
    drift_steps: float = 5.0  # unaveraged optimizer steps two honest peers may be apart
    step_size: float = 0.0  # per-element size of one optimizer step: the publisher sets the run's lr
    epoch_window: int = 1  # peers this many epochs apart may still agree (one straddles an epoch boundary)
    max_eval_regression: float = 0.05  # refuse a version whose eval loss is this fraction worse than the previous
    max_base_regression: float = 0.0  # refuse a version whose eval loss is this fraction worse than the base model
    keep_versions: int = 10  # retention: the newest K versions keep their files (releases and parents always)
    attempts: int = 3  # downloads are retried when peers straddle an epoch boundary
    retry_pause_s: float = 2.0
    unlisted_timeout_s: float = 10.0  # download timeout for authorized peers that do not advertise their state
    authorized_window_s: float = 300.0  # a registered worker counts as live this long after it was last seen
