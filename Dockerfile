# One image for both tiers: the web server (default command) and the Celery worker
# (docker-compose.yml overrides the command). See README.md, "Running with docker compose".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code changes do not reinstall TensorFlow.
COPY requirements.txt requirements-ml.txt constraints.txt ./
RUN pip install -r requirements-ml.txt -c constraints.txt

# A non-root user owns only what the app writes: the instance folder and /data (volumes).
RUN useradd --create-home --uid 10001 --user-group shop \
    && mkdir -p /app/instance /data/media /data/models \
    && chown -R shop:shop /app/instance /data

COPY . .

USER shop
EXPOSE 8000
CMD ["gunicorn", "webapp:create_app()", "--bind", "0.0.0.0:8000", "--workers", "2", "--preload", "--access-logfile", "-"]
