"""Interaction logs → catalog + chronological histories → leave-one-out split → examples."""

from genrec.data.catalog import Catalog, Item
from genrec.data.prepare import load_split
from genrec.data.readers import load_interactions_and_items
from genrec.data.splits import Example, Split, build_split, sequence_windows, sliding_windows, training_examples

__all__ = ["Catalog", "Item", "Example", "Split", "build_split", "sliding_windows", "sequence_windows", "training_examples", "load_interactions_and_items", "load_split"]
