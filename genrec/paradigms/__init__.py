"""Other training paradigms plugged into the core: pointwise (TALLRec), multitask (P5 / LC-Rec), softmax-DPO."""
