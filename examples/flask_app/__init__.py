"""A minimal Flask app in front of s3batch: upload, task status, download."""
