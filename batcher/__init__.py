"""s3batch: many small objects, few PutObject calls.

Objects are staged in Redis, packed in order into one POSIX tar per batch,
uploaded once, and each caller learns where its object landed (a BatchRef).
"""

from batcher.client import Batcher
from batcher.config import Settings
from batcher.errors import S3BatchError
from batcher.index import BatchIndex, ObjectInfo
from batcher.models import BatchRef
from batcher.reader import BatchCheck, BatchReader

__all__ = ["BatchCheck", "BatchIndex", "BatchReader", "BatchRef", "Batcher", "ObjectInfo", "S3BatchError", "Settings"]
