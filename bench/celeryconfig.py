"""Celery settings the benchmark's workers load through ``S3BATCH_CELERY_CONFIG=bench.celeryconfig``.

Only adds the no-op task, the ceiling of one Celery task per object; everything else stays the app's default.
"""

imports = ["bench.noop"]
