"""Run the actor as a user would: `python -m src` in a full copy of the repository, with its own storage folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def copy_repo(dest: Path) -> Path:
    """Copy every tracked file of the repository as it is in the working tree (not a trimmed `src/`) into `dest`."""
    listed = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split('\0')):
        source = ROOT / name
        if source.is_file():  # a file deleted in the working tree is still listed until committed
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (dest / '.venv').symlink_to((ROOT / '.venv').resolve())
    return dest


def write_input(storage: Path, actor_input: dict[str, Any]) -> None:
    """The actor's INPUT, where `apify run` and `python -m src` read it."""
    folder = storage / 'key_value_stores' / 'default'
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'INPUT.json').write_text(json.dumps(actor_input))


def start_actor(repo: Path, *, purge: bool = True) -> subprocess.Popen[bytes]:
    """Start `python -m src` in `repo` on `repo/storage`, in a new process group (its children join it)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(('CRAWLEE_', 'APIFY_', 'ACTOR_'))}
    storage = repo / 'storage'
    env |= {
        'CRAWLEE_STORAGE_DIR': str(storage),
        'APIFY_LOCAL_STORAGE_DIR': str(storage),
        'CRAWLEE_PURGE_ON_START': '1' if purge else '0',
    }
    log = (repo / 'actor.log').open('ab')
    return subprocess.Popen(
        [sys.executable, '-m', 'src'], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def finish(proc: subprocess.Popen[bytes], repo: Path, timeout: float = 240) -> tuple[int, str]:
    """Wait for the run (bounded); kill its whole process group if it does not end in time."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise
    return code, (repo / 'actor.log').read_text(errors='replace')


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the run's process group (the run and the child runs it started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Wait until every process of the group has ended; whether it did within `timeout`."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def dataset_items(storage: Path) -> list[dict[str, Any]]:
    """The items of the run's dataset and of its child runs' datasets."""
    folders = [storage / 'datasets' / 'default', *sorted(storage.glob('parallel-runs/*/datasets/default'))]
    return [
        json.loads(path.read_text())
        for folder in folders
        for path in sorted(folder.glob('*.json'))
        if path.name != '__metadata__.json'
    ]


def outputs(storage: Path) -> list[dict[str, Any]]:
    """The OUTPUT summaries of the run and of its child runs."""
    files = [storage / 'key_value_stores' / 'default' / 'OUTPUT']
    files += sorted(storage.glob('parallel-runs/*/key_value_stores/default/OUTPUT'))
    return [json.loads(f.read_text()) for f in files if f.exists()]
