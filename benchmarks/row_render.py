"""What rendering one row costs: ``_task_row.html`` of a running and of a done task.

Renders each row with the app's templates and, given ``--against DIR``, with the
templates in ``DIR`` (a ``taskstate/`` folder of templates, for example from an older
commit: ``git archive <rev> taskstate/templates | tar -x -C /tmp/old``, then
``--against /tmp/old/taskstate/templates``), interleaved, each round timing every
template set once; medians. Python calls per render come from cProfile (they do not
depend on the machine's load).

    python benchmarks/row_render.py [--against DIR] [--renders 500] [--rounds 7]
    python benchmarks/row_render.py --smoke
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import django_on_postgres, table

APP_TEMPLATES = Path(__file__).resolve().parent.parent / "taskstate" / "templates"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", type=Path, help="another template folder to compare")
    parser.add_argument("--renders", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.renders, args.rounds = 20, 1

    django_on_postgres("taskstate_bench_row_render")
    from django.template import Context, Engine
    from django.utils import timezone

    from taskstate.core.models import Task

    def engine(folder: Path) -> Engine:
        return Engine(
            dirs=[str(folder)],
            libraries={
                "i18n": "django.templatetags.i18n",
                "l10n": "django.templatetags.l10n",
                "taskstate": "taskstate.templatetags.taskstate",
            },
            loaders=[
                (
                    "django.template.loaders.cached.Loader",
                    ["django.template.loaders.filesystem.Loader"],
                )
            ],
        )

    engines = {"app": engine(APP_TEMPLATES)}
    if args.against:
        engines["against"] = engine(args.against)
    now = timezone.now()
    common = {"actor_name": "export", "description": "Export orders", "attempts": 1}
    rows = {
        "running": Task(
            pk=1234,
            status="running",
            progress=40,
            progress_message="rows",
            started_at=now,
            state_order=5,
            **common,
        ),
        "done": Task(
            pk=1235,
            status="done",
            progress=100,
            started_at=now,
            finished_at=now,
            state_order=9,
            **common,
        ),
    }

    def render(eng: Engine, task: Task) -> str:
        context = Context({"task": task, "show_traceback": False})
        return eng.get_template("taskstate/_task_row.html").render(context)

    for eng in engines.values():
        for task in rows.values():
            html = render(eng, task)
            assert f'id="taskstate-task-{task.pk}"' in html, "the row was not rendered"
    times: dict[tuple[str, str], list[float]] = {(e, r): [] for e in engines for r in rows}
    for _ in range(args.rounds):
        for row, task in rows.items():
            for name, eng in engines.items():
                start = time.perf_counter()
                for _ in range(args.renders):
                    render(eng, task)
                times[(name, row)].append((time.perf_counter() - start) / args.renders * 1e6)
    out = []
    for name, eng in engines.items():
        for row, task in rows.items():
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(20):
                render(eng, task)
            profile.disable()
            calls = pstats.Stats(profile).total_calls // 20  # type: ignore[attr-defined]
            out.append([name, row, f"{statistics.median(times[(name, row)]):.0f}", f"{calls:,}"])
    print(table(["templates", "row", "µs per render (median)", "Python calls per render"], out))


if __name__ == "__main__":
    main()
