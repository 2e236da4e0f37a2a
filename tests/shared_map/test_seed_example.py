"""The usage example of the JS apify-shared-map README, in Python: an acceptance test."""

from __future__ import annotations

import json

from crawlee.storages import KeyValueStore

from src.shared_map import SharedMap


async def test_js_readme_example(store: KeyValueStore) -> None:
    initial_state = [f'KEY-{i}' for i in range(1000)]
    await store.set_value('INITIAL-TEST', initial_state)

    shared = SharedMap(store, run_id='example', record_size=100)
    await shared.initialize()

    assert len(shared) == 1000

    shared['KEY-1'] = 'processed'

    assert shared.get('KEY-1') == 'processed'
    assert shared.get('KEY-2') == 'enqueued'

    for i in range(500, 1500):
        shared[f'KEY-{i}'] = 'enqueued'
    await shared.sync()

    for i in range(750, 2000):
        if shared.get(f'KEY-{i}') == 'enqueued':
            shared[f'KEY-{i}'] = 'processed'
        else:
            shared[f'KEY-{i}'] = 'enqueued'
    await shared.sync()
    await shared.close()

    # Beyond the JS example: what a second run sees once the first has synced.
    other = SharedMap(store, run_id='other')
    await other.initialize()
    assert len(other) == 2000
    assert other['KEY-1'] == 'processed'
    assert other['KEY-2'] == 'enqueued'
    assert all(other[f'KEY-{i}'] == 'processed' for i in range(750, 1500))
    assert all(other[f'KEY-{i}'] == 'enqueued' for i in range(1500, 2000))
    assert dict(other) == dict(shared)
    # storeRecordSize: no record holds more than 100 entries.
    logs = [meta.key async for meta in store.iterate_keys() if meta.key.startswith('SM.L.')]
    sizes = []
    for key in logs:
        body = json.loads(await store.get_value(key))
        sizes.append(sum(len(keys) for *_, keys in body['groups']) + sum(len(keys) for _, keys in body['deleted']))
    # KEY-1, KEY-1000..1499 (new), KEY-750..1499 (processed), KEY-1500..1999: the INITIAL keys are not republished.
    assert sum(sizes) == 1 + 500 + 750 + 500
    assert max(sizes) <= 100
