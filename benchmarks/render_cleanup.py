"""{% taskstate_list %} rendering with 10/100/1,000 tasks, and cleanup over large tables.

python benchmarks/render_cleanup.py           # cleanup over 100,000 and 1,000,000 rows
python benchmarks/render_cleanup.py --smoke   # 1,000 and 10,000 rows, for CI
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import django_on_postgres, table

FILL = """
INSERT INTO taskstate_task (message_id, actor_name, queue_name, status, state_order, user_id,
    description, app_name, model_name, progress, progress_message, error_type, error_message,
    traceback, attempts, seen, seen_at, created_at, started_at, finished_at, updated_at,
    language, kind, position, children_total, children_done, children_failed, children_running,
    object_type, object_pk)
SELECT 'bench-' || %(tag)s || '-' || g, 'export', 'default',
    CASE WHEN g %% 10 = 0 THEN 'running' WHEN g %% 10 = 1 THEN 'enqueued' ELSE 'done' END,
    0, %(user)s, 'Task ' || g, '', '', 50, 'half way', '', '', '', 1,
    (g %% 2 = 0 AND g %% 10 > 1),
    CASE WHEN g %% 2 = 0 AND g %% 10 > 1 THEN now() - interval '3 days' END,
    now() - interval '10 days', now() - interval '10 days',
    CASE WHEN g %% 10 > 1 THEN now() - interval '9 days' END,
    now() - interval '9 days',
    '', '', 0, 0, 0, 0, 0, '', ''
FROM generate_series(1, %(rows)s) AS g
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    sizes = (1_000, 10_000) if args.smoke else (100_000, 1_000_000)

    django_on_postgres("taskstate_bench_cleanup")
    from django.contrib.auth import get_user_model
    from django.db import connection, reset_queries
    from django.template import Context, Template
    from django.test import override_settings
    from django.test.client import RequestFactory
    from django.test.utils import CaptureQueriesContext

    from taskstate.cleanup import cleanup
    from taskstate.core.models import Task

    user, _ = get_user_model().objects.get_or_create(username="bench-render")
    template = Template("{% load taskstate %}{% taskstate_list %}")
    render_rows = []
    for count in (10, 100, 1_000):
        Task.objects.all().delete()
        with connection.cursor() as cursor:
            cursor.execute(FILL, {"tag": f"r{count}", "user": user.pk, "rows": count})
            cursor.execute("UPDATE taskstate_task SET seen = false, seen_at = NULL")
        request = RequestFactory().get("/")
        request.user = user
        context = Context({"request": request, "csrf_token": "x"})
        # Every row, past the list's LIST_MAX_ROWS cap: the cost per row is the point here.
        with override_settings(TASKSTATE={"LIST_MAX_ROWS": count}):
            template.render(context)  # warm the template cache
            runs = []
            for _ in range(5):
                with CaptureQueriesContext(connection) as queries:
                    start = time.perf_counter()
                    html = template.render(context)
                    runs.append(time.perf_counter() - start)
        assert html.count('class="taskstate-task ') == count
        render_rows.append(
            [
                count,
                len(queries.captured_queries),
                f"{min(runs) * 1e3:,.1f} ms",
                f"{min(runs) / count * 1e6:,.0f} µs",
            ]
        )
        reset_queries()

    cleanup_rows = []
    for rows in sizes:
        Task.objects.all().delete()
        with connection.cursor() as cursor:
            cursor.execute(FILL, {"tag": f"c{rows}", "user": user.pk, "rows": rows})
            cursor.execute("ANALYZE taskstate_task")
        with CaptureQueriesContext(connection) as queries:
            start = time.perf_counter()
            report = cleanup()
            elapsed = time.perf_counter() - start
        left = Task.objects.count()
        deleted = report.seen_deleted + report.unseen_deleted + report.stale_deleted
        cleanup_rows.append(
            [
                f"{rows:,}",
                f"{deleted:,}",
                f"{report.abandoned_failed:,}",
                f"{left:,}",
                len(queries.captured_queries),
                f"{elapsed:,.1f} s",
                f"{deleted / elapsed:,.0f} rows/s",
            ]
        )
    Task.objects.all().delete()

    print("{% taskstate_list %}, PostgreSQL, best of 5\n")
    print(table(["tasks shown", "queries", "render", "per task"], render_rows))
    print(
        "\ncleanup() with default settings (half the finished tasks seen 3 days ago, "
        "all finished 9 days ago; 10 % running and 10 % queued, idle for 9 days)\n"
    )
    print(
        table(
            ["rows", "deleted", "failed (abandoned)", "left", "statements", "time", "delete rate"],
            cleanup_rows,
        )
    )


if __name__ == "__main__":
    main()
