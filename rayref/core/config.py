"""Engine configuration: one frozen dataclass, given to each component's constructor."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    inline_threshold: int = 100 * 1024
    """Objects at most this many bytes travel inline with messages (Ray: 100 KiB)."""
    max_pending_lease_requests: int = 10
    """Outstanding lease requests per scheduling key (Ray's default)."""
    report_period: float = 0.1
    """Seconds between a node's resource reports and the control plane's view broadcasts."""
    scheduling_policy: str = "hybrid"
    spread_threshold: float = 0.5
    top_k_fraction: float = 0.2
    prestart_workers: bool = True
    default_max_retries: int = 3
    async_actor_concurrency: int = 1000
    actor_reply_grace: float = 0.2
    """Seconds a caller still accepts replies from an actor incarnation it heard has died."""
    lease_linger: float = 0.01
    """Seconds an idle worker lease is kept for the next task of its kind before it goes back."""
    idle_worker_timeout: float = 1.0
    """Seconds an idle worker beyond one per CPU waits before it is asked to exit (Ray's
    ``idle_worker_killing_time_threshold_ms``)."""
