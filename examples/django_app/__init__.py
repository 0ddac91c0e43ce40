"""A minimal Django app in front of s3batch: upload, task status, download."""
