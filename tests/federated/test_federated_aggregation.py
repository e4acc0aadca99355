"""What holds exactly in the server's strategy: FedAvg's weighted mean, declines left out, DP clipping and noise.

The replies are real Flower messages, as the SuperLink hands them to the ServerApp; the strategy is the one
`build_strategy` makes for a run config.
"""

from __future__ import annotations

import numpy as np
import pytest
from federated_harness import message

from clinstream.federated import protocol as p
from clinstream.federated.config import TaskConfig
from clinstream.federated.strategy import SiteAwareStrategy, build_strategy

SIZE = 20_000  # parameters: enough coordinates to measure the DP noise's spread to about 0.5 %


def _reply(site: str, examples: int, weights: np.ndarray, declined: bool = False) -> object:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    content = RecordDict({p.ARRAYS: ArrayRecord([weights]),
                          p.METRICS: MetricRecord({p.NUM_EXAMPLES: examples, p.DECLINED: int(declined)}),
                          p.STATUS: ConfigRecord({p.STATUS_SITE: site, p.DECLINED: declined,
                                                  p.STATUS_REASON: "too small" if declined else ""})})
    return Message(content=content, reply_to=message("train", RecordDict()))


def _aggregate(strategy: SiteAwareStrategy, replies: list[object], current: np.ndarray | None = None) -> np.ndarray:
    from flwr.app import ArrayRecord

    if current is not None:  # what the DP wrapper's configure_train remembers: the model sent out this round
        strategy.inner.current_arrays = ArrayRecord([current])  # type: ignore[attr-defined]
    arrays, _ = strategy.aggregate_train(1, replies)  # type: ignore[arg-type]
    assert arrays is not None
    [out] = arrays.to_numpy_ndarrays()
    return out


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_aggregate_is_the_example_weighted_mean_of_the_sites_that_took_part(name: str) -> None:
    rng = np.random.default_rng(11)
    weights = [rng.normal(size=7) for _ in range(4)]
    strategy, _ = build_strategy(TaskConfig(strategy=name, min_nodes=3))
    replies = [_reply("a", 10, weights[0]), _reply("b", 30, weights[1]), _reply("c", 60, weights[2]),
               _reply("small", 1000, weights[3], declined=True)]
    got = _aggregate(strategy, replies)
    np.testing.assert_allclose(got, 0.1 * weights[0] + 0.3 * weights[1] + 0.6 * weights[2], rtol=1e-12)
    assert [(r.site, r.declined) for r in strategy.replies] == [("a", False), ("b", False), ("c", False),
                                                               ("small", True)]


def test_every_site_declining_keeps_the_model() -> None:
    strategy, _ = build_strategy(TaskConfig(min_nodes=2))
    arrays, metrics = strategy.aggregate_train(1, [_reply("a", 0, np.zeros(3), declined=True),  # type: ignore[list-item]
                                                   _reply("b", 0, np.zeros(3), declined=True)])
    assert arrays is None and metrics is None


def test_server_side_dp_clips_each_update_to_the_norm_before_averaging() -> None:
    strategy, described = build_strategy(TaskConfig(dp="server-fixed", dp_noise_multiplier=0.0,
                                                    dp_clipping_norm=1.0, min_nodes=2))
    assert described["differential_privacy"]["noise_stddev"] == 0.0
    current = np.array([1.0, 1.0, 1.0, 1.0])
    big = current + np.array([3.0, 4.0, 0.0, 0.0])  # update norm 5: clipped to norm 1, i.e. [0.6, 0.8, 0, 0]
    small = current + np.array([0.0, 0.0, 0.3, 0.4])  # update norm 0.5: unchanged
    got = _aggregate(strategy, [_reply("a", 10, big), _reply("b", 10, small)], current)
    np.testing.assert_allclose(got, current + np.array([0.3, 0.4, 0.15, 0.2]), rtol=1e-12)


@pytest.mark.parametrize("mode", ["server-fixed", "client-fixed"])
def test_dp_adds_gaussian_noise_of_the_described_spread_to_the_aggregate(mode: str) -> None:
    """Noise sd = noise multiplier x clipping norm / sampled sites = 0.8 x 1.5 / 3 = 0.4 (described in the report).

    Over 20,000 coordinates the sample sd's standard error is 0.4 / sqrt(2 x 20,000) = 0.002; the test allows
    0.02 (10 standard errors), and the mean must lie within 5 standard errors (0.4 / sqrt(20,000) = 0.0028) of 0.
    """
    strategy, described = build_strategy(TaskConfig(dp=mode, dp_noise_multiplier=0.8, dp_clipping_norm=1.5,
                                                    min_nodes=3))
    sd = described["differential_privacy"]["noise_stddev"]
    assert sd == pytest.approx(0.4)
    current = np.zeros(SIZE)
    update = np.full(SIZE, 1e-4)  # norm 0.014: inside the clipping norm, so clipping changes nothing
    noise = _aggregate(strategy, [_reply(s, 10, current + update) for s in "abc"], current) - update
    assert abs(noise.std() - sd) < 0.02, noise.std()
    assert abs(noise.mean()) < 5 * sd / np.sqrt(SIZE), noise.mean()
    assert strategy.dp_noise[1] == {"coordinates": SIZE, "sum_of_squares": pytest.approx(noise @ noise, rel=1e-9)}
