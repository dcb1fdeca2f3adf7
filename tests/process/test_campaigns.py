"""Long crash campaigns (slow: SEQEX_SLOW=1 python -m pytest -m slow): the log's SIGKILL test,
master failover and the CrossEngine and TradingEngine replica scenarios over many seeds, each
seed a fresh cluster.

Seeds come from SEQEX_SEED (or the clock; the run's header prints it) and
SEQEX_CAMPAIGN_COUNT of them run per campaign (20 unless set), so every run explores new kill
points and a failure is replayed with the seed in its test id."""
import pytest

from tests.process import (
    test_failover,
    test_log_processes,
    test_replicas,
    test_tradingengine_replicas,
)
from tests.seed import CAMPAIGN_SEEDS

SEEDS = CAMPAIGN_SEEDS


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("policy", ["quorum", "first"])
def test_log_campaign(tmp_path, monkeypatch, seed, policy):
    monkeypatch.setattr(test_log_processes, "SEED", seed)
    test_log_processes.test_log_survives_sigkill_of_replicator_sequencer_and_subscriber(
        tmp_path, policy)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("policy", ["quorum", "first"])
def test_log_campaign_with_curve(tmp_path, monkeypatch, seed, policy):
    """The same SIGKILL campaign with CURVE on every socket and the roles checked."""
    monkeypatch.setattr(test_log_processes, "SEED", seed)
    test_log_processes.test_log_survives_sigkill_of_replicator_sequencer_and_subscriber(
        tmp_path, policy, curve=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", SEEDS)
def test_failover_campaign(tmp_path, monkeypatch, seed):
    monkeypatch.setattr(test_failover, "SEED", seed)
    test_failover.test_master_killed_under_load_is_replaced_without_loss(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scenario", ["restart_hot", "promote_warm"])
def test_replica_campaign(tmp_path, monkeypatch, seed, scenario):
    monkeypatch.setattr(test_replicas, "SEED", seed)
    test_replicas.test_crossengine_replicas_on_the_log(tmp_path, scenario)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", SEEDS)
def test_tradingengine_replica_campaign(tmp_path, monkeypatch, seed):
    monkeypatch.setattr(test_tradingengine_replicas, "SEED", seed)
    test_tradingengine_replicas.test_tradingengine_replica_recovers_after_sigkill(tmp_path)
