"""The Celery adapter of s3batch: the app (workers.app:app), its tasks, and the result writer."""
