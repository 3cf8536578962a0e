"""The page `genrec serve` answers at / (index.html)."""
