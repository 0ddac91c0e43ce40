"""Settings of the Django example: no database, no installed apps, JSON views only.

s3batch itself is configured like everywhere else, from S3BATCH_*, CELERY_* and AWS_* variables.
"""

from __future__ import annotations

import os

from batcher import Settings

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-s3batch-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# A raw body is read into memory: allow the largest object s3batch accepts plus a little; a body past that gets
# a 400 here rather than a task that would fail with ObjectTooLargeError. (Multipart files are not counted:
# Django spools big ones to disk, and the task refuses them.)
DATA_UPLOAD_MAX_MEMORY_SIZE = Settings.from_env().max_object_bytes + 64 * 1024
