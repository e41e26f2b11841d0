"""Worker-only jobs, one module per area: the code behind the Celery tasks and `--now` commands.

Jobs run inside an app context (database, Redis, settings) and may load TensorFlow; the web
process never imports this package.
"""
