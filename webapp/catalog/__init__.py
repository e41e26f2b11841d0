"""The product catalogue: reading Kaggle-style styles.csv folders and importing them."""

from webapp.catalog.importer import ImportResult, import_catalog
from webapp.catalog.parsing import CatalogError, ParsedStyles, Skip, parse_styles

__all__ = ["CatalogError", "ImportResult", "ParsedStyles", "Skip", "import_catalog", "parse_styles"]
