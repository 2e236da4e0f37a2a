"""Helpers for end-to-end tests that run the real actor: a full copy of the project, its storages, its processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
APIFY = ROOT / '.tools' / 'node_modules' / '.bin' / 'apify'
ANSI = re.compile(r'\x1b\[[0-9;]*m')


def copy_project(dest: Path) -> Path:
    """Every file git knows in the working tree (tracked, or new and not ignored), as a fresh clone would have them.

    `.venv` is symlinked: `apify run` uses `.venv/bin/python3` when it exists.
    """
    listing = subprocess.run(
        ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listing.decode().split('\0')):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / '.venv').symlink_to(ROOT / '.venv')
    return dest


def start_actor(
    project: Path,
    actor_input: dict[str, Any] | str | None,
    log: Path,
    *,
    storage: Path | None = None,
    purge: bool = True,
    input_key: str = 'INPUT',
) -> subprocess.Popen[bytes]:
    """`python -m src` in the root of `project` (a copy, or the repository itself), as a user runs it.

    Args:
        project: Where to run it.
        actor_input: Its INPUT (a dict, or the file's text as it is); None to use the one already in `storage`.
        log: Where its output goes.
        storage: Its storage folder (default: the project's `storage/`, as `apify run` uses).
        purge: `CRAWLEE_PURGE_ON_START` (a resume sets it off).
        input_key: The INPUT record's key (`apify run` uses `__CLI_INPUT` for a project with an input schema).
    """
    storage = storage or project / 'storage'
    if actor_input is not None:
        write_input(storage, actor_input, key=input_key)
    env = clean_env(
        CRAWLEE_STORAGE_DIR=str(storage),
        APIFY_LOCAL_STORAGE_DIR=str(storage),
        CRAWLEE_PURGE_ON_START='1' if purge else '0',
        NO_COLOR='1',
    )
    if input_key != 'INPUT':
        env |= {'ACTOR_INPUT_KEY': input_key, 'APIFY_INPUT_KEY': input_key, 'CRAWLEE_INPUT_KEY': input_key}
    return start([str(project / '.venv' / 'bin' / 'python'), '-m', 'src'], cwd=project, log=log, env=env)


def run_actor(
    project: Path,
    actor_input: dict[str, Any] | str | None = None,
    *,
    timeout: float = 120,
    storage: Path | None = None,
    purge: bool = True,
    input_key: str = 'INPUT',
) -> tuple[int, str]:
    """`start_actor`, run to the end (its whole process group killed after `timeout` s); its exit code and output.

    The output is also in `<storage>.log` beside the storage folder.
    """
    storage = storage or project / 'storage'
    log = storage.parent / f'{storage.name}.log'
    proc = start_actor(project, actor_input, log, storage=storage, purge=purge, input_key=input_key)
    return finish(proc, timeout, log)


def dataset_count(folder: Path) -> int:
    """How many items the run whose storage folder is `folder` saved in its dataset."""
    return len(dataset_items(folder))


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the storage and run variables the test harness sets."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(('CRAWLEE_', 'APIFY_', 'ACTOR_'))}
    return env | {'APIFY_CLI_DISABLE_TELEMETRY': '1', 'APIFY_CLI_SKIP_UPDATE_CHECK': '1', **extra}


def write_input(storage: Path, actor_input: dict[str, Any] | str, *, key: str = 'INPUT') -> None:
    """The actor's INPUT (a dict, or the file's text as it is), where `apify run` and `python -m src` read it."""
    folder = storage / 'key_value_stores' / 'default'
    folder.mkdir(parents=True, exist_ok=True)
    text = actor_input if isinstance(actor_input, str) else json.dumps(actor_input)
    (folder / f'{key}.json').write_text(text)


def run_folders(storage: Path) -> list[Path]:
    """The storage folders of the parent run and of every local child run."""
    return [storage, *sorted((storage / 'parallel-runs').glob('*'))]


def dataset_items(folder: Path) -> list[dict[str, Any]]:
    """The items of the default dataset in a run's storage folder: a child run's own pages; for the first run, once
    the crawl has ended, the result set (every run's pages merged, each page once)."""
    return [
        json.loads(path.read_text())
        for path in sorted((folder / 'datasets' / 'default').glob('*.json'))
        if path.name != '__metadata__.json'
    ]


def dataset_urls(folder: Path) -> list[str]:
    """The URLs of `dataset_items(folder)`."""
    return [item['url'] for item in dataset_items(folder)]


def outputs(storage: Path) -> list[dict[str, Any]]:
    """The OUTPUT summary of every run that wrote one (the parent first)."""
    files = [folder / 'key_value_stores' / 'default' / 'OUTPUT' for folder in run_folders(storage)]
    return [json.loads(path.read_text()) for path in files if path.exists()]


def child_logs(storage: Path) -> list[str]:
    return [ANSI.sub('', path.read_text(errors='replace')) for path in sorted(storage.glob('parallel-runs/*/log.txt'))]


def table_rows(log: str) -> dict[str, list[str]]:
    """The parent's table of runs, by run id (the first cell, without a `(no summary)` note)."""
    rows = {}
    for line in ANSI.sub('', log).splitlines():
        cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
        if line.startswith('| ') and cells[0].startswith('local-'):
            rows[cells[0].split(' ')[0]] = cells
    return rows


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` (state another process or thread changes) until it holds, or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for {what}')
        time.sleep(0.05)


def child_pids(storage: Path) -> dict[str, int]:
    """The pids of the local child runs under `storage`, by run id (read from their environment)."""
    prefix = f'CRAWLEE_STORAGE_DIR={storage}/parallel-runs/'.encode()
    pids = {}
    for proc in Path('/proc').iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / 'environ').read_bytes().split(b'\0')
        except OSError:
            continue
        for item in environ:
            if item.startswith(prefix):
                pids[item[len(prefix) :].decode()] = int(proc.name)
    return pids


def child_pid(storage: Path, run_id_suffix: str) -> int | None:
    """The pid of the local child run under `storage` whose run id ends with `run_id_suffix`."""
    return next((pid for run_id, pid in child_pids(storage).items() if run_id.endswith(run_id_suffix)), None)


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie counts as exited)."""
    try:
        status = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return True
    return status.rsplit(')', 1)[1].split()[0] == 'Z'


def start(command: list[str], *, cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `command` in a new process group (so a test can signal it as a terminal would), output to `log`."""
    with log.open('ab') as sink:
        return subprocess.Popen(
            command, cwd=cwd, env=env or clean_env(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(proc: subprocess.Popen[bytes], timeout: float, log: Path) -> tuple[int, str]:
    """Wait for `proc` and then for every process of its group, killing the group after `timeout` s.

    Its exit code and log.
    """
    try:
        code = proc.wait(timeout=timeout)
        wait_until(lambda: not group_alive(proc.pid), timeout, f'the processes of group {proc.pid} to end')
    except (subprocess.TimeoutExpired, AssertionError):
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return code, ANSI.sub('', log.read_text(errors='replace'))


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` is still running (zombies do not count)."""
    for proc in Path('/proc').iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / 'stat').read_text().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(stat[2]) == pgid and stat[0] != 'Z':
                return True
    return False


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process of the group `proc` leads (a run and the child runs it started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Wait until every process of group `pgid` has ended; whether it did within `timeout` s."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True
