"""A Celery configuration module as users write them (S3BATCH_CELERY_CONFIG=tests.celery_config_for_tests)."""

imports = ["tests.canvas_tasks"]
s3batch_max_batch_age_s = 1.0
