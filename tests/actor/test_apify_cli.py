"""`apify run` (the Apify CLI from npm, installed by `make test` into .tools/) runs the actor on the local site."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from src.demo.site import serve_site

ROOT = Path(__file__).resolve().parents[2]
APIFY = ROOT / '.tools' / 'node_modules' / '.bin' / 'apify'

pytestmark = pytest.mark.skipif(not APIFY.exists(), reason='the Apify CLI is not installed (no npm): `make test` does')


def test_apify_run_in_a_copy_of_the_project(tmp_path: Path) -> None:
    project = tmp_path / 'project'
    project.mkdir()
    for name in ('src', '.actor'):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns('__pycache__'))
    (project / '.venv').symlink_to(ROOT / '.venv')  # `apify run` uses .venv/bin/python3 when it exists
    site = serve_site(60)
    try:
        input_dir = project / 'storage' / 'key_value_stores' / 'default'
        input_dir.mkdir(parents=True)
        actor_input = {'startUrls': [{'url': site.url}], 'syncIntervalSecs': 0.5, 'deadRunTimeoutSecs': 5}
        (input_dir / 'INPUT.json').write_text(json.dumps(actor_input))
        env = {k: v for k, v in os.environ.items() if not k.startswith(('CRAWLEE_', 'APIFY_', 'ACTOR_'))}
        env['APIFY_CLI_DISABLE_TELEMETRY'] = '1'
        result = subprocess.run(
            [str(APIFY), 'run', '--purge'],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert site.stats.snapshot()['distinct'] == 60
        summary = json.loads((input_dir / 'OUTPUT').read_text())
        assert summary['pagesProcessed'] == 60
        assert (project / 'storage' / 'key_value_stores' / 'shared-crawl-state').is_dir()
    finally:
        site.stop()
