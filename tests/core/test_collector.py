"""The collector set-up of the long-running processes: garbage collected, the start-up heap frozen, rare full
collections; the stage workers' host, the gateway's uvicorn factory and the replay apply it; and a stream host's
batch collection (`BatchCollector`): automatic collection off, each batch frozen, everything walked and collected when
due, the process's collector restored (each probe runs in a fresh interpreter, so the
test process's own collector is left alone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from clinstream.core.constants import GC_THRESHOLDS

_STATE = "import gc, json; print(json.dumps({'threshold': gc.get_threshold(), 'frozen': gc.get_freeze_count()}))"


def _probe(code: str) -> dict[str, object]:
    """Run `code` in a fresh interpreter; the JSON it prints last."""
    env = {**os.environ, "CLINSTREAM_METRICS_PORT": "0"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def test_the_collector_frees_garbage_then_freezes_the_rest_and_collects_fully_more_rarely() -> None:
    result = _probe("""
        import gc, json, weakref
        gc.disable()  # only configure_collector may collect the cycle below
        class Node:
            pass
        node = Node()
        node.self = node  # a reference cycle: only the cyclic collector frees it
        alive = Node()
        cycle, kept = weakref.ref(node), weakref.ref(alive)
        del node
        before = gc.get_threshold()
        from clinstream.core.collector import configure_collector
        configure_collector()
        print(json.dumps({"before": before, "threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                          "garbage_freed": cycle() is None, "live_kept": kept() is alive,
                          "live_frozen": not any(o is alive for o in gc.get_objects())}))
    """)
    assert result["before"] == [700, 10, 10]  # CPython's defaults, which the processes change
    assert result["threshold"] == list(GC_THRESHOLDS)
    assert result["garbage_freed"] is True  # collected before the freeze: no garbage kept for the process's life
    assert result["live_kept"] is True
    assert result["live_frozen"] is True  # frozen objects are left out of every generation
    assert isinstance(result["frozen"], int) and result["frozen"] > 1000  # the imported modules' objects


def test_a_stage_worker_runs_with_the_collector_configured() -> None:
    result = _probe(f"""
        from clinstream.core import stream_host

        class Host:
            def stop(self):
                pass
            def run(self):
                exec({_STATE!r})

        stream_host._serve(Host(), "features")
    """)
    assert result["threshold"] == list(GC_THRESHOLDS)
    assert isinstance(result["frozen"], int) and result["frozen"] > 0


def test_the_gateways_uvicorn_factory_configures_the_collector() -> None:
    result = _probe(f"""
        from clinstream.ingest.app import app_from_env
        app = app_from_env()
        exec({_STATE!r})
    """)
    assert result["threshold"] == list(GC_THRESHOLDS)
    assert isinstance(result["frozen"], int) and result["frozen"] > 0


def test_a_replay_configures_the_collector_before_it_forks_its_workers() -> None:
    result = _probe(f"""
        from types import SimpleNamespace
        from clinstream.replay import cli

        cli._execute_in_workers = lambda *args: exec({_STATE!r})  # where the workers would be forked
        cli._execute(None, SimpleNamespace(workers=2), None, 1, 0.0, None)
    """)
    assert result["threshold"] == list(GC_THRESHOLDS)
    assert isinstance(result["frozen"], int) and result["frozen"] > 0


def test_a_batch_run_freezes_each_batch_and_collects_everything_when_due() -> None:
    result = _probe("""
        import gc, json, weakref
        from clinstream.core.collector import BatchCollector, configure_collector
        configure_collector()
        class Node:
            pass
        def cycle():
            node = Node()
            node.self = node  # a reference cycle: only the cyclic collector frees it
            return node
        def frozen(obj):
            return not any(o is obj for o in gc.get_objects())
        seen = {}
        with BatchCollector(full_every_s=3600) as collector:
            seen["enabled_inside"] = gc.isenabled()
            garbage, kept = cycle(), cycle()
            garbage_ref, kept_ref = weakref.ref(garbage), weakref.ref(kept)
            del garbage
            collector.after_batch()
            seen["garbage_frozen_not_collected"] = garbage_ref() is not None and frozen(garbage_ref())
            seen["survivor_frozen"] = frozen(kept)
            del kept  # garbage now, and frozen
            collector.full_every_s = 0.0  # due: the frozen objects are walked too
            collector.after_batch()
            seen["freed_when_due"] = garbage_ref() is None and kept_ref() is None
            survivor = cycle()
            collector.after_batch()
            seen["survivor_of_a_full_pass_frozen"] = frozen(survivor)
            late = cycle()
            late_ref = weakref.ref(late)
            del late
        seen["survivor_frozen_after"] = frozen(survivor)
        seen["late_not_frozen"] = late_ref() is not None and not frozen(late_ref())
        gc.collect()
        seen["late_collectable"] = late_ref() is None
        seen["enabled_after"] = gc.isenabled()
        print(json.dumps(seen))
    """)
    assert result["enabled_inside"] is False  # no automatic collection inside the block
    assert result["garbage_frozen_not_collected"] is True  # no collection per batch: frozen with the survivors
    assert result["survivor_frozen"] is True
    assert result["freed_when_due"] is True  # a cycle is freed within full_every_s
    assert result["survivor_of_a_full_pass_frozen"] is True
    assert result["survivor_frozen_after"] is True  # configured before: what the block froze stays frozen
    assert result["late_not_frozen"] is True  # leaving freezes nothing more
    assert result["late_collectable"] is True
    assert result["enabled_after"] is True


def test_a_batch_run_leaves_an_unconfigured_process_as_it_found_it() -> None:
    result = _probe("""
        import gc, json, weakref
        from clinstream.core.collector import BatchCollector
        class Node:
            pass
        with BatchCollector() as collector:
            node = Node()
            node.self = node
            ref = weakref.ref(node)
            del node
            collector.after_batch()
            inside = gc.get_freeze_count()
        frozen, enabled = gc.get_freeze_count(), gc.isenabled()
        gc.collect()
        print(json.dumps({"inside": inside, "frozen": frozen, "enabled": enabled, "freed": ref() is None}))
    """)
    assert isinstance(result["inside"], int) and result["inside"] > 0
    assert result["frozen"] == 0  # nothing was frozen before the run: nothing is after it
    assert result["enabled"] is True
    assert result["freed"] is True  # what the block froze is left to the process's own collection
