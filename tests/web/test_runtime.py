"""`Runtime.build`: what a web process starts with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from automation.config import Settings
from automation.errors import RulesError
from automation.web.runtime import Runtime

BROKEN = "version: 1\nrules:\n  - name: oops\n    on: lead.nonsense\n"


def test_a_rules_file_broken_between_two_reads_cannot_start_a_worker_without_rules(
    settings: Settings, rules_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone saves a broken file while a worker starts. The start used to check one
    reading of the file and load another: good, then broken, and the worker served
    webhooks with no rules. Now what is judged is what is loaded."""
    reads = {"count": 0}
    real_bytes, real_text = Path.read_bytes, Path.read_text

    def changing(real: Callable[..., Any], broken: Any) -> Callable[..., Any]:
        def read(path: Path, *args: Any, **kwargs: Any) -> Any:
            if path != rules_file:
                return real(path, *args, **kwargs)
            reads["count"] += 1
            return real(path, *args, **kwargs) if reads["count"] == 1 else broken

        return read

    monkeypatch.setattr(Path, "read_bytes", changing(real_bytes, BROKEN.encode()))
    monkeypatch.setattr(Path, "read_text", changing(real_text, BROKEN))

    state = Runtime.build(settings)
    state.engine.dispose()

    assert state.rules.current is not None and len(state.rules.current) > 0


def test_a_broken_rules_file_refuses_to_start_with_its_file_and_line(
    settings: Settings, rules_file: Path
) -> None:
    rules_file.write_text(BROKEN)
    with pytest.raises(RulesError) as refused:
        Runtime.build(settings)
    assert f"{rules_file}:4" in str(refused.value)
