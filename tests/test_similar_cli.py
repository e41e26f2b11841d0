"""Index commands: backbone check, enqueueing once, running in-process."""

from __future__ import annotations

import pytest

from cli.model import write_setting


def test_write_setting_replaces_or_appends(tmp_path):
    path = tmp_path / "config.py"
    path.write_text('SECRET_KEY = "x"')
    write_setting(str(path), "EMBEDDING_BACKBONE", "efficientnet_lite0")
    write_setting(str(path), "EMBEDDING_INPUT_SIZE", 160)
    write_setting(str(path), "EMBEDDING_BACKBONE", "resnet50")
    assert path.read_text() == (
        "SECRET_KEY = \"x\"\nEMBEDDING_BACKBONE = 'resnet50'\nEMBEDDING_INPUT_SIZE = 160\n"
    )


@pytest.mark.parametrize("available", [True, False])
def test_check_backbone(app, tmp_path, monkeypatch, available):
    import cli.model

    app.instance_path = str(tmp_path)
    monkeypatch.setattr(
        cli.model, "resnet50_weights_status", lambda w: (available, "probe said so")
    )
    result = app.test_cli_runner().invoke(args=["model", "check-backbone"])
    assert result.exit_code == 0, result.output
    config = tmp_path / "config.py"
    if available:
        assert "Backbone: resnet50 (probe said so)" in result.output
        assert not config.exists()
    else:
        assert "using efficientnet_lite0" in result.output and "probe said so" in result.output
        text = config.read_text()
        assert "EMBEDDING_BACKBONE = 'efficientnet_lite0'" in text
        assert "EMBEDDING_INPUT_SIZE = 160" in text


def test_embed_now_and_enqueue_once(catalogue, monkeypatch):
    app, model_id, _ = catalogue
    runner = app.test_cli_runner()
    result = runner.invoke(args=["catalog", "embed", "--now"])
    assert result.exit_code == 0, result.output
    assert "0 embedded, 30 already done" in result.output
    assert "Neighbour lists unchanged: 30 products" in result.output

    from celery import Celery

    sent = []

    class Result:
        id = "job-1"

    def send_task(self, name, args=(), kwargs=None, **options):
        sent.append(name)
        return Result()

    monkeypatch.setattr(Celery, "send_task", send_task)
    first = runner.invoke(args=["catalog", "embed"])
    second = runner.invoke(args=["catalog", "embed"])
    assert "Enqueued index job job-1" in first.output
    assert "Already running: index job job-1" in second.output
    assert sent == ["worker.tasks.ml_index_catalog"]
    status = runner.invoke(args=["catalog", "index-status"])
    assert f"Served model: {model_id}" in status.output and "lists: 30 products" in status.output
