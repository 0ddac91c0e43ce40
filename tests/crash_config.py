"""The Celery configuration module of workers that tests crash (Stack.env sets it with S3BATCH_CRASH_AT)."""

imports = ["tests.crashhooks"]
