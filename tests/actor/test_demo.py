from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_crawls_the_local_site_with_three_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, '-m', 'src.demo', '--pages', '200', '--sync-interval', '0.5', '--storage', str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert 'All runs: 200 of 200 pages' in result.stdout
    assert result.stdout.count('| local-') == 3, 'a row per run'
    duplicates = re.search(r'duplicate fetches counted by the site: (\d+)', result.stdout)
    assert duplicates is not None
    assert int(duplicates.group(1)) <= 2, 'at most 1% of 200 pages fetched twice'


def test_map_only_demo_converges(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, '-m', 'src.demo.map_only', '--pages', '300'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'Every page processed: True. Entries in the shared map: 300.' in result.stdout
