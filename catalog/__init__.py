"""Items, users and interactions: loaders, the dataset folder, text rendering and splits."""

from catalog.errors import DataError
from catalog.model import Catalog, Interaction, Interactions, Item, User
from catalog.movielens import load_movielens
from catalog.splits import Split, global_time_split, k_core, label_by_rating, leave_one_out
from catalog.store import load_catalog, save_catalog
from catalog.table import ColumnMapping, load_table
from catalog.text import ItemTextTemplate, UserTextTemplate

__all__ = [
    "Catalog",
    "ColumnMapping",
    "DataError",
    "Interaction",
    "Interactions",
    "Item",
    "ItemTextTemplate",
    "Split",
    "User",
    "UserTextTemplate",
    "global_time_split",
    "k_core",
    "label_by_rating",
    "leave_one_out",
    "load_catalog",
    "load_movielens",
    "load_table",
    "save_catalog",
]
