"""The item index: every item's completion as token ids in a prefix trie, the added item tokens, semantic ids, item facts."""
