"""Settings of the soak's processes (``benchmarks/soak.py``): the test settings, plus the
soak's actors (``_bench.soak_actors``, found by ``rundramatiq``)."""

from tests.settings import *  # noqa: F403
from tests.settings import DRAMATIQ_BROKER, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "_bench"]
# Last, after StateMiddleware: it records when each message was let start.
DRAMATIQ_BROKER = {
    **DRAMATIQ_BROKER,
    "MIDDLEWARE": [*DRAMATIQ_BROKER["MIDDLEWARE"], "_bench.soak_record.AdmissionRecorder"],
}
DRAMATIQ_AUTODISCOVER_MODULES = ("tasks", "soak_actors")
