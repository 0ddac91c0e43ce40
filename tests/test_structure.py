"""One direction: ``batcher`` never imports ``workers`` or Celery, not even inside a function (DESIGN.md)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from batcher.models import StagedObject
from tests.support import Stack

ROOT = Path(__file__).resolve().parent.parent
ADAPTER_PACKAGES = ("workers", "celery", "kombu", "billiard", "vine", "amqp")


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def loaded_modules(code: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("path", sorted((ROOT / "batcher").glob("*.py")), ids=lambda p: p.name)
def test_no_library_module_imports_the_adapter_or_celery(path: Path) -> None:
    forbidden = {name for name in imports_of(path) if name.split(".")[0] in ADAPTER_PACKAGES}
    assert not forbidden, f"{path.name} imports {sorted(forbidden)}"


def test_the_library_and_its_cli_load_no_celery() -> None:
    modules = loaded_modules(
        "import batcher, batcher.cli, batcher.flush, batcher.client, batcher.operations\n"
        "names = [command.name for command in batcher.cli.all_commands()]\n"
        "assert {'demo', 'put', 'get', 'stats'} <= set(names), names"
    )
    assert not [m for m in modules if m.split(".")[0] in ADAPTER_PACKAGES and m != "workers.cli" and m != "workers"]


def test_a_batcher_with_a_stub_channel_stages_and_loads_no_celery(stack: Stack) -> None:
    code = f"""
from batcher.client import Batcher
from batcher.config import Settings

class Stub:
    staged_ids = []
    def staged(self, objects, lane, epoch): self.staged_ids += [o.record_id for o in objects]
    def refuse(self, record_id, error): raise AssertionError(error)
    def handle(self, record_id): return record_id
    def group(self, handles): return list(handles)
    def request_flush(self): pass

channel = Stub()
settings = Settings(redis_url={stack.settings.redis_url!r}, bucket={stack.settings.bucket!r})
with Batcher(settings, channel=channel) as batcher:
    ids = batcher.put_objects([("a", b"1"), ("b", b"22")])
assert ids == channel.staged_ids, (ids, channel.staged_ids)
"""
    modules = loaded_modules(code)
    assert not [m for m in modules if m.split(".")[0] in ADAPTER_PACKAGES]
    assert stack.staging.totals()["queued_objects"] == 2


def test_a_batcher_without_a_channel_says_which_to_use() -> None:
    from batcher.client import Batcher
    from batcher.errors import ConfigError

    with pytest.raises(ConfigError, match=r"workers\.Batcher"):
        Batcher()


def test_staged_object_heads_know_their_size() -> None:
    head = StagedObject("r", "k", b"", 0, "0" * 64, size=42)
    assert head.size == 42 and StagedObject("r", "k", b"abc", 0, "0" * 64).size == 3
