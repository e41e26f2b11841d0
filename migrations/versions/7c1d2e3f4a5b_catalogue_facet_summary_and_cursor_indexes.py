"""Catalogue at scale: a covering index for the facet summary; the year order ends in the id

Revision ID: 7c1d2e3f4a5b
Revises: 0319414506cf
Create Date: 2026-12-05 04:20:00.000000

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "7c1d2e3f4a5b"
down_revision = "0319414506cf"
branch_labels = None
depends_on = None

FACET_COLUMNS = [
    "active",
    "gender",
    "master_category",
    "sub_category",
    "article_type",
    "base_colour",
    "season",
    "usage",
    "year",
]


def upgrade():
    with op.batch_alter_table("product", schema=None) as batch_op:
        batch_op.create_index("ix_product_active_facets", FACET_COLUMNS, unique=False)
        batch_op.drop_index("ix_product_active_year")
        batch_op.create_index("ix_product_active_year", ["active", "year", "id"], unique=False)


def downgrade():
    with op.batch_alter_table("product", schema=None) as batch_op:
        batch_op.drop_index("ix_product_active_year")
        batch_op.create_index("ix_product_active_year", ["active", "year"], unique=False)
        batch_op.drop_index("ix_product_active_facets")
