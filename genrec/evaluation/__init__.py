"""The evaluation protocol, ranking metrics and popularity-bias metrics, the same for every system."""
