"""Settings of the Django example: no database, no installed apps, JSON views only.

s3batch itself is configured like everywhere else, from S3BATCH_*, CELERY_* and AWS_* variables.
"""

from __future__ import annotations

import os

from batcher import Settings
from examples.objects import FORM_OVERHEAD_BYTES

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-s3batch-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# Read once: the largest object s3batch accepts. A body declared larger (plus room for a form's other fields) is
# refused with 413 before it is read; Django reads at most that much of a raw body into memory. (Multipart files
# do not count against DATA_UPLOAD_MAX_MEMORY_SIZE: Django spools big ones to disk, and the view checks their size.)
S3BATCH_MAX_OBJECT_BYTES = Settings.from_env().max_object_bytes
DATA_UPLOAD_MAX_MEMORY_SIZE = S3BATCH_MAX_OBJECT_BYTES + FORM_OVERHEAD_BYTES
