from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.actor.project import child_logs, finish, start, wait_until

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


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    out = tmp_path / 'demo.out'
    storage = tmp_path / 'storage'
    proc = start([sys.executable, '-m', 'src.demo', '--pages', '3000', '--storage', str(storage)], cwd=ROOT, log=out)
    wait_until(lambda: 'Started 2 more local runs' in _read(storage / 'log.txt'), 120, 'the fan-out')
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
    code, text = finish(proc, 120, out)
    assert code == 130
    assert 'Stopped after' in text
    assert 'Traceback' not in text
    for log in [_read(storage / 'log.txt'), *child_logs(storage)]:
        assert 'Traceback' not in log


def _read(path: Path) -> str:
    return path.read_text(errors='replace') if path.exists() else ''
