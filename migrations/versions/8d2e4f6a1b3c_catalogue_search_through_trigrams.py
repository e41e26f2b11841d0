"""Catalogue search through trigrams on PostgreSQL: a GIN index on the product name

Revision ID: 8d2e4f6a1b3c
Revises: 7c1d2e3f4a5b
Create Date: 2026-12-06 03:30:00.000000

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "8d2e4f6a1b3c"
down_revision = "7c1d2e3f4a5b"
branch_labels = None
depends_on = None


def upgrade():
    # Substring search (ILIKE '%word%') can use a trigram index on PostgreSQL only; SQLite,
    # the embedded database of small catalogues, scans its table as before.
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    # Built concurrently (outside the migration's transaction): a shop's product table stays
    # writable while a million names are indexed (about 10 s).
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_product_name_trgm",
            "product",
            ["name"],
            unique=False,
            postgresql_using="gin",
            postgresql_ops={"name": "gin_trgm_ops"},
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade():
    if op.get_context().dialect.name != "postgresql":
        return
    op.drop_index("ix_product_name_trgm", table_name="product")
