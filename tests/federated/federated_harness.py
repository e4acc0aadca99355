"""Test harness of the federated tests: unique sites, cleanup, in-process Flower messages, local/pooled baselines.

The baselines pool data from several sites, which production code never does: they live here, in the harness only,
to measure the federated gain (local-only training per site and pooled training on the union).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from clinstream.core.config import Settings
from clinstream.core.db import connect_with_retry
from clinstream.core.topic_admin import admin_client
from clinstream.federated.config import TaskConfig
from clinstream.federated.dataset import FEATURE_NAMES, SiteDataset, load_site_dataset
from clinstream.federated.metrics import balanced_accuracy, roc_auc
from clinstream.federated.roles import connect_reader, drop_reader_role, reader_url
from clinstream.federated.task import LogisticModel, Standardiser, TrainParams, train
from clinstream.pseudonymise.keys import KeyRing, write_key_file


def new_sites(*suffixes: str) -> list[Settings]:
    """Settings of fresh sites with one random tag (their own topics, schema and reader role)."""
    tag = "f" + uuid.uuid4().hex[:8]
    return [Settings(site_id=f"{tag}-{s}") for s in suffixes]


def with_test_key(site: Settings, directory: Path, label: str) -> Settings:
    """The site with its own pseudonym key file holding a fixed, made-up test key.

    The same key gives the same pseudonyms on every run, hence the same split of participants into training
    and held-out (a salted hash of the pseudonym), so a test over simulated cohorts is deterministic.
    """
    path = directory / f"pseudonym-keys-{label}.json"
    secret = hashlib.sha256(f"clinstream federated test key {label}".encode()).digest()
    write_key_file(path, KeyRing(1, {1: secret}), overwrite=True)
    return site.model_copy(update={"pseudonym_key_file": path})


def drop_sites(sites: list[Settings]) -> None:
    """Drop each site's reader role, schema, topics (its workers' internal ones too) and consumer groups."""
    for site in sites:
        drop_reader_role(site)
        with connect_with_retry(site, max_wait_s=60.0, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{site.db_schema}" CASCADE')
    if os.environ.get("CLINSTREAM_KEEP_TEST_TOPICS"):
        return
    admin = admin_client(sites[0])
    prefixes = tuple(p for s in sites for p in (f"{s.site_id}.", f"clinstream-{s.site_id}-"))
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefixes)]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            fut.result(30)
    groups = [g.group_id for g in admin.list_consumer_groups(request_timeout=30).result().valid
              if g.group_id.startswith(tuple(f"clinstream-{s.site_id}-" for s in sites))]
    if groups:
        for fut in admin.delete_consumer_groups(groups, request_timeout=30).values():
            fut.result(30)


def load_as_reader(site: Settings, cfg: TaskConfig) -> SiteDataset:
    """The site's examples, read the way the ClientApp reads them (reader role)."""
    with connect_reader(site.site_id, reader_url(site.database_url, site.site_id)) as conn:
        return load_site_dataset(conn, cfg)


def message(message_type: str, content: Any) -> Any:
    """A Flower instruction message as a SuperNode would hand it to the ClientApp (in-process)."""
    from flwr.app import Message, Metadata

    metadata = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=1,
                        reply_to_message_id="", group_id="", created_at=time.time(), ttl=60.0,
                        message_type=message_type)
    return Message(content=content, metadata=metadata)  # type: ignore[call-overload]  # the SuperNode's form


def context(node_config: dict[str, Any], run_config: dict[str, Any] | None = None) -> Any:
    """A Flower ClientApp context for one site (in-process)."""
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config or {})


def comparison(datasets: dict[str, SiteDataset], cfg: TaskConfig) -> dict[str, Any]:
    """Local-only training at each site and pooled training on the union, same model, steps and evaluation split.

    Each model trains rounds x local-epochs gradient steps from zero (the federated model's total); features are
    standardised per site as in the federated run ('site' mode). AUCs are exact (no score bins).
    """
    steps = TrainParams(cfg.num_rounds * cfg.local_epochs, cfg.learning_rate, cfg.l2)
    local_auc: dict[str, float] = {}
    local_bacc: dict[str, float] = {}
    train_z, train_y, test_z, test_y = [], [], [], []
    for site, data in datasets.items():
        x_tr, y_tr = data.part(test=False)
        x_te, y_te = data.part(test=True)
        std = Standardiser.fit(x_tr)
        z_tr, z_te = std.transform(x_tr), std.transform(x_te)
        model = train(LogisticModel.zeros(len(FEATURE_NAMES)), z_tr, y_tr, steps)
        local_auc[site] = roc_auc(y_te, model.predict_proba(z_te))
        local_bacc[site] = balanced_accuracy(y_te, model.predict_proba(z_te))
        train_z.append(z_tr)
        train_y.append(y_tr)
        test_z.append(z_te)
        test_y.append(y_te)
    pooled = train(LogisticModel.zeros(len(FEATURE_NAMES)), np.vstack(train_z), np.concatenate(train_y), steps)
    scores = pooled.predict_proba(np.vstack(test_z))
    return {
        "note": "test harness only: local-only and pooled training on the same examples, split and model",
        "local_roc_auc": local_auc,
        "local_balanced_accuracy": local_bacc,
        "local_mean_roc_auc": float(np.mean(list(local_auc.values()))),
        "pooled_roc_auc": roc_auc(np.concatenate(test_y), scores),
        "pooled_balanced_accuracy": balanced_accuracy(np.concatenate(test_y), scores),
    }
