"""Ranking: trie-constrained top-K over the item index, its options and priors, shared-prefix scoring, ensembles."""
