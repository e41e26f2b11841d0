"""Catalogue pages (placeholder until the catalogue lands)."""

from flask import Blueprint, render_template_string

bp = Blueprint("shop", __name__)


@bp.get("/")
def catalog():
    """The catalogue."""
    return render_template_string("{% extends 'base.html' %}{% block content %}Catalogue{% endblock %}")
