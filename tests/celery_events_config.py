"""A Celery configuration module with task events on, as a Flower deployment has them."""

worker_send_task_events = True
