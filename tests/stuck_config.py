"""The Celery configuration module of a test worker whose ``stuck/`` put_objects hang (tests/stuckhooks.py)."""

imports = ["tests.stuckhooks"]
